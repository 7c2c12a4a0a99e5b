//! Sessions: the platform's requests, from arrival to their end.
//!
//! - [`create`]: validates, answers a retry with the session its key already has, stores the
//!   new session (`placing`) before any claim, so a broker killed mid-placement finds it again;
//!   then one placement attempt: `active` (201) or `queued` (202).
//! - [`run_queue`]: decides queued sessions again whenever capacity may have grown, at each
//!   relaxation step, and fails them with `no_capacity` at their deadline, never before.
//! - [`recover`]: at start, finds what sessions caught mid-placement hold at the racks.
//! - heartbeats, ending, listing, long-polls, explanations.

pub mod lease_book;
pub mod leases;
pub mod placer;
pub mod queue;
pub mod retention;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use api::broker::{SessionRequest, SessionState, SessionView};
use service_kit::time::now_ms;
use sha2::{Digest, Sha256};

use crate::broker::Broker;
use crate::error::BrokerError;
use crate::scheduler;
use placer::Attempt;
use queue::Waiting;
use store::{ExplainRecord, SessionRow};

/// How long a retry waits for a session another request is placing.
const PLACING_WAIT: Duration = Duration::from_secs(5);
/// Longest long-poll.
pub const MAX_WAIT_MS: u64 = 30_000;

/// The answer to a session request: the session and whether it was placed now.
pub struct Created {
    pub view: SessionView,
    pub state: SessionState,
}

fn body_hash(request: &SessionRequest) -> Result<String, BrokerError> {
    // Maps are BTreeMaps: the serialisation is canonical.
    Ok(hex::encode(Sha256::digest(serde_json::to_vec(request)?)))
}

fn new_id() -> String {
    // `new_token` is `s_<64 hex>`; 96 random bits are plenty for an id.
    format!("s-{}", &service_kit::auth::new_token("s")[2..26])
}

fn scheduler_request(tenant: &str, request: &SessionRequest) -> scheduler::Request {
    let player = scheduler::Player {
        id: request.player.id.clone(),
        region: request.player.region.clone(),
        rtt_ms: request.player.rtt_ms.clone(),
        loss: request.player.loss.clone(),
    };
    let mut r = scheduler::Request::new(&request.game, tenant, player);
    r.deadline_ms = request.deadline();
    r
}

fn waiting(row: &SessionRow, explain: ExplainRecord) -> Waiting {
    Waiting {
        id: row.id.clone(),
        tenant: row.tenant.clone(),
        game: row.game.clone(),
        request: scheduler_request(&row.tenant, &row.request),
        created_ms: row.created_ms,
        deadline_ms: row.deadline_ms,
        explain,
        cold_start: None,
        skip_racks: Default::default(),
        region: None,
        next_decision_ms: row.deadline_ms,
    }
}

