//! The session broker from the outside: a launcher for the real binary (restartable on the same
//! data directory and port), a typed client for every route of its API, racks (a controller and
//! its board daemons) registered with it, and a two-region [`Setup`] for the end-to-end tests.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use api::ErrorBody;
use api::broker::{
    ApiKeyView, GameSpec, GameVersionSpec, GameView, PlayerInfo, RackCredential, RackHealth,
    RackRegistration, RackView, RegionSpec, RegionView, RegistrationAck, SessionExplain, SessionRequest,
    SessionState, SessionView, TenantSpec, TenantView, WarmTargetView,
};
use api::rack::{ClaimState, ClaimView, DeploymentView, InstanceState, InstanceView, RackEventBody};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::board::ApiError;
use crate::controller::{ControllerClient, Rack, wait_instances};
use crate::docker::SIM_IMAGE;
use crate::ports::free_port;
use crate::scratch::TestDir;
use crate::service::Service;
use crate::wait::wait_until;

pub use crate::controller::Answer;

/// Operator token every test broker is started with.
pub const OPERATOR_TOKEN: &str = "e2e-broker-operator";
/// Session lease every test broker is started with (`--session-lease-ms`).
pub const SESSION_LEASE_MS: u64 = 4000;
/// Registration period the test broker tells controllers (`--rack-heartbeat-ms`).
pub const RACK_HEARTBEAT_MS: u64 = 300;
/// A rack silent this long is unreachable (`--rack-unreachable-after-ms`).
pub const RACK_UNREACHABLE_AFTER_MS: u64 = 2000;
/// The game of the [`Setup`].
pub const GAME: &str = "e2e-game";
/// Its version.
pub const VERSION: &str = "1.0";
/// The tenant of the [`Setup`].
pub const TENANT: &str = "tenant-a";
/// How long an instance may take to come (back) up.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `session-broker` with its data directory, port and flags, so it can be killed and
/// started again exactly as it was.
pub struct Broker {
    pub service: Service,
    pub client: BrokerClient,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    /// A prefix unique in this test process, for the ids of the boards of its racks.
    pub label: String,
}

static BROKERS: AtomicU32 = AtomicU32::new(0);

impl Broker {
    /// Starts the broker on a free port with data in `<dir>/broker`, the test operator token, a
    /// 4 s session lease, 300 ms rack heartbeats, racks unreachable after 2 s, and `extra` flags;
    /// waits until it answers.
    pub async fn start(dir: &Path, extra: &[&str]) -> Broker {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let data_dir = dir.join("broker");
        let mut args: Vec<String> = [
            "--listen",
            &addr.to_string(),
            "--data-dir",
            &data_dir.display().to_string(),
            "--operator-token",
            OPERATOR_TOKEN,
            "--session-lease-ms",
            &SESSION_LEASE_MS.to_string(),
            "--rack-heartbeat-ms",
            &RACK_HEARTBEAT_MS.to_string(),
            "--rack-unreachable-after-ms",
            &RACK_UNREACHABLE_AFTER_MS.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let service = Service::new("broker", "session-broker", "info,session_broker=debug", addr, args, dir);
        let mut broker = Broker {
            service,
            client: BrokerClient::new(addr),
            addr,
            data_dir,
            label: format!("bk{}", BROKERS.fetch_add(1, Ordering::Relaxed)),
        };
        broker.restart().await;
        broker
    }

    /// Starts the broker again (same flags, data and port) and waits until it answers.
    pub async fn restart(&mut self) {
        self.service.restart().await;
    }

    /// SIGKILLs the broker.
    pub fn kill(&mut self) {
        self.service.kill();
    }

    /// The URL controllers are given.
    pub fn url(&self) -> String {
        self.service.url()
    }

    /// Everything the broker has logged (all its runs).
    pub fn log(&self) -> String {
        self.service.log()
    }
}

/// A typed client for the broker's API. Operator helpers use [`OPERATOR_TOKEN`]; session helpers
/// take a tenant API key.
#[derive(Clone)]
pub struct BrokerClient {
    base: String,
    http: reqwest::Client,
}

/// A created session: the status of the answer (201, 202 or 200) and the session.
#[derive(Debug, Clone)]
pub struct Created {
    pub status: u16,
    pub session: SessionView,
}

impl BrokerClient {
    pub fn new(addr: SocketAddr) -> BrokerClient {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("cannot build an HTTP client");
        BrokerClient { base: format!("http://{addr}"), http }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Any request: `method path` with an optional bearer token, extra headers and a body (sent
    /// as `application/json` unless `headers` name a content type). `Err` only when no answer
    /// came (connection refused, reset, timeout).
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> Result<Answer, String> {
        self.request_within(method, path, token, headers, body, None).await
    }

    /// [`request`](Self::request) with a time limit other than the client's 10 s.
    pub async fn request_within(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<String>,
        timeout: Option<Duration>,
    ) -> Result<Answer, String> {
        let mut request = self.http.request(method.clone(), format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            if !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("content-type")) {
                request = request.header("content-type", "application/json");
            }
            request = request.body(body);
        }
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        let response = request.send().await.map_err(|e| format!("{method} {path}: {e}"))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.map_err(|e| format!("{method} {path}: reading the body: {e}"))?;
        Ok(Answer { status, body: serde_json::from_str(&text).unwrap_or(Value::Null), headers })
    }

    /// A request whose 2xx answer parses as `T`; a refusal must be a `{code, message}` body.
    /// Panics when no answer came.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Value>,
        timeout: Option<Duration>,
    ) -> Result<(u16, T), ApiError> {
        let answer = self
            .request_within(method.clone(), path, token, headers, body.map(|b| b.to_string()), timeout)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        typed(&method, path, answer)
    }

