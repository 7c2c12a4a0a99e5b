//! Pools: the broker sets each rack's pool size per deployment so the region keeps its warm
//! target. A rack's pool is its share of the region's warm target plus its claimed instances
//! plus what the cold path asked of it, so every claim makes the rack start a replacement and
//! every release lets it shrink back. Old versions keep only their claimed instances (they
//! drain as sessions end). Sizes are pushed to controllers whenever something changed and
//! re-sent every [`RESEND`] (a controller that restarted or was unreachable catches up).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api::broker::{RackHealth, WarmTargetSpec};
use service_kit::time::now_ms;

use crate::broker::Broker;
use crate::catalog::{deployment_id, deployment_spec};
use crate::metrics::Metrics;
use crate::racks::client::Target;

const RESEND: Duration = Duration::from_secs(10);
/// Changes arriving within this window are pushed together. Each push runs the controller's
/// packer and wakes the boards that get new instances, so a shorter window costs CPU; a longer
/// one makes each push a bigger burst of replacements that placements queue behind.
/// Measured (`bench_sessions`, 2,000 sessions/s offered, 12 alternating pairs on a 2-core VM):
/// 100 ms gave session p99 15.8-21.8 ms (median 18.9), p50 1.4 ms, 32 clients 3,900/s; 50 ms
/// gives p99 12.8-19.5 ms (median 14.0), p50 1.6 ms, 3,500/s (the controllers spend 10% more
/// CPU per placement). 25 ms (6 pairs): p99 median 14.3 ms but p50 3.4 ms and 3,200/s.
const COALESCE: Duration = Duration::from_millis(50);

/// Asks `rack` for one more instance of `deployment` (the cold path).
pub fn cold_start(broker: &Broker, rack: &str, deployment: &str) {
    *broker
        .cold_starts
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry((rack.into(), deployment.into()))
        .or_insert(0) += 1;
    broker.pools_changed.notify_one();
}

/// The session that asked for a cold start was placed or gave up.
pub fn cold_start_done(broker: &Broker, rack: &str, deployment: &str) {
    let mut cold = broker.cold_starts.lock().unwrap_or_else(|p| p.into_inner());
    let key = (rack.to_string(), deployment.to_string());
    if let Some(n) = cold.get_mut(&key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            cold.remove(&key);
        }
    }
    drop(cold);
    broker.pools_changed.notify_one();
}

/// Splits `warm` over `racks` (sorted): equal shares, the remainder to the first ones.
pub fn split(warm: u32, racks: &[String]) -> BTreeMap<String, u32> {
    let n = racks.len() as u32;
    let (Some(base), Some(rest)) = (warm.checked_div(n), warm.checked_rem(n)) else {
        return BTreeMap::new();
    };
    racks.iter().enumerate().map(|(i, r)| (r.clone(), base + u32::from((i as u32) < rest))).collect()
}

/// The warm target in force for `game` in `region`: the fixed one, or the one that follows
/// the measured demand.
pub fn effective_target(broker: &Broker, game: &str, region: &str, spec: &WarmTargetSpec) -> u32 {
    match &spec.auto {
        None => spec.warm,
        Some(auto) => crate::demand::follow(
            broker.demand.rate(game, region, now_ms()),
            broker.demand.boot_ms(game),
            auto.safety,
            spec.warm,
            auto.max,
        ),
    }
}

/// One pool size to push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolTarget {
    pub rack: String,
    pub game: String,
    pub version: String,
    pub deployment: String,
    pub pool_size: u32,
}

/// Every pool size the racks should hold now.
pub fn targets(broker: &Broker) -> Vec<PoolTarget> {
    let games = broker.catalog.games();
    let cold = broker.cold_starts.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let after = broker.config.rack_unreachable_after;
    let racks = broker.racks();
    // Reachable racks per region share the warm targets.
    let mut by_region: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for rack in racks.values() {
        if let Some(region) = &rack.region
            && rack.health(after).0 != RackHealth::Unreachable
        {
            by_region.entry(region.clone()).or_default().push(rack.id.clone());
        }
    }
    let mut out = Vec::new();
    for (game, entry) in &games {
        let current = entry.current().map(|(v, _)| v.to_string());
        for (region, members) in &by_region {
            let warm =
                entry.warm_targets.get(region).map_or(0, |spec| effective_target(broker, game, region, spec));
            let shares = split(warm, members);
            for rack_id in members {
                let rack = &racks[rack_id];
                for version in entry.versions.keys() {
                    let deployment = deployment_id(game, version);
                    let active = rack.stock_of(&deployment).active;
                    let is_current = current.as_deref() == Some(version.as_str());
                    let want = if is_current {
                        shares[rack_id]
                            + active
                            + cold.get(&(rack_id.clone(), deployment.clone())).copied().unwrap_or(0)
                    } else {
                        active
                    };
                    // Never create an empty deployment on a rack that does not have it.
                    if want == 0 && !rack.pool_sizes.contains_key(&deployment) {
                        continue;
                    }
                    out.push(PoolTarget {
                        rack: rack_id.clone(),
                        game: game.clone(),
                        version: version.clone(),
                        deployment,
                        pool_size: want,
                    });
                }
            }
        }
    }
    out
}

