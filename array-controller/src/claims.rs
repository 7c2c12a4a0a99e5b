//! Claims: a ready instance leased to one session. A claim is one SQLite transaction keyed by
//! the session id, so the same key always gets the same instance and no instance is ever held
//! by two keys (`instances.claim_key` is UNIQUE as a second guard). Leases are renewed in
//! batches; a lapsed lease releases the instance like an explicit release.

use std::collections::BTreeMap;
use std::time::Instant;

use api::rack::{
    ClaimRequest, ClaimState, ClaimView, InstanceState, RackEventBody, RenewRequest, RenewResponse,
    ResetPolicy,
};
use rusqlite::{Connection, OptionalExtension, params};

use crate::db::Write;
use crate::error::RackError;
use crate::inventory::set_instance;
use crate::rack::Rack;
use crate::rows;

const MAX_LEASE_MS: u64 = 24 * 3600 * 1000;
const MAX_KEY_LEN: usize = 200;
const MAX_RENEW_BATCH: usize = 10_000;

impl Rack {
    /// Claims a ready instance of a deployment for `key`, or returns the claim `key` already has.
    pub fn claim(&self, request: ClaimRequest) -> Result<ClaimView, RackError> {
        let started = Instant::now();
        let lease = self.lease_ms(request.lease_ms)?;
        validate_key(&request.key)?;
        let result = self.write(|w| {
            if let Some(existing) = claim_view(&w.tx, &request.key)? {
                if existing.deployment != request.deployment {
                    return Err(RackError::conflict(
                        "key_reused",
                        format!("key {:?} already claimed an instance of deployment {:?}", request.key, existing.deployment),
                    ));
                }
                return Ok(existing);
            }
            if !rows::deployment_exists(&w.tx, &request.deployment)? {
                return Err(RackError::not_found("deployment", &request.deployment));
            }
            // The longest-ready instance on a reachable board.
            let instance: Option<(String, String, i64)> = w
                .tx
                .prepare_cached(
                    "SELECT i.id, i.board_id, i.generation FROM instances i JOIN boards b ON b.id = i.board_id
                     WHERE i.deployment_id = ?1 AND i.state = 'ready' AND b.reachable = 1 AND b.state = 'ready'
                     ORDER BY i.state_since_ms LIMIT 1",
                )?
                .query_row([&request.deployment], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()?;
            let Some((instance_id, board_id, generation)) = instance else {
                return Err(RackError::conflict(
                    "no_ready_instance",
                    format!("deployment {:?} has no ready instance in this rack right now", request.deployment),
                ));
            };
            let expires = w.now_ms + lease;
            w.tx.prepare_cached(
                "INSERT INTO claims (key, deployment_id, instance_id, board_id, state, lease_expires_ms, created_ms)
                 VALUES (?1, ?2, ?3, ?4, 'active', ?5, ?6)",
            )?
            .execute(params![request.key, request.deployment, instance_id, board_id, expires as i64, w.now_ms as i64])?;
            w.tx.prepare_cached("UPDATE instances SET state = 'claimed', claim_key = ?2, state_since_ms = ?3 WHERE id = ?1")?
                .execute(params![instance_id, request.key, w.now_ms as i64])?;
            w.emit(RackEventBody::Instance {
                instance: instance_id.clone(),
                deployment: request.deployment.clone(),
                board: board_id.clone(),
                state: InstanceState::Claimed,
                generation: generation as u64,
                reason: None,
                at_risk: false,
            })?;
            w.emit(RackEventBody::Claim {
                key: request.key.clone(),
                deployment: request.deployment.clone(),
                instance: instance_id,
                state: ClaimState::Active,
            })?;
            claim_view(&w.tx, &request.key)?.ok_or_else(|| RackError::not_found("claim", &request.key))
        });
        self.metrics.claim_seconds.observe(started.elapsed().as_secs_f64());
        self.metrics.claim_outcome(match &result {
            Ok(_) => "claimed",
            Err(RackError::Conflict { code: "no_ready_instance", .. }) => "no_ready_instance",
            Err(_) => "error",
        });
        // A claim changes no pool's size (claimed instances count towards it): the reconciler
        // is not woken, which keeps claims cheap.
        result
    }

    /// The claim of `key`.
    pub fn claim_of(&self, key: &str) -> Result<ClaimView, RackError> {
        self.db.read(|conn| claim_view(conn, key)?.ok_or_else(|| RackError::not_found("claim", key)))
    }

    /// Extends the leases of many active claims at once.
    pub fn renew(&self, request: RenewRequest) -> Result<RenewResponse, RackError> {
        let lease = self.lease_ms(request.lease_ms)?;
        if request.keys.len() > MAX_RENEW_BATCH {
            return Err(RackError::invalid(
                "batch_too_large",
                format!("renew at most {MAX_RENEW_BATCH} keys at once"),
            ));
        }
        self.write(|w| {
            let expires = w.now_ms + lease;
            let mut renewed = BTreeMap::new();
            let mut missing = Vec::new();
            let mut stmt = w.tx.prepare_cached(
                "UPDATE claims SET lease_expires_ms = ?2 WHERE key = ?1 AND state = 'active' RETURNING key",
            )?;
            for key in &request.keys {
                match stmt.query_row(params![key, expires as i64], |r| r.get::<_, String>(0)).optional()? {
                    Some(key) => {
                        renewed.insert(key, expires);
                    }
                    None => missing.push(key.clone()),
                }
            }
            Ok(RenewResponse { renewed, missing })
        })
    }

    /// Ends the claim of `key` and sends its instance to recycling. Releasing an ended claim
    /// changes nothing and returns it as it is.
    pub fn release(&self, key: &str) -> Result<ClaimView, RackError> {
        let view = self.write(|w| {
            end_claim(w, key, ClaimState::Released)?;
            claim_view(&w.tx, key)?.ok_or_else(|| RackError::not_found("claim", key))
        })?;
        Ok(view)
    }

    /// Releases every claim whose lease has lapsed.
    pub fn sweep_leases(&self) -> Result<usize, RackError> {
        let expired = self.write(|w| {
            let keys: Vec<String> = w
                .tx
                .prepare_cached("SELECT key FROM claims WHERE state = 'active' AND lease_expires_ms < ?1")?
                .query_map([w.now_ms as i64], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            for key in &keys {
                tracing::info!(key, "lease lapsed; releasing the instance");
                end_claim(w, key, ClaimState::Expired)?;
            }
            Ok::<_, RackError>(keys.len())
        })?;
        if expired > 0 {
            self.pools_changed.notify_one();
        }
        Ok(expired)
    }

    /// Deletes up to `limit` claims that ended before `cutoff_ms`; returns how many went.
    /// Active claims stay, however old. A key asked again after that makes a new claim.
    pub fn prune_ended_claims(&self, cutoff_ms: u64, limit: usize) -> Result<usize, RackError> {
        self.db.read(|conn| {
            Ok(conn
                .prepare_cached(
                    "DELETE FROM claims WHERE key IN (
                         SELECT key FROM claims WHERE state IN ('released', 'expired') AND ended_ms < ?1 LIMIT ?2)",
                )?
                .execute(params![cutoff_ms as i64, limit as i64])?)
        })
    }

    fn lease_ms(&self, requested: Option<u64>) -> Result<u64, RackError> {
        let lease = requested.unwrap_or(self.config.default_lease.as_millis() as u64);
        if !(1000..=MAX_LEASE_MS).contains(&lease) {
            return Err(RackError::invalid(
                "invalid_lease",
                format!("lease_ms must be between 1000 and {MAX_LEASE_MS}"),
            ));
        }
        Ok(lease)
    }
}

fn validate_key(key: &str) -> Result<(), RackError> {
    if key.is_empty() || key.len() > MAX_KEY_LEN || key.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(RackError::invalid(
            "invalid_key",
            format!("key must be 1-{MAX_KEY_LEN} printable characters without spaces"),
        ));
    }
    Ok(())
}

