//! Wire types of the array controller's API: enrolment, heartbeats, deployments, instances,
//! claims and the rack event log.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::facts::BoardFacts;
use crate::instance::InstancePorts;
use crate::status::{InstanceStatus, JournalEntry};

/// Board lifecycle (DESIGN section 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BoardState {
    Enrolling,
    Probing,
    Ready,
    Quarantined,
}

impl BoardState {
    pub const ALL: [BoardState; 4] =
        [BoardState::Enrolling, BoardState::Probing, BoardState::Ready, BoardState::Quarantined];

    pub fn as_str(self) -> &'static str {
        match self {
            BoardState::Enrolling => "enrolling",
            BoardState::Probing => "probing",
            BoardState::Ready => "ready",
            BoardState::Quarantined => "quarantined",
        }
    }

    pub fn parse(text: &str) -> Option<BoardState> {
        BoardState::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// Instance lifecycle as the controller owns it (DESIGN section 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    /// Placed, not yet created on the board.
    Pending,
    /// Container created and started.
    Starting,
    /// Waiting for Android.
    Booting,
    /// Warm and claimable.
    Ready,
    /// Leased to one session.
    Claimed,
    /// Session over; being reset to a clean state.
    Recycling,
    /// No new claims; removed when released.
    Draining,
    /// Cannot make progress (see reason).
    Failed,
    /// Being removed from its board.
    Terminating,
}

impl InstanceState {
    pub const ALL: [InstanceState; 9] = [
        InstanceState::Pending,
        InstanceState::Starting,
        InstanceState::Booting,
        InstanceState::Ready,
        InstanceState::Claimed,
        InstanceState::Recycling,
        InstanceState::Draining,
        InstanceState::Failed,
        InstanceState::Terminating,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Pending => "pending",
            InstanceState::Starting => "starting",
            InstanceState::Booting => "booting",
            InstanceState::Ready => "ready",
            InstanceState::Claimed => "claimed",
            InstanceState::Recycling => "recycling",
            InstanceState::Draining => "draining",
            InstanceState::Failed => "failed",
            InstanceState::Terminating => "terminating",
        }
    }

    pub fn parse(text: &str) -> Option<InstanceState> {
        InstanceState::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// Sent by a board daemon to enrol.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrolRequest {
    /// The join token an operator created.
    pub join_token: String,
    /// The board's detected facts (its id included).
    pub facts: BoardFacts,
    /// Address players and the controller reach this board's published ports at.
    pub address: String,
    /// The board's clock (Unix ms), to check skew.
    pub now_ms: u64,
    /// Generation of the desired state the board holds now, so the controller continues above it.
    pub desired_generation: u64,
}

/// The controller's answer to an enrolment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrolResponse {
    pub board_id: String,
    /// The board's own credential from now on (shown once).
    pub credential: String,
    pub state: BoardState,
    /// Why the board is quarantined, if it is.
    pub reason: Option<String>,
    /// How often the board should send heartbeats.
    pub heartbeat_interval_ms: u64,
}

/// A desired state the board refused, reported back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RejectedDesired {
    pub generation: u64,
    pub code: String,
    pub message: String,
}

/// A board's periodic report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// Generation of the desired state the board is applying.
    pub applied_generation: u64,
    /// Every instance the board runs or was asked to run.
    pub instances: Vec<InstanceStatus>,
    /// Journal entries not yet acknowledged, oldest first.
    pub journal: Vec<JournalEntry>,
    /// The last desired state the board refused, if any.
    #[serde(default)]
    pub rejected: Option<RejectedDesired>,
}

/// The controller's answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatAck {
    /// Journal entries up to this sequence are stored; the board may forget them.
    pub journal_ack: u64,
    /// The generation the board should be applying.
    pub desired_generation: u64,
}

/// How a released instance is returned to a clean state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ResetPolicy {
    /// Recreate the container from its image (clean state).
    #[default]
    Recreate,
    /// Clear the game's data over ADB and relaunch it (needs `launch`).
    Fast,
}

/// Which cores an instance is pinned to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Pinning {
    /// The big (highest-capacity) cores only.
    Big,
    /// Any core.
    #[default]
    Any,
}

/// Display of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Display {
    pub width: u32,
    pub height: u32,
    pub dpi: u32,
    pub fps: u32,
}

impl Default for Display {
    fn default() -> Self {
        Display { width: 720, height: 1280, dpi: 320, fps: 30 }
    }
}

