//! Session rows: the only place sessions are read from and written to SQLite.

use api::broker::{ClaimAttempt, Endpoint, SessionRequest, SessionState, SessionView};
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};

use crate::db::Db;
use crate::error::BrokerError;

/// A session as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRow {
    pub id: String,
    pub tenant: String,
    pub idem_key: String,
    pub body_hash: String,
    pub game: String,
    pub version: String,
    pub request: SessionRequest,
    pub state: SessionState,
    pub region: Option<String>,
    pub rack: Option<String>,
    pub board: Option<String>,
    pub instance: Option<String>,
    pub deployment: Option<String>,
    pub endpoint: Option<Endpoint>,
    pub token: Option<String>,
    pub lease_expires_ms: Option<u64>,
    pub reason: Option<String>,
    pub created_ms: u64,
    pub deadline_ms: u64,
}

/// Decisions and claim attempts of a session (`GET /v1/sessions/{id}/explain`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExplainRecord {
    /// Serialised once when taken (a placement is on the hot path), kept as raw JSON.
    pub decisions: Vec<Box<serde_json::value::RawValue>>,
    pub attempts: Vec<ClaimAttempt>,
}

/// Keeps the record bounded: a session queued for minutes is decided again many times.
const MAX_DECISIONS: usize = 20;
const MAX_ATTEMPTS: usize = 50;

impl ExplainRecord {
    pub fn push_decision(&mut self, decision: Box<serde_json::value::RawValue>) {
        if self.decisions.len() >= MAX_DECISIONS {
            // Keep the first decision and the latest ones.
            self.decisions.remove(1);
        }
        self.decisions.push(decision);
    }

    pub fn push_attempt(&mut self, attempt: ClaimAttempt) {
        if self.attempts.len() >= MAX_ATTEMPTS {
            self.attempts.remove(1);
        }
        self.attempts.push(attempt);
    }
}

/// Where a placed session runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    pub region: String,
    pub rack: String,
    pub board: String,
    pub instance: String,
    pub deployment: String,
    pub endpoint: Endpoint,
    pub token: String,
    pub lease_expires_ms: u64,
}

fn rfc3339(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

impl SessionRow {
    pub fn view(&self) -> SessionView {
        SessionView {
            id: self.id.clone(),
            state: self.state,
            game: self.game.clone(),
            player_id: self.request.player.id.clone(),
            region: self.region.clone(),
            rack: self.rack.clone(),
            board: self.board.clone(),
            instance: self.instance.clone(),
            endpoint: self.endpoint.clone(),
            token: self.token.clone(),
            lease_expires_at: self
                .lease_expires_ms
                .filter(|_| self.state == SessionState::Active)
                .map(rfc3339),
            reason: self.reason.clone(),
            created_at: rfc3339(self.created_ms),
            deadline_at: rfc3339(self.deadline_ms),
        }
    }
}

const COLUMNS: &str = "id, tenant, idem_key, body_hash, game, version, request, state, region, rack, board, \
     instance, deployment, endpoint, token, lease_expires_ms, reason, created_ms, deadline_ms";

fn from_row(r: &Row<'_>) -> rusqlite::Result<SessionRow> {
    let json_err = |i: usize, e: serde_json::Error| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    };
    let request: String = r.get(6)?;
    let state: String = r.get(7)?;
    let endpoint: Option<String> = r.get(13)?;
    Ok(SessionRow {
        id: r.get(0)?,
        tenant: r.get(1)?,
        idem_key: r.get(2)?,
        body_hash: r.get(3)?,
        game: r.get(4)?,
        version: r.get(5)?,
        request: serde_json::from_str(&request).map_err(|e| json_err(6, e))?,
        state: SessionState::parse(&state).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                7,
                rusqlite::types::Type::Text,
                format!("state {state:?}").into(),
            )
        })?,
        region: r.get(8)?,
        rack: r.get(9)?,
        board: r.get(10)?,
        instance: r.get(11)?,
        deployment: r.get(12)?,
        endpoint: endpoint.map(|e| serde_json::from_str(&e)).transpose().map_err(|e| json_err(13, e))?,
        token: r.get(14)?,
        lease_expires_ms: r.get::<_, Option<i64>>(15)?.map(|v| v as u64),
        reason: r.get(16)?,
        created_ms: r.get::<_, i64>(17)? as u64,
        deadline_ms: r.get::<_, i64>(18)? as u64,
    })
}

fn one(conn: &Connection, clause: &str, p: impl rusqlite::Params) -> Result<Option<SessionRow>, BrokerError> {
    let sql = format!("SELECT {COLUMNS} FROM sessions WHERE {clause}");
    Ok(conn.prepare_cached(&sql)?.query_row(p, from_row).optional()?)
}

