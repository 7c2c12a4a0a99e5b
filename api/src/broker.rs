//! Wire types of the session broker: the platform's session API, the operator's catalog
//! (regions, games, versions, warm targets, tenants, rack credentials) and the registration a
//! rack's controller sends to the broker.
//!
//! Validation that needs no catalog lives here ([`SessionRequest::validate`] and friends), so
//! every client and test can check a body before sending it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::rack::{Constraints, InstanceProfile, ResetPolicy};

/// Default time a platform waits for a placement.
pub const DEFAULT_DEADLINE_MS: u64 = 30_000;
/// Longest deadline a request may name (10 minutes).
pub const MAX_DEADLINE_MS: u64 = 600_000;
/// Highest RTT a player may report for a region; anything above is a measurement error.
pub const MAX_RTT_MS: f64 = 10_000.0;
/// Most regions a player's `rtt_ms` or `loss` map may name: every entry is stored with the
/// session, sampled for the region prices and read on every decision.
pub const MAX_MEASURED_REGIONS: usize = 64;

// --- sessions ----------------------------------------------------------------------------------

/// What the platform knows of the player.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PlayerInfo {
    /// The platform's player id (1-128 characters).
    pub id: String,
    /// Region hint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The player's IP address, as the platform saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// Measured round-trip time (ms) to each region's probe.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rtt_ms: BTreeMap<String, f64>,
    /// Measured loss ratio (0..=1) to each region's probe.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub loss: BTreeMap<String, f64>,
}

/// `POST /v1/sessions` body (with an `Idempotency-Key` header).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SessionRequest {
    /// Game id.
    pub game: String,
    /// The player.
    pub player: PlayerInfo,
    /// How long the platform waits for a placement, in ms (1 to 600000; default 30000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<i64>,
}

/// Why a request body was refused before anything was created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RequestError {
    /// Stable code.
    pub code: &'static str,
    /// What to change.
    pub message: String,
}

impl RequestError {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        RequestError { code, message: message.into() }
    }
}

impl SessionRequest {
    /// Checks everything that needs no catalog: ids, deadline range, RTT and loss values.
    pub fn validate(&self) -> Result<(), RequestError> {
        if !crate::ids::is_valid_id(&self.game) {
            return Err(RequestError::new("invalid_game", format!("game {:?} is not a valid id", self.game)));
        }
        let p = &self.player;
        if p.id.is_empty() || p.id.len() > 128 || p.id.chars().any(char::is_control) {
            return Err(RequestError::new(
                "invalid_player",
                "player.id must be 1-128 characters without control characters",
            ));
        }
        if let Some(region) = &p.region
            && !crate::ids::is_valid_id(region)
        {
            return Err(RequestError::new(
                "invalid_region",
                format!("player.region {region:?} is not a valid id"),
            ));
        }
        if let Some(ip) = &p.ip
            && ip.parse::<std::net::IpAddr>().is_err()
        {
            return Err(RequestError::new("invalid_ip", format!("player.ip {ip:?} is not an IP address")));
        }
        for (field, count) in [("rtt_ms", p.rtt_ms.len()), ("loss", p.loss.len())] {
            if count > MAX_MEASURED_REGIONS {
                return Err(RequestError::new(
                    "too_many_regions",
                    format!("player.{field} names {count} regions; at most {MAX_MEASURED_REGIONS} are taken"),
                ));
            }
        }
        for (region, rtt) in &p.rtt_ms {
            if !crate::ids::is_valid_id(region) {
                return Err(RequestError::new(
                    "invalid_region",
                    format!("player.rtt_ms key {region:?} is not a valid id"),
                ));
            }
            if !rtt.is_finite() || *rtt < 0.0 || *rtt > MAX_RTT_MS {
                return Err(RequestError::new(
                    "invalid_rtt",
                    format!("player.rtt_ms[{region:?}] = {rtt} must be between 0 and {MAX_RTT_MS} ms"),
                ));
            }
        }
        for (region, loss) in &p.loss {
            if !crate::ids::is_valid_id(region) {
                return Err(RequestError::new(
                    "invalid_region",
                    format!("player.loss key {region:?} is not a valid id"),
                ));
            }
            if !loss.is_finite() || !(0.0..=1.0).contains(loss) {
                return Err(RequestError::new(
                    "invalid_loss",
                    format!("player.loss[{region:?}] = {loss} must be a ratio between 0 and 1"),
                ));
            }
        }
        if let Some(deadline) = self.deadline_ms
            && !(1..=MAX_DEADLINE_MS as i64).contains(&deadline)
        {
            return Err(RequestError::new(
                "invalid_deadline",
                format!("deadline_ms = {deadline} must be between 1 and {MAX_DEADLINE_MS}"),
            ));
        }
        Ok(())
    }

