//! The board daemon: one per ARM board. It detects the board's facts, runs the board's Android
//! instances as Docker containers with real limits, checks their readiness over ADB, and keeps
//! its desired state in SQLite so it runs on alone when cut off.
//!
//! `main.rs` only parses flags; [`run`] is the whole daemon, so tests and launchers start the
//! same code.

pub mod adb;
pub mod agent;
pub mod config;
pub mod desired_source;
pub mod docker;
pub mod facts;
pub mod http;
pub mod metrics;
pub mod readiness;
pub mod reconcile;
pub mod store;
pub mod sync;

use std::future::Future;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use api::{BoardStatus, DockerFacts};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::agent::{Agent, AgentParts};
use crate::config::Config;
use crate::desired_source::DesiredSource;
use crate::docker::DockerRuntime;
use crate::metrics::Metrics;
use crate::store::Store;

/// How long shutdown waits for the loops to stop.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(5);

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Facts(#[from] facts::FactsError),
    #[error("cannot read or write the API token file {path}: {source}")]
    Token { path: String, source: std::io::Error },
    #[error("adb host {0:?} is not an IP address")]
    AdbHost(String),
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
}

/// Runs the daemon on an already-bound listener until `shutdown` completes. Containers are left
/// running when it returns.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DaemonError> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|source| DaemonError::DataDir { path: config.data_dir.display().to_string(), source })?;
    let adb_host: IpAddr =
        config.adb_host.parse().map_err(|_| DaemonError::AdbHost(config.adb_host.clone()))?;
    let store = Arc::new(Store::open(&config.data_dir.join("board.db"))?);
    let api_token = api_token(&config)?;

    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    let registry = Arc::new(registry);

    let unreachable =
        DockerFacts { reachable: false, version: None, api_version: None, cgroup_version: None };
    let facts = Arc::new(RwLock::new(facts::detect(&config, unreachable, None)?));
    let initial = store.load_desired()?.unwrap_or_default();
    tracing::info!(board = %config.board_id, generation = initial.generation, "starting from the stored desired state");
    let (desired_tx, desired_rx) = watch::channel(initial.clone());
    let managed = config.controller_url.is_some();
    let desired = Arc::new(DesiredSource::new(store.clone(), desired_tx, managed));
    let (status_tx, status_rx) = watch::channel(BoardStatus {
        board_id: config.board_id.clone(),
        desired_generation: initial.generation,
        docker_reachable: false,
        instances: vec![],
        anomalies: vec![],
    });
    let docker_cell: Arc<OnceLock<DockerRuntime>> = Arc::new(OnceLock::new());
    let cancel = CancellationToken::new();

    let supervisor = tokio::spawn(supervise(SupervisorParts {
        config: config.clone(),
        store: store.clone(),
        metrics,
        facts: facts.clone(),
        desired: desired_rx,
        desired_source: desired.clone(),
        status: status_tx,
        docker_cell: docker_cell.clone(),
        adb_host,
        cancel: cancel.clone(),
    }));

    let state = http::HttpState {
        api_token: api_token.into(),
        status: status_rx,
        facts,
        desired,
        docker: docker_cell,
        registry,
        store,
    };
    tracing::info!(addr = %listener.local_addr().map_err(DaemonError::Serve)?, "board daemon API listening");
    let stop = cancel.clone();
    let served = axum::serve(listener, http::router(state))
        .with_graceful_shutdown(async move {
            tokio::select! {
                _ = shutdown => {}
                _ = stop.cancelled() => {}
            }
        })
        .await;
    cancel.cancel();
    if tokio::time::timeout(SHUTDOWN_DEADLINE, supervisor).await.is_err() {
        tracing::warn!("reconcile loop did not stop within the shutdown deadline");
    }
    served.map_err(DaemonError::Serve)
}

struct SupervisorParts {
    config: Config,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    facts: Arc<RwLock<api::BoardFacts>>,
    desired: watch::Receiver<api::DesiredState>,
    desired_source: Arc<DesiredSource>,
    status: watch::Sender<BoardStatus>,
    docker_cell: Arc<OnceLock<DockerRuntime>>,
    adb_host: IpAddr,
    cancel: CancellationToken,
}

/// Connects to Docker (retrying), completes the facts, then runs the event watcher and the
/// reconcile loop until cancelled.
async fn supervise(p: SupervisorParts) {
    let connect =
        DockerRuntime::connect_with_retry(&p.config.docker_socket, &p.config.board_id, p.metrics.clone());
    let docker = tokio::select! {
        docker = connect => docker,
        _ = p.cancel.cancelled() => return,
    };
    let _ = p.docker_cell.set(docker.clone());
    let (docker_facts, docker_root) = docker.facts().await;
    match facts::detect(&p.config, docker_facts, docker_root.as_deref()) {
        Ok(detected) => *p.facts.write().unwrap_or_else(|e| e.into_inner()) = detected,
        Err(err) => tracing::error!(error = %err, "cannot refresh facts"),
    }
    let board_cpus = p.facts.read().unwrap_or_else(|e| e.into_inner()).cpu.cpus.clone();
    let wake = Arc::new(Notify::new());
    let events = tokio::spawn(agent::watch_events(docker.clone(), wake.clone(), p.cancel.clone()));
    let sync = p.config.controller_url.clone().map(|url| {
        let advertise_address = p.config.advertise_address.clone().unwrap_or_else(|| {
            let facts = p.facts.read().unwrap_or_else(|e| e.into_inner());
            facts.addresses.iter().find(|a| !a.contains(':')).cloned().unwrap_or_else(|| "127.0.0.1".into())
        });
        let parts = sync::SyncParts {
            link: sync::ControllerLink {
                url,
                join_token: p.config.join_token.clone(),
                advertise_address,
                credential_path: p.config.data_dir.join("controller-credential"),
            },
            board_id: p.config.board_id.clone(),
            store: p.store.clone(),
            desired: p.desired_source.clone(),
            facts: p.facts.clone(),
            status: p.status.subscribe(),
            docker: docker.clone(),
            cancel: p.cancel.clone(),
        };
        tokio::spawn(sync::run(parts, Duration::from_millis(p.config.heartbeat_ms)))
    });
    let agent = Agent::new(AgentParts {
        board_id: p.config.board_id.clone(),
        docker,
        store: p.store,
        metrics: p.metrics,
        desired: p.desired,
        status: p.status,
        board_cpus,
        adb_host: p.adb_host,
        resync: Duration::from_secs(p.config.resync_seconds),
        wake,
    });
    agent.run(p.cancel.clone()).await;
    let _ = events.await;
    if let Some(sync) = sync {
        let _ = sync.await;
    }
}

/// The configured API token, or the one kept in `<data-dir>/api-token` (created on first start,
/// readable only by the owner).
fn api_token(config: &Config) -> Result<String, DaemonError> {
    let path = token_path(&config.data_dir);
    service_kit::files::configured_or_stored_token(config.api_token.as_deref(), &path, "board")
        .map_err(|source| DaemonError::Token { path: path.display().to_string(), source })
}

/// Where the generated API token is kept.
pub fn token_path(data_dir: &Path) -> PathBuf {
    data_dir.join("api-token")
}
