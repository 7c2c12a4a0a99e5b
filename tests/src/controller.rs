//! The array controller from the outside: a launcher for the real binary (restartable on the
//! same data directory and port), a typed client for its API, a server-sent-events reader, and
//! board daemons started in controller mode.

use std::collections::{BTreeMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use api::ErrorBody;
use api::rack::{
    BoardState, BoardView, ClaimView, DeploymentView, InstanceState, InstanceView, RackEvent, RenewResponse,
};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use session_broker::racks::sse::{SseDecoder, SseEvent};

use crate::board::{BoardConfig, BoardDaemon, TestBoard};
use crate::docker::SIM_IMAGE;
use crate::ports::free_port;
use crate::scratch::TestDir;
use crate::service::Service;
use crate::wait::wait_until;

pub use crate::board::ApiError;

/// Operator token every test controller is started with.
pub const OPERATOR_TOKEN: &str = "e2e-operator-token";
/// Broker token every test controller is started with.
pub const BROKER_TOKEN: &str = "e2e-broker-token";

/// A controller configuration with the `x86-sim` class (android-sim on this machine) and an
/// Android class for rk3588 boards (which needs binder from the kernel).
pub const CLASSES_TOML: &str = r#"
[[class]]
name = "rk3588-16g"
match = { arch = "aarch64", soc = "rk3588" }
reserve = { millicores = 1000, memory_mib = 1024 }

[[class]]
name = "x86-sim"
match = { arch = "x86_64" }
reserve = { millicores = 0, memory_mib = 512 }
android_kernel = false
"#;

/// A running `array-controller` with its data directory, port and flags, so it can be killed
/// and started again exactly as it was.
pub struct Controller {
    pub service: Service,
    pub client: ControllerClient,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
}

impl Controller {
    /// Writes the config into `dir`, starts the controller on a free port with data in
    /// `<dir>/controller`, heartbeats every 300 ms, the spread policy and `extra` flags, and
    /// waits until it answers.
    pub async fn start(dir: &Path, extra: &[&str]) -> Controller {
        let config = dir.join("controller.toml");
        std::fs::write(&config, CLASSES_TOML).expect("cannot write the controller config");
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let data_dir = dir.join("controller");
        let mut args: Vec<String> = [
            "--config",
            &config.display().to_string(),
            "--data-dir",
            &data_dir.display().to_string(),
            "--listen",
            &addr.to_string(),
            "--operator-token",
            OPERATOR_TOKEN,
            "--broker-token",
            BROKER_TOKEN,
            "--heartbeat-ms",
            "300",
            "--policy",
            "spread",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let service =
            Service::new("controller", "array-controller", "info,array_controller=debug", addr, args, dir);
        let mut controller = Controller { service, client: ControllerClient::new(addr), addr, data_dir };
        controller.restart().await;
        controller
    }

    /// Starts the controller again (same flags, data and port) and waits until it answers.
    pub async fn restart(&mut self) {
        self.service.restart().await;
    }

    /// SIGKILLs the controller.
    pub fn kill(&mut self) {
        self.service.kill();
    }

    /// The URL daemons are given.
    pub fn url(&self) -> String {
        self.service.url()
    }

    /// Everything the controller has logged (all its runs).
    pub fn log(&self) -> String {
        self.service.log()
    }
}

/// A typed client for the controller's API; requests use the operator token unless told.
#[derive(Clone)]
pub struct ControllerClient {
    base: String,
    http: reqwest::Client,
}

/// An answer: the status and the body as JSON (`Null` when empty or not JSON).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Answer {
    /// The error code of a refusal (`""` when there is none).
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }

    /// Asserts what any answer to [`GARBAGE_BODIES`] must be: no 5xx, and a refusal carries a
    /// code and a message (a route that takes no body may ignore one). `what` names the request.
    pub fn assert_no_5xx_and_coded(&self, what: &str) {
        assert!(self.status < 500, "{what}: {self:?}");
        if self.status >= 400 {
            let message = self.body["message"].as_str().unwrap_or("");
            assert!(!self.code().is_empty() && !message.is_empty(), "{what}: {self:?}");
        }
    }
}

