//! The broker's SQLite database: schema, and one connection behind a mutex. Every write is one
//! short transaction; the broker's hot path (a placement) is two of them.

use std::sync::Mutex;

use rusqlite::{Connection, Transaction};

/// Schema versions, applied in order by [`service_kit::sqlite::open`].
pub const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE regions (
    id TEXT PRIMARY KEY,
    description TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE games (
    id TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE game_versions (
    game TEXT NOT NULL REFERENCES games(id),
    version TEXT NOT NULL,
    spec TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (game, version)
);
CREATE TABLE warm_targets (
    game TEXT NOT NULL REFERENCES games(id),
    region TEXT NOT NULL REFERENCES regions(id),
    warm INTEGER NOT NULL,
    PRIMARY KEY (game, region)
);
CREATE TABLE tenants (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    rate_per_s INTEGER NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL REFERENCES tenants(id),
    key_hash TEXT NOT NULL UNIQUE,
    revoked INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL
);
-- A rack exists once an operator issued its credential; the rest comes with registration.
CREATE TABLE racks (
    id TEXT PRIMARY KEY,
    credential_hash TEXT NOT NULL,
    region TEXT,
    labels TEXT NOT NULL DEFAULT '{}',
    controller_url TEXT,
    controller_token TEXT,
    player_host TEXT,
    uplinks TEXT NOT NULL DEFAULT '{}',
    registered_ms INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    idem_key TEXT NOT NULL,
    body_hash TEXT NOT NULL,
    game TEXT NOT NULL,
    version TEXT NOT NULL,
    request TEXT NOT NULL,
    state TEXT NOT NULL,
    region TEXT,
    rack TEXT,
    board TEXT,
    instance TEXT,
    deployment TEXT,
    endpoint TEXT,
    token TEXT,
    lease_expires_ms INTEGER,
    reason TEXT,
    explain TEXT NOT NULL DEFAULT '{"decisions":[],"attempts":[]}',
    created_ms INTEGER NOT NULL,
    deadline_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    UNIQUE (tenant, idem_key)
);
CREATE INDEX sessions_by_state ON sessions (state);
CREATE INDEX sessions_by_tenant ON sessions (tenant, created_ms);
"#,
    // Warm targets that follow demand: the `AutoWarm` JSON, NULL for a fixed target.
    "ALTER TABLE warm_targets ADD COLUMN auto TEXT;",
    // Retention deletes sessions that ended long enough ago, found by state and age.
    "DROP INDEX sessions_by_state; CREATE INDEX sessions_by_state ON sessions (state, updated_ms);",
];

/// Why a database call failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("stored JSON is not valid: {0}")]
    Json(#[from] serde_json::Error),
}

/// The broker's one connection.
pub struct Db {
    conn: Mutex<Connection>,
}

impl Db {
    pub fn new(conn: Connection) -> Db {
        Db { conn: Mutex::new(conn) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the connection (reads, or single statements).
    pub fn read<T, E: From<DbError>>(&self, f: impl FnOnce(&Connection) -> Result<T, E>) -> Result<T, E> {
        f(&self.lock())
    }

    /// Runs `f` in one immediate transaction, committed only when `f` succeeds.
    pub fn write<T, E: From<DbError>>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| E::from(DbError::Sql(e)))?;
        let value = f(&tx)?;
        tx.commit().map_err(|e| E::from(DbError::Sql(e)))?;
        Ok(value)
    }
}

#[cfg(test)]
pub(crate) fn test_db() -> Db {
    let mut conn = Connection::open_in_memory().unwrap();
    service_kit::sqlite::migrate(&mut conn, MIGRATIONS, "memory").unwrap();
    Db::new(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_apply_to_a_file_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.db");
        drop(service_kit::sqlite::open(&path, MIGRATIONS).unwrap());
        let conn = service_kit::sqlite::open(&path, MIGRATIONS).unwrap();
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(version as usize, MIGRATIONS.len());
    }

    #[test]
    fn a_failed_write_leaves_nothing() {
        let db = test_db();
        let result: Result<(), DbError> = db.write(|tx| {
            tx.execute("INSERT INTO regions (id, description, created_ms) VALUES ('a', '', 0)", [])?;
            tx.execute("INSERT INTO regions (id, description, created_ms) VALUES ('a', '', 0)", [])?;
            Ok(())
        });
        assert!(result.is_err());
        let n: i64 = db
            .read(|c| Ok::<_, DbError>(c.query_row("SELECT count(*) FROM regions", [], |r| r.get(0))?))
            .unwrap();
        assert_eq!(n, 0);
    }
}
