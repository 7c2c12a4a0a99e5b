//! Boards after enrolment: heartbeats (observations drive the instance lifecycle, the journal
//! is replayed into the event log in order), reachability, cordoning, and board views.

use std::collections::HashMap;

use api::rack::{BoardState, BoardView, Heartbeat, HeartbeatAck, InstanceState, RackEventBody};
use rusqlite::params;

use crate::db::Write;
use crate::error::RackError;
use crate::lifecycle::{self, Transition};
use crate::placement::Held;
use crate::rack::Rack;
use crate::rows::{self, BoardRow, InstanceRow};

impl Rack {
    /// Processes a board's heartbeat.
    pub fn heartbeat(&self, board_id: &str, heartbeat: Heartbeat) -> Result<HeartbeatAck, RackError> {
        self.metrics.heartbeats.inc();
        if let Some(rejected) = &heartbeat.rejected {
            tracing::warn!(board = board_id, generation = rejected.generation, code = %rejected.code, message = %rejected.message, "board refused its desired state");
        }
        let (ack, pools_changed) = self.write(|w| {
            let board = rows::board(&w.tx, board_id)?.ok_or_else(|| RackError::not_found("board", board_id))?;
            w.tx.prepare_cached(
                "UPDATE boards SET last_heartbeat_ms = ?2, applied_generation = ?3, reachable = 1, unreachable_since_ms = NULL
                 WHERE id = ?1",
            )?
            .execute(params![board_id, w.now_ms as i64, heartbeat.applied_generation as i64])?;
            if !board.reachable {
                tracing::info!(board = board_id, "board reachable again");
                w.emit(RackEventBody::Board {
                    board: board_id.to_string(),
                    state: board.state,
                    reachable: true,
                    cordoned: board.cordoned,
                    reason: board.reason.clone(),
                })?;
            }
            // Replay the board's journal in order; entries already stored are skipped.
            let mut journal_seq = board.journal_seq;
            for entry in heartbeat.journal.iter().filter(|e| e.seq > board.journal_seq) {
                journal_seq = journal_seq.max(entry.seq);
                w.emit(RackEventBody::BoardReport { board: board_id.to_string(), entry: entry.clone() })?;
            }
            if journal_seq != board.journal_seq {
                w.tx.prepare_cached("UPDATE boards SET journal_seq = ?2 WHERE id = ?1")?.execute(params![board_id, journal_seq as i64])?;
            }
            let reports: HashMap<&str, &api::InstanceStatus> =
                heartbeat.instances.iter().map(|s| (s.id.as_str(), s)).collect();
            // A board that was unreachable is room again.
            let mut pools_changed = !board.reachable;
            for row in rows::instances_where(&w.tx, "board_id = ?1", [board_id])? {
                let report = reports.get(row.id.as_str()).copied();
                if let Some(report) = report
                    && report.generation == row.generation
                    && report.container_id != row.container_id
                {
                    w.tx.prepare_cached("UPDATE instances SET container_id = ?2 WHERE id = ?1")?.execute(params![row.id, report.container_id])?;
                }
                if row.at_risk {
                    // The board is back: the session is no longer at risk.
                    set_instance(w, &row, row.state, None, false)?;
                }
                match lifecycle::observe(row.state, row.generation, row.reset_epoch, report) {
                    Transition::Stay => {}
                    Transition::To(state, reason) => set_instance(w, &row, state, reason, false)?,
                    Transition::Remove => {
                        w.tx.prepare_cached("DELETE FROM instances WHERE id = ?1")?.execute([&row.id])?;
                        pools_changed = true;
                    }
                }
            }
            Ok::<_, RackError>((HeartbeatAck { journal_ack: journal_seq, desired_generation: board.desired_generation }, pools_changed))
        })?;
        if pools_changed {
            self.pools_changed.notify_one();
        }
        Ok(ack)
    }

