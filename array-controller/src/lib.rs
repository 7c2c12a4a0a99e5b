//! The array controller: one per rack. It enrols boards, keeps an inventory of heterogeneous
//! boards, packs Android instances onto them, keeps each deployment's pool warm, hands out
//! claims one session at a time, and keeps a resumable event log of every change.
//!
//! `main.rs` only parses flags; [`run`] is the whole controller.

pub mod broker_link;
pub mod claims;
pub mod config;
pub mod credentials;
pub mod db;
pub mod deployments;
pub mod desired;
pub mod enrolment;
pub mod error;
pub mod events;
pub mod history;
pub mod http;
pub mod inventory;
pub mod lifecycle;
pub mod metrics;
pub mod packing;
pub mod placement;
pub mod pools;
pub mod preflight;
pub mod rack;
pub mod rows;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use service_kit::checkpoint::{Cadence, Checkpointer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::rack::Rack;

const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(5);
/// How often leases are checked.
const LEASE_SWEEP: Duration = Duration::from_millis(250);
/// How often reachability and gauges are refreshed (and pools re-checked).
const SLOW_SWEEP: Duration = Duration::from_secs(1);
/// How often packing utilisation is recomputed (a grouped sum over every instance).
const UTILISATION: Duration = Duration::from_secs(10);
/// How often the event log is compacted.
const COMPACTION: Duration = Duration::from_secs(60);

/// Why the controller could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] service_kit::sqlite::StoreOpenError),
    #[error("cannot read or write token file {path}: {source}")]
    Token { path: String, source: std::io::Error },
    #[error(transparent)]
    Rack(#[from] error::RackError),
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
}

/// Runs the controller on an already-bound listener until `shutdown` completes.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ControllerError> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|source| ControllerError::DataDir { path: config.data_dir.display().to_string(), source })?;
    let db_path = config.data_dir.join("controller.db");
    let conn = service_kit::sqlite::open(&db_path, db::MIGRATIONS)?;
    // Lives as long as the controller runs.
    let _checkpointer = Checkpointer::start(&db_path, &conn, Cadence::SERVICE)?;
    let operator_token = token(&config.data_dir, "operator-token", config.operator_token.as_deref(), "op")?;
    let broker_token = token(&config.data_dir, "broker-token", config.broker_token.as_deref(), "broker")?;
    let mut registry = Registry::default();
    let metrics = metrics::Metrics::register(&mut registry);
    let cancel = CancellationToken::new();
    let rack =
        Arc::new(Rack::new(config, db::Db::new(conn), metrics, operator_token, broker_token, cancel.clone()));
    rack.grant_heartbeat_grace()?;

    let mut loops = vec![
        tokio::spawn(lease_loop(rack.clone())),
        tokio::spawn(sweep_loop(rack.clone())),
        tokio::spawn(pool_loop(rack.clone())),
    ];
    if let Some(link) = rack.config.broker.clone() {
        loops.push(tokio::spawn(broker_link::run(rack.clone(), link)));
    }
    let state = http::AppState { rack: rack.clone(), registry: Arc::new(registry) };
    tracing::info!(rack = %rack.config.rack_id, addr = %listener.local_addr().map_err(ControllerError::Serve)?, "array controller listening");
    let stop = cancel.clone();
    let served = axum::serve(service_kit::listener::no_delay(listener), http::router(state))
        .with_graceful_shutdown(async move {
            tokio::select! {
                _ = shutdown => {}
                _ = stop.cancelled() => {}
            }
            // End SSE streams and long-polls so the server can drain.
            stop.cancel();
        })
        .await;
    cancel.cancel();
    for handle in loops {
        if tokio::time::timeout(SHUTDOWN_DEADLINE, handle).await.is_err() {
            tracing::warn!("a background loop did not stop within the shutdown deadline");
        }
    }
    served.map_err(ControllerError::Serve)
}

async fn lease_loop(rack: Arc<Rack>) {
    let mut tick = tokio::time::interval(LEASE_SWEEP);
    loop {
        tokio::select! {
            _ = rack.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        // A write like a claim's: off the async workers.
        let sweep = Arc::clone(&rack);
        match tokio::task::spawn_blocking(move || sweep.sweep_leases()).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => tracing::error!(error = %err, "lease sweep failed"),
            Err(err) => tracing::error!(error = %err, "lease sweep panicked"),
        }
    }
}

async fn sweep_loop(rack: Arc<Rack>) {
    let mut tick = tokio::time::interval(SLOW_SWEEP);
    let mut last_compaction = tokio::time::Instant::now();
    let mut last_utilisation = tokio::time::Instant::now() - UTILISATION;
    loop {
        tokio::select! {
            _ = rack.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let utilisation = last_utilisation.elapsed() >= UTILISATION;
        if utilisation {
            last_utilisation = tokio::time::Instant::now();
        }
        let compaction = last_compaction.elapsed() >= COMPACTION;
        if compaction {
            last_compaction = tokio::time::Instant::now();
        }
        // The sweeps wait for the database lock and scan tables: off the async workers, which
        // keep serving meanwhile.
        let sweep = Arc::clone(&rack);
        if let Err(err) =
            tokio::task::spawn_blocking(move || slow_sweep(&sweep, utilisation, compaction)).await
        {
            tracing::error!(error = %err, "sweep panicked");
        }
    }
}

fn slow_sweep(rack: &Rack, utilisation: bool, compaction: bool) {
    if let Err(err) = rack.sweep_reachability() {
        tracing::error!(error = %err, "reachability sweep failed");
    }
    if let Err(err) = rack.refresh_gauges() {
        tracing::error!(error = %err, "gauge refresh failed");
    }
    if utilisation && let Err(err) = rack.refresh_utilisation() {
        tracing::error!(error = %err, "utilisation refresh failed");
    }
    if compaction {
        history::prune(rack, service_kit::time::now_ms());
    }
}

/// Reconciles pools whenever something changed, and at least every slow sweep.
async fn pool_loop(rack: Arc<Rack>) {
    // The first pass, and every pass after a change, retries unmet pools at once.
    let mut changed = true;
    loop {
        // Packing an unmet demand can take a second of CPU: off the async workers.
        let pass = Arc::clone(&rack);
        match tokio::task::spawn_blocking(move || pass.reconcile_pools(changed)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::error!(error = %err, "pool reconcile failed"),
            Err(err) => tracing::error!(error = %err, "pool reconcile panicked"),
        }
        tokio::select! {
            _ = rack.shutdown.cancelled() => return,
            _ = rack.pools_changed.notified() => changed = true,
            _ = tokio::time::sleep(SLOW_SWEEP) => changed = false,
        }
    }
}

/// The configured token, or one kept in `<data-dir>/<file>` (generated on first start).
fn token(
    data_dir: &Path,
    file: &str,
    configured: Option<&str>,
    prefix: &str,
) -> Result<String, ControllerError> {
    let path = data_dir.join(file);
    service_kit::files::configured_or_stored_token(configured, &path, prefix)
        .map_err(|source| ControllerError::Token { path: path.display().to_string(), source })
}
