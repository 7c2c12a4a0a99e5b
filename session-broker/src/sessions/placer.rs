//! One placement attempt: decide with the fusion scheduler on the current capacity index,
//! then claim from the racks it ranks, best first, falling back to the next on a conflict or
//! a timeout. With no warm instance the session waits; on the cold path the chosen rack is
//! asked for one more instance.

use std::sync::Arc;

use api::broker::{ClaimAttempt, Endpoint};
use api::rack::{ClaimView, InstanceState};
use service_kit::time::now_ms;

use crate::broker::Broker;
use crate::catalog::deployment_id;
use crate::metrics::Metrics;
use crate::racks::client::CallError;
use crate::racks::registry::InstanceEntry;
use crate::scheduler::{self, Outcome};
use crate::sessions::queue::Waiting;
use crate::sessions::store::Placement;

/// One decision as the explanation record keeps it.
#[derive(serde::Serialize)]
struct DecisionRecord<'a> {
    at_ms: u64,
    remaining_ms: u64,
    decision: &'a scheduler::Decision,
}

/// What an attempt came to.
#[derive(Debug)]
pub enum Attempt {
    Placed(Placement),
    /// Keep waiting (queued).
    Wait,
    /// The deadline passed: `no_capacity`.
    Failed,
}

/// Tries to place `w` now.
pub async fn attempt(broker: &Arc<Broker>, w: &mut Waiting) -> Attempt {
    let now = now_ms();
    let remaining = w.deadline_ms.saturating_sub(now);
    let Some((mut game, version)) = broker.catalog.scheduler_game(&w.game) else {
        // The game lost its current version meanwhile: wait for the operator (or the deadline).
        return if remaining == 0 { Attempt::Failed } else { Attempt::Wait };
    };
    game.boot_ms = broker.demand.boot_ms(&game.id).unwrap_or(0);
    let mut request = w.request.clone();
    // The scheduler measures the deadline from the request's arrival.
    request.deadline_ms = w.deadline_ms.saturating_sub(w.created_ms).max(1);
    let decision = scheduler::decide(&broker.capacity_index(), &game, &request, remaining);
    w.next_decision_ms = match decision.retry_at_remaining_ms {
        Some(at) => w.deadline_ms.saturating_sub(at),
        None => w.deadline_ms,
    };
    let outcome = decision.outcome.clone();
    w.region = match &outcome {
        Outcome::Place { region, .. } => Some(region.clone()),
        Outcome::Queue { region, .. } => region.clone(),
        Outcome::NoCapacity { .. } => None,
    };
    let record = DecisionRecord { at_ms: now, remaining_ms: remaining, decision: &decision };
    match serde_json::value::to_raw_value(&record) {
        Ok(raw) => w.explain.push_decision(raw),
        Err(err) => tracing::error!(error = %err, "a decision could not be recorded"),
    }
    match outcome {
        Outcome::Place { region, racks } => {
            Metrics::outcome(&broker.metrics.decisions, "place");
            let deployment = deployment_id(&game.id, &version);
            for rack in racks {
                if w.skip_racks.contains(&rack) {
                    continue;
                }
                if let Some(placement) = claim_at(broker, w, &region, &rack, &deployment).await {
                    return Attempt::Placed(placement);
                }
            }
            Attempt::Wait
        }
        Outcome::Queue { rack, start_instance, .. } => {
            Metrics::outcome(&broker.metrics.decisions, "queue");
            if let (Some(rack), true, None) = (rack, start_instance, &w.cold_start) {
                let deployment = deployment_id(&game.id, &version);
                crate::pools::cold_start(broker, &rack, &deployment);
                w.cold_start = Some((rack, deployment));
            }
            if remaining == 0 { Attempt::Failed } else { Attempt::Wait }
        }
        Outcome::NoCapacity { .. } => {
            Metrics::outcome(&broker.metrics.decisions, "no_capacity");
            // Racks may still register or free instances: only the deadline ends a session.
            if remaining == 0 { Attempt::Failed } else { Attempt::Wait }
        }
    }
}

/// Claims an instance of `deployment` at `rack` for the session; records the attempt.
async fn claim_at(
    broker: &Arc<Broker>,
    w: &mut Waiting,
    region: &str,
    rack: &str,
    deployment: &str,
) -> Option<Placement> {
    let (target, player_host) = broker.with_rack(rack, |r| (r.target.clone(), r.player_host.clone()))?;
    let target = target?;
    let lease_ms = broker.config.claim_lease.as_millis() as u64;
    let result =
        broker.controllers.claim(&target, deployment, &w.id, lease_ms, broker.config.claim_timeout).await;
    let (label, detail) = match &result {
        Ok(_) => ("claimed", None),
        Err(CallError::Refused { code, message, .. }) => (
            if code == "no_ready_instance" { "no_ready_instance" } else { "refused" },
            Some(format!("{code}: {message}")),
        ),
        Err(CallError::Unreachable(e)) => ("unreachable", Some(e.clone())),
    };
    Metrics::outcome(&broker.metrics.claims, label);
    w.explain.push_attempt(ClaimAttempt {
        rack: rack.to_string(),
        result: label.to_string(),
        detail,
        at_ms: now_ms(),
    });
    match result {
        Ok(claim) => Some(placement(broker, region, rack, player_host, claim)),
        Err(CallError::Refused { .. }) => None,
        Err(CallError::Unreachable(_)) => {
            // The claim may have been made after all: release it, and do not come back here
            // for this session (a late release must not end a newer claim).
            w.skip_racks.insert(rack.to_string());
            let broker = broker.clone();
            let key = w.id.clone();
            tokio::spawn(async move {
                for delay in [0u64, 500, 2000, 5000] {
                    tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
                    if broker.controllers.release(&target, &key).await.is_ok() {
                        return;
                    }
                }
                tracing::warn!(session = %key, "could not release a claim that timed out; its lease will lapse");
            });
            None
        }
    }
}

fn placement(
    broker: &Broker,
    region: &str,
    rack: &str,
    player_host: Option<String>,
    claim: ClaimView,
) -> Placement {
    broker.with_rack(rack, |r| {
        r.set_instance(
            &claim.instance,
            Some(InstanceEntry {
                deployment: claim.deployment.clone(),
                board: claim.board.clone(),
                state: InstanceState::Claimed,
            }),
        );
    });
    broker.pools_changed.notify_one();
    Placement {
        region: region.to_string(),
        rack: rack.to_string(),
        board: claim.board,
        instance: claim.instance,
        deployment: claim.deployment,
        endpoint: Endpoint {
            host: player_host.unwrap_or(claim.host),
            stream_port: claim.ports.stream,
            adb_port: claim.ports.adb,
        },
        token: session_token(claim.stream_token),
        lease_expires_ms: now_ms() + broker.config.session_lease.as_millis() as u64,
    }
}

/// The token a session's player streams with: the one the claimed instance's stream accepts.
/// A controller that sends none (one from before stream tokens) runs instances that accept any
/// token, so a random one keeps the session's answer the same shape.
pub fn session_token(stream_token: Option<String>) -> String {
    stream_token.unwrap_or_else(|| service_kit::auth::new_token("st"))
}

#[cfg(test)]
mod tests {
    use super::session_token;

    #[test]
    fn the_session_token_is_the_claimed_instances_own_else_a_random_one() {
        assert_eq!(session_token(Some("st_from_the_rack".into())), "st_from_the_rack");
        let (a, b) = (session_token(None), session_token(None));
        assert!(a.starts_with("st_") && a.len() == 67, "{a}");
        assert_ne!(a, b);
    }
}
