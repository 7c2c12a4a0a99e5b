//! Registration with the session broker. The controller dials out (a rack behind NAT still
//! works): it builds a [`RackRegistration`] from the rack's rows, with each board's FREE
//! resources as the packer sees them, and posts it to the broker at start and then every
//! heartbeat period. The registration is the heartbeat: the broker learns the rack's capacity
//! and that the rack is alive from the same request, and a broker that lost its state gets
//! everything back with the next beat. A board that enrols or changes state is sent at once
//! (at most every [`MIN_PERIOD`]), not at the next beat: until then the broker would not place
//! on a new board's instances.
//!
//! Failures never stop the loop. A refusal (400, 401, 403, 404) is retried after the period;
//! an unreachable broker (connection refused, timeout, 5xx) with a backoff of 0.5 s, 1 s, 2 s ...
//! capped at the period. Each distinct error is logged once as a warning, not on every beat.

use std::sync::Arc;
use std::time::Duration;

use api::broker::{self, RackRegistration, RegistrationAck};
use reqwest::StatusCode;
use tokio::time::Instant;

use crate::config::BrokerLink;
use crate::error::RackError;
use crate::packing::{BoardState, BoardUsage};
use crate::rack::Rack;
use crate::{placement, rows};

/// Longest wait for the broker's answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// First wait after the broker could not be reached; doubled on each further failure.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// The broker's period is held to these bounds, so a broken answer (0, or a day) can neither
/// spin the loop nor silence the rack.
const MIN_PERIOD: Duration = Duration::from_millis(100);
const MAX_PERIOD: Duration = Duration::from_secs(60);
/// Longest part of an unparseable error body kept in a log line.
const MAX_BODY_IN_LOG: usize = 200;

/// Why one registration failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot read the rack for the registration: {0}")]
    Rack(#[from] RackError),
    /// The request failed: the text is the whole cause chain (reqwest's own message omits
    /// "connection refused" and the like).
    #[error("session broker unreachable: {0}")]
    Unreachable(String),
    #[error("session broker refused the registration ({status}): {code}: {message}")]
    Refused { status: StatusCode, code: String, message: String },
    #[error("session broker accepted the registration but its answer is not a RegistrationAck: {0}")]
    BadAck(#[source] serde_json::Error),
}

impl LinkError {
    fn unreachable(err: reqwest::Error) -> LinkError {
        let mut text = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        LinkError::Unreachable(text)
    }

    /// Failures worth a quick retry: the broker (or its proxy) was not there to answer.
    fn is_transient(&self) -> bool {
        match self {
            LinkError::Unreachable(_) => true,
            LinkError::Refused { status, .. } => status.is_server_error(),
            LinkError::Rack(_) | LinkError::BadAck(_) => false,
        }
    }

    /// Metric outcome label.
    fn outcome(&self) -> &'static str {
        match self {
            LinkError::Unreachable(_) => "unreachable",
            LinkError::Refused { .. } => "refused",
            LinkError::Rack(_) | LinkError::BadAck(_) => "error",
        }
    }
}

/// The registration as the rack stands now.
pub fn registration(rack: &Rack, link: &BrokerLink) -> Result<RackRegistration, RackError> {
    // Rows are read under the lock; the packer's arithmetic runs outside it.
    let (boards, instances) = rack
        .db
        .read(|conn| Ok::<_, RackError>((rows::boards(conn)?, rows::instances_where(conn, "1 = 1", [])?)))?;
    let view = placement::rack_view(&boards, &instances, &rack.config.classes);
    Ok(RackRegistration {
        region: link.region.clone(),
        labels: link.labels.clone(),
        controller_url: link.public_url.clone(),
        controller_token: rack.broker_token.clone(),
        player_host: link.player_host.clone(),
        uplinks: link.uplinks.clone(),
        boards: view.iter().map(free_capacity).collect(),
    })
}

