//! Benchmark of the board daemon (issue 2, "Figures to report"). Not a test: it prints its
//! figures and writes them as JSON.
//!
//! 1. Orchestration overhead. For N instances (default 8) of android-sim with the same limits
//!    and host ports, in each round (default 3), measured in the same run and in rotating order:
//!    - daemon: from just before `PUT /v1/desired` to the Docker engine's `start` event of the
//!      N-th container (event timestamps come from the engine, on the same clock);
//!    - CLI, sequential: from just before the first `docker run -d` to the N-th `start` event;
//!    - CLI, parallel: N `docker run -d` launched at once, same measure.
//!
//!    The medians and the ratios daemon / CLI are reported (goal: at most 1.10). The time from the
//!    PUT to all N instances `ready` (Android booted, seen over ADB) is reported for information.
//! 2. Resident memory (VmRSS) of the daemon managing N ready instances, and its idle CPU over
//!    60 s (utime + stime from /proc/<pid>/stat, as a percentage of one core). Goals: under
//!    20 MiB and under 0.5 %.
//!
//! Uses `target/release/board-daemon` when it exists (`cargo build --release -p board-daemon`),
//! else the debug build, and says which.
//!
//! ```text
//! cargo run --release -p e2e --bin bench_board_daemon -- [--out PATH] [--rounds N]
//!     [--instances N] [--idle-seconds S]
//! ```

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use api::{DesiredState, InstancePhase, InstanceSpec};
use e2e::board::BoardConfig;
use e2e::{
    BoardDaemon, DockerCleanup, SIM_IMAGE, TestBoard, binary_in_profile, board_containers, docker,
    ensure_image, try_docker, wait_until, wait_until_every,
};
use serde_json::json;

struct Args {
    out: PathBuf,
    rounds: usize,
    instances: usize,
    idle_seconds: u64,
}

fn parse_args() -> Args {
    let mut args =
        Args { out: "bench-results/board_daemon.json".into(), rounds: 3, instances: 8, idle_seconds: 60 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        match flag.as_str() {
            "--out" => args.out = value().into(),
            "--rounds" => args.rounds = value().parse().unwrap_or_else(|_| usage("--rounds takes a number")),
            "--instances" => {
                args.instances = value().parse().unwrap_or_else(|_| usage("--instances takes a number"))
            }
            "--idle-seconds" => {
                args.idle_seconds = value().parse().unwrap_or_else(|_| usage("--idle-seconds takes a number"))
            }
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    if args.rounds == 0 || args.instances == 0 || args.instances > 16 {
        usage("--rounds must be at least 1 and --instances 1-16");
    }
    args
}

fn usage(problem: &str) -> ! {
    if !problem.is_empty() {
        eprintln!("bench_board_daemon: {problem}");
    }
    eprintln!(
        "usage: bench_board_daemon [--out PATH (bench-results/board_daemon.json)] [--rounds N (3)] \
         [--instances N (8)] [--idle-seconds S (60)]"
    );
    std::process::exit(if problem.is_empty() { 0 } else { 2 });
}

fn wall_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_nanos()
}

fn ms(ns: u128) -> f64 {
    ns as f64 / 1e6
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 }
}

/// `docker events` for containers with a label, from a wall-clock time on: the engine's
/// timestamp of each `start`, so a late connection of the CLI does not change the figure.
struct StartEvents {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl StartEvents {
    fn watch(label: &str, since_ns: u128) -> StartEvents {
        let since = format!("{}.{:09}", since_ns / 1_000_000_000, since_ns % 1_000_000_000);
        let mut child = Command::new("docker")
            .args(["events", "--since", &since, "--filter", &format!("label={label}")])
            .args(["--filter", "type=container", "--filter", "event=start"])
            .args(["--format", "{{.ID}} {{.TimeNano}}"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot run docker events");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        StartEvents { child, lines }
    }

    /// The engine time (ns) of the start of the `n`-th distinct container.
    fn nth_start(&mut self, n: usize, timeout: Duration) -> u128 {
        let deadline = Instant::now() + timeout;
        let mut seen = BTreeSet::new();
        let mut last = 0;
        while seen.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).unwrap_or_else(|_| {
                panic!("only {} of {n} containers started within {timeout:?}", seen.len())
            });
            let (id, time) = line.split_once(' ').expect("'{{.ID}} {{.TimeNano}}'");
            if seen.insert(id.to_string()) {
                last = last.max(time.trim().parse::<u128>().expect("TimeNano is a number"));
            }
        }
        last
    }
}

impl Drop for StartEvents {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fields drop in order: the daemon is killed before the board's containers are removed.
struct Bench {
    daemon: BoardDaemon,
    board: TestBoard,
    specs: Vec<InstanceSpec>,
    generation: u64,
    cli_label: String,
}

impl Bench {
    fn cli_name(&self, i: usize) -> String {
        format!("bench-cli-{}-{i}", std::process::id())
    }

