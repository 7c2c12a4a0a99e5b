//! The spec of one Android instance as a board runs it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Port the instance image serves ADB on inside the container.
pub const CONTAINER_ADB_PORT: u16 = 5555;
/// Port the instance image serves the player stream on inside the container.
pub const CONTAINER_STREAM_PORT: u16 = 8000;
/// Android property holding the token the instance's stream accepts.
pub const STREAM_TOKEN_PROP: &str = "sim.stream.token";
/// Longest stream token: Android property values hold at most 91 bytes.
pub const MAX_STREAM_TOKEN_LEN: usize = 91;

/// One Android instance with concrete resources, as the board must run it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceSpec {
    /// Instance id, unique on the board (DNS-label characters).
    pub id: String,
    /// Image reference, present in the board's Docker engine.
    pub image: String,
    /// Bumped whenever the instance must be recreated; at least 1.
    pub generation: u64,
    /// CPUs the container is pinned to; empty means all of the board's CPUs.
    #[serde(default)]
    pub cpus: Vec<u32>,
    /// Memory limit in MiB (swap is not allowed beyond it).
    pub memory_mib: u64,
    /// Maximum number of processes in the container.
    #[serde(default = "default_pids_limit")]
    pub pids_limit: i64,
    /// Host device nodes passed through at the same path (GPU, encoder, binder).
    #[serde(default)]
    pub devices: Vec<String>,
    /// Host ports the container's ADB and stream ports are published on.
    pub ports: InstancePorts,
    /// Environment variables for the container.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Arguments after the image's entrypoint (Android boot parameters for redroid images).
    #[serde(default)]
    pub args: Vec<String>,
    /// Run privileged; only for images that declare they need it (real redroid does).
    #[serde(default)]
    pub privileged: bool,
    /// How long Android may take to report `sys.boot_completed=1` before it is an anomaly.
    #[serde(default = "default_boot_timeout_s")]
    pub boot_timeout_s: u32,
    /// What "ready" means beyond a booted Android.
    #[serde(default)]
    pub readiness: Readiness,
    /// Raised by the controller to ask for a fast reset (clear the game's data over ADB and
    /// relaunch it) without recreating the container.
    #[serde(default)]
    pub reset_epoch: u64,
    /// The secret the instance's stream accepts (`HELLO <token>`). The daemon applies it over
    /// ADB as the Android property `sim.stream.token` before it reports the instance ready; it
    /// is not part of the container, so a new token never recreates one. `None` leaves the
    /// stream as the image starts it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_token: Option<String>,
}

/// Host ports of one instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstancePorts {
    /// Host port published for ADB (container port 5555).
    pub adb: u16,
    /// Host port published for the player stream (container port 8000).
    pub stream: u16,
}

/// Readiness requirements beyond `sys.boot_completed`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Readiness {
    /// `package/activity` to launch once Android has booted; the instance is ready only when
    /// that package is in the foreground.
    #[serde(default)]
    pub launch: Option<String>,
}

fn default_pids_limit() -> i64 {
    1024
}

fn default_boot_timeout_s() -> u32 {
    120
}

impl InstanceSpec {
    /// The package part of `readiness.launch`, if any.
    pub fn launch_package(&self) -> Option<&str> {
        self.readiness.launch.as_deref().and_then(|l| l.split_once('/')).map(|(p, _)| p)
    }
}

/// Whether `token` can be a stream token: 1-91 characters of `A-Z a-z 0-9 _ -`. The daemon puts
/// it on an ADB shell command line (`setprop`), so nothing a shell would interpret may pass.
pub fn is_valid_stream_token(token: &str) -> bool {
    (1..=MAX_STREAM_TOKEN_LEN).contains(&token.len())
        && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}
