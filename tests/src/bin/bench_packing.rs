//! Packing density benchmark (issue 3, "Figures to report"). Not a test: it prints its figures
//! and writes them as JSON.
//!
//! A mixed rack of 60 boards (rk3588 16 GiB and 8 GiB, rk3568 4 GiB, x86 MEC servers), each
//! classified by `[[class]]` rules as the controller does, and six games with different
//! millicores, memory, GPU and encoder needs (two aarch64-only, one x86-only, one pinned to big
//! cores and needing a Mali G610). Demand follows a mix of the games (four mixes); the streams
//! are longer than the rack could ever hold (every instance takes an encoder slot).
//!
//! Two measures, each "how far into the demand the placer gets":
//! - **target mix**: the largest N such that the first N instances of the mix (a smooth
//!   round-robin, so every N is the mix at that size) are all placed when handed over as one
//!   batch, as the pool reconciler can do with every deployment's missing instances
//!   (`place_all`). Also shown: the same batch placed deployment by deployment in the listed
//!   order (`place_many`), and first fit.
//! - **online**: a shuffled stream placed one instance at a time in arrival order, with no
//!   look-ahead, until one fits nowhere; summed over `--streams` streams.
//!
//! Placers: the packer with `FillFirst` and with `Spread`; a first-fit baseline (boards in id
//! order, the first that fits, same CPU model; ids are shuffled across classes).
//!
//! The best possible, on the same demand, from the packer's own model of what a board can hold
//! (`packing::configs`: boards grouped into classes, every maximal set of instances one board of
//! a class can hold, cpusets searched exactly; exact for these games, whose millicores split
//! evenly over their CPUs) and its configuration LP (`packing::lp`):
//! - small racks (3-4 boards): the exact optimum, by a search over the residual demand board by
//!   board over those sets.
//! - every rack: an upper bound from the configuration LP (boards of each class hold a
//!   fractional mix of maximal sets). On the small racks it can be compared with the exact
//!   optimum. On the 60-board rack, 'exists' is what the packer's planning pass alone
//!   (`packing::plan`: the LP turned into whole boards, the rest by the greedy passes) places:
//!   a packing that exists, so a lower bound on the optimum. The optimum lies between the two.
//!
//! Also: microseconds per `place` call, over whole runs on the 60-board rack; and per
//! `place_all` call of the fill placer, the mean and slowest over its scan down to its largest
//! N, and one call one instance past the LP bound (a batch that cannot all fit, as a pool short
//! of room asks every pass).
//!
//! ```text
//! cargo run --release -p e2e --bin bench_packing -- [--out PATH] [--seed N] [--streams N]
//! ```

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use api::facts::{BoardFacts, CpuCluster, CpuTopology, DiskFacts, DockerFacts, KernelFacts, PortRange};
use api::rack::Pinning;
use array_controller::packing::configs::{self, Class};
use array_controller::packing::resources::{MILLICORES_PER_CPU, cpu_split};
use array_controller::packing::{self, BoardState, ClassRule, PlacementRequest, Policy, lp, plan};
use serde_json::{Value, json};

/// The controller's `[[class]]` rules for the boards of this rack (as JSON here; the same keys
/// as in the TOML config).
fn class_rules() -> Vec<ClassRule> {
    serde_json::from_value(json!([
        { "name": "x86-mec", "match": { "arch": "x86_64" },
          "reserve": { "millicores": 2000, "memory_mib": 4096 },
          "gpu_kind": "nvidia-t4", "gpu_slots": 24, "encoder_slots": 32 },
        { "name": "rk3588-16g", "match": { "arch": "aarch64", "soc": "rk3588", "min_memory_mib": 12288 },
          "reserve": { "millicores": 1000, "memory_mib": 1536 },
          "gpu_kind": "mali-g610", "gpu_slots": 12, "encoder_slots": 16 },
        { "name": "rk3588-8g", "match": { "arch": "aarch64", "soc": "rk3588" },
          "reserve": { "millicores": 1000, "memory_mib": 1024 },
          "gpu_kind": "mali-g610", "gpu_slots": 12, "encoder_slots": 16 },
        { "name": "rk3568-4g", "match": { "arch": "aarch64", "soc": "rk3568" },
          "reserve": { "millicores": 500, "memory_mib": 640 },
          "gpu_kind": "mali-g52", "gpu_slots": 4, "encoder_slots": 8 },
    ]))
    .expect("the bench's class rules are valid")
}