    async fn operator<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<T, ApiError> {
        self.call(method, path, Some(OPERATOR_TOKEN), &[], body, None).await.map(|(_, t)| t)
    }

    async fn get_operator<T: DeserializeOwned>(&self, path: &str) -> T {
        self.operator(Method::GET, path, None).await.unwrap_or_else(|e| panic!("GET {path}: {e:?}"))
    }

    // --- public -----------------------------------------------------------------------------

    /// `GET /openapi.json`.
    pub async fn openapi(&self) -> Value {
        let answer =
            self.request(Method::GET, "/openapi.json", None, &[], None).await.expect("GET /openapi.json");
        assert_eq!(answer.status, 200, "GET /openapi.json: {answer:?}");
        answer.body
    }

    /// `GET /metrics` as text.
    pub async fn metrics(&self) -> String {
        let response = self.http.get(format!("{}/metrics", self.base)).send().await.expect("GET /metrics");
        assert!(response.status().is_success(), "GET /metrics: {}", response.status());
        response.text().await.expect("GET /metrics body")
    }

    // --- operator: catalog ------------------------------------------------------------------

    /// `PUT /v1/regions/{id}`.
    pub async fn put_region(&self, id: &str, spec: &RegionSpec) -> Result<RegionView, ApiError> {
        self.operator(Method::PUT, &format!("/v1/regions/{id}"), Some(to_value(spec))).await
    }

    /// `GET /v1/regions`.
    pub async fn regions(&self) -> Vec<RegionView> {
        self.get_operator("/v1/regions").await
    }

    /// `PUT /v1/games/{id}`.
    pub async fn put_game(&self, id: &str, spec: &GameSpec) -> Result<GameView, ApiError> {
        self.operator(Method::PUT, &format!("/v1/games/{id}"), Some(to_value(spec))).await
    }

    /// `GET /v1/games`.
    pub async fn games(&self) -> Vec<GameView> {
        self.get_operator("/v1/games").await
    }

    /// `GET /v1/games/{id}`.
    pub async fn game(&self, id: &str) -> Result<GameView, ApiError> {
        self.operator(Method::GET, &format!("/v1/games/{id}"), None).await
    }

    /// `PUT /v1/games/{id}/versions/{version}`: the answer `{game, version, spec}`.
    pub async fn put_version(
        &self,
        game: &str,
        version: &str,
        spec: &GameVersionSpec,
    ) -> Result<Value, ApiError> {
        self.operator(Method::PUT, &format!("/v1/games/{game}/versions/{version}"), Some(to_value(spec)))
            .await
    }