/// Pushes pool sizes that differ from what each rack holds, on every change and every
/// [`RESEND`]. Each rack's pushes run on their own: a rack that does not answer (its
/// controller hung, its link dropping packets) holds back only its own sizes until the call
/// times out, never the replacements of every other rack. A rack whose last push is still
/// under way is skipped; the push wakes this loop again when it ends.
pub async fn run(broker: Arc<Broker>) {
    let mut last_full = Instant::now();
    let reported = Arc::new(Reported::default());
    let mut under_way: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    loop {
        tokio::select! {
            _ = broker.shutdown.cancelled() => return,
            _ = broker.pools_changed.notified() => {
                // A burst of claims becomes one update per rack, not one per claim: each
                // update makes the controller run its packer.
                tokio::time::sleep(COALESCE).await;
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let full = last_full.elapsed() >= RESEND;
        if full {
            last_full = Instant::now();
        }
        under_way.retain(|_, push| !push.is_finished());
        // Per rack: each size to set, with the one the rack holds now.
        let mut by_rack: BTreeMap<String, Vec<(PoolTarget, Option<u32>)>> = BTreeMap::new();
        for t in targets(&broker) {
            let held = broker.with_rack(&t.rack, |r| r.pool_sizes.get(&t.deployment).copied()).flatten();
            if full || held != Some(t.pool_size) {
                by_rack.entry(t.rack.clone()).or_default().push((t, held));
            }
        }
        for (rack, changed) in by_rack {
            if under_way.contains_key(&rack) {
                continue;
            }
            let Some(target) = broker.with_rack(&rack, |r| r.target.clone()).flatten() else { continue };
            let (broker, reported) = (broker.clone(), reported.clone());
            under_way.insert(
                rack,
                tokio::spawn(async move {
                    for (t, held) in changed {
                        push(&broker, &target, &t, held, &reported).await;
                    }
                    broker.pools_changed.notify_one();
                }),
            );
        }
    }
}

/// The last error logged per (rack, deployment): each is logged once until a push succeeds.
#[derive(Default)]
struct Reported(Mutex<HashMap<(String, String), String>>);

impl Reported {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), String>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Sets one pool size at its rack, which held `held`.
async fn push(broker: &Broker, target: &Target, t: &PoolTarget, held: Option<u32>, reported: &Reported) {
    let Some(spec) = broker.catalog.game(&t.game).and_then(|g| g.versions.get(&t.version).cloned()) else {
        return;
    };
    let spec = deployment_spec(&t.game, &t.version, &spec, t.pool_size);
    let key = (t.rack.clone(), t.deployment.clone());
    match broker.controllers.put_deployment(target, &t.deployment, &spec).await {
        Ok(view) => {
            Metrics::outcome(&broker.metrics.pool_updates, "ok");
            broker.with_rack(&t.rack, |r| {
                r.pool_sizes.insert(t.deployment.clone(), view.spec.pool_size);
                r.deployments.insert(t.deployment.clone(), t.game.clone());
            });
            if reported.map().remove(&key).is_some() || held != Some(t.pool_size) {
                tracing::info!(rack = %t.rack, deployment = %t.deployment, pool_size = t.pool_size, "pool size set");
            }
        }
        Err(err) => {
            Metrics::outcome(&broker.metrics.pool_updates, "failed");
            let text = err.to_string();
            let mut reported = reported.map();
            if reported.get(&key) != Some(&text) {
                tracing::warn!(rack = %t.rack, deployment = %t.deployment, error = %text, "cannot set the pool size");
                reported.insert(key, text);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::racks::fake_controllers::{self, add_rack};
    use api::broker::{AutoWarm, GameSpec, GameVersionSpec, RegionSpec};

    /// A broker with game `g` (version 1) and one online rack `r1` in region `east`.
    fn broker_with_rack() -> std::sync::Arc<Broker> {
        let broker = broker_with_game();
        add_rack(&broker, "r1", "http://c");
        broker
    }

    /// A broker with game `g` (version 1, current) and region `east`, no rack yet.
    fn broker_with_game() -> std::sync::Arc<Broker> {
        let broker = crate::broker::test_broker();
        let c = &broker.catalog;
        c.put_region("east", &RegionSpec::default()).unwrap();
        c.put_game("g", &serde_json::from_value::<GameSpec>(serde_json::json!({})).unwrap()).unwrap();
        let version: GameVersionSpec = serde_json::from_value(serde_json::json!({
            "images": {"x86_64": "img"}, "profile": {"millicores": 500, "memory_mib": 256},
        }))
        .unwrap();
        c.put_version("g", "1", &version).unwrap();
        c.put_game(
            "g",
            &serde_json::from_value::<GameSpec>(serde_json::json!({"current_version": "1"})).unwrap(),
        )
        .unwrap();
        broker
    }

    fn pool(broker: &Broker) -> u32 {
        let t = targets(broker);
        assert_eq!(t.len(), 1, "{t:?}");
        t[0].pool_size
    }

    #[test]
    fn a_fixed_target_plus_claims_plus_cold_starts_is_the_pool() {
        let broker = broker_with_rack();
        broker.catalog.set_warm_target("g", "east", &WarmTargetSpec { warm: 2, auto: None }).unwrap();
        assert_eq!(pool(&broker), 2);
        broker.with_rack("r1", |r| {
            let claimed = crate::racks::registry::InstanceEntry {
                deployment: "g-1".into(),
                board: "b".into(),
                state: api::rack::InstanceState::Claimed,
            };
            r.set_instance("i1", Some(claimed));
        });
        assert_eq!(pool(&broker), 3, "a claim makes the rack start a replacement");
        cold_start(&broker, "r1", "g-1");
        assert_eq!(pool(&broker), 4);
        cold_start_done(&broker, "r1", "g-1");
        assert_eq!(pool(&broker), 3);
    }

    #[test]
    fn an_auto_target_follows_arrivals_times_boot_time_within_its_bounds() {
        let broker = broker_with_rack();
        let spec = WarmTargetSpec { warm: 1, auto: Some(AutoWarm { max: 8, safety: 1.0 }) };
        broker.catalog.set_warm_target("g", "east", &spec).unwrap();
        assert_eq!(pool(&broker), 1, "no boot measured yet: the floor");
        broker.demand.boot_sample("g", 4000);
        let now = now_ms();
        // 30 requests in the last second: about 0.5 per second over the rate's time constant.
        for _ in 0..30 {
            broker.demand.arrival("g", "east", now);
        }
        assert_eq!(pool(&broker), 2, "0.5/s x 4 s");
        for _ in 0..300 {
            broker.demand.arrival("g", "east", now);
        }
        assert_eq!(pool(&broker), 8, "capped at max");
    }

    #[test]
    fn shares_add_up_to_the_target() {
        let racks: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let s = split(7, &racks);
        assert_eq!(s.values().sum::<u32>(), 7);
        assert_eq!((s["a"], s["b"], s["c"]), (3, 2, 2));
        assert!(split(3, &[]).is_empty());
    }

    /// A rack whose controller accepts the call and never answers holds back only its own
    /// pool size: the other rack of the region gets its size while that call is still
    /// unanswered. Pushed one rack after the other, the second rack waited until the client
    /// gave up on the first (5 s) and hung up.
    #[tokio::test]
    async fn a_rack_that_never_answers_holds_back_only_its_own_pool_size() {
        use api::rack::{DeploymentSpec, DeploymentView};
        use axum::extract::Path;

        let broker = broker_with_game();
        broker.catalog.set_warm_target("g", "east", &WarmTargetSpec { warm: 2, auto: None }).unwrap();
        let (mut heard, heard_tx) = fake_controllers::Heard::new();
        let silent_url = fake_controllers::silent(heard_tx.clone()).await;

        // "b-answers" sets what it is sent, as a controller does.
        let events = heard_tx.clone();
        let app = axum::Router::new().route(
            "/v1/deployments/{id}",
            axum::routing::put(
                move |Path(id): Path<String>, axum::Json(spec): axum::Json<DeploymentSpec>| {
                    let events = events.clone();
                    async move {
                        let _ = events.send("answering: set");
                        axum::Json(DeploymentView { id, spec, instances: Default::default() })
                    }
                },
            ),
        );
        let answering_url = fake_controllers::serve(app).await;

        add_rack(&broker, "a-silent", &silent_url);
        add_rack(&broker, "b-answers", &answering_url);
        tokio::spawn(run(broker.clone()));
        broker.pools_changed.notify_one();

        heard.until("answering: set").await;
        heard.assert_silent_call_still_open().await;
        let held = broker.with_rack("b-answers", |r| r.pool_sizes.get("g-1").copied()).flatten();
        assert_eq!(held, Some(1), "the answering rack holds its share of the warm target");
        broker.shutdown.cancel();
    }
}