/// A kind of board as its daemon would report it.
struct Hardware {
    kind: &'static str,
    arch: &'static str,
    soc: Option<&'static str>,
    memory_mib: u64,
    cpus: u32,
    /// The first `n` CPUs are a little cluster (capacity 414, the rest 1024).
    little: Option<u32>,
    /// Boards of this kind in the 60-board rack.
    in_rack: usize,
}

#[rustfmt::skip]
const HARDWARE: [Hardware; 4] = [
    Hardware { kind: "rk3588-16g", arch: "aarch64", soc: Some("rockchip,rk3588"), memory_mib: 15_740, cpus: 8, little: Some(4), in_rack: 24 },
    Hardware { kind: "rk3588-8g", arch: "aarch64", soc: Some("rockchip,rk3588"), memory_mib: 7_820, cpus: 8, little: Some(4), in_rack: 18 },
    Hardware { kind: "rk3568-4g", arch: "aarch64", soc: Some("rockchip,rk3568"), memory_mib: 3_900, cpus: 4, little: None, in_rack: 14 },
    Hardware { kind: "x86-mec", arch: "x86_64", soc: None, memory_mib: 64_000, cpus: 32, little: None, in_rack: 4 },
];

/// One game's instance profile and constraints.
struct Game {
    name: &'static str,
    millicores: u32,
    memory_mib: u64,
    gpu_slots: u32,
    encoder_slots: u32,
    big: bool,
    archs: &'static [&'static str],
    gpu_kind: Option<&'static str>,
}

const ARM: &[&str] = &["aarch64"];
const X86: &[&str] = &["x86_64"];
const BOTH: &[&str] = &["aarch64", "x86_64"];

#[rustfmt::skip]
const GAMES: [Game; 6] = [
    Game { name: "idle", millicores: 250, memory_mib: 768, gpu_slots: 0, encoder_slots: 1, big: false, archs: BOTH, gpu_kind: None },
    Game { name: "puzzle", millicores: 500, memory_mib: 1024, gpu_slots: 1, encoder_slots: 1, big: false, archs: BOTH, gpu_kind: None },
    Game { name: "runner", millicores: 1000, memory_mib: 1536, gpu_slots: 1, encoder_slots: 1, big: false, archs: ARM, gpu_kind: None },
    Game { name: "rpg", millicores: 1500, memory_mib: 2560, gpu_slots: 2, encoder_slots: 1, big: false, archs: BOTH, gpu_kind: None },
    Game { name: "moba", millicores: 2000, memory_mib: 3072, gpu_slots: 2, encoder_slots: 2, big: true, archs: ARM, gpu_kind: Some("mali-g610") },
    Game { name: "shooter", millicores: 3000, memory_mib: 4096, gpu_slots: 3, encoder_slots: 2, big: false, archs: X86, gpu_kind: None },
];

/// Target mixes: relative weights of the games above.
const MIXES: [(&str, [u32; 6]); 4] = [
    ("balanced", [2, 3, 3, 2, 2, 1]),
    ("arm-heavy", [0, 1, 4, 2, 4, 0]),
    ("light", [5, 4, 1, 0, 0, 0]),
    ("heavy", [0, 0, 1, 3, 3, 2]),
];

/// Small racks where the exact optimum is computed (indices into `HARDWARE`).
const SMALL_RACKS: [(&str, &[usize]); 3] =
    [("small-a", &[0, 1, 2]), ("small-b", &[0, 0, 1, 2]), ("small-c", &[3, 1, 2])];