/// Bodies that are not what any route expects: empty, truncated, not an object, an unknown
/// field, mistyped fields of the broker's and the controller's bodies.
pub const GARBAGE_BODIES: [&str; 8] = [
    "",
    "{",
    "[]",
    "null",
    "17",
    r#"{"zz": 1}"#,
    r#"{"id": 5, "warm": -1}"#,
    r#"{"key": 5, "pool_size": -1}"#,
];

impl ControllerClient {
    pub fn new(addr: SocketAddr) -> ControllerClient {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("cannot build an HTTP client");
        ControllerClient { base: format!("http://{addr}"), http }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Any request: `method path` with an optional JSON body and an optional bearer token.
    /// `Err` only when no answer came (connection refused, reset, timeout).
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<String>,
    ) -> Result<Answer, String> {
        let mut request = self.http.request(method.clone(), format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body);
        }
        let response = request.send().await.map_err(|e| format!("{method} {path}: {e}"))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.map_err(|e| format!("{method} {path}: reading the body: {e}"))?;
        Ok(Answer { status, body: serde_json::from_str(&text).unwrap_or(Value::Null), headers })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<T, ApiError> {
        let answer = self
            .request(method.clone(), path, Some(OPERATOR_TOKEN), body.map(|b| b.to_string()))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        if (200..300).contains(&answer.status) {
            return Ok(serde_json::from_value(answer.body.clone())
                .unwrap_or_else(|e| panic!("{method} {path}: {e} in {}", answer.body)));
        }
        let error: ErrorBody = serde_json::from_value(answer.body.clone()).unwrap_or_else(|e| {
            panic!(
                "{method} {path}: error answer {} is not a {{code, message}} body ({e}): {}",
                answer.status, answer.body
            )
        });
        Err(ApiError { status: answer.status, code: error.code, message: error.message })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> T {
        self.call(reqwest::Method::GET, path, None).await.unwrap_or_else(|e| panic!("GET {path}: {e:?}"))
    }

    /// `POST /v1/join-tokens`: a fresh join token secret.
    pub async fn join_token(&self) -> String {
        let token: api::rack::JoinToken = self
            .call(reqwest::Method::POST, "/v1/join-tokens", Some(json!({"ttl_s": 3600})))
            .await
            .expect("POST /v1/join-tokens");
        token.token.expect("a new join token shows its secret")
    }

    /// `GET /v1/boards`.
    pub async fn boards(&self) -> Vec<BoardView> {
        self.get("/v1/boards").await
    }

    /// `GET /v1/boards/{id}`.
    pub async fn board(&self, id: &str) -> BoardView {
        self.get(&format!("/v1/boards/{id}")).await
    }

    /// `PUT /v1/deployments/{id}`.
    pub async fn put_deployment(&self, id: &str, spec: &Value) -> Result<DeploymentView, ApiError> {
        self.call(reqwest::Method::PUT, &format!("/v1/deployments/{id}"), Some(spec.clone())).await
    }

    /// `GET /v1/deployments/{id}`.
    pub async fn deployment(&self, id: &str) -> DeploymentView {
        self.get(&format!("/v1/deployments/{id}")).await
    }

    /// `GET /v1/deployments`.
    pub async fn deployments(&self) -> Vec<DeploymentView> {
        self.get("/v1/deployments").await
    }

    /// `GET /v1/instances?deployment=`.
    pub async fn instances(&self, deployment: &str) -> Vec<InstanceView> {
        self.get(&format!("/v1/instances?deployment={deployment}")).await
    }

    /// `GET /v1/instances?deployment=`, or why not (for polling across a restart).
    pub async fn try_instances(&self, deployment: &str) -> Result<Vec<InstanceView>, String> {
        let path = format!("/v1/instances?deployment={deployment}");
        let answer = self.request(reqwest::Method::GET, &path, Some(OPERATOR_TOKEN), None).await?;
        if answer.status != 200 {
            return Err(format!("GET {path}: {} {}", answer.status, answer.body));
        }
        serde_json::from_value(answer.body).map_err(|e| e.to_string())
    }

    /// `POST /v1/claims` with the broker token. `Err(None)` when no answer came.
    pub async fn try_claim(
        &self,
        deployment: &str,
        key: &str,
        lease_ms: Option<u64>,
    ) -> Result<Result<ClaimView, ApiError>, String> {
        let mut body = json!({"deployment": deployment, "key": key});
        if let Some(lease) = lease_ms {
            body["lease_ms"] = json!(lease);
        }
        let answer = self
            .request(reqwest::Method::POST, "/v1/claims", Some(BROKER_TOKEN), Some(body.to_string()))
            .await?;
        Ok(if answer.status == 200 {
            Ok(serde_json::from_value(answer.body.clone())
                .unwrap_or_else(|e| panic!("claim answer: {e} in {}", answer.body)))
        } else {
            Err(ApiError {
                status: answer.status,
                code: answer.code().to_string(),
                message: answer.body["message"].as_str().unwrap_or("").to_string(),
            })
        })
    }

    /// `POST /v1/claims`; panics when no answer came.
    pub async fn claim(
        &self,
        deployment: &str,
        key: &str,
        lease_ms: Option<u64>,
    ) -> Result<ClaimView, ApiError> {
        self.try_claim(deployment, key, lease_ms).await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// `GET /v1/claims/{key}`.
    pub async fn get_claim(&self, key: &str) -> Result<ClaimView, ApiError> {
        self.call(reqwest::Method::GET, &format!("/v1/claims/{key}"), None).await
    }

    /// `DELETE /v1/claims/{key}`.
    pub async fn release(&self, key: &str) -> Result<ClaimView, ApiError> {
        self.call(reqwest::Method::DELETE, &format!("/v1/claims/{key}"), None).await
    }

    /// `POST /v1/claims/renew`.
    pub async fn renew(&self, keys: &[&str], lease_ms: u64) -> RenewResponse {
        self.call(
            reqwest::Method::POST,
            "/v1/claims/renew",
            Some(json!({"keys": keys, "lease_ms": lease_ms})),
        )
        .await
        .expect("POST /v1/claims/renew")
    }

    /// `POST /v1/boards/{id}/cordon` or `/uncordon`.
    pub async fn cordon(&self, board: &str, cordon: bool) -> BoardView {
        let verb = if cordon { "cordon" } else { "uncordon" };
        self.call(reqwest::Method::POST, &format!("/v1/boards/{board}/{verb}"), None)
            .await
            .unwrap_or_else(|e| panic!("{verb} {board}: {e:?}"))
    }

    /// Opens `GET /v1/events`, resuming after `last_event_id` when given.
    pub async fn events(&self, last_event_id: Option<u64>) -> EventStream {
        self.events_at("/v1/events", last_event_id).await
    }

    /// Opens `GET /v1/events?kinds=` (comma-separated kinds), resuming after `last_event_id`.
    pub async fn events_of_kinds(&self, kinds: &str, last_event_id: Option<u64>) -> EventStream {
        self.events_at(&format!("/v1/events?kinds={kinds}"), last_event_id).await
    }

    async fn events_at(&self, path: &str, last_event_id: Option<u64>) -> EventStream {
        let mut request = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(OPERATOR_TOKEN)
            .timeout(Duration::from_secs(3600));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        let response = request.send().await.expect("GET /v1/events");
        assert_eq!(response.status().as_u16(), 200, "GET /v1/events");
        let content_type =
            response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        assert!(content_type.starts_with("text/event-stream"), "GET /v1/events content-type {content_type}");
        EventStream { response, decoder: SseDecoder::default(), ready: VecDeque::new() }
    }

    /// Every event after `after` that the log holds now: reads the stream until it has been
    /// quiet for `quiet`.
    pub async fn events_until_quiet(&self, after: Option<u64>, quiet: Duration) -> Vec<RackEvent> {
        let mut stream = self.events(after).await;
        let mut events = Vec::new();
        while let Some(event) = stream.next_rack_event(quiet).await {
            events.push(event);
        }
        events
    }
}

/// A live `GET /v1/events` answer read event by event. Dropping it disconnects.
pub struct EventStream {
    response: reqwest::Response,
    decoder: SseDecoder,
    ready: VecDeque<SseEvent>,
}

impl EventStream {
    /// The next event (comments and keep-alives skipped), or `None` when none came within
    /// `timeout` or the stream ended.
    pub async fn next(&mut self, timeout: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some(event);
            }
            let chunk = match tokio::time::timeout_at(deadline, self.response.chunk()).await {
                Ok(Ok(Some(chunk))) => chunk,
                _ => return None,
            };
            self.ready.extend(self.decoder.feed(&chunk));
        }
    }

