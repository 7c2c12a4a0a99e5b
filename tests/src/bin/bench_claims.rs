//! Claim benchmark: latency and rate of `POST /v1/claims` on loopback against the real
//! array-controller binary, next to the raw SQLite commit rate of the same disk measured in the
//! same run (the ceiling for one-transaction-per-claim).
//!
//! Thousands of ready instances cannot run on one machine's Docker, so the rack is made of
//! SIMULATED boards: HTTP clients that enrol like a board daemon and report every instance of
//! their desired state as `ready`. Everything on the controller side is real.
//!
//! Two ways to offer the claims:
//! - closed loop (`--concurrency C`, default 32): C clients, each sending its next claim when the
//!   last is answered; the rate is the capacity at that concurrency;
//! - open loop (`--rate R`): one claim every 1/R s whatever the answers, each latency counted from
//!   its scheduled start (no coordinated omission): the latency at that operating point, e.g.
//!   the goal's 2,000 claims/s.
//!
//! Usage: bench_claims [--claims N] [--concurrency C | --rate R] [--out PATH]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use e2e::process::{Process, binary, binary_in_profile};
use e2e::simboards::{self, SimResources};
use e2e::{free_port, scratch::TestDir};
use serde_json::json;

const SIMULATED_BOARDS: usize = 16;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: &str| -> String {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
            .unwrap_or(default.to_string())
    };
    let claims: usize = arg("--claims", "10000").parse()?;
    let concurrency: usize = arg("--concurrency", "32").parse()?;
    let offered: Option<f64> =
        args.iter().any(|a| a == "--rate").then(|| arg("--rate", "2000").parse()).transpose()?;
    if concurrency == 0 || offered.is_some_and(|r| r.is_nan() || r <= 0.0) {
        bail!("--concurrency and --rate must be positive");
    }
    let out = PathBuf::from(arg("--out", "bench-results/claims.json"));

    let dir = TestDir::new("bench-claims");
    let sqlite_commits = raw_sqlite_commits_per_second(&dir.join("raw.db"))?;
    println!("raw SQLite (WAL, synchronous=NORMAL, one row per transaction): {sqlite_commits:.0} commits/s");
    // At the offered rate: the latency floor this disk puts under any one-commit-per-claim design
    // (SQLite's automatic checkpoints sync the log and the database inside a commit).
    let raw_paced = match offered {
        Some(rate) => {
            let (p50, p99, max) = raw_sqlite_paced(&dir.join("raw-paced.db"), rate, claims)?;
            println!(
                "raw SQLite paced at {rate:.0} commits/s: commit latency p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms"
            );
            Some(json!({"offered_per_second": rate, "latency_ms": {"p50": p50, "p99": p99, "max": max}}))
        }
        None => None,
    };

    let (program, build) = match binary_in_profile("array-controller", "release") {
        Some(p) => (p, "release"),
        None => {
            eprintln!("warning: no release build; using debug (cargo build --release -p array-controller)");
            (binary("array-controller"), "debug")
        }
    };
    let config = dir.join("controller.toml");
    std::fs::write(
        &config,
        "[[class]]\nname = \"x86-sim\"\nmatch = { arch = \"x86_64\" }\nandroid_kernel = false\n",
    )?;
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let data = dir.join("controller");
    let mut controller = Process::spawn(
        "array-controller",
        &program,
        [
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--operator-token",
            "op",
            "--broker-token",
            "broker",
            "--heartbeat-ms",
            "60000",
            "--unreachable-after-ms",
            "3600000",
        ],
        &[("RUST_LOG", "warn")],
        dir.path(),
    );
    let client = reqwest::Client::builder().pool_max_idle_per_host(concurrency * 2).build()?;
    wait_healthy(&client, &url).await?;

    // A rack of simulated boards, each offering 64 CPUs, 256 GiB and 10,000 ports.
    let join = simboards::join_token(&client, &url, "op").await?;
    let mut boards = Vec::new();
    for i in 0..SIMULATED_BOARDS {
        boards.push(
            simboards::enrol(&client, &url, &join, &format!("simulated-board-{i}"), SimResources::LARGE)
                .await?,
        );
    }
    let instances = claims;
    client
        .put(format!("{url}/v1/deployments/bench"))
        .bearer_auth("op")
        .json(&json!({
            "game": "bench", "version": "1",
            "images": {"x86_64": "appliance/android-sim:latest"},
            "profile": {"millicores": 100, "memory_mib": 64},
            "pool_size": instances,
        }))
        .send()
        .await?
        .error_for_status()?;
    let started = Instant::now();
    loop {
        for board in &boards {
            simboards::report_all_ready(&client, &url, board).await?;
        }
        let view: serde_json::Value =
            client.get(format!("{url}/v1/deployments/bench")).bearer_auth("op").send().await?.json().await?;
        let ready = view["instances"]["ready"].as_u64().unwrap_or(0) as usize;
        if ready >= instances {
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("only {ready} of {instances} simulated instances became ready");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("rack: {SIMULATED_BOARDS} simulated boards, {instances} ready instances ({build} controller)");

    // The measurement: `claims` claims with distinct keys, paced or from `concurrency` workers.
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let begin = Instant::now();
    let mut workers = Vec::new();
    if let Some(rate) = offered {
        let mut ticks = e2e::pace::ticks(rate, claims);
        while let Some((n, due)) = ticks.recv().await {
            let (client, url) = (client.clone(), url.clone());
            workers.push(tokio::spawn(async move {
                match claim(&client, &url, n).await {
                    Ok(()) => (vec![due.elapsed()], 0),
                    Err(()) => (vec![], 1),
                }
            }));
        }
    }
    for _ in 0..if offered.is_some() { 0 } else { concurrency } {
        let (client, url, next) = (client.clone(), url.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = 0usize;
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= claims {
                    break;
                }
                let t = Instant::now();
                match claim(&client, &url, n).await {
                    Ok(()) => latencies.push(t.elapsed()),
                    Err(()) => failures += 1,
                }
            }
            (latencies, failures)
        }));
    }
    let mut latencies = Vec::new();
    let mut failures = 0;
    for worker in workers {
        let (l, f) = worker.await?;
        latencies.extend(l);
        failures += f;
    }
    let elapsed = begin.elapsed();
    latencies.sort();
    let pct = |p: f64| percentile_ms(&latencies, p);
    let rate = latencies.len() as f64 / elapsed.as_secs_f64();
    let (p50, p99, max) = (pct(0.50), pct(0.99), pct(1.0));
    let load = match offered {
        Some(rate) => format!("offered at {rate:.0}/s (open loop)"),
        None => format!("concurrency {concurrency} (closed loop)"),
    };
    println!("claims: {} ok, {failures} failed, {load}", latencies.len());
    println!("claim latency p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms");
    println!(
        "claim rate {rate:.0} claims/s (goal >= 2000, p99 < 5 ms); raw SQLite ceiling {sqlite_commits:.0} commits/s"
    );
    controller.kill();

    let report = json!({
        "benchmark": "claims",
        "controller_build": build,
        "simulated_boards": SIMULATED_BOARDS,
        "ready_instances": instances,
        "concurrency": if offered.is_some() { None } else { Some(concurrency) },
        "offered_per_second": offered,
        "claims_ok": latencies.len(),
        "claims_failed": failures,
        "latency_ms": {"p50": p50, "p99": p99, "max": max},
        "claims_per_second": rate,
        "baseline_raw_sqlite_commits_per_second": sqlite_commits,
        "baseline_raw_sqlite_paced": raw_paced,
        "goal": {"claims_per_second": 2000, "p99_ms": 5},
    });
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)?;
    println!("wrote {}", out.display());
    Ok(())
}