struct Args {
    out: PathBuf,
    seed: u64,
    streams: usize,
}

fn parse_args() -> Args {
    let mut args = Args { out: "bench-results/packing.json".into(), seed: 2026, streams: 5 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        match flag.as_str() {
            "--out" => args.out = value().into(),
            "--seed" => args.seed = value().parse().unwrap_or_else(|_| usage("--seed takes a number")),
            "--streams" => {
                args.streams = value().parse().unwrap_or_else(|_| usage("--streams takes a number"))
            }
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    if args.streams == 0 {
        usage("--streams must be at least 1");
    }
    args
}

fn usage(problem: &str) -> ! {
    if !problem.is_empty() {
        eprintln!("bench_packing: {problem}");
    }
    eprintln!(
        "usage: bench_packing [--out PATH (bench-results/packing.json)] [--seed N (2026)] [--streams N (5)]"
    );
    std::process::exit(if problem.is_empty() { 0 } else { 2 });
}

/// splitmix64: a fixed seed gives the same racks and streams on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn facts(id: &str, hw: &Hardware) -> BoardFacts {
    let cpus: Vec<u32> = (0..hw.cpus).collect();
    let clusters = match hw.little {
        Some(n) => vec![
            CpuCluster { cpus: (n..hw.cpus).collect(), capacity: Some(1024) },
            CpuCluster { cpus: (0..n).collect(), capacity: Some(414) },
        ],
        None => vec![CpuCluster { cpus: cpus.clone(), capacity: None }],
    };
    BoardFacts {
        board_id: id.to_string(),
        arch: hw.arch.to_string(),
        soc_model: hw.soc.map(str::to_string),
        cpu: CpuTopology { cpus, clusters },
        memory_mib: hw.memory_mib,
        disk: DiskFacts { mount: "/var/lib/docker".into(), total_mib: 240_000, available_mib: 200_000 },
        gpu_devices: vec!["/dev/dri/renderD128".into()],
        encoder_devices: vec!["/dev/mpp_service".into()],
        kernel: KernelFacts {
            release: "6.1.75".into(),
            page_size: 4096,
            binderfs: true,
            binder_devices: vec![],
            memfd: true,
            ashmem: false,
            inotify_max_user_instances: Some(8192),
            inotify_max_user_watches: Some(524_288),
        },
        docker: DockerFacts {
            reachable: true,
            version: Some("27.5".into()),
            api_version: None,
            cgroup_version: Some(2),
        },
        addresses: vec!["10.0.0.10".into()],
        host_port_range: PortRange { start: 20000, end: 20199 },
        overridden: vec![],
    }
}

fn request(game: &Game) -> PlacementRequest {
    PlacementRequest {
        millicores: game.millicores,
        memory_mib: game.memory_mib,
        gpu_slots: game.gpu_slots,
        encoder_slots: game.encoder_slots,
        pinning: if game.big { Pinning::Big } else { Pinning::Any },
        archs: game.archs.iter().map(|a| a.to_string()).collect(),
        gpu_kind: game.gpu_kind.map(str::to_string),
        labels: Default::default(),
        anti_affinity: None,
    }
}

/// Boards of the given hardware kinds, ids in the given order, classified by the rules.
fn build_rack(kinds: &[usize], rules: &[ClassRule]) -> Vec<BoardState> {
    kinds
        .iter()
        .enumerate()
        .map(|(i, &kind)| {
            let facts = facts(&format!("b{i:02}"), &HARDWARE[kind]);
            let class = packing::classify(&facts, rules).expect("every bench board has a class");
            assert_eq!(class.name, HARDWARE[kind].kind, "class rules and hardware disagree");
            BoardState::new(&facts, class)
        })
        .collect()
}

/// Instances in random order, each drawn from the mix.
fn shuffled(weights: &[u32; 6], len: usize, rng: &mut Rng) -> Vec<usize> {
    let total: u32 = weights.iter().sum();
    (0..len)
        .map(|_| {
            let mut pick = rng.below(u64::from(total)) as u32;
            weights
                .iter()
                .position(|&w| {
                    if pick < w {
                        true
                    } else {
                        pick -= w;
                        false
                    }
                })
                .unwrap()
        })
        .collect()
}

/// The mix as a smooth weighted round-robin: every prefix is as close to the mix as it can be,
/// so its first N are "N instances of the target mix", growing one instance at a time.
fn smooth(weights: &[u32; 6], len: usize) -> Vec<usize> {
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = [0i64; 6];
    (0..len)
        .map(|_| {
            for (c, &w) in current.iter_mut().zip(weights) {
                *c += i64::from(w);
            }
            let best = (0..6).max_by_key(|&g| (current[g], std::cmp::Reverse(g))).unwrap();
            current[best] -= total;
            best
        })
        .collect()
}

#[derive(Clone, Copy)]
enum Strategy {
    /// The packer.
    Packer(Policy),
    /// Boards in id order, the first that fits.
    FirstFit,
}

/// One placer's figures: instances placed, and `place` calls and the time spent in them; for
/// batches, also the batches placed and the slowest one.
#[derive(Default)]
struct Run {
    placed: usize,
    calls: usize,
    elapsed: Duration,
    batches: usize,
    slowest: Duration,
    /// One batch one instance past the LP bound, which cannot all fit (`place_all` only): what
    /// a pool short of room costs each pass.
    unmet: Option<Duration>,
}

impl Run {
    fn add(&mut self, other: &Run) {
        self.placed += other.placed;
        self.calls += other.calls;
        self.elapsed += other.elapsed;
    }

    fn us_per_place(&self) -> f64 {
        self.elapsed.as_secs_f64() * 1e6 / self.calls.max(1) as f64
    }

    fn ms_per_batch(&self) -> f64 {
        self.elapsed.as_secs_f64() * 1e3 / self.batches.max(1) as f64
    }
}

fn place_one(boards: &mut [BoardState], req: &PlacementRequest, strategy: Strategy) -> bool {
    let placement = match strategy {
        Strategy::Packer(policy) => packing::place(boards, req, policy).ok(),
        Strategy::FirstFit => {
            boards.iter().find_map(|b| packing::place(std::slice::from_ref(b), req, Policy::FillFirst).ok())
        }
    };
    let Some(p) = placement else { return false };
    boards.iter_mut().find(|b| b.id == p.board_id).expect("placed on a board of the rack").placed.push(p);
    true
}

fn check(boards: &[BoardState]) {
    for b in boards {
        packing::check_board(b).expect("the packer never over-commits");
    }
}

/// Online: places the stream in arrival order until an instance fits nowhere.
fn online(rack: &[BoardState], requests: &[PlacementRequest], stream: &[usize], strategy: Strategy) -> Run {
    let mut boards = rack.to_vec();
    let start = Instant::now();
    let mut placed = 0;
    for &game in stream {
        if !place_one(&mut boards, &requests[game], strategy) {
            break;
        }
        placed += 1;
    }
    let elapsed = start.elapsed();
    check(&boards);
    Run { placed, calls: placed + 1, elapsed, ..Run::default() }
}

#[derive(Clone, Copy)]
enum Batching {
    /// `place_all`: most constrained games first, the rest interleaved.
    All(Policy),
    /// `place_many` game by game, in the listed order.
    InOrder(Policy),
    /// Game by game in the listed order, first fit.
    FirstFit,
}

/// Places `counts` instances of each game as one batch; true when every one was placed.
fn batch(
    rack: &[BoardState],
    requests: &[PlacementRequest],
    counts: &[u32],
    how: Batching,
    run: &mut Run,
) -> bool {
    let mut boards = rack.to_vec();
    let total: usize = counts.iter().map(|&c| c as usize).sum();
    let start = Instant::now();
    let placed: usize = match how {
        Batching::All(policy) => {
            let demand: Vec<(PlacementRequest, usize)> =
                requests.iter().cloned().zip(counts.iter().map(|&c| c as usize)).collect();
            packing::place_all(&mut boards, &demand, policy).iter().map(|b| b.placed.len()).sum()
        }
        Batching::InOrder(policy) => requests
            .iter()
            .zip(counts)
            .map(|(req, &n)| packing::place_many(&mut boards, req, n as usize, policy).placed.len())
            .sum(),
        Batching::FirstFit => requests
            .iter()
            .zip(counts)
            .map(|(req, &n)| (0..n).take_while(|_| place_one(&mut boards, req, Strategy::FirstFit)).count())
            .sum(),
    };
    let elapsed = start.elapsed();
    run.elapsed += elapsed;
    run.batches += 1;
    run.slowest = run.slowest.max(elapsed);
    // One call per instance placed, and (about) one more that found no board.
    run.calls += placed + usize::from(placed < total);
    check(&boards);
    placed == total
}

/// The largest N at most `hi` for which the first N of the mix are all placed as one batch.
/// Scans down from `hi`, so a placer is credited with the largest N it manages.
fn batch_best(
    rack: &[BoardState],
    requests: &[PlacementRequest],
    mix: &[usize],
    hi: usize,
    how: Batching,
) -> Run {
    let mut run = Run::default();
    run.placed = (0..=hi).rev().find(|&n| batch(rack, requests, &demand(mix, n), how, &mut run)).unwrap_or(0);
    if matches!(how, Batching::All(_)) && hi < mix.len() {
        let mut past = Run::default();
        assert!(!batch(rack, requests, &demand(mix, hi + 1), how, &mut past), "past the LP bound");
        run.unmet = Some(past.elapsed);
    }
    run
}

/// Demand vector of the first `n` instances of a stream.
fn demand(stream: &[usize], n: usize) -> Vec<u32> {
    let mut d = vec![0; GAMES.len()];
    for &g in &stream[..n] {
        d[g] += 1;
    }
    d
}

/// Largest prefix for which `feasible` holds, knowing `lo` is feasible; prefixes only get harder.
fn largest_prefix(lo: usize, hi: usize, mut feasible: impl FnMut(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (lo, hi);
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if feasible(mid) { lo = mid } else { hi = mid - 1 }
    }
    lo
}

/// Exact: can the boards (classes listed) hold `need`? Residual demand board by board; the
/// last board is asked directly.
fn exact_feasible(classes: &mut [Class], boards: &[usize], configs: &[Vec<Vec<u32>>], need: &[u32]) -> bool {
    let (last, rest) = boards.split_last().expect("a rack has boards");
    let mut frontier: HashSet<Vec<u32>> = HashSet::from([need.to_vec()]);
    for &class in rest {
        let mut next = HashSet::new();
        for r in &frontier {
            for c in &configs[class] {
                next.insert(r.iter().zip(c).map(|(a, b)| a.saturating_sub(*b)).collect::<Vec<u32>>());
            }
        }
        frontier = next;
    }
    frontier.iter().any(|r| classes[*last].fits(r))
}

/// The best possible on one rack: the LP bound, the exact optimum (small racks) and a packing
/// that exists (the packer's planning pass alone, the 60-board rack). The model, the
/// configurations and the LP are the packer's own (`packing::configs`, `packing::lp`).
struct Optimum {
    classes: Vec<Class>,
    /// Boards per class (indices into `classes`).
    per_class: Vec<usize>,
    /// Class of each board of the rack, in id order.
    class_of: Vec<usize>,
    /// Maximal configurations per class for the whole demand.
    configs: Vec<Vec<Vec<u32>>>,
}

impl Optimum {
    fn new(rack: &[BoardState], requests: &[PlacementRequest], limit: &[u32]) -> Optimum {
        let mut classes = configs::classes(rack, requests);
        let per_class = classes.iter().map(|c| c.boards.len()).collect();
        let class_of = (0..rack.len())
            .map(|b| {
                classes.iter().position(|c| c.boards.contains(&b)).expect("every bench board runs a game")
            })
            .collect();
        let configs = configs::columns(&mut classes, limit, &mut { usize::MAX }).expect("no budget");
        Optimum { classes, per_class, class_of, configs }
    }

    /// Largest N in `lo..=hi` for which the LP relaxation holds the first N of `stream`.
    fn bound(&self, stream: &[usize], lo: usize, hi: usize) -> usize {
        largest_prefix(lo, hi, |n| {
            let need = demand(stream, n);
            lp::solve(&self.configs, &self.per_class, &need).expect("the LP solves").covers(&need)
        })
    }

    /// Largest N in `lo..=hi` for which some packing holds the first N of `stream`.
    fn exact(&mut self, stream: &[usize], lo: usize, hi: usize) -> usize {
        let mut boards = self.class_of.clone();
        // Classes with few configurations first keep the residual frontier small.
        boards.sort_by_key(|&c| self.configs[c].len());
        largest_prefix(lo, hi, |n| {
            let need = demand(stream, n);
            let clipped = configs::columns(&mut self.classes, &need, &mut { usize::MAX }).expect("no budget");
            exact_feasible(&mut self.classes, &boards, &clipped, &need)
        })
    }
}

/// Largest N in `lo..=hi` for which the packer's planning pass alone (the LP turned into whole
/// boards, the rest placed by the greedy passes) places all of the first N of `stream`: a
/// packing that exists.
fn planned(
    rack: &[BoardState],
    requests: &[PlacementRequest],
    stream: &[usize],
    lo: usize,
    hi: usize,
) -> usize {
    largest_prefix(lo, hi, |n| {
        let need = demand(stream, n);
        let demand: Vec<(PlacementRequest, usize)> =
            requests.iter().cloned().zip(need.iter().map(|&l| l as usize)).collect();
        let mut boards = rack.to_vec();
        let batches =
            plan::place_planned(&mut boards, &demand, Policy::FillFirst).expect("within the budget").batches;
        check(&boards);
        batches.iter().zip(&need).all(|(b, &l)| b.placed.len() == l as usize)
    })
}

/// One scenario's figures.
struct Figures {
    name: String,
    mode: &'static str,
    boards: usize,
    /// Each placer's runs (summed over streams for the online measure).
    runs: Vec<(&'static str, Run)>,
    exact: Option<usize>,
    bound: usize,
    /// A packing that exists (LP rounding), where computed.
    rounded: Option<usize>,
}

impl Figures {
    /// The optimum where known, else the LP bound.
    fn reference(&self) -> usize {
        self.exact.unwrap_or(self.bound)
    }
}

fn gap(placed: usize, reference: usize) -> f64 {
    if reference == 0 { 0.0 } else { 100.0 * (reference as f64 - placed as f64) / reference as f64 }
}

fn main() {
    let args = parse_args();
    let rules = class_rules();
    for g in &GAMES {
        let (k, _, rem) = cpu_split(g.millicores);
        // The exact model spreads millicores evenly; with no remainder it is the packer's model.
        assert!(
            rem == 0 && g.millicores <= k as u32 * MILLICORES_PER_CPU,
            "{}: millicores must divide evenly",
            g.name
        );
    }
    let requests: Vec<PlacementRequest> = GAMES.iter().map(request).collect();
    let mut rng = Rng(args.seed);

    // The 60-board rack, ids in a shuffled order of classes (first fit walks ids in order).
    let mut kinds: Vec<usize> =
        HARDWARE.iter().enumerate().flat_map(|(k, hw)| std::iter::repeat_n(k, hw.in_rack)).collect();
    for i in (1..kinds.len()).rev() {
        kinds.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let mut racks: Vec<(String, Vec<usize>, bool)> = vec![("rack-60".into(), kinds, false)];
    racks.extend(SMALL_RACKS.iter().map(|(name, kinds)| (name.to_string(), kinds.to_vec(), true)));

    let started = Instant::now();
    let mut figures = Vec::new();
    for (rack_name, kinds, small) in &racks {
        let rack = build_rack(kinds, &rules);
        // Every instance takes an encoder slot, so no rack holds a stream this long.
        let len = 1 + rack.iter().map(|b| b.capacity.encoder_slots as usize).sum::<usize>();
        for (mix, weights) in &MIXES {
            // Games no board of this rack can run are never sent here (the broker knows).
            let weights: [u32; 6] = std::array::from_fn(|g| {
                let empty = |b: &BoardState| BoardState { placed: vec![], ..b.clone() };
                let runs =
                    rack.iter().any(|b| packing::place(&[empty(b)], &requests[g], Policy::FillFirst).is_ok());
                if runs { weights[g] } else { 0 }
            });
            let target = smooth(&weights, len);
            let arrivals: Vec<Vec<usize>> =
                (0..args.streams).map(|_| shuffled(&weights, len, &mut rng)).collect();
            let limit: Vec<u32> = (0..GAMES.len())
                .map(|g| arrivals.iter().chain([&target]).map(|s| demand(s, len)[g]).max().unwrap_or(0))
                .collect();
            let mut optimum = Optimum::new(&rack, &requests, &limit);
            let name = format!("{rack_name}/{mix}");

            let bound = optimum.bound(&target, 0, len);
            let runs = vec![
                ("fill", batch_best(&rack, &requests, &target, bound, Batching::All(Policy::FillFirst))),
                ("spread", batch_best(&rack, &requests, &target, bound, Batching::All(Policy::Spread))),
                (
                    "fill-in-order",
                    batch_best(&rack, &requests, &target, bound, Batching::InOrder(Policy::FillFirst)),
                ),
                ("first-fit", batch_best(&rack, &requests, &target, bound, Batching::FirstFit)),
            ];
            let best = runs.iter().map(|r| r.1.placed).max().unwrap_or(0);
            let exact = small.then(|| optimum.exact(&target, best, bound));
            let rounded = (!small).then(|| planned(&rack, &requests, &target, best, bound));
            figures.push(Figures {
                name: name.clone(),
                mode: "target mix",
                boards: rack.len(),
                runs,
                exact,
                bound,
                rounded,
            });

            let mut runs: Vec<(&str, Run)> =
                vec![("fill", Run::default()), ("spread", Run::default()), ("first-fit", Run::default())];
            let strategies =
                [Strategy::Packer(Policy::FillFirst), Strategy::Packer(Policy::Spread), Strategy::FirstFit];
            let (mut exact, mut bound, mut rounded) = (0, 0, 0);
            for stream in &arrivals {
                let mut best = 0;
                for ((_, total), strategy) in runs.iter_mut().zip(strategies) {
                    let run = online(&rack, &requests, stream, strategy);
                    best = best.max(run.placed);
                    total.add(&run);
                }
                let b = optimum.bound(stream, best, len);
                bound += b;
                if *small {
                    exact += optimum.exact(stream, best, b);
                } else {
                    rounded += planned(&rack, &requests, stream, best, b);
                }
            }
            let (exact, rounded) = if *small { (Some(exact), None) } else { (None, Some(rounded)) };
            figures.push(Figures { name, mode: "online", boards: rack.len(), runs, exact, bound, rounded });
        }
    }
    print_table(
        "target mix",
        "largest N whose first N instances of the mix, placed as one batch, all fit",
        &figures,
    );
    print_table(
        "online",
        &format!(
            "instances placed in arrival order before the first that fits nowhere, sum of {} shuffled streams",
            args.streams
        ),
        &figures,
    );
    println!("\n(computed in {:.1} s)", started.elapsed().as_secs_f64());

    let out = json!({
        "benchmark": "packing",
        "seed": args.seed,
        "streams": args.streams,
        "measures": {
            "target mix": "largest N such that the first N instances of the mix (smooth round-robin), placed as one batch, all fit",
            "online": "instances of shuffled streams placed in arrival order before the first that fits nowhere, summed over the streams",
        },
        "gap": "(reference - placed) / reference in %, the reference being the exact optimum where computed, else the LP upper bound",
        "games": GAMES.iter().map(|g| json!({
            "name": g.name, "millicores": g.millicores, "memory_mib": g.memory_mib, "gpu_slots": g.gpu_slots,
            "encoder_slots": g.encoder_slots, "pinning": if g.big { "big" } else { "any" }, "archs": g.archs,
            "gpu_kind": g.gpu_kind,
        })).collect::<Vec<_>>(),
        "hardware": HARDWARE.iter().map(|h| json!({
            "class": h.kind, "arch": h.arch, "memory_mib": h.memory_mib, "cpus": h.cpus, "in_rack_60": h.in_rack,
        })).collect::<Vec<_>>(),
        "mixes": MIXES.iter().map(|(name, w)| json!({ "name": name, "weights": w })).collect::<Vec<_>>(),
        "scenarios": figures.iter().map(figures_json).collect::<Vec<_>>(),
    });
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).expect("create the output directory");
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&out).expect("JSON")).expect("write the results");
    println!("wrote {}", args.out.display());
}

