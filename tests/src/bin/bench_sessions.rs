//! Session placement benchmark (issue 4, "Figures to report"): end-to-end placement on loopback
//! with warm capacity. A `POST /v1/sessions` goes to the real session broker, which decides
//! (region, then rack), claims an instance from the real array controller of that rack, records
//! the session and answers `201 active` with the endpoint and token. Reported: latency
//! p50/p90/p99/max and sessions per second. Goal: p50 under 5 ms, p99 under 20 ms, 2,000
//! sessions/s. Not a test: it prints its figures and writes them as JSON.
//!
//! Setup: the release `session-broker` and two release `array-controller`s, racks `east-1` and
//! `west-1` in regions `east` and `west`, registered with the broker through the controller's
//! broker flags (`--broker-url`, `--broker-credential`, `--region`, `--uplink`). Each rack is
//! made of 40 SIMULATED boards of 16 instance slots (`--slots-per-board`; 1,280 slots in all):
//! HTTP clients that enrol like a board daemon and report every instance of their desired state
//! `ready`, without any container (Docker is not used at all); a released instance, recreated
//! by its controller, comes back ready as soon as its simulated board has read the new desired
//! state. They run in a process of their own per rack (`sim_boards`, as boards are machines of
//! their own), so the timed requests never wait in this program's runtime behind the boards'
//! bursts; they share the 2 cores with everything else. Everything on the broker and controller
//! side is real. One game, warm target 300 per
//! region, one tenant whose rate limit is far above the load. Players alternate between "near
//! east" (RTT east 15, west 60) and "near west", so both racks serve.
//!
//! The broker keeps a rack's pool at its warm share plus its claimed instances, so every claim
//! makes the rack start a replacement while the round runs: that background work is part of
//! what is measured. With 16 slots a board the replacements fit; with `--slots-per-board 8`
//! (320 slots a rack for a warm target of 300) the racks run full and the replacements stay
//! unmet until the round's sessions end.
//!
//! Measured in rounds of at most 256 placements, so warm capacity never runs out: a round places
//! its sessions (timed), then ends them all (`DELETE`, not timed) and waits, not timed, until the
//! broker sees every rack's warm stock back where it started and every rack has settled (pool
//! back at its size, every instance ready: the ended sessions' instances recycled and the
//! surplus replacements removed). A round thus measures its placements and the work they cause
//! (each claim's replacement), not the clean-up of the round before; ending sessions is not
//! measured at all (in a steady state at this rate the platform ends as many sessions as it
//! starts, and that work would share the cores too).
//! 1. Sequential: N placements one at a time, each timed (latency percentiles).
//! 2. Concurrent: N placements from C clients at once (default 32); sessions/s is the count over
//!    the summed wall time of the rounds; latency under load as well. This is the capacity.
//! 3. Paced: N placements offered open-loop at R per second (default 2,000), whatever the
//!    answers; each latency counts from the request's scheduled start. This is the goal's
//!    operating point: p50 and p99 at 2,000 sessions/s. Also given by the quarter of its round
//!    a placement was offered in: the replacements a round's claims set off land while it runs
//!    (the broker pushes pool sizes at most every 50 ms, so from its second quarter on), and so
//!    does the tail.
//!
//! A `202 queued` answer is not a placement: it counts apart, in neither latency nor rate.
//!
//! Baseline, measured in the same run with the same HTTP client, count, rounds and concurrency:
//! the raw controller claim, `POST /v1/claims` straight to a controller (released with
//! `DELETE /v1/claims/{key}`), alternating between `east-1` and `west-1` as the players do, so
//! both racks carry the same load (replacements included) as with sessions. The difference is
//! the broker's own cost: the extra HTTP hop, the scheduler's decision and the session's SQLite
//! writes. Also reported: the CPU time each process spent per placement during the timed rounds
//! (`bench` is this program, the HTTP client; `sim-boards-*` the simulated boards), and how the machine's
//! cores were spent meanwhile: busy, idle, and stolen by the hypervisor (on a shared VM the
//! steal share moves the figures from one run to the next).
//!
//! The services log at `warn` into a temporary directory (`BENCH_RUST_LOG` sets their
//! `RUST_LOG`).
//!
//! ```text
//! cargo build --release -p session-broker -p array-controller -p e2e --bins
//! cargo run --release -p e2e --bin bench_sessions -- [--sessions N] [--concurrency C] [--rate R]
//!     [--slots-per-board N] [--out PATH]
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use e2e::cpu::{self, MachineTicks};
use e2e::process::{Process, binary_in_profile};
use e2e::simboards::SimResources;
use e2e::{free_port, scratch::TestDir};
use serde_json::{Value, json};

