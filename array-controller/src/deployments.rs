//! Deployments: a game version and how many instances of it this rack keeps. Everything but
//! `pool_size` is fixed once created (a new version is a new deployment; replacing instances in
//! place is the job of rollouts), so changing a pool never recreates a running instance.

use std::collections::BTreeMap;

use api::rack::{DeploymentSpec, DeploymentView, InstanceState, InstanceView, RackEventBody};
use rusqlite::params;

use crate::error::RackError;
use crate::inventory::set_instance;
use crate::rack::Rack;
use crate::rows;

const MAX_POOL: u32 = 10_000;
const KNOWN_ARCHS: [&str; 4] = ["aarch64", "x86_64", "armv7l", "riscv64"];

/// Checks a deployment before anything is stored.
pub fn validate(id: &str, spec: &DeploymentSpec) -> Result<(), RackError> {
    let invalid = |code, message: String| Err(RackError::invalid(code, message));
    if !api::ids::is_valid_id(id) || id.len() > 40 {
        return invalid(
            "invalid_id",
            format!("deployment id {id:?}: use 1-40 characters of a-z, 0-9 and '-'"),
        );
    }
    if spec.game.trim().is_empty() || spec.version.trim().is_empty() {
        return invalid("invalid_deployment", "game and version must not be empty".into());
    }
    if spec.images.is_empty() {
        return invalid(
            "invalid_deployment",
            "images must name an image for at least one architecture".into(),
        );
    }
    for (arch, image) in &spec.images {
        if !KNOWN_ARCHS.contains(&arch.as_str()) {
            return invalid(
                "invalid_arch",
                format!("unknown architecture {arch:?}; use one of {KNOWN_ARCHS:?}"),
            );
        }
        if image.trim().is_empty() || image.chars().any(char::is_whitespace) {
            return invalid("invalid_image", format!("image for {arch} is not a valid reference"));
        }
    }
    let p = &spec.profile;
    if !(100..=64_000).contains(&p.millicores) {
        return invalid("invalid_profile", "profile.millicores must be between 100 and 64000".into());
    }
    if !(64..=262_144).contains(&p.memory_mib) {
        return invalid("invalid_profile", "profile.memory_mib must be between 64 and 262144".into());
    }
    if p.gpu_slots > 64 || p.encoder_slots > 64 || p.pids_limit < 16 {
        return invalid(
            "invalid_profile",
            "gpu/encoder slots must be at most 64 and pids_limit at least 16".into(),
        );
    }
    let d = p.display;
    if !(1..=16384).contains(&d.width)
        || !(1..=16384).contains(&d.height)
        || !(1..=2000).contains(&d.dpi)
        || !(1..=240).contains(&d.fps)
    {
        return invalid(
            "invalid_profile",
            "profile.display must have width/height 1-16384, dpi 1-2000, fps 1-240".into(),
        );
    }
    if spec.pool_size > MAX_POOL {
        return invalid("invalid_pool_size", format!("pool_size must be at most {MAX_POOL}"));
    }
    if !(1..=3600).contains(&spec.boot_timeout_s) {
        return invalid("invalid_boot_timeout", "boot_timeout_s must be between 1 and 3600".into());
    }
    if let Some(launch) = &spec.launch
        && !launch
            .split_once('/')
            .is_some_and(|(p, a)| !p.is_empty() && !a.is_empty() && !launch.contains(char::is_whitespace))
    {
        return invalid("invalid_launch", format!("launch {launch:?} must look like package/activity"));
    }
    if spec.reset == api::rack::ResetPolicy::Fast && spec.launch.is_none() {
        return invalid(
            "invalid_reset",
            "reset \"fast\" needs launch (the package whose data is cleared)".into(),
        );
    }
    if let Some(name) = spec.env.keys().find(|k| {
        let mut c = k.chars();
        !(matches!(c.next(), Some(f) if f.is_ascii_alphabetic() || f == '_')
            && c.all(|c| c.is_ascii_alphanumeric() || c == '_'))
    }) {
        return invalid("invalid_env_name", format!("environment variable name {name:?} is not valid"));
    }
    if spec.constraints.max_per_board == Some(0) {
        return invalid("invalid_constraints", "constraints.max_per_board must be at least 1".into());
    }
    Ok(())
}

/// Whether two specs differ only in pool size.
fn same_except_pool(a: &DeploymentSpec, b: &DeploymentSpec) -> bool {
    DeploymentSpec { pool_size: 0, ..a.clone() } == DeploymentSpec { pool_size: 0, ..b.clone() }
}

impl Rack {
    /// Creates a deployment or changes its pool size. Returns the view and whether it was created.
    pub fn put_deployment(
        &self,
        id: &str,
        spec: DeploymentSpec,
    ) -> Result<(DeploymentView, bool), RackError> {
        validate(id, &spec)?;
        let created = self.write(|w| {
            let existing = rows::deployment(&w.tx, id)?;
            match &existing {
                Some(current) if !same_except_pool(current, &spec) => {
                    return Err(RackError::conflict(
                        "deployment_immutable",
                        format!("deployment {id:?} exists with another spec; only pool_size can change (publish a new version as a new deployment)"),
                    ));
                }
                Some(current) if current.pool_size == spec.pool_size => return Ok(false),
                _ => {}
            }
            let json = serde_json::to_string(&spec).map_err(crate::db::DbError::from)?;
            w.tx.execute(
                "INSERT INTO deployments (id, spec, created_ms, updated_ms) VALUES (?1, ?2, ?3, ?3)
                 ON CONFLICT (id) DO UPDATE SET spec = ?2, updated_ms = ?3",
                params![id, json, w.now_ms as i64],
            )?;
            w.emit(RackEventBody::Deployment { deployment: id.to_string(), pool_size: spec.pool_size, deleted: false })?;
            Ok(existing.is_none())
        })?;
        self.pools_changed.notify_one();
        Ok((self.deployment_view(id)?, created))
    }