    /// `PUT /v1/games/{id}/warm-targets/{region}`.
    pub async fn put_warm_target(
        &self,
        game: &str,
        region: &str,
        warm: u32,
    ) -> Result<WarmTargetView, ApiError> {
        let path = format!("/v1/games/{game}/warm-targets/{region}");
        self.operator(Method::PUT, &path, Some(json!({"warm": warm}))).await
    }

    /// `PUT /v1/games/{id}/warm-targets/{region}` with a whole spec (a target following demand).
    pub async fn put_warm_target_spec(
        &self,
        game: &str,
        region: &str,
        spec: &api::broker::WarmTargetSpec,
    ) -> Result<WarmTargetView, ApiError> {
        let path = format!("/v1/games/{game}/warm-targets/{region}");
        self.operator(Method::PUT, &path, Some(to_value(spec))).await
    }

    /// `POST /v1/tenants`.
    pub async fn create_tenant(&self, spec: &TenantSpec) -> Result<TenantView, ApiError> {
        self.operator(Method::POST, "/v1/tenants", Some(to_value(spec))).await
    }

    /// `GET /v1/tenants`.
    pub async fn tenants(&self) -> Vec<TenantView> {
        self.get_operator("/v1/tenants").await
    }

    /// `POST /v1/tenants/{id}/keys`: a new key (its secret shown once).
    pub async fn create_key(&self, tenant: &str) -> Result<ApiKeyView, ApiError> {
        self.operator(Method::POST, &format!("/v1/tenants/{tenant}/keys"), None).await
    }

    /// `DELETE /v1/tenants/{id}/keys/{key_id}`.
    pub async fn revoke_key(&self, tenant: &str, key_id: &str) -> Result<ApiKeyView, ApiError> {
        self.operator(Method::DELETE, &format!("/v1/tenants/{tenant}/keys/{key_id}"), None).await
    }

    /// A tenant with one key: the key's secret.
    pub async fn tenant_with_key(&self, id: &str) -> String {
        let spec = TenantSpec { id: id.to_string(), name: format!("tenant {id}"), rate_per_s: None };
        let tenant =
            self.create_tenant(&spec).await.unwrap_or_else(|e| panic!("POST /v1/tenants {id}: {e:?}"));
        assert_eq!(tenant.id, id);
        let key = self.create_key(id).await.unwrap_or_else(|e| panic!("POST /v1/tenants/{id}/keys: {e:?}"));
        assert_eq!(key.tenant, id);
        key.key.expect("a new key shows its secret once")
    }

    // --- operator: racks --------------------------------------------------------------------

    /// `POST /v1/racks/{id}/credential`.
    pub async fn rack_credential(&self, rack: &str) -> Result<RackCredential, ApiError> {
        self.operator(Method::POST, &format!("/v1/racks/{rack}/credential"), None).await
    }

    /// `GET /v1/racks`.
    pub async fn racks(&self) -> Vec<RackView> {
        self.get_operator("/v1/racks").await
    }

    /// `GET /v1/racks/{id}`.
    pub async fn rack(&self, id: &str) -> Result<RackView, ApiError> {
        self.operator(Method::GET, &format!("/v1/racks/{id}"), None).await
    }

    /// `GET /v1/racks/{id}`, or why not (for polling: a refusal or no answer at all).
    pub async fn try_rack(&self, id: &str) -> Result<RackView, String> {
        let path = format!("/v1/racks/{id}");
        let answer = self.request(Method::GET, &path, Some(OPERATOR_TOKEN), &[], None).await?;
        typed::<RackView>(&Method::GET, &path, answer).map(|(_, v)| v).map_err(|e| format!("{e:?}"))
    }

    /// Waits until the broker lists rack `id` in `state` and `check` holds; returns the view.
    pub async fn wait_rack(
        &self,
        id: &str,
        state: RackHealth,
        timeout: Duration,
        check: impl Fn(&RackView) -> bool,
    ) -> RackView {
        let check = &check;
        wait_until(timeout, &format!("rack {id} {state:?} at the broker"), || async move {
            let view = self.try_rack(id).await?;
            if view.state == state && check(&view) { Ok(view) } else { Err(format!("{view:?}")) }
        })
        .await
    }

