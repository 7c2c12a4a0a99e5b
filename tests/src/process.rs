//! Real binaries as child processes: located next to the test executable, their output kept in a
//! log file, stopped with a real signal, and never left behind (killed on drop).

use std::ffi::OsStr;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The cargo profile directory (`target/debug`, `target/release`) the running executable was
/// built into: test executables live in `<profile>/deps`, binaries in `<profile>` itself.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("cannot locate the running executable");
    exe.ancestors()
        .skip(1)
        .find(|dir| dir.file_name() != Some(OsStr::new("deps")))
        .expect("the running executable has no parent directory")
        .to_path_buf()
}

/// The cargo target directory (the parent of [`profile_dir`]).
pub fn target_dir() -> PathBuf {
    profile_dir().parent().expect("the profile directory has a parent").to_path_buf()
}

/// The path of workspace binary `name` built in the same profile as the running executable.
/// Panics with the command to run when it has not been built.
pub fn binary(name: &str) -> PathBuf {
    let path = profile_dir().join(name);
    assert!(
        path.is_file(),
        "binary {name} not found at {}: run scripts/test.sh or cargo build --workspace --bins first",
        path.display()
    );
    path
}

/// The path of workspace binary `name` in the given profile (`debug`, `release`), if built.
pub fn binary_in_profile(name: &str, profile: &str) -> Option<PathBuf> {
    let path = target_dir().join(profile).join(name);
    path.is_file().then_some(path)
}

/// The workspace root (the parent of the target directory, or `CARGO_MANIFEST_DIR/..`).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().expect("the e2e crate lives inside the workspace").to_path_buf()
}

/// A child process whose stdout and stderr go to `<log_dir>/<name>.log`. Dropping it SIGKILLs
/// the process if it still runs; if the thread is panicking, the end of its log is printed so a
/// failing test shows what the process said.
pub struct Process {
    name: String,
    child: Child,
    log_path: PathBuf,
    exit: Option<ExitStatus>,
}

impl Process {
    /// Starts `program` with `args` and extra environment `env`; the log file is appended to, so
    /// a restarted process with the same name keeps one log.
    pub fn spawn<I, S>(name: &str, program: &Path, args: I, env: &[(&str, &str)], log_dir: &Path) -> Process
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let log_path = log_dir.join(format!("{name}.log"));
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap_or_else(|e| panic!("cannot open log file {}: {e}", log_path.display()));
        let log_err = log.try_clone().expect("cannot duplicate the log file handle");
        let mut command = Command::new(program);
        command.args(args).stdin(Stdio::null()).stdout(log).stderr(log_err);
        for (key, value) in env {
            command.env(key, value);
        }
        let child =
            command.spawn().unwrap_or_else(|e| panic!("cannot start {name} ({}): {e}", program.display()));
        Process { name: name.to_string(), child, log_path, exit: None }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where its output goes.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything it has written so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        if self.exit.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.exit = Some(status);
                false
            }
            Ok(None) => true,
            Err(_) => false,
        }
    }

    /// Sends `signal` to the process (nothing if it has already exited).
    pub fn signal(&mut self, signal: Signal) {
        if self.is_running() {
            // ESRCH means it died between the check and the signal: nothing left to do.
            let _ = kill(Pid::from_raw(self.child.id() as i32), signal);
        }
    }

    /// SIGKILLs the process and reaps it.
    pub fn kill(&mut self) -> ExitStatus {
        self.signal(Signal::SIGKILL);
        self.wait(Duration::from_secs(10)).unwrap_or_else(|| panic!("{} survived SIGKILL", self.name))
    }

    /// SIGTERMs the process and waits up to `grace` for it to exit; SIGKILLs it after that.
    /// Returns its exit status and whether it stopped on its own.
    pub fn terminate(&mut self, grace: Duration) -> (ExitStatus, bool) {
        self.signal(Signal::SIGTERM);
        match self.wait(grace) {
            Some(status) => (status, true),
            None => (self.kill(), false),
        }
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.is_running() {
                return self.exit;
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.is_running() {
            let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(60)..];
            eprintln!(
                "---- last {} lines of {} ({}) ----\n{}\n---- end of {} ----",
                tail.len(),
                self.name,
                self.log_path.display(),
                tail.join("\n"),
                self.name
            );
        }
    }
}
