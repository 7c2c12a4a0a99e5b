//! The pool reconciler: keeps each deployment at its pool size. Surplus idle instances are
//! terminated, the least advanced first (claimed ones are never touched); the missing instances
//! of every deployment are placed together, so the packer can order the whole demand. The
//! packer runs outside the write lock on a snapshot of the rack, and its plan is checked
//! against the rack as it is at write time before anything is written.

use std::collections::{BTreeSet, HashMap};
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
            let placed: Vec<&Placement> = outcomes.iter().flat_map(|o| &o.placed).collect();
            // A plan can only over-commit the boards it names: only those are read again.
            let named: BTreeSet<&str> = placed.iter().map(|p| p.board_id.as_str()).collect();
            let (boards, on_them) = rows::boards_and_instances_of(&w.tx, &named)?;
            if let Err(why) = placement::still_fits(&boards, &on_them, &placed, &self.config.classes) {
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use api::InstancePorts;
    use rusqlite::params;

    use super::*;
    use crate::claims::tests::rack_with_ready;
    use crate::db::DbError;
    use crate::placement::still_fits;

    /// Facts the test rack's class (`x86_64`) matches.
    fn x86_facts(id: &str) -> String {
        let mut facts = crate::preflight::tests::facts();
        facts.board_id = id.into();
        facts.arch = "x86_64".into();
        serde_json::to_string(&facts).unwrap()
    }

    fn placement(board: &str, memory_mib: u64, adb: u16) -> Placement {
        Placement {
            board_id: board.into(),
            cpus: vec![1],
            millicores: 100,
            memory_mib,
            gpu_slots: 0,
            encoder_slots: 0,
            ports: InstancePorts { adb, stream: adb + 1 },
            group: Some("d".into()),
        }
    }

    /// The packer's plan is checked again under the lock on the boards it names only: the same
    /// verdict as on the whole rack, for a plan that fits, one that over-commits memory, one
    /// that reuses a port an instance of its board holds, one on a cordoned board and one on a
    /// board that is gone.
    #[test]
    fn a_plan_is_checked_again_on_its_own_boards_with_the_verdict_of_the_whole_rack() {
        let (_dir, rack) = rack_with_ready(2);
        rack.write(|w| {
            w.tx.execute("UPDATE boards SET facts = ?1 WHERE id = 'b1'", [x86_facts("b1")])?;
            w.tx.execute(
                "INSERT INTO boards (id, state, arch, address, facts, credential_hash, last_heartbeat_ms,
                     desired_generation, enrolled_ms, cordoned)
                 VALUES ('b2', 'ready', 'x86_64', '10.0.0.2', ?1, 'h2', ?2, 1, 0, 1)",
                params![x86_facts("b2"), w.now_ms as i64],
            )?;
            let mut row = rows::instance(&w.tx, "i0")?.unwrap();
            row.id = "on-b2".into();
            row.board_id = "b2".into();
            rows::insert_instance(&w.tx, &row, w.now_ms)?;
            Ok::<_, RackError>(())
        })
        .unwrap();
        let classes = &rack.config.classes;
        let (all_boards, all_instances) = rack
            .db
            .read(|c| Ok::<_, DbError>((rows::boards(c)?, rows::instances_where(c, "1 = 1", [])?)))
            .unwrap();
        let read_named = |plan: &[&Placement]| {
            let named: BTreeSet<&str> = plan.iter().map(|p| p.board_id.as_str()).collect();
            rack.db.read(|c| rows::boards_and_instances_of(c, &named)).unwrap()
        };

        let (boards, instances) = read_named(&[&placement("b1", 64, 20010), &placement("gone", 64, 20010)]);
        assert_eq!(boards.iter().map(|b| b.id.as_str()).collect::<Vec<_>>(), ["b1"]);
        let mut on_b1: Vec<&str> = instances.iter().map(|i| i.id.as_str()).collect();
        on_b1.sort_unstable();
        assert_eq!(on_b1, ["i0", "i1"], "only the named boards' instances are read");

        let plans = [
            (placement("b1", 64, 20010), None),
            (placement("b1", 1_000_000, 20010), Some("")),
            (placement("b1", 64, 20000), Some("")),
            (placement("b2", 64, 20010), Some("board b2 left service")),
            (placement("gone", 64, 20010), Some("board gone is gone")),
        ];
        for (plan, want) in &plans {
            let (boards, instances) = read_named(&[plan]);
            let named = still_fits(&boards, &instances, &[plan], classes);
            let whole = still_fits(&all_boards, &all_instances, &[plan], classes);
            assert_eq!(named, whole, "{plan:?}");
            match want {
                None => assert_eq!(named, Ok(()), "{plan:?}"),
                Some(reason) => {
                    assert!(named.as_ref().is_err_and(|e| e.contains(reason)), "{plan:?}: {named:?}")
                }
            }
        }
    }
}