/// One claim with key `session-{n}`; Ok when it was answered with a success.
async fn claim(client: &reqwest::Client, url: &str, n: usize) -> Result<(), ()> {
    let response = client
        .post(format!("{url}/v1/claims"))
        .bearer_auth("broker")
        .json(&json!({"deployment": "bench", "key": format!("session-{n}")}))
        .send()
        .await;
    match response {
        Ok(r) if r.status().is_success() => r.bytes().await.map(drop).map_err(drop),
        _ => Err(()),
    }
}

async fn wait_healthy(client: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    for _ in 0..100 {
        if client.get(format!("{url}/healthz")).send().await.is_ok_and(|r| r.status().is_success()) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("controller did not start")
}

/// `count` single-row insert transactions offered at `rate` per second on the same disk with
/// the same pragmas, each timed from its due time: (p50, p99, max) in ms.
fn raw_sqlite_paced(path: &std::path::Path, rate: f64, count: usize) -> anyhow::Result<(f64, f64, f64)> {
    let raw = RawTable::create(path)?;
    let start = Instant::now();
    let mut latencies = Vec::with_capacity(count);
    for n in 0..count {
        let due = start + Duration::from_secs_f64(n as f64 / rate);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        raw.commit_one(n)?;
        latencies.push(due.elapsed());
    }
    latencies.sort();
    Ok((percentile_ms(&latencies, 0.5), percentile_ms(&latencies, 0.99), percentile_ms(&latencies, 1.0)))
}

/// Single-row insert transactions for two seconds on the same disk, same pragmas.
fn raw_sqlite_commits_per_second(path: &std::path::Path) -> anyhow::Result<f64> {
    let raw = RawTable::create(path)?;
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < Duration::from_secs(2) {
        raw.commit_one(n)?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// The baseline's table: a fresh database with the services' pragmas (WAL, synchronous=NORMAL).
struct RawTable(rusqlite::Connection);

impl RawTable {
    fn create(path: &std::path::Path) -> anyhow::Result<RawTable> {
        let conn = rusqlite::Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER)", [])?;
        Ok(RawTable(conn))
    }

    /// One transaction inserting row `n`.
    fn commit_one(&self, n: usize) -> rusqlite::Result<()> {
        self.0.execute("BEGIN IMMEDIATE", [])?;
        self.0
            .execute("INSERT INTO t (k, v) VALUES (?1, ?2)", rusqlite::params![format!("k{n}"), n as i64])?;
        self.0.execute("COMMIT", []).map(drop)
    }
}

/// Percentile `p` (0..=1) of sorted latencies, in ms.
fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)].as_secs_f64() * 1e3
}