/// A board's allocatable resources minus what every instance placed on it holds (terminating
/// ones too: their containers exist until the board removes them).
pub fn free_capacity(board: &BoardState) -> broker::BoardCapacity {
    let usage = BoardUsage::of(&board.placed);
    let capacity = &board.capacity;
    broker::BoardCapacity {
        board: board.id.clone(),
        arch: board.arch.clone(),
        gpu_kind: board.gpu_kind.clone(),
        schedulable: board.schedulable && !board.cordoned,
        free_millicores: u64::from(capacity.millicores.saturating_sub(usage.millicores)),
        free_memory_mib: capacity.memory_mib.saturating_sub(usage.memory_mib),
        free_gpu_slots: capacity.gpu_slots.saturating_sub(usage.gpu_slots),
        free_encoder_slots: capacity.encoder_slots.saturating_sub(usage.encoder_slots),
        free_ports: u32::try_from(usage.free_port_count(capacity.ports)).unwrap_or(u32::MAX),
        total_millicores: u64::from(capacity.millicores),
        total_gpu_slots: capacity.gpu_slots,
    }
}

/// Sends the registration until the rack shuts down.
pub async fn run(rack: Arc<Rack>, link: BrokerLink) {
    let client = match reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build() {
        Ok(client) => client,
        Err(err) => {
            tracing::error!(error = %err, "cannot build the HTTP client; not registering with the session broker");
            return;
        }
    };
    let url = format!("{}/v1/racks/{}/register", link.url, rack.config.rack_id);
    tracing::info!(url = %url, region = %link.region, "registering with the session broker");
    let mut beat = Beat::new(link.heartbeat);
    loop {
        let started = Instant::now();
        let outcome = tokio::select! {
            _ = rack.shutdown.cancelled() => return,
            outcome = register_once(&rack, &link, &client, &url) => outcome,
        };
        let wake = beat.after(started, outcome, &rack);
        tokio::select! {
            _ = rack.shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(wake) => {}
            // While the broker is unreachable the backoff stands: a change waits for the retry.
            _ = rack.boards_changed.notified(), if beat.registered => {
                tokio::select! {
                    _ = rack.shutdown.cancelled() => return,
                    _ = tokio::time::sleep_until(wake.min(started + MIN_PERIOD)) => {}
                }
            }
        }
    }
}

/// Builds and sends one registration.
async fn register_once(
    rack: &Rack,
    link: &BrokerLink,
    client: &reqwest::Client,
    url: &str,
) -> Result<RegistrationAck, LinkError> {
    let body = registration(rack, link)?;
    let response = client
        .post(url)
        .bearer_auth(&link.credential)
        .json(&body)
        .send()
        .await
        .map_err(LinkError::unreachable)?;
    let status = response.status();
    let bytes = response.bytes().await.map_err(LinkError::unreachable)?;
    if !status.is_success() {
        return Err(refusal(status, &bytes));
    }
    serde_json::from_slice(&bytes).map_err(LinkError::BadAck)
}

/// The broker's `{code, message}` error body, or what it sent instead.
fn refusal(status: StatusCode, body: &[u8]) -> LinkError {
    match serde_json::from_slice::<api::ErrorBody>(body) {
        Ok(err) => LinkError::Refused { status, code: err.code, message: err.message },
        Err(_) => {
            let text: String = String::from_utf8_lossy(body).chars().take(MAX_BODY_IN_LOG).collect();
            LinkError::Refused { status, code: "unknown".into(), message: text }
        }
    }
}

/// The loop's timing and what it last logged.
struct Beat {
    /// Re-send period: the configured one until the broker names its own.
    period: Duration,
    /// Wait before the next retry of an unreachable broker.
    backoff: Duration,
    /// The last error logged as a warning (each distinct error is logged once).
    last_error: Option<String>,
    /// The last registration was accepted.
    registered: bool,
}

