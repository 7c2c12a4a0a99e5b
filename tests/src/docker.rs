//! The Docker engine as tests see it: through the `docker` CLI, independently of the daemon's
//! own client, so a test checks what the engine really holds.

use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

use crate::process::workspace_root;

/// The instance image every test runs.
pub const SIM_IMAGE: &str = "appliance/android-sim:latest";
/// Label naming the board that owns a container.
pub const LABEL_BOARD: &str = "appliance.board";
/// Label naming the instance a container runs.
pub const LABEL_INSTANCE: &str = "appliance.instance";
/// Label carrying the instance generation.
pub const LABEL_GENERATION: &str = "appliance.generation";

/// Runs `docker ARGS` and returns its stdout; panics with stderr when it fails.
pub fn docker(args: &[&str]) -> String {
    try_docker(args).unwrap_or_else(|err| panic!("docker {} failed: {err}", args.join(" ")))
}

/// Runs `docker ARGS`: stdout on success, stderr on failure.
pub fn try_docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run the docker CLI (is it installed?): {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// `docker inspect` of one container or image; panics when it does not exist.
pub fn docker_inspect(id: &str) -> Value {
    try_docker_inspect(id).unwrap_or_else(|| panic!("docker inspect {id}: no such object"))
}

/// `docker inspect` of one container or image, `None` when it does not exist.
pub fn try_docker_inspect(id: &str) -> Option<Value> {
    let out = try_docker(&["inspect", id]).ok()?;
    let mut list: Vec<Value> = serde_json::from_str(&out).expect("docker inspect prints a JSON array");
    (!list.is_empty()).then(|| list.swap_remove(0))
}

/// Full ids of the containers (running or not) carrying label `key=value`, sorted.
pub fn containers_with_label(key: &str, value: &str) -> Vec<String> {
    let filter = format!("label={key}={value}");
    let out = docker(&["ps", "-a", "-q", "--no-trunc", "--filter", &filter]);
    let mut ids: Vec<String> = out.lines().map(str::to_string).collect();
    ids.sort();
    ids
}

/// Full ids of the containers board `board_id` owns, sorted.
pub fn board_containers(board_id: &str) -> Vec<String> {
    containers_with_label(LABEL_BOARD, board_id)
}

/// Whether a container is running (false when it does not exist).
pub fn is_running(id: &str) -> bool {
    try_docker_inspect(id).is_some_and(|v| v["State"]["Running"] == Value::Bool(true))
}

/// Builds the instance image once per test process with `images/build.sh --no-smoke`
/// (idempotent, about a second when nothing changed), so a fresh machine works.
pub fn ensure_image() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let result = BUILT.get_or_init(|| {
        let script = workspace_root().join("images/build.sh");
        let out = Command::new(&script)
            .arg("--no-smoke")
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} --no-smoke failed:\n{}{}",
                script.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        if try_docker_inspect(SIM_IMAGE).is_none() {
            return Err(format!("{} succeeded but {SIM_IMAGE} is not in the engine", script.display()));
        }
        Ok(())
    });
    if let Err(err) = result {
        panic!("{err}");
    }
}

/// Removes containers when dropped: all those of a board (label `appliance.board=<id>`), and
/// named ones a test started itself. Only ever containers the test created.
#[derive(Default)]
pub struct DockerCleanup {
    boards: Vec<String>,
    names: Vec<String>,
}

impl DockerCleanup {
    /// Cleans up every container of board `board_id`.
    pub fn board(board_id: &str) -> DockerCleanup {
        DockerCleanup { boards: vec![board_id.to_string()], names: vec![] }
    }

    /// Also removes board `board_id`'s containers.
    pub fn add_board(&mut self, board_id: &str) {
        self.boards.push(board_id.to_string());
    }

    /// Also removes the container named `name`.
    pub fn add_name(&mut self, name: &str) {
        self.names.push(name.to_string());
    }

    /// Removes everything now (also done on drop).
    pub fn clean(&self) {
        let mut ids: Vec<String> = self.boards.iter().flat_map(|b| board_containers(b)).collect();
        ids.extend(self.names.iter().cloned());
        if ids.is_empty() {
            return;
        }
        let mut args = vec!["rm", "-f", "-v"];
        args.extend(ids.iter().map(String::as_str));
        // Already-gone names make `docker rm` fail after removing the others: that is fine.
        let _ = try_docker(&args);
    }
}

impl Drop for DockerCleanup {
    fn drop(&mut self) {
        self.clean();
    }
}
