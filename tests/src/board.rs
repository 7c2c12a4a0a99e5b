//! The board daemon from the outside: a typed client for its local API, a launcher for the real
//! binary, and a per-test board (id, data directory, host ports, container cleanup).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use api::{
    BoardFacts, BoardStatus, DesiredState, ErrorBody, InstancePorts, InstanceSpec, InstanceStatus,
    JournalEntry, Readiness,
};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::docker::{DockerCleanup, SIM_IMAGE};
use crate::ports::{PortBlock, free_port};
use crate::process::{Process, binary};
use crate::scratch::TestDir;
use crate::wait::wait_until;

/// A refused request: the HTTP status and the error body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

/// A typed client for one board daemon's local API.
#[derive(Clone)]
pub struct BoardClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl BoardClient {
    /// A client for the daemon at `addr` using the API token `token`.
    pub fn new(addr: SocketAddr, token: &str) -> BoardClient {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("cannot build an HTTP client");
        BoardClient { base: format!("http://{addr}"), token: token.to_string(), http }
    }

    /// The base URL (`http://host:port`).
    pub fn base_url(&self) -> &str {
        &self.base
    }

    async fn get<T: DeserializeOwned>(&self, path: &str, auth: bool) -> Result<T, String> {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if auth {
            request = request.bearer_auth(&self.token);
        }
        let response = request.send().await.map_err(|e| format!("GET {path}: {e}"))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| format!("GET {path}: reading the body: {e}"))?;
        if !status.is_success() {
            return Err(format!("GET {path}: {status}: {text}"));
        }
        serde_json::from_str(&text).map_err(|e| format!("GET {path}: {e} in {text}"))
    }

    /// `GET /healthz`.
    pub async fn healthz(&self) -> Result<(), String> {
        self.get::<Value>("/healthz", false).await.map(|_| ())
    }

    /// `GET /v1/status`, or why it failed.
    pub async fn try_status(&self) -> Result<BoardStatus, String> {
        self.get("/v1/status", false).await
    }

    /// `GET /v1/status`; panics when the daemon does not answer.
    pub async fn status(&self) -> BoardStatus {
        self.try_status().await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// `GET /v1/facts`, or why it failed.
    pub async fn try_facts(&self) -> Result<BoardFacts, String> {
        self.get("/v1/facts", false).await
    }

    /// `GET /v1/facts`.
    pub async fn facts(&self) -> BoardFacts {
        self.try_facts().await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// `GET /v1/desired`.
    pub async fn desired(&self) -> DesiredState {
        self.get("/v1/desired", false).await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// `GET /v1/journal?after=SEQ` (authenticated).
    pub async fn journal(&self, after: u64) -> Vec<JournalEntry> {
        self.get(&format!("/v1/journal?after={after}&limit=5000"), true)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// `GET /metrics` as text.
    pub async fn metrics(&self) -> String {
        let url = format!("{}/metrics", self.base);
        let response = self.http.get(url).send().await.expect("GET /metrics");
        assert!(response.status().is_success(), "GET /metrics: {}", response.status());
        response.text().await.expect("GET /metrics body")
    }

    /// `PUT /v1/desired` with the API token; the accepted answer or the refusal.
    pub async fn put_desired(&self, desired: &DesiredState) -> Result<Value, ApiError> {
        let body = serde_json::to_string(desired).expect("desired states serialize");
        self.put_desired_raw(&body, Some(&self.token)).await
    }

    /// `PUT /v1/desired` with any body and any (or no) bearer token.
    pub async fn put_desired_raw(&self, body: &str, token: Option<&str>) -> Result<Value, ApiError> {
        let mut request = self
            .http
            .put(format!("{}/v1/desired", self.base))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("PUT /v1/desired: no answer");
        let status = response.status().as_u16();
        let text = response.text().await.expect("PUT /v1/desired: body");
        if (200..300).contains(&status) {
            return Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)));
        }
        let body: ErrorBody = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!("error answer {status} is not a {{code, message}} body ({e}): {text}")
        });
        Err(ApiError { status, code: body.code, message: body.message })
    }
}

/// How to start one board daemon.
#[derive(Debug, Clone)]
pub struct BoardConfig {
    pub board_id: String,
    pub data_dir: PathBuf,
    pub api_token: String,
    /// `--host-ports`, as `START-END`.
    pub host_ports: String,
    /// `--cpus`; `None` leaves the daemon to detect them.
    pub cpus: Option<String>,
    /// `--resync-seconds`.
    pub resync_seconds: u64,
    /// Any further flags.
    pub extra_args: Vec<String>,
}

/// A running `board-daemon` process and a client for it.
pub struct BoardDaemon {
    pub process: Process,
    pub client: BoardClient,
    pub addr: SocketAddr,
}