/// What one Android instance of a game needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct InstanceProfile {
    /// CPU in thousandths of a core.
    pub millicores: u32,
    /// Memory limit in MiB.
    pub memory_mib: u64,
    /// Shares of the board's GPU.
    #[serde(default)]
    pub gpu_slots: u32,
    /// Shares of the board's hardware encoder.
    #[serde(default)]
    pub encoder_slots: u32,
    /// Core preference.
    #[serde(default)]
    pub pinning: Pinning,
    /// Display.
    #[serde(default)]
    pub display: Display,
    /// Process limit of the container.
    #[serde(default = "default_pids")]
    pub pids_limit: i64,
}

fn default_pids() -> i64 {
    1024
}

fn default_boot_timeout() -> u32 {
    120
}

/// Placement constraints beyond architecture.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Constraints {
    /// Board labels that must all match.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// GPU kind the board must have.
    #[serde(default)]
    pub gpu_kind: Option<String>,
    /// At most this many instances of the deployment per board (anti-affinity).
    #[serde(default)]
    pub max_per_board: Option<u32>,
}

/// A game version this rack keeps instances of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentSpec {
    /// Game id.
    pub game: String,
    /// Game version.
    pub version: String,
    /// Image per architecture (`aarch64`, `x86_64`); boards of other architectures get none.
    pub images: BTreeMap<String, String>,
    /// Resources of one instance.
    pub profile: InstanceProfile,
    /// How released instances are reset.
    #[serde(default)]
    pub reset: ResetPolicy,
    /// `package/activity` of the game, launched once Android has booted.
    #[serde(default)]
    pub launch: Option<String>,
    /// Instances this rack keeps for the deployment, claimed or not.
    pub pool_size: u32,
    /// Extra environment of the containers.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Arguments after the image's entrypoint.
    #[serde(default)]
    pub args: Vec<String>,
    /// Run privileged (real redroid images need it).
    #[serde(default)]
    pub privileged: bool,
    /// Seconds Android may take to boot.
    #[serde(default = "default_boot_timeout")]
    pub boot_timeout_s: u32,
    /// Placement constraints.
    #[serde(default)]
    pub constraints: Constraints,
}

/// A deployment as the controller reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentView {
    pub id: String,
    pub spec: DeploymentSpec,
    /// Instances by state.
    pub instances: BTreeMap<String, u32>,
}

/// A board as the controller reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoardView {
    pub id: String,
    pub state: BoardState,
    pub reason: Option<String>,
    pub class: Option<String>,
    pub arch: String,
    pub address: String,
    pub cordoned: bool,
    pub reachable: bool,
    pub last_heartbeat_ms: u64,
    pub desired_generation: u64,
    pub applied_generation: u64,
    pub instances: u32,
    pub facts: BoardFacts,
}

/// An instance as the controller reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceView {
    pub id: String,
    pub deployment: String,
    pub board: String,
    pub state: InstanceState,
    pub reason: Option<String>,
    pub generation: u64,
    pub cpus: Vec<u32>,
    pub memory_mib: u64,
    pub ports: InstancePorts,
    pub container_id: Option<String>,
    pub claim_key: Option<String>,
    /// The instance's board is unreachable while it is claimed.
    pub at_risk: bool,
}

/// Claim a ready instance of a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    pub deployment: String,
    /// Idempotency key (the session id): the same key always gets the same instance.
    pub key: String,
    /// Lease length; default 60000.
    #[serde(default)]
    pub lease_ms: Option<u64>,
}

/// State of a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClaimState {
    Active,
    Released,
    Expired,
}

impl ClaimState {
    pub fn as_str(self) -> &'static str {
        match self {
            ClaimState::Active => "active",
            ClaimState::Released => "released",
            ClaimState::Expired => "expired",
        }
    }

    pub fn parse(text: &str) -> Option<ClaimState> {
        [ClaimState::Active, ClaimState::Released, ClaimState::Expired]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// A claim: everything a player needs to reach the instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimView {
    pub key: String,
    pub state: ClaimState,
    pub deployment: String,
    pub instance: String,
    pub board: String,
    /// Address of the board.
    pub host: String,
    pub ports: InstancePorts,
    pub lease_expires_at_ms: u64,
    /// The token the claimed instance's stream accepts (`HELLO <token>`), while the claim is
    /// active. `None` once it ended (the release drew the instance a new token, which belongs
    /// to the next claim) and for an instance that has none (created before tokens existed).
    #[serde(default)]
    pub stream_token: Option<String>,
}

/// Renew many leases at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    pub keys: Vec<String>,
    #[serde(default)]
    pub lease_ms: Option<u64>,
}

