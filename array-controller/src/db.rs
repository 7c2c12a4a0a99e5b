//! The controller's database: schema, and the one way to change it. Every change runs in a
//! [`Write`], which appends its events to the log in the same transaction and bumps the desired
//! generation of every board it touches; after the commit the events are published and the
//! boards' long-polls are woken. So the event log and the state can never disagree.

use std::collections::BTreeSet;
use std::sync::Mutex;

use api::rack::{RackEvent, RackEventBody};
use rusqlite::{Connection, Transaction, TransactionBehavior, params};

/// Schema, one migration per entry; never edit an applied one, append a new one.
pub const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE join_tokens (
        id TEXT PRIMARY KEY,
        token_hash TEXT NOT NULL UNIQUE,
        expires_ms INTEGER NOT NULL,
        revoked INTEGER NOT NULL DEFAULT 0,
        created_ms INTEGER NOT NULL,
        uses INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE boards (
        id TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        reason TEXT,
        class TEXT,
        arch TEXT NOT NULL,
        address TEXT NOT NULL,
        facts TEXT NOT NULL,
        credential_hash TEXT NOT NULL UNIQUE,
        cordoned INTEGER NOT NULL DEFAULT 0,
        reachable INTEGER NOT NULL DEFAULT 1,
        unreachable_since_ms INTEGER,
        last_heartbeat_ms INTEGER NOT NULL,
        desired_generation INTEGER NOT NULL,
        applied_generation INTEGER NOT NULL DEFAULT 0,
        journal_seq INTEGER NOT NULL DEFAULT 0,
        enrolled_ms INTEGER NOT NULL
    );
    CREATE TABLE deployments (
        id TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL
    );
    CREATE TABLE instances (
        id TEXT PRIMARY KEY,
        deployment_id TEXT NOT NULL,
        board_id TEXT NOT NULL REFERENCES boards(id),
        state TEXT NOT NULL,
        reason TEXT,
        generation INTEGER NOT NULL,
        reset_epoch INTEGER NOT NULL DEFAULT 0,
        millicores INTEGER NOT NULL,
        cpus TEXT NOT NULL,
        memory_mib INTEGER NOT NULL,
        gpu_slots INTEGER NOT NULL,
        encoder_slots INTEGER NOT NULL,
        adb_port INTEGER NOT NULL,
        stream_port INTEGER NOT NULL,
        container_id TEXT,
        claim_key TEXT UNIQUE,
        at_risk INTEGER NOT NULL DEFAULT 0,
        state_since_ms INTEGER NOT NULL,
        created_ms INTEGER NOT NULL
    );
    CREATE INDEX instances_by_deployment_state ON instances (deployment_id, state, state_since_ms);
    CREATE INDEX instances_by_board ON instances (board_id);
    CREATE TABLE claims (
        key TEXT PRIMARY KEY,
        deployment_id TEXT NOT NULL,
        instance_id TEXT NOT NULL,
        board_id TEXT NOT NULL,
        state TEXT NOT NULL,
        lease_expires_ms INTEGER NOT NULL,
        created_ms INTEGER NOT NULL,
        ended_ms INTEGER
    );
    CREATE INDEX claims_by_lease ON claims (state, lease_expires_ms);
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        at_ms INTEGER NOT NULL,
        body TEXT NOT NULL
    );
",
    "
    -- The secret the instance's stream accepts; a new one with every generation and reset epoch.
    ALTER TABLE instances ADD COLUMN stream_token TEXT;
    -- On an upgraded rack, idle instances get a token at once (SQLite's generator is seeded
    -- from the OS) and every board a new desired state that carries it. Claimed ones get theirs
    -- when released, so a session already streaming with a token of the broker's keeps working.
    UPDATE instances SET stream_token = 'st_' || lower(hex(randomblob(32))) WHERE claim_key IS NULL;
    UPDATE boards SET desired_generation = desired_generation + 1;