impl BoardDaemon {
    /// Starts `board` (the binary next to the running executable) with `config`, logging to
    /// `<log_dir>/board-<id>.log`, and waits until its API answers and it has reached Docker.
    pub async fn start(config: &BoardConfig, log_dir: &Path) -> BoardDaemon {
        Self::start_binary(&binary("board-daemon"), config, log_dir).await
    }

    /// [`BoardDaemon::start`] with a chosen binary (the benchmark uses the release build).
    pub async fn start_binary(program: &Path, config: &BoardConfig, log_dir: &Path) -> BoardDaemon {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let mut args = vec![
            "--board-id".to_string(),
            config.board_id.clone(),
            "--data-dir".into(),
            config.data_dir.display().to_string(),
            "--listen".into(),
            addr.to_string(),
            "--api-token".into(),
            config.api_token.clone(),
            "--host-ports".into(),
            config.host_ports.clone(),
            "--resync-seconds".into(),
            config.resync_seconds.to_string(),
        ];
        if let Some(cpus) = &config.cpus {
            args.extend(["--cpus".to_string(), cpus.clone()]);
        }
        args.extend(config.extra_args.iter().cloned());
        let name = format!("board-{}", config.board_id);
        let mut process = Process::spawn(&name, program, &args, &[("RUST_LOG", "info")], log_dir);
        let client = BoardClient::new(addr, &config.api_token);
        let what = format!("{name} to answer and reach Docker");
        wait_until(Duration::from_secs(20), &what, || {
            let running = process.is_running();
            let client = client.clone();
            async move {
                assert!(running, "the daemon exited during start-up");
                let facts = client.try_facts().await?;
                if facts.docker.reachable {
                    Ok(())
                } else {
                    Err("facts say Docker is not reachable yet".to_string())
                }
            }
        })
        .await;
        BoardDaemon { process, client, addr }
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }
}

/// One board of a test: a unique id, a temporary directory (data and logs), an exclusive block of
/// host ports, and cleanup of the board's containers when dropped. Declare it before the
/// daemons it starts, so they are killed before its containers are removed.
pub struct TestBoard {
    pub id: String,
    pub token: String,
    pub dir: TestDir,
    pub ports: PortBlock,
    pub cpus: Option<String>,
    pub cleanup: DockerCleanup,
}

impl TestBoard {
    /// A board named `e2e-<name>-<pid>` with a block of 50 host ports.
    pub fn new(name: &str) -> TestBoard {
        let id = format!("e2e-{name}-{}", std::process::id());
        assert!(api::ids::is_valid_id(&id), "board id {id:?} is not valid");
        let cleanup = DockerCleanup::board(&id);
        cleanup.clean(); // leftovers of an earlier run that had the same pid
        TestBoard {
            token: format!("test-token-{id}"),
            dir: TestDir::new(name),
            ports: PortBlock::take(),
            cpus: None,
            cleanup,
            id,
        }
    }

    /// The daemon configuration for this board (data in `<dir>/data`, resync every 2 s).
    pub fn config(&self) -> BoardConfig {
        BoardConfig {
            board_id: self.id.clone(),
            data_dir: self.dir.join("data"),
            api_token: self.token.clone(),
            host_ports: self.ports.range(),
            cpus: self.cpus.clone(),
            resync_seconds: 2,
            extra_args: vec![],
        }
    }

    /// Starts a daemon for this board (the same data directory every time).
    pub async fn start_daemon(&self) -> BoardDaemon {
        BoardDaemon::start(&self.config(), self.dir.path()).await
    }

    /// An android-sim instance spec with two fresh host ports of the board, 128 MiB, 128 pids,
    /// all the board's CPUs, a 1 s boot delay and no stream token (the stream accepts any).
    pub fn sim_spec(&mut self, id: &str) -> InstanceSpec {
        let ports = InstancePorts { adb: self.ports.next_port(), stream: self.ports.next_port() };
        InstanceSpec {
            id: id.to_string(),
            image: SIM_IMAGE.to_string(),
            generation: 1,
            cpus: vec![],
            memory_mib: 128,
            pids_limit: 128,
            devices: vec![],
            ports,
            env: BTreeMap::from([("SIM_BOOT_SECONDS".to_string(), "1".to_string())]),
            args: vec![],
            privileged: false,
            boot_timeout_s: 60,
            readiness: Readiness::default(),
            reset_epoch: 0,
            stream_token: None,
        }
    }
}

/// The status of instance `id`, if listed.
pub fn instance<'s>(status: &'s BoardStatus, id: &str) -> Option<&'s InstanceStatus> {
    status.instances.iter().find(|i| i.id == id)
}