    /// The next `rack` event, parsed; its SSE id must be its sequence. Panics on a `gap`.
    pub async fn next_rack_event(&mut self, timeout: Duration) -> Option<RackEvent> {
        let event = self.next(timeout).await?;
        assert_eq!(event.name, "rack", "unexpected event {event:?}");
        let rack: RackEvent = serde_json::from_str(&event.data)
            .unwrap_or_else(|e| panic!("event data is not a RackEvent ({e}): {event:?}"));
        assert_eq!(event.id, Some(rack.seq.to_string()), "the SSE id is the sequence: {event:?}");
        Some(rack)
    }
}

/// A board daemon in controller mode: its [`TestBoard`] (id, data, ports, cleanup), the
/// running daemon and how to start it again.
pub struct RackBoard {
    // Fields drop in order: the daemon dies before its containers are removed.
    pub daemon: Option<BoardDaemon>,
    config: BoardConfig,
    pub board: TestBoard,
}

impl RackBoard {
    /// A board named `name` on CPU `cpu` that enrols with `controller_url` using `join_token`,
    /// heartbeating every 300 ms; `facts_override` is written to its directory and passed on.
    pub fn new(
        name: &str,
        cpu: u32,
        controller_url: &str,
        join_token: &str,
        facts_override: Option<&Value>,
    ) -> RackBoard {
        let mut board = TestBoard::new(name);
        board.cpus = Some(cpu.to_string());
        let mut config = board.config();
        config.extra_args = [
            "--controller-url",
            controller_url,
            "--join-token",
            join_token,
            "--advertise-address",
            "127.0.0.1",
            "--heartbeat-ms",
            "300",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(facts) = facts_override {
            let path = board.dir.join("facts.json");
            std::fs::write(&path, facts.to_string()).expect("cannot write the facts override");
            config.extra_args.extend(["--facts-override".to_string(), path.display().to_string()]);
        }
        RackBoard { daemon: None, config, board }
    }

    pub fn id(&self) -> &str {
        &self.board.id
    }

    /// Starts (or restarts) the daemon on the same data directory.
    pub async fn start(&mut self) {
        assert!(self.daemon.as_mut().is_none_or(|d| !d.process.is_running()), "{} still runs", self.board.id);
        self.daemon = Some(BoardDaemon::start(&self.config, self.board.dir.path()).await);
    }

    /// The running daemon.
    pub fn daemon(&self) -> &BoardDaemon {
        self.daemon.as_ref().expect("the daemon was started")
    }

    /// SIGKILLs the daemon.
    pub fn kill(&mut self) {
        if let Some(daemon) = self.daemon.as_mut() {
            daemon.process.kill();
        }
    }
}

/// A deployment of android-sim instances for x86 boards (and aarch64 ones, same image): 250
/// millicores and 128 MiB each, a 1 s boot, reset by recreating.
pub fn sim_deployment(pool_size: u32) -> Value {
    json!({
        "game": "e2e-game",
        "version": "1.0",
        "images": {"x86_64": SIM_IMAGE, "aarch64": SIM_IMAGE},
        "profile": {"millicores": 250, "memory_mib": 128, "pids_limit": 256},
        "pool_size": pool_size,
        "env": {"SIM_BOOT_SECONDS": "1"},
        "reset": "recreate",
        "boot_timeout_s": 60,
    })
}

/// Instances of a deployment counted by state name.
pub fn by_state(instances: &[InstanceView]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for instance in instances {
        *counts.entry(instance.state.as_str().to_string()).or_insert(0) += 1;
    }
    counts
}

/// A controller and its boards, all x86 android-sim boards enrolled with one join token.
/// Fields drop in order: the controller, then the daemons, then the containers and the logs.
pub struct Rack {
    pub controller: Controller,
    pub boards: Vec<RackBoard>,
    pub dir: TestDir,
}

impl Rack {
    /// Starts a controller (with `extra` flags) and `boards` daemons named `<name>-b<i>`, CPUs
    /// alternating between 0 and 1, and waits until every board is enrolled, ready and reachable.
    pub async fn start(name: &str, boards: usize, extra: &[&str]) -> Rack {
        Rack::start_with(name, boards, extra, &[0, 1]).await
    }