impl Beat {
    fn new(period: Duration) -> Beat {
        Beat { period, backoff: FIRST_BACKOFF, last_error: None, registered: false }
    }

    /// Records an outcome (logs, metrics) and says when to send next.
    fn after(
        &mut self,
        started: Instant,
        outcome: Result<RegistrationAck, LinkError>,
        rack: &Rack,
    ) -> Instant {
        match outcome {
            Ok(ack) => {
                rack.metrics.registration_outcome("accepted");
                let period = broker_period(ack.heartbeat_ms);
                if !self.registered || period != self.period {
                    tracing::info!(rack = %ack.rack, heartbeat_ms = period.as_millis() as u64, "registered with the session broker");
                }
                self.period = period;
                self.registered = true;
                self.last_error = None;
                self.backoff = FIRST_BACKOFF;
                started + self.period
            }
            Err(err) => {
                rack.metrics.registration_outcome(err.outcome());
                self.registered = false;
                self.log_once(&err);
                if err.is_transient() {
                    let wait = self.backoff.min(self.period);
                    self.backoff = next_backoff(self.backoff, self.period);
                    // Measured from the failure: a timed-out request already took its time.
                    Instant::now() + wait
                } else {
                    self.backoff = FIRST_BACKOFF;
                    started + self.period
                }
            }
        }
    }

    fn log_once(&mut self, err: &LinkError) {
        let text = err.to_string();
        if self.last_error.as_deref() == Some(text.as_str()) {
            tracing::debug!(error = %text, "registration with the session broker failed again");
        } else {
            tracing::warn!(error = %text, "registration with the session broker failed; retrying");
            self.last_error = Some(text);
        }
    }
}

/// The broker's period, held to sane bounds.
fn broker_period(heartbeat_ms: u64) -> Duration {
    Duration::from_millis(heartbeat_ms).clamp(MIN_PERIOD, MAX_PERIOD)
}

