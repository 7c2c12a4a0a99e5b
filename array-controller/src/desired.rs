//! Each board's desired state, derived from its instance rows and their deployments, and the
//! long-poll by which a board waits for a newer one.

use std::collections::HashMap;
use std::time::Duration;

use api::rack::{DeploymentSpec, InstanceState};
use api::{DesiredState, InstanceSpec, Readiness};
use rusqlite::Connection;

use crate::error::RackError;
use crate::rack::Rack;
use crate::rows::{self, BoardRow, InstanceRow};

impl Rack {
    /// The desired state of a board now.
    pub fn desired_state(&self, board_id: &str) -> Result<DesiredState, RackError> {
        self.db.read(|conn| desired_state(conn, board_id))
    }

    /// Waits up to `wait` for the board's desired generation to pass `after`; `None` when it did
    /// not (or the controller is shutting down).
    pub async fn wait_desired(
        &self,
        board_id: &str,
        after: u64,
        wait: Duration,
    ) -> Result<Option<DesiredState>, RackError> {
        // Subscribe before reading, so a change committed in between still wakes us.
        let mut changes = self.watch_desired(board_id);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // The generation first: a poll that finds nothing newer (every poll a board makes
            // right after its report) then costs one small read, not a whole desired state. A
            // newer one is read under the same lock: one turn at the lock, not two.
            let newer = self.db.read(|conn| {
                let generation = rows::desired_generation(conn, board_id)?
                    .ok_or_else(|| RackError::not_found("board", board_id))?;
                if generation > after { desired_state(conn, board_id).map(Some) } else { Ok(None) }
            })?;
            if newer.is_some() {
                return Ok(newer);
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return Ok(None) },
                _ = tokio::time::sleep_until(deadline) => return Ok(None),
                _ = self.shutdown.cancelled() => return Ok(None),
            }
        }
    }
}

fn desired_state(conn: &Connection, board_id: &str) -> Result<DesiredState, RackError> {
    let board = rows::board(conn, board_id)?.ok_or_else(|| RackError::not_found("board", board_id))?;
    let mut deployments: HashMap<String, Option<DeploymentSpec>> = HashMap::new();
    let mut instances = Vec::new();
    for row in rows::instances_where(conn, "board_id = ?1 AND state != 'terminating'", [board_id])? {
        if !deployments.contains_key(&row.deployment_id) {
            deployments.insert(row.deployment_id.clone(), rows::deployment(conn, &row.deployment_id)?);
        }
        if let Some(Some(deployment)) = deployments.get(&row.deployment_id)
            && let Some(spec) = instance_spec(&row, deployment, &board)
        {
            instances.push(spec);
        }
    }
    Ok(DesiredState { generation: board.desired_generation, instances })
}

/// The spec a board runs for an instance row.
pub fn instance_spec(
    row: &InstanceRow,
    deployment: &DeploymentSpec,
    board: &BoardRow,
) -> Option<InstanceSpec> {
    debug_assert_ne!(row.state, InstanceState::Terminating);
    let image = deployment.images.get(&board.arch)?.clone();
    let mut env = deployment.env.clone();
    let display = deployment.profile.display;
    for (key, value) in [
        ("SIM_DISPLAY_WIDTH", display.width),
        ("SIM_DISPLAY_HEIGHT", display.height),
        ("SIM_DISPLAY_DPI", display.dpi),
        ("SIM_DISPLAY_FPS", display.fps),
    ] {
        env.entry(key.to_string()).or_insert_with(|| value.to_string());
    }
    let mut devices = Vec::new();
    if row.gpu_slots > 0 {
        devices.extend(board.facts.gpu_devices.iter().cloned());
    }
    if row.encoder_slots > 0 {
        devices.extend(board.facts.encoder_devices.iter().cloned());
    }
    Some(InstanceSpec {
        id: row.id.clone(),
        image,
        generation: row.generation,
        cpus: row.cpus.clone(),
        memory_mib: row.memory_mib,
        pids_limit: deployment.profile.pids_limit,
        devices,
        ports: row.ports,
        env,
        args: deployment.args.clone(),
        privileged: deployment.privileged,
        boot_timeout_s: deployment.boot_timeout_s,
        readiness: Readiness { launch: deployment.launch.clone() },
        reset_epoch: row.reset_epoch,
        stream_token: row.stream_token.clone(),
    })
}

#[cfg(test)]
mod tests {
    use crate::claims::tests::{rack_with_ready, request, token_of};

    #[tokio::test]
    async fn a_long_poll_answers_only_a_newer_generation() {
        let (_dir, rack) = rack_with_ready(2);
        let now = rack.desired_state("b1").unwrap();
        let short = std::time::Duration::from_millis(50);
        let older = rack.wait_desired("b1", now.generation - 1, short).await.unwrap();
        assert_eq!(older.map(|d| d.instances.len()), Some(2));
        assert!(rack.wait_desired("b1", now.generation, short).await.unwrap().is_none(), "nothing newer");
        // A change while the poll waits answers it with the new state.
        let rack = std::sync::Arc::new(rack);
        let waiting = {
            let rack = rack.clone();
            tokio::spawn(async move {
                rack.wait_desired("b1", now.generation, std::time::Duration::from_secs(5)).await
            })
        };
        tokio::time::sleep(short).await;
        rack.claim(request("s1")).unwrap();
        rack.release("s1").unwrap();
        let newer = waiting.await.unwrap().unwrap().expect("the release changed the desired state");
        assert!(newer.generation > now.generation);
        assert!(matches!(
            rack.wait_desired("nope", 0, short).await,
            Err(crate::error::RackError::NotFound { .. })
        ));
    }

    #[test]
    fn the_desired_state_carries_each_instances_current_stream_token() {
        let (_dir, rack) = rack_with_ready(2);
        let before = rack.desired_state("b1").unwrap();
        assert_eq!(before.instances.len(), 2);
        for spec in &before.instances {
            assert!(spec.stream_token.is_some(), "{}", spec.id);
            assert_eq!(spec.stream_token, token_of(&rack, &spec.id));
        }
        let claim = rack.claim(request("s1")).unwrap();
        rack.release("s1").unwrap();
        let after = rack.desired_state("b1").unwrap();
        assert!(after.generation > before.generation, "the board is told");
        let old = before.instances.iter().find(|s| s.id == claim.instance).unwrap();
        let new = after.instances.iter().find(|s| s.id == claim.instance).unwrap();
        assert_eq!(new.generation, old.generation + 1);
        assert_ne!(new.stream_token, old.stream_token);
        assert_eq!(new.stream_token, token_of(&rack, &claim.instance));
    }
}