    /// The deadline in ms (default when absent; call after [`validate`](Self::validate)).
    pub fn deadline(&self) -> u64 {
        self.deadline_ms.map_or(DEFAULT_DEADLINE_MS, |d| d.clamp(1, MAX_DEADLINE_MS as i64) as u64)
    }
}

/// Session lifecycle (DESIGN section 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    Queued,
    Placing,
    Active,
    Ended,
    Failed,
    Expired,
}

impl SessionState {
    pub const ALL: [SessionState; 6] = [
        SessionState::Queued,
        SessionState::Placing,
        SessionState::Active,
        SessionState::Ended,
        SessionState::Failed,
        SessionState::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Queued => "queued",
            SessionState::Placing => "placing",
            SessionState::Active => "active",
            SessionState::Ended => "ended",
            SessionState::Failed => "failed",
            SessionState::Expired => "expired",
        }
    }

    pub fn parse(text: &str) -> Option<SessionState> {
        SessionState::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// True for the states a session never leaves.
    pub fn is_final(self) -> bool {
        matches!(self, SessionState::Ended | SessionState::Failed | SessionState::Expired)
    }
}

/// Where the player connects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub host: String,
    pub stream_port: u16,
    pub adb_port: u16,
}

/// A session as the platform sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SessionView {
    pub id: String,
    pub state: SessionState,
    pub game: String,
    pub player_id: String,
    /// Set once placed.
    pub region: Option<String>,
    pub rack: Option<String>,
    pub board: Option<String>,
    pub instance: Option<String>,
    pub endpoint: Option<Endpoint>,
    /// The token the player presents to the stream.
    pub token: Option<String>,
    /// RFC 3339; set while the session holds an instance.
    pub lease_expires_at: Option<String>,
    /// Why a session ended, failed or expired (`no_capacity`, `ended_by_platform`, `lease_lapsed`,
    /// `instance_lost`).
    pub reason: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339: when a queued session fails with `no_capacity`.
    pub deadline_at: String,
}

/// One attempt to claim from a rack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ClaimAttempt {
    pub rack: String,
    /// `claimed`, `no_ready_instance`, `unreachable`, `error`.
    pub result: String,
    pub detail: Option<String>,
    pub at_ms: u64,
}

/// `GET /v1/sessions/{id}/explain`: every decision taken for the session, oldest first (each is
/// the scheduler's serialised decision: outcome, limits and explanation), and the claims tried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SessionExplain {
    pub session: String,
    pub decisions: Vec<serde_json::Value>,
    pub attempts: Vec<ClaimAttempt>,
}

// --- catalog -----------------------------------------------------------------------------------

/// `PUT /v1/regions/{id}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RegionSpec {
    #[serde(default)]
    pub description: String,
}

/// A region and its racks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RegionView {
    pub id: String,
    pub description: String,
    pub racks: Vec<String>,
}

/// How a game's sessions are spread over racks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum GamePacking {
    #[default]
    Fill,
    Spread,
}

fn default_max_rtt() -> f64 {
    80.0
}

fn default_preferred_rtt() -> f64 {
    40.0
}

/// `PUT /v1/games/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct GameSpec {
    #[serde(default)]
    pub name: String,
    /// Latency budget: regions above this RTT are refused (default 80).
    #[serde(default = "default_max_rtt")]
    pub max_rtt_ms: f64,
    /// Regions at or below this RTT are preferred (default 40).
    #[serde(default = "default_preferred_rtt")]
    pub preferred_rtt_ms: f64,
    #[serde(default)]
    pub packing: GamePacking,
    /// GPU kind the game needs, if any.
    #[serde(default)]
    pub gpu_kind: Option<String>,
    /// The version new sessions get (must exist once set).
    #[serde(default)]
    pub current_version: Option<String>,
}

impl GameSpec {
    pub fn validate(&self) -> Result<(), RequestError> {
        let ok = |v: f64| v.is_finite() && v > 0.0 && v <= MAX_RTT_MS;
        if !ok(self.max_rtt_ms) || !ok(self.preferred_rtt_ms) || self.preferred_rtt_ms > self.max_rtt_ms {
            return Err(RequestError::new(
                "invalid_latency_budget",
                format!(
                    "need 0 < preferred_rtt_ms ({}) <= max_rtt_ms ({}) <= {MAX_RTT_MS}",
                    self.preferred_rtt_ms, self.max_rtt_ms
                ),
            ));
        }
        if self.name.len() > 200 {
            return Err(RequestError::new("invalid_name", "name must be at most 200 characters"));
        }
        Ok(())
    }
}

/// A game as the operator sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct GameView {
    pub id: String,
    pub spec: GameSpec,
    pub versions: Vec<String>,
    /// Warm target per region.
    pub warm_targets: BTreeMap<String, WarmTargetSpec>,
}

