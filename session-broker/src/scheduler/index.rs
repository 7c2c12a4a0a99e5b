//! The capacity index: a snapshot of regions and racks with per-rack aggregates.
//!
//! The broker keeps this index current from each rack's event stream. The scheduler reads only
//! aggregates (warm and active instances per game, spare room, resource types, load, uplinks), so
//! a decision costs O(racks), never O(instances).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::request::Game;

/// A rack's health as the broker sees its controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RackState {
    /// Streaming events and heart-beating; full capacity.
    Online,
    /// Partial capacity or failing policies: still placed on, ranked below online racks.
    Degraded,
    /// No stream and no heartbeats: never placed on.
    Unreachable,
}

/// Load figures of a rack, each a ratio in `0..=1`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Load {
    /// CPU utilisation (1 = saturated).
    pub cpu: f64,
    /// GPU utilisation (1 = saturated).
    pub gpu: f64,
    /// Thermal headroom (1 = cool, 0 = throttling).
    pub thermal_headroom: f64,
}

impl Default for Load {
    fn default() -> Self {
        Load { cpu: 0.0, gpu: 0.0, thermal_headroom: 1.0 }
    }
}

impl Load {
    /// Combined pressure in `0..=1` (0 = idle and cool): 40% CPU, 40% GPU, 20% heat.
    pub fn pressure(&self) -> f64 {
        let c = |v: f64| if v.is_finite() { v.clamp(0.0, 1.0) } else { 1.0 };
        0.4 * c(self.cpu) + 0.4 * c(self.gpu) + 0.2 * (1.0 - c(self.thermal_headroom))
    }
}

/// Network quality from a rack to the probes of one region.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Uplink {
    /// Round-trip time in milliseconds.
    pub rtt_ms: f64,
    /// Loss ratio in `0..=1`.
    pub loss: f64,
}

/// Instances of one game (deployment) on a rack.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GameStock {
    /// Warm instances: `ready` and unclaimed.
    pub warm: u32,
    /// Claimed instances: they return to warm when their sessions end.
    pub active: u32,
}

/// One rack and its aggregates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rack {
    /// Rack id.
    pub id: String,
    /// The region the rack is in.
    pub region: String,
    /// Health.
    pub state: RackState,
    /// Site labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Architectures of the rack's boards (`aarch64`, `x86_64`).
    #[serde(default)]
    pub archs: BTreeSet<String>,
    /// GPU kinds of the rack's boards (`mali-g610`).
    #[serde(default)]
    pub gpu_kinds: BTreeSet<String>,
    /// Warm and active instances per game.
    #[serde(default)]
    pub games: BTreeMap<String, GameStock>,
    /// How many more instances the rack could start (free room after packing).
    #[serde(default)]
    pub spare_slots: u32,
    /// Load figures.
    #[serde(default)]
    pub load: Load,
    /// Uplink quality to each region's probes (absent: unknown).
    #[serde(default)]
    pub uplinks: BTreeMap<String, Uplink>,
}

impl Rack {
    /// Warm (ready, unclaimed) instances of `game`.
    pub fn warm(&self, game: &str) -> u32 {
        self.games.get(game).map_or(0, |s| s.warm)
    }

    /// Claimed instances of `game` (capacity that comes back when sessions end).
    pub fn active(&self, game: &str) -> u32 {
        self.games.get(game).map_or(0, |s| s.active)
    }

    /// True when the rack has the resource types the game needs: one of its architectures (any
    /// when the game names none) and its GPU kind (when it names one).
    pub fn matches(&self, game: &Game) -> bool {
        let arch = game.archs.is_empty() || game.archs.iter().any(|a| self.archs.contains(a));
        let gpu = game.gpu_kind.as_ref().is_none_or(|g| self.gpu_kinds.contains(g));
        arch && gpu
    }

    /// True when the rack could ever serve the game, whatever its state: the resource type
    /// matches and it has a warm instance, a claimed one that will come back, or room for one.
    pub fn could_host(&self, game: &Game) -> bool {
        self.matches(game) && (self.warm(&game.id) > 0 || self.active(&game.id) > 0 || self.spare_slots > 0)
    }

