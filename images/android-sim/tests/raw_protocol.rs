//! End-to-end ADB protocol checks with a strict raw client: banner, refusals, chunking under
//! flow control, multiplexing, and isolation from stuck clients.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use android_sim::adb::wire;
use common::{RawAdb, Sim};

#[test]
fn banner_and_refused_services() {
    let sim = Sim::start(&[("SIM_BOOT_SECONDS", "0"), ("SIM_MODEL", "Tab S9")]);
    let (mut adb, banner) = RawAdb::connect(sim.adb_port);
    assert_eq!(
        banner,
        "device::ro.product.name=android_sim;ro.product.model=Tab S9;ro.product.device=android_sim;features="
    );
    assert_eq!(adb.run("sync:"), None);
    assert_eq!(adb.run("reboot:"), None);
    assert_eq!(adb.run("shell,v2,raw:ls"), None);
    assert_eq!(adb.shell("getprop ro.product.model"), "Tab S9\n");
}

#[test]
fn output_is_chunked_under_flow_control_and_streams_interleave() {
    let sim = Sim::start(&[("SIM_BOOT_SECONDS", "0")]);
    // 256-byte payloads force `getprop` into several WRTEs.
    let (mut adb, _) = RawAdb::connect_with(sim.adb_port, 256);
    let expected = adb.shell("getprop");
    assert!(expected.len() > 2 * 256, "getprop is {} bytes", expected.len());

    // Take the first chunk of one stream and hold back its OKAY: the device must not send
    // more on that stream, yet another stream on the same connection must work.
    let (held, held_remote) = adb.open("shell:getprop").unwrap();
    let first = adb.recv().unwrap();
    assert_eq!(first.command, wire::A_WRTE);
    assert_eq!(first.data.len(), 256);
    assert_eq!(adb.shell("echo other"), "other\n");
    adb.send(wire::A_OKAY, held, held_remote, b"");
    let rest = adb.collect(held, held_remote, first.data).unwrap();
    assert_eq!(rest, expected);
}

#[test]
fn stuck_clients_do_not_disturb_others() {
    let sim = Sim::start(&[("SIM_BOOT_SECONDS", "0")]);
    // One client that connects and says nothing, one that opens a stream and never
    // acknowledges, one that floods requests and never reads.
    let _silent = TcpStream::connect(("127.0.0.1", sim.adb_port)).unwrap();
    let (mut stuck, _) = RawAdb::connect_with(sim.adb_port, 256);
    let _ = stuck.open("shell:getprop").unwrap();
    let mut flooder = TcpStream::connect(("127.0.0.1", sim.adb_port)).unwrap();
    flooder.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let open = wire::encode(wire::A_OPEN, 1, 0, b"shell:getprop\0");
    for _ in 0..2000 {
        if flooder.write_all(&open).is_err() {
            break;
        }
    }

    let start = Instant::now();
    let (mut adb, _) = RawAdb::connect(sim.adb_port);
    for _ in 0..20 {
        assert_eq!(adb.shell("echo fine"), "fine\n");
    }
    assert!(start.elapsed() < Duration::from_secs(2), "took {:?}", start.elapsed());
}

#[test]
fn hang_mode_accepts_but_never_answers() {
    let sim = Sim::start(&[("SIM_HANG_ADB", "1")]);
    let mut sock = TcpStream::connect(("127.0.0.1", sim.adb_port)).unwrap();
    sock.write_all(&wire::encode(wire::A_CNXN, 0x0100_0001, 4096, b"host::\0")).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let mut buf = [0u8; 1];
    let err = std::io::Read::read(&mut sock, &mut buf).unwrap_err();
    assert!(matches!(err.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut));
}
