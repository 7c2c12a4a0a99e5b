//! The broker's shared state: configuration, database, catalog, racks, the queue of waiting
//! sessions, and the notifications that tie the background loops together.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use api::broker::RackHealth;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::catalog::{Catalog, CurrentDeployment};
use crate::config::Config;
use crate::db::Db;
use crate::demand::Demand;
use crate::metrics::Metrics;
use crate::racks::client::ControllerClient;
use crate::racks::registry::RackLive;
use crate::ratelimit::RateLimiter;
use crate::scheduler::{self, CapacityIndex, GameStock, RackState, Uplink};
use crate::sessions::queue::Queue;

/// The broker: shared by the HTTP handlers and the background loops.
pub struct Broker {
    pub config: Config,
    pub db: Arc<Db>,
    pub catalog: Catalog,
    racks: Mutex<BTreeMap<String, RackLive>>,
    pub controllers: ControllerClient,
    pub metrics: Metrics,
    pub operator_token: String,
    pub shutdown: CancellationToken,
    /// Claimable capacity may have grown (an instance became ready, a rack came back).
    pub capacity_changed: Notify,
    /// A pool size may have to change (claim, release, warm target, registration).
    pub pools_changed: Notify,
    /// Bumped on every session state change; long-polls wait on it.
    pub sessions_version: watch::Sender<u64>,
    pub queue: Mutex<Queue>,
    pub limiter: RateLimiter,
    /// Instances asked of a rack by the cold path, per (rack, deployment).
    pub cold_starts: Mutex<HashMap<(String, String), u32>>,
    /// Racks whose event-stream follower runs.
    pub links: Mutex<HashSet<String>>,
    /// Measured arrival rates and boot times.
    pub demand: Demand,
}

impl Broker {
    pub fn new(
        config: Config,
        db: Arc<Db>,
        catalog: Catalog,
        metrics: Metrics,
        operator_token: String,
        shutdown: CancellationToken,
    ) -> Broker {
        Broker {
            config,
            db,
            catalog,
            racks: Mutex::new(BTreeMap::new()),
            controllers: ControllerClient::new(),
            metrics,
            operator_token,
            shutdown,
            capacity_changed: Notify::new(),
            pools_changed: Notify::new(),
            sessions_version: watch::channel(0).0,
            queue: Mutex::new(Queue::default()),
            limiter: RateLimiter::default(),
            cold_starts: Mutex::new(HashMap::new()),
            links: Mutex::new(HashSet::new()),
            demand: Demand::default(),
        }
    }

    /// The racks, locked. Hold the lock briefly: never across an await.
    pub fn racks(&self) -> MutexGuard<'_, BTreeMap<String, RackLive>> {
        self.racks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on one rack's live state, if the rack is known.
    pub fn with_rack<T>(&self, id: &str, f: impl FnOnce(&mut RackLive) -> T) -> Option<T> {
        self.racks().get_mut(id).map(f)
    }

    /// Tells long-polls that a session changed.
    pub fn session_changed(&self) {
        self.sessions_version.send_modify(|v| *v += 1);
    }

    /// Every game's current deployment.
    pub fn current_deployments(&self) -> Vec<CurrentDeployment> {
        self.catalog.current_deployments()
    }

    /// The scheduler's snapshot: every registered rack with its health and, per game, the
    /// warm and claimed instances of the game's current deployment. Spare room is counted in
    /// instances of the largest current profile, so it never promises room that is not there.
    pub fn capacity_index(&self) -> CapacityIndex {
        let current = self.current_deployments();
        let (mc, mem) =
            current.iter().fold((0, 0), |(mc, mem), d| (mc.max(d.millicores), mem.max(d.memory_mib)));
        let after = self.config.rack_unreachable_after;
        let mut regions: BTreeMap<String, Vec<scheduler::Rack>> = BTreeMap::new();
        for rack in self.racks().values() {
            let Some(region) = &rack.region else { continue };
            let state = match rack.health(after).0 {
                RackHealth::Online => RackState::Online,
                RackHealth::Degraded => RackState::Degraded,
                RackHealth::Unreachable => RackState::Unreachable,
            };
            let games = current
                .iter()
                .map(|d| {
                    let s = rack.stock_of(&d.deployment);
                    (d.game.clone(), GameStock { warm: s.warm, active: s.active })
                })
                .collect();
            regions.entry(region.clone()).or_default().push(scheduler::Rack {
                id: rack.id.clone(),
                region: region.clone(),
                state,
                labels: rack.labels.clone(),
                archs: rack.boards.iter().map(|b| b.arch.clone()).collect(),
                gpu_kinds: rack.boards.iter().filter_map(|b| b.gpu_kind.clone()).collect(),
                games,
                spare_slots: rack.spare_slots(mc, mem),
                load: scheduler::Load::default(),
                uplinks: rack
                    .uplinks
                    .iter()
                    .map(|(r, u)| (r.clone(), Uplink { rtt_ms: u.rtt_ms, loss: u.loss }))
                    .collect(),
            });
        }
        CapacityIndex::new(regions.into_iter().map(|(id, racks)| scheduler::Region { id, racks }).collect())
    }
}

#[cfg(test)]
pub(crate) fn test_broker() -> Arc<Broker> {
    use clap::Parser;
    let config = Config::load(crate::config::Cli::parse_from(["session-broker"])).expect("default config");
    let db = Arc::new(crate::db::test_db());
    let catalog = Catalog::load(db.clone()).expect("empty catalog");
    let metrics = Metrics::register(&mut prometheus_client::registry::Registry::default());
    Arc::new(Broker::new(config, db, catalog, metrics, "op".into(), CancellationToken::new()))
}