    /// `docker run -d` arguments equivalent to what the daemon creates for `spec`.
    fn cli_args(&self, i: usize, spec: &InstanceSpec, board_cpus: &[u32]) -> Vec<String> {
        let cpus = if spec.cpus.is_empty() { board_cpus } else { &spec.cpus };
        let mut args: Vec<String> = vec!["run".into(), "-d".into(), "--name".into(), self.cli_name(i)];
        let memory = format!("{}m", spec.memory_mib);
        args.extend(
            [
                "--hostname",
                &spec.id,
                "--label",
                &self.cli_label,
                "--label",
                &format!("appliance.instance={}", spec.id),
                "--cpuset-cpus",
                &api::facts::cpuset_string(cpus),
                "--memory",
                &memory,
                "--memory-swap",
                &memory,
                "--pids-limit",
                &spec.pids_limit.to_string(),
                "-p",
                &format!("0.0.0.0:{}:5555", spec.ports.adb),
                "-p",
                &format!("0.0.0.0:{}:8000", spec.ports.stream),
                "--restart",
                "no",
                "--cap-drop",
                "ALL",
                "--security-opt",
                "no-new-privileges",
            ]
            .map(String::from),
        );
        for (k, v) in &spec.env {
            args.extend(["-e".to_string(), format!("{k}={v}")]);
        }
        args.push(SIM_IMAGE.into());
        args
    }

    fn remove_cli(&self) {
        let names: Vec<String> = (0..self.specs.len()).map(|i| self.cli_name(i)).collect();
        let mut args = vec!["rm", "-f", "-v"];
        args.extend(names.iter().map(String::as_str));
        let _ = try_docker(&args);
    }

    /// Daemon: PUT -> N-th container start (ms), and PUT -> all ready (ms).
    async fn daemon_round(&mut self) -> (f64, f64) {
        self.generation += 1;
        let desired = DesiredState { generation: self.generation, instances: self.specs.clone() };
        let label = format!("appliance.board={}", self.board.id);
        let t0 = wall_ns();
        let started = Instant::now();
        let mut events = StartEvents::watch(&label, t0);
        self.daemon.client.put_desired(&desired).await.expect("the daemon accepts the desired state");
        let running = events.nth_start(self.specs.len(), Duration::from_secs(120));
        let client = &self.daemon.client;
        let n = self.specs.len();
        let ready =
            wait_until_every(Duration::from_secs(120), Duration::from_millis(20), "all ready", || async {
                let status = client.try_status().await?;
                let ready = status.instances.iter().filter(|i| i.phase == InstancePhase::Ready).count();
                if ready == n { Ok(started.elapsed()) } else { Err(format!("{ready} of {n} ready")) }
            })
            .await;
        // Back to no instances for the next measurement.
        self.generation += 1;
        let empty = DesiredState { generation: self.generation, instances: vec![] };
        self.daemon.client.put_desired(&empty).await.expect("the daemon accepts the empty state");
        let board = self.board.id.clone();
        wait_until(Duration::from_secs(60), "the daemon's containers removed", || {
            let left = board_containers(&board).len();
            async move { if left == 0 { Ok(()) } else { Err(left) } }
        })
        .await;
        (ms(running.saturating_sub(t0)), ready.as_secs_f64() * 1000.0)
    }

