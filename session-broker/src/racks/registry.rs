//! What the broker knows of each rack: its registration (stored) and its live state (heartbeat
//! time, event stream, instances per deployment, free room), and the rack's health derived
//! from them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use api::broker::{BoardCapacity, RackHealth, RackRegistration, RackView, Stock, UplinkQuality};
use api::rack::InstanceState;

use super::client::Target;
use crate::catalog::CurrentDeployment;
use crate::scheduler::Load;

/// One instance as the rack's events describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceEntry {
    pub deployment: String,
    pub board: String,
    pub state: InstanceState,
}

/// Warm and claimed instances of one deployment on a rack.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeploymentStock {
    pub warm: u32,
    pub active: u32,
}

/// Aggregates of a rack's boards.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BoardFacts {
    pub archs: BTreeSet<String>,
    pub gpu_kinds: BTreeSet<String>,
    pub load: Load,
    /// Boards that take no new instances.
    pub unschedulable: usize,
}

impl BoardFacts {
    pub fn of(boards: &[BoardCapacity]) -> BoardFacts {
        BoardFacts {
            archs: boards.iter().map(|b| b.arch.clone()).collect(),
            gpu_kinds: boards.iter().filter_map(|b| b.gpu_kind.clone()).collect(),
            load: load_of(boards),
            unschedulable: boards.iter().filter(|b| !b.schedulable).count(),
        }
    }
}

/// The load of `boards` (see [`RackLive::load`]).
fn load_of(boards: &[BoardCapacity]) -> Load {
    let used = |free: u64, total: u64| {
        if total == 0 { None } else { Some(1.0 - free.min(total) as f64 / total as f64) }
    };
    let mean = |values: Vec<f64>| {
        if values.is_empty() { 0.0 } else { values.iter().sum::<f64>() / values.len() as f64 }
    };
    let cpu = boards.iter().filter_map(|b| used(b.free_millicores, b.total_millicores)).collect();
    let gpu = boards
        .iter()
        .filter_map(|b| used(u64::from(b.free_gpu_slots), u64::from(b.total_gpu_slots)))
        .collect();
    Load { cpu: mean(cpu), gpu: mean(gpu), thermal_headroom: 1.0 }
}

/// A rack's live state.
#[derive(Debug, Clone)]
pub struct RackLive {
    pub id: String,
    pub region: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub target: Option<Target>,
    pub player_host: Option<String>,
    pub uplinks: BTreeMap<String, UplinkQuality>,
    /// The boards as the last registration reported them; set with [`RackLive::set_boards`].
    boards: Vec<BoardCapacity>,
    /// What the scheduler needs of the boards, worked out once per registration rather than on
    /// every placement (at 100 racks of 60 boards that was about 1 ms a placement).
    board_facts: BoardFacts,
    pub last_seen: Option<Instant>,
    pub last_seen_ms: u64,
    pub stream_connected: bool,
    /// Since when the stream is down (None: connected, or never tried).
    pub stream_down_since: Option<Instant>,
    pub last_event_seq: u64,
    /// Deployment id -> game.
    pub deployments: HashMap<String, String>,
    /// Deployment id -> pool size the rack holds.
    pub pool_sizes: HashMap<String, u32>,
    pub instances: HashMap<String, InstanceEntry>,
    pub stock: HashMap<String, DeploymentStock>,
    /// Instances being created, since when (unix ms of the rack's event): boot-time samples.
    pub booting_since: HashMap<String, u64>,
    /// When the broker learned of the rack (a fresh rack gets a grace before it is unreachable).
    pub known_since: Instant,
}

impl RackLive {
    pub fn new(id: &str) -> RackLive {
        RackLive {
            id: id.to_string(),
            region: None,
            labels: BTreeMap::new(),
            target: None,
            player_host: None,
            uplinks: BTreeMap::new(),
            boards: Vec::new(),
            board_facts: BoardFacts::default(),
            last_seen: None,
            last_seen_ms: 0,
            stream_connected: false,
            stream_down_since: None,
            last_event_seq: 0,
            deployments: HashMap::new(),
            pool_sizes: HashMap::new(),
            instances: HashMap::new(),
            stock: HashMap::new(),
            booting_since: HashMap::new(),
            known_since: Instant::now(),
        }
    }

    /// Applies a registration (a heartbeat).
    pub fn register(&mut self, registration: &RackRegistration, now_ms: u64) {
        self.region = Some(registration.region.clone());
        self.labels = registration.labels.clone();
        self.target = Some(Target {
            url: registration.controller_url.trim_end_matches('/').to_string(),
            token: registration.controller_token.clone(),
        });
        self.player_host = registration.player_host.clone();
        self.uplinks = registration.uplinks.clone();
        self.set_boards(registration.boards.clone());
        self.last_seen = Some(Instant::now());
        self.last_seen_ms = now_ms;
    }

