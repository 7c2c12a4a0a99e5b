//! The pool reconciler: keeps each deployment at its pool size, in one transaction per pass so
//! the packer's view and the writes agree. Surplus idle instances are terminated, the least
//! advanced first (claimed ones are never touched); the missing instances of every deployment
//! are placed together, so the packer can order the whole demand.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use api::rack::{DeploymentSpec, InstanceState, RackEventBody};

use crate::db::Write;
use crate::error::RackError;
use crate::inventory::set_instance;
use crate::placement::{self, Outcome};
use crate::rack::Rack;
use crate::rows::{self, InstanceRow};

/// How often the timer retries a pool that could not be filled, when nothing changed. Placing
/// an unmet demand is the packer's expensive case (it tries several orders and repairs), and
/// it runs under the write lock.
pub const UNMET_RETRY: Duration = Duration::from_secs(10);

impl Rack {
    /// One pass over every deployment. `changed` says something happened that may make room
    /// (a board enrolled, an instance went away, a deployment changed): unmet pools are then
    /// retried at once, otherwise only every [`UNMET_RETRY`].
    pub fn reconcile_pools(&self, changed: bool) -> Result<(), RackError> {
        self.write(|w| {
            let deployments = rows::deployments(&w.tx)?;
            // The common case, every pool at its size, costs one indexed query.
            let live: HashMap<String, usize> =
                w.tx.prepare_cached(
                    "SELECT deployment_id, count(*) FROM instances
                     WHERE state NOT IN ('terminating', 'draining') GROUP BY deployment_id",
                )?
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as usize)))?
                .collect::<Result<_, _>>()?;
            let mut short: Vec<(&str, &DeploymentSpec, usize)> = Vec::new();
            for (id, spec) in &deployments {
                let (have, wanted) = (live.get(id).copied().unwrap_or(0), spec.pool_size as usize);
                if have > wanted {
                    shrink(w, id, have - wanted)?;
                } else if have < wanted && (changed || self.retry_due(id)) {
                    short.push((id, spec, wanted - have));
                }
            }
            if short.is_empty() {
                return Ok(());
            }
            let boards = rows::boards(&w.tx)?;
            let all = rows::instances_where(&w.tx, "1 = 1", [])?;
            let outcomes =
                placement::place_all(&boards, &all, &short, &self.config.classes, self.config.policy)?;
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