/// The session `id`.
pub fn get(db: &Db, id: &str) -> Result<Option<SessionRow>, BrokerError> {
    db.read(|c| one(c, "id = ?1", params![id]))
}

/// The session a tenant created with an idempotency key.
pub fn by_key(db: &Db, tenant: &str, key: &str) -> Result<Option<SessionRow>, BrokerError> {
    db.read(|c| one(c, "tenant = ?1 AND idem_key = ?2", params![tenant, key]))
}

/// Inserts a new session in `placing`. Returns false (and writes nothing) when the tenant
/// already has a session under this key.
pub fn insert(db: &Db, row: &SessionRow) -> Result<bool, BrokerError> {
    let request = serde_json::to_string(&row.request)?;
    db.write(|tx| {
        let n = tx.prepare_cached(
            "INSERT INTO sessions (id, tenant, idem_key, body_hash, game, version, request, state, created_ms, deadline_ms, updated_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?9)
             ON CONFLICT (tenant, idem_key) DO NOTHING",
        )?
        .execute(params![
            row.id,
            row.tenant,
            row.idem_key,
            row.body_hash,
            row.game,
            row.version,
            request,
            row.state.as_str(),
            row.created_ms as i64,
            row.deadline_ms as i64
        ])?;
        Ok(n == 1)
    })
}

/// Marks a session active on its instance. Only a session still waiting (placing, queued)
/// can become active; returns false otherwise (it was ended meanwhile).
pub fn activate(
    db: &Db,
    id: &str,
    p: &Placement,
    explain: &ExplainRecord,
    now: u64,
) -> Result<bool, BrokerError> {
    let endpoint = serde_json::to_string(&p.endpoint)?;
    let explain = serde_json::to_string(explain)?;
    db.write(|tx| {
        let n = tx
            .prepare_cached(
                "UPDATE sessions SET state = 'active', region = ?2, rack = ?3, board = ?4, instance = ?5,
                 deployment = ?6, endpoint = ?7, token = ?8, lease_expires_ms = ?9, explain = ?10, updated_ms = ?11
                 WHERE id = ?1 AND state IN ('placing', 'queued')",
            )?
            .execute(params![
                id,
                p.region,
                p.rack,
                p.board,
                p.instance,
                p.deployment,
                endpoint,
                p.token,
                p.lease_expires_ms as i64,
                explain,
                now as i64
            ])?;
        Ok(n == 1)
    })
}

/// Moves a session from `from` states to `to` with a reason; returns false when it was in
/// none of them.
pub fn transition(
    db: &Db,
    id: &str,
    from: &[api::broker::SessionState],
    to: SessionState,
    reason: Option<&str>,
    explain: Option<&ExplainRecord>,
    now: u64,
) -> Result<bool, BrokerError> {
    let states: Vec<String> = from.iter().map(|s| format!("'{}'", s.as_str())).collect();
    let explain = explain.map(serde_json::to_string).transpose()?;
    let sql = format!(
        "UPDATE sessions SET state = ?2, reason = COALESCE(?3, reason), explain = COALESCE(?4, explain), updated_ms = ?5
         WHERE id = ?1 AND state IN ({})",
        states.join(", ")
    );
    db.write(|tx| {
        let n = tx.prepare_cached(&sql)?.execute(params![id, to.as_str(), reason, explain, now as i64])?;
        Ok(n == 1)
    })
}

/// Deletes up to `limit` sessions that finished (the states of [`SessionState::is_final`])
/// before `before_ms`; returns how many went. Sessions that are still live are never touched,
/// however old.
pub fn prune_finished(db: &Db, before_ms: u64, limit: usize) -> Result<usize, BrokerError> {
    db.write(|tx| {
        let n = tx
            .prepare_cached(
                "DELETE FROM sessions WHERE id IN (
                     SELECT id FROM sessions WHERE state IN ('ended', 'expired', 'failed') AND updated_ms < ?1 LIMIT ?2)",
            )?
            .execute(params![before_ms as i64, limit as i64])?;
        Ok(n)
    })
}

/// Extends an active session's lease.
pub fn extend_lease(db: &Db, id: &str, until_ms: u64) -> Result<bool, BrokerError> {
    db.write(|tx| {
        let n = tx
            .prepare_cached("UPDATE sessions SET lease_expires_ms = MAX(lease_expires_ms, ?2) WHERE id = ?1 AND state = 'active'")?
            .execute(params![id, until_ms as i64])?;
        Ok(n == 1)
    })
}

/// Where a page of [`list`] ends: the last session's creation time and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListCursor {
    pub created_ms: u64,
    pub id: String,
}

impl ListCursor {
    /// The cursor after `row`.
    pub fn after(row: &SessionRow) -> ListCursor {
        ListCursor { created_ms: row.created_ms, id: row.id.clone() }
    }

