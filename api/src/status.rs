//! What a board reports: instance observations, anomalies, and the journal of changes.

use serde::{Deserialize, Serialize};

use crate::instance::InstancePorts;

/// The board daemon's observation of one instance. The controller maps these onto the
/// instance lifecycle (`pending` .. `ready`); the daemon never decides `claimed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstancePhase {
    /// Wanted, no container yet.
    Pending,
    /// Container created and started; Android not answering ADB yet.
    Starting,
    /// ADB answers; `sys.boot_completed` is not 1 yet (or the game is not in the foreground).
    Booting,
    /// Android booted (and the game is in the foreground when asked for).
    Ready,
    /// The container exited; a restart is scheduled with backoff.
    Exited,
    /// Something prevents progress (create failed, boot timeout, ADB unresponsive).
    Failed,
    /// Being removed.
    Terminating,
}

impl InstancePhase {
    /// Every phase, in lifecycle order (for metrics and displays).
    pub const ALL: [InstancePhase; 7] = [
        InstancePhase::Pending,
        InstancePhase::Starting,
        InstancePhase::Booting,
        InstancePhase::Ready,
        InstancePhase::Exited,
        InstancePhase::Failed,
        InstancePhase::Terminating,
    ];

    /// The phase's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            InstancePhase::Pending => "pending",
            InstancePhase::Starting => "starting",
            InstancePhase::Booting => "booting",
            InstancePhase::Ready => "ready",
            InstancePhase::Exited => "exited",
            InstancePhase::Failed => "failed",
            InstancePhase::Terminating => "terminating",
        }
    }
}

/// How a container last exited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExitInfo {
    /// Exit code (137 for SIGKILL).
    pub code: i64,
    /// The kernel's OOM killer ended it (memory limit exceeded).
    pub oom_killed: bool,
    /// When it exited, as Docker reports it (RFC 3339).
    pub finished_at: String,
}

/// Durations of the boot stages of the current container, in milliseconds from the moment the
/// daemon asked Docker to create (or restart) it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootTimings {
    /// Container created.
    pub created_ms: Option<u64>,
    /// Container running.
    pub started_ms: Option<u64>,
    /// First ADB answer.
    pub adb_ms: Option<u64>,
    /// `sys.boot_completed` = 1.
    pub booted_ms: Option<u64>,
    /// Game package in the foreground.
    pub foreground_ms: Option<u64>,
}

/// One instance as the board sees it now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceStatus {
    /// Instance id.
    pub id: String,
    /// Generation of the spec the current container was made from.
    pub generation: u64,
    /// Observed phase.
    pub phase: InstancePhase,
    /// Why the phase is `failed` or `exited`, in words.
    pub reason: Option<String>,
    /// Docker container id, when one exists.
    pub container_id: Option<String>,
    /// Host ports.
    pub ports: InstancePorts,
    /// Restarts of this instance by the daemon since it started.
    pub restarts: u32,
    /// The instance is crash-looping (restarts backed off).
    pub crash_loop: bool,
    /// How the container last exited, if it did.
    pub last_exit: Option<ExitInfo>,
    /// Boot stage timings of the current container.
    pub boot: BootTimings,
    /// The last fast reset applied (see `InstanceSpec::reset_epoch`).
    #[serde(default)]
    pub reset_epoch: u64,
}

/// Kinds of anomaly a board reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyKind {
    /// An instance keeps exiting; restarts are backed off.
    CrashLoop,
    /// Android did not report boot completion within the instance's boot timeout.
    BootTimeout,
    /// A booted instance stopped answering ADB.
    AdbUnresponsive,
    /// The kernel killed the instance for exceeding its memory limit.
    OomKilled,
    /// The container could not be created or started.
    CreateFailed,
    /// The Docker engine does not answer.
    DockerUnreachable,
}

impl AnomalyKind {
    /// The kind's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            AnomalyKind::CrashLoop => "crash_loop",
            AnomalyKind::BootTimeout => "boot_timeout",
            AnomalyKind::AdbUnresponsive => "adb_unresponsive",
            AnomalyKind::OomKilled => "oom_killed",
            AnomalyKind::CreateFailed => "create_failed",
            AnomalyKind::DockerUnreachable => "docker_unreachable",
        }
    }
}

/// Something wrong the board noticed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Anomaly {
    /// What kind.
    pub kind: AnomalyKind,
    /// The instance concerned, if any.
    pub instance: Option<String>,
    /// Details a person can act on.
    pub message: String,
    /// When it was noticed (Unix milliseconds).
    pub at_ms: u64,
}

/// A change the board records in its journal, in order, until it is reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum BoardEvent {
    /// An instance changed phase.
    Phase {
        /// Instance id.
        instance: String,
        /// Generation of its spec.
        generation: u64,
        /// The new phase.
        phase: InstancePhase,
        /// Container id, when one exists.
        container_id: Option<String>,
        /// Why, for `failed` and `exited`.
        reason: Option<String>,
    },
    /// An anomaly was noticed.
    Anomaly {
        /// The anomaly.
        anomaly: Anomaly,
    },
    /// A new desired state was accepted.
    DesiredAccepted {
        /// Its generation.
        generation: u64,
    },
}

/// One journal entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalEntry {
    /// Monotonic sequence number on this board.
    pub seq: u64,
    /// When it was recorded (Unix milliseconds).
    pub at_ms: u64,
    /// What happened.
    pub event: BoardEvent,
}

/// The board's status document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoardStatus {
    /// Board id.
    pub board_id: String,
    /// Generation of the desired state being applied.
    pub desired_generation: u64,
    /// Whether the Docker engine answered on the last pass.
    pub docker_reachable: bool,
    /// Instances, desired or still owned.
    pub instances: Vec<InstanceStatus>,
    /// Recent anomalies, newest last.
    pub anomalies: Vec<Anomaly>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_serialize_as_their_names() {
        for phase in InstancePhase::ALL {
            assert_eq!(serde_json::to_value(phase).unwrap(), serde_json::json!(phase.as_str()));
        }
    }

    #[test]
    fn events_are_tagged() {
        let event = BoardEvent::DesiredAccepted { generation: 3 };
        let json = serde_json::to_string(&event).unwrap();
        assert_eq!(json, r#"{"type":"desired_accepted","generation":3}"#);
        assert_eq!(serde_json::from_str::<BoardEvent>(&json).unwrap(), event);
        let anomaly = BoardEvent::Anomaly {
            anomaly: Anomaly {
                kind: AnomalyKind::OomKilled,
                instance: Some("a".into()),
                message: "m".into(),
                at_ms: 1,
            },
        };
        let json = serde_json::to_string(&anomaly).unwrap();
        assert_eq!(serde_json::from_str::<BoardEvent>(&json).unwrap(), anomaly);
    }
}