    /// Replaces the boards and works out their [`BoardFacts`].
    pub fn set_boards(&mut self, boards: Vec<BoardCapacity>) {
        self.board_facts = BoardFacts::of(&boards);
        self.boards = boards;
    }

    pub fn boards(&self) -> &[BoardCapacity] {
        &self.boards
    }

    pub fn board_facts(&self) -> &BoardFacts {
        &self.board_facts
    }

    /// Sets an instance's state, keeping the per-deployment counts in step. Returns true when
    /// claimable capacity may have grown (an instance became ready).
    pub fn set_instance(&mut self, id: &str, entry: Option<InstanceEntry>) -> bool {
        let old = match &entry {
            Some(e) => self.instances.insert(id.to_string(), e.clone()),
            None => self.instances.remove(id),
        };
        if let Some(old) = &old {
            self.count(old, -1);
        }
        if let Some(new) = &entry {
            self.count(new, 1);
        }
        entry.is_some_and(|e| e.state == InstanceState::Ready)
            && old.is_none_or(|o| o.state != InstanceState::Ready)
    }

    fn count(&mut self, entry: &InstanceEntry, delta: i32) {
        let stock = self.stock.entry(entry.deployment.clone()).or_default();
        let slot = match entry.state {
            InstanceState::Ready => &mut stock.warm,
            InstanceState::Claimed => &mut stock.active,
            _ => return,
        };
        *slot = slot.saturating_add_signed(delta);
    }

    /// Replaces every instance (after a snapshot).
    pub fn reset_instances(&mut self, all: impl IntoIterator<Item = (String, InstanceEntry)>) {
        self.instances.clear();
        self.stock.clear();
        for (id, entry) in all {
            self.set_instance(&id, Some(entry));
        }
    }

    pub fn stock_of(&self, deployment: &str) -> DeploymentStock {
        self.stock.get(deployment).copied().unwrap_or_default()
    }

    /// Health now: unreachable when registrations or the event stream stopped for longer
    /// than `after` (a rack never heard from is unreachable once its grace is over); degraded
    /// while the stream is down for less, or when some boards cannot take instances.
    pub fn health(&self, after: Duration) -> (RackHealth, Option<String>) {
        let Some(seen) = self.last_seen else {
            return (RackHealth::Unreachable, Some("the rack's controller has not registered".into()));
        };
        if seen.elapsed() > after {
            return (
                RackHealth::Unreachable,
                Some(format!("no registration for {} ms", seen.elapsed().as_millis())),
            );
        }
        if !self.stream_connected {
            let down = self.stream_down_since.unwrap_or(self.known_since).elapsed();
            if down > after {
                return (
                    RackHealth::Unreachable,
                    Some(format!("event stream down for {} ms", down.as_millis())),
                );
            }
            return (RackHealth::Degraded, Some("event stream reconnecting".into()));
        }
        let unschedulable = self.board_facts.unschedulable;
        if unschedulable > 0 {
            return (
                RackHealth::Degraded,
                Some(format!("{unschedulable} of {} boards take no instances", self.boards.len())),
            );
        }
        (RackHealth::Online, None)
    }

    /// How many more instances of `millicores`/`memory_mib` fit on the rack's schedulable boards.
    pub fn spare_slots(&self, millicores: u64, memory_mib: u64) -> u32 {
        if millicores == 0 || memory_mib == 0 {
            return 0;
        }
        self.boards
            .iter()
            .filter(|b| b.schedulable && b.free_ports >= 2)
            .map(|b| {
                (b.free_millicores / millicores)
                    .min(b.free_memory_mib / memory_mib)
                    .min(u64::from(b.free_ports / 2))
            })
            .sum::<u64>()
            .min(u64::from(u32::MAX)) as u32
    }

    /// The rack's load as the scheduler weighs it: the share of CPU and GPU that placed
    /// instances hold, averaged over the boards that report their totals. Instances are pinned
    /// and limited, so what is reserved is what a new instance competes with. Thermal headroom
    /// is not reported by boards yet (1 = cool).
    pub fn load(&self) -> Load {
        self.board_facts.load
    }

    /// Warm and claimed instances of each game's current deployment, by game.
    pub fn stock_by_game(&self, current: &[CurrentDeployment]) -> BTreeMap<String, DeploymentStock> {
        current.iter().map(|d| (d.game.clone(), self.stock_of(&d.deployment))).collect()
    }

    /// Room for more instances, counted in instances of the largest current profile so it
    /// never promises room that is not there.
    pub fn spare_for(&self, current: &[CurrentDeployment]) -> u32 {
        let (mc, mem) =
            current.iter().fold((0, 0), |(mc, mem), d| (mc.max(d.millicores), mem.max(d.memory_mib)));
        self.spare_slots(mc, mem)
    }