    /// `POST /v1/racks/{id}/register` with `credential`.
    pub async fn register(
        &self,
        rack: &str,
        credential: &str,
        registration: &RackRegistration,
    ) -> Result<RegistrationAck, ApiError> {
        let path = format!("/v1/racks/{rack}/register");
        self.call(Method::POST, &path, Some(credential), &[], Some(to_value(registration)), None)
            .await
            .map(|(_, t)| t)
    }

    // --- sessions ---------------------------------------------------------------------------

    /// `POST /v1/sessions` with `Idempotency-Key: idempotency_key`.
    pub async fn create_session(
        &self,
        key: &str,
        idempotency_key: &str,
        request: &SessionRequest,
    ) -> Result<Created, ApiError> {
        let headers = [("idempotency-key", idempotency_key)];
        self.call(Method::POST, "/v1/sessions", Some(key), &headers, Some(to_value(request)), None)
            .await
            .map(|(status, session)| Created { status, session })
    }

    /// `GET /v1/sessions` (`?state=` when given).
    pub async fn sessions(
        &self,
        key: &str,
        state: Option<SessionState>,
    ) -> Result<Vec<SessionView>, ApiError> {
        let path = match state {
            Some(state) => format!("/v1/sessions?state={}", state.as_str()),
            None => "/v1/sessions".to_string(),
        };
        self.call(Method::GET, &path, Some(key), &[], None, None).await.map(|(_, t)| t)
    }

    /// `GET /v1/sessions/{id}`.
    pub async fn session(&self, key: &str, id: &str) -> Result<SessionView, ApiError> {
        self.call(Method::GET, &format!("/v1/sessions/{id}"), Some(key), &[], None, None)
            .await
            .map(|(_, t)| t)
    }

    /// `GET /v1/sessions/{id}?wait_ms=N`: answers when the state changes or after `wait_ms`.
    pub async fn wait_session(&self, key: &str, id: &str, wait_ms: u64) -> Result<SessionView, ApiError> {
        let path = format!("/v1/sessions/{id}?wait_ms={wait_ms}");
        let limit = Duration::from_millis(wait_ms) + Duration::from_secs(10);
        self.call(Method::GET, &path, Some(key), &[], None, Some(limit)).await.map(|(_, t)| t)
    }

    /// Long-polls session `id` until `check` holds (each poll waits up to 5 s for a change);
    /// panics after `timeout` with the last view.
    pub async fn wait_session_until(
        &self,
        key: &str,
        id: &str,
        timeout: Duration,
        what: &str,
        check: impl Fn(&SessionView) -> bool,
    ) -> SessionView {
        let started = tokio::time::Instant::now();
        let mut last = self.session(key, id).await.unwrap_or_else(|e| panic!("GET session {id}: {e:?}"));
        while !check(&last) {
            let left = timeout.saturating_sub(started.elapsed());
            assert!(
                !left.is_zero(),
                "timed out after {timeout:?} waiting for session {id} {what}; last: {last:#?}"
            );
            let wait = left.min(Duration::from_secs(5)).as_millis() as u64;
            last =
                self.wait_session(key, id, wait).await.unwrap_or_else(|e| panic!("GET session {id}: {e:?}"));
        }
        last
    }

    /// `POST /v1/sessions/{id}/heartbeat`.
    pub async fn heartbeat(&self, key: &str, id: &str) -> Result<SessionView, ApiError> {
        let path = format!("/v1/sessions/{id}/heartbeat");
        self.call(Method::POST, &path, Some(key), &[], None, None).await.map(|(_, t)| t)
    }

    /// `DELETE /v1/sessions/{id}`.
    pub async fn end_session(&self, key: &str, id: &str) -> Result<SessionView, ApiError> {
        self.call(Method::DELETE, &format!("/v1/sessions/{id}"), Some(key), &[], None, None)
            .await
            .map(|(_, t)| t)
    }

    /// `GET /v1/sessions/{id}/explain`.
    pub async fn explain(&self, key: &str, id: &str) -> Result<SessionExplain, ApiError> {
        let path = format!("/v1/sessions/{id}/explain");
        self.call(Method::GET, &path, Some(key), &[], None, None).await.map(|(_, t)| t)
    }

