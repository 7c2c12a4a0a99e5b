//! The pool reconciler: keeps each deployment at its pool size. Missing instances are placed by
//! the packer (one transaction per deployment, so the packer's view and the write agree);
//! surplus idle instances are terminated, the least advanced first; claimed ones are never
//! touched.

use api::rack::{InstanceState, RackEventBody};

use crate::error::RackError;
use crate::inventory::set_instance;
use crate::placement;
use crate::rack::Rack;
use crate::rows::{self, InstanceRow};

impl Rack {
    /// One pass over every deployment.
    pub fn reconcile_pools(&self) -> Result<(), RackError> {
        let deployments = self.db.read(rows::deployments)?;
        for (id, spec) in deployments {
            self.write(|w| {
                // The common case, a pool at its size, costs one indexed count.
                let live_count: i64 = w.tx.prepare_cached(
                    "SELECT count(*) FROM instances WHERE deployment_id = ?1 AND state NOT IN ('terminating', 'draining')",
                )?
                .query_row([&id], |r| r.get(0))?;
                if live_count as usize == spec.pool_size as usize {
                    return Ok(());
                }
                let instances = rows::instances_where(&w.tx, "deployment_id = ?1", [&id])?;
                let live: Vec<&InstanceRow> = instances
                    .iter()
                    .filter(|i| !matches!(i.state, InstanceState::Terminating | InstanceState::Draining))
                    .collect();
                let wanted = spec.pool_size as usize;
                if live.len() > wanted {
                    let mut surplus: Vec<&&InstanceRow> =
                        live.iter().filter(|i| !matches!(i.state, InstanceState::Claimed)).collect();
                    // Least advanced first: nothing warm is thrown away while something colder exists.
                    surplus.sort_by_key(|i| (removal_rank(i.state), std::cmp::Reverse(i.state_since_ms)));
                    for row in surplus.into_iter().take(live.len() - wanted) {
                        set_instance(w, row, InstanceState::Terminating, Some("pool shrunk".into()), false)?;
                        w.touch_board(&row.board_id);
                    }
                } else if live.len() < wanted {
                    let boards = rows::boards(&w.tx)?;
                    let all = rows::instances_where(&w.tx, "1 = 1", [])?;
                    let outcome = placement::place(
                        &boards,
                        &all,
                        &id,
                        &spec,
                        wanted - live.len(),
                        &self.config.classes,
                        self.config.policy,
                    )?;
                    for placed in outcome.placed {
                        let row = InstanceRow {
                            id: format!("{id}-{}", short_id()),
                            deployment_id: id.clone(),
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
                        };
                        rows::insert_instance(&w.tx, &row, w.now_ms)?;
                        w.emit(RackEventBody::Instance {
                            instance: row.id.clone(),
                            deployment: id.clone(),
                            board: row.board_id.clone(),
                            state: InstanceState::Pending,
                            generation: 1,
                            reason: None,
                            at_risk: false,
                        })?;
                        w.touch_board(&row.board_id);
                    }
                    let mut failures = self.placement_failures.lock().unwrap_or_else(|p| p.into_inner());
                    if outcome.unplaced_reasons.is_empty() {
                        failures.remove(&id);
                    } else if failures.get(&id) != Some(&outcome.unplaced_reasons) {
                        tracing::warn!(deployment = %id, reasons = ?outcome.unplaced_reasons, "cannot place every instance");
                        w.emit(RackEventBody::PlacementFailed { deployment: id.clone(), reasons: outcome.unplaced_reasons.clone() })?;
                        failures.insert(id.clone(), outcome.unplaced_reasons);
                    }
                }
                Ok::<_, RackError>(())
            })?;
        }
        Ok(())
    }
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
