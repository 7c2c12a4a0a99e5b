//! Retention: a session that finished (ended, expired, failed) stays readable, and its
//! idempotency key keeps answering with it, for the configured retention; then it is deleted,
//! so the database and every scan of it stay the size of the recent traffic, not of all
//! traffic ever. A retry with the key after that makes a new session.

use std::sync::Arc;
use std::time::Duration;

use service_kit::time::now_ms;

use crate::broker::Broker;
use crate::sessions::store;

/// Sessions deleted per transaction: claims wait for the database lock at most this long.
const BATCH: usize = 500;

/// Runs until shutdown: deletes what is past retention every tenth of the retention period
/// (at least every 250 ms, at most every minute).
pub async fn run(broker: Arc<Broker>) {
    let retention = broker.config.session_retention;
    let every = (retention / 10).clamp(Duration::from_millis(250), Duration::from_secs(60));
    let mut interval = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = broker.shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        let cutoff = now_ms().saturating_sub(retention.as_millis() as u64);
        let mut removed = 0;
        loop {
            let db = broker.db.clone();
            match tokio::task::spawn_blocking(move || store::prune_finished(&db, cutoff, BATCH)).await {
                Ok(Ok(n)) => {
                    removed += n;
                    broker.metrics.sessions_pruned.inc_by(n as u64);
                    if n < BATCH || broker.shutdown.is_cancelled() {
                        break;
                    }
                }
                Ok(Err(err)) => {
                    tracing::error!(error = %err, "session retention failed");
                    break;
                }
                Err(err) => {
                    tracing::error!(error = %err, "session retention panicked");
                    break;
                }
            }
        }
        if removed > 0 {
            tracing::info!(removed, "finished sessions past retention deleted");
        }
    }
}