/// `POST /v1/sessions`.
pub async fn create(
    broker: &Arc<Broker>,
    tenant: &str,
    key: &str,
    request: SessionRequest,
) -> Result<Created, BrokerError> {
    let started = std::time::Instant::now();
    request.validate()?;
    let hash = body_hash(&request)?;
    let Some((_, version)) = broker.catalog.scheduler_game(&request.game) else {
        // A retry of a session whose game has since lost its current version is still a retry.
        if let Some(existing) = store::by_key(&broker.db, tenant, key)? {
            return retried(broker, existing, &hash).await;
        }
        return Err(BrokerError::unknown(
            "unknown_game",
            format!("game {:?} does not exist or has no current version", request.game),
        ));
    };
    if let Some(region) = &request.player.region
        && !broker.catalog.has_region(region)
    {
        return Err(BrokerError::unknown(
            "unknown_region",
            format!("player.region {region:?} is not a known region"),
        ));
    }
    let now = now_ms();
    let row = SessionRow {
        id: new_id(),
        tenant: tenant.to_string(),
        idem_key: key.to_string(),
        body_hash: hash.clone(),
        game: request.game.clone(),
        version,
        deadline_ms: now + request.deadline(),
        request,
        state: SessionState::Placing,
        region: None,
        rack: None,
        board: None,
        instance: None,
        deployment: None,
        endpoint: None,
        token: None,
        lease_expires_ms: None,
        reason: None,
        created_ms: now,
    };
    // The insert is the idempotency check: the key is UNIQUE per tenant.
    if !store::insert(&broker.db, &row)? {
        // A retry, or another request with the same key won the race.
        let existing =
            store::by_key(&broker.db, tenant, key)?.ok_or_else(|| BrokerError::not_found("session", key))?;
        return retried(broker, existing, &hash).await;
    }
    let mut w = waiting(&row, ExplainRecord::default());
    let outcome = placer::attempt(broker, &mut w).await;
    // The sample the region prices are learned from: every new session's measured RTTs.
    broker.demand.player(&w.game, &w.request.player.rtt_ms);
    // Demand is counted where the scheduler sends a request (else the player's home region).
    if let Some(region) = w.region.clone().or_else(|| w.request.player.home_region().map(str::to_string)) {
        broker.demand.arrival(&w.game, &region, now);
        broker.pools_changed.notify_one();
    }
    let row = match settle(broker, w, outcome)? {
        Some(Settled::Active(p)) => SessionRow {
            state: SessionState::Active,
            region: Some(p.region),
            rack: Some(p.rack),
            board: Some(p.board),
            instance: Some(p.instance),
            deployment: Some(p.deployment),
            endpoint: Some(p.endpoint),
            token: Some(p.token),
            lease_expires_ms: Some(p.lease_expires_ms),
            ..row
        },
        Some(Settled::Queued) => SessionRow { state: SessionState::Queued, ..row },
        Some(Settled::Failed) => {
            SessionRow { state: SessionState::Failed, reason: Some(NO_CAPACITY.into()), ..row }
        }
        // Ended while it was being placed.
        None => store::get(&broker.db, &row.id)?.ok_or_else(|| BrokerError::not_found("session", &row.id))?,
    };
    broker.metrics.placement_seconds.observe(started.elapsed().as_secs_f64());
    Ok(Created { state: row.state, view: row.view() })
}

const NO_CAPACITY: &str = "no_capacity";

/// What [`settle`] wrote.
enum Settled {
    Active(store::Placement),
    Queued,
    Failed,
}

/// A retry: the same body gets the same session (once it is out of `placing`), another body
/// is refused.
async fn retried(broker: &Broker, existing: SessionRow, hash: &str) -> Result<Created, BrokerError> {
    if existing.body_hash != hash {
        return Err(BrokerError::conflict(
            "idempotency_key_reused",
            format!("Idempotency-Key was used for session {} with another body", existing.id),
        ));
    }
    let row = if existing.state == SessionState::Placing {
        wait_for_change(broker, &existing.id, SessionState::Placing, PLACING_WAIT).await?.unwrap_or(existing)
    } else {
        existing
    };
    Ok(Created { state: row.state, view: row.view() })
}

/// Writes an attempt's outcome; a session that must wait joins the queue. `None` when the
/// session was ended meanwhile (nothing written; a claim made for it is released).
fn settle(broker: &Arc<Broker>, mut w: Waiting, outcome: Attempt) -> Result<Option<Settled>, BrokerError> {
    let now = now_ms();
    let id = w.id.clone();
    let from = [SessionState::Placing, SessionState::Queued];
    let settled = match outcome {
        Attempt::Placed(placement) => {
            release_cold_start(broker, &mut w);
            if store::activate(&broker.db, &w.id, &placement, &w.explain, now)? {
                broker.leases.set(&w.id, &placement.rack, placement.lease_expires_ms);
                Some(Settled::Active(placement))
            } else {
                spawn_release(broker, &placement.rack, &w.id);
                None
            }
        }
        Attempt::Wait => {
            if store::transition(&broker.db, &w.id, &from, SessionState::Queued, None, Some(&w.explain), now)?
            {
                let mut queue = broker.queue.lock().unwrap_or_else(|p| p.into_inner());
                queue.push(w);
                broker.metrics.queued.set(queue.len() as i64);
                Some(Settled::Queued)
            } else {
                release_cold_start(broker, &mut w);
                None
            }
        }
        Attempt::Failed => {
            release_cold_start(broker, &mut w);
            let failed = SessionState::Failed;
            store::transition(&broker.db, &w.id, &from, failed, Some(NO_CAPACITY), Some(&w.explain), now)?
                .then_some(Settled::Failed)
        }
    };
    broker.session_changed(&id);
    Ok(settled)
}

