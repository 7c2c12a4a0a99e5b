//! Debian's `adb` client, on a private server port so that an adb server already running on the
//! default port 5037 (or another test's) is never disturbed. The server is killed on drop.

use std::process::Command;
use std::time::Duration;

use crate::ports::free_port;

/// A private adb server and commands through it.
pub struct AdbServer {
    port: u16,
}

impl AdbServer {
    /// Starts an adb server on a free port. Panics when `adb` is not installed.
    pub fn start() -> AdbServer {
        let server = AdbServer { port: free_port() };
        server.run(&["start-server"]).unwrap_or_else(|e| {
            panic!("cannot start an adb server (install Debian's adb: apt-get install adb): {e}")
        });
        server
    }

    /// The server port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Runs `adb -P <port> ARGS` with a 20 s limit; stdout on success, the reason on failure.
    pub fn run(&self, args: &[&str]) -> Result<String, String> {
        let port = self.port.to_string();
        let out = Command::new("timeout")
            .args(["20", "adb", "-P", &port])
            .args(args)
            .output()
            .map_err(|e| format!("cannot run adb: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(format!(
                "adb {} exited with {}: {stdout}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// `adb connect SERIAL`; Ok once the client reports being connected.
    pub fn connect(&self, serial: &str) -> Result<(), String> {
        let out = self.run(&["connect", serial])?;
        if out.contains("connected to") { Ok(()) } else { Err(out.trim().to_string()) }
    }

    /// `adb -s SERIAL shell COMMAND`, output trimmed.
    pub fn shell(&self, serial: &str, command: &str) -> Result<String, String> {
        self.run(&["-s", serial, "shell", command]).map(|s| s.trim().to_string())
    }

    /// Waits until `adb -s SERIAL wait-for-device` returns (at most `timeout`).
    pub fn wait_for_device(&self, serial: &str, timeout: Duration) -> Result<(), String> {
        let port = self.port.to_string();
        let secs = timeout.as_secs().max(1).to_string();
        let status = Command::new("timeout")
            .args([secs.as_str(), "adb", "-P", &port, "-s", serial, "wait-for-device"])
            .status()
            .map_err(|e| format!("cannot run adb: {e}"))?;
        if status.success() { Ok(()) } else { Err(format!("{serial} not online within {timeout:?}")) }
    }
}

impl Drop for AdbServer {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}