fn default_boot_timeout() -> u32 {
    120
}

/// `PUT /v1/games/{id}/versions/{version}`: immutable once created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct GameVersionSpec {
    /// Image per architecture.
    pub images: BTreeMap<String, String>,
    pub profile: InstanceProfile,
    #[serde(default)]
    pub reset: ResetPolicy,
    /// `package/activity` launched once Android has booted.
    #[serde(default)]
    pub launch: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub privileged: bool,
    #[serde(default = "default_boot_timeout")]
    pub boot_timeout_s: u32,
    #[serde(default)]
    pub constraints: Constraints,
}

/// `PUT /v1/games/{id}/warm-targets/{region}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct WarmTargetSpec {
    /// Warm (ready, unclaimed) instances to keep in the region; with `auto`, the floor.
    pub warm: u32,
    /// Follow demand: `arrivals per second x measured boot seconds x safety`, between `warm`
    /// and `auto.max`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto: Option<AutoWarm>,
}

fn default_safety() -> f64 {
    1.5
}

/// How a warm target follows demand.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AutoWarm {
    /// Never more than this many warm instances.
    pub max: u32,
    /// Head-room factor over the expected arrivals during one boot (default 1.5).
    #[serde(default = "default_safety")]
    pub safety: f64,
}

impl WarmTargetSpec {
    /// Checks the bounds.
    pub fn validate(&self) -> Result<(), RequestError> {
        const MAX: u32 = 10_000;
        if self.warm > MAX {
            return Err(RequestError::new("invalid_warm_target", format!("warm must be at most {MAX}")));
        }
        if let Some(auto) = &self.auto {
            if auto.max < self.warm || auto.max > MAX {
                return Err(RequestError::new(
                    "invalid_warm_target",
                    format!("auto.max ({}) must be between warm ({}) and {MAX}", auto.max, self.warm),
                ));
            }
            if !auto.safety.is_finite() || auto.safety <= 0.0 || auto.safety > 10.0 {
                return Err(RequestError::new(
                    "invalid_warm_target",
                    "auto.safety must be above 0 and at most 10",
                ));
            }
        }
        Ok(())
    }
}

/// The answer to a warm target: the target in force now and the pool size asked of each rack
/// of the region.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct WarmTargetView {
    pub game: String,
    pub region: String,
    pub spec: WarmTargetSpec,
    /// The warm target in force now (`spec.warm` unless it follows demand).
    pub effective: u32,
    /// Measured session requests per second for the game in the region.
    pub arrivals_per_s: f64,
    /// Measured boot time of the game's instances (ms), once one has booted.
    pub boot_ms: Option<u64>,
    pub racks: BTreeMap<String, u32>,
}

/// `POST /v1/tenants`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TenantSpec {
    pub id: String,
    #[serde(default)]
    pub name: String,
    /// Session requests per second (sustained; bursts of twice that). Default 200.
    #[serde(default)]
    pub rate_per_s: Option<u32>,
}

/// A tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TenantView {
    pub id: String,
    pub name: String,
    pub rate_per_s: u32,
    pub keys: Vec<String>,
}

/// A tenant API key; `key` only in the creation answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ApiKeyView {
    pub id: String,
    pub tenant: String,
    pub key: Option<String>,
}

/// A rack credential, shown once (`POST /v1/racks/{id}/credential`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RackCredential {
    pub rack: String,
    pub credential: String,
}

// --- racks ---------------------------------------------------------------------------------------

/// Network quality from a rack to a region's probes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UplinkQuality {
    pub rtt_ms: f64,
    #[serde(default)]
    pub loss: f64,
}

/// Free resources of one board, as the controller's packer sees them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BoardCapacity {
    pub board: String,
    pub arch: String,
    #[serde(default)]
    pub gpu_kind: Option<String>,
    /// Ready, reachable and not cordoned: new instances may go there.
    pub schedulable: bool,
    pub free_millicores: u64,
    pub free_memory_mib: u64,
    #[serde(default)]
    pub free_gpu_slots: u32,
    #[serde(default)]
    pub free_encoder_slots: u32,
    #[serde(default)]
    pub free_ports: u32,
    /// Allocatable millicores (after the host reserve); 0 when not reported.
    #[serde(default)]
    pub total_millicores: u64,
    /// Allocatable GPU slots; 0 when the board has none or does not say.
    #[serde(default)]
    pub total_gpu_slots: u32,
}

/// `POST /v1/racks/{id}/register` (credential: the rack's): sent by the controller at start and
/// then every heartbeat period; the broker answers with the period it expects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RackRegistration {
    pub region: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Where the broker reaches the controller's API.
    pub controller_url: String,
    /// The controller's broker token: what the broker presents to it.
    pub controller_token: String,
    /// Address players reach the rack's boards at (default: each board's own address).
    #[serde(default)]
    pub player_host: Option<String>,
    /// Uplink quality to each region's probes.
    #[serde(default)]
    pub uplinks: BTreeMap<String, UplinkQuality>,
    /// Free resources per board.
    #[serde(default)]
    pub boards: Vec<BoardCapacity>,
}