/// 0.5 s, 1 s, 2 s ... never above the heartbeat period.
fn next_backoff(backoff: Duration, period: Duration) -> Duration {
    (backoff * 2).min(period)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use api::InstancePorts;
    use api::rack::{InstanceState, RackEventBody};
    use axum::extract::State;
    use axum::http::HeaderMap;
    use axum::{Json, Router};
    use rusqlite::params;

    use super::*;
    use crate::config::{Cli, Config};
    use crate::metrics::OutcomeLabels;
    use crate::packing::tests::topology_facts;

    const CLASS: &str = "[[class]]\nname = \"arm\"\nmatch = { arch = \"aarch64\" }\n\
        reserve = { millicores = 1000, memory_mib = 1024 }\ngpu_kind = \"mali-g610\"\n\
        gpu_slots = 4\nencoder_slots = 2\n";

    /// A rack whose only class is [`CLASS`], registering with `broker_url`.
    fn rack(dir: &tempfile::TempDir, broker_url: &str, heartbeat_ms: u64) -> Rack {
        let config_path = dir.path().join("c.toml");
        std::fs::write(&config_path, CLASS).unwrap();
        let config = Config::load(Cli {
            config: Some(config_path),
            rack_id: Some("r".into()),
            data_dir: Some(dir.path().into()),
            broker_url: Some(broker_url.into()),
            broker_credential: Some("rack-secret".into()),
            region: Some("east".into()),
            site_labels: vec!["site=east-1".into()],
            uplinks: vec!["east=2".into(), "west=35/0.01".into()],
            broker_heartbeat_ms: Some(heartbeat_ms),
            ..Cli::default()
        })
        .unwrap();
        let conn = service_kit::sqlite::open(&dir.path().join("c.db"), crate::db::MIGRATIONS).unwrap();
        let mut registry = prometheus_client::registry::Registry::default();
        Rack::new(
            config,
            crate::db::Db::new(conn),
            crate::metrics::Metrics::register(&mut registry),
            "op".into(),
            "broker-token".into(),
            tokio_util::sync::CancellationToken::new(),
        )
    }

    fn insert_board(rack: &Rack, id: &str, arch: &str, cordoned: bool) {
        let facts = topology_facts(id, arch, Some("rockchip,rk3588"), 8192, 8, Some(4));
        rack.write(|w| {
            w.tx.execute(
                "INSERT INTO boards (id, state, arch, address, facts, credential_hash, cordoned, last_heartbeat_ms,
                                     desired_generation, enrolled_ms)
                 VALUES (?1, 'ready', ?2, '10.0.0.1', ?3, ?1, ?4, ?5, 1, 0)",
                params![id, arch, serde_json::to_string(&facts).unwrap(), cordoned, w.now_ms as i64],
            )?;
            Ok::<_, RackError>(())
        })
        .unwrap();
    }

    fn insert_instance(
        rack: &Rack,
        id: &str,
        state: InstanceState,
        cpus: Vec<u32>,
        millicores: u32,
        port: u16,
    ) {
        let row = rows::InstanceRow {
            id: id.into(),
            deployment_id: "d".into(),
            board_id: "b1".into(),
            state,
            reason: None,
            generation: 1,
            reset_epoch: 0,
            millicores,
            cpus,
            memory_mib: 1024,
            gpu_slots: 1,
            encoder_slots: 1,
            ports: InstancePorts { adb: port, stream: port + 1 },
            container_id: None,
            claim_key: None,
            at_risk: false,
            state_since_ms: 0,
            stream_token: None,
        };
        rack.write(|w| {
            rows::insert_instance(&w.tx, &row, w.now_ms)?;
            Ok::<_, RackError>(())
        })
        .unwrap();
    }

    #[test]
    fn registration_reports_free_resources_and_cordoned_boards_as_unschedulable() {
        let dir = tempfile::tempdir().unwrap();
        let rack = rack(&dir, "http://broker.test", 2000);
        insert_board(&rack, "b1", "aarch64", false);
        insert_board(&rack, "b2", "aarch64", true);
        insert_board(&rack, "b3", "x86_64", false); // no class: not reported
        insert_instance(&rack, "i1", InstanceState::Ready, vec![1, 2], 1500, 20000);
        // A terminating instance still holds its resources until the board removes it.
        insert_instance(&rack, "i2", InstanceState::Terminating, vec![3], 500, 20002);

        let link = rack.config.broker.clone().unwrap();
        let reg = registration(&rack, &link).unwrap();
        assert_eq!(reg.region, "east");
        assert_eq!(reg.controller_token, "broker-token");
        assert_eq!(reg.controller_url, "http://127.0.0.1:7200");
        assert_eq!(reg.labels.get("site").map(String::as_str), Some("east-1"));
        assert_eq!(reg.uplinks["west"], broker::UplinkQuality { rtt_ms: 35.0, loss: 0.01 });
        let ids: Vec<&str> = reg.boards.iter().map(|b| b.board.as_str()).collect();
        assert_eq!(ids, ["b1", "b2"]);

        let facts = topology_facts("b1", "aarch64", Some("rockchip,rk3588"), 8192, 8, Some(4));
        let all = crate::packing::allocatable(&facts, &rack.config.classes[0].class);
        // 8 CPUs minus a 1000 millicore reserve; 8192 MiB minus 1024; 100 ports.
        assert_eq!((all.millicores, all.memory_mib, all.ports.len()), (7000, 7168, 100));
        let b1 = &reg.boards[0];
        assert_eq!(b1.arch, "aarch64");
        assert_eq!(b1.gpu_kind.as_deref(), Some("mali-g610"));
        assert!(b1.schedulable);
        assert_eq!(b1.free_millicores, u64::from(all.millicores) - 2000);
        assert_eq!(b1.total_millicores, u64::from(all.millicores), "totals let the broker weigh load");
        assert_eq!(b1.free_memory_mib, all.memory_mib - 2048);
        assert_eq!(b1.free_gpu_slots, all.gpu_slots - 2);
        assert_eq!(b1.free_encoder_slots, all.encoder_slots - 2);
        assert_eq!(b1.free_ports as usize, all.ports.len() - 4);

        let b2 = &reg.boards[1];
        assert!(!b2.schedulable, "a cordoned board takes nothing new");
        assert_eq!(b2.free_millicores, u64::from(all.millicores));
        assert_eq!(b2.free_memory_mib, all.memory_mib);
        assert_eq!((b2.free_gpu_slots, b2.free_encoder_slots), (all.gpu_slots, all.encoder_slots));
    }

    #[test]
    fn backoff_doubles_up_to_the_period_and_the_broker_period_is_bounded() {
        let period = Duration::from_secs(3);
        let mut backoff = FIRST_BACKOFF;
        let mut waits = vec![];
        for _ in 0..5 {
            waits.push(backoff.min(period).as_millis());
            backoff = next_backoff(backoff, period);
        }
        assert_eq!(waits, [500, 1000, 2000, 3000, 3000]);
        assert_eq!(broker_period(0), MIN_PERIOD);
        assert_eq!(broker_period(250), Duration::from_millis(250));
        assert_eq!(broker_period(u64::MAX), MAX_PERIOD);
    }

    #[test]
    fn error_bodies_are_read_and_only_outages_are_retried_quickly() {
        let body = br#"{"code":"unknown_rack","message":"no rack r"}"#;
        let err = refusal(StatusCode::NOT_FOUND, body);
        assert_eq!(
            err.to_string(),
            "session broker refused the registration (404 Not Found): unknown_rack: no rack r"
        );
        assert!(!err.is_transient());
        assert!(refusal(StatusCode::BAD_GATEWAY, b"<html>").is_transient());
        assert!(refusal(StatusCode::UNAUTHORIZED, b"nope").to_string().contains("unknown: nope"));
    }

    /// What the fake broker saw: (authorization header, body, when).
    type Seen = Arc<Mutex<Vec<(String, RackRegistration, Instant)>>>;

    /// Records a registration; returns how many have arrived.
    fn record(seen: &Seen, headers: &HeaderMap, body: RackRegistration) -> usize {
        let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let mut seen = seen.lock().unwrap();
        seen.push((auth, body, Instant::now()));
        seen.len()
    }

    /// Answers 401 to the second registration and 200 with a 100 ms period to every other.
    async fn fake_register(
        State(seen): State<Seen>,
        headers: HeaderMap,
        Json(body): Json<RackRegistration>,
    ) -> (StatusCode, Json<serde_json::Value>) {
        if record(&seen, &headers, body) == 2 {
            let body = serde_json::json!({"code": "unauthorized", "message": "bad credential"});
            return (StatusCode::UNAUTHORIZED, Json(body));
        }
        (StatusCode::OK, Json(serde_json::json!({"rack": "r", "heartbeat_ms": 100})))
    }

    /// Answers 200 with a one-minute period to every registration.
    async fn fake_register_slow(
        State(seen): State<Seen>,
        headers: HeaderMap,
        Json(body): Json<RackRegistration>,
    ) -> Json<serde_json::Value> {
        record(&seen, &headers, body);
        Json(serde_json::json!({"rack": "r", "heartbeat_ms": 60_000}))
    }

    async fn fake_broker() -> (String, Seen) {
        serve_fake(axum::routing::post(fake_register)).await
    }

    async fn serve_fake(route: axum::routing::MethodRouter<Seen>) -> (String, Seen) {
        let seen: Seen = Arc::default();
        let app = Router::new().route("/v1/racks/{rack}/register", route).with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (url, seen)
    }

    fn count(rack: &Rack, outcome: &str) -> u64 {
        rack.metrics.broker_registrations.get_or_create(&OutcomeLabels { outcome: outcome.into() }).get()
    }

    #[tokio::test]
    async fn the_loop_resends_at_the_brokers_period_and_survives_a_refusal() {
        let dir = tempfile::tempdir().unwrap();
        let (url, seen) = fake_broker().await;
        // The local period is a minute: only the broker's 100 ms explains quick re-sends.
        let rack = Arc::new(rack(&dir, &url, 60_000));
        insert_board(&rack, "b1", "aarch64", false);
        let task = tokio::spawn(run(rack.clone(), rack.config.broker.clone().unwrap()));
        let deadline = Instant::now() + Duration::from_secs(10);
        // Until the loop has also read the answers: the fake server sees a registration before
        // the loop counts its answer, and stopping in between would leave one uncounted.
        while seen.lock().unwrap().len() < 5 || count(&rack, "accepted") < 4 {
            assert!(Instant::now() < deadline, "only {} registrations arrived", seen.lock().unwrap().len());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        rack.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .expect("the loop stops on shutdown")
            .unwrap();

        let seen = seen.lock().unwrap();
        for (auth, body, _) in seen.iter() {
            assert_eq!(auth, "Bearer rack-secret");
            assert_eq!(body.region, "east");
            assert_eq!(body.boards.len(), 1);
        }
        for pair in seen.windows(2) {
            let gap = pair[1].2 - pair[0].2;
            assert!(gap >= Duration::from_millis(90), "re-sent after {gap:?}, before the broker's period");
            assert!(gap < Duration::from_secs(5), "re-sent after {gap:?}, not at the broker's period");
        }
        assert!(count(&rack, "accepted") >= 4);
        assert_eq!(count(&rack, "refused"), 1);
        assert_eq!(rack.metrics.broker_registered.get(), 1);
    }

    #[tokio::test]
    async fn a_board_change_is_sent_at_once_not_at_the_next_beat() {
        let dir = tempfile::tempdir().unwrap();
        let (url, seen) = serve_fake(axum::routing::post(fake_register_slow)).await;
        let rack = Arc::new(rack(&dir, &url, 60_000));
        let task = tokio::spawn(run(rack.clone(), rack.config.broker.clone().unwrap()));
        let wait_for = |n: usize| {
            let seen = seen.clone();
            async move {
                let deadline = Instant::now() + Duration::from_secs(5);
                while seen.lock().unwrap().len() < n {
                    assert!(Instant::now() < deadline, "registration {n} did not arrive");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        wait_for(1).await;
        assert!(seen.lock().unwrap()[0].1.boards.is_empty());

        // A board enrols: the broker hears of it well before the minute is up.
        insert_board(&rack, "b1", "aarch64", false);
        rack.write(|w| {
            w.emit(RackEventBody::Board {
                board: "b1".into(),
                state: api::rack::BoardState::Ready,
                reachable: true,
                cordoned: false,
                reason: None,
            })
        })
        .unwrap();
        wait_for(2).await;
        assert_eq!(seen.lock().unwrap()[1].1.boards.len(), 1);
        // A write without a board event sends nothing.
        insert_instance(&rack, "i1", InstanceState::Ready, vec![0], 1000, 20_000);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(seen.lock().unwrap().len(), 2);
        rack.shutdown.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn an_unreachable_broker_is_retried_and_does_not_block_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        // A port nothing listens on: bound, then closed.
        let url = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", listener.local_addr().unwrap())
        };
        let rack = Arc::new(rack(&dir, &url, 60_000));
        let task = tokio::spawn(run(rack.clone(), rack.config.broker.clone().unwrap()));
        // Attempts at 0 s and 0.5 s (backoff), not a minute apart.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        rack.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .expect("the loop stops on shutdown")
            .unwrap();
        assert!(count(&rack, "unreachable") >= 2, "{} attempts", count(&rack, "unreachable"));
        assert_eq!(rack.metrics.broker_registered.get(), 0);
    }
}