    /// CLI: first `docker run` -> N-th container start (ms), and -> the last command's return.
    fn cli_round(&self, parallel: bool, board_cpus: &[u32]) -> (f64, f64) {
        self.remove_cli();
        let all_args: Vec<Vec<String>> =
            self.specs.iter().enumerate().map(|(i, s)| self.cli_args(i, s, board_cpus)).collect();
        let t0 = wall_ns();
        let started = Instant::now();
        let mut events = StartEvents::watch(&self.cli_label, t0);
        if parallel {
            let children: Vec<Child> = all_args
                .iter()
                .map(|args| {
                    Command::new("docker").args(args).stdout(Stdio::null()).spawn().expect("docker run")
                })
                .collect();
            for mut child in children {
                assert!(child.wait().expect("docker run").success(), "docker run failed");
            }
        } else {
            for args in &all_args {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                docker(&args);
            }
        }
        let returned = started.elapsed().as_secs_f64() * 1000.0;
        let running = events.nth_start(self.specs.len(), Duration::from_secs(120));
        self.remove_cli();
        (ms(running.saturating_sub(t0)), returned)
    }
}

/// VmRSS and VmHWM of `pid` in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the daemon's /proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn daemon_binary() -> (PathBuf, &'static str) {
    if let Some(path) = binary_in_profile("board-daemon", "release") {
        return (path, "release");
    }
    let path = binary_in_profile("board-daemon", "debug").unwrap_or_else(|| {
        panic!("board-daemon is not built: run cargo build --release -p board-daemon (or scripts/test.sh)")
    });
    eprintln!("warning: target/release/board-daemon not found; measuring the debug build");
    (path, "debug")
}

fn write_json(path: &Path, value: &serde_json::Value) {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    }
    let text = serde_json::to_string_pretty(value).expect("JSON");
    std::fs::write(path, text + "\n").unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = parse_args();
    ensure_image();
    let (binary, profile) = daemon_binary();
    println!("board-daemon: {} ({profile} build)", binary.display());

    let mut board = TestBoard::new("bench");
    let cli_label = format!("e2e.bench={}", std::process::id());
    let mut cli_cleanup = DockerCleanup::default();
    let config = BoardConfig { resync_seconds: 5, ..board.config() }; // the daemon's default resync
    let daemon = BoardDaemon::start_binary(&binary, &config, board.dir.path()).await;
    let board_cpus = daemon.client.facts().await.cpu.cpus;
    let specs: Vec<InstanceSpec> = (0..args.instances)
        .map(|i| InstanceSpec {
            cpus: vec![board_cpus[i % board_cpus.len()]],
            ..board.sim_spec(&format!("i{i}"))
        })
        .collect();
    let mut bench = Bench { daemon, board, specs, generation: 0, cli_label };
    for i in 0..args.instances {
        cli_cleanup.add_name(&bench.cli_name(i));
    }
    let n = args.instances;

    // 1. Orchestration overhead.
    let (mut daemon_ms, mut ready_ms, mut seq_ms, mut par_ms) = (vec![], vec![], vec![], vec![]);
    let (mut seq_return_ms, mut par_return_ms) = (vec![], vec![]);
    for round in 0..args.rounds {
        for step in 0..3 {
            match (round + step) % 3 {
                0 => {
                    let (running, ready) = bench.daemon_round().await;
                    println!(
                        "round {round}: daemon        {n} running in {running:7.1} ms (all ready in {ready:.0} ms)"
                    );
                    daemon_ms.push(running);
                    ready_ms.push(ready);
                }
                1 => {
                    let (running, returned) = bench.cli_round(false, &board_cpus);
                    println!(
                        "round {round}: CLI sequential {n} running in {running:7.1} ms (last docker run returned at {returned:.1} ms)"
                    );
                    seq_ms.push(running);
                    seq_return_ms.push(returned);
                }
                _ => {
                    let (running, returned) = bench.cli_round(true, &board_cpus);
                    println!(
                        "round {round}: CLI parallel   {n} running in {running:7.1} ms (last docker run returned at {returned:.1} ms)"
                    );
                    par_ms.push(running);
                    par_return_ms.push(returned);
                }
            }
        }
    }
    let (daemon_med, seq_med, par_med) = (median(&daemon_ms), median(&seq_ms), median(&par_ms));
    let ratio_seq = daemon_med / seq_med;
    let ratio_par = daemon_med / par_med;
    println!(
        "orchestration (median of {}): daemon {daemon_med:.1} ms, CLI sequential {seq_med:.1} ms (ratio {ratio_seq:.2}), \
         CLI parallel {par_med:.1} ms (ratio {ratio_par:.2}); goal ratio <= 1.10; all ready {:.0} ms",
        args.rounds,
        median(&ready_ms)
    );

