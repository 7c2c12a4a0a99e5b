//! Leases. A session holds its instance while the platform heart-beats it; the broker renews
//! the claims of its active sessions with each rack in batches (so a rack keeps serving them
//! for a claim lease if the broker goes away), expires the sessions whose platform went quiet
//! and releases their instances.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use api::broker::SessionState;
use service_kit::time::now_ms;

use crate::broker::Broker;
use crate::error::BrokerError;
use crate::metrics::Metrics;
use crate::racks::client::RENEW_BATCH;
use crate::sessions::{spawn_release, store};

/// How often the finished sessions are counted for the gauges.
const FINISHED_GAUGES_EVERY: Duration = Duration::from_secs(60);

/// Runs until shutdown: expiry every tick, renewals every quarter claim lease (at most 10 s).
pub async fn run(broker: Arc<Broker>) {
    let tick = (broker.config.session_lease / 8).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let renew_every = (broker.config.claim_lease / 4).min(Duration::from_secs(10));
    let mut last_renewal: Option<Instant> = None;
    // Renewals run off this loop: a rack that does not answer must not hold back expiry.
    let mut renewing: Option<tokio::task::JoinHandle<()>> = None;
    let mut last_finished_count: Option<Instant> = None;
    let mut interval = tokio::time::interval(tick);
    loop {
        tokio::select! {
            _ = broker.shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        if let Err(err) = expire(&broker) {
            tracing::error!(error = %err, "lease expiry failed");
        }
        let renewal_due = last_renewal.is_none_or(|t| t.elapsed() >= renew_every);
        if renewal_due && renewing.as_ref().is_none_or(|r| r.is_finished()) {
            last_renewal = Some(Instant::now());
            let broker = broker.clone();
            renewing = Some(tokio::spawn(async move {
                if let Err(err) = renew(&broker).await {
                    tracing::error!(error = %err, "lease renewal failed");
                }
            }));
        }
        let finished = last_finished_count.is_none_or(|t| t.elapsed() >= FINISHED_GAUGES_EVERY);
        if finished {
            last_finished_count = Some(Instant::now());
        }
        if let Err(err) = refresh_gauges(&broker, finished) {
            tracing::error!(error = %err, "gauge refresh failed");
        }
    }
}

/// Sessions whose platform stopped heart-beating: `expired` (`lease_lapsed`), instance released.
/// Candidates come from the lease book; the write checks the stored lease, so an entry that
/// missed a heartbeat is corrected from the row instead of expiring the session.
fn expire(broker: &Arc<Broker>) -> Result<(), BrokerError> {
    let now = now_ms();
    for (id, rack) in broker.leases.lapsed(now) {
        if store::expire_if_lapsed(&broker.db, &id, now)? {
            broker.leases.remove(&id);
            tracing::info!(session = %id, "session lease lapsed");
            spawn_release(broker, &rack, &id);
            broker.session_changed(&id);
            continue;
        }
        match store::get(&broker.db, &id)? {
            Some(row) if row.state == SessionState::Active => {
                if let (Some(rack), Some(until)) = (row.rack, row.lease_expires_ms) {
                    broker.leases.set(&id, &rack, until);
                }
            }
            _ => broker.leases.remove(&id),
        }
    }
    Ok(())
}

/// Renews every active session's claim at its rack, every rack at once: a rack that does not
/// answer holds back only its own renewals. A claim the rack no longer has ends the session
/// (`instance_lost`); a rack that does not answer is tried again next time.
async fn renew(broker: &Arc<Broker>) -> Result<(), BrokerError> {
    let lease_ms = broker.config.claim_lease.as_millis() as u64;
    let racks =
        broker.leases.by_rack().into_iter().map(|(rack, keys)| renew_at(broker, rack, keys, lease_ms));
    futures_util::future::join_all(racks).await.into_iter().collect()
}

/// Renews `keys` at `rack`, batch by batch, until a batch fails.
async fn renew_at(
    broker: &Arc<Broker>,
    rack: String,
    keys: Vec<String>,
    lease_ms: u64,
) -> Result<(), BrokerError> {
    let Some(target) = broker.with_rack(&rack, |r| r.target.clone()).flatten() else { return Ok(()) };
    for batch in keys.chunks(RENEW_BATCH) {
        match broker.controllers.renew(&target, batch, lease_ms).await {
            Ok(answer) => {
                Metrics::outcome(&broker.metrics.renewals, "ok");
                for key in answer.missing {
                    let ended = store::transition(
                        &broker.db,
                        &key,
                        &[SessionState::Active],
                        SessionState::Ended,
                        Some("instance_lost"),
                        None,
                        now_ms(),
                    )?;
                    broker.leases.remove(&key);
                    if ended {
                        tracing::warn!(session = %key, rack = %rack, "the rack no longer holds the session's claim");
                        broker.session_changed(&key);
                    }
                }
            }
            Err(err) => {
                Metrics::outcome(&broker.metrics.renewals, "failed");
                tracing::debug!(rack = %rack, error = %err, "lease renewal failed");
                break;
            }
        }
    }
    Ok(())
}

/// Session gauges: the live states on every call, the finished ones (as many as the retention
/// period holds: millions on a busy day) only when `finished` is set.
fn refresh_gauges(broker: &Broker, finished: bool) -> Result<(), BrokerError> {
    let states: Vec<SessionState> =
        SessionState::ALL.into_iter().filter(|s| finished || !s.is_final()).collect();
    for (state, n) in store::count_in_states(&broker.db, &states)? {
        broker
            .metrics
            .sessions
            .get_or_create(&crate::metrics::StateLabels { state: state.as_str().into() })
            .set(n);
    }
    let after = broker.config.rack_unreachable_after;
    let mut by_health = BTreeMap::new();
    for rack in broker.racks().values() {
        *by_health.entry(format!("{:?}", rack.health(after).0).to_lowercase()).or_insert(0i64) += 1;
    }
    for state in ["online", "degraded", "unreachable"] {
        let n = by_health.get(state).copied().unwrap_or(0);
        broker.metrics.racks.get_or_create(&crate::metrics::StateLabels { state: state.into() }).set(n);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use api::broker::Endpoint;

    use super::*;
    use crate::sessions::recover;
    use crate::sessions::store::{Placement, tests::row};

    fn active(broker: &Broker, id: &str, until_ms: u64) {
        active_at(broker, id, "east-1", until_ms);
    }

    /// An active session `id` on `rack` whose lease runs until `until_ms`.
    fn active_at(broker: &Broker, id: &str, rack: &str, until_ms: u64) {
        assert!(store::insert(&broker.db, &row(id, id)).unwrap());
        let p = Placement {
            region: "east".into(),
            rack: rack.into(),
            board: "b".into(),
            instance: format!("i-{id}"),
            deployment: "d".into(),
            endpoint: Endpoint { host: "h".into(), stream_port: 1, adb_port: 2 },
            token: "t".into(),
            lease_expires_ms: until_ms,
        };
        let explain = store::ExplainRecord::default();
        assert!(store::activate(&broker.db, id, &p, &explain, 1000).unwrap());
    }

    fn state(broker: &Broker, id: &str) -> SessionState {
        store::get(&broker.db, id).unwrap().unwrap().state
    }

    #[tokio::test]
    async fn only_sessions_whose_stored_lease_lapsed_expire() {
        let broker = crate::broker::test_broker();
        let now = now_ms();
        active(&broker, "lapsed", 5_000);
        active(&broker, "live", now + 60_000);
        active(&broker, "beaten", 5_000);
        // Loaded at start, as after a restart.
        recover(&broker).await.unwrap();
        assert_eq!(broker.leases.len(), 3);
        // A heartbeat the book did not see: the row's lease moved on.
        assert!(store::extend_lease(&broker.db, "beaten", now + 60_000).unwrap());

        expire(&broker).unwrap();
        assert_eq!(state(&broker, "lapsed"), SessionState::Expired);
        assert_eq!(state(&broker, "live"), SessionState::Active);
        assert_eq!(state(&broker, "beaten"), SessionState::Active, "the stored lease wins");
        assert!(broker.leases.lapsed(now + 1).is_empty(), "the book took the row's lease");
        assert_eq!(broker.leases.by_rack()["east-1"], ["beaten", "live"]);
    }

    /// Renewals run off the expiry loop and at every rack at once. With one rack's controller
    /// silent (it reads the call and never answers), the other rack's claims are renewed and a
    /// session that went quiet expires while that call is still open. Renewed one rack after
    /// another on the loop, both waited until the client gave up on the silent rack (5 s) and
    /// hung up.
    #[tokio::test]
    async fn a_rack_that_never_answers_holds_back_neither_other_racks_renewals_nor_expiry() {
        use api::rack::{RenewRequest, RenewResponse};

        use crate::racks::fake_controllers::{self, add_rack};

        let broker = crate::broker::test_broker();
        let (mut heard, heard_tx) = fake_controllers::Heard::new();
        let silent_url = fake_controllers::silent(heard_tx.clone()).await;
        let events = heard_tx.clone();
        let answering_url = fake_controllers::serve(axum::Router::new().route(
            "/v1/claims/renew",
            axum::routing::post(move |axum::Json(request): axum::Json<RenewRequest>| {
                let events = events.clone();
                async move {
                    let _ = events.send("answering: renewed");
                    let renewed = request.keys.into_iter().map(|k| (k, u64::MAX / 2)).collect();
                    axum::Json(RenewResponse { renewed, missing: vec![] })
                }
            }),
        ))
        .await;
        add_rack(&broker, "a-silent", &silent_url);
        add_rack(&broker, "b-answers", &answering_url);
        let now = now_ms();
        active_at(&broker, "on-silent", "a-silent", now + 600_000);
        active_at(&broker, "on-answering", "b-answers", now + 600_000);
        recover(&broker).await.unwrap();
        tokio::spawn(run(broker.clone()));

        heard.until("answering: renewed").await;
        // A session on the answering rack goes quiet: the loop's next tick expires it.
        active_at(&broker, "quiet", "b-answers", 5_000);
        broker.leases.set("quiet", "b-answers", 5_000);
        tokio::time::timeout(Duration::from_secs(30), async {
            while state(&broker, "quiet") != SessionState::Expired {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the quiet session expires");
        heard.assert_silent_call_still_open().await;
        assert_eq!(state(&broker, "on-answering"), SessionState::Active);
        broker.shutdown.cancel();
    }
}