    /// The opaque text form, `<created_ms>.<id>`.
    pub fn encode(&self) -> String {
        format!("{}.{}", self.created_ms, self.id)
    }

    pub fn decode(text: &str) -> Option<ListCursor> {
        let (ms, id) = text.split_once('.')?;
        let created_ms = ms.parse().ok().filter(|ms| *ms <= i64::MAX as u64)?;
        (!id.is_empty()).then(|| ListCursor { created_ms, id: id.to_string() })
    }
}

/// A tenant's sessions, newest first (ties by id), optionally in one state, after `cursor`.
pub fn list(
    db: &Db,
    tenant: &str,
    state: Option<SessionState>,
    cursor: Option<&ListCursor>,
    limit: u32,
) -> Result<Vec<SessionRow>, BrokerError> {
    db.read(|c| {
        let sql = format!(
            "SELECT {COLUMNS} FROM sessions WHERE tenant = ?1 AND (?2 IS NULL OR state = ?2)
               AND created_ms <= ?3 AND (created_ms < ?3 OR id > ?4)
             ORDER BY created_ms DESC, id LIMIT ?5"
        );
        let mut stmt = c.prepare_cached(&sql)?;
        // Without a cursor the bounds admit every session. Always bound, so that the search of
        // the tenant index starts at the cursor (`created_ms <= ?3` is a range on it) instead of
        // walking every newer session again for each page.
        let (ms, id) = cursor.map_or((i64::MAX, ""), |k| (k.created_ms as i64, k.id.as_str()));
        let rows = stmt.query_map(params![tenant, state.map(|s| s.as_str()), ms, id, limit], from_row)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    })
}

/// Every session in one of `states`, oldest first.
pub fn in_states(db: &Db, states: &[SessionState]) -> Result<Vec<SessionRow>, BrokerError> {
    let list: Vec<String> = states.iter().map(|s| format!("'{}'", s.as_str())).collect();
    db.read(|c| {
        let sql = format!(
            "SELECT {COLUMNS} FROM sessions WHERE state IN ({}) ORDER BY created_ms, id",
            list.join(", ")
        );
        let mut stmt = c.prepare_cached(&sql)?;
        let rows = stmt.query_map([], from_row)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    })
}

/// The explanation record of a session.
pub fn explain(db: &Db, id: &str) -> Result<ExplainRecord, BrokerError> {
    db.read(|c| {
        let text: Option<String> = c
            .query_row("SELECT explain FROM sessions WHERE id = ?1", params![id], |r| r.get(0))
            .optional()?;
        Ok(text.map(|t| serde_json::from_str(&t)).transpose()?.unwrap_or_default())
    })
}

