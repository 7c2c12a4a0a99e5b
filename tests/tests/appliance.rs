//! The README's first command, `deploy/appliance-up.sh`, run as a newcomer runs it: the whole
//! appliance comes up on this machine's Docker (a broker, two regions with a controller and two
//! board daemons each, android-sim containers kept warm); the copy-paste commands it prints
//! place a player, read frames from its stream with the session's token, explain the placement
//! and end the session; Ctrl-C stops everything and removes its containers.
//!
//! The script listens on fixed ports (7100-7304, host ports 21100-21499), which is why this
//! test has a binary of its own: `cargo test` runs test binaries one after another.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use e2e::{DockerCleanup, TestDir, board_containers, workspace_root};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

const BOARDS: [&str; 4] = ["east-1-board-1", "east-1-board-2", "west-1-board-1", "west-1-board-2"];
const READY_LINE: &str = "Ctrl-C stops the appliance.";

/// The script in a process group of its own, as a shell runs a foreground command: Ctrl-C is
/// SIGINT to the whole group. Whatever is still running when the test ends is stopped.
struct Appliance {
    child: Child,
    output: PathBuf,
    exit: Option<ExitStatus>,
}

impl Appliance {
    fn start(dir: &TestDir) -> Appliance {
        let output = dir.join("appliance-up.out");
        let out = File::create(&output).expect("create the output file");
        let err = out.try_clone().expect("duplicate the output file");
        let child = Command::new("bash")
            .arg(workspace_root().join("deploy/appliance-up.sh"))
            .env("APPLIANCE_STATE", dir.join("state"))
            .env("APPLIANCE_TIMEOUT", "300")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .expect("start deploy/appliance-up.sh");
        Appliance { child, output, exit: None }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.output).unwrap_or_default()
    }

    fn signal_group(&self, signal: Signal) {
        let _ = kill(Pid::from_raw(-(self.child.id() as i32)), signal);
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    /// Waits until the script printed `line`; panics with its output if it exits or times out.
    fn wait_for_line(&mut self, line: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.output().contains(line) {
            if let Some(status) = self.exited() {
                panic!("appliance-up.sh exited ({status}) before printing {line:?}:\n{}", self.output());
            }
            assert!(Instant::now() < deadline, "no {line:?} within {timeout:?}:\n{}", self.output());
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        if self.exited().is_none() {
            self.signal_group(Signal::SIGTERM);
            if self.wait_exit(Duration::from_secs(30)).is_none() {
                self.signal_group(Signal::SIGKILL);
                let _ = self.child.wait();
            }
        }
    }
}

/// The commands the script printed for the player, in order: every indented block under a
/// `  Something:` heading (place, stream, explain, end, racks).
fn printed_commands(output: &str) -> Vec<String> {
    let mut blocks: Vec<String> = Vec::new();
    let mut in_block = false;
    for line in output.lines() {
        if line.starts_with("    ") {
            if in_block {
                blocks.last_mut().expect("a block is open").push_str(&format!("\n{line}"));
            } else {
                blocks.push(line.to_string());
                in_block = true;
            }
        } else {
            in_block = false;
        }
    }
    blocks
}

fn json_line(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

#[test]
fn the_readme_appliance_command_places_a_player_who_streams_and_ctrl_c_removes_everything() {
    let dir = TestDir::new("appliance-up");
    let mut cleanup = DockerCleanup::default();
    for board in BOARDS {
        cleanup.add_board(board);
    }
    let mut appliance = Appliance::start(&dir);
    appliance.wait_for_line(READY_LINE, Duration::from_secs(600));
    let output = appliance.output();
    for line in ["rack         east-1 (region east): online", "rack         west-1 (region west): online"] {
        assert!(output.contains(line), "missing {line:?}:\n{output}");
    }
    for board in BOARDS {
        assert!(output.contains(&format!("{board}(ready)")), "{board} is not ready:\n{output}");
    }

    // The printed commands exactly as printed, in one shell as a person pastes them.
    let commands = printed_commands(&output);
    assert!(commands.len() >= 4, "expected the place, stream, explain and end commands:\n{output}");
    let script = format!("set -e\n{}\n", commands[..4].join("\n"));
    let run = Command::new("timeout")
        .args(["120", "bash", "-c", &script])
        .output()
        .expect("run the printed commands");
    let said = String::from_utf8_lossy(&run.stdout).to_string();
    assert!(
        run.status.success(),
        "the printed commands failed ({}):\n{said}\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    let lines: Vec<&str> = said.lines().collect();
    // 1. The session: placed at once, in east (the player measured 15 ms to east, 60 to west).
    let session = json_line(lines[0]);
    assert_eq!(session["state"], "active", "{session}");
    assert_eq!(session["region"], "east", "{session}");
    assert_eq!(session["rack"], "east-1", "{session}");
    let id = session["id"].as_str().expect("session id");
    // 2. The stream accepted the session's token and sent frames.
    assert!(lines.iter().any(|l| l.starts_with("OK ")), "no stream handshake:\n{said}");
    let frames = lines.iter().filter(|l| l.starts_with("FRAME ")).count();
    assert!(frames >= 3, "expected frames from the stream:\n{said}");
    // 3. The explanation of that session, then 4. the session ended.
    // (curl prints no newline after a body, so the two may share a line.)
    let rest: String = lines[1..].iter().filter(|l| l.starts_with('{')).copied().collect();
    let json: Vec<Value> = serde_json::Deserializer::from_str(&rest)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{said}"));
    assert_eq!(json.len(), 2, "expected the explanation and the ended session:\n{said}");
    assert_eq!(json[0]["session"], id, "{}", json[0]);
    assert!(json[0]["decisions"].as_array().is_some_and(|d| !d.is_empty()), "{}", json[0]);
    assert_eq!(json[1]["id"], id, "{}", json[1]);
    assert_eq!(json[1]["state"], "ended", "{}", json[1]);
    assert!(BOARDS.iter().any(|b| !board_containers(b).is_empty()), "the appliance runs containers");

    // Ctrl-C: SIGINT to the script's process group, as a terminal sends it.
    appliance.signal_group(Signal::SIGINT);
    let status = appliance.wait_exit(Duration::from_secs(60));
    let output = appliance.output();
    assert!(status.is_some(), "still running a minute after Ctrl-C:\n{output}");
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(130),
        "the exit status of an interrupted command:\n{output}"
    );
    assert!(output.contains("stopped; state kept in"), "{output}");
    for board in BOARDS {
        assert!(board_containers(board).is_empty(), "{board} still has containers after Ctrl-C");
    }
    for port in [7100, 7200, 7201, 7301, 7302, 7303, 7304] {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "port {port} still answers after Ctrl-C"
        );
    }
}