    /// Cordons or uncordons a board (idempotent).
    pub fn set_cordon(&self, board_id: &str, cordoned: bool) -> Result<BoardView, RackError> {
        self.write(|w| {
            let board =
                rows::board(&w.tx, board_id)?.ok_or_else(|| RackError::not_found("board", board_id))?;
            if board.cordoned != cordoned {
                w.tx.execute("UPDATE boards SET cordoned = ?2 WHERE id = ?1", params![board_id, cordoned])?;
                w.emit(RackEventBody::Board {
                    board: board_id.to_string(),
                    state: board.state,
                    reachable: board.reachable,
                    cordoned,
                    reason: board.reason.clone(),
                })?;
            }
            Ok::<_, RackError>(())
        })?;
        self.pools_changed.notify_one();
        self.board_view(board_id)
    }

    pub fn board_view(&self, board_id: &str) -> Result<BoardView, RackError> {
        self.db.read(|conn| {
            let board =
                rows::board(conn, board_id)?.ok_or_else(|| RackError::not_found("board", board_id))?;
            let count: u32 =
                conn.query_row("SELECT count(*) FROM instances WHERE board_id = ?1", [board_id], |r| {
                    r.get(0)
                })?;
            Ok(board.view(count))
        })
    }

    pub fn board_views(&self) -> Result<Vec<BoardView>, RackError> {
        self.db.read(|conn| {
            let mut counts: HashMap<String, u32> = HashMap::new();
            let mut stmt =
                conn.prepare_cached("SELECT board_id, count(*) FROM instances GROUP BY board_id")?;
            for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u32>(1)?)))? {
                let (board, count) = row?;
                counts.insert(board, count);
            }
            Ok(rows::boards(conn)?
                .into_iter()
                .map(|b| {
                    let count = counts.get(&b.id).copied().unwrap_or(0);
                    b.view(count)
                })
                .collect())
        })
    }

    /// Marks silent boards unreachable (their claimed instances at risk), and after the replace
    /// grace sends their idle instances to `terminating` so the pools re-place them elsewhere.
    pub fn sweep_reachability(&self) -> Result<(), RackError> {
        let unreachable_ms = self.config.unreachable_after.as_millis() as u64;
        let replace_ms = self.config.replace_after.as_millis() as u64;
        let replaced = self.write(|w| {
            let mut replaced = false;
            for board in rows::boards(&w.tx)? {
                if board.reachable && board.last_heartbeat_ms + unreachable_ms < w.now_ms {
                    mark_unreachable(w, &board)?;
                } else if !board.reachable
                    && board.unreachable_since_ms.is_some_and(|since| since + replace_ms <= w.now_ms)
                {
                    for row in rows::instances_where(
                        &w.tx,
                        "board_id = ?1 AND state NOT IN ('claimed', 'terminating')",
                        [&board.id],
                    )? {
                        set_instance(
                            w,
                            &row,
                            InstanceState::Terminating,
                            Some("board unreachable: re-placed on another board".into()),
                            false,
                        )?;
                        w.touch_board(&board.id);
                        replaced = true;
                    }
                }
            }
            Ok::<_, RackError>(replaced)
        })?;
        if replaced {
            self.pools_changed.notify_one();
        }
        Ok(())
    }

    /// Gives every board a fresh heartbeat grace: used at start-up, so a controller that was down
    /// does not mistake its own absence for dead boards.
    pub fn grant_heartbeat_grace(&self) -> Result<(), RackError> {
        self.write(|w| {
            w.tx.execute("UPDATE boards SET last_heartbeat_ms = ?1 WHERE reachable = 1", [w.now_ms as i64])?;
            Ok::<_, RackError>(())
        })
    }

    /// Refreshes the gauges of boards and instances by state.
    pub fn refresh_gauges(&self) -> Result<(), RackError> {
        // One grouped scan per table: this runs every second under the database lock, and a
        // claim waiting behind it is a claim's tail latency.
        let (boards, instances, unreachable) = self.db.read(|conn| {
            let grouped = |sql: &str| -> Result<Vec<(String, i64)>, RackError> {
                let mut stmt = conn.prepare_cached(sql)?;
                let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
                Ok(rows.collect::<Result<_, _>>()?)
            };
            let unreachable: i64 =
                conn.query_row("SELECT count(*) FROM boards WHERE reachable = 0", [], |r| r.get(0))?;
            Ok::<_, RackError>((
                grouped("SELECT state, count(*) FROM boards GROUP BY state")?,
                grouped("SELECT state, count(*) FROM instances GROUP BY state")?,
                unreachable,
            ))
        })?;
        let count = |rows: &[(String, i64)], state: &str| {
            rows.iter().find(|(s, _)| s == state).map_or(0, |(_, n)| *n)
        };
        for state in BoardState::ALL {
            let labels = crate::metrics::StateLabels { state: state.as_str().into() };
            self.metrics.boards.get_or_create(&labels).set(count(&boards, state.as_str()));
        }
        self.metrics.boards_unreachable.set(unreachable);
        for state in InstanceState::ALL {
            let labels = crate::metrics::StateLabels { state: state.as_str().into() };
            self.metrics.instances.get_or_create(&labels).set(count(&instances, state.as_str()));
        }
        Ok(())
    }

    /// Packing utilisation per resource of the boards in service.
    pub fn refresh_utilisation(&self) -> Result<(), RackError> {
        // Under the lock only a grouped sum (every instance row, read one by one, held claims
        // back for tens of milliseconds on a rack of thousands); the rest runs outside it.
        let (boards, held) = self.db.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT board_id, sum(millicores), sum(memory_mib), sum(gpu_slots), sum(encoder_slots)
                 FROM instances GROUP BY board_id",
            )?;
            let held = stmt
                .query_map([], |r| {
                    let held = Held {
                        millicores: r.get::<_, i64>(1)? as u64,
                        memory_mib: r.get::<_, i64>(2)? as u64,
                        gpu_slots: r.get::<_, i64>(3)? as u64,
                        encoder_slots: r.get::<_, i64>(4)? as u64,
                    };
                    Ok((r.get::<_, String>(0)?, held))
                })?
                .collect::<Result<HashMap<_, _>, _>>()?;
            Ok::<_, RackError>((rows::boards(conn)?, held))
        })?;
        for (resource, ratio) in crate::placement::utilisation(&boards, &held, &self.config.classes) {
            self.metrics
                .utilisation
                .get_or_create(&crate::metrics::ResourceLabels { resource: resource.into() })
                .set(ratio);
        }
        Ok(())
    }
}