/// The broker's answer to a registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RegistrationAck {
    pub rack: String,
    /// Send the registration again this often.
    pub heartbeat_ms: u64,
}

/// A rack's health as the broker sees its controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum RackHealth {
    Online,
    Degraded,
    Unreachable,
}

/// Warm and claimed instances of one game on a rack.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Stock {
    pub warm: u32,
    pub active: u32,
}

/// A rack as the broker sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RackView {
    pub id: String,
    pub region: Option<String>,
    pub state: RackHealth,
    pub labels: BTreeMap<String, String>,
    pub controller_url: Option<String>,
    pub player_host: Option<String>,
    /// Unix ms of the last registration (0: never).
    pub last_seen_ms: u64,
    /// The event stream is connected.
    pub stream_connected: bool,
    /// Last event sequence applied.
    pub last_event_seq: u64,
    pub games: BTreeMap<String, Stock>,
    pub spare_slots: u32,
    pub reason: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: serde_json::Value) -> Result<SessionRequest, String> {
        serde_json::from_value::<SessionRequest>(json).map_err(|e| e.to_string())
    }

    #[test]
    fn a_plain_request_is_valid() {
        let r = request(serde_json::json!({"game": "g", "player": {"id": "p", "rtt_ms": {"east": 15.0}}}))
            .unwrap();
        r.validate().unwrap();
        assert_eq!(r.deadline(), DEFAULT_DEADLINE_MS);
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(request(serde_json::json!({"game": "g", "player": {"id": "p"}, "colour": 1})).is_err());
        assert!(request(serde_json::json!({"game": "g", "player": {"id": "p", "x": 1}})).is_err());
    }

    #[test]
    fn bad_values_get_their_own_codes() {
        let cases = [
            (serde_json::json!({"game": "G!", "player": {"id": "p"}}), "invalid_game"),
            (serde_json::json!({"game": "g", "player": {"id": ""}}), "invalid_player"),
            (serde_json::json!({"game": "g", "player": {"id": "p"}, "deadline_ms": -5}), "invalid_deadline"),
            (serde_json::json!({"game": "g", "player": {"id": "p"}, "deadline_ms": 0}), "invalid_deadline"),
            (
                serde_json::json!({"game": "g", "player": {"id": "p", "rtt_ms": {"east": -1.0}}}),
                "invalid_rtt",
            ),
            (serde_json::json!({"game": "g", "player": {"id": "p", "rtt_ms": {"east": 1e9}}}), "invalid_rtt"),
            (serde_json::json!({"game": "g", "player": {"id": "p", "loss": {"east": 2.0}}}), "invalid_loss"),
            (serde_json::json!({"game": "g", "player": {"id": "p", "ip": "nope"}}), "invalid_ip"),
            (serde_json::json!({"game": "g", "player": {"id": "p", "region": "A B"}}), "invalid_region"),
        ];
        for (body, code) in cases {
            let err = request(body.clone()).unwrap().validate().expect_err(&body.to_string());
            assert_eq!(err.code, code, "{body}");
        }
    }

    #[test]
    fn a_player_may_name_at_most_64_regions() {
        let map =
            |n: usize| serde_json::Value::Object((0..n).map(|i| (format!("r{i}"), 10.into())).collect());
        let with = |field: &str, n: usize| {
            let mut body = serde_json::json!({"game": "g", "player": {"id": "p"}});
            body["player"][field] = map(n);
            request(body).unwrap().validate()
        };
        with("rtt_ms", MAX_MEASURED_REGIONS).unwrap();
        with("loss", MAX_MEASURED_REGIONS).unwrap_err(); // 10 is no ratio: the count passed
        for field in ["rtt_ms", "loss"] {
            let err = with(field, MAX_MEASURED_REGIONS + 1).unwrap_err();
            assert_eq!(err.code, "too_many_regions", "{field}");
            assert!(err.message.contains(field), "{}", err.message);
        }
    }

    #[test]
    fn session_states_round_trip() {
        for s in SessionState::ALL {
            assert_eq!(SessionState::parse(s.as_str()), Some(s));
        }
        assert!(SessionState::Expired.is_final() && !SessionState::Queued.is_final());
    }

    #[test]
    fn game_budgets_are_checked() {
        let mut g: GameSpec = serde_json::from_value(serde_json::json!({})).unwrap();
        g.validate().unwrap();
        g.preferred_rtt_ms = 100.0;
        assert_eq!(g.validate().unwrap_err().code, "invalid_latency_budget");
    }
}
