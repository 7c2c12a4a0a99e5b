//! Helpers shared by the end-to-end tests: start the real binary on free ports, drive
//! Debian's `adb` on a private server port, and a minimal raw ADB client.

#![allow(dead_code)] // Each test file uses a different subset.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use android_sim::adb::wire;

/// A running simulator; killed when dropped.
pub struct Sim {
    pub child: Child,
    pub adb_port: u16,
    pub stream_port: u16,
    pub started: Instant,
}

impl Sim {
    /// Starts the binary with ports 0 (the kernel picks free ones) plus `env`, and waits
    /// until both listening lines appear on stdout.
    pub fn start(env: &[(&str, &str)]) -> Sim {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_android-sim"));
        cmd.env("SIM_ADB_PORT", "0")
            .env("SIM_STREAM_PORT", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let started = Instant::now();
        let mut child = cmd.spawn().expect("spawn android-sim");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            // Keep draining after the ports are known, so the simulator never blocks on a
            // full stdout pipe; lines nobody waits for any more are just dropped.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let port_of = |line: &str| line.rsplit(':').next().unwrap().parse::<u16>().unwrap();
        let (mut adb_port, mut stream_port) = (None, None);
        while adb_port.is_none() || stream_port.is_none() {
            let line = lines
                .recv_timeout(Duration::from_secs(10))
                .expect("android-sim printed its listening ports within 10 s");
            if line.contains("adb listening on") {
                adb_port = Some(port_of(&line));
            } else if line.contains("stream listening on") {
                stream_port = Some(port_of(&line));
            }
        }
        Sim { child, adb_port: adb_port.unwrap(), stream_port: stream_port.unwrap(), started }
    }

    pub fn serial(&self) -> String {
        format!("127.0.0.1:{}", self.adb_port)
    }

    /// Waits for the process to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        wait_child(&mut self.child, limit)
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn wait_child(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A free TCP port (bound and released; good enough for a private adb server port).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn scratch_path(tag: &str) -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("android-sim-test-{}-{tag}-{n}", std::process::id()))
}

/// Debian's adb with its own server on a private port and its own HOME (so concurrent tests
/// never share a server or race on creating `~/.android/adbkey`). The server is killed on
/// drop.
pub struct Adb {
    port: u16,
    home: PathBuf,
}

const ADB: &str = "/usr/bin/adb";

impl Adb {
    pub fn start() -> Adb {
        assert!(
            Path::new(ADB).exists(),
            "{ADB} is missing: install Debian's adb (apt-get install adb); these tests need the real client"
        );
        let home = scratch_path("home");
        std::fs::create_dir_all(&home).unwrap();
        let adb = Adb { port: free_port(), home };
        let out = adb.run(&["start-server"]);
        assert!(out.ok, "adb start-server failed: {}", out.stderr);
        adb
    }

    /// Runs `adb -P <port> ARGS`. Output goes to files, not pipes: if adb forks a server it
    /// would otherwise hold our pipe open and we would wait for it forever.
    pub fn run(&self, args: &[&str]) -> AdbOutput {
        let out_path = scratch_path("out");
        let err_path = scratch_path("err");
        let port = self.port.to_string();
        let mut child = Command::new(ADB)
            .arg("-P")
            .arg(&port)
            .args(args)
            .env("HOME", &self.home)
            .stdin(Stdio::null())
            .stdout(File::create(&out_path).unwrap())
            .stderr(File::create(&err_path).unwrap())
            .spawn()
            .expect("spawn adb");
        let status = wait_child(&mut child, Duration::from_secs(30));
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let read = |p: &Path| {
            let s = std::fs::read_to_string(p).unwrap_or_default();
            let _ = std::fs::remove_file(p);
            s
        };
        let (stdout, stderr) = (read(&out_path), read(&err_path));
        AdbOutput {
            ok: status.is_some_and(|s| s.success()),
            stdout,
            stderr: if status.is_none() {
                format!("adb {args:?} timed out after 30 s; stderr: {stderr}")
            } else {
                stderr
            },
        }
    }

