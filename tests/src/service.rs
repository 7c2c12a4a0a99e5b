//! A service binary (the array controller, the session broker) on a fixed address, data
//! directory and flags: SIGKILLed and started again exactly as it was, its log kept across runs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::process::{Process, binary};
use crate::wait::wait_until;

/// A restartable service; it answers `GET /healthz` on `addr` once started.
pub struct Service {
    pub process: Option<Process>,
    pub addr: SocketAddr,
    name: String,
    binary: String,
    rust_log: String,
    args: Vec<String>,
    log_dir: PathBuf,
}

impl Service {
    /// A service `name` (also its log file's name) running workspace binary `binary` with
    /// `args` and `RUST_LOG=rust_log`; not started yet.
    pub fn new(
        name: &str,
        binary: &str,
        rust_log: &str,
        addr: SocketAddr,
        args: Vec<String>,
        log_dir: &Path,
    ) -> Service {
        Service {
            process: None,
            addr,
            name: name.to_string(),
            binary: binary.to_string(),
            rust_log: rust_log.to_string(),
            args,
            log_dir: log_dir.to_path_buf(),
        }
    }

    /// Starts the service (again: same flags, data and port) and waits until it answers.
    pub async fn restart(&mut self) {
        assert!(self.process.as_mut().is_none_or(|p| !p.is_running()), "the {} still runs", self.name);
        let mut process = Process::spawn(
            &self.name,
            &binary(&self.binary),
            &self.args,
            &[("RUST_LOG", self.rust_log.as_str())],
            &self.log_dir,
        );
        let http =
            reqwest::Client::builder().timeout(Duration::from_secs(2)).build().expect("an HTTP client");
        let url = format!("{}/healthz", self.url());
        let what = format!("the {} to answer", self.name);
        wait_until(Duration::from_secs(20), &what, || {
            let running = process.is_running();
            let (http, url, name) = (http.clone(), url.clone(), self.name.clone());
            async move {
                assert!(running, "the {name} exited during start-up");
                let response = http.get(&url).send().await.map_err(|e| e.to_string())?;
                if response.status().is_success() { Ok(()) } else { Err(response.status().to_string()) }
            }
        })
        .await;
        self.process = Some(process);
    }

    /// SIGKILLs the service.
    pub fn kill(&mut self) {
        if let Some(process) = self.process.as_mut() {
            process.kill();
        }
    }

    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Everything it has logged (all its runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_dir.join(format!("{}.log", self.name))).unwrap_or_default()
    }
}
