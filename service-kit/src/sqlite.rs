//! Opening a service's SQLite database and bringing its schema up to date.

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;

/// Why a database could not be opened or migrated.
#[derive(Debug, thiserror::Error)]
pub enum StoreOpenError {
    #[error("cannot open database {path}: {source}")]
    Open { path: String, source: rusqlite::Error },
    #[error("cannot configure database {path}: {source}")]
    Pragma { path: String, source: rusqlite::Error },
    #[error("migration {version} of {path} failed: {source}")]
    Migration { path: String, version: usize, source: rusqlite::Error },
    #[error(
        "database {path} has schema version {found}, newer than this binary knows ({known}); run a newer binary"
    )]
    TooNew { path: String, found: usize, known: usize },
    #[error("cannot open the checkpoint connection to {path}: {source}")]
    Checkpoint { path: String, source: rusqlite::Error },
    #[error("cannot start the checkpoint thread: {0}")]
    Thread(std::io::Error),
}

/// Opens (creating if needed) the database at `path` in WAL mode with `synchronous=NORMAL` and a
/// busy timeout, then applies `migrations` in order. Each migration runs once, in its own
/// transaction, tracked by `PRAGMA user_version`.
pub fn open(path: &Path, migrations: &[&str]) -> Result<Connection, StoreOpenError> {
    let name = path.display().to_string();
    let mut conn =
        Connection::open(path).map_err(|source| StoreOpenError::Open { path: name.clone(), source })?;
    configure(&conn).map_err(|source| StoreOpenError::Pragma { path: name.clone(), source })?;
    migrate(&mut conn, migrations, &name)?;
    Ok(conn)
}

/// Prepared statements kept per connection. rusqlite keeps 16 by default; a controller runs
/// some 40 distinct statements on its hot paths, so with 16 every statement was evicted before
/// its next use and prepared again (a tenth of the controller's CPU under load in perf, preparing
/// and finalising included).
const STATEMENT_CACHE: usize = 256;

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

/// Applies the migrations not yet applied.
pub fn migrate(conn: &mut Connection, migrations: &[&str], name: &str) -> Result<(), StoreOpenError> {
    let current: usize = conn
        .pragma_query_value(None, "user_version", |row| row.get::<_, i64>(0))
        .map_err(|source| StoreOpenError::Pragma { path: name.to_string(), source })?
        .try_into()
        .unwrap_or(0);
    if current > migrations.len() {
        return Err(StoreOpenError::TooNew {
            path: name.to_string(),
            found: current,
            known: migrations.len(),
        });
    }
    for (index, sql) in migrations.iter().enumerate().skip(current) {
        let version = index + 1;
        let err = |source| StoreOpenError::Migration { path: name.to_string(), version, source };
        let tx = conn.transaction().map_err(err)?;
        tx.execute_batch(sql).map_err(err)?;
        tx.pragma_update(None, "user_version", version as i64).map_err(err)?;
        tx.commit().map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_apply_once_and_refuse_newer_schemas() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let v1 = ["CREATE TABLE a (x INTEGER);"];
        let v2 = ["CREATE TABLE a (x INTEGER);", "CREATE TABLE b (y INTEGER);"];
        drop(open(&path, &v1).unwrap());
        let conn = open(&path, &v2).unwrap();
        conn.execute("INSERT INTO b (y) VALUES (1)", []).unwrap();
        let mode: String = conn.pragma_query_value(None, "journal_mode", |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
        drop(conn);
        assert!(matches!(open(&path, &v1), Err(StoreOpenError::TooNew { found: 2, known: 1, .. })));
    }

    #[test]
    fn a_statement_stays_prepared_while_dozens_of_others_run() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open(&dir.path().join("t.db"), &["CREATE TABLE a (x INTEGER);"]).unwrap();
        let run = |sql: &str| {
            let mut stmt = conn.prepare_cached(sql).unwrap();
            stmt.query_row([], |r| r.get::<_, i64>(0)).unwrap();
            // Runs of this prepared statement: a statement prepared again starts from zero.
            stmt.get_status(rusqlite::StatementStatus::Run)
        };
        let first = "SELECT count(*) FROM a";
        assert_eq!(run(first), 1);
        for n in 0..60 {
            run(&format!("SELECT count(*) + {n} FROM a"));
        }
        assert_eq!(run(first), 2, "the first statement was evicted and prepared again");
    }

    #[test]
    fn a_failing_migration_leaves_nothing_half_done() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let bad = ["CREATE TABLE a (x INTEGER); CREATE TABLE a (x INTEGER);"];
        assert!(open(&path, &bad).is_err());
        let conn = Connection::open(&path).unwrap();
        let tables: i64 =
            conn.query_row("SELECT count(*) FROM sqlite_master WHERE name = 'a'", [], |r| r.get(0)).unwrap();
        assert_eq!(tables, 0);
    }
}
