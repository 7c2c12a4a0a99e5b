//! The rack event log: every state change is a row (appended by [`crate::db::Write`]) and is
//! published in memory after its commit. Subscribers read a server-sent-event stream that
//! resumes after the last sequence they saw, so nothing is lost across a reconnect and nobody
//! polls the database: the log is read only to catch up.
//!
//! Retention: events older than the configured retention are compacted away. A subscriber that
//! resumes from before the oldest kept event first receives a `gap` event naming the first
//! sequence it will see, so it knows to re-read current state.

use std::convert::Infallible;
use std::time::Duration;

use api::rack::RackEvent;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use rusqlite::params;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::db::{Db, DbError, json_column};

/// Capacity of the in-memory channel; a subscriber further behind catches up from the log.
const CHANNEL_CAPACITY: usize = 4096;
/// Rows read per catch-up query.
const CATCH_UP_BATCH: u32 = 1000;

/// Publishes committed events to live subscribers.
pub struct EventHub {
    tx: broadcast::Sender<RackEvent>,
}

impl Default for EventHub {
    fn default() -> Self {
        EventHub { tx: broadcast::channel(CHANNEL_CAPACITY).0 }
    }
}

impl EventHub {
    /// Publishes events in order (after their transaction committed).
    pub fn publish(&self, events: Vec<RackEvent>) {
        for event in events {
            // No subscriber is fine.
            let _ = self.tx.send(event);
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<RackEvent> {
        self.tx.subscribe()
    }
}

/// Events after `after`, oldest first.
pub fn read_after(db: &Db, after: u64, limit: u32) -> Result<Vec<RackEvent>, DbError> {
    db.read(|conn| {
        let mut stmt =
            conn.prepare_cached("SELECT seq, at_ms, body FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2")?;
        let rows = stmt.query_map(params![after as i64, limit], |row| {
            Ok(RackEvent {
                seq: row.get::<_, i64>(0)? as u64,
                at_ms: row.get::<_, i64>(1)? as u64,
                body: json_column(&row.get::<_, String>(2)?)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    })
}

/// The oldest kept sequence (0 when the log is empty).
pub fn oldest_seq(db: &Db) -> Result<u64, DbError> {
    db.read(|conn| {
        let seq: Option<i64> = conn.query_row("SELECT min(seq) FROM events", [], |r| r.get(0))?;
        Ok(seq.unwrap_or(0) as u64)
    })
}

/// Deletes up to `limit` of the oldest events older than `cutoff_ms`, always keeping the newest
/// one so sequences continue; returns how many went. Called in batches (see
/// [`crate::history`]): one statement over a day's events would hold the lock claims need.
pub fn compact(db: &Db, cutoff_ms: u64, limit: usize) -> Result<usize, DbError> {
    db.read(|conn| {
        Ok(conn
            .prepare_cached(
                "DELETE FROM events WHERE seq IN (
                     SELECT seq FROM events WHERE at_ms < ?1 AND seq < (SELECT max(seq) FROM events)
                     ORDER BY seq LIMIT ?2)",
            )?
            .execute(params![cutoff_ms as i64, limit as i64])?)
    })
}

/// Which event kinds a subscriber wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KindFilter {
    All,
    /// Only these (names from [`api::rack::RackEventBody::KINDS`]).
    Only(Vec<&'static str>),
}

impl KindFilter {
    fn admits(&self, event: &RackEvent) -> bool {
        match self {
            KindFilter::All => true,
            KindFilter::Only(kinds) => kinds.contains(&event.body.kind()),
        }
    }
}

fn sse_event(event: &RackEvent) -> Event {
    Event::default()
        .id(event.seq.to_string())
        .event("rack")
        .json_data(event)
        .unwrap_or_else(|_| Event::default())
}

/// The SSE stream of `kinds` for a subscriber that saw everything up to `after`. Ends on
/// `shutdown`. Events of other kinds are skipped, not sent: a subscriber that resumes after the
/// last one it got skips them again.
pub fn stream(
    db: std::sync::Arc<Db>,
    hub: &EventHub,
    after: u64,
    kinds: KindFilter,
    shutdown: CancellationToken,
) -> Sse<impl Stream<Item = Result<Event, Infallible>> + use<>> {
    // Subscribe before reading the log, so nothing committed in between is missed; duplicates
    // are dropped by sequence.
    let mut live = hub.subscribe();
    let stream = async_stream(move |tx| async move {
        let mut last = after;
        let oldest = oldest_seq(&db).unwrap_or(0);
        if after + 1 < oldest {
            let gap = Event::default().event("gap").data(format!("{{\"first_seq\":{oldest}}}"));
            if tx.send(gap).await.is_err() {
                return;
            }
        }
        loop {
            // Catch up from the log.
            loop {
                let batch = match read_after(&db, last, CATCH_UP_BATCH) {
                    Ok(batch) => batch,
                    Err(err) => {
                        tracing::error!(error = %err, "cannot read the event log");
                        return;
                    }
                };
                let done = batch.len() < CATCH_UP_BATCH as usize;
                for event in batch {
                    last = event.seq;
                    if kinds.admits(&event) && tx.send(sse_event(&event)).await.is_err() {
                        return;
                    }
                }
                if done {
                    break;
                }
            }
            // Follow live events until we fall behind.
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    received = live.recv() => match received {
                        Ok(event) if event.seq <= last => continue,
                        Ok(event) if event.seq == last + 1 => {
                            last = event.seq;
                            if kinds.admits(&event) && tx.send(sse_event(&event)).await.is_err() { return; }
                        }
                        // A hole (an event committed but published later) or lag: catch up.
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// A tiny generator: runs `f` with a channel sender and yields what it sends.
fn async_stream<F, Fut>(f: F) -> impl Stream<Item = Result<Event, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Event>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    tokio::spawn(f(tx));
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::rack::RackEventBody;

    fn db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let conn = service_kit::sqlite::open(&dir.path().join("c.db"), crate::db::MIGRATIONS).unwrap();
        (dir, Db::new(conn))
    }

    fn emit(db: &Db, at_ms: u64) {
        db.write::<_, DbError>(at_ms, |w| {
            w.emit(RackEventBody::Deployment { deployment: "d".into(), pool_size: 1, deleted: false })
        })
        .unwrap();
    }

    #[test]
    fn reading_resumes_after_a_sequence() {
        let (_dir, db) = db();
        for t in 0..5 {
            emit(&db, t);
        }
        let seqs: Vec<u64> = read_after(&db, 2, 100).unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![3, 4, 5]);
    }

    #[test]
    fn compaction_keeps_the_newest_event() {
        let (_dir, db) = db();
        for t in 0..5 {
            emit(&db, t);
        }
        assert_eq!(compact(&db, 1000, 3).unwrap(), 3, "one batch");
        assert_eq!(oldest_seq(&db).unwrap(), 4, "the oldest went first");
        assert_eq!(compact(&db, 1000, 3).unwrap(), 1);
        assert_eq!(oldest_seq(&db).unwrap(), 5);
        emit(&db, 2000);
        assert_eq!(read_after(&db, 5, 10).unwrap()[0].seq, 6);
    }
}
