//! Readiness over ADB: one probe task per running container. It waits for Android to report
//! `sys.boot_completed=1`, applies the spec's stream token (`setprop sim.stream.token`, read
//! back with `getprop`), optionally launches the game and waits for it to be in the foreground,
//! then keeps checking that ADB still answers. It only reports; the agent decides.

use std::net::SocketAddr;
use std::time::Duration;

use api::STREAM_TOKEN_PROP;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::adb;

/// How long one ADB command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Poll interval while booting.
const BOOT_POLL: Duration = Duration::from_millis(200);
/// Poll interval once ready.
const LIVENESS_POLL: Duration = Duration::from_secs(5);
/// Consecutive liveness failures that make an instance unresponsive.
const LIVENESS_FAILURES: u32 = 3;

/// What a probe noticed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeEvent {
    /// ADB answered for the first time.
    AdbAnswered,
    /// `sys.boot_completed` is 1 and the stream token, if the spec has one, is applied.
    Booted,
    /// The game package is in the foreground.
    Foreground,
    /// Not booted (or the game not in the foreground) within the boot timeout.
    BootTimeout { detail: String },
    /// A ready instance stopped answering ADB.
    Unresponsive { detail: String },
    /// A previously unresponsive or timed-out instance is ready again.
    Recovered,
}

/// A report from the probe of one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeReport {
    pub instance: String,
    pub container_id: String,
    /// The probe's [`Probe::run`], so reports of a probe that was replaced are told apart.
    pub run: u64,
    pub event: ProbeEvent,
}

/// What to probe.
#[derive(Debug, Clone)]
pub struct Probe {
    pub instance: String,
    pub container_id: String,
    pub adb: SocketAddr,
    pub boot_timeout: Duration,
    /// `package/activity` to launch once booted.
    pub launch: Option<String>,
    /// The token the stream must accept, applied once Android has booted.
    pub stream_token: Option<String>,
    /// Number of this probe among the agent's probes; reports carry it.
    pub run: u64,
}

impl Probe {
    fn report(&self, tx: &mpsc::UnboundedSender<ProbeReport>, event: ProbeEvent) -> bool {
        tx.send(ProbeReport {
            instance: self.instance.clone(),
            container_id: self.container_id.clone(),
            run: self.run,
            event,
        })
        .is_ok()
    }

    async fn shell(&self, command: &str) -> Result<String, adb::AdbError> {
        adb::shell(self.adb, command, COMMAND_TIMEOUT).await
    }
}