",
    "
    -- Fewer pages written per claim. Every page a transaction changes is a frame in the log, and
    -- every 1000 frames SQLite checkpoints inside a commit (syncing the database file), which is
    -- what sets the claim latency's tail. Claims keyed by their key alone (no rowid, so no
    -- separate index on the key); events without AUTOINCREMENT (no sqlite_sequence row to
    -- rewrite per event; compaction always keeps the newest event, so no sequence is reused).
    CREATE TABLE claims_by_key (
        key TEXT PRIMARY KEY,
        deployment_id TEXT NOT NULL,
        instance_id TEXT NOT NULL,
        board_id TEXT NOT NULL,
        state TEXT NOT NULL,
        lease_expires_ms INTEGER NOT NULL,
        created_ms INTEGER NOT NULL,
        ended_ms INTEGER
    ) WITHOUT ROWID;
    INSERT INTO claims_by_key SELECT key, deployment_id, instance_id, board_id, state, lease_expires_ms,
        created_ms, ended_ms FROM claims;
    DROP TABLE claims;
    ALTER TABLE claims_by_key RENAME TO claims;
    CREATE INDEX claims_by_lease ON claims (state, lease_expires_ms);
    CREATE TABLE events_by_seq (
        seq INTEGER PRIMARY KEY,
        at_ms INTEGER NOT NULL,
        body TEXT NOT NULL
    );
    INSERT INTO events_by_seq SELECT seq, at_ms, body FROM events;
    DROP TABLE events;
    ALTER TABLE events_by_seq RENAME TO events;
",
];

/// A failure of the database itself.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database error: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("stored record is corrupt: {0}")]
    Corrupt(#[from] serde_json::Error),
}

/// The connection, used by one caller at a time. SQLite serialises writers anyway; one
/// connection avoids busy retries and keeps every statement cached.
pub struct Db {
    conn: Mutex<Connection>,
}

/// What a committed write leaves to publish.
pub struct Committed {
    pub events: Vec<RackEvent>,
    /// Boards whose desired state changed, with their new generation.
    pub boards: Vec<(String, u64)>,
}

/// One write transaction.
pub struct Write<'c> {
    pub tx: Transaction<'c>,
    pub now_ms: u64,
    events: Vec<RackEvent>,
    touched: BTreeSet<String>,
}

impl Write<'_> {
    /// Appends an event to the log.
    pub fn emit(&mut self, body: RackEventBody) -> Result<(), DbError> {
        let json = serde_json::to_string(&body)?;
        self.tx
            .prepare_cached("INSERT INTO events (at_ms, body) VALUES (?1, ?2)")?
            .execute(params![self.now_ms as i64, json])?;
        let seq = self.tx.last_insert_rowid() as u64;
        self.events.push(RackEvent { seq, at_ms: self.now_ms, body });
        Ok(())
    }

    /// Marks a board's desired state as changed (its generation is bumped once per write).
    pub fn touch_board(&mut self, board: &str) {
        self.touched.insert(board.to_string());
    }
}

