//! SIMULATED boards in a process of their own, for the scale benchmarks: enrols `--boards`
//! simulated boards (`e2e::simboards`) with one real array controller and keeps each reporting
//! its desired state ready until the process is stopped. Not a board daemon: no container runs.
//!
//! Why a process: real boards are other machines. Run inside a benchmark's own async runtime,
//! the simulated boards' bursts (every board reading its new desired state and reporting at
//! once) queued the benchmark's timed requests behind them, and that wait was counted as the
//! services' latency. Here they only share the cores, as everything on the machine does.
//!
//! ```text
//! sim_boards --controller URL --operator-token TOKEN --prefix NAME --boards N --cpus N --memory-mib N
//! ```

use anyhow::Context;
use e2e::simboards::{self, SimResources};

struct Args {
    controller: String,
    operator_token: String,
    prefix: String,
    boards: usize,
    resources: SimResources,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut values = std::collections::HashMap::new();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        values.insert(flag, value);
    }
    let mut take = |flag: &str| values.remove(flag).with_context(|| format!("{flag} is required"));
    let args = Args {
        controller: take("--controller")?,
        operator_token: take("--operator-token")?,
        prefix: take("--prefix")?,
        boards: take("--boards")?.parse().context("--boards")?,
        resources: SimResources {
            cpus: take("--cpus")?.parse().context("--cpus")?,
            memory_mib: take("--memory-mib")?.parse().context("--memory-mib")?,
        },
    };
    if let Some(flag) = values.keys().next() {
        anyhow::bail!("unknown flag {flag}");
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args().context(
        "usage: sim_boards --controller URL --operator-token TOKEN --prefix NAME --boards N --cpus N --memory-mib N",
    )?;
    let client = reqwest::Client::new();
    let join = simboards::join_token(&client, &args.controller, &args.operator_token).await?;
    let mut reporters = Vec::with_capacity(args.boards);
    for i in 0..args.boards {
        let id = format!("{}-sim-{i}", args.prefix);
        let board = simboards::enrol(&client, &args.controller, &join, &id, args.resources)
            .await
            .with_context(|| format!("enrolling {id}"))?;
        reporters.push(simboards::spawn_reporter(client.clone(), args.controller.clone(), board));
    }
    println!("{} simulated boards enrolled with {}", args.boards, args.controller);
    // The reporters run until the benchmark stops this process.
    futures_util::future::join_all(reporters).await;
    Ok(())
}