    /// Builds a rack's aggregates from per-board snapshots (done once per index update, not per
    /// decision). Load is the mean over boards; thermal headroom the minimum.
    pub fn from_boards(id: &str, region: &str, state: RackState, boards: &[BoardSnapshot]) -> Rack {
        let mut rack = Rack {
            id: id.to_string(),
            region: region.to_string(),
            state,
            labels: BTreeMap::new(),
            archs: BTreeSet::new(),
            gpu_kinds: BTreeSet::new(),
            games: BTreeMap::new(),
            spare_slots: 0,
            load: Load::default(),
            uplinks: BTreeMap::new(),
        };
        let (mut cpu, mut gpu) = (0.0, 0.0);
        for board in boards {
            rack.archs.insert(board.arch.clone());
            if let Some(g) = &board.gpu_kind {
                rack.gpu_kinds.insert(g.clone());
            }
            rack.spare_slots += board.spare_slots;
            cpu += board.load.cpu;
            gpu += board.load.gpu;
            rack.load.thermal_headroom = rack.load.thermal_headroom.min(board.load.thermal_headroom);
            for (game, stock) in &board.games {
                let s = rack.games.entry(game.clone()).or_default();
                s.warm += stock.warm;
                s.active += stock.active;
            }
        }
        if !boards.is_empty() {
            rack.load.cpu = cpu / boards.len() as f64;
            rack.load.gpu = gpu / boards.len() as f64;
        }
        rack
    }
}

/// One board as the rack reports it, for [`Rack::from_boards`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BoardSnapshot {
    /// Architecture.
    pub arch: String,
    /// GPU kind, if any.
    pub gpu_kind: Option<String>,
    /// Instances per game on this board.
    pub games: BTreeMap<String, GameStock>,
    /// How many more instances fit.
    pub spare_slots: u32,
    /// Board load.
    pub load: Load,
}

/// A region and its racks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Region {
    /// Region id.
    pub id: String,
    /// Racks in the region.
    pub racks: Vec<Rack>,
}

/// A snapshot of all regions, sorted by id (regions and racks) so decisions are deterministic.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CapacityIndex {
    /// Regions, sorted by id.
    pub regions: Vec<Region>,
    /// Demand-learned price (ms) of each region per game: game id, then region id
    /// ([`super::prices`]). Absent: 0, as with ample capacity.
    #[serde(default)]
    pub prices_ms: BTreeMap<String, BTreeMap<String, f64>>,
}

impl CapacityIndex {
    /// Builds an index, sorting regions and racks by id.
    pub fn new(mut regions: Vec<Region>) -> CapacityIndex {
        regions.sort_by(|a, b| a.id.cmp(&b.id));
        for r in &mut regions {
            r.racks.sort_by(|a, b| a.id.cmp(&b.id));
        }
        CapacityIndex { regions, prices_ms: BTreeMap::new() }
    }

    /// The price (ms) of `region` for `game`: 0 when none is set, or when it is negative or
    /// not finite.
    pub fn price_ms(&self, game: &str, region: &str) -> f64 {
        let p = self.prices_ms.get(game).and_then(|g| g.get(region)).copied().unwrap_or(0.0);
        if p.is_finite() { p.max(0.0) } else { 0.0 }
    }

    /// The region with this id.
    pub fn region(&self, id: &str) -> Option<&Region> {
        self.regions.iter().find(|r| r.id == id)
    }

    /// All racks, region by region.
    pub fn racks(&self) -> impl Iterator<Item = &Rack> {
        self.regions.iter().flat_map(|r| r.racks.iter())
    }

    /// Warm instances of `game` in a region, over racks that are not unreachable.
    pub fn warm_in_region(&self, region: &str, game: &str) -> u32 {
        self.region(region).map_or(0, |r| {
            r.racks.iter().filter(|k| k.state != RackState::Unreachable).map(|k| k.warm(game)).sum()
        })
    }
}