    /// The operator's view.
    pub fn view(&self, after: Duration, current: &[CurrentDeployment]) -> RackView {
        let (state, reason) = self.health(after);
        let games = self
            .stock_by_game(current)
            .into_iter()
            .map(|(game, s)| (game, Stock { warm: s.warm, active: s.active }))
            .collect();
        RackView {
            id: self.id.clone(),
            region: self.region.clone(),
            state,
            labels: self.labels.clone(),
            controller_url: self.target.as_ref().map(|t| t.url.clone()),
            player_host: self.player_host.clone(),
            last_seen_ms: self.last_seen_ms,
            stream_connected: self.stream_connected,
            last_event_seq: self.last_event_seq,
            games,
            spare_slots: self.spare_for(current),
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(state: InstanceState) -> Option<InstanceEntry> {
        Some(InstanceEntry { deployment: "d".into(), board: "b".into(), state })
    }

    #[test]
    fn counts_follow_instance_states() {
        let mut rack = RackLive::new("r");
        assert!(!rack.set_instance("i1", entry(InstanceState::Booting)));
        assert!(rack.set_instance("i1", entry(InstanceState::Ready)));
        assert!(!rack.set_instance("i1", entry(InstanceState::Ready)));
        assert!(rack.set_instance("i2", entry(InstanceState::Ready)));
        assert_eq!(rack.stock_of("d"), DeploymentStock { warm: 2, active: 0 });
        rack.set_instance("i1", entry(InstanceState::Claimed));
        assert_eq!(rack.stock_of("d"), DeploymentStock { warm: 1, active: 1 });
        rack.set_instance("i1", entry(InstanceState::Recycling));
        rack.set_instance("i2", None);
        assert_eq!(rack.stock_of("d"), DeploymentStock::default());
    }

    #[test]
    fn health_follows_registrations_and_the_stream() {
        let mut rack = RackLive::new("r");
        assert_eq!(rack.health(Duration::from_secs(5)).0, RackHealth::Unreachable);
        let registration: RackRegistration = serde_json::from_value(serde_json::json!({
            "region": "east", "controller_url": "http://c/", "controller_token": "t",
        }))
        .unwrap();
        rack.register(&registration, 1);
        assert_eq!(rack.target.as_ref().unwrap().url, "http://c");
        assert_eq!(rack.health(Duration::from_secs(5)).0, RackHealth::Degraded);
        rack.stream_connected = true;
        assert_eq!(rack.health(Duration::from_secs(5)).0, RackHealth::Online);
        assert_eq!(rack.health(Duration::ZERO).0, RackHealth::Unreachable);
    }

    #[test]
    fn spare_slots_count_what_fits_on_schedulable_boards() {
        let mut rack = RackLive::new("r");
        let board = |schedulable, mc, mem| BoardCapacity {
            board: "b".into(),
            arch: "x86_64".into(),
            gpu_kind: None,
            schedulable,
            free_millicores: mc,
            free_memory_mib: mem,
            free_gpu_slots: 0,
            free_encoder_slots: 0,
            free_ports: 100,
            total_millicores: 8000,
            total_gpu_slots: 0,
        };
        rack.set_boards(vec![board(true, 2500, 10_000), board(true, 4000, 300), board(false, 9000, 9000)]);
        assert_eq!(rack.spare_slots(1000, 256), 3);
        // The facts follow the boards of the latest registration.
        rack.last_seen = Some(Instant::now());
        rack.stream_connected = true;
        assert_eq!(rack.board_facts().unschedulable, 1);
        assert_eq!(rack.health(Duration::from_secs(5)).0, RackHealth::Degraded);
        rack.set_boards(vec![BoardCapacity { gpu_kind: Some("mali".into()), ..board(true, 1000, 1000) }]);
        let facts = rack.board_facts();
        assert_eq!((facts.unschedulable, facts.gpu_kinds.len(), facts.archs.len()), (0, 1, 1));
        assert_eq!(rack.health(Duration::from_secs(5)).0, RackHealth::Online);
    }

    #[test]
    fn load_is_the_reserved_share_of_the_boards_that_report_totals() {
        let mut rack = RackLive::new("r");
        assert_eq!(rack.load(), Load::default());
        let board = |free, total| BoardCapacity {
            board: "b".into(),
            arch: "x86_64".into(),
            gpu_kind: None,
            schedulable: true,
            free_millicores: free,
            free_memory_mib: 1000,
            free_gpu_slots: 0,
            free_encoder_slots: 0,
            free_ports: 10,
            total_millicores: total,
            total_gpu_slots: 0,
        };
        rack.set_boards(vec![board(2000, 8000), board(8000, 8000), board(5, 0)]);
        let load = rack.load();
        assert!((load.cpu - 0.375).abs() < 1e-9, "{load:?}");
        assert_eq!((load.gpu, load.thermal_headroom), (0.0, 1.0));
    }
}
