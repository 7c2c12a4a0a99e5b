//! The container runtime: the Docker Engine API through bollard, limited to the containers this
//! board owns (those labelled with its board id). Nothing here decides; it observes and acts.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use api::facts::cpuset_string;
use api::{CONTAINER_ADB_PORT, CONTAINER_STREAM_PORT, DockerFacts, ExitInfo, InstanceSpec};
use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, DeviceMapping, EventMessage, HostConfig, PortBinding, RestartPolicy,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, EventsOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder,
};
use futures_util::Stream;
use sha2::{Digest, Sha256};

use crate::metrics::{Metrics, OpLabels};

/// Label naming the instance a container runs.
pub const LABEL_INSTANCE: &str = "appliance.instance";
/// Label naming the board that owns a container; the daemon touches nothing without it.
pub const LABEL_BOARD: &str = "appliance.board";
/// Label carrying the instance generation the container was made for.
pub const LABEL_GENERATION: &str = "appliance.generation";
/// Label carrying a hash of the full instance spec, so any change of spec is noticed.
pub const LABEL_SPEC_HASH: &str = "appliance.spec-hash";

/// Why a Docker call failed.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("Docker socket {socket} is not there (is the engine running?)")]
    SocketMissing { socket: String },
    #[error("Docker {op} failed: {source}")]
    Call { op: &'static str, source: BollardError },
    #[error("a container named {name} already exists")]
    NameInUse { name: String },
}

impl DockerError {
    /// A short class for metrics labels.
    pub fn class(&self) -> &'static str {
        match self {
            DockerError::SocketMissing { .. } => "docker_unreachable",
            DockerError::Call { source: BollardError::DockerResponseServerError { .. }, .. } => {
                "docker_refused"
            }
            DockerError::Call { .. } => "docker_unreachable",
            DockerError::NameInUse { .. } => "name_in_use",
        }
    }
}

/// Coarse container state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Created, never started (or start failed).
    Created,
    /// Running.
    Running,
    /// Exited or dead.
    Exited,
    /// Paused, restarting or being removed: wait and look again.
    Transitional,
}

/// A container owned by this board.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedContainer {
    pub id: String,
    /// Instance label; empty when missing (such a container is removed).
    pub instance: String,
    pub generation: u64,
    pub spec_hash: String,
    pub state: RunState,
}

/// The board's handle on the Docker Engine.
#[derive(Clone)]
pub struct DockerRuntime {
    docker: Docker,
    board_id: String,
    metrics: Arc<Metrics>,
}

impl DockerRuntime {
    /// Connects and negotiates the API version once.
    pub async fn connect(socket: &str, board_id: &str, metrics: Arc<Metrics>) -> Result<Self, DockerError> {
        let path = socket.trim_start_matches("unix://");
        if !std::path::Path::new(path).exists() {
            return Err(DockerError::SocketMissing { socket: socket.to_string() });
        }
        let docker = Docker::connect_with_unix(path, 120, bollard::API_DEFAULT_VERSION)
            .map_err(|source| DockerError::Call { op: "connect", source })?
            .negotiate_version()
            .await
            .map_err(|source| DockerError::Call { op: "negotiate_version", source })?;
        Ok(DockerRuntime { docker, board_id: board_id.to_string(), metrics })
    }