    /// Heart-beats session `id` every `every` in a task until the handle is stopped or dropped.
    /// Every heartbeat must answer 200 with the session still active.
    pub fn keep_alive(&self, key: &str, id: &str, every: Duration) -> KeepAlive {
        let (client, key, id) = (self.clone(), key.to_string(), id.to_string());
        let beats = std::sync::Arc::new(AtomicU32::new(0));
        let counter = beats.clone();
        let task = tokio::spawn(async move {
            loop {
                let view =
                    client.heartbeat(&key, &id).await.unwrap_or_else(|e| panic!("heartbeat of {id}: {e:?}"));
                assert_eq!(
                    view.state,
                    SessionState::Active,
                    "a heart-beated session stays active: {view:#?}"
                );
                counter.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(every).await;
            }
        });
        KeepAlive { task: Some(task), beats }
    }
}

/// A task heart-beating one session; see [`BrokerClient::keep_alive`].
pub struct KeepAlive {
    task: Option<tokio::task::JoinHandle<()>>,
    beats: std::sync::Arc<AtomicU32>,
}

impl KeepAlive {
    /// Heartbeats answered so far.
    pub fn beats(&self) -> u32 {
        self.beats.load(Ordering::Relaxed)
    }

    /// Panics with the task's panic if a heartbeat failed.
    pub async fn check(&mut self) {
        if self.task.as_ref().is_some_and(|t| t.is_finished()) {
            self.stop().await;
        }
    }

    /// Stops heart-beating; re-raises a failed heartbeat's panic.
    pub async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            if let Err(err) = task.await
                && err.is_panic()
            {
                std::panic::resume_unwind(err.into_panic());
            }
        }
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn to_value(value: &impl serde::Serialize) -> Value {
    serde_json::to_value(value).expect("wire types serialize")
}

/// A 2xx answer parsed as `T`, or the refusal as an [`ApiError`] (panics when a refusal is not a
/// `{code, message}` body or a 2xx answer does not parse).
fn typed<T: DeserializeOwned>(method: &Method, path: &str, answer: Answer) -> Result<(u16, T), ApiError> {
    if (200..300).contains(&answer.status) {
        let value = serde_json::from_value(answer.body.clone())
            .unwrap_or_else(|e| panic!("{method} {path}: {e} in {} ({})", answer.body, answer.status));
        return Ok((answer.status, value));
    }
    let error: ErrorBody = serde_json::from_value(answer.body.clone()).unwrap_or_else(|e| {
        panic!(
            "{method} {path}: error answer {} is not a {{code, message}} body ({e}): {}",
            answer.status, answer.body
        )
    });
    Err(ApiError { status: answer.status, code: error.code, message: error.message })
}

/// A session request for `GAME` by player `player` with the given RTTs (ms) per region.
pub fn session_request(player: &str, rtt_ms: &[(&str, f64)], deadline_ms: Option<i64>) -> SessionRequest {
    SessionRequest {
        game: GAME.to_string(),
        player: PlayerInfo {
            id: player.to_string(),
            rtt_ms: rtt_ms.iter().map(|(r, v)| (r.to_string(), *v)).collect(),
            ..PlayerInfo::default()
        },
        deadline_ms,
    }
}

/// Unix ms of an RFC 3339 timestamp.
pub fn unix_ms(rfc3339: &str) -> i64 {
    let t = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{rfc3339:?} is not RFC 3339: {e}"));
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// Unix ms now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_millis() as i64
}

// --- racks ---------------------------------------------------------------------------------------

/// A rack registered with a broker: a controller started with the broker flags and its board
/// daemons (a [`Rack`]), plus the rack's broker id, region and credential.
pub struct BrokerRack {
    pub id: String,
    pub region: String,
    pub credential: String,
    pub rack: Rack,
}

impl BrokerRack {
    /// Asks `broker` for a credential for rack `rack_id`, starts a controller registering it in
    /// `region` with `uplinks` (region, RTT ms) and `boards` board daemons (CPUs alternating from
    /// 0), and waits until the broker lists the rack `online`.
    pub async fn start(
        broker: &Broker,
        rack_id: &str,
        region: &str,
        boards: usize,
        uplinks: &[(&str, f64)],
    ) -> BrokerRack {
        BrokerRack::start_with(broker, rack_id, region, boards, uplinks, &[0, 1], &[]).await
    }