/// Result of a batch renewal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewResponse {
    /// Renewed keys and their new expiry.
    pub renewed: BTreeMap<String, u64>,
    /// Keys with no active claim (released, expired or unknown).
    pub missing: Vec<String>,
}

/// A join token, shown once at creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinToken {
    pub id: String,
    /// The secret; present only in the creation answer.
    pub token: Option<String>,
    pub expires_at_ms: u64,
    pub revoked: bool,
}

/// Ask for a join token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinTokenRequest {
    /// Validity in seconds (1 to 86400; default 3600).
    #[serde(default)]
    pub ttl_s: Option<u64>,
}

/// One entry of the rack's event log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RackEvent {
    /// Monotonic sequence in this rack.
    pub seq: u64,
    /// Unix milliseconds.
    pub at_ms: u64,
    /// What changed.
    #[serde(flatten)]
    pub body: RackEventBody,
}

/// What a rack event is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RackEventBody {
    Board {
        board: String,
        state: BoardState,
        reachable: bool,
        cordoned: bool,
        reason: Option<String>,
    },
    Instance {
        instance: String,
        deployment: String,
        board: String,
        state: InstanceState,
        generation: u64,
        reason: Option<String>,
        at_risk: bool,
    },
    Claim {
        key: String,
        deployment: String,
        instance: String,
        state: ClaimState,
    },
    Deployment {
        deployment: String,
        pool_size: u32,
        deleted: bool,
    },
    BoardReport {
        board: String,
        entry: JournalEntry,
    },
    PlacementFailed {
        deployment: String,
        reasons: Vec<String>,
    },
}

impl RackEventBody {
    /// Every kind, as the `kind` field spells it.
    pub const KINDS: [&'static str; 6] =
        ["board", "instance", "claim", "deployment", "board_report", "placement_failed"];

    /// This event's kind, as the `kind` field spells it.
    pub fn kind(&self) -> &'static str {
        match self {
            RackEventBody::Board { .. } => "board",
            RackEventBody::Instance { .. } => "instance",
            RackEventBody::Claim { .. } => "claim",
            RackEventBody::Deployment { .. } => "deployment",
            RackEventBody::BoardReport { .. } => "board_report",
            RackEventBody::PlacementFailed { .. } => "placement_failed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_match_the_serialized_kind() {
        let bodies = [
            RackEventBody::Board {
                board: "b".into(),
                state: BoardState::Ready,
                reachable: true,
                cordoned: false,
                reason: None,
            },
            RackEventBody::Instance {
                instance: "i".into(),
                deployment: "d".into(),
                board: "b".into(),
                state: InstanceState::Ready,
                generation: 1,
                reason: None,
                at_risk: false,
            },
            RackEventBody::Claim {
                key: "k".into(),
                deployment: "d".into(),
                instance: "i".into(),
                state: ClaimState::Active,
            },
            RackEventBody::Deployment { deployment: "d".into(), pool_size: 2, deleted: false },
            RackEventBody::BoardReport {
                board: "b".into(),
                entry: JournalEntry {
                    seq: 1,
                    at_ms: 2,
                    event: crate::status::BoardEvent::Phase {
                        instance: "i".into(),
                        generation: 1,
                        phase: crate::status::InstancePhase::Ready,
                        container_id: None,
                        reason: None,
                    },
                },
            },
            RackEventBody::PlacementFailed { deployment: "d".into(), reasons: vec![] },
        ];
        let kinds: Vec<&str> = bodies.iter().map(RackEventBody::kind).collect();
        assert_eq!(kinds, RackEventBody::KINDS);
        for body in &bodies {
            assert_eq!(serde_json::to_value(body).unwrap()["kind"], body.kind());
        }
    }

    #[test]
    fn events_flatten_their_kind() {
        let event = RackEvent {
            seq: 4,
            at_ms: 9,
            body: RackEventBody::Claim {
                key: "s1".into(),
                deployment: "d".into(),
                instance: "i".into(),
                state: ClaimState::Active,
            },
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["kind"], "claim");
        assert_eq!(json["seq"], 4);
        assert_eq!(serde_json::from_value::<RackEvent>(json).unwrap(), event);
    }

    #[test]
    fn states_round_trip_through_their_names() {
        for s in InstanceState::ALL {
            assert_eq!(InstanceState::parse(s.as_str()), Some(s));
        }
        for s in BoardState::ALL {
            assert_eq!(BoardState::parse(s.as_str()), Some(s));
        }
    }
}
