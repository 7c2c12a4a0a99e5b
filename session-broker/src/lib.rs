//! The session broker: the game platform's session API in front of many racks. It places each
//! player with the two-stage fusion scheduler ([`scheduler`]: region, then rack and instance),
//! claims an instance from the chosen rack's controller, keeps the session's lease, queues what
//! cannot be placed yet, and spreads warm targets over racks as pool sizes.
//!
//! `main.rs` only parses flags; [`run`] is the whole broker.

pub mod broker;
pub mod catalog;
pub mod config;
pub mod db;
pub mod demand;
pub mod error;
pub mod http;
pub mod metrics;
pub mod pools;
pub mod racks;
pub mod ratelimit;
pub mod scheduler;
pub mod sessions;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use service_kit::checkpoint::{Cadence, Checkpointer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::broker::Broker;
use crate::config::Config;

const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(5);

/// Why the broker could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] service_kit::sqlite::StoreOpenError),
    #[error("cannot read or write token file {path}: {source}")]
    Token { path: String, source: std::io::Error },
    #[error(transparent)]
    Broker(#[from] error::BrokerError),
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
}

/// Runs the broker on an already-bound listener until `shutdown` completes.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|source| RunError::DataDir { path: config.data_dir.display().to_string(), source })?;
    let db_path = config.data_dir.join("session-broker.db");
    let conn = service_kit::sqlite::open(&db_path, db::MIGRATIONS)?;
    // Lives as long as the broker runs.
    let _checkpointer = Checkpointer::start(&db_path, &conn, Cadence::SERVICE)?;
    let db = Arc::new(db::Db::new(conn));
    let token_path = config.data_dir.join("operator-token");
    let operator_token =
        service_kit::files::configured_or_stored_token(config.operator_token.as_deref(), &token_path, "op")
            .map_err(|source| RunError::Token { path: token_path.display().to_string(), source })?;
    let catalog = catalog::Catalog::load(db.clone())?;
    let mut registry = Registry::default();
    let metrics = metrics::Metrics::register(&mut registry);
    let cancel = CancellationToken::new();
    let broker = Arc::new(Broker::new(config, db, catalog, metrics, operator_token, cancel.clone()));
    racks::load(&broker)?;

    // Sessions caught mid-placement by a crash are settled before new work starts.
    sessions::recover(&broker).await?;
    let loops = [
        tokio::spawn(sessions::run_queue(broker.clone())),
        tokio::spawn(sessions::leases::run(broker.clone())),
        tokio::spawn(sessions::retention::run(broker.clone())),
        tokio::spawn(pools::run(broker.clone())),
    ];
    let state = http::AppState { broker: broker.clone(), registry: Arc::new(registry) };
    tracing::info!(addr = %listener.local_addr().map_err(RunError::Serve)?, "session broker listening");
    let stop = cancel.clone();
    let served = axum::serve(service_kit::listener::no_delay(listener), http::router(state))
        .with_graceful_shutdown(async move {
            tokio::select! {
                _ = shutdown => {}
                _ = stop.cancelled() => {}
            }
            stop.cancel();
        })
        .await;
    cancel.cancel();
    for handle in loops {
        if tokio::time::timeout(SHUTDOWN_DEADLINE, handle).await.is_err() {
            tracing::warn!("a background loop did not stop within the shutdown deadline");
        }
    }
    served.map_err(RunError::Serve)
}