    /// [`BrokerRack::start`] with chosen board CPUs (see [`Rack::start_with`]) and `extra`
    /// controller flags.
    pub async fn start_with(
        broker: &Broker,
        rack_id: &str,
        region: &str,
        boards: usize,
        uplinks: &[(&str, f64)],
        cpus: &[u32],
        extra: &[&str],
    ) -> BrokerRack {
        let credential = broker
            .client
            .rack_credential(rack_id)
            .await
            .unwrap_or_else(|e| panic!("POST /v1/racks/{rack_id}/credential: {e:?}"));
        assert_eq!(credential.rack, rack_id);
        let broker_url = broker.url();
        let mut flags: Vec<String> = [
            "--rack-id",
            rack_id,
            "--broker-url",
            &broker_url,
            "--broker-credential",
            &credential.credential,
            "--region",
            region,
            "--broker-heartbeat-ms",
            &RACK_HEARTBEAT_MS.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for (to, rtt) in uplinks {
            flags.extend(["--uplink".to_string(), format!("{to}={rtt}")]);
        }
        flags.extend(extra.iter().map(|s| s.to_string()));
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let name = format!("{}-{rack_id}", broker.label);
        let rack = Rack::start_with(&name, boards, &flags, cpus).await;
        let view =
            broker.client.wait_rack(rack_id, RackHealth::Online, Duration::from_secs(30), |_| true).await;
        assert_eq!(view.region.as_deref(), Some(region), "{view:#?}");
        BrokerRack {
            id: rack_id.to_string(),
            region: region.to_string(),
            credential: credential.credential,
            rack,
        }
    }

    /// The controller's client.
    pub fn client(&self) -> &ControllerClient {
        self.rack.client()
    }

    /// The id of the controller's deployment of `game` (the broker names it), once it exists.
    pub async fn deployment_of(&self, game: &str) -> DeploymentView {
        let client = self.client();
        wait_until(
            Duration::from_secs(20),
            &format!("a deployment of {game} on {}", self.id),
            || async move {
                let answer = client
                    .request(Method::GET, "/v1/deployments", Some(crate::controller::OPERATOR_TOKEN), None)
                    .await?;
                let list: Vec<DeploymentView> =
                    serde_json::from_value(answer.body).map_err(|e| e.to_string())?;
                list.iter().find(|d| d.spec.game == game).cloned().ok_or_else(|| format!("{list:?}"))
            },
        )
        .await
    }

    /// Waits until the controller's instances of `deployment` satisfy `check`.
    pub async fn wait_instances(
        &self,
        deployment: &str,
        what: &str,
        check: impl Fn(&[InstanceView]) -> bool,
    ) -> Vec<InstanceView> {
        wait_instances(self.client(), deployment, READY_TIMEOUT, &format!("{}: {what}", self.id), check).await
    }

    /// The controller's instance `id` of `deployment`.
    pub async fn instance(&self, deployment: &str, id: &str) -> InstanceView {
        let list = self.client().instances(deployment).await;
        list.into_iter().find(|i| i.id == id).unwrap_or_else(|| panic!("{}: no instance {id}", self.id))
    }

    /// Waits until the controller's claim `key` satisfies `check` (the broker releases claims
    /// in the background, after it has answered).
    pub async fn wait_claim(&self, key: &str, what: &str, check: impl Fn(&ClaimView) -> bool) -> ClaimView {
        let (client, check) = (self.client(), &check);
        wait_until(Duration::from_secs(20), &format!("claim {key} on {} {what}", self.id), || async move {
            let claim = client.get_claim(key).await.map_err(|e| format!("{e:?}"))?;
            if check(&claim) { Ok(claim) } else { Err(format!("{claim:?}")) }
        })
        .await
    }

    /// The last state of every claim in the controller's event log, by claim key.
    pub async fn claims(&self) -> BTreeMap<String, (String, ClaimState)> {
        let events = self.client().events_until_quiet(None, Duration::from_millis(500)).await;
        let mut claims = BTreeMap::new();
        for event in events {
            if let RackEventBody::Claim { key, instance, state, .. } = event.body {
                claims.insert(key, (instance, state));
            }
        }
        claims
    }
}

// --- the two-region setup ------------------------------------------------------------------------

/// The version every test uses: android-sim for both architectures, `millicores` each (1000 fills
/// a single-CPU test board with exactly one instance), 128 MiB, a 1 s boot, reset by recreating.
pub fn sim_version(millicores: u32) -> GameVersionSpec {
    serde_json::from_value(json!({
        "images": {"x86_64": SIM_IMAGE, "aarch64": SIM_IMAGE},
        "profile": {"millicores": millicores, "memory_mib": 128, "pids_limit": 256},
        "env": {"SIM_BOOT_SECONDS": "1"},
        "reset": "recreate",
        "boot_timeout_s": 60,
    }))
    .expect("a valid version spec")
}

/// How a [`Setup`] is shaped: boards and warm targets per region.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub east_boards: usize,
    pub west_boards: usize,
    pub east_warm: u32,
    pub west_warm: u32,
}

impl Shape {
    /// One single-CPU board and one warm instance in each region.
    pub const ONE_EACH: Shape = Shape { east_boards: 1, west_boards: 1, east_warm: 1, west_warm: 1 };
}

/// The catalog every test starts from: regions east and west, and [`GAME`] with [`VERSION`]
/// (android-sim) as its current version.
pub async fn put_catalog(client: &BrokerClient) {
    for (region, description) in [("east", "east coast"), ("west", "west coast")] {
        let view = client
            .put_region(region, &RegionSpec { description: description.into() })
            .await
            .unwrap_or_else(|e| panic!("PUT region {region}: {e:?}"));
        assert_eq!(view.id, region);
    }
    let mut game: GameSpec = serde_json::from_value(json!({"name": "E2E game"})).expect("a game spec");
    client.put_game(GAME, &game).await.expect("PUT game");
    client.put_version(GAME, VERSION, &sim_version(1000)).await.expect("PUT version");
    game.current_version = Some(VERSION.to_string());
    let view = client.put_game(GAME, &game).await.expect("PUT game with its current version");
    assert_eq!(view.spec.current_version.as_deref(), Some(VERSION), "{view:#?}");
}

/// A broker with region `east` (rack `east-1`) and region `west` (rack `west-1`), game
/// [`GAME`] version [`VERSION`] current, warm targets per region (all instances ready, and the
/// broker seeing them warm), and tenant [`TENANT`] with a key. Each board has one CPU and holds
/// exactly one instance. Fields drop in order: the broker, the racks (controllers, daemons,
/// containers), then the directory.
pub struct Setup {
    pub broker: Broker,
    pub east: BrokerRack,
    pub west: BrokerRack,
    /// Tenant [`TENANT`]'s API key.
    pub key: String,
    /// The controllers' deployment id of the game (the same on both racks; empty when no region
    /// has a warm target).
    pub deployment: String,
    pub dir: TestDir,
}

impl Setup {
    pub async fn start(name: &str, shape: Shape) -> Setup {
        let dir = TestDir::new(name);
        let broker = Broker::start(dir.path(), &[]).await;
        let client = broker.client.clone();
        put_catalog(&client).await;

        // East boards start at CPU 0, west ones at CPU 1, so a one-board region each has its own CPU.
        let east = BrokerRack::start_with(
            &broker,
            "east-1",
            "east",
            shape.east_boards,
            &[("east", 2.0), ("west", 50.0)],
            &[0, 1],
            &[],
        )
        .await;
        let west = BrokerRack::start_with(
            &broker,
            "west-1",
            "west",
            shape.west_boards,
            &[("west", 2.0), ("east", 50.0)],
            &[1, 0],
            &[],
        )
        .await;
        for (region, warm) in [("east", shape.east_warm), ("west", shape.west_warm)] {
            let view = client
                .put_warm_target(GAME, region, warm)
                .await
                .unwrap_or_else(|e| panic!("PUT warm target {region}: {e:?}"));
            assert_eq!(
                (view.game.as_str(), view.region.as_str(), view.spec.warm),
                (GAME, region, warm),
                "{view:#?}"
            );
        }
        let key = client.tenant_with_key(TENANT).await;

        let mut deployment = String::new();
        for (rack, warm) in [(&east, shape.east_warm), (&west, shape.west_warm)] {
            if warm == 0 {
                continue;
            }
            let view = rack.deployment_of(GAME).await;
            deployment = view.id.clone();
            let n = warm as usize;
            rack.wait_instances(&view.id, &format!("{n} ready"), |list| {
                list.iter().filter(|i| i.state == InstanceState::Ready).count() == n
            })
            .await;
            broker
                .client
                .wait_rack(&rack.id, RackHealth::Online, READY_TIMEOUT, |v| warm_of(v) == warm)
                .await;
        }
        Setup { broker, east, west, key, deployment, dir }
    }

