//! The broker's shared state: configuration, database, catalog, racks, the queue of waiting
//! sessions, and the notifications that tie the background loops together; and the
//! scheduler's capacity index, with the region prices learned from recent demand.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use api::broker::RackHealth;
use service_kit::time::now_ms;
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
use crate::sessions::lease_book::LeaseBook;
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
    /// Active sessions' racks and lease ends, for the lease loops.
    pub leases: LeaseBook,
    pub limiter: RateLimiter,
    /// Instances asked of a rack by the cold path, per (rack, deployment).
    pub cold_starts: Mutex<HashMap<(String, String), u32>>,
    /// Racks whose event-stream follower runs.
    pub links: Mutex<HashSet<String>>,
    /// Measured arrival rates and boot times.
    pub demand: Demand,
    /// Region prices per game, learned in the background from recent demand.
    prices: Arc<Mutex<PriceBook>>,
}

/// The scheduler's region prices per game ([`scheduler::prices`]) and when they were learned.
#[derive(Debug, Default)]
struct PriceBook {
    /// Game id, then region id, then price (ms).
    by_game: BTreeMap<String, BTreeMap<String, f64>>,
    /// When the latest recomputation started (ms since the epoch).
    started_ms: Option<u64>,
    /// A recomputation is running.
    running: bool,
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
            leases: LeaseBook::default(),
            limiter: RateLimiter::default(),
            cold_starts: Mutex::new(HashMap::new()),
            links: Mutex::new(HashSet::new()),
            demand: Demand::default(),
            prices: Arc::new(Mutex::new(PriceBook::default())),
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
    /// instances of each game's current deployment, and its spare room; with the latest region
    /// prices (a snapshot older than [`scheduler::prices::PERIOD_MS`] starts their
    /// recomputation in the background, see [`Broker::learn_prices`]).
    pub fn capacity_index(&self) -> CapacityIndex {
        let mut index = self.racks_index();
        self.learn_prices(&index, now_ms());
        index.prices_ms = self.prices.lock().unwrap_or_else(|p| p.into_inner()).by_game.clone();
        index
    }

    /// Recomputes every game's region prices from `index` (taken at `now`) and the RTT maps of
    /// the game's recent arrivals ([`Demand::recent_players`]), unless that was started less
    /// than [`scheduler::prices::PERIOD_MS`] ago or is still running. The solve runs on the
    /// blocking pool, off the request path; outside a Tokio runtime nothing is started.
    fn learn_prices(&self, index: &CapacityIndex, now: u64) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        {
            let mut book = self.prices.lock().unwrap_or_else(|p| p.into_inner());
            // A clock that went back does not hold prices until it catches up.
            let recent =
                book.started_ms.is_some_and(|t| (t..t + scheduler::prices::PERIOD_MS).contains(&now));
            if book.running || recent {
                return;
            }
            book.running = true;
            book.started_ms = Some(now);
        }
        let inputs: Vec<(scheduler::Game, Vec<BTreeMap<String, f64>>)> = self
            .demand
            .games_with_players()
            .into_iter()
            .filter_map(|id| {
                let (game, _) = self.catalog.scheduler_game(&id)?;
                Some((game, self.demand.recent_players(&id)))
            })
            .collect();
        let (index, book) = (index.clone(), self.prices.clone());
        // The decision that starts it does not wait for it.
        runtime.spawn_blocking(move || {
            // Cleared even if the solve panics, so a later snapshot tries again.
            let done = Done(book);
            let by_game = learned_prices(&index, &inputs);
            done.0.lock().unwrap_or_else(|p| p.into_inner()).by_game = by_game;
        });
    }

    /// The capacity index of the racks' live state, without prices.
    fn racks_index(&self) -> CapacityIndex {
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
                archs: rack.board_facts().archs.clone(),
                gpu_kinds: rack.board_facts().gpu_kinds.clone(),
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

/// Clears [`PriceBook::running`] when dropped.
struct Done(Arc<Mutex<PriceBook>>);

impl Drop for Done {
    fn drop(&mut self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).running = false;
    }
}

