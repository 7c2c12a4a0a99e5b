//! End-to-end: exit codes for the simulated crash, signals and bad configuration; ballast.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Sim;

#[test]
fn simulated_crash_exits_with_code_3() {
    let mut sim = Sim::start(&[("SIM_CRASH_AFTER_SECONDS", "0.5")]);
    let status = sim.wait_exit(Duration::from_secs(5)).expect("exited");
    assert_eq!(status.code(), Some(3));
    assert!(sim.started.elapsed() >= Duration::from_millis(500));
}

#[test]
fn sigterm_and_sigint_exit_0_promptly() {
    for signal in ["-TERM", "-INT"] {
        let mut sim = Sim::start(&[]);
        let sent = Instant::now();
        let kill = Command::new("kill").arg(signal).arg(sim.child.id().to_string()).status().unwrap();
        assert!(kill.success());
        let status = sim.wait_exit(Duration::from_secs(2)).expect("exited within 2 s");
        assert_eq!(status.code(), Some(0), "after {signal}");
        assert!(sent.elapsed() < Duration::from_secs(1), "took {:?}", sent.elapsed());
    }
}

#[test]
fn invalid_config_exits_2_with_a_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_android-sim"))
        .env("SIM_DISPLAY_FPS", "fast")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("SIM_DISPLAY_FPS"), "{stderr}");
}

#[test]
fn ballast_is_resident() {
    let sim = Sim::start(&[("SIM_BALLAST_MIB", "48")]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", sim.child.id())).unwrap();
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    assert!(rss_kib >= 48 * 1024, "VmRSS is {rss_kib} KiB");
}
