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
    /// One channel per session someone long-polls, bumped when that session changes.
    session_watchers: Mutex<HashMap<String, watch::Sender<u64>>>,
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
            session_watchers: Mutex::new(HashMap::new()),
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

    fn watchers(&self) -> MutexGuard<'_, HashMap<String, watch::Sender<u64>>> {
        self.session_watchers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tells the long-polls of session `id` (if any) that it changed.
    pub fn session_changed(&self, id: &str) {
        if let Some(tx) = self.watchers().get(id) {
            tx.send_modify(|v| *v += 1);
        }
    }

    /// Watches session `id` until the returned guard is dropped.
    pub fn watch_session(&self, id: &str) -> SessionWatch<'_> {
        let rx = self.watchers().entry(id.to_string()).or_insert_with(|| watch::channel(0).0).subscribe();
        SessionWatch { broker: self, id: id.to_string(), rx: Some(rx) }
    }

    /// Every game's current deployment.
    pub fn current_deployments(&self) -> Vec<CurrentDeployment> {
        self.catalog.current_deployments()
    }

    /// The scheduler's snapshot: every registered rack with its health, the warm and claimed
    /// instances of each game's current deployment, and its spare room.
    pub fn capacity_index(&self) -> CapacityIndex {
        let current = self.current_deployments();
        let after = self.config.rack_unreachable_after;
        let mut regions: BTreeMap<String, Vec<scheduler::Rack>> = BTreeMap::new();
        for rack in self.racks().values() {
            let Some(region) = &rack.region else { continue };
            let state = match rack.health(after).0 {
                RackHealth::Online => RackState::Online,
                RackHealth::Degraded => RackState::Degraded,
                RackHealth::Unreachable => RackState::Unreachable,
            };
            let games = rack
                .stock_by_game(&current)
                .into_iter()
                .map(|(game, s)| (game, GameStock { warm: s.warm, active: s.active }))
                .collect();
            regions.entry(region.clone()).or_default().push(scheduler::Rack {
                id: rack.id.clone(),
                region: region.clone(),
                state,
                labels: rack.labels.clone(),
                archs: rack.boards.iter().map(|b| b.arch.clone()).collect(),
                gpu_kinds: rack.boards.iter().filter_map(|b| b.gpu_kind.clone()).collect(),
                games,
                spare_slots: rack.spare_for(&current),
                load: rack.load(),
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

/// A long-poll's subscription to one session; the channel goes when its last watcher does.
pub struct SessionWatch<'a> {
    broker: &'a Broker,
    id: String,
    rx: Option<watch::Receiver<u64>>,
}

impl SessionWatch<'_> {
    /// Waits for the next change of the session.
    pub async fn changed(&mut self) -> bool {
        match self.rx.as_mut() {
            Some(rx) => rx.changed().await.is_ok(),
            None => false,
        }
    }

    /// Marks the current version as seen.
    pub fn seen(&mut self) {
        if let Some(rx) = self.rx.as_mut() {
            rx.borrow_and_update();
        }
    }
}

impl Drop for SessionWatch<'_> {
    fn drop(&mut self) {
        drop(self.rx.take());
        let mut watchers = self.broker.watchers();
        if watchers.get(&self.id).is_some_and(|tx| tx.receiver_count() == 0) {
            watchers.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_watch_wakes_on_its_own_session_only_and_goes_with_its_last_watcher() {
        let broker = test_broker();
        let mut a = broker.watch_session("a");
        let mut b = broker.watch_session("b");
        let a2 = broker.watch_session("a");
        broker.session_changed("a");
        broker.session_changed("nobody-waits");
        assert!(tokio::time::timeout(Duration::from_secs(1), a.changed()).await.unwrap());
        assert!(tokio::time::timeout(Duration::from_millis(50), b.changed()).await.is_err());
        drop(a);
        assert_eq!(broker.watchers().len(), 2, "a second watcher of a keeps its channel");
        drop((a2, b));
        assert!(broker.watchers().is_empty());
    }
}