fn mark_unreachable(w: &mut Write<'_>, board: &BoardRow) -> Result<(), RackError> {
    tracing::warn!(board = %board.id, "board unreachable: heartbeats stopped");
    w.tx.execute(
        "UPDATE boards SET reachable = 0, unreachable_since_ms = ?2 WHERE id = ?1",
        params![board.id, w.now_ms as i64],
    )?;
    w.emit(RackEventBody::Board {
        board: board.id.clone(),
        state: board.state,
        reachable: false,
        cordoned: board.cordoned,
        reason: Some("heartbeats stopped".into()),
    })?;
    for row in rows::instances_where(&w.tx, "board_id = ?1 AND state = 'claimed'", [&board.id])? {
        set_instance(w, &row, row.state, Some("board unreachable: session at risk".into()), true)?;
    }
    Ok(())
}

/// Changes an instance's state (and at-risk flag), with its event.
pub fn set_instance(
    w: &mut Write<'_>,
    row: &InstanceRow,
    state: InstanceState,
    reason: Option<String>,
    at_risk: bool,
) -> Result<(), RackError> {
    w.tx.prepare_cached(
        "UPDATE instances SET state = ?2, reason = ?3, at_risk = ?4,
             state_since_ms = CASE WHEN state = ?2 THEN state_since_ms ELSE ?5 END
         WHERE id = ?1",
    )?
    .execute(params![row.id, state.as_str(), reason, at_risk, w.now_ms as i64])?;
    w.emit(RackEventBody::Instance {
        instance: row.id.clone(),
        deployment: row.deployment_id.clone(),
        board: row.board_id.clone(),
        state,
        generation: row.generation,
        reason,
        at_risk,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::claims::tests::{rack_with_ready, request};

    #[test]
    fn utilisation_is_what_the_instances_hold_over_what_boards_in_service_offer() {
        let (_dir, rack) = rack_with_ready(3);
        let gauge = |resource: &str| {
            rack.metrics
                .utilisation
                .get_or_create(&crate::metrics::ResourceLabels { resource: resource.into() })
                .get()
        };
        // The fixture's facts are an arm board's; the rack's one class takes x86_64 boards.
        let mut facts = crate::preflight::tests::facts();
        facts.arch = "x86_64".into();
        rack.write(|w| {
            w.tx.execute(
                "UPDATE boards SET facts = ?1 WHERE id = 'b1'",
                [serde_json::to_string(&facts).unwrap()],
            )?;
            Ok::<_, RackError>(())
        })
        .unwrap();
        rack.refresh_utilisation().unwrap();
        let board = rack.db.read(|c| Ok::<_, RackError>(rows::board(c, "b1")?.unwrap())).unwrap();
        let class = crate::packing::classify(&board.facts, &rack.config.classes).unwrap();
        let offered = crate::packing::allocatable(&board.facts, class);
        // Three instances of 100 millicores and 64 MiB each.
        assert!((gauge("millicores") - 300.0 / f64::from(offered.millicores)).abs() < 1e-9);
        assert!((gauge("memory") - 192.0 / offered.memory_mib as f64).abs() < 1e-9);
        assert_eq!(gauge("gpu_slots"), 0.0);
        // A cordoned board offers nothing.
        rack.set_cordon("b1", true).unwrap();
        rack.refresh_utilisation().unwrap();
        assert_eq!(gauge("millicores"), 0.0);
    }

    #[test]
    fn a_silent_board_puts_claims_at_risk_and_gives_up_its_idle_instances() {
        let (_dir, rack) = rack_with_ready(2);
        let claim = rack.claim(request("s1")).unwrap();
        rack.write(|w| {
            w.tx.execute("UPDATE boards SET last_heartbeat_ms = 0", [])?;
            Ok::<_, RackError>(())
        })
        .unwrap();
        rack.sweep_reachability().unwrap();
        let board = rack.board_view("b1").unwrap();
        assert!(!board.reachable);
        let claimed = rack.instance_view(&claim.instance).unwrap();
        assert!(claimed.at_risk, "{claimed:?}");
        assert_eq!(claimed.state, InstanceState::Claimed, "a claimed instance is never dropped");
        // Past the replace grace (0 here) the idle instance is given up; the claimed one stays.
        rack.sweep_reachability().unwrap();
        let states: Vec<(String, InstanceState)> =
            rack.instance_views(Some("d"), None).unwrap().into_iter().map(|i| (i.id, i.state)).collect();
        assert!(states.contains(&(claim.instance.clone(), InstanceState::Claimed)), "{states:?}");
        assert_eq!(states.iter().filter(|(_, s)| *s == InstanceState::Terminating).count(), 1, "{states:?}");
        // A heartbeat brings the board back and clears the risk.
        let ack = rack
            .heartbeat(
                "b1",
                Heartbeat { applied_generation: 1, instances: vec![], journal: vec![], rejected: None },
            )
            .unwrap();
        assert_eq!(ack.journal_ack, 0);
        assert!(rack.board_view("b1").unwrap().reachable);
        let recovered = rack.instance_view(&claim.instance).unwrap();
        assert!(!recovered.at_risk);
        assert_eq!(recovered.reason, None);
    }
}
