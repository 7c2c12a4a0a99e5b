//! The pool reconciler: keeps each deployment at its pool size. Surplus idle instances are
//! terminated, the least advanced first (claimed ones are never touched); the missing instances
//! of every deployment are placed together, so the packer can order the whole demand. The
//! packer runs outside the write lock on a snapshot of the rack, and its plan is checked
//! against the rack as it is at write time before anything is written.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use api::rack::{DeploymentSpec, InstanceState, RackEventBody};

use crate::db::Write;
use crate::error::RackError;
use crate::inventory::set_instance;
use crate::packing::Placement;
use crate::placement::{self, Outcome};
use crate::rack::Rack;
use crate::rows::{self, InstanceRow};

/// How often the timer retries a pool that could not be filled, when nothing changed. Placing
/// an unmet demand is the packer's expensive case (the planning LP, other orders and, when the
/// plan cannot bound the batch, a search: up to 170 ms of CPU measured on a full 60-board rack,
/// seconds when the search runs).
pub const UNMET_RETRY: Duration = Duration::from_secs(10);

impl Rack {
    /// One pass over every deployment. `changed` says something happened that may make room
    /// (a board enrolled, an instance went away, a deployment changed): unmet pools are then
    /// retried at once, otherwise only every [`UNMET_RETRY`].
    pub fn reconcile_pools(&self, changed: bool) -> Result<(), RackError> {
        // Under the write lock: surplus instances go, and the packer's inputs are read.
        let inputs = self.write(|w| {
            let deployments = rows::deployments(&w.tx)?;
            let live = live_counts(w)?;
            let mut short: Vec<(String, DeploymentSpec, usize)> = Vec::new();
            for (id, spec) in deployments {
                let (have, wanted) = (live.get(&id).copied().unwrap_or(0), spec.pool_size as usize);
                if have > wanted {
                    shrink(w, &id, have - wanted)?;
                } else if have < wanted && (changed || self.retry_due(&id)) {
                    short.push((id, spec, wanted - have));
                }
            }
            if short.is_empty() {
                return Ok::<_, RackError>(None);
            }
            Ok(Some((short, rows::boards(&w.tx)?, rows::instances_where(&w.tx, "1 = 1", [])?)))
        })?;
        // The common case, every pool at its size, ends here.
        let Some((short, boards, all)) = inputs else { return Ok(()) };
        // Without the lock: packing an unmet demand is the expensive case (several passes and a
        // search), and claims must not wait for it.
        let refs: Vec<(&str, &DeploymentSpec, usize)> =
            short.iter().map(|(id, s, n)| (id.as_str(), s, *n)).collect();
        let mut outcomes =
            placement::place_all(&boards, &all, &refs, &self.config.classes, self.config.policy)?;
        // Under the lock again: the plan is written only if it still holds on the rack as it is
        // now. Only this loop places instances, so what can have changed is boards leaving
        // service and deployments shrinking or going away; the plan is then dropped and made
        // again on the next pass (the change itself asks for one; failing that, nothing was
        // recorded as unmet, so the next sweep retries). No wake-up of its own here: a plan
        // that kept failing would otherwise spin.
        self.write(|w| {
            let deployments: HashMap<String, DeploymentSpec> = rows::deployments(&w.tx)?.into_iter().collect();
            let live = live_counts(w)?;
            for ((id, spec, _), outcome) in short.iter().zip(outcomes.iter_mut()) {
                let wanted = match deployments.get(id) {
                    Some(now) if now == spec => now.pool_size as usize,
                    _ => 0,
                };
                outcome.placed.truncate(wanted.saturating_sub(live.get(id).copied().unwrap_or(0)));
            }
            let boards = rows::boards(&w.tx)?;
            let all = rows::instances_where(&w.tx, "1 = 1", [])?;
            let placed: Vec<&Placement> = outcomes.iter().flat_map(|o| &o.placed).collect();
            if let Err(why) = placement::still_fits(&boards, &all, &placed, &self.config.classes) {
                tracing::info!(reason = %why, "the rack changed while packing; placing again on the next pass");
                return Ok(());
            }
            for ((id, _, _), outcome) in short.iter().zip(outcomes) {
                self.record_placements(w, id, outcome)?;
            }
            Ok::<_, RackError>(())
        })
    }