impl Db {
    pub fn new(conn: Connection) -> Db {
        Db { conn: Mutex::new(conn) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // Transactions roll back on panic, so a poisoned lock guards consistent data.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the connection for reading.
    pub fn read<T, E: From<DbError>>(&self, f: impl FnOnce(&Connection) -> Result<T, E>) -> Result<T, E> {
        let conn = self.lock();
        f(&conn)
    }

    /// Runs `f` in an immediate transaction; commits when it returns Ok, rolls back otherwise.
    pub fn write<T, E: From<DbError>>(
        &self,
        now_ms: u64,
        f: impl FnOnce(&mut Write<'_>) -> Result<T, E>,
    ) -> Result<(T, Committed), E> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(DbError::from)?;
        let mut write = Write { tx, now_ms, events: Vec::new(), touched: BTreeSet::new() };
        let value = f(&mut write)?;
        let mut boards = Vec::new();
        for board in &write.touched {
            let generation: i64 = write
                .tx
                .prepare_cached(
                    "UPDATE boards SET desired_generation = desired_generation + 1 WHERE id = ?1 RETURNING desired_generation",
                )
                .and_then(|mut s| s.query_row([board], |r| r.get(0)))
                .map_err(DbError::from)?;
            boards.push((board.clone(), generation as u64));
        }
        let Write { tx, events, .. } = write;
        tx.commit().map_err(DbError::from)?;
        Ok((value, Committed { events, boards }))
    }
}

/// Reads a JSON column.
pub fn json_column<T: serde::de::DeserializeOwned>(text: &str) -> rusqlite::Result<T> {
    serde_json::from_str(text)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_apply_on_a_fresh_database() {
        let dir = tempfile::tempdir().unwrap();
        let conn = service_kit::sqlite::open(&dir.path().join("c.db"), MIGRATIONS).unwrap();
        let tables: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tables, 6);
    }

    #[test]
    fn upgrading_gives_idle_instances_a_stream_token_and_their_boards_a_new_desired_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        {
            let conn = service_kit::sqlite::open(&path, &MIGRATIONS[..1]).unwrap();
            conn.execute_batch(
                "INSERT INTO boards (id, state, arch, address, facts, credential_hash, last_heartbeat_ms,
                     desired_generation, enrolled_ms) VALUES ('b1', 'ready', 'x86_64', 'a', '{}', 'h', 0, 7, 0);
                 INSERT INTO instances (id, deployment_id, board_id, state, generation, millicores, cpus, memory_mib,
                     gpu_slots, encoder_slots, adb_port, stream_port, claim_key, state_since_ms, created_ms)
                 VALUES ('idle', 'd', 'b1', 'ready', 1, 100, '0', 64, 0, 0, 20000, 20001, NULL, 0, 0),
                        ('held', 'd', 'b1', 'claimed', 1, 100, '0', 64, 0, 0, 20002, 20003, 's1', 0, 0);",
            )
            .unwrap();
        }
        let conn = service_kit::sqlite::open(&path, MIGRATIONS).unwrap();
        let token = |id: &str| -> Option<String> {
            conn.query_row("SELECT stream_token FROM instances WHERE id = ?1", [id], |r| r.get(0)).unwrap()
        };
        let idle = token("idle").expect("an idle instance gets a token");
        assert!(idle.starts_with("st_") && api::instance::is_valid_stream_token(&idle), "{idle}");
        // A session in progress keeps the token it streams with; its instance gets one on release.
        assert_eq!(token("held"), None);
        let generation: i64 = conn
            .query_row("SELECT desired_generation FROM boards WHERE id = 'b1'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(generation, 8);
    }

    #[test]
    fn upgrading_keeps_claims_and_events_and_sequences_continue() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        {
            let conn = service_kit::sqlite::open(&path, &MIGRATIONS[..2]).unwrap();
            conn.execute_batch(
                "INSERT INTO claims (key, deployment_id, instance_id, board_id, state, lease_expires_ms, created_ms)
                 VALUES ('s1', 'd', 'i1', 'b1', 'active', 9000, 1);
                 INSERT INTO events (at_ms, body) VALUES (1, '{}'), (2, '{}'), (3, '{}');
                 DELETE FROM events WHERE seq < 3;",
            )
            .unwrap();
        }
        let db = Db::new(service_kit::sqlite::open(&path, MIGRATIONS).unwrap());
        let (key, expires): (String, i64) = db
            .read(|c| {
                Ok::<_, DbError>(c.query_row(
                    "SELECT key, lease_expires_ms FROM claims WHERE state = 'active'",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?)
            })
            .unwrap();
        assert_eq!((key.as_str(), expires), ("s1", 9000));
        let (_, committed) = db
            .write(4, |w| {
                w.emit(RackEventBody::Deployment { deployment: "d".into(), pool_size: 1, deleted: false })
            })
            .unwrap();
        assert_eq!(committed.events[0].seq, 4, "the sequence goes on after the kept events");
    }

    #[test]
    fn a_failed_write_leaves_no_event_and_no_change() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::new(service_kit::sqlite::open(&dir.path().join("c.db"), MIGRATIONS).unwrap());
        let result: Result<((), Committed), DbError> = db.write(1, |w| {
            w.emit(RackEventBody::Deployment { deployment: "d".into(), pool_size: 1, deleted: false })?;
            Err(DbError::Sql(rusqlite::Error::InvalidQuery))
        });
        assert!(result.is_err());
        let events: i64 = db
            .read(|c| Ok::<_, DbError>(c.query_row("SELECT count(*) FROM events", [], |r| r.get(0))?))
            .unwrap();
        assert_eq!(events, 0);
        let (_, committed) = db
            .write(2, |w| {
                w.emit(RackEventBody::Deployment { deployment: "d".into(), pool_size: 1, deleted: false })
            })
            .unwrap();
        assert_eq!(committed.events[0].seq, 1);
    }
}