    /// Connects, retrying with backoff (0.5 s doubling to 10 s) until the engine answers.
    pub async fn connect_with_retry(socket: &str, board_id: &str, metrics: Arc<Metrics>) -> Self {
        let mut delay = Duration::from_millis(500);
        loop {
            match Self::connect(socket, board_id, metrics.clone()).await {
                Ok(runtime) => return runtime,
                Err(err) => {
                    tracing::warn!(error = %err, retry_in_ms = delay.as_millis() as u64, "Docker not reachable");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    fn timed(&self, op: &str, started: Instant) {
        self.metrics
            .docker_call_seconds
            .get_or_create(&OpLabels { op: op.to_string() })
            .observe(started.elapsed().as_secs_f64());
    }

    /// Engine facts plus the engine's data directory.
    pub async fn facts(&self) -> (DockerFacts, Option<String>) {
        let version = self.docker.version().await.ok();
        let info = self.docker.info().await.ok();
        let cgroup_version = info.as_ref().and_then(|i| i.cgroup_version.as_ref()).and_then(|v| {
            use bollard::models::SystemInfoCgroupVersionEnum as V;
            match v {
                V::_1 => Some(1),
                V::_2 => Some(2),
                V::EMPTY => None,
            }
        });
        let facts = DockerFacts {
            reachable: version.is_some(),
            version: version.as_ref().and_then(|v| v.version.clone()),
            api_version: self.docker.client_version().to_string().into(),
            cgroup_version,
        };
        (facts, info.and_then(|i| i.docker_root_dir))
    }

    /// Every container labelled with this board, running or not.
    pub async fn list_owned(&self) -> Result<Vec<OwnedContainer>, DockerError> {
        let started = Instant::now();
        let filters = HashMap::from([("label", vec![format!("{LABEL_BOARD}={}", self.board_id)])]);
        let options = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        let list = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|source| DockerError::Call { op: "list", source })?;
        self.timed("list", started);
        Ok(list.into_iter().filter_map(owned_from_summary).collect())
    }

    /// How a stopped container exited.
    pub async fn exit_info(&self, container_id: &str) -> Result<ExitInfo, DockerError> {
        let started = Instant::now();
        let inspect = self
            .docker
            .inspect_container(container_id, None)
            .await
            .map_err(|source| DockerError::Call { op: "inspect", source })?;
        self.timed("inspect", started);
        let state = inspect.state.unwrap_or_default();
        Ok(ExitInfo {
            code: state.exit_code.unwrap_or(-1),
            oom_killed: state.oom_killed.unwrap_or(false),
            finished_at: state.finished_at.unwrap_or_default(),
        })
    }

    /// Whether `image` is present in the local engine.
    pub async fn image_present(&self, image: &str) -> Result<bool, DockerError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(BollardError::DockerResponseServerError { status_code: 404, .. }) => Ok(false),
            Err(source) => Err(DockerError::Call { op: "inspect_image", source }),
        }
    }

    /// Creates the instance's container (not started) and returns its id.
    pub async fn create(&self, spec: &InstanceSpec, board_cpus: &[u32]) -> Result<String, DockerError> {
        let started = Instant::now();
        let name = container_name(&self.board_id, &spec.id);
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        let body = container_body(&self.board_id, spec, board_cpus);
        let created =
            self.docker.create_container(Some(options), body).await.map_err(|source| match source {
                BollardError::DockerResponseServerError { status_code: 409, .. } => {
                    DockerError::NameInUse { name }
                }
                source => DockerError::Call { op: "create", source },
            })?;
        self.timed("create", started);
        Ok(created.id)
    }

    /// Starts a created or exited container.
    pub async fn start(&self, container_id: &str) -> Result<(), DockerError> {
        let started = Instant::now();
        match self.docker.start_container(container_id, None).await {
            // 304: already running, which is what we wanted.
            Ok(()) | Err(BollardError::DockerResponseServerError { status_code: 304, .. }) => {}
            Err(source) => return Err(DockerError::Call { op: "start", source }),
        }
        self.timed("start", started);
        Ok(())
    }

    /// Removes a container, killing it if it runs. Already gone counts as done.
    pub async fn remove(&self, container_id: &str) -> Result<(), DockerError> {
        let started = Instant::now();
        let options = RemoveContainerOptionsBuilder::default().force(true).v(true).build();
        match self.docker.remove_container(container_id, Some(options)).await {
            Ok(()) | Err(BollardError::DockerResponseServerError { status_code: 404, .. }) => {}
            Err(source) => return Err(DockerError::Call { op: "remove", source }),
        }
        self.timed("remove", started);
        Ok(())
    }

    /// Container events of this board's containers since `since` (Unix seconds). The stream
    /// ends when the engine closes it; the caller re-opens it from the last event's time.
    pub fn events(&self, since: i64) -> impl Stream<Item = Result<EventMessage, BollardError>> + use<> {
        let filters = HashMap::from([
            ("type", vec!["container".to_string()]),
            ("label", vec![format!("{LABEL_BOARD}={}", self.board_id)]),
        ]);
        let options = EventsOptionsBuilder::default().since(&since.to_string()).filters(&filters).build();
        self.docker.events(Some(options))
    }
}

/// The container name of an instance: unique per board, so two daemons sharing an engine never
/// collide, and a second container for one instance cannot be created by accident.
pub fn container_name(board_id: &str, instance_id: &str) -> String {
    format!("appliance-{board_id}-{instance_id}")
}

/// A short, stable hash of the whole spec except `reset_epoch` and `stream_token`: a fast reset
/// and a new token are applied to the running container over ADB and must not recreate it.
pub fn spec_hash(spec: &InstanceSpec) -> String {
    // Without a token the serialized spec (and so the hash) is what it was before tokens
    // existed, so an upgraded daemon adopts its containers as they run.
    let json = serde_json::to_vec(&InstanceSpec { reset_epoch: 0, stream_token: None, ..spec.clone() })
        .unwrap_or_default();
    hex::encode(&Sha256::digest(&json)[..8])
}

fn owned_from_summary(summary: bollard::models::ContainerSummary) -> Option<OwnedContainer> {
    use bollard::models::ContainerSummaryStateEnum as S;
    let labels = summary.labels.unwrap_or_default();
    let state = match summary.state? {
        S::CREATED => RunState::Created,
        S::RUNNING => RunState::Running,
        S::EXITED | S::DEAD => RunState::Exited,
        _ => RunState::Transitional,
    };
    Some(OwnedContainer {
        id: summary.id?,
        instance: labels.get(LABEL_INSTANCE).cloned().unwrap_or_default(),
        generation: labels.get(LABEL_GENERATION).and_then(|g| g.parse().ok()).unwrap_or(0),
        spec_hash: labels.get(LABEL_SPEC_HASH).cloned().unwrap_or_default(),
        state,
    })
}

/// The create request for an instance: pinned CPUs, hard memory limit without extra swap,
/// a pids limit, its devices, its two published ports, no Docker restart policy (the daemon
/// owns restarts) and no capabilities unless the spec asks for a privileged container.
pub fn container_body(board_id: &str, spec: &InstanceSpec, board_cpus: &[u32]) -> ContainerCreateBody {
    let cpus = if spec.cpus.is_empty() { board_cpus } else { &spec.cpus };
    let memory = (spec.memory_mib * 1024 * 1024) as i64;
    let port_bindings = HashMap::from([
        (format!("{CONTAINER_ADB_PORT}/tcp"), Some(vec![binding(spec.ports.adb)])),
        (format!("{CONTAINER_STREAM_PORT}/tcp"), Some(vec![binding(spec.ports.stream)])),
    ]);
    let devices = spec
        .devices
        .iter()
        .map(|path| DeviceMapping {
            path_on_host: Some(path.clone()),
            path_in_container: Some(path.clone()),
            cgroup_permissions: Some("rwm".into()),
        })
        .collect();
    let labels = HashMap::from([
        (LABEL_BOARD.to_string(), board_id.to_string()),
        (LABEL_INSTANCE.to_string(), spec.id.clone()),
        (LABEL_GENERATION.to_string(), spec.generation.to_string()),
        (LABEL_SPEC_HASH.to_string(), spec_hash(spec)),
    ]);
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        hostname: Some(spec.id.clone()),
        env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        cmd: (!spec.args.is_empty()).then(|| spec.args.clone()),
        labels: Some(labels),
        exposed_ports: Some(vec![
            format!("{CONTAINER_ADB_PORT}/tcp"),
            format!("{CONTAINER_STREAM_PORT}/tcp"),
        ]),
        host_config: Some(HostConfig {
            cpuset_cpus: Some(cpuset_string(cpus)),
            memory: Some(memory),
            memory_swap: Some(memory),
            pids_limit: Some(spec.pids_limit),
            devices: Some(devices),
            port_bindings: Some(port_bindings),
            restart_policy: Some(RestartPolicy {
                name: Some(bollard::models::RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            }),
            privileged: Some(spec.privileged),
            cap_drop: (!spec.privileged).then(|| vec!["ALL".to_string()]),
            security_opt: (!spec.privileged).then(|| vec!["no-new-privileges".to_string()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn binding(port: u16) -> PortBinding {
    PortBinding { host_ip: Some("0.0.0.0".into()), host_port: Some(port.to_string()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::{InstancePorts, Readiness};

    fn spec() -> InstanceSpec {
        InstanceSpec {
            id: "i1".into(),
            image: "appliance/android-sim:latest".into(),
            generation: 3,
            cpus: vec![0, 1],
            memory_mib: 256,
            pids_limit: 200,
            devices: vec!["/dev/dri/renderD128".into()],
            ports: InstancePorts { adb: 20000, stream: 20001 },
            env: [("SIM_BOOT_SECONDS".to_string(), "2".to_string())].into(),
            args: vec![],
            privileged: false,
            boot_timeout_s: 60,
            readiness: Readiness::default(),
            reset_epoch: 0,
            stream_token: None,
        }
    }

    #[test]
    fn the_create_request_carries_every_limit_and_label() {
        let body = container_body("b1", &spec(), &[0, 1, 2, 3]);
        let host = body.host_config.unwrap();
        assert_eq!(host.cpuset_cpus.as_deref(), Some("0-1"));
        assert_eq!(host.memory, Some(256 * 1024 * 1024));
        assert_eq!(host.memory_swap, host.memory);
        assert_eq!(host.pids_limit, Some(200));
        assert_eq!(host.cap_drop, Some(vec!["ALL".to_string()]));
        let ports = host.port_bindings.unwrap();
        assert_eq!(ports["5555/tcp"].as_ref().unwrap()[0].host_port.as_deref(), Some("20000"));
        assert_eq!(ports["8000/tcp"].as_ref().unwrap()[0].host_port.as_deref(), Some("20001"));
        let labels = body.labels.unwrap();
        assert_eq!(labels[LABEL_BOARD], "b1");
        assert_eq!(labels[LABEL_INSTANCE], "i1");
        assert_eq!(labels[LABEL_GENERATION], "3");
        assert_eq!(body.env.unwrap(), vec!["SIM_BOOT_SECONDS=2".to_string()]);
    }

    #[test]
    fn an_empty_cpu_list_means_the_whole_board() {
        let body = container_body("b1", &InstanceSpec { cpus: vec![], ..spec() }, &[2, 3]);
        assert_eq!(body.host_config.unwrap().cpuset_cpus.as_deref(), Some("2-3"));
    }

    #[test]
    fn the_spec_hash_follows_every_field() {
        let a = spec_hash(&spec());
        assert_eq!(a, spec_hash(&spec()));
        assert_ne!(a, spec_hash(&InstanceSpec { memory_mib: 512, ..spec() }));
        assert_eq!(a, spec_hash(&InstanceSpec { reset_epoch: 9, ..spec() }));
    }

    #[test]
    fn the_stream_token_changes_neither_the_hash_nor_the_container() {
        let with = |token: &str| InstanceSpec { stream_token: Some(token.into()), ..spec() };
        assert_eq!(spec_hash(&spec()), spec_hash(&with("st_a")));
        assert_eq!(spec_hash(&with("st_a")), spec_hash(&with("st_b")));
        // A token is applied over ADB, never handed to the container (env, args, labels).
        let body = serde_json::to_string(&container_body("b1", &with("st_secret"), &[0, 1])).unwrap();
        assert!(!body.contains("st_secret"), "{body}");
    }
}