const GAME: &str = "bench";
const VERSION: &str = "1";
/// The deployment the broker creates on each rack: `<game>-<version>`.
const DEPLOYMENT: &str = "bench-1";
const TENANT: &str = "bench";
const OPERATOR_TOKEN: &str = "op";
/// Each controller's broker token (what the broker, and the baseline, present to it).
const CONTROLLER_BROKER_TOKEN: &str = "broker";
const BOARDS_PER_RACK: usize = 40;
/// Millicores per instance: a simulated board has one CPU per slot.
const INSTANCE_MILLICORES: u32 = 1000;
const WARM_PER_REGION: u32 = 300;
/// Most placements in one round (below one rack's warm stock, so no rack runs dry even if
/// every placement of a round went there).
const ROUND: usize = 256;
/// Racks: id, region, uplink RTTs.
const RACKS: [(&str, &str, [&str; 2]); 2] =
    [("east-1", "east", ["east=2", "west=35"]), ("west-1", "west", ["west=2", "east=35"])];

struct Args {
    sessions: usize,
    slots_per_board: u32,
    concurrency: usize,
    rate: u32,
    out: PathBuf,
}

fn parse_args() -> Args {
    let mut args = Args {
        sessions: 2000,
        slots_per_board: 16,
        concurrency: 32,
        rate: 2000,
        out: "bench-results/sessions.json".into(),
    };
    let usage = "usage: bench_sessions [--sessions N (2000)] [--concurrency C (32)] [--rate R (2000)] \
                 [--slots-per-board N (16)] [--out PATH (bench-results/sessions.json)]";
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next();
        let ok = match (flag.as_str(), value) {
            ("--sessions", Some(v)) => v.parse().map(|n| args.sessions = n).is_ok(),
            ("--concurrency", Some(v)) => v.parse().map(|n| args.concurrency = n).is_ok(),
            ("--rate", Some(v)) => v.parse().map(|n| args.rate = n).is_ok(),
            ("--slots-per-board", Some(v)) => v.parse().map(|n| args.slots_per_board = n).is_ok(),
            ("--out", Some(v)) => {
                args.out = v.into();
                true
            }
            _ => false,
        };
        let rack_slots = BOARDS_PER_RACK as u32 * args.slots_per_board;
        if !ok
            || args.sessions == 0
            || args.concurrency == 0
            || args.rate == 0
            || rack_slots < WARM_PER_REGION
        {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    }
    args
}

/// Which API a measurement drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// `POST /v1/sessions` on the broker.
    Session,
    /// `POST /v1/claims` on the east controller.
    RawClaim,
}

/// How placements are offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Load {
    /// Closed loop: this many clients, each sending its next request when the last is answered.
    Clients(usize),
    /// Open loop: one request every 1/rate s whatever the answers (no coordinated omission:
    /// latency counts from the request's scheduled start).
    Paced(u32),
}

impl Load {
    fn label(self) -> String {
        match self {
            Load::Clients(c) => format!("x{c}"),
            Load::Paced(r) => format!("@{r}/s"),
        }
    }

    fn json(self) -> Value {
        match self {
            Load::Clients(c) => json!({"clients": c}),
            Load::Paced(r) => json!({"offered_per_second": r}),
        }
    }
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Session => "session (broker)",
            Target::RawClaim => "raw claim (controller)",
        }
    }
}

/// Where everything runs, and the credentials.
#[derive(Clone)]
struct Bench {
    client: reqwest::Client,
    broker: String,
    tenant_key: String,
    /// Each rack and its controller's URL, east first (the baseline's claims alternate).
    controllers: Arc<Vec<(String, String)>>,
    /// Each rack's warm stock as the broker saw it once everything was ready.
    warm_at_start: BTreeMap<String, u32>,
    /// Processes whose CPU time is counted during the timed rounds: name and pid.
    processes: Vec<(String, u32)>,
}

/// One successful placement.
struct Placed {
    latency: Duration,
    /// The URL that ends it (`DELETE`): the session's or the claim's.
    handle: String,
    /// The rack that served it.
    rack: String,
    /// `202 queued` instead of `201 active` (a session without a warm instance).
    queued: bool,
}

/// Everything one phase (target x concurrency) measured.
#[derive(Default)]
struct Phase {
    latencies: Vec<Duration>,
    wall: Duration,
    failures: usize,
    errors: Vec<String>,
    queued: usize,
    by_rack: BTreeMap<String, usize>,
    /// CPU time (user + system) of each process during the timed rounds.
    cpu: BTreeMap<String, Duration>,
    /// How the machine's cores were spent during the timed rounds.
    machine: MachineTicks,
    /// Paced rounds only: latencies by the quarter of its round a placement was offered in
    /// (work a round's claims set off lands in its later quarters).
    by_quarter: [Vec<Duration>; 4],
}