    pub fn client(&self) -> &BrokerClient {
        &self.broker.client
    }

    /// The rack `id` (`east-1` or `west-1`).
    pub fn rack(&self, id: &str) -> &BrokerRack {
        match id {
            "east-1" => &self.east,
            "west-1" => &self.west,
            other => panic!("no rack {other}"),
        }
    }

    /// Creates a session for a player with `rtt_ms` as tenant [`TENANT`]; panics on a refusal.
    pub async fn create(&self, player: &str, rtt_ms: &[(&str, f64)], deadline_ms: Option<i64>) -> Created {
        let request = session_request(player, rtt_ms, deadline_ms);
        let idempotency = format!("idem-{player}");
        self.client()
            .create_session(&self.key, &idempotency, &request)
            .await
            .unwrap_or_else(|e| panic!("POST /v1/sessions for {player}: {e:?}"))
    }

    /// Creates a session and waits until it is active; checks it is placed where it says.
    pub async fn create_active(&self, player: &str, rtt_ms: &[(&str, f64)]) -> SessionView {
        let created = self.create(player, rtt_ms, None).await;
        let session = if created.session.state == SessionState::Active {
            assert_eq!(created.status, 201, "an active session is a 201: {created:#?}");
            created.session
        } else {
            self.client()
                .wait_session_until(&self.key, &created.session.id, READY_TIMEOUT, "active", |s| {
                    s.state == SessionState::Active || s.state.is_final()
                })
                .await
        };
        assert_eq!(session.state, SessionState::Active, "{session:#?}");
        self.check_placed(&session).await;
        session
    }