/// Ends an active claim and recycles its instance: recreated from its image (a new generation)
/// or reset fast over ADB (a new reset epoch), as the deployment says. Either way the instance
/// gets a new stream token, which its board applies before it reports the instance ready
/// again: the player of the ended claim cannot reach the next one's session.
fn end_claim(w: &mut Write<'_>, key: &str, state: ClaimState) -> Result<(), RackError> {
    // Every statement cached: a release is as hot a path as a claim.
    let claim: Option<(String, String, String)> =
        w.tx.prepare_cached("SELECT instance_id, deployment_id, state FROM claims WHERE key = ?1")?
            .query_row([key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?;
    let Some((instance_id, deployment_id, current)) = claim else {
        return Err(RackError::not_found("claim", key));
    };
    if current != ClaimState::Active.as_str() {
        return Ok(());
    }
    w.tx.prepare_cached("UPDATE claims SET state = ?2, ended_ms = ?3 WHERE key = ?1")?.execute(params![
        key,
        state.as_str(),
        w.now_ms as i64
    ])?;
    w.emit(RackEventBody::Claim {
        key: key.to_string(),
        deployment: deployment_id.clone(),
        instance: instance_id.clone(),
        state,
    })?;
    let Some(row) = rows::instance(&w.tx, &instance_id)? else { return Ok(()) };
    w.tx.prepare_cached("UPDATE instances SET claim_key = NULL, at_risk = 0 WHERE id = ?1")?
        .execute([&instance_id])?;
    let deployment = rows::deployment(&w.tx, &deployment_id)?;
    let draining = row.state == InstanceState::Draining || deployment.is_none();
    if draining {
        set_instance(w, &row, InstanceState::Terminating, Some("released while draining".into()), false)?;
    } else if deployment.is_some_and(|d| d.reset == ResetPolicy::Fast) {
        w.tx.prepare_cached(
            "UPDATE instances SET reset_epoch = reset_epoch + 1, stream_token = ?2 WHERE id = ?1",
        )?
        .execute(params![instance_id, rows::new_stream_token()])?;
        set_instance(w, &row, InstanceState::Recycling, Some("fast reset".into()), false)?;
    } else {
        w.tx.prepare_cached(
            "UPDATE instances SET generation = generation + 1, container_id = NULL, stream_token = ?2 WHERE id = ?1",
        )?
        .execute(params![instance_id, rows::new_stream_token()])?;
        let row = rows::instance(&w.tx, &instance_id)?
            .ok_or_else(|| RackError::not_found("instance", &instance_id))?;
        set_instance(w, &row, InstanceState::Recycling, Some("recreating from the image".into()), false)?;
    }
    w.touch_board(&row.board_id);
    Ok(())
}

/// The claim of `key` with its connection details. Only an active claim carries the stream
/// token: an ended one's instance already has the token of its next claim.
fn claim_view(conn: &Connection, key: &str) -> Result<Option<ClaimView>, RackError> {
    Ok(conn
        .prepare_cached(
            "SELECT c.deployment_id, c.instance_id, c.board_id, c.state, c.lease_expires_ms, b.address,
                    i.adb_port, i.stream_port,
                    CASE WHEN c.state = 'active' AND i.claim_key = c.key THEN i.stream_token END
             FROM claims c JOIN boards b ON b.id = c.board_id
             LEFT JOIN instances i ON i.id = c.instance_id
             WHERE c.key = ?1",
        )?
        .query_row([key], |r| {
            Ok(ClaimView {
                key: key.to_string(),
                deployment: r.get(0)?,
                instance: r.get(1)?,
                board: r.get(2)?,
                state: ClaimState::parse(&r.get::<_, String>(3)?).unwrap_or(ClaimState::Expired),
                lease_expires_at_ms: r.get::<_, i64>(4)? as u64,
                host: r.get(5)?,
                // The instance row is gone once a released instance was removed.
                ports: api::InstancePorts {
                    adb: r.get::<_, Option<u16>>(6)?.unwrap_or(0),
                    stream: r.get::<_, Option<u16>>(7)?.unwrap_or(0),
                },
                stream_token: r.get(8)?,
            })
        })
        .optional()?)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use api::rack::{ClaimRequest, DeploymentSpec, InstanceProfile, RenewRequest};
    use rusqlite::params;

    use super::*;
    use crate::config::{Cli, Config};

    /// A rack with one board and `ready` ready instances of deployment `d`, written straight
    /// into the database (no board daemon involved).
    pub(crate) fn rack_with_ready(ready: usize) -> (tempfile::TempDir, Rack) {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("c.toml");
        std::fs::write(
            &config_path,
            "[[class]]\nname = \"x86-sim\"\nmatch = { arch = \"x86_64\" }\nandroid_kernel = false\n",
        )
        .unwrap();
        let config = Config::load(Cli {
            config: Some(config_path),
            data_dir: Some(dir.path().into()),
            unreachable_after_ms: Some(500),
            replace_after_ms: Some(0),
            ..Cli::default()
        })
        .unwrap();
        let conn = service_kit::sqlite::open(&dir.path().join("c.db"), crate::db::MIGRATIONS).unwrap();
        let mut registry = prometheus_client::registry::Registry::default();
        let rack = Rack::new(
            config,
            crate::db::Db::new(conn),
            crate::metrics::Metrics::register(&mut registry),
            "op".into(),
            "broker".into(),
            tokio_util::sync::CancellationToken::new(),
        );
        let spec = DeploymentSpec {
            game: "g".into(),
            version: "1".into(),
            images: [("x86_64".to_string(), "img".to_string())].into(),
            profile: InstanceProfile {
                millicores: 100,
                memory_mib: 64,
                gpu_slots: 0,
                encoder_slots: 0,
                pinning: Default::default(),
                display: Default::default(),
                pids_limit: 64,
            },
            reset: Default::default(),
            launch: None,
            pool_size: ready as u32,
            env: Default::default(),
            args: vec![],
            privileged: false,
            boot_timeout_s: 60,
            constraints: Default::default(),
        };
        let facts = serde_json::to_string(&crate::preflight::tests::facts()).unwrap();
        rack.write(|w| {
            w.tx.execute(
                "INSERT INTO boards (id, state, arch, address, facts, credential_hash, last_heartbeat_ms, desired_generation, enrolled_ms)
                 VALUES ('b1', 'ready', 'x86_64', '10.0.0.1', ?1, 'h', ?2, 1, 0)",
                params![facts, w.now_ms as i64],
            )?;
            w.tx.execute(
                "INSERT INTO deployments (id, spec, created_ms, updated_ms) VALUES ('d', ?1, 0, 0)",
                [serde_json::to_string(&spec).unwrap()],
            )?;
            for i in 0..ready {
                let row = rows::InstanceRow {
                    id: format!("i{i}"),
                    deployment_id: "d".into(),
                    board_id: "b1".into(),
                    state: InstanceState::Ready,
                    reason: None,
                    generation: 1,
                    reset_epoch: 0,
                    millicores: 100,
                    cpus: vec![0],
                    memory_mib: 64,
                    gpu_slots: 0,
                    encoder_slots: 0,
                    ports: api::InstancePorts { adb: 20000 + 2 * i as u16, stream: 20001 + 2 * i as u16 },
                    container_id: None,
                    claim_key: None,
                    at_risk: false,
                    state_since_ms: i as u64,
                    stream_token: Some(rows::new_stream_token()),
                };
                rows::insert_instance(&w.tx, &row, w.now_ms)?;
            }
            Ok::<_, RackError>(())
        })
        .unwrap();
        (dir, rack)
    }

    pub(crate) fn request(key: &str) -> ClaimRequest {
        ClaimRequest { deployment: "d".into(), key: key.into(), lease_ms: None }
    }

    #[test]
    fn concurrent_claims_never_share_an_instance_and_keys_are_idempotent() {
        let (_dir, rack) = rack_with_ready(5);
        let rack = Arc::new(rack);
        let handles: Vec<_> = (0..40)
            .map(|n| {
                let rack = rack.clone();
                std::thread::spawn(move || rack.claim(request(&format!("s{n}"))))
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let won: Vec<&ClaimView> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(won.len(), 5);
        let mut instances: Vec<&str> = won.iter().map(|c| c.instance.as_str()).collect();
        instances.sort();
        instances.dedup();
        assert_eq!(instances.len(), 5, "an instance was claimed twice");
        for result in results.iter().filter_map(|r| r.as_ref().err()) {
            assert!(matches!(result, RackError::Conflict { code: "no_ready_instance", .. }), "{result}");
        }
        let again = rack.claim(request(&won[0].key)).unwrap();
        assert_eq!(again.instance, won[0].instance);
        assert_eq!(again.host, "10.0.0.1");
    }

    #[test]
    fn a_claim_names_a_deployment_that_exists_and_its_event_carries_the_generation() {
        let (_dir, rack) = rack_with_ready(1);
        let unknown = ClaimRequest { deployment: "nope".into(), ..request("s0") };
        assert!(matches!(rack.claim(unknown), Err(RackError::NotFound { .. })));
        // An instance at generation 3 (recreated twice before) is claimed as generation 3.
        rack.write(|w| Ok::<_, RackError>(w.tx.execute("UPDATE instances SET generation = 3", [])?)).unwrap();
        let claim = rack.claim(request("s1")).unwrap();
        let events = crate::events::read_after(&rack.db, 0, 100).unwrap();
        let claimed: Vec<u64> =
            events
                .iter()
                .filter_map(|e| match &e.body {
                    RackEventBody::Instance {
                        instance, state: InstanceState::Claimed, generation, ..
                    } if *instance == claim.instance => Some(*generation),
                    _ => None,
                })
                .collect();
        assert_eq!(claimed, vec![3]);
    }

    #[test]
    fn release_recycles_and_renewal_reports_missing_keys() {
        let (_dir, rack) = rack_with_ready(1);
        let claim = rack.claim(request("s1")).unwrap();
        let renewed = rack
            .renew(RenewRequest { keys: vec!["s1".into(), "nope".into()], lease_ms: Some(5000) })
            .unwrap();
        assert!(renewed.renewed.contains_key("s1"));
        assert_eq!(renewed.missing, vec!["nope".to_string()]);
        assert_eq!(rack.release("s1").unwrap().state, ClaimState::Released);
        let instance = rack.instance_view(&claim.instance).unwrap();
        assert_eq!(instance.state, InstanceState::Recycling);
        assert_eq!(instance.generation, 2, "recreate policy bumps the generation");
        assert_eq!(instance.claim_key, None);
        // Releasing again changes nothing; the ended key does not claim anew.
        assert_eq!(rack.release("s1").unwrap().state, ClaimState::Released);
        assert_eq!(rack.claim(request("s1")).unwrap().state, ClaimState::Released);
        assert!(matches!(
            rack.claim(request("s2")),
            Err(RackError::Conflict { code: "no_ready_instance", .. })
        ));
    }

    /// The stored stream token of instance `id`.
    pub(crate) fn token_of(rack: &Rack, id: &str) -> Option<String> {
        rack.db.read(|c| Ok::<_, RackError>(rows::instance(c, id)?.unwrap().stream_token)).unwrap()
    }

    /// Marks instance `id` ready again, as its board's report would after a recycle.
    fn back_to_ready(rack: &Rack, id: &str) {
        rack.write(|w| {
            w.tx.execute("UPDATE instances SET state = 'ready' WHERE id = ?1", [id])?;
            Ok::<_, RackError>(())
        })
        .unwrap();
    }

    #[test]
    fn a_claim_carries_its_instances_token_and_a_release_rotates_it_with_the_generation() {
        let (_dir, rack) = rack_with_ready(1);
        let claim = rack.claim(request("s1")).unwrap();
        let first = token_of(&rack, &claim.instance).expect("a created instance has a token");
        assert!(first.starts_with("st_") && api::instance::is_valid_stream_token(&first), "{first}");
        assert_eq!(claim.stream_token.as_deref(), Some(first.as_str()));
        assert_eq!(rack.claim(request("s1")).unwrap().stream_token.as_deref(), Some(first.as_str()));
        assert_eq!(rack.claim_of("s1").unwrap().stream_token.as_deref(), Some(first.as_str()));

        let released = rack.release("s1").unwrap();
        let second = token_of(&rack, &claim.instance).expect("a recycled instance has a token");
        assert_ne!(second, first, "the release rotates the token");
        assert_eq!(rack.instance_view(&claim.instance).unwrap().generation, 2);
        // An ended claim carries no token: the instance's new one belongs to the next claim.
        assert_eq!(released.stream_token, None);
        assert_eq!(rack.claim_of("s1").unwrap().stream_token, None);

        back_to_ready(&rack, &claim.instance);
        let next = rack.claim(request("s2")).unwrap();
        assert_eq!(next.instance, claim.instance);
        assert_eq!(next.stream_token.as_deref(), Some(second.as_str()));
        // A lapsed lease recycles, and rotates, the same way.
        rack.write(|w| {
            w.tx.execute("UPDATE claims SET lease_expires_ms = 0 WHERE key = 's2'", [])?;
            Ok::<_, RackError>(())
        })
        .unwrap();
        assert_eq!(rack.sweep_leases().unwrap(), 1);
        let third = token_of(&rack, &claim.instance).unwrap();
        assert!(third != second && third != first);
        assert_eq!(rack.instance_view(&claim.instance).unwrap().generation, 3);
    }

    #[test]
    fn a_fast_reset_rotates_the_token_with_the_reset_epoch() {
        let (_dir, rack) = rack_with_ready(1);
        rack.write(|w| {
            let mut spec = rows::deployment(&w.tx, "d")?.unwrap();
            spec.reset = ResetPolicy::Fast;
            spec.launch = Some("com.example.game/.Main".into());
            w.tx.execute(
                "UPDATE deployments SET spec = ?1 WHERE id = 'd'",
                [serde_json::to_string(&spec).unwrap()],
            )?;
            Ok::<_, RackError>(())
        })
        .unwrap();
        let claim = rack.claim(request("s1")).unwrap();
        let first = claim.stream_token.clone().expect("a token");
        rack.release("s1").unwrap();
        let row = rack.db.read(|c| Ok::<_, RackError>(rows::instance(c, &claim.instance)?.unwrap())).unwrap();
        assert_eq!((row.generation, row.reset_epoch), (1, 1), "a fast reset keeps the generation");
        let second = row.stream_token.expect("a token");
        assert_ne!(second, first);
        back_to_ready(&rack, &claim.instance);
        assert_eq!(rack.claim(request("s2")).unwrap().stream_token, Some(second));
    }

    /// Log frames (changed pages) written per claim, measured over `claims` claims with keys
    /// scattered like session ids.
    fn log_frames_per_claim(claims: usize) -> f64 {
        let (_dir, rack) = rack_with_ready(claims);
        let frames = |rack: &Rack| -> i64 {
            rack.db
                .read(|c| {
                    Ok::<_, RackError>(c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))?)
                })
                .unwrap()
        };
        rack.db
            .read(|c| {
                c.pragma_update(None, "wal_autocheckpoint", 0)?;
                c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
                Ok::<_, RackError>(())
            })
            .unwrap();
        assert_eq!(frames(&rack), 0);
        for n in 0..claims as u64 {
            rack.claim(request(&format!("{:016x}", n.wrapping_mul(0x9e37_79b9_7f4a_7c15)))).unwrap();
        }
        frames(&rack) as f64 / claims as f64
    }

    /// SQLite checkpoints, syncing the database file inside a commit, every 1000 log frames:
    /// the pages a claim changes decide how often a claim pays for one (the latency's tail).
    /// A claim changes an instance (its row and two index entries), inserts its claim (keyed by
    /// the key, plus the lease index) and appends two events: about seven pages, not the ten a
    /// rowid claims table with its key index and AUTOINCREMENT events took.
    #[test]
    fn a_claim_writes_few_pages() {
        let per_claim = log_frames_per_claim(500);
        assert!(per_claim <= 8.0, "{per_claim:.2} log frames per claim");
    }

    #[test]
    fn bad_claims_are_refused_and_change_nothing() {
        let (_dir, rack) = rack_with_ready(1);
        assert!(matches!(
            rack.claim(request("has space")),
            Err(RackError::Invalid { code: "invalid_key", .. })
        ));
        assert!(matches!(
            rack.claim(ClaimRequest { lease_ms: Some(1), ..request("s1") }),
            Err(RackError::Invalid { code: "invalid_lease", .. })
        ));
        assert!(matches!(
            rack.claim(ClaimRequest { deployment: "nope".into(), ..request("s1") }),
            Err(RackError::NotFound { .. })
        ));
        assert_eq!(rack.instance_views(Some("d"), Some(InstanceState::Ready)).unwrap().len(), 1);
    }
}