fn print_table(mode: &str, what: &str, figures: &[Figures]) {
    let figures: Vec<&Figures> = figures.iter().filter(|f| f.mode == mode).collect();
    println!("\n{mode}: {what}");
    println!(
        "placed (gap to the optimum where shown, else to the LP bound); 'exists' is a packing found by the \
         packer's planning pass alone (the LP turned into whole boards)"
    );
    let batches = figures[0].runs[0].1.batches > 0;
    print!("{:<18} {:>6}", "scenario", "boards");
    for (label, _) in &figures[0].runs {
        print!(" {label:>14}");
    }
    print!(" {:>7} {:>7} {:>7} {:>9}", "optimum", "exists", "bound", "us/place");
    // Per `place_all` call of the first placer (fill), over the scan down to its largest N.
    println!(
        "{}",
        if batches { format!(" {:>9} {:>9} {:>9}", "ms/batch", "max ms", "unmet ms") } else { String::new() }
    );
    for f in figures {
        print!("{:<18} {:>6}", f.name, f.boards);
        for (_, run) in &f.runs {
            print!(" {:>14}", format!("{} ({:.1}%)", run.placed, gap(run.placed, f.reference())));
        }
        let opt = |v: Option<usize>| v.map_or("-".to_string(), |v| v.to_string());
        let fill = &f.runs[0].1;
        print!(" {:>7} {:>7} {:>7} {:>9.1}", opt(f.exact), opt(f.rounded), f.bound, fill.us_per_place());
        if batches {
            let unmet = fill.unmet.map_or("-".to_string(), |d| format!("{:.1}", d.as_secs_f64() * 1e3));
            print!(" {:>9.1} {:>9.1} {unmet:>9}", fill.ms_per_batch(), fill.slowest.as_secs_f64() * 1e3);
        }
        println!();
    }
}

fn figures_json(f: &Figures) -> Value {
    let runs: serde_json::Map<String, Value> = f
        .runs
        .iter()
        .map(|(label, r)| {
            let v = json!({
                "placed": r.placed,
                "gap_pct": gap(r.placed, f.reference()),
                "place_calls": r.calls,
                "us_per_place": r.us_per_place(),
                "batches": r.batches,
                "ms_per_batch": r.ms_per_batch(),
                "slowest_batch_ms": r.slowest.as_secs_f64() * 1e3,
                "unmet_batch_ms": r.unmet.map(|d| d.as_secs_f64() * 1e3),
            });
            (label.to_string(), v)
        })
        .collect();
    json!({
        "scenario": f.name,
        "mode": f.mode,
        "boards": f.boards,
        "placers": runs,
        "exact_optimum": f.exact,
        "planning_pass_packing": f.rounded,
        "lp_bound": f.bound,
        "gap_reference": if f.exact.is_some() { "exact optimum" } else { "LP upper bound" },
    })
}
