//! SIMULATED boards for the benchmarks: HTTP clients that enrol with a real array controller
//! like a board daemon and report every instance of their desired state as `ready`, without
//! running any container. Thousands of ready instances cannot run on one machine's Docker; with
//! these, everything on the controller (and broker) side is real and only the boards are not.

use std::time::Duration;

use anyhow::Context;
use api::rack::{EnrolRequest, EnrolResponse, Heartbeat};
use api::{BootTimings, DesiredState, InstancePhase, InstanceStatus};
use reqwest::StatusCode;
use serde_json::json;

/// How long a [`spawn_reporter`] long-poll waits for a newer desired state.
const LONG_POLL_MS: u64 = 20_000;

/// A simulated board enrolled with a controller.
#[derive(Debug, Clone)]
pub struct SimBoard {
    pub id: String,
    /// The board credential the controller gave at enrolment.
    pub credential: String,
}

/// What a simulated board claims to offer.
#[derive(Debug, Clone, Copy)]
pub struct SimResources {
    pub cpus: u32,
    pub memory_mib: u64,
}

impl SimResources {
    /// 64 CPUs and 256 GiB: room for as many small instances as a benchmark wants.
    pub const LARGE: SimResources = SimResources { cpus: 64, memory_mib: 256 * 1024 };
}

/// Creates a join token on the controller at `url` with its operator token.
pub async fn join_token(client: &reqwest::Client, url: &str, operator_token: &str) -> anyhow::Result<String> {
    let join: serde_json::Value = client
        .post(format!("{url}/v1/join-tokens"))
        .bearer_auth(operator_token)
        .json(&json!({}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(join["token"].as_str().context("join token")?.to_string())
}

/// Enrols a simulated board `id` with the controller at `url`.
pub async fn enrol(
    client: &reqwest::Client,
    url: &str,
    join_token: &str,
    id: &str,
    resources: SimResources,
) -> anyhow::Result<SimBoard> {
    let response: EnrolResponse = client
        .post(format!("{url}/v1/enrol"))
        .json(&EnrolRequest {
            join_token: join_token.to_string(),
            facts: facts(id, resources),
            address: "127.0.0.1".into(),
            now_ms: now_ms(),
            desired_generation: 0,
        })
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(SimBoard { id: id.to_string(), credential: response.credential })
}

/// One report of `board`: every instance of its current desired state is ready. Returns the
/// generation reported.
pub async fn report_all_ready(client: &reqwest::Client, url: &str, board: &SimBoard) -> anyhow::Result<u64> {
    let response = client
        .get(format!("{url}/v1/boards/{}/desired?after=0", board.id))
        .bearer_auth(&board.credential)
        .send()
        .await?;
    let desired: DesiredState = response.error_for_status()?.json().await?;
    heartbeat_all_ready(client, url, board, &desired).await?;
    Ok(desired.generation)
}

/// Reports every instance of `desired` as ready.
async fn heartbeat_all_ready(
    client: &reqwest::Client,
    url: &str,
    board: &SimBoard,
    desired: &DesiredState,
) -> anyhow::Result<()> {
    let instances = desired
        .instances
        .iter()
        .map(|spec| InstanceStatus {
            id: spec.id.clone(),
            generation: spec.generation,
            phase: InstancePhase::Ready,
            reason: None,
            container_id: Some(format!("simulated-{}", spec.id)),
            ports: spec.ports,
            restarts: 0,
            crash_loop: false,
            last_exit: None,
            boot: BootTimings::default(),
            reset_epoch: spec.reset_epoch,
        })
        .collect();
    let heartbeat =
        Heartbeat { applied_generation: desired.generation, instances, journal: vec![], rejected: None };
    client
        .post(format!("{url}/v1/boards/{}/heartbeat", board.id))
        .bearer_auth(&board.credential)
        .json(&heartbeat)
        .send()
        .await?
        .error_for_status()?;
    Ok(())
}

/// Keeps `board` reporting on its own until the task is aborted: long-polls its desired state
/// and reports every new generation all ready at once (so a released instance, recreated by the
/// controller, comes back ready within a round trip); re-reports after each empty long-poll.
/// Errors are retried after a short pause.
pub fn spawn_reporter(client: reqwest::Client, url: String, board: SimBoard) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last: Option<DesiredState> = None;
        loop {
            let after = last.as_ref().map_or(0, |d| d.generation);
            let polled = client
                .get(format!("{url}/v1/boards/{}/desired?after={after}&wait_ms={LONG_POLL_MS}", board.id))
                .bearer_auth(&board.credential)
                .send()
                .await;
            let outcome = match polled {
                Ok(r) if r.status() == StatusCode::NO_CONTENT => Ok(()),
                Ok(r) if r.status().is_success() => match r.json::<DesiredState>().await {
                    Ok(desired) => {
                        last = Some(desired);
                        Ok(())
                    }
                    Err(e) => Err(anyhow::Error::from(e)),
                },
                Ok(r) => Err(anyhow::anyhow!("desired state answered {}", r.status())),
                Err(e) => Err(e.into()),
            };
            let outcome = match (outcome, &last) {
                (Ok(()), Some(desired)) => heartbeat_all_ready(&client, &url, &board, desired).await,
                (outcome, _) => outcome,
            };
            if outcome.is_err() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    })
}

/// The facts of a simulated x86_64 board (matched by an `x86_64` class of the controller).
pub fn facts(id: &str, resources: SimResources) -> api::BoardFacts {
    let cpus: Vec<u32> = (0..resources.cpus).collect();
    api::BoardFacts {
        board_id: id.to_string(),
        arch: "x86_64".into(),
        soc_model: None,
        cpu: api::CpuTopology {
            cpus: cpus.clone(),
            clusters: vec![api::CpuCluster { cpus, capacity: None }],
        },
        memory_mib: resources.memory_mib,
        disk: api::DiskFacts { mount: "/".into(), total_mib: 1 << 20, available_mib: 1 << 19 },
        gpu_devices: vec![],
        encoder_devices: vec![],
        kernel: api::KernelFacts {
            release: "simulated".into(),
            page_size: 4096,
            binderfs: false,
            binder_devices: vec![],
            memfd: true,
            ashmem: false,
            inotify_max_user_instances: None,
            inotify_max_user_watches: None,
        },
        docker: api::DockerFacts { reachable: true, version: None, api_version: None, cgroup_version: None },
        addresses: vec!["127.0.0.1".into()],
        host_port_range: api::PortRange { start: 20000, end: 29999 },
        overridden: vec!["simulated".into()],
    }
}

/// Unix time in ms (what a board sends at enrolment for the clock-skew check).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
