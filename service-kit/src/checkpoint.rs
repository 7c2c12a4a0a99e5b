//! WAL checkpoints and log syncs off the write path.
//!
//! By default SQLite checkpoints inside the commit that takes the log past 1,000 pages: that
//! commit, and every request queued on the service's connection behind it, waits while the log
//! is synced, copied into the database and the database synced. With `synchronous=NORMAL` the
//! log is synced at no other time, so that first sync flushes everything written since the
//! last checkpoint. A [`Checkpointer`] takes both off the write path, on its own thread and
//! connection: every [`Cadence::log_sync`] it syncs the log (a few pages at a time, so no sync
//! ever has much to flush, and a committed write is on disk within that time even on a power
//! cut), and every [`Cadence::checkpoint`] it runs a PASSIVE checkpoint (it never blocks a
//! writer or a reader), which then has little to copy. The service's connection keeps an
//! automatic checkpoint only as a safety net, at [`FALLBACK_PAGES`], should the thread fall
//! behind.
//!
//! Measured (`bench_claims --rate 2000`, claims offered open loop, alternating runs on this
//! machine, quiet disk): claim p99 2.3-4.5 ms with the thread against 5.6-10.7 ms with
//! SQLite's own checkpoints; a checkpoint every 500 ms without the log syncs made it worse
//! (15-17 ms), its one big sync stalling the writer's log appends.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::sqlite::StoreOpenError;

/// The service connection's own automatic checkpoint, a safety net: ~16 MiB of log.
pub const FALLBACK_PAGES: u32 = 4000;

/// How often the thread syncs the log and checkpoints.
#[derive(Debug, Clone, Copy)]
pub struct Cadence {
    pub log_sync: Duration,
    pub checkpoint: Duration,
}

impl Cadence {
    /// What the services run with (measured best of 20, 50, 100 and 500 ms checkpoints, with
    /// and without 2-5 ms log syncs).
    pub const SERVICE: Cadence =
        Cadence { log_sync: Duration::from_millis(5), checkpoint: Duration::from_millis(50) };
}

/// A background checkpoint thread; stopped (and joined) when dropped.
pub struct Checkpointer {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Moves the log syncs and checkpoints of the database at `path` (in WAL mode; `conn` is
    /// the service's connection to it) to a thread that runs them at `cadence`.
    pub fn start(path: &Path, conn: &Connection, cadence: Cadence) -> Result<Checkpointer, StoreOpenError> {
        let err = |source| StoreOpenError::Checkpoint { path: path.display().to_string(), source };
        let own = Connection::open(path).map_err(err)?;
        own.busy_timeout(Duration::from_secs(5)).map_err(err)?;
        conn.pragma_update(None, "wal_autocheckpoint", FALLBACK_PAGES).map_err(err)?;
        let (stop, stopped) = mpsc::channel();
        let path: PathBuf = path.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || run(&own, &path, cadence, &stopped))
            .map_err(StoreOpenError::Thread)?;
        Ok(Checkpointer { stop: Some(stop), thread: Some(thread) })
    }
}

fn run(conn: &Connection, path: &Path, cadence: Cadence, stopped: &mpsc::Receiver<()>) {
    let log_path = PathBuf::from(format!("{}-wal", path.display()));
    // Opened once it exists (SQLite creates it with the first connection in WAL mode).
    let mut log: Option<File> = None;
    let mut last_checkpoint = Instant::now();
    loop {
        match stopped.recv_timeout(cadence.log_sync) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        if log.is_none() {
            log = File::open(&log_path).ok();
        }
        if let Some(file) = &log
            && let Err(err) = file.sync_data()
        {
            tracing::warn!(path = %log_path.display(), error = %err, "WAL sync failed; retrying");
        }
        if last_checkpoint.elapsed() < cadence.checkpoint {
            continue;
        }
        last_checkpoint = Instant::now();
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
        let checkpointer = Checkpointer::start(
            &path,
            &conn,
            Cadence { log_sync: Duration::from_millis(5), checkpoint: Duration::from_millis(20) },
        )
        .unwrap();
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
        drop(
            Checkpointer::start(
                &path,
                &conn,
                Cadence { log_sync: Duration::from_secs(3600), checkpoint: Duration::from_secs(3600) },
            )
            .unwrap(),
        );
        write_1000_rows(&conn);
        std::thread::sleep(Duration::from_millis(200));
        assert!(db_pages(&path) < 100, "{} pages", db_pages(&path));
    }
}