/// Runs the probe until the receiver is gone (the agent aborts the task when the container
/// changes).
pub async fn run(probe: Probe, tx: mpsc::UnboundedSender<ProbeReport>) {
    let deadline = Instant::now() + probe.boot_timeout;
    let mut timed_out = false;
    let mut answered = false;
    let mut last_error;

    // Stage 1: Android boot.
    loop {
        match probe.shell("getprop sys.boot_completed").await {
            Ok(value) => {
                if !answered {
                    answered = true;
                    if !probe.report(&tx, ProbeEvent::AdbAnswered) {
                        return;
                    }
                }
                if value.trim() == "1" {
                    break;
                }
                last_error = format!("sys.boot_completed is {:?}", value.trim());
            }
            Err(err) => last_error = err.to_string(),
        }
        if !timed_out && Instant::now() >= deadline {
            timed_out = true;
            let detail = format!("Android did not boot within {:?}: {last_error}", probe.boot_timeout);
            if !probe.report(&tx, ProbeEvent::BootTimeout { detail }) {
                return;
            }
        }
        // After a timeout keep looking, slower, so a late boot is still noticed.
        tokio::time::sleep(if timed_out { LIVENESS_POLL } else { BOOT_POLL }).await;
    }

    // Stage 2: the stream token, before anything reports the instance usable, so a ready
    // instance only ever streams to the holder of its current token.
    if let Some(token) = &probe.stream_token {
        loop {
            match apply_stream_token(&probe, token).await {
                Ok(()) => break,
                Err(err) => last_error = err,
            }
            if !timed_out && Instant::now() >= deadline {
                timed_out = true;
                let detail =
                    format!("stream token not applied within {:?}: {last_error}", probe.boot_timeout);
                if !probe.report(&tx, ProbeEvent::BootTimeout { detail }) {
                    return;
                }
            }
            tokio::time::sleep(if timed_out { LIVENESS_POLL } else { BOOT_POLL }).await;
        }
    }
    if !probe.report(&tx, ProbeEvent::Booted) {
        return;
    }

    // Stage 3: the game in the foreground, when asked for.
    if let Some(launch) = &probe.launch {
        let package = launch.split_once('/').map(|(p, _)| p).unwrap_or(launch);
        let mut launched = false;
        loop {
            if !launched {
                launched = probe.shell(&format!("am start -n {launch}")).await.is_ok();
            }
            match probe.shell("dumpsys activity activities").await {
                Ok(out) if foreground_package(&out) == Some(package) => break,
                Ok(out) => last_error = format!("foreground is {:?}", foreground_package(&out)),
                Err(err) => last_error = err.to_string(),
            }
            if !timed_out && Instant::now() >= deadline {
                timed_out = true;
                let detail =
                    format!("{package} not in the foreground within {:?}: {last_error}", probe.boot_timeout);
                if !probe.report(&tx, ProbeEvent::BootTimeout { detail }) {
                    return;
                }
            }
            tokio::time::sleep(if timed_out { LIVENESS_POLL } else { BOOT_POLL }).await;
        }
        if !probe.report(&tx, ProbeEvent::Foreground) {
            return;
        }
    }
    if timed_out && !probe.report(&tx, ProbeEvent::Recovered) {
        return;
    }

    // Stage 4: liveness.
    let mut failures = 0;
    loop {
        tokio::time::sleep(LIVENESS_POLL).await;
        match probe.shell("getprop sys.boot_completed").await {
            Ok(v) if v.trim() == "1" => {
                if failures >= LIVENESS_FAILURES && !probe.report(&tx, ProbeEvent::Recovered) {
                    return;
                }
                failures = 0;
            }
            outcome => {
                failures += 1;
                if failures == LIVENESS_FAILURES {
                    let detail = match outcome {
                        Ok(v) => format!("sys.boot_completed became {:?}", v.trim()),
                        Err(err) => err.to_string(),
                    };
                    if !probe.report(&tx, ProbeEvent::Unresponsive { detail }) {
                        return;
                    }
                }
            }
        }
        if tx.is_closed() {
            return;
        }
    }
}

/// Sets the stream token and reads it back (`setprop` is idempotent, so applying it again after
/// a daemon restart is harmless). Errors name neither the token nor what the property held: both
/// are secrets, and the error becomes an anomaly that travels to the controller's event log.
async fn apply_stream_token(probe: &Probe, token: &str) -> Result<(), String> {
    // The token is checked to be [A-Za-z0-9_-] before any desired state is accepted, so it is
    // one plain word on this shell line. What `setprop` prints on failure repeats the value, so
    // only the read-back decides.
    probe.shell(&format!("setprop {STREAM_TOKEN_PROP} {token}")).await.map_err(|e| e.to_string())?;
    let held = probe.shell(&format!("getprop {STREAM_TOKEN_PROP}")).await.map_err(|e| e.to_string())?;
    if held.trim_end() == token {
        Ok(())
    } else {
        Err(format!("{STREAM_TOKEN_PROP} does not hold the spec's token after setprop"))
    }
}

/// The package of the resumed activity in `dumpsys activity activities` output.
pub fn foreground_package(dumpsys: &str) -> Option<&str> {
    let line = dumpsys.lines().find(|l| l.contains("mResumedActivity") || l.contains("ResumedActivity:"))?;
    // "  mResumedActivity: ActivityRecord{1a2b u0 com.example.game/.Main t12}"
    line.split_whitespace().find(|w| w.contains('/')).and_then(|w| w.split('/').next())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_foreground_package_is_read_from_dumpsys() {
        let out = "ACTIVITY MANAGER ACTIVITIES\n  mResumedActivity: ActivityRecord{1a2b3c u0 com.example.game/.MainActivity t12}\n";
        assert_eq!(foreground_package(out), Some("com.example.game"));
        assert_eq!(foreground_package("nothing resumed\n"), None);
    }
}
