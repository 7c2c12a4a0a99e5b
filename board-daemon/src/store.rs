//! The daemon's own SQLite database: the last accepted desired state and a journal of changes
//! not yet reported upstream. It lets the board run on alone, across restarts, when cut off.

use std::path::Path;
use std::sync::Mutex;

use api::{BoardEvent, DesiredState, JournalEntry};
use rusqlite::{Connection, OptionalExtension, params};
use service_kit::sqlite::StoreOpenError;

/// Schema, one migration per entry; never edit an applied one, append a new one.
pub const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE desired_state (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        generation INTEGER NOT NULL,
        body TEXT NOT NULL,
        updated_ms INTEGER NOT NULL
    );
    CREATE TABLE journal (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        at_ms INTEGER NOT NULL,
        body TEXT NOT NULL
    );
",
    "
    CREATE TABLE instance_resets (
        instance TEXT PRIMARY KEY,
        epoch INTEGER NOT NULL
    );
",
];

/// How many unreported journal entries are kept at most; older ones are dropped first, so a
/// board cut off for days cannot fill its disk.
pub const JOURNAL_CAP: u64 = 20_000;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Open(#[from] StoreOpenError),
    #[error("database error: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("stored record is corrupt: {0}")]
    Corrupt(#[from] serde_json::Error),
}

/// The board's database.
pub struct Store {
    conn: Mutex<Connection>,
}

impl Store {
    /// Opens (creating) the database at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Ok(Store { conn: Mutex::new(service_kit::sqlite::open(path, MIGRATIONS)?) })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (transactions roll
        // back), so a poisoned lock is safe to keep using.
        self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The last accepted desired state, if any.
    pub fn load_desired(&self) -> Result<Option<DesiredState>, StoreError> {
        let body: Option<String> = self
            .conn()
            .query_row("SELECT body FROM desired_state WHERE id = 1", [], |row| row.get(0))
            .optional()?;
        Ok(body.map(|b| serde_json::from_str(&b)).transpose()?)
    }

    /// Replaces the desired state and journals its acceptance, in one transaction.
    pub fn save_desired(&self, desired: &DesiredState, now_ms: u64) -> Result<JournalEntry, StoreError> {
        let body = serde_json::to_string(desired)?;
        let event = BoardEvent::DesiredAccepted { generation: desired.generation };
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO desired_state (id, generation, body, updated_ms) VALUES (1, ?1, ?2, ?3)
             ON CONFLICT (id) DO UPDATE SET generation = ?1, body = ?2, updated_ms = ?3",
            params![desired.generation as i64, body, now_ms as i64],
        )?;
        let entry = append_in(&tx, event, now_ms)?;
        tx.commit()?;
        Ok(entry)
    }

    /// Appends an event to the journal.
    pub fn append(&self, event: BoardEvent, now_ms: u64) -> Result<JournalEntry, StoreError> {
        let conn = self.conn();
        append_in(&conn, event, now_ms)
    }

    /// Journal entries after `after`, oldest first, at most `limit`.
    pub fn journal_after(&self, after: u64, limit: u32) -> Result<Vec<JournalEntry>, StoreError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare_cached("SELECT seq, at_ms, body FROM journal WHERE seq > ?1 ORDER BY seq LIMIT ?2")?;
        let rows = stmt.query_map(params![after as i64, limit], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?, row.get::<_, String>(2)?))
        })?;
        let mut entries = Vec::new();
        for row in rows {
            let (seq, at_ms, body) = row?;
            entries.push(JournalEntry {
                seq: seq as u64,
                at_ms: at_ms as u64,
                event: serde_json::from_str(&body)?,
            });
        }
        Ok(entries)
    }

    /// The last fast reset applied to `instance` (0 when none).
    pub fn reset_epoch(&self, instance: &str) -> Result<u64, StoreError> {
        let epoch: Option<i64> = self
            .conn()
            .query_row("SELECT epoch FROM instance_resets WHERE instance = ?1", [instance], |row| row.get(0))
            .optional()?;
        Ok(epoch.unwrap_or(0) as u64)
    }

    /// Records that the fast reset `epoch` of `instance` was applied, so a restarted daemon never
    /// repeats it (repeating it on a claimed instance would wipe a live player's game).
    pub fn set_reset_epoch(&self, instance: &str, epoch: u64) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO instance_resets (instance, epoch) VALUES (?1, ?2)
             ON CONFLICT (instance) DO UPDATE SET epoch = ?2",
            params![instance, epoch as i64],
        )?;
        Ok(())
    }

    /// Forgets entries up to and including `seq` (they were reported).
    pub fn acknowledge(&self, seq: u64) -> Result<usize, StoreError> {
        Ok(self.conn().execute("DELETE FROM journal WHERE seq <= ?1", params![seq as i64])?)
    }
}

fn append_in(conn: &Connection, event: BoardEvent, now_ms: u64) -> Result<JournalEntry, StoreError> {
    let body = serde_json::to_string(&event)?;
    let mut stmt = conn.prepare_cached("INSERT INTO journal (at_ms, body) VALUES (?1, ?2)")?;
    stmt.execute(params![now_ms as i64, body])?;
    let seq = conn.last_insert_rowid() as u64;
    if seq.is_multiple_of(1000) && seq > JOURNAL_CAP {
        conn.execute("DELETE FROM journal WHERE seq <= ?1", params![(seq - JOURNAL_CAP) as i64])?;
    }
    Ok(JournalEntry { seq, at_ms: now_ms, event })
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::InstancePhase;

    #[test]
    fn desired_state_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("board.db");
        let store = Store::open(&path).unwrap();
        assert_eq!(store.load_desired().unwrap(), None);
        let desired = DesiredState { generation: 7, instances: vec![] };
        store.save_desired(&desired, 1).unwrap();
        drop(store);
        let store = Store::open(&path).unwrap();
        assert_eq!(store.load_desired().unwrap(), Some(desired));
        assert_eq!(
            store.journal_after(0, 10).unwrap()[0].event,
            BoardEvent::DesiredAccepted { generation: 7 }
        );
    }

    #[test]
    fn journal_is_ordered_and_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("board.db")).unwrap();
        for i in 0..5 {
            store
                .append(
                    BoardEvent::Phase {
                        instance: format!("i{i}"),
                        generation: 1,
                        phase: InstancePhase::Ready,
                        container_id: None,
                        reason: None,
                    },
                    i,
                )
                .unwrap();
        }
        let all = store.journal_after(0, 100).unwrap();
        assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
        assert_eq!(store.acknowledge(3).unwrap(), 3);
        assert_eq!(store.journal_after(0, 100).unwrap().len(), 2);
        assert_eq!(store.journal_after(4, 100).unwrap()[0].seq, 5);
    }

    #[test]
    fn reset_epochs_are_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("board.db")).unwrap();
        assert_eq!(store.reset_epoch("a").unwrap(), 0);
        store.set_reset_epoch("a", 2).unwrap();
        store.set_reset_epoch("a", 3).unwrap();
        assert_eq!(store.reset_epoch("a").unwrap(), 3);
    }
}
