//! End-to-end: the stream port's handshake, frames and player counting.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{RawAdb, Sim};

fn hello(port: u16, line: &str) -> (BufReader<TcpStream>, String) {
    let mut sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    sock.write_all(line.as_bytes()).unwrap();
    let mut reader = BufReader::new(sock);
    let mut reply = String::new();
    reader.read_line(&mut reply).unwrap();
    (reader, reply)
}

#[test]
fn refuses_before_boot_then_streams_numbered_frames() {
    let sim = Sim::start(&[("SIM_BOOT_SECONDS", "1.5"), ("SIM_DISPLAY_FPS", "20")]);
    let (_, reply) = hello(sim.stream_port, "HELLO tok\n");
    assert_eq!(reply, "ERR not_booted\n");
    let (_, reply) = hello(sim.stream_port, "HI\n");
    assert_eq!(reply, "ERR bad_request\n");

    std::thread::sleep(Duration::from_millis(1600).saturating_sub(sim.started.elapsed()));
    let (mut reader, reply) = hello(sim.stream_port, "HELLO tok\n");
    assert_eq!(reply, "OK 720x1280@20 dpi=320\n");

    let now_ms = || SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis();
    for expected_seq in 1..=4u64 {
        let mut header = String::new();
        reader.read_line(&mut header).unwrap();
        let parts: Vec<&str> = header.trim_end().split(' ').collect();
        assert_eq!(parts.len(), 4, "frame header {header:?}");
        assert_eq!(parts[0], "FRAME");
        assert_eq!(parts[1].parse::<u64>().unwrap(), expected_seq);
        let ts: u128 = parts[2].parse().unwrap();
        assert!(ts.abs_diff(now_ms()) < 5_000, "timestamp {ts} is not now");
        let len: usize = parts[3].parse().unwrap();
        let mut payload = vec![0u8; len];
        reader.read_exact(&mut payload).unwrap();
    }

    let (mut adb, _) = RawAdb::connect(sim.adb_port);
    assert_eq!(adb.shell("getprop sim.stream.players"), "1\n");
    let frames: u64 = adb.shell("getprop sim.stream.frames_sent").trim().parse().unwrap();
    assert!(frames >= 4);

    drop(reader);
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while adb.shell("getprop sim.stream.players") != "0\n" {
        assert!(std::time::Instant::now() < deadline, "player count never dropped to 0");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn token_from_env_and_setprop() {
    let sim = Sim::start(&[("SIM_BOOT_SECONDS", "0"), ("SIM_STREAM_TOKEN", "s3cret")]);
    assert_eq!(hello(sim.stream_port, "HELLO nope\n").1, "ERR bad_token\n");
    assert!(hello(sim.stream_port, "HELLO s3cret\n").1.starts_with("OK "));

    let (mut adb, _) = RawAdb::connect(sim.adb_port);
    adb.shell("setprop sim.stream.token other");
    assert_eq!(hello(sim.stream_port, "HELLO s3cret\n").1, "ERR bad_token\n");
    assert!(hello(sim.stream_port, "HELLO other\n").1.starts_with("OK "));
    adb.shell("setprop sim.stream.token ''");
    assert!(hello(sim.stream_port, "HELLO anything\n").1.starts_with("OK "));
}

#[test]
fn a_stream_ends_when_the_token_changes_to_another_one() {
    let sim = Sim::start(&[("SIM_BOOT_SECONDS", "0"), ("SIM_STREAM_TOKEN", "first")]);
    let (mut adb, _) = RawAdb::connect(sim.adb_port);
    let (mut first, reply) = hello(sim.stream_port, "HELLO first\n");
    assert!(reply.starts_with("OK "), "{reply:?}");
    // Setting the same token again (as a restarted board daemon does) keeps the stream.
    adb.shell("setprop sim.stream.token first");
    let mut header = String::new();
    first.read_line(&mut header).unwrap();
    assert!(header.starts_with("FRAME "), "{header:?}");

    adb.shell("setprop sim.stream.token second");
    // The previous holder is cut off: its reads reach the end of the stream within a few frames.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let mut buf = [0u8; 4096];
    loop {
        match first.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => assert!(std::time::Instant::now() < deadline, "the old stream kept going"),
        }
    }
    let (mut second, reply) = hello(sim.stream_port, "HELLO second\n");
    assert!(reply.starts_with("OK "), "{reply:?}");
    let mut header = String::new();
    second.read_line(&mut header).unwrap();
    assert!(header.starts_with("FRAME "), "{header:?}");
}
