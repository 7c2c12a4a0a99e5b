//! What a placement is asked for: the game (latency budget, resource type, packing) and the
//! request (tenant, player, deadline, pinned region).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Default latency cap: regions above this RTT are rejected.
pub const DEFAULT_MAX_RTT_MS: f64 = 80.0;
/// Default preferred RTT: regions at or below it rank first.
pub const DEFAULT_PREFERRED_RTT_MS: f64 = 40.0;
/// Default deadline of a request (how long the platform waits).
pub const DEFAULT_DEADLINE_MS: u64 = 30_000;

/// How instances of a game are spread over racks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Packing {
    /// Claim from the rack with the fewest warm instances left, keeping other racks whole.
    #[default]
    Fill,
    /// Claim from the rack with the most warm instances left, spreading sessions.
    Spread,
}

/// What the scheduler needs to know of a game.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Game {
    /// Game id (the deployment's game).
    pub id: String,
    /// Reject regions above this RTT (ms).
    #[serde(default = "default_max_rtt")]
    pub max_rtt_ms: f64,
    /// Prefer regions at or below this RTT (ms).
    #[serde(default = "default_preferred_rtt")]
    pub preferred_rtt_ms: f64,
    /// Architectures the game has images for (any of them; empty: any).
    #[serde(default)]
    pub archs: BTreeSet<String>,
    /// GPU kind required, if any.
    #[serde(default)]
    pub gpu_kind: Option<String>,
    /// Fill or spread.
    #[serde(default)]
    pub packing: Packing,
    /// Measured time to start and boot a cold instance (ms); 0 when unknown.
    #[serde(default)]
    pub boot_ms: u64,
}

fn default_max_rtt() -> f64 {
    DEFAULT_MAX_RTT_MS
}

fn default_preferred_rtt() -> f64 {
    DEFAULT_PREFERRED_RTT_MS
}

impl Game {
    /// A game with the default budget (80 ms cap, 40 ms preferred), any architecture, fill.
    pub fn new(id: &str) -> Game {
        Game {
            id: id.to_string(),
            max_rtt_ms: DEFAULT_MAX_RTT_MS,
            preferred_rtt_ms: DEFAULT_PREFERRED_RTT_MS,
            archs: BTreeSet::new(),
            gpu_kind: None,
            packing: Packing::Fill,
            boot_ms: 0,
        }
    }
}

/// What the platform knows of the player.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Player {
    /// Player id (opaque to the scheduler).
    pub id: String,
    /// Region hint from the platform.
    #[serde(default)]
    pub region: Option<String>,
    /// Measured RTT (ms) per region.
    #[serde(default)]
    pub rtt_ms: BTreeMap<String, f64>,
    /// Measured loss ratio per region.
    #[serde(default)]
    pub loss: BTreeMap<String, f64>,
}

impl Player {
    /// The region the player is in: the hint, else the region with the lowest measured RTT
    /// (ties by id), else none.
    pub fn home_region(&self) -> Option<&str> {
        if let Some(r) = &self.region {
            return Some(r);
        }
        self.rtt_ms
            .iter()
            .filter(|(_, v)| v.is_finite())
            .min_by(|a, b| a.1.total_cmp(b.1).then(a.0.cmp(b.0)))
            .map(|(k, _)| k.as_str())
    }
}

/// A placement request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Game id.
    pub game: String,
    /// Tenant id.
    pub tenant: String,
    /// The player.
    pub player: Player,
    /// How long the platform waits in total (ms), from the request's arrival.
    #[serde(default = "default_deadline")]
    pub deadline_ms: u64,
    /// A region the platform's routing pins the session to.
    #[serde(default)]
    pub pinned_region: Option<String>,
}

fn default_deadline() -> u64 {
    DEFAULT_DEADLINE_MS
}

impl Request {
    /// A request for `game` by `player` with the default deadline and no pin.
    pub fn new(game: &str, tenant: &str, player: Player) -> Request {
        Request {
            game: game.to_string(),
            tenant: tenant.to_string(),
            player,
            deadline_ms: DEFAULT_DEADLINE_MS,
            pinned_region: None,
        }
    }
}