fn release_cold_start(broker: &Broker, w: &mut Waiting) {
    if let Some((rack, deployment)) = w.cold_start.take() {
        crate::pools::cold_start_done(broker, &rack, &deployment);
    }
}

/// Releases a session's claim at a rack, retrying in the background.
pub fn spawn_release(broker: &Arc<Broker>, rack: &str, key: &str) {
    let broker = broker.clone();
    let (rack, key) = (rack.to_string(), key.to_string());
    tokio::spawn(async move {
        for delay in [0u64, 500, 2000, 5000, 15_000] {
            tokio::time::sleep(Duration::from_millis(delay)).await;
            let Some(target) = broker.with_rack(&rack, |r| r.target.clone()).flatten() else { continue };
            match broker.controllers.release(&target, &key).await {
                Ok(()) => {
                    broker.pools_changed.notify_one();
                    return;
                }
                Err(err) => {
                    tracing::debug!(session = %key, rack = %rack, error = %err, "release failed; retrying")
                }
            }
        }
        tracing::warn!(session = %key, rack = %rack, "could not release the claim; the rack's lease will end it");
    });
}

/// Re-decides queued sessions whenever capacity may have grown, at their relaxation steps and
/// deadlines. Arrival order is kept: an older session gets the first chance at an instance.
pub async fn run_queue(broker: Arc<Broker>) {
    loop {
        let wake = broker.queue.lock().unwrap_or_else(|p| p.into_inner()).next_wake_ms();
        let sleep = wake.map_or(Duration::from_secs(1), |at| {
            Duration::from_millis(at.saturating_sub(now_ms()).clamp(5, 1000))
        });
        tokio::select! {
            _ = broker.shutdown.cancelled() => return,
            _ = broker.capacity_changed.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
        }
        let waiting = broker.queue.lock().unwrap_or_else(|p| p.into_inner()).take_all();
        for mut w in waiting {
            let outcome = placer::attempt(&broker, &mut w).await;
            let placed = matches!(outcome, Attempt::Placed(_));
            let created_ms = w.created_ms;
            match settle(&broker, w, outcome) {
                Ok(_) if placed => broker
                    .metrics
                    .queue_wait_seconds
                    .observe(now_ms().saturating_sub(created_ms) as f64 / 1000.0),
                Ok(_) => {}
                Err(err) => tracing::error!(error = %err, "queued session could not be updated"),
            }
        }
        let queued = broker.queue.lock().unwrap_or_else(|p| p.into_inner()).len();
        broker.metrics.queued.set(queued as i64);
    }
}

/// At start: the active sessions' leases are loaded into the lease book. Sessions caught
/// `placing` or `queued` by a crash may hold a claim at some rack (the claim key is the
/// session id): adopt the first claim found, release any other, and queue the rest again.
pub async fn recover(broker: &Arc<Broker>) -> Result<(), BrokerError> {
    broker.leases.load(store::active_leases(&broker.db)?);
    let rows = store::in_states(&broker.db, &[SessionState::Placing, SessionState::Queued])?;
    if rows.is_empty() {
        return Ok(());
    }
    let racks: Vec<(String, String, Option<String>, crate::racks::client::Target)> = broker
        .racks()
        .values()
        .filter_map(|r| Some((r.id.clone(), r.region.clone()?, r.player_host.clone(), r.target.clone()?)))
        .collect();
    // A rack that does not answer is asked once, not once per session: start-up must not wait
    // a timeout for every session that was in flight.
    let mut silent: std::collections::HashSet<String> = Default::default();
    for row in rows {
        let explain = store::explain(&broker.db, &row.id)?;
        let mut w = waiting(&row, explain);
        let mut adopted = None;
        for (rack, region, player_host, target) in &racks {
            if silent.contains(rack) {
                w.skip_racks.insert(rack.clone());
                continue;
            }
            match broker.controllers.get_claim(target, &row.id).await {
                Ok(Some(claim)) if claim.state == api::rack::ClaimState::Active => {
                    if adopted.is_none() {
                        let endpoint = api::broker::Endpoint {
                            host: player_host.clone().unwrap_or(claim.host.clone()),
                            stream_port: claim.ports.stream,
                            adb_port: claim.ports.adb,
                        };
                        adopted = Some(store::Placement {
                            region: region.clone(),
                            rack: rack.clone(),
                            board: claim.board,
                            instance: claim.instance,
                            deployment: claim.deployment,
                            endpoint,
                            token: placer::session_token(claim.stream_token),
                            lease_expires_ms: now_ms() + broker.config.session_lease.as_millis() as u64,
                        });
                    } else {
                        spawn_release(broker, rack, &row.id);
                    }
                }
                Ok(_) => {}
                Err(err) => {
                    // Unknown: never claim there again for this session; its lease will lapse.
                    tracing::warn!(session = %row.id, rack = %rack, error = %err, "cannot check a claim during recovery");
                    w.skip_racks.insert(rack.clone());
                    if matches!(err, crate::racks::client::CallError::Unreachable(_)) {
                        silent.insert(rack.clone());
                    }
                }
            }
        }
        let outcome = match adopted {
            Some(p) => Attempt::Placed(p),
            None if row.deadline_ms <= now_ms() => Attempt::Failed,
            None => Attempt::Wait,
        };
        settle(broker, w, outcome)?;
    }
    broker.capacity_changed.notify_one();
    Ok(())
}