/// Percentile `q` (0..=1) of `latencies` in ms (NaN when there are none).
fn percentile_ms(latencies: &[Duration], q: f64) -> f64 {
    let mut sorted = latencies.to_vec();
    sorted.sort();
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

impl Phase {
    fn ok(&self) -> usize {
        self.latencies.len()
    }

    fn per_second(&self) -> f64 {
        self.ok() as f64 / self.wall.as_secs_f64()
    }

    /// Percentile `q` (0..=1) in ms.
    fn pct(&self, q: f64) -> f64 {
        percentile_ms(&self.latencies, q)
    }

    /// CPU ms per placement of each process during the timed rounds.
    fn cpu_per_placement(&self) -> BTreeMap<String, f64> {
        let n = self.ok().max(1) as f64;
        self.cpu.iter().map(|(name, t)| (name.clone(), t.as_secs_f64() * 1000.0 / n)).collect()
    }

    /// The machine's cores during the timed rounds: busy, idle and stolen by the hypervisor.
    fn machine_json(&self) -> Value {
        let (busy, idle, steal) = self.machine.percentages();
        json!({"busy": busy, "idle": idle, "steal": steal})
    }

    /// Percentile `q` (0..=1) in ms of each quarter of the paced rounds (empty quarters: NaN).
    fn quarter_pcts(&self, q: f64) -> [f64; 4] {
        std::array::from_fn(|i| percentile_ms(&self.by_quarter[i], q))
    }

    fn mean(&self) -> f64 {
        self.latencies.iter().map(Duration::as_secs_f64).sum::<f64>() * 1000.0 / self.ok().max(1) as f64
    }

    fn report(&self, target: Target, load: Load) -> Value {
        json!({
            "target": target.name(),
            "load": load.json(),
            "ok": self.ok(),
            "failed": self.failures,
            "queued": self.queued,
            "first_errors": self.errors,
            "by_rack": self.by_rack,
            "latency_ms": {
                "p50": self.pct(0.50), "p90": self.pct(0.90), "p99": self.pct(0.99),
                "max": self.pct(1.0), "mean": self.mean(),
            },
            "per_second": self.per_second(),
            "timed_wall_s": self.wall.as_secs_f64(),
            "cpu_ms_per_placement": self.cpu_per_placement(),
            "latency_ms_by_round_quarter": (0..4)
                .filter(|&i| !self.by_quarter[i].is_empty())
                .map(|i| json!({"quarter": i + 1, "p50": percentile_ms(&self.by_quarter[i], 0.5),
                                "p99": percentile_ms(&self.by_quarter[i], 0.99)}))
                .collect::<Vec<_>>(),
            "machine_percent": self.machine_json(),
        })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args();
    let started = Instant::now();
    let log_filter = std::env::var("BENCH_RUST_LOG").unwrap_or_else(|_| "warn".into());
    let dir = TestDir::new("bench-sessions");
    let (broker_bin, broker_build) = release_or_debug("session-broker", "session-broker")?;
    let (controller_bin, controller_build) = release_or_debug("array-controller", "array-controller")?;
    let (sim_boards_bin, _) = release_or_debug("sim_boards", "e2e --bins")?;
    let client = reqwest::Client::builder().pool_max_idle_per_host(args.concurrency * 2 + 8).build()?;

    // The broker and its regions.
    let broker_port = free_port();
    let broker = format!("http://127.0.0.1:{broker_port}");
    let mut processes = vec![Process::spawn(
        "session-broker",
        &broker_bin,
        [
            "--listen",
            &format!("127.0.0.1:{broker_port}"),
            "--data-dir",
            dir.join("broker").to_str().unwrap(),
            "--operator-token",
            OPERATOR_TOKEN,
        ],
        &[("RUST_LOG", log_filter.as_str())],
        dir.path(),
    )];
    wait_healthy(&client, &broker, &processes[0]).await?;
    for (_, region, _) in RACKS {
        call(
            client.put(format!("{broker}/v1/regions/{region}")).bearer_auth(OPERATOR_TOKEN).json(&json!({})),
        )
        .await?;
    }

    // Two racks of simulated boards, each controller registered with the broker.
    let config = dir.join("controller.toml");
    std::fs::write(
        &config,
        "[[class]]\nname = \"x86-sim\"\nmatch = { arch = \"x86_64\" }\nandroid_kernel = false\n",
    )?;
    let board =
        SimResources { cpus: args.slots_per_board, memory_mib: u64::from(args.slots_per_board) * 1024 };
    let mut controllers = Vec::new();
    for (rack, region, uplinks) in RACKS {
        let credential =
            call(client.post(format!("{broker}/v1/racks/{rack}/credential")).bearer_auth(OPERATOR_TOKEN))
                .await?;
        let credential = credential["credential"].as_str().context("rack credential")?.to_string();
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let data = dir.join(rack);
        let mut flags: Vec<String> = [
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--operator-token",
            OPERATOR_TOKEN,
            "--broker-token",
            CONTROLLER_BROKER_TOKEN,
            "--heartbeat-ms",
            "60000",
            "--unreachable-after-ms",
            "3600000",
            "--rack-id",
            rack,
            "--broker-url",
            &broker,
            "--broker-credential",
            &credential,
            "--region",
            region,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for uplink in uplinks {
            flags.extend(["--uplink".to_string(), uplink.to_string()]);
        }
        let process =
            Process::spawn(rack, &controller_bin, &flags, &[("RUST_LOG", log_filter.as_str())], dir.path());
        wait_healthy(&client, &url, &process).await?;
        processes.push(process);
        let boards = [
            "--controller".to_string(),
            url.clone(),
            "--operator-token".into(),
            OPERATOR_TOKEN.into(),
            "--prefix".into(),
            rack.into(),
            "--boards".into(),
            BOARDS_PER_RACK.to_string(),
            "--cpus".into(),
            board.cpus.to_string(),
            "--memory-mib".into(),
            board.memory_mib.to_string(),
        ];
        let mut sim =
            Process::spawn(&format!("sim-boards-{rack}"), &sim_boards_bin, &boards, &[], dir.path());
        wait_enrolled(&client, &url, &mut sim).await?;
        processes.push(sim);
        controllers.push((rack.to_string(), url));
    }

    // The game (created, then its version, then that version made current), kept warm in both
    // regions, and a tenant that is never throttled.
    call(
        client
            .put(format!("{broker}/v1/games/{GAME}"))
            .bearer_auth(OPERATOR_TOKEN)
            .json(&json!({"name": "bench"})),
    )
    .await?;
    call(
        client.put(format!("{broker}/v1/games/{GAME}/versions/{VERSION}")).bearer_auth(OPERATOR_TOKEN).json(
            &json!({
                "images": {"x86_64": "appliance/android-sim:latest"},
                "profile": {"millicores": INSTANCE_MILLICORES, "memory_mib": 512},
            }),
        ),
    )
    .await?;
    call(
        client
            .put(format!("{broker}/v1/games/{GAME}"))
            .bearer_auth(OPERATOR_TOKEN)
            .json(&json!({"name": "bench", "current_version": VERSION})),
    )
    .await?;
    for (_, region, _) in RACKS {
        call(
            client
                .put(format!("{broker}/v1/games/{GAME}/warm-targets/{region}"))
                .bearer_auth(OPERATOR_TOKEN)
                .json(&json!({"warm": WARM_PER_REGION})),
        )
        .await?;
    }
    call(
        client
            .post(format!("{broker}/v1/tenants"))
            .bearer_auth(OPERATOR_TOKEN)
            .json(&json!({"id": TENANT, "name": "bench", "rate_per_s": 1_000_000})),
    )
    .await?;
    let key =
        call(client.post(format!("{broker}/v1/tenants/{TENANT}/keys")).bearer_auth(OPERATOR_TOKEN)).await?;
    let tenant_key = key["key"].as_str().context("tenant key")?.to_string();

    let mut bench = Bench {
        client: client.clone(),
        broker: broker.clone(),
        tenant_key,
        controllers: Arc::new(controllers),
        warm_at_start: BTreeMap::new(),
        processes: processes
            .iter()
            .map(|p| (p.name().to_string(), p.pid()))
            .chain([("bench".to_string(), std::process::id())])
            .collect(),
    };
    let target: BTreeMap<String, u32> =
        RACKS.iter().map(|(r, _, _)| (r.to_string(), WARM_PER_REGION)).collect();
    bench.warm_at_start = bench.wait_warm(&target, Duration::from_secs(180)).await?;
    bench.wait_settled(Duration::from_secs(60)).await?;
    println!(
        "setup: 2 racks x {BOARDS_PER_RACK} simulated boards x {} slots; warm stock {:?}, ready {:.1} s after the start \
         (broker {broker_build}, controllers {controller_build})",
        args.slots_per_board,
        bench.warm_at_start,
        started.elapsed().as_secs_f64()
    );

    let mut results = Vec::new();
    let (seq_load, con_load, paced_load) =
        (Load::Clients(1), Load::Clients(args.concurrency), Load::Paced(args.rate));
    for (target, load) in [
        (Target::RawClaim, seq_load),
        (Target::Session, seq_load),
        (Target::RawClaim, con_load),
        (Target::Session, con_load),
        (Target::RawClaim, paced_load),
        (Target::Session, paced_load),
    ] {
        let phase = bench.phase(target, args.sessions, load).await?;
        println!(
            "{:<24} {:<7} {} ok, {} failed, {} queued; p50 {:.2} ms, p99 {:.2} ms, {:.0}/s",
            target.name(),
            load.label(),
            phase.ok(),
            phase.failures,
            phase.queued,
            phase.pct(0.5),
            phase.pct(0.99),
            phase.per_second()
        );
        for error in &phase.errors {
            println!("    error: {error}");
        }
        results.push((target, load, phase));
    }

    println!();
    println!(
        "{:<24} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10}",
        "placement (ms)", "load", "p50", "p90", "p99", "max", "mean", "per s"
    );
    for (target, load, phase) in &results {
        println!(
            "{:<24} {:>7} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>10.0}",
            target.name(),
            load.label(),
            phase.pct(0.5),
            phase.pct(0.9),
            phase.pct(0.99),
            phase.pct(1.0),
            phase.mean(),
            phase.per_second()
        );
    }
    println!();
    let names: Vec<String> = bench.processes.iter().map(|(n, _)| n.clone()).collect();
    // One column per process, wide enough for the longest name.
    let width = names.iter().map(|n| n.len() + 2).max().unwrap_or(16).max(10);
    println!(
        "CPU ms per placement during the timed rounds ({} cores; bench = the HTTP client):",
        machine_cpus()
    );
    println!(
        "{:<24} {:>7} {}   machine busy/idle/steal %",
        "",
        "load",
        names.iter().map(|n| format!("{n:>width$}")).collect::<String>()
    );
    for (target, load, phase) in &results {
        let cpu = phase.cpu_per_placement();
        let cells: String =
            names.iter().map(|n| format!("{:>width$.2}", cpu.get(n).copied().unwrap_or(0.0))).collect();
        let (busy, idle, steal) = phase.machine.percentages();
        println!("{:<24} {:>7} {cells}   {busy:>4.0} {idle:>4.0} {steal:>4.0}", target.name(), load.label());
    }
    println!(
        "(steal: time the hypervisor gave this VM's cores to others; it varies from run to run and so do the figures)"
    );
    let find =
        |t: Target, l: Load| results.iter().find(|(tt, ll, _)| *tt == t && *ll == l).map(|r| &r.2).unwrap();
    let (seq, seq_raw) = (find(Target::Session, seq_load), find(Target::RawClaim, seq_load));
    let (con, con_raw) = (find(Target::Session, con_load), find(Target::RawClaim, con_load));
    let (paced, paced_raw) = (find(Target::Session, paced_load), find(Target::RawClaim, paced_load));
    let overhead_p50 = seq.pct(0.5) - seq_raw.pct(0.5);
    let overhead_p99 = seq.pct(0.99) - seq_raw.pct(0.99);
    println!(
        "broker overhead over the raw claim (sequential): p50 {overhead_p50:+.2} ms, p99 {overhead_p99:+.2} ms; \
         {} clients: {:.0} vs {:.0} per second",
        args.concurrency,
        con.per_second(),
        con_raw.per_second()
    );
    println!(
        "offered {} sessions/s: session p50 {:.2} ms p99 {:.2} ms; raw claim p50 {:.2} ms p99 {:.2} ms",
        args.rate,
        paced.pct(0.5),
        paced.pct(0.99),
        paced_raw.pct(0.5),
        paced_raw.pct(0.99)
    );
    // The goal is read as one operating point: 2,000 sessions/s with p50 < 5 ms and p99 < 20 ms
    // at that rate (the paced phase), and the closed-loop capacity at least 2,000/s. Queued
    // sessions are placements that did not happen now, so any makes the phase fail its goal.
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let all_placed = paced.queued == 0 && paced.failures == 0 && con.queued == 0 && con.failures == 0;
    println!(
        "goal at {} sessions/s offered: p50 < 5 ms ({}: {:.2}), p99 < 20 ms ({}: {:.2}); capacity >= 2000 sessions/s \
         ({}: {:.0} with {} clients); every session placed at once ({})",
        args.rate,
        verdict(args.rate >= 2000 && paced.pct(0.5) < 5.0),
        paced.pct(0.5),
        verdict(args.rate >= 2000 && paced.pct(0.99) < 20.0),
        paced.pct(0.99),
        verdict(con.per_second() >= 2000.0),
        con.per_second(),
        args.concurrency,
        verdict(all_placed)
    );
    let quarters = |phase: &Phase, q: f64| {
        phase.quarter_pcts(q).iter().map(|v| format!("{v:.2}")).collect::<Vec<_>>().join(" / ")
    };
    println!(
        "paced, by quarter of each round of {ROUND} (offered over {:.0} ms): session p50 {} ms, p99 {} ms; \
         raw claim p50 {} ms, p99 {} ms",
        ROUND as f64 * 1000.0 / f64::from(args.rate),
        quarters(paced, 0.5),
        quarters(paced, 0.99),
        quarters(paced_raw, 0.5),
        quarters(paced_raw, 0.99)
    );
    println!("sessions by rack (sequential): {:?}; (concurrent): {:?}", seq.by_rack, con.by_rack);

    for process in &mut processes {
        process.kill();
    }
    let report = json!({
        "benchmark": "sessions",
        "broker_build": broker_build,
        "controller_build": controller_build,
        "machine_cpus": machine_cpus(),
        "setup": {
            "racks": RACKS.iter().map(|(r, region, _)| json!({"rack": r, "region": region})).collect::<Vec<_>>(),
            "simulated_boards_per_rack": BOARDS_PER_RACK,
            "slots_per_board": args.slots_per_board,
            "warm_target_per_region": WARM_PER_REGION,
            "warm_at_start": bench.warm_at_start,
            "round_size": ROUND,
            "sessions_per_phase": args.sessions,
        },
        "sequential": {"session": seq.report(Target::Session, seq_load), "raw_claim": seq_raw.report(Target::RawClaim, seq_load)},
        "concurrent": {
            "session": con.report(Target::Session, con_load),
            "raw_claim": con_raw.report(Target::RawClaim, con_load),
        },
        "paced": {
            "session": paced.report(Target::Session, paced_load),
            "raw_claim": paced_raw.report(Target::RawClaim, paced_load),
        },
        "broker_overhead_ms": {"p50": overhead_p50, "p99": overhead_p99},
        "goal": {"p50_ms": 5, "p99_ms": 20, "sessions_per_second": 2000},
    });
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&report)?)?;
    println!("wrote {}", args.out.display());
    Ok(())
}

impl Bench {
    /// CPU time (user + system) so far of each counted process.
    fn cpu_times(&self) -> Vec<(String, Duration)> {
        self.processes.iter().map(|(name, pid)| (name.clone(), cpu::process_time(*pid))).collect()
    }

    /// `count` placements on `target` from `concurrency` clients, in rounds of at most [`ROUND`].
    async fn phase(&self, target: Target, count: usize, load: Load) -> anyhow::Result<Phase> {
        let mut phase = Phase::default();
        let tag = format!(
            "{}-{}",
            if target == Target::Session { "s" } else { "c" },
            load.label().replace('/', "")
        );
        let mut done = 0;
        while done < count {
            let round = ROUND.min(count - done);
            let cpu_before = self.cpu_times();
            let machine_before = MachineTicks::now();
            let (outcomes, wall) = self.round(target, &tag, done, round, load).await;
            phase.wall += wall;
            phase.machine.add(&MachineTicks::now().since(&machine_before));
            for ((name, after), (_, before)) in self.cpu_times().into_iter().zip(cpu_before) {
                *phase.cpu.entry(name).or_default() += after.saturating_sub(before);
            }
            let mut handles = Vec::new();
            let paced = matches!(load, Load::Paced(_));
            for (position, outcome) in outcomes.into_iter().enumerate() {
                match outcome {
                    // A queued session was not placed: it is ended like the others but counts
                    // neither in the latencies nor in the rate.
                    Ok(placed) if placed.queued => {
                        phase.queued += 1;
                        handles.push(placed.handle);
                    }
                    Ok(placed) => {
                        phase.latencies.push(placed.latency);
                        if paced {
                            phase.by_quarter[position * 4 / round].push(placed.latency);
                        }
                        *phase.by_rack.entry(placed.rack).or_default() += 1;
                        handles.push(placed.handle);
                    }
                    Err(error) => {
                        phase.failures += 1;
                        if phase.errors.len() < 3 {
                            phase.errors.push(error);
                        }
                    }
                }
            }
            self.end_all(target, handles, 32).await?;
            self.wait_warm(&self.warm_at_start, Duration::from_secs(60)).await?;
            self.wait_settled(Duration::from_secs(60)).await?;
            done += round;
        }
        Ok(phase)
    }

    /// One round: placements `first..first + count`, timed one by one, and the round's wall time.
    async fn round(
        &self,
        target: Target,
        tag: &str,
        first: usize,
        count: usize,
        load: Load,
    ) -> (Vec<Result<Placed, String>>, Duration) {
        let concurrency = match load {
            Load::Clients(c) => c,
            Load::Paced(rate) => return self.paced_round(target, tag, first, count, rate).await,
        };
        let next = Arc::new(AtomicUsize::new(first));
        let end = first + count;
        let shared = Arc::new(self.clone());
        let begin = Instant::now();
        let mut workers = Vec::new();
        for _ in 0..concurrency.min(count) {
            let (next, tag, bench) = (next.clone(), tag.to_string(), shared.clone());
            workers.push(tokio::spawn(async move {
                let mut outcomes = Vec::new();
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= end {
                        break;
                    }
                    outcomes.push(bench.place(target, &tag, n).await);
                }
                outcomes
            }));
        }
        let mut outcomes = Vec::new();
        for worker in workers {
            match worker.await {
                Ok(o) => outcomes.extend(o),
                Err(e) => outcomes.push(Err(format!("worker failed: {e}"))),
            }
        }
        (outcomes, begin.elapsed())
    }

    /// An open-loop round: placement `first + i` starts at `i / rate` s whatever the answers, and
    /// its latency counts from that instant (a late start is the system's delay too).
    async fn paced_round(
        &self,
        target: Target,
        tag: &str,
        first: usize,
        count: usize,
        rate: u32,
    ) -> (Vec<Result<Placed, String>>, Duration) {
        let shared = Arc::new(self.clone());
        let begin = Instant::now();
        let mut tasks = Vec::with_capacity(count);
        let mut ticks = e2e::pace::ticks(f64::from(rate), count);
        while let Some((i, scheduled)) = ticks.recv().await {
            let (tag, bench) = (tag.to_string(), shared.clone());
            tasks.push(tokio::spawn(async move {
                let outcome = bench.place(target, &tag, first + i).await;
                outcome.map(|placed| Placed { latency: scheduled.elapsed(), ..placed })
            }));
        }
        let mut outcomes = Vec::with_capacity(count);
        for task in tasks {
            outcomes.push(task.await.unwrap_or_else(|e| Err(format!("placement task failed: {e}"))));
        }
        (outcomes, begin.elapsed())
    }

    /// Placement `n` on `target`.
    async fn place(&self, target: Target, tag: &str, n: usize) -> Result<Placed, String> {
        match target {
            Target::Session => place_session(&self.client, &self.broker, &self.tenant_key, tag, n).await,
            Target::RawClaim => raw_claim(&self.client, &self.controllers, tag, n).await,
        }
    }

    /// Ends every session (or releases every claim) of a round, `concurrency` at a time.
    async fn end_all(&self, target: Target, handles: Vec<String>, concurrency: usize) -> anyhow::Result<()> {
        let handles = Arc::new(handles);
        let next = Arc::new(AtomicUsize::new(0));
        let mut workers = Vec::new();
        for _ in 0..concurrency {
            let (handles, next) = (handles.clone(), next.clone());
            let (client, key) = (self.client.clone(), self.tenant_key.clone());
            workers.push(tokio::spawn(async move {
                while let Some(handle) = handles.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let token = match target {
                        Target::Session => key.as_str(),
                        Target::RawClaim => CONTROLLER_BROKER_TOKEN,
                    };
                    let request = client.delete(handle).bearer_auth(token);
                    let response = request.send().await?;
                    let status = response.status();
                    if !status.is_success() {
                        let body = response.text().await.unwrap_or_default();
                        bail!("ending {handle} answered {status}: {body}");
                    }
                }
                Ok(())
            }));
        }
        for worker in workers {
            worker.await??;
        }
        Ok(())
    }

    /// Waits until every rack has settled: its pool of the game at the size it had before any
    /// placement (the warm target, nothing claimed) and every instance of it ready, so nothing
    /// is being started, recycled or removed. The clean-up of a round (ended sessions' instances
    /// recycled, the replacements made surplus removed) is then over before the next round.
    async fn wait_settled(&self, timeout: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        for (rack, url) in self.controllers.iter() {
            loop {
                let view = call(
                    self.client.get(format!("{url}/v1/deployments/{DEPLOYMENT}")).bearer_auth(OPERATOR_TOKEN),
                )
                .await?;
                let pool = view["spec"]["pool_size"].as_u64().unwrap_or(0);
                let by_state = view["instances"].as_object().context("deployment view without instances")?;
                let ready = by_state.get("ready").and_then(Value::as_u64).unwrap_or(0);
                let total: u64 = by_state.values().filter_map(Value::as_u64).sum();
                if pool == u64::from(WARM_PER_REGION) && ready == pool && total == pool {
                    break;
                }
                if started.elapsed() > timeout {
                    bail!(
                        "after {timeout:?} rack {rack} has not settled: pool size {pool}, instances {by_state:?}"
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    /// Waits until the broker sees at least `want[rack]` warm instances on every rack, and
    /// returns what it saw.
    async fn wait_warm(
        &self,
        want: &BTreeMap<String, u32>,
        timeout: Duration,
    ) -> anyhow::Result<BTreeMap<String, u32>> {
        let started = Instant::now();
        loop {
            let racks =
                call(self.client.get(format!("{}/v1/racks", self.broker)).bearer_auth(OPERATOR_TOKEN))
                    .await?;
            let seen: BTreeMap<String, u32> = racks
                .as_array()
                .context("GET /v1/racks is not a list")?
                .iter()
                .filter(|r| r["state"] == "online")
                .map(|r| {
                    let warm = r["games"][GAME]["warm"].as_u64().unwrap_or(0) as u32;
                    (r["id"].as_str().unwrap_or_default().to_string(), warm)
                })
                .collect();
            if want.iter().all(|(rack, n)| seen.get(rack).is_some_and(|s| s >= n)) {
                return Ok(seen);
            }
            if started.elapsed() > timeout {
                bail!(
                    "after {timeout:?} the broker sees warm stock {seen:?} (online racks only), waiting for {want:?}; racks: {racks}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `POST /v1/sessions` for player `n` (even players near east, odd near west).
async fn place_session(
    client: &reqwest::Client,
    broker: &str,
    key: &str,
    tag: &str,
    n: usize,
) -> Result<Placed, String> {
    let rtt =
        if n.is_multiple_of(2) { json!({"east": 15, "west": 60}) } else { json!({"east": 60, "west": 15}) };
    let body = json!({"game": GAME, "player": {"id": format!("player-{n}"), "rtt_ms": rtt}});
    let begin = Instant::now();
    let response = client
        .post(format!("{broker}/v1/sessions"))
        .bearer_auth(key)
        .header("Idempotency-Key", format!("bench-{tag}-{n}"))
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("POST /v1/sessions: {e}"))?;
    let status = response.status();
    let bytes = response.bytes().await.map_err(|e| format!("POST /v1/sessions body: {e}"))?;
    let latency = begin.elapsed();
    if status != 201 && status != 202 {
        return Err(format!("POST /v1/sessions answered {status}: {}", String::from_utf8_lossy(&bytes)));
    }
    let session: Value = serde_json::from_slice(&bytes).map_err(|e| format!("session answer: {e}"))?;
    let queued = status == 202;
    if !queued
        && (session["state"] != "active" || session["endpoint"].is_null() || session["token"].is_null())
    {
        return Err(format!("201 without an active placement: {session}"));
    }
    Ok(Placed {
        latency,
        handle: format!("{broker}/v1/sessions/{}", session["id"].as_str().unwrap_or_default()),
        rack: session["rack"].as_str().unwrap_or("(none)").to_string(),
        queued,
    })
}

/// `POST /v1/claims` with key `n` straight to a controller: east-1 for even `n`, west-1 for odd
/// ones, as the players of [`place_session`] are spread.
async fn raw_claim(
    client: &reqwest::Client,
    controllers: &[(String, String)],
    tag: &str,
    n: usize,
) -> Result<Placed, String> {
    let (rack, controller) = &controllers[n % controllers.len()];
    let key = format!("raw-{tag}-{n}");
    let begin = Instant::now();
    let response = client
        .post(format!("{controller}/v1/claims"))
        .bearer_auth(CONTROLLER_BROKER_TOKEN)
        .json(&json!({"deployment": DEPLOYMENT, "key": key}))
        .send()
        .await
        .map_err(|e| format!("POST /v1/claims: {e}"))?;
    let status = response.status();
    let bytes = response.bytes().await.map_err(|e| format!("POST /v1/claims body: {e}"))?;
    let latency = begin.elapsed();
    if !status.is_success() {
        return Err(format!("POST /v1/claims answered {status}: {}", String::from_utf8_lossy(&bytes)));
    }
    Ok(Placed { latency, handle: format!("{controller}/v1/claims/{key}"), rack: rack.clone(), queued: false })
}

fn machine_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
}

/// Sends `request` and returns its JSON answer; an error status is an error naming the body.
async fn call(request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
    let response = request.send().await?;
    let (status, url) = (response.status(), response.url().clone());
    let text = response.text().await?;
    if !status.is_success() {
        bail!("{url} answered {status}: {text}");
    }
    if text.is_empty() { Ok(Value::Null) } else { Ok(serde_json::from_str(&text)?) }
}

/// Waits until every simulated board of `sim` is enrolled with the controller at `url`.
async fn wait_enrolled(client: &reqwest::Client, url: &str, sim: &mut Process) -> anyhow::Result<()> {
    for _ in 0..600 {
        if !sim.is_running() {
            bail!("{} stopped; its log:\n{}", sim.name(), tail(sim.log_path()));
        }
        let boards = client.get(format!("{url}/v1/boards")).bearer_auth(OPERATOR_TOKEN).send().await;
        if let Ok(response) = boards
            && let Ok(Value::Array(boards)) = response.json::<Value>().await
            && boards.len() >= BOARDS_PER_RACK
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{} did not enrol its boards with {url}; its log:\n{}", sim.name(), tail(sim.log_path()))
}

async fn wait_healthy(client: &reqwest::Client, url: &str, process: &Process) -> anyhow::Result<()> {
    for _ in 0..100 {
        if client.get(format!("{url}/healthz")).send().await.is_ok_and(|r| r.status().is_success()) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{} did not answer on {url}/healthz; its log:\n{}", process.name(), tail(process.log_path()))
}

fn tail(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// The release build of `name` if there is one, else the debug build (with a warning);
/// `package` is what to build it with.
fn release_or_debug(name: &str, package: &str) -> anyhow::Result<(PathBuf, &'static str)> {
    if let Some(path) = binary_in_profile(name, "release") {
        return Ok((path, "release"));
    }
    let path = binary_in_profile(name, "debug")
        .with_context(|| format!("{name} is not built: cargo build --release -p {package}"))?;
    eprintln!("warning: no release build of {name}; using debug (cargo build --release -p {package})");
    Ok((path, "debug"))
}