    /// [`Rack::start`] with chosen CPUs: board `i` runs on CPU `cpus[i % cpus.len()]`.
    pub async fn start_with(name: &str, boards: usize, extra: &[&str], cpus: &[u32]) -> Rack {
        assert!(!cpus.is_empty(), "boards need a CPU");
        let dir = TestDir::new(name);
        let controller = Controller::start(dir.path(), extra).await;
        let join = controller.client.join_token().await;
        let mut rack = Rack { controller, boards: Vec::new(), dir };
        for i in 0..boards {
            let url = rack.controller.url();
            let cpu = cpus[i % cpus.len()];
            let mut board = RackBoard::new(&format!("{name}-b{}", i + 1), cpu, &url, &join, None);
            board.start().await;
            rack.boards.push(board);
        }
        let ids = rack.board_ids();
        rack.wait_boards(&ids, |b| b.state == BoardState::Ready && b.reachable, "ready and reachable").await;
        rack
    }

    pub fn client(&self) -> &ControllerClient {
        &self.controller.client
    }

    pub fn board_ids(&self) -> Vec<String> {
        self.boards.iter().map(|b| b.id().to_string()).collect()
    }

    /// Waits until every board of `ids` is listed and satisfies `check`.
    pub async fn wait_boards(
        &self,
        ids: &[String],
        check: impl Fn(&BoardView) -> bool,
        what: &str,
    ) -> Vec<BoardView> {
        let client = self.client().clone();
        let check = &check;
        wait_until(Duration::from_secs(30), &format!("boards {ids:?} {what}"), || {
            let client = client.clone();
            async move {
                let answer =
                    client.request(reqwest::Method::GET, "/v1/boards", Some(OPERATOR_TOKEN), None).await?;
                let boards: Vec<BoardView> =
                    serde_json::from_value(answer.body).map_err(|e| e.to_string())?;
                let ok = ids.iter().all(|id| boards.iter().any(|b| &b.id == id && check(b)));
                let seen: Vec<_> = boards.iter().map(|b| (&b.id, b.state, b.reachable, &b.reason)).collect();
                if ok { Ok(boards.clone()) } else { Err(format!("{seen:?}")) }
            }
        })
        .await
    }

    /// Waits until deployment `deployment` has `n` instances and all of them are `ready`.
    pub async fn wait_ready(&self, deployment: &str, n: usize, timeout: Duration) -> Vec<InstanceView> {
        wait_instances(
            self.client(),
            deployment,
            timeout,
            &format!("{n} instances of {deployment} ready"),
            |list| list.len() == n && list.iter().all(|i| i.state == InstanceState::Ready),
        )
        .await
    }
}

/// Waits until the instances of `deployment` satisfy `check`; returns them.
pub async fn wait_instances(
    client: &ControllerClient,
    deployment: &str,
    timeout: Duration,
    what: &str,
    check: impl Fn(&[InstanceView]) -> bool,
) -> Vec<InstanceView> {
    let check = &check;
    wait_until(timeout, what, || async move {
        let list = client.try_instances(deployment).await?;
        if check(&list) {
            Ok(list)
        } else {
            let seen: Vec<_> = list.iter().map(|i| (&i.id, &i.board, i.state, &i.reason)).collect();
            Err(format!("{seen:?}"))
        }
    })
    .await
}
