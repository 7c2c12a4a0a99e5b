//! End-to-end: Debian's real `adb` client against the simulator binary.

mod common;

use std::time::Duration;

use common::{Adb, Sim};

#[test]
fn real_adb_sees_boot_props_and_activities() {
    // The adb server starts first so the first getprop lands well inside the boot delay.
    let adb = Adb::start();
    let sim = Sim::start(&[("SIM_BOOT_SECONDS", "1.5"), ("SIM_MODEL", "SimPhone")]);
    adb.connect(&sim);

    let before = adb.shell(&sim, "getprop sys.boot_completed");
    assert_eq!(
        before,
        "0\n",
        "boot_completed must be 0 before 1.5 s (asked after {:?})",
        sim.started.elapsed()
    );
    // The simulator's boot clock starts when its process does, a little after `sim.started`:
    // poll for the flip rather than sleeping to an exact instant.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let value = adb.shell(&sim, "getprop sys.boot_completed");
        if value == "1\n" {
            break;
        }
        assert_eq!(value, "0\n");
        assert!(std::time::Instant::now() < deadline, "boot_completed never became 1");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(sim.started.elapsed() >= Duration::from_millis(1500), "booted before its 1.5 s delay");
    assert_eq!(adb.shell(&sim, "getprop ro.product.model"), "SimPhone\n");

    let devices = adb.run(&["devices"]).stdout;
    assert!(devices.contains(&format!("{}\tdevice", sim.serial())), "{devices}");

    assert_eq!(
        adb.shell(&sim, "am start -W -n com.example.game/.MainActivity"),
        "Starting: Intent { cmp=com.example.game/.MainActivity }\n"
    );
    assert_eq!(
        adb.shell(&sim, "dumpsys window | grep mCurrentFocus"),
        "  mCurrentFocus=Window{1a2b3c u0 com.example.game/.MainActivity}\n"
    );
    assert!(
        adb.shell(&sim, "dumpsys activity activities")
            .contains("  mResumedActivity: ActivityRecord{1a2b3c u0 com.example.game/.MainActivity t12}\n")
    );
    assert_eq!(adb.shell(&sim, "pm clear com.example.game"), "Success\n");
    assert!(!adb.shell(&sim, "dumpsys activity activities").contains("mResumedActivity"));
    assert_eq!(adb.shell(&sim, "nosuchcommand"), "/system/bin/sh: nosuchcommand: not found\n");

    // Services other than shell are refused, and the connection survives that.
    let pull = adb.run(&["-s", &sim.serial(), "pull", "/sdcard/x", "/dev/null"]);
    assert!(!pull.ok);
    assert_eq!(adb.shell(&sim, "wm size"), "Physical size: 720x1280\n");
}

#[test]
fn eight_concurrent_adb_shells_all_succeed() {
    let adb = Adb::start();
    let sim = Sim::start(&[("SIM_BOOT_SECONDS", "0")]);
    adb.connect(&sim);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let (adb, sim) = (&adb, &sim);
                scope.spawn(move || {
                    let command = format!("echo shell-{i} && getprop ro.build.version.sdk");
                    (i, adb.shell(sim, &command))
                })
            })
            .collect();
        for handle in handles {
            let (i, out) = handle.join().unwrap();
            assert_eq!(out, format!("shell-{i}\n33\n"));
        }
    });
}