    /// An active session names its region, rack, board, instance, endpoint, token and lease, and
    /// the rack's controller has the instance claimed by the session id.
    pub async fn check_placed(&self, session: &SessionView) {
        let rack = self.rack(session.rack.as_deref().expect("an active session names its rack"));
        assert_eq!(session.region.as_deref(), Some(rack.region.as_str()), "{session:#?}");
        assert!(session.id.starts_with("s-"), "session ids are s-<hex>: {session:#?}");
        assert!(session.token.as_deref().is_some_and(|t| !t.is_empty()), "{session:#?}");
        assert!(session.lease_expires_at.is_some(), "{session:#?}");
        let instance_id = session.instance.as_deref().expect("an active session names its instance");
        let instance = rack.instance(&self.deployment, instance_id).await;
        assert_eq!(
            (instance.state, instance.claim_key.as_deref(), Some(instance.board.as_str())),
            (InstanceState::Claimed, Some(session.id.as_str()), session.board.as_deref()),
            "the controller holds the instance for the session: {instance:#?}"
        );
        let endpoint = session.endpoint.as_ref().expect("an active session has an endpoint");
        assert_eq!((endpoint.stream_port, endpoint.adb_port), (instance.ports.stream, instance.ports.adb));
    }
}

/// Warm instances the broker sees on a rack, over all its games.
pub fn warm_of(view: &RackView) -> u32 {
    view.games.values().map(|s| s.warm).sum()
}

/// Claimed instances the broker sees on a rack, over all its games.
pub fn active_of(view: &RackView) -> u32 {
    view.games.values().map(|s| s.active).sum()
}