/// The tenant's session (another tenant's is "not found").
pub fn get_own(broker: &Broker, tenant: &str, id: &str) -> Result<SessionRow, BrokerError> {
    match store::get(&broker.db, id)? {
        Some(row) if row.tenant == tenant => Ok(row),
        _ => Err(BrokerError::not_found("session", id)),
    }
}

/// Waits until the session leaves `state` or `timeout` passes; `None` if it did not change.
pub async fn wait_for_change(
    broker: &Broker,
    id: &str,
    state: SessionState,
    timeout: Duration,
) -> Result<Option<SessionRow>, BrokerError> {
    // Subscribed before the first read, so a change between the two is not missed.
    let mut watch = broker.watch_session(id);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        watch.seen();
        if let Some(row) = store::get(&broker.db, id)?
            && row.state != state
        {
            return Ok(Some(row));
        }
        match tokio::time::timeout_at(deadline, watch.changed()).await {
            Ok(true) => continue,
            _ => return Ok(None),
        }
    }
}

/// `POST /v1/sessions/{id}/heartbeat`: extends an active session's lease.
pub fn heartbeat(broker: &Broker, tenant: &str, id: &str) -> Result<SessionRow, BrokerError> {
    let row = get_own(broker, tenant, id)?;
    if row.state.is_final() {
        return Err(BrokerError::conflict(
            "session_over",
            format!(
                "session {id} is {} ({}); start a new one",
                row.state.as_str(),
                row.reason.as_deref().unwrap_or("")
            ),
        ));
    }
    if row.state != SessionState::Active {
        // Queued or placing: no lease yet, nothing to extend.
        return Ok(row);
    }
    let until = now_ms() + broker.config.session_lease.as_millis() as u64;
    if store::extend_lease(&broker.db, id, until)? {
        broker.leases.extend(id, until);
        // Only the lease moved, and never backwards: no second read (a heartbeat per player
        // every few seconds is the broker's most frequent write).
        let lease = row.lease_expires_ms.map_or(until, |l| l.max(until));
        return Ok(SessionRow { lease_expires_ms: Some(lease), ..row });
    }
    // It left `active` meanwhile: answer with what it is now.
    get_own(broker, tenant, id)
}

/// `DELETE /v1/sessions/{id}`: ends the session and releases its instance (idempotent).
pub fn end(broker: &Arc<Broker>, tenant: &str, id: &str) -> Result<SessionRow, BrokerError> {
    let row = get_own(broker, tenant, id)?;
    if row.state.is_final() {
        return Ok(row);
    }
    let from = [SessionState::Queued, SessionState::Placing, SessionState::Active];
    if store::transition(
        &broker.db,
        id,
        &from,
        SessionState::Ended,
        Some("ended_by_platform"),
        None,
        now_ms(),
    )? {
        broker.leases.remove(id);
        if let Some(mut w) = broker.queue.lock().unwrap_or_else(|p| p.into_inner()).remove(id) {
            release_cold_start(broker, &mut w);
        }
        if let Some(rack) = &row.rack {
            spawn_release(broker, rack, id);
        }
        broker.session_changed(id);
    }
    get_own(broker, tenant, id)
}