/// Every game's region prices: game id, then region id, then price (ms).
fn learned_prices(
    index: &CapacityIndex,
    inputs: &[(scheduler::Game, Vec<BTreeMap<String, f64>>)],
) -> BTreeMap<String, BTreeMap<String, f64>> {
    inputs
        .iter()
        .map(|(game, recent)| {
            let supply = scheduler::prices::supply(index, game);
            (game.id.clone(), scheduler::prices::compute(game, &supply, recent))
        })
        .collect()
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

    /// A scarce east (2 instances, both wanted by every player) and an ample west.
    fn scarce_east() -> CapacityIndex {
        let rack = |id: &str, region: &str, warm: u32, active: u32| {
            let mut r = scheduler::Rack::from_boards(id, region, RackState::Online, &[]);
            r.archs.insert("x86_64".into());
            r.games.insert("g".into(), GameStock { warm, active });
            r
        };
        CapacityIndex::new(vec![
            scheduler::Region { id: "east".into(), racks: vec![rack("e1", "east", 1, 1)] },
            scheduler::Region { id: "west".into(), racks: vec![rack("w1", "west", 9, 1)] },
        ])
    }

    #[tokio::test]
    async fn prices_are_learned_in_the_background_at_most_once_per_period() {
        use api::broker::{GameSpec, GameVersionSpec};
        let broker = test_broker();
        let c = &broker.catalog;
        let version: GameVersionSpec = serde_json::from_value(serde_json::json!({
            "images": {"x86_64": "img"}, "profile": {"millicores": 500, "memory_mib": 256},
        }))
        .unwrap();
        c.put_game("g", &serde_json::from_value::<GameSpec>(serde_json::json!({})).unwrap()).unwrap();
        c.put_version("g", "1", &version).unwrap();
        let current = serde_json::json!({"current_version": "1"});
        c.put_game("g", &serde_json::from_value::<GameSpec>(current).unwrap()).unwrap();
        let rtts = BTreeMap::from([("east".to_string(), 10.0), ("west".to_string(), 30.0)]);
        for _ in 0..100 {
            broker.demand.player("g", &rtts);
        }
        let price = |b: &Broker| b.prices.lock().unwrap().by_game.get("g").map(|p| p["east"]);
        let now = now_ms();
        broker.learn_prices(&scarce_east(), now);
        for _ in 0..100 {
            if !broker.prices.lock().unwrap().running {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let east = price(&broker).expect("prices learned");
        assert!(east > 0.0, "the scarce region is priced: {east}");
        assert_eq!(broker.prices.lock().unwrap().by_game["g"]["west"], 0.0, "the ample one is not");

        // Within the period nothing is recomputed, even if the capacity changed.
        broker.prices.lock().unwrap().by_game.clear();
        broker.learn_prices(&scarce_east(), now + scheduler::prices::PERIOD_MS - 1);
        assert!(!broker.prices.lock().unwrap().running);
        assert_eq!(price(&broker), None);
        // The index the scheduler reads carries the prices in the book.
        broker.prices.lock().unwrap().by_game.insert("g".into(), BTreeMap::from([("east".into(), 4.0)]));
        assert_eq!(broker.capacity_index().price_ms("g", "east"), 4.0);
    }

    #[test]
    fn learned_prices_price_each_game_from_its_own_players() {
        let game = scheduler::Game { archs: ["x86_64".to_string()].into(), ..scheduler::Game::new("g") };
        let wants_east = vec![BTreeMap::from([("east".to_string(), 10.0), ("west".to_string(), 30.0)]); 50];
        let wants_west = vec![BTreeMap::from([("east".to_string(), 30.0), ("west".to_string(), 10.0)]); 50];
        let other = scheduler::Game { id: "h".into(), ..game.clone() };
        let p = learned_prices(&scarce_east(), &[(game, wants_east), (other, wants_west)]);
        assert!(p["g"]["east"] > 0.0);
        assert_eq!(p["h"]["east"], 0.0, "no session of h runs: nothing is scarce for it");
        assert_eq!(p["h"]["west"], 0.0);
    }
}