    /// Deletes a deployment: idle instances go at once, claimed ones drain (they are removed
    /// when their session ends). Refused while sessions are live unless `force`.
    pub fn delete_deployment(&self, id: &str, force: bool) -> Result<(), RackError> {
        self.write(|w| {
            if rows::deployment(&w.tx, id)?.is_none() {
                return Err(RackError::not_found("deployment", id));
            }
            let instances = rows::instances_where(&w.tx, "deployment_id = ?1", [id])?;
            let live = instances.iter().filter(|i| i.state == InstanceState::Claimed).count();
            if live > 0 && !force {
                return Err(RackError::conflict(
                    "deployment_has_sessions",
                    format!(
                        "deployment {id:?} has {live} claimed instances; retry with ?force=true to drain them"
                    ),
                ));
            }
            for row in instances {
                let next = match row.state {
                    InstanceState::Claimed => InstanceState::Draining,
                    InstanceState::Terminating | InstanceState::Draining => continue,
                    _ => InstanceState::Terminating,
                };
                set_instance(w, &row, next, Some("deployment deleted".into()), row.at_risk)?;
                w.touch_board(&row.board_id);
            }
            w.tx.execute("DELETE FROM deployments WHERE id = ?1", [id])?;
            w.emit(RackEventBody::Deployment { deployment: id.to_string(), pool_size: 0, deleted: true })?;
            Ok(())
        })?;
        self.pools_changed.notify_one();
        Ok(())
    }

    pub fn deployment_view(&self, id: &str) -> Result<DeploymentView, RackError> {
        self.db.read(|conn| {
            let spec = rows::deployment(conn, id)?.ok_or_else(|| RackError::not_found("deployment", id))?;
            Ok(DeploymentView { id: id.to_string(), spec, instances: counts(conn, id)? })
        })
    }

    pub fn deployment_views(&self) -> Result<Vec<DeploymentView>, RackError> {
        self.db.read(|conn| {
            rows::deployments(conn)?
                .into_iter()
                .map(|(id, spec)| Ok(DeploymentView { instances: counts(conn, &id)?, id, spec }))
                .collect()
        })
    }

    /// Instances, optionally of one deployment and/or in one state.
    pub fn instance_views(
        &self,
        deployment: Option<&str>,
        state: Option<InstanceState>,
    ) -> Result<Vec<InstanceView>, RackError> {
        Ok(self.instance_snapshot(deployment, state)?.0)
    }

    /// Every instance and the sequence of the last event they reflect, read together: a
    /// subscriber that starts from this snapshot and follows the events after that sequence
    /// misses nothing and replays nothing.
    pub fn instance_snapshot(
        &self,
        deployment: Option<&str>,
        state: Option<InstanceState>,
    ) -> Result<(Vec<InstanceView>, u64), RackError> {
        self.db.read(|conn| {
            let rows = rows::instances_where(
                conn,
                "(?1 IS NULL OR deployment_id = ?1) AND (?2 IS NULL OR state = ?2)",
                params![deployment, state.map(|s| s.as_str())],
            )?;
            // Compaction always keeps the newest event, so its sequence is the last handed out.
            let seq: i64 = conn
                .query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))
                .map_err(crate::db::DbError::from)?;
            Ok((rows.iter().map(|r| r.view()).collect(), seq as u64))
        })
    }

    pub fn instance_view(&self, id: &str) -> Result<InstanceView, RackError> {
        self.db.read(|conn| {
            Ok(rows::instance(conn, id)?.ok_or_else(|| RackError::not_found("instance", id))?.view())
        })
    }
}

fn counts(conn: &rusqlite::Connection, id: &str) -> Result<BTreeMap<String, u32>, RackError> {
    let mut stmt =
        conn.prepare_cached("SELECT state, count(*) FROM instances WHERE deployment_id = ?1 GROUP BY state")?;
    let rows = stmt.query_map([id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u32>(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use api::rack::ClaimRequest;

    use crate::claims::tests::rack_with_ready;

    #[test]
    fn a_snapshot_names_the_last_event_it_reflects_even_after_compaction() {
        let (_dir, rack) = rack_with_ready(2);
        let last = |rack: &crate::rack::Rack| {
            crate::events::read_after(&rack.db, 0, 10_000).unwrap().last().map_or(0, |e| e.seq)
        };
        rack.claim(ClaimRequest { deployment: "d".into(), key: "k".into(), lease_ms: None }).unwrap();
        let (list, seq) = rack.instance_snapshot(None, None).unwrap();
        assert_eq!(list.len(), 2);
        assert!(seq > 0);
        assert_eq!(seq, last(&rack));
        rack.release("k").unwrap();
        let (_, after_claim) = rack.instance_snapshot(None, None).unwrap();
        assert!(after_claim > seq);
        assert_eq!(after_claim, last(&rack));
        crate::events::compact(&rack.db, u64::MAX, usize::MAX).unwrap();
        assert_eq!(
            rack.instance_snapshot(None, None).unwrap().1,
            after_claim,
            "compaction keeps the sequence"
        );
    }
}