    // 2. Memory and idle CPU with N instances managed.
    bench.generation += 1;
    let desired = DesiredState { generation: bench.generation, instances: bench.specs.clone() };
    bench.daemon.client.put_desired(&desired).await.expect("accepted");
    let client = &bench.daemon.client;
    wait_until(Duration::from_secs(120), "all ready", || async {
        let status = client.try_status().await?;
        let ready = status.instances.iter().filter(|i| i.phase == InstancePhase::Ready).count();
        if ready == n { Ok(()) } else { Err(format!("{ready} of {n} ready")) }
    })
    .await;
    let pid = bench.daemon.pid();
    let (rss_start_kib, _) = memory_kib(pid);
    let ticks_per_second = e2e::cpu::ticks_per_second();
    let ticks_before = e2e::cpu::process_ticks(pid).expect("the daemon's /proc stat");
    let idle_started = Instant::now();
    println!("idle: {n} instances ready; measuring the daemon's CPU for {} s ...", args.idle_seconds);
    // The measurement itself is a wait: the daemon is left alone with its instances.
    tokio::time::sleep(Duration::from_secs(args.idle_seconds)).await;
    let ticks = e2e::cpu::process_ticks(pid).expect("the daemon's /proc stat") - ticks_before;
    let elapsed = idle_started.elapsed().as_secs_f64();
    let (rss_end_kib, hwm_kib) = memory_kib(pid);
    let status = bench.daemon.client.status().await;
    let still_ready = status.instances.iter().filter(|i| i.phase == InstancePhase::Ready).count();
    assert_eq!(still_ready, n, "all instances stay ready while idle: {status:#?}");
    let cpu_percent = ticks as f64 / ticks_per_second as f64 / elapsed * 100.0;
    let rss_mib = rss_end_kib.max(rss_start_kib) as f64 / 1024.0;
    println!(
        "memory: VmRSS {:.1} MiB at the start and {:.1} MiB at the end of the idle window (peak VmHWM {:.1} MiB); goal < 20 MiB",
        rss_start_kib as f64 / 1024.0,
        rss_end_kib as f64 / 1024.0,
        hwm_kib as f64 / 1024.0
    );
    println!(
        "idle CPU: {ticks} ticks of 1/{ticks_per_second} s in {elapsed:.1} s = {cpu_percent:.3} % of one core; goal < 0.5 %"
    );

    let result = json!({
        "benchmark": "board_daemon",
        "daemon_binary": binary.display().to_string(),
        "daemon_build": profile,
        "instances": n,
        "rounds": args.rounds,
        "orchestration": {
            "measure": "ms from just before the request (PUT /v1/desired, or the first docker run -d) to the Docker engine's start event of the last of the N containers, engine timestamps",
            "daemon_ms": daemon_ms,
            "cli_sequential_ms": seq_ms,
            "cli_parallel_ms": par_ms,
            "cli_sequential_last_return_ms": seq_return_ms,
            "cli_parallel_last_return_ms": par_return_ms,
            "median_ms": { "daemon": daemon_med, "cli_sequential": seq_med, "cli_parallel": par_med },
            "ratio_daemon_over_cli_sequential": ratio_seq,
            "ratio_daemon_over_cli_parallel": ratio_par,
            "goal_ratio_max": 1.10,
            "daemon_all_ready_ms": ready_ms,
            "daemon_all_ready_median_ms": median(&ready_ms),
            "sim_boot_seconds": 1,
        },
        "resources": {
            "rss_mib": rss_mib,
            "rss_start_mib": rss_start_kib as f64 / 1024.0,
            "rss_end_mib": rss_end_kib as f64 / 1024.0,
            "rss_peak_mib": hwm_kib as f64 / 1024.0,
            "goal_rss_mib_max": 20.0,
            "idle_seconds": elapsed,
            "idle_cpu_ticks": ticks,
            "idle_cpu_percent_of_one_core": cpu_percent,
            "goal_idle_cpu_percent_max": 0.5,
            "resync_seconds": 5,
        },
    });
    write_json(&args.out, &result);
    println!("wrote {}", args.out.display());

    // Leave nothing behind: stop the daemon, then remove its containers and the CLI's.
    let Bench { mut daemon, board, .. } = bench;
    daemon.process.terminate(Duration::from_secs(10));
    drop(daemon);
    drop(board);
    drop(cli_cleanup);
}