    /// `adb connect` then `wait-for-device` for the simulator.
    pub fn connect(&self, sim: &Sim) {
        let serial = sim.serial();
        let out = self.run(&["connect", &serial]);
        assert!(out.stdout.contains("connected to"), "adb connect {serial}: {} {}", out.stdout, out.stderr);
        let out = self.run(&["-s", &serial, "wait-for-device"]);
        assert!(out.ok, "adb wait-for-device: {}", out.stderr);
    }

    /// `adb -s SERIAL shell COMMAND`, asserting success; returns stdout.
    pub fn shell(&self, sim: &Sim, command: &str) -> String {
        let out = self.run(&["-s", &sim.serial(), "shell", command]);
        assert!(out.ok, "adb shell {command:?} failed: {}", out.stderr);
        out.stdout
    }
}

impl Drop for Adb {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

pub struct AdbOutput {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// A minimal host-side ADB client over raw TCP, built on the crate's own framing. It checks
/// every invariant a strict host would: magic, checksum, ids, one WRTE in flight.
pub struct RawAdb {
    sock: TcpStream,
    next_id: u32,
}

pub struct Message {
    pub command: u32,
    pub arg0: u32,
    pub arg1: u32,
    pub data: Vec<u8>,
}

impl RawAdb {
    pub fn connect(port: u16) -> (RawAdb, String) {
        RawAdb::connect_with(port, 4096)
    }

    /// Connects announcing `max_payload` as the host's limit.
    pub fn connect_with(port: u16, max_payload: u32) -> (RawAdb, String) {
        let sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut adb = RawAdb { sock, next_id: 1 };
        adb.send(wire::A_CNXN, 0x0100_0000, max_payload, b"host::\0");
        let reply = adb.recv().expect("CNXN reply");
        assert_eq!(reply.command, wire::A_CNXN);
        assert_eq!(reply.arg0, wire::VERSION);
        (adb, String::from_utf8(reply.data).unwrap())
    }

    pub fn send(&mut self, command: u32, arg0: u32, arg1: u32, data: &[u8]) {
        self.sock.write_all(&wire::encode(command, arg0, arg1, data)).unwrap();
    }

    pub fn recv(&mut self) -> std::io::Result<Message> {
        let mut raw = [0u8; wire::HEADER_LEN];
        self.sock.read_exact(&mut raw)?;
        let h = wire::decode_header(&raw).expect("well-formed header");
        let mut data = vec![0; h.data_length as usize];
        self.sock.read_exact(&mut data)?;
        assert_eq!(h.data_check, wire::checksum(&data), "checksum");
        Ok(Message { command: h.command, arg0: h.arg0, arg1: h.arg1, data })
    }

    /// Sends OPEN for `service`; returns (our id, the device's id), or `None` if refused.
    pub fn open(&mut self, service: &str) -> Option<(u32, u32)> {
        let id = self.next_id;
        self.next_id += 1;
        self.send(wire::A_OPEN, id, 0, format!("{service}\0").as_bytes());
        let first = self.recv().unwrap();
        if first.command == wire::A_CLSE {
            assert_eq!((first.arg0, first.arg1), (0, id));
            return None;
        }
        assert_eq!(first.command, wire::A_OKAY);
        assert_eq!(first.arg1, id);
        assert_ne!(first.arg0, 0);
        Some((id, first.arg0))
    }

    /// Opens `service`, collects everything written until CLSE; `None` if refused.
    pub fn run(&mut self, service: &str) -> Option<String> {
        let (id, remote) = self.open(service)?;
        self.collect(id, remote, Vec::new())
    }

    /// Acknowledges and collects WRTEs on an open stream until CLSE.
    pub fn collect(&mut self, id: u32, remote: u32, mut out: Vec<u8>) -> Option<String> {
        loop {
            let m = self.recv().unwrap();
            assert_eq!((m.arg0, m.arg1), (remote, id), "ids of {}", wire::command_name(m.command));
            match m.command {
                wire::A_WRTE => {
                    out.extend(m.data);
                    self.send(wire::A_OKAY, id, remote, b"");
                }
                wire::A_CLSE => {
                    self.send(wire::A_CLSE, id, remote, b"");
                    return Some(String::from_utf8(out).unwrap());
                }
                other => panic!("unexpected {}", wire::command_name(other)),
            }
        }
    }

    pub fn shell(&mut self, command: &str) -> String {
        self.run(&format!("shell:{command}")).expect("shell service")
    }
}
