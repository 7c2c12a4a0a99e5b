//! WAL checkpoints off the write path. By default SQLite checkpoints inside the commit that
//! takes the log past 1,000 pages: that commit, and every request waiting on the service's
//! connection behind it, pays for copying the log into the database and syncing it. A
//! [`Checkpointer`] does that on its own thread and connection instead, with a PASSIVE
//! checkpoint (it never blocks a writer or a reader), every period. The service's connection
//! keeps an automatic checkpoint only as a safety net, at [`FALLBACK_PAGES`], should the
//! thread fall behind.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

use crate::sqlite::StoreOpenError;

/// The service connection's own automatic checkpoint, a safety net: ~16 MiB of log.
pub const FALLBACK_PAGES: u32 = 4000;

/// A background checkpoint thread; stopped (and joined) when dropped.
pub struct Checkpointer {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Moves the checkpoints of the database at `path` (in WAL mode; `conn` is the service's
    /// connection to it) to a thread that runs one every `period`.
    pub fn start(path: &Path, conn: &Connection, period: Duration) -> Result<Checkpointer, StoreOpenError> {
        let err = |source| StoreOpenError::Checkpoint { path: path.display().to_string(), source };
        let own = Connection::open(path).map_err(err)?;
        own.busy_timeout(Duration::from_secs(5)).map_err(err)?;
        conn.pragma_update(None, "wal_autocheckpoint", FALLBACK_PAGES).map_err(err)?;
        let (stop, stopped) = mpsc::channel();
        let path: PathBuf = path.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || run(&own, &path, period, &stopped))
            .map_err(StoreOpenError::Thread)?;
        Ok(Checkpointer { stop: Some(stop), thread: Some(thread) })
    }
}

fn run(conn: &Connection, path: &Path, period: Duration, stopped: &mpsc::Receiver<()>) {
    loop {
        match stopped.recv_timeout(period) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        // (busy, log pages, pages checkpointed); a failure is retried next period, and the
        // service connection's fallback checkpoint bounds the log meanwhile.
        let result = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        });
        match result {
            Ok((_, log, done)) => tracing::trace!(path = %path.display(), log, done, "checkpoint"),
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err, "WAL checkpoint failed; retrying")
            }
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pages in the database file itself: it grows only when a checkpoint copies the log in.
    fn db_pages(path: &Path) -> u64 {
        std::fs::metadata(path).unwrap().len() / 4096
    }

    /// ~1,000 rows of a page each: ~3,000 pages of log, past SQLite's default automatic
    /// checkpoint (1,000 pages) and below the fallback.
    fn write_1000_rows(conn: &Connection) {
        for i in 0..1000 {
            conn.execute("INSERT INTO t (k, v) VALUES (?1, zeroblob(3000))", [i]).unwrap();
        }
    }

    fn open(path: &Path) -> Connection {
        crate::sqlite::open(path, &["CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB);"]).unwrap()
    }

    #[test]
    fn the_thread_checkpoints_and_the_writer_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let conn = open(&path);
        let checkpointer = Checkpointer::start(&path, &conn, Duration::from_millis(20)).unwrap();
        let autocheckpoint: u32 = conn.pragma_query_value(None, "wal_autocheckpoint", |r| r.get(0)).unwrap();
        assert_eq!(autocheckpoint, FALLBACK_PAGES);
        write_1000_rows(&conn);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while db_pages(&path) < 900 {
            assert!(std::time::Instant::now() < deadline, "not checkpointed: {} pages", db_pages(&path));
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(checkpointer);
        let count: i64 = conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(count, 1000);
    }

    #[test]
    fn without_the_thread_the_log_waits_for_the_fallback() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let conn = open(&path);
        // Started and stopped at once: the fallback setting stays, nothing checkpoints.
        drop(Checkpointer::start(&path, &conn, Duration::from_secs(3600)).unwrap());
        write_1000_rows(&conn);
        std::thread::sleep(Duration::from_millis(200));
        assert!(db_pages(&path) < 100, "{} pages", db_pages(&path));
    }
}