    fn record_placements(&self, w: &mut Write<'_>, id: &str, outcome: Outcome) -> Result<(), RackError> {
        for placed in outcome.placed {
            let row = InstanceRow {
                id: format!("{id}-{}", short_id()),
                deployment_id: id.to_string(),
                board_id: placed.board_id.clone(),
                state: InstanceState::Pending,
                reason: None,
                generation: 1,
                reset_epoch: 0,
                millicores: placed.millicores,
                cpus: placed.cpus,
                memory_mib: placed.memory_mib,
                gpu_slots: placed.gpu_slots,
                encoder_slots: placed.encoder_slots,
                ports: placed.ports,
                container_id: None,
                claim_key: None,
                at_risk: false,
                state_since_ms: w.now_ms,
                stream_token: Some(rows::new_stream_token()),
            };
            rows::insert_instance(&w.tx, &row, w.now_ms)?;
            w.emit(RackEventBody::Instance {
                instance: row.id.clone(),
                deployment: id.to_string(),
                board: row.board_id.clone(),
                state: InstanceState::Pending,
                generation: 1,
                reason: None,
                at_risk: false,
            })?;
            w.touch_board(&row.board_id);
        }
        // An unmet pool is reported when its reasons change, not on every pass.
        let mut failures = self.placement_failures.lock().unwrap_or_else(|p| p.into_inner());
        if outcome.unplaced_reasons.is_empty() {
            failures.remove(id);
        } else if failures.get(id).map(|(reasons, _)| reasons) != Some(&outcome.unplaced_reasons) {
            tracing::warn!(deployment = %id, reasons = ?outcome.unplaced_reasons, "cannot place every instance");
            w.emit(RackEventBody::PlacementFailed {
                deployment: id.to_string(),
                reasons: outcome.unplaced_reasons.clone(),
            })?;
            failures.insert(id.to_string(), (outcome.unplaced_reasons, Instant::now()));
        } else if let Some((_, when)) = failures.get_mut(id) {
            *when = Instant::now();
        }
        Ok(())
    }

    fn retry_due(&self, id: &str) -> bool {
        let failures = self.placement_failures.lock().unwrap_or_else(|p| p.into_inner());
        failures.get(id).is_none_or(|(_, when)| when.elapsed() >= UNMET_RETRY)
    }
}

/// Instances per deployment that hold (or will hold) resources and count towards its pool.
fn live_counts(w: &Write<'_>) -> Result<HashMap<String, usize>, RackError> {
    let counts =
        w.tx.prepare_cached(
            "SELECT deployment_id, count(*) FROM instances
             WHERE state NOT IN ('terminating', 'draining') GROUP BY deployment_id",
        )?
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as usize)))?
        .collect::<Result<_, _>>()?;
    Ok(counts)
}

/// Terminates `count` idle instances of a deployment, the least advanced first, so nothing
/// warm is thrown away while something colder exists.
fn shrink(w: &mut Write<'_>, id: &str, count: usize) -> Result<(), RackError> {
    let mut idle: Vec<InstanceRow> = rows::instances_where(
        &w.tx,
        "deployment_id = ?1 AND state NOT IN ('claimed', 'terminating', 'draining')",
        [id],
    )?;
    idle.sort_by_key(|i| (removal_rank(i.state), std::cmp::Reverse(i.state_since_ms)));
    for row in idle.into_iter().take(count) {
        set_instance(w, &row, InstanceState::Terminating, Some("pool shrunk".into()), false)?;
        w.touch_board(&row.board_id);
    }
    Ok(())
}

fn removal_rank(state: InstanceState) -> u8 {
    match state {
        InstanceState::Failed => 0,
        InstanceState::Pending => 1,
        InstanceState::Starting => 2,
        InstanceState::Booting => 3,
        InstanceState::Recycling => 4,
        _ => 5,
    }
}

/// 8 random hex characters for instance ids.
fn short_id() -> String {
    let token = service_kit::auth::new_token("x");
    token[2..10].to_string()
}