/// Every active session's id, rack and lease end (loaded into the lease book at start).
pub fn active_leases(db: &Db) -> Result<Vec<(String, String, u64)>, BrokerError> {
    db.read(|c| {
        let mut stmt = c.prepare_cached(
            "SELECT id, rack, lease_expires_ms FROM sessions
             WHERE state = 'active' AND rack IS NOT NULL AND lease_expires_ms IS NOT NULL",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64)))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    })
}

/// Expires an active session whose stored lease ended before `now` (`lease_lapsed`); false
/// when it is not active or a heartbeat moved its lease on.
pub fn expire_if_lapsed(db: &Db, id: &str, now: u64) -> Result<bool, BrokerError> {
    db.write(|tx| {
        let n = tx
            .prepare_cached(
                "UPDATE sessions SET state = 'expired', reason = 'lease_lapsed', updated_ms = ?2
                 WHERE id = ?1 AND state = 'active' AND lease_expires_ms < ?2",
            )?
            .execute(params![id, now as i64])?;
        Ok(n == 1)
    })
}

/// How many sessions are in each of `states` (each one counted through the state index, so
/// the live states cost what is live, not what the retention period holds).
pub fn count_in_states(db: &Db, states: &[SessionState]) -> Result<Vec<(SessionState, i64)>, BrokerError> {
    db.read(|c| {
        let mut stmt = c.prepare_cached("SELECT count(*) FROM sessions WHERE state = ?1")?;
        let mut out = Vec::with_capacity(states.len());
        for state in states {
            out.push((*state, stmt.query_row(params![state.as_str()], |r| r.get(0))?));
        }
        Ok(out)
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn row(id: &str, key: &str) -> SessionRow {
        SessionRow {
            id: id.into(),
            tenant: "t".into(),
            idem_key: key.into(),
            body_hash: "h".into(),
            game: "g".into(),
            version: "1".into(),
            request: serde_json::from_value(serde_json::json!({"game": "g", "player": {"id": "p"}})).unwrap(),
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
            created_ms: 1000,
            deadline_ms: 31_000,
        }
    }

    #[test]
    fn pages_after_a_cursor_cover_every_session_once_newest_first() {
        let db = crate::db::test_db();
        // Two sessions share a creation time: the cursor must not lose or repeat either.
        for (i, ms) in [1000, 2000, 2000, 3000, 4000].iter().enumerate() {
            let row = SessionRow { created_ms: *ms, ..row(&format!("s{i}"), &format!("k{i}")) };
            assert!(insert(&db, &row).unwrap());
        }
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = list(&db, "t", None, cursor.as_ref(), 2).unwrap();
            seen.extend(page.iter().map(|r| r.id.clone()));
            match page.last() {
                Some(last) if page.len() == 2 => cursor = Some(ListCursor::after(last)),
                _ => break,
            }
        }
        assert_eq!(seen, ["s4", "s3", "s1", "s2", "s0"]);
        assert!(list(&db, "other", None, None, 10).unwrap().is_empty(), "another tenant's are not listed");
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_no_cursor() {
        let cursor = ListCursor { created_ms: 1_700_000_000_123, id: "s-0a1b".into() };
        assert_eq!(ListCursor::decode(&cursor.encode()), Some(cursor));
        for bad in ["", "123", "abc.s-1", "123.", "-5.s-1", "99999999999999999999.s-1", ".s-1"] {
            assert_eq!(ListCursor::decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn pruning_deletes_only_sessions_that_finished_before_the_cutoff() {
        let db = crate::db::test_db();
        let states = SessionState::ALL;
        for state in &states {
            for (age, at) in [("old", 5_000), ("new", 20_000)] {
                let id = format!("{}-{age}", state.as_str());
                assert!(insert(&db, &SessionRow { state: *state, created_ms: at, ..row(&id, &id) }).unwrap());
            }
        }
        // In batches: 3 finished sessions are older than the cutoff.
        assert_eq!(prune_finished(&db, 10_000, 2).unwrap(), 2);
        assert_eq!(prune_finished(&db, 10_000, 2).unwrap(), 1);
        assert_eq!(prune_finished(&db, 10_000, 2).unwrap(), 0);
        let mut left: Vec<String> = db
            .read(|c| {
                let mut stmt = c.prepare("SELECT id FROM sessions")?;
                let ids = stmt.query_map([], |r| r.get(0))?.collect::<Result<Vec<String>, _>>()?;
                Ok::<_, BrokerError>(ids)
            })
            .unwrap();
        left.sort();
        let mut want: Vec<String> = states
            .iter()
            .flat_map(|s| {
                let live = !s.is_final();
                [live.then(|| format!("{}-old", s.as_str())), Some(format!("{}-new", s.as_str()))]
            })
            .flatten()
            .collect();
        want.sort();
        assert_eq!(left, want);
        assert!(by_key(&db, "t", "ended-old").unwrap().is_none(), "its key is free again");
        let counts = count_in_states(&db, &[SessionState::Ended, SessionState::Active]).unwrap();
        assert_eq!(counts, [(SessionState::Ended, 1), (SessionState::Active, 2)]);
    }

    #[test]
    fn one_session_per_key_and_transitions_only_from_the_named_states() {
        let db = crate::db::test_db();
        assert!(insert(&db, &row("s-1", "k")).unwrap());
        assert!(!insert(&db, &row("s-2", "k")).unwrap());
        assert_eq!(by_key(&db, "t", "k").unwrap().unwrap().id, "s-1");
        let p = Placement {
            region: "east".into(),
            rack: "r".into(),
            board: "b".into(),
            instance: "i".into(),
            deployment: "d".into(),
            endpoint: Endpoint { host: "h".into(), stream_port: 1, adb_port: 2 },
            token: "tok".into(),
            lease_expires_ms: 5000,
        };
        assert!(activate(&db, "s-1", &p, &ExplainRecord::default(), 1).unwrap());
        assert!(!activate(&db, "s-1", &p, &ExplainRecord::default(), 1).unwrap());
        let s = get(&db, "s-1").unwrap().unwrap();
        assert_eq!(s.state, SessionState::Active);
        assert!(s.view().lease_expires_at.unwrap().starts_with("1970-01-01T00:00:05"));
        assert!(extend_lease(&db, "s-1", 9000).unwrap());
        assert!(
            transition(&db, "s-1", &[SessionState::Active], SessionState::Ended, Some("x"), None, 2).unwrap()
        );
        assert!(!extend_lease(&db, "s-1", 10_000).unwrap());
        assert!(
            !transition(&db, "s-1", &[SessionState::Active], SessionState::Expired, None, None, 3).unwrap()
        );
        assert_eq!(get(&db, "s-1").unwrap().unwrap().reason.as_deref(), Some("x"));
        assert_eq!(list(&db, "t", Some(SessionState::Ended), None, 10).unwrap().len(), 1);
        assert!(list(&db, "other", None, None, 10).unwrap().is_empty());
    }
}
