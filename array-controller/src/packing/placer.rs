//! Choosing a board for an instance and giving it concrete resources.
//!
//! Every board is checked in turn; the first unmet requirement rejects it with a [`Reason`] an
//! operator can act on. Among the boards that fit, the [`Policy`] picks one (ties go to the
//! board listed first, so the result is deterministic).

use std::fmt;

use api::rack::Pinning;

use super::resources::{self, BoardCapacity, BoardUsage, PORTS_PER_INSTANCE};
use super::{BoardState, Placement, PlacementRequest};

/// How boards are chosen among those that fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Best fit: the board with the least room left after placing, in absolute terms, so small
    /// and busy boards fill up first and whole boards (big ones above all) stay free.
    FillFirst,
    /// The least loaded board (by dominant share), so instances share boards as little as
    /// possible.
    Spread,
}

/// Why one board cannot take the instance.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    #[error("cordoned")]
    Cordoned,
    #[error("not schedulable (not ready or unreachable)")]
    Unschedulable,
    #[error("architecture {board} has no image (images exist for {})", wanted.join(", "))]
    Arch { board: String, wanted: Vec<String> },
    #[error("GPU kind {} is not the required {wanted}", board.as_deref().unwrap_or("none"))]
    GpuKind { wanted: String, board: Option<String> },
    #[error("label {key}={wanted} is required, the board has {}", found.as_ref().map_or("none".to_string(), |v| format!("{key}={v}")))]
    Label { key: String, wanted: String, found: Option<String> },
    #[error("already runs {count} instances of {key} (anti-affinity allows {max} per board)")]
    AntiAffinity { key: String, count: u32, max: u32 },
    #[error("not enough memory: needs {needed} MiB, {free} MiB free")]
    Memory { needed: u64, free: u64 },
    #[error("not enough CPU: needs {needed} millicores, {free} free")]
    Millicores { needed: u32, free: u32 },
    #[error("not enough free {}cores: needs {needed} with {share} millicores free each, {available} have", if *big { "big " } else { "" })]
    Cpus { big: bool, needed: usize, share: u32, available: usize },
    #[error("not enough GPU slots: needs {needed}, {free} free")]
    GpuSlots { needed: u32, free: u32 },
    #[error("not enough encoder slots: needs {needed}, {free} free")]
    EncoderSlots { needed: u32, free: u32 },
    #[error("not enough host ports: needs {PORTS_PER_INSTANCE}, {free} free in {start}-{end}")]
    Ports { free: usize, start: u16, end: u16 },
}

/// One board and why it was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Board id.
    pub board: String,
    /// Why it cannot take the instance.
    pub reason: Reason,
}

/// No board can take the instance; says why for every board considered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoFit {
    /// Every board, in the order given, with its reason.
    pub rejected: Vec<Rejected>,
}

impl fmt::Display for NoFit {
    /// Boards with the same reason are listed together (at most 5 names each).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.rejected.is_empty() {
            return write!(f, "no board can take the instance: the rack has no boards");
        }
        let mut groups: Vec<(String, Vec<&str>)> = Vec::new();
        for r in &self.rejected {
            let text = r.reason.to_string();
            match groups.iter_mut().find(|(t, _)| *t == text) {
                Some((_, boards)) => boards.push(&r.board),
                None => groups.push((text, vec![&r.board])),
            }
        }
        write!(f, "no board can take the instance:")?;
        for (i, (text, boards)) in groups.iter().enumerate() {
            let more =
                if boards.len() > 5 { format!(" and {} more", boards.len() - 5) } else { String::new() };
            let names = boards.iter().take(5).copied().collect::<Vec<_>>().join(", ");
            write!(f, "{} {names}{more}: {text}", if i == 0 { "" } else { ";" })?;
        }
        Ok(())
    }
}

impl std::error::Error for NoFit {}

/// What [`place_many`] achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Placements made, in order (also appended to their boards' `placed`).
    pub placed: Vec<Placement>,
    /// Why the rest could not be placed; `None` when every instance was.
    pub failure: Option<NoFit>,
}

/// Places one instance: the board the policy prefers among those that fit, with its resources.
pub fn place(boards: &[BoardState], request: &PlacementRequest, policy: Policy) -> Result<Placement, NoFit> {
    choose(boards, request, &scale(boards), None, |load| load.score(policy))
}

/// The board with the lowest `score` among those that fit (the first listed on a tie), with
/// its placement, or why no board fits.
fn choose(
    boards: &[BoardState],
    request: &PlacementRequest,
    scale: &Scale,
    skip: Option<usize>,
    score: impl Fn(&Load) -> f64,
) -> Result<Placement, NoFit> {
    let mut best: Option<(f64, Placement)> = None;
    let mut rejected = Vec::new();
    for (_, board) in boards.iter().enumerate().filter(|(i, _)| Some(*i) != skip) {
        match fit(board, request, scale) {
            Ok((placement, load)) => {
                let s = score(&load);
                if best.as_ref().is_none_or(|(b, _)| s < *b) {
                    best = Some((s, placement));
                }
            }
            Err(reason) => rejected.push(Rejected { board: board.id.clone(), reason }),
        }
    }
    best.map(|(_, p)| p).ok_or(NoFit { rejected })
}

/// Places `count` instances one at a time, appending each to its board so the next sees it.
/// Stops at the first instance that fits nowhere (the rest would not fit either).
pub fn place_many(
    boards: &mut [BoardState],
    request: &PlacementRequest,
    count: usize,
    policy: Policy,
) -> Batch {
    let mut placed = Vec::with_capacity(count);
    for _ in 0..count {
        match place(boards, request, policy) {
            Ok(p) => put(boards, &mut placed, p),
            Err(no_fit) => return Batch { placed, failure: Some(no_fit) },
        }
    }
    Batch { placed, failure: None }
}

/// Places the instances of several requests at once (a target mix, such as every deployment's
/// missing instances). Requests that may run on fewer boards go first, so flexible ones do not
/// take the only boards the others can use. Requests that may run on as many boards are
/// interleaved in proportion to their counts (a smooth weighted round-robin), so each board
/// gets a mix that uses its resources evenly rather than running out of one early. A request
/// that fits nowhere stops; the others go on. Returns one [`Batch`] per request, in the order
/// given.
///
/// An instance that fits nowhere is not given up at once: on the first board that may run it
/// where moving up to [`MAX_MOVES`] instances of this batch to other boards makes room, they
/// are moved and it goes there (instances placed before the call never move).
///
/// When that first pass cannot place everything, the planning pass ([`super::plan`]) tries on a
/// copy of the boards: the configuration LP over the whole batch turned into whole boards, and
/// the passes below for the rest. If that too leaves instances out, a few other passes are
/// tried on copies (other orders and, under [`Policy::FillFirst`], other measures of fit, the
/// least-loaded one included). Whichever places the most instances is kept (on a tie the first
/// pass, then the plan). Under [`Policy::Spread`] the other passes only change the order (every
/// one still picks the least loaded board), and the plan packs as densely as under fill-first:
/// it runs only when the batch does not fit otherwise. When everything fits, only the first
/// pass runs.
///
/// When even the best of those leaves instances unplaced, and the plan has not shown that no
/// more of the batch can be placed ([`super::plan::Planned::bound`]), a bounded
/// ruin-and-recreate search ([`super::improve`]) starts from it and keeps whatever places more.
/// Every request still short says why in its `failure`, from the boards as they end up.
pub fn place_all(
    boards: &mut [BoardState],
    demand: &[(PlacementRequest, usize)],
    policy: Policy,
) -> Vec<Batch> {
    let wanted: usize = demand.iter().map(|(_, n)| n).sum();
    let placed = |batches: &[Batch]| batches.iter().map(|b| b.placed.len()).sum::<usize>();
    let all = passes(policy);
    let fresh = boards.to_vec();
    let mut batches = run_pass(boards, demand, all[0]);
    // The most that can be placed, when the plan knows it exactly.
    let mut most = wanted;
    if placed(&batches) < wanted {
        let mut trial = fresh.clone();
        if let Some(planned) = super::plan::place_planned(&mut trial, demand, policy) {
            most = planned.bound.unwrap_or(wanted);
            if placed(&planned.batches) > placed(&batches) {
                boards.clone_from_slice(&trial);
                batches = planned.batches;
            }
        }
    }
    if placed(&batches) < most {
        let mut trial = fresh;
        let others = best_pass(&mut trial, demand, &all[1..]);
        if placed(&others) > placed(&batches) {
            boards.clone_from_slice(&trial);
            batches = others;
        }
    }
    if placed(&batches) < most {
        super::improve::improve(boards, demand, &mut batches, policy);
    } else if placed(&batches) < wanted {
        settle(boards, demand, &mut batches, policy);
    }
    batches
}

/// Gives every request still short of its count a `failure` that says why from the boards as
/// they are now (placing first any instance that fits after all); every other request gets
/// none. The reasons a pass recorded were true when it gave up, not necessarily at the end.
pub(super) fn settle(
    boards: &mut [BoardState],
    demand: &[(PlacementRequest, usize)],
    batches: &mut [Batch],
    policy: Policy,
) {
    let scale = scale(boards);
    for ((req, wanted), batch) in demand.iter().zip(batches.iter_mut()) {
        batch.failure = None;
        while batch.placed.len() < *wanted {
            match choose(boards, req, &scale, None, |load| load.score(policy)) {
                Ok(p) => put(boards, &mut batch.placed, p),
                Err(no_fit) => {
                    batch.failure = Some(no_fit);
                    break;
                }
            }
        }
    }
}

/// Records placement `p` on its board (one of `boards`, where it was chosen) and in `placed`.
pub(super) fn put(boards: &mut [BoardState], placed: &mut Vec<Placement>, p: Placement) {
    if let Some(board) = boards.iter_mut().find(|b| b.id == p.board_id) {
        board.placed.push(p.clone());
    }
    placed.push(p);
}

/// The passes of [`place_all`] without the plan and the search: the best of them, applied to
/// `boards`.
pub(super) fn greedy(
    boards: &mut [BoardState],
    demand: &[(PlacementRequest, usize)],
    policy: Policy,
) -> Vec<Batch> {
    best_pass(boards, demand, &passes(policy))
}

/// The first of `passes` that places the whole demand, else the one that places the most (the
/// first listed on a tie), applied to `boards`.
fn best_pass(boards: &mut [BoardState], demand: &[(PlacementRequest, usize)], passes: &[Pass]) -> Vec<Batch> {
    let wanted: usize = demand.iter().map(|(_, n)| n).sum();
    let mut best: Option<(usize, Vec<BoardState>, Vec<Batch>)> = None;
    for &pass in passes {
        let mut trial = boards.to_vec();
        let batches = run_pass(&mut trial, demand, pass);
        let placed: usize = batches.iter().map(|b| b.placed.len()).sum();
        if best.as_ref().is_none_or(|(most, _, _)| placed > *most) {
            let done = placed == wanted;
            best = Some((placed, trial, batches));
            if done {
                break;
            }
        }
    }
    let (_, trial, batches) = best.expect("there is always a pass");
    boards.clone_from_slice(&trial);
    batches
}

/// The placer's choice of board under a policy, for the search in [`super::improve`].
pub(super) struct Fitting {
    scale: Scale,
    policy: Policy,
}

impl Fitting {
    pub(super) fn new(boards: &[BoardState], policy: Policy) -> Fitting {
        Fitting { scale: scale(boards), policy }
    }

    /// Whether the board may ever run the request (see [`admits`]).
    pub(super) fn admits(&self, board: &BoardState, req: &PlacementRequest) -> bool {
        admits(board, req).is_ok()
    }

    /// The request's size (see [`dominant`]).
    pub(super) fn dominant(&self, req: &PlacementRequest) -> f64 {
        dominant(req, &self.scale)
    }

    /// The board the policy prefers among those that fit, with the placement.
    pub(super) fn choose(&self, boards: &[BoardState], req: &PlacementRequest) -> Result<Placement, NoFit> {
        choose(boards, req, &self.scale, None, |load| load.score(self.policy))
    }
}

/// One way of placing a whole demand: the order of the instances and the measure of fit.
#[derive(Debug, Clone, Copy)]
struct Pass {
    order: Order,
    fit: Fit,
}

/// The order in which [`place_all`] takes the instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    /// Fewest eligible boards first; requests with as many interleaved by count.
    Tiered,
    /// Fewest eligible boards first; among requests with as many, the biggest first (its
    /// dominant share of the largest board), all of its instances before the next.
    TieredBigFirst,
    /// Every request interleaved by count, whatever its reach.
    Interleaved,
    /// The requests that may run on the fewest boards first, then all the others interleaved.
    FewestFirst,
}

/// How a pass scores the boards that fit (lowest wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fit {
    /// As [`place`] does under the policy.
    Policy(Policy),
    /// Sum of the room left in every resource (as a fraction of the rack's largest board).
    SumLeft,
    /// Room left in every resource weighted by how scarce it is for the demand (demanded over
    /// free on the boards), so the resources the demand runs short of are filled most tightly.
    Scarce,
    /// Sum of the room left in every resource as a fraction of the board's own capacity.
    Relative,
    /// The board whose free resources have the shape of the request (cosine).
    Align,
    /// Room left (as [`Fit::Policy`] under fill-first) scaled by how badly the request's shape
    /// matches the board's free resources.
    AlignLeft,
}

/// The passes [`place_all`] tries, in order; the first is the plain one.
fn passes(policy: Policy) -> Vec<Pass> {
    let pass = |order, fit| Pass { order, fit };
    match policy {
        Policy::FillFirst => vec![
            pass(Order::Tiered, Fit::Policy(policy)),
            pass(Order::Tiered, Fit::AlignLeft),
            pass(Order::Tiered, Fit::SumLeft),
            pass(Order::Interleaved, Fit::Relative),
            pass(Order::FewestFirst, Fit::Relative),
            pass(Order::Tiered, Fit::Policy(Policy::Spread)),
            pass(Order::TieredBigFirst, Fit::Policy(Policy::Spread)),
            pass(Order::FewestFirst, Fit::AlignLeft),
            pass(Order::Interleaved, Fit::Align),
            pass(Order::Tiered, Fit::Scarce),
        ],
        Policy::Spread => {
            vec![pass(Order::Tiered, Fit::Policy(policy)), pass(Order::TieredBigFirst, Fit::Policy(policy))]
        }
    }
}

/// Places the demand in one pass (see [`place_all`]).
fn run_pass(boards: &mut [BoardState], demand: &[(PlacementRequest, usize)], pass: Pass) -> Vec<Batch> {
    let scale = scale(boards);
    let mut eligible: Vec<usize> =
        demand.iter().map(|(req, _)| boards.iter().filter(|b| admits(b, req).is_ok()).count()).collect();
    let fewest = eligible.iter().copied().min().unwrap_or(0);
    match pass.order {
        Order::Interleaved => eligible.iter_mut().for_each(|e| *e = 0),
        Order::FewestFirst => eligible.iter_mut().for_each(|e| *e = usize::from(*e > fewest)),
        Order::Tiered | Order::TieredBigFirst => {}
    }
    let weights = match pass.fit {
        Fit::Scarce => scarcity(boards, demand),
        _ => [1.0; 4],
    };
    let size: Vec<f64> = demand.iter().map(|(req, _)| dominant(req, &scale)).collect();
    let mut tiers = eligible.clone();
    tiers.sort_unstable();
    tiers.dedup();
    let mut batches = vec![Batch { placed: Vec::new(), failure: None }; demand.len()];
    let mut credit = vec![0i64; demand.len()];
    for tier in tiers {
        let mut open: Vec<usize> =
            (0..demand.len()).filter(|&i| eligible[i] == tier && demand[i].1 > 0).collect();
        while !open.is_empty() {
            let next = match pass.order {
                Order::Tiered | Order::Interleaved | Order::FewestFirst => {
                    let total: i64 = open.iter().map(|&i| demand[i].1 as i64).sum();
                    for &i in &open {
                        credit[i] += demand[i].1 as i64;
                    }
                    let next = *open
                        .iter()
                        .max_by_key(|&&i| (credit[i], std::cmp::Reverse(i)))
                        .expect("open is not empty");
                    credit[next] -= total;
                    next
                }
                Order::TieredBigFirst => *open
                    .iter()
                    .min_by(|&&a, &&b| size[b].total_cmp(&size[a]).then(a.cmp(&b)))
                    .expect("open is not empty"),
            };
            let placed = choose(boards, &demand[next].0, &scale, None, |load| match pass.fit {
                Fit::Policy(policy) => load.score(policy),
                Fit::SumLeft => load.after.iter().sum(),
                Fit::Scarce => load.after.iter().zip(&weights).map(|(a, w)| a * w).sum(),
                Fit::Relative => load.relative.iter().sum(),
                Fit::Align => -load.alignment(),
                Fit::AlignLeft => load.left * (1.0 - load.alignment()),
            });
            match placed {
                Ok(p) => put(boards, &mut batches[next].placed, p),
                Err(no_fit) => match make_room(boards, demand, &mut batches, next, &scale) {
                    Some(p) => batches[next].placed.push(p),
                    None => batches[next].failure = Some(no_fit),
                },
            }
            open.retain(|&i| batches[i].failure.is_none() && batches[i].placed.len() < demand[i].1);
        }
    }
    batches
}

/// Most instances [`make_room`] moves off one board.
const MAX_MOVES: usize = 8;

/// When request `r` fits nowhere: on the first board that admits it where moving up to
/// [`MAX_MOVES`] instances of this batch to other boards (best fit) lets it fit, moves them and
/// places it there. Instances that were on the boards before the batch never move. Returns
/// the placement of `r` (already on its board), or `None` with nothing changed.
fn make_room(
    boards: &mut [BoardState],
    demand: &[(PlacementRequest, usize)],
    batches: &mut [Batch],
    r: usize,
    scale: &Scale,
) -> Option<Placement> {
    let req = &demand[r].0;
    let amounts_of = |millicores: u32, memory: u64, gpu: u32, encoder: u32| {
        [f64::from(millicores), memory as f64, f64::from(gpu), f64::from(encoder)]
    };
    let want = amounts_of(req.millicores, req.memory_mib, req.gpu_slots, req.encoder_slots);
    for b in 0..boards.len() {
        if admits(&boards[b], req).is_err() {
            continue;
        }
        if !batches.iter().any(|batch| batch.placed.iter().any(|p| p.board_id == boards[b].id)) {
            continue;
        }
        // Moves made on this board: (request, index in its batch, old placement, its position
        // on board `b`, board it went to).
        let mut undo: Vec<(usize, usize, Placement, usize, usize)> = Vec::new();
        for moves in 0..=MAX_MOVES {
            if let Ok((p, _)) = fit(&boards[b], req, scale) {
                boards[b].placed.push(p.clone());
                return Some(p);
            }
            if moves == MAX_MOVES {
                break;
            }
            // What the board lacks for `r`, and the instances of this batch on it, those that
            // cover most of it first.
            let cap = &boards[b].capacity;
            let usage = BoardUsage::of(&boards[b].placed);
            let free = amounts_of(
                cap.millicores.saturating_sub(usage.millicores),
                cap.memory_mib.saturating_sub(usage.memory_mib),
                cap.gpu_slots.saturating_sub(usage.gpu_slots),
                cap.encoder_slots.saturating_sub(usage.encoder_slots),
            );
            let mut movable: Vec<(f64, usize, usize)> = Vec::new();
            for (j, batch) in batches.iter().enumerate() {
                for (k, p) in batch.placed.iter().enumerate().filter(|(_, p)| p.board_id == boards[b].id) {
                    let has = amounts_of(p.millicores, p.memory_mib, p.gpu_slots, p.encoder_slots);
                    let cover: f64 = (0..4)
                        .filter(|&d| want[d] > free[d])
                        .map(|d| has[d].min(want[d] - free[d]) / (want[d] - free[d]))
                        .sum();
                    if cover > 0.0 {
                        movable.push((cover, j, k));
                    }
                }
            }
            movable.sort_by(|x, y| y.0.total_cmp(&x.0).then((x.1, x.2).cmp(&(y.1, y.2))));
            let mut moved = false;
            for &(_, j, k) in &movable {
                let old = batches[j].placed[k].clone();
                let at =
                    boards[b].placed.iter().position(|q| *q == old).expect("the instance is on its board");
                boards[b].placed.remove(at);
                match choose(boards, &demand[j].0, scale, Some(b), |load| load.left) {
                    Ok(p) => {
                        let to = boards.iter().position(|x| x.id == p.board_id).expect("a board of the rack");
                        boards[to].placed.push(p.clone());
                        batches[j].placed[k] = p;
                        undo.push((j, k, old, at, to));
                        moved = true;
                        break;
                    }
                    Err(_) => boards[b].placed.insert(at, old),
                }
            }
            if !moved {
                break;
            }
        }
        for (j, k, old, at, to) in undo.into_iter().rev() {
            boards[to].placed.pop();
            boards[b].placed.insert(at, old.clone());
            batches[j].placed[k] = old;
        }
    }
    None
}

/// The request's largest need of CPU, memory, GPU or encoder slots, as a fraction of the most
/// any board has.
fn dominant(req: &PlacementRequest, scale: &Scale) -> f64 {
    let need = [
        f64::from(req.millicores),
        req.memory_mib as f64,
        f64::from(req.gpu_slots),
        f64::from(req.encoder_slots),
    ];
    need.iter().zip(scale).filter(|(_, s)| **s > 0).map(|(n, s)| n / *s as f64).fold(0.0, f64::max)
}

/// For CPU, memory, GPU and encoder slots: what the demand needs over what the boards that
/// admit some of it have free (0 when nothing is free).
fn scarcity(boards: &[BoardState], demand: &[(PlacementRequest, usize)]) -> [f64; 4] {
    let mut need = [0.0; 4];
    for (req, n) in demand {
        let n = *n as f64;
        need[0] += f64::from(req.millicores) * n;
        need[1] += req.memory_mib as f64 * n;
        need[2] += f64::from(req.gpu_slots) * n;
        need[3] += f64::from(req.encoder_slots) * n;
    }
    let mut free = [0.0; 4];
    for board in boards.iter().filter(|b| demand.iter().any(|(req, _)| admits(b, req).is_ok())) {
        let usage = BoardUsage::of(&board.placed);
        let cap = &board.capacity;
        free[0] += f64::from(cap.millicores.saturating_sub(usage.millicores));
        free[1] += cap.memory_mib.saturating_sub(usage.memory_mib) as f64;
        free[2] += f64::from(cap.gpu_slots.saturating_sub(usage.gpu_slots));
        free[3] += f64::from(cap.encoder_slots.saturating_sub(usage.encoder_slots));
    }
    let mut weights = [0.0; 4];
    for d in 0..4 {
        if free[d] > 0.0 {
            weights[d] = need[d] / free[d];
        }
    }
    weights
}

/// Whether the board may ever run the request, whatever it runs now: cordon, readiness,
/// architecture, GPU kind and labels.
pub(super) fn admits(board: &BoardState, req: &PlacementRequest) -> Result<(), Reason> {
    if board.cordoned {
        return Err(Reason::Cordoned);
    }
    if !board.schedulable {
        return Err(Reason::Unschedulable);
    }
    if !req.archs.contains(&board.arch) {
        return Err(Reason::Arch { board: board.arch.clone(), wanted: req.archs.iter().cloned().collect() });
    }
    if let Some(wanted) = &req.gpu_kind
        && board.gpu_kind.as_ref() != Some(wanted)
    {
        return Err(Reason::GpuKind { wanted: wanted.clone(), board: board.gpu_kind.clone() });
    }
    for (key, wanted) in &req.labels {
        let found = board.labels.get(key);
        if found != Some(wanted) {
            return Err(Reason::Label { key: key.clone(), wanted: wanted.clone(), found: found.cloned() });
        }
    }
    Ok(())
}

/// The placement on `board` and the board's load, or why the board cannot take the instance.
fn fit(board: &BoardState, req: &PlacementRequest, scale: &Scale) -> Result<(Placement, Load), Reason> {
    admits(board, req)?;
    // Most boards of a busy rack are turned away by these totals: the full usage (per-CPU
    // charges, ports, groups) is built only for those that pass.
    let (usage, in_group) =
        BoardUsage::totals_of(&board.placed, req.anti_affinity.as_ref().map(|aa| aa.key.as_str()));
    if let Some(aa) = &req.anti_affinity
        && in_group >= aa.max_per_board
    {
        return Err(Reason::AntiAffinity { key: aa.key.clone(), count: in_group, max: aa.max_per_board });
    }
    let cap = &board.capacity;
    let free_memory = cap.memory_mib.saturating_sub(usage.memory_mib);
    if req.memory_mib > free_memory {
        return Err(Reason::Memory { needed: req.memory_mib, free: free_memory });
    }
    let free_millicores = cap.millicores.saturating_sub(usage.millicores);
    if req.millicores > free_millicores {
        return Err(Reason::Millicores { needed: req.millicores, free: free_millicores });
    }
    let free_gpu = cap.gpu_slots.saturating_sub(usage.gpu_slots);
    if req.gpu_slots > free_gpu {
        return Err(Reason::GpuSlots { needed: req.gpu_slots, free: free_gpu });
    }
    let free_encoder = cap.encoder_slots.saturating_sub(usage.encoder_slots);
    if req.encoder_slots > free_encoder {
        return Err(Reason::EncoderSlots { needed: req.encoder_slots, free: free_encoder });
    }
    let usage = BoardUsage::of(&board.placed);
    let Some(ports) = usage.free_ports(cap.ports, PORTS_PER_INSTANCE) else {
        let (start, end) = (cap.ports.start, cap.ports.end);
        return Err(Reason::Ports { free: usage.free_port_count(cap.ports), start, end });
    };
    let Some(cpus) = resources::choose_cpus(cap, &usage, req.millicores, req.pinning) else {
        let (needed, share, rem) = resources::cpu_split(req.millicores);
        let share = share + u32::from(rem > 0);
        let big = req.pinning == Pinning::Big;
        let available = cap.cpus.iter().filter(|c| (c.big || !big) && usage.cpu_free(c) >= share).count();
        return Err(Reason::Cpus { big, needed, share, available });
    };
    let placement = req.placement(&board.id, cpus, [ports[0], ports[1]]);
    Ok((placement, Load::of(board, &usage, req, scale)))
}

/// What the policies compare.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Load {
    /// Dominant share in use now: the largest fraction of any resource (CPU, memory, GPU slots,
    /// encoder slots, host ports) of this board in use.
    now: f64,
    /// Room left after placing, in absolute terms: the most left of CPU, memory, GPU or encoder
    /// slots, each as a fraction of the most any board of the rack has of it. Host ports are
    /// left out: every board tends to have the same range, so they say nothing about size.
    left: f64,
    /// Room left after placing in CPU, memory, GPU and encoder slots, each as a fraction of the
    /// most any board of the rack has of it.
    after: [f64; 4],
    /// Room left after placing in CPU, memory, GPU and encoder slots, each as a fraction of
    /// what the board has of it.
    relative: [f64; 4],
    /// The request's needs in CPU, memory, GPU and encoder slots, each as a fraction of what
    /// the board has of it.
    need: [f64; 4],
}

/// A board's resources in the order [`Load`] looks at them (CPU, memory, GPU, encoder, ports).
fn amounts(cap: &BoardCapacity) -> [u64; 5] {
    [
        u64::from(cap.millicores),
        cap.memory_mib,
        u64::from(cap.gpu_slots),
        u64::from(cap.encoder_slots),
        cap.ports.len() as u64,
    ]
}

/// The most any board has of each resource.
type Scale = [u64; 5];

fn scale(boards: &[BoardState]) -> Scale {
    let mut scale = [0; 5];
    for board in boards {
        for (most, amount) in scale.iter_mut().zip(amounts(&board.capacity)) {
            *most = (*most).max(amount);
        }
    }
    scale
}

impl Load {
    fn of(board: &BoardState, usage: &BoardUsage, req: &PlacementRequest, scale: &Scale) -> Load {
        let cap = amounts(&board.capacity);
        let used = [
            u64::from(usage.millicores),
            usage.memory_mib,
            u64::from(usage.gpu_slots),
            u64::from(usage.encoder_slots),
            usage.ports.len() as u64,
        ];
        let need = [
            u64::from(req.millicores),
            req.memory_mib,
            u64::from(req.gpu_slots),
            u64::from(req.encoder_slots),
            PORTS_PER_INSTANCE as u64,
        ];
        let mut load = Load { now: 0.0, left: 0.0, after: [0.0; 4], relative: [0.0; 4], need: [0.0; 4] };
        for d in 0..5 {
            if cap[d] > 0 {
                load.now = load.now.max(used[d] as f64 / cap[d] as f64);
                if d < 4 {
                    let left = cap[d].saturating_sub(used[d] + need[d]);
                    load.after[d] = left as f64 / scale[d] as f64;
                    load.relative[d] = left as f64 / cap[d] as f64;
                    load.need[d] = need[d] as f64 / cap[d] as f64;
                    load.left = load.left.max(load.after[d]);
                }
            }
        }
        load
    }

    /// Cosine of the angle between the request's needs and the board's free resources (both
    /// relative to the board): 1 when the request has the shape of the room it leaves.
    fn alignment(&self) -> f64 {
        let free: Vec<f64> = self.relative.iter().zip(&self.need).map(|(r, n)| r + n).collect();
        let dot: f64 = free.iter().zip(&self.need).map(|(f, n)| f * n).sum();
        let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
        let (a, b) = (norm(&free), norm(&self.need));
        if a > 0.0 && b > 0.0 { dot / (a * b) } else { 0.0 }
    }

    /// What `policy` minimises: the room left (fill-first) or the load now (spread).
    fn score(&self, policy: Policy) -> f64 {
        match policy {
            Policy::FillFirst => self.left,
            Policy::Spread => self.now,
        }
    }
}

#[cfg(test)]
mod tests {
    use api::rack::Pinning;

    use super::*;
    use crate::packing::tests::{class, facts, request, topology_facts};
    use crate::packing::{AntiAffinity, check_board};

    /// rk3588-like: 8 CPUs (0-3 little, 4-7 big), 1000 millicores reserved (CPU 0), 16000 MiB
    /// minus 512, GPU mali-g610 with 2 slots, 2 encoder slots, ports 20000-20099.
    fn board(id: &str) -> BoardState {
        let mut f = facts("aarch64", Some("rockchip,rk3588"), 16000);
        f.board_id = id.to_string();
        BoardState::new(&f, &class(1000, Some("mali-g610"), 2, 2))
    }

    /// 4 CPUs of unknown capacity, 4096 MiB minus 512, no GPU or encoder.
    fn small_board(id: &str, arch: &str) -> BoardState {
        let mut f = topology_facts(id, arch, None, 4096, 4, None);
        f.gpu_devices.clear();
        BoardState::new(&f, &class(0, None, 0, 0))
    }

    fn reason(boards: &[BoardState], req: &PlacementRequest) -> Reason {
        let no_fit = place(boards, req, Policy::FillFirst).unwrap_err();
        assert_eq!(no_fit.rejected.len(), boards.len());
        no_fit.rejected[0].reason.clone()
    }

    fn push(boards: &mut [BoardState], req: &PlacementRequest, policy: Policy) -> Placement {
        let p = place(boards, req, policy).unwrap();
        boards.iter_mut().find(|b| b.id == p.board_id).unwrap().placed.push(p.clone());
        p
    }

    #[test]
    fn placement_gets_cpus_memory_slots_and_the_lowest_free_ports() {
        let mut boards = vec![board("a")];
        let req = PlacementRequest { gpu_slots: 1, encoder_slots: 1, ..request(1500, 2048) };
        let first = push(&mut boards, &req, Policy::FillFirst);
        // Two CPUs at 750 each, the freest; on a tie little ones first (CPU 0 is the host's).
        assert_eq!(first.cpus, vec![1, 2]);
        assert_eq!((first.ports.adb, first.ports.stream), (20000, 20001));
        assert_eq!((first.memory_mib, first.gpu_slots, first.encoder_slots), (2048, 1, 1));
        let second = push(&mut boards, &req, Policy::FillFirst);
        assert_eq!(second.cpus, vec![3, 4]);
        assert_eq!((second.ports.adb, second.ports.stream), (20002, 20003));
        check_board(&boards[0]).unwrap();
    }

    #[test]
    fn big_pinned_instances_get_big_cores_only() {
        let mut boards = vec![board("a")];
        let req = PlacementRequest { pinning: Pinning::Big, ..request(2000, 1024) };
        assert_eq!(push(&mut boards, &req, Policy::FillFirst).cpus, vec![4, 5]);
        assert_eq!(push(&mut boards, &req, Policy::FillFirst).cpus, vec![6, 7]);
        let why = reason(&boards, &req);
        assert_eq!(why, Reason::Cpus { big: true, needed: 2, share: 1000, available: 0 });
        assert_eq!(
            why.to_string(),
            "not enough free big cores: needs 2 with 1000 millicores free each, 0 have"
        );
        // The little cores are still free for an instance that takes any core.
        assert_eq!(push(&mut boards, &request(2000, 1024), Policy::FillFirst).cpus, vec![1, 2]);
    }

    #[test]
    fn every_reason_is_reported() {
        let base = board("a");
        let one = |b: &BoardState, req: &PlacementRequest| reason(std::slice::from_ref(b), req);
        let req = request(1000, 1024);
        assert_eq!(one(&BoardState { cordoned: true, ..base.clone() }, &req), Reason::Cordoned);
        assert_eq!(one(&BoardState { schedulable: false, ..base.clone() }, &req), Reason::Unschedulable);
        let x86 = PlacementRequest { archs: ["x86_64".to_string()].into(), ..req.clone() };
        assert_eq!(
            one(&base, &x86).to_string(),
            "architecture aarch64 has no image (images exist for x86_64)"
        );
        let nvidia = PlacementRequest { gpu_kind: Some("nvidia-t4".into()), ..req.clone() };
        assert_eq!(one(&base, &nvidia).to_string(), "GPU kind mali-g610 is not the required nvidia-t4");
        let site = PlacementRequest { labels: [("site".into(), "a".into())].into(), ..req.clone() };
        assert_eq!(one(&base, &site).to_string(), "label site=a is required, the board has none");
        assert_eq!(one(&base, &request(1000, 20_000)), Reason::Memory { needed: 20_000, free: 15_488 });
        assert_eq!(one(&base, &request(7001, 1)), Reason::Millicores { needed: 7001, free: 7000 });
        let gpu = PlacementRequest { gpu_slots: 3, ..req.clone() };
        assert_eq!(one(&base, &gpu), Reason::GpuSlots { needed: 3, free: 2 });
        let encoder = PlacementRequest { encoder_slots: 3, ..req.clone() };
        assert_eq!(one(&base, &encoder), Reason::EncoderSlots { needed: 3, free: 2 });

        let mut b = vec![base.clone()];
        b[0].capacity.ports = api::facts::PortRange { start: 7, end: 8 };
        let aa = PlacementRequest {
            anti_affinity: Some(AntiAffinity { key: "g".into(), max_per_board: 1 }),
            ..req.clone()
        };
        push(&mut b, &aa, Policy::Spread);
        assert_eq!(one(&b[0], &aa), Reason::AntiAffinity { key: "g".into(), count: 1, max: 1 });
        assert_eq!(one(&b[0], &req).to_string(), "not enough host ports: needs 2, 0 free in 7-8");

        // 7 CPUs with 1000 free: six 500-millicore instances spread over six of them, so a
        // 2000-millicore instance finds one whole CPU although 4000 millicores are free.
        let mut b = vec![base];
        for _ in 0..6 {
            push(&mut b, &request(500, 1), Policy::FillFirst);
        }
        assert_eq!(
            one(&b[0], &request(2000, 1)),
            Reason::Cpus { big: false, needed: 2, share: 1000, available: 1 }
        );
    }

    #[test]
    fn no_fit_groups_boards_by_reason() {
        let mut boards: Vec<BoardState> = (0..8).map(|i| board(&format!("b{i}"))).collect();
        boards[7].cordoned = true;
        let err = place(&boards, &request(1000, 20_000), Policy::FillFirst).unwrap_err().to_string();
        assert_eq!(
            err,
            "no board can take the instance: b0, b1, b2, b3, b4 and 2 more: not enough memory: needs 20000 MiB, \
             15488 MiB free; b7: cordoned"
        );
        let empty = place(&[], &request(1, 1), Policy::Spread).unwrap_err().to_string();
        assert_eq!(empty, "no board can take the instance: the rack has no boards");
    }

    #[test]
    fn fill_first_packs_one_board_spread_balances() {
        let boards: Vec<BoardState> = (0..3).map(|i| board(&format!("b{i}"))).collect();
        let req = request(1000, 2048);
        let mut fill = boards.clone();
        assert!(place_many(&mut fill, &req, 6, Policy::FillFirst).failure.is_none());
        assert_eq!(fill.iter().map(|b| b.placed.len()).collect::<Vec<_>>(), vec![6, 0, 0]);
        let mut spread = boards;
        place_many(&mut spread, &req, 6, Policy::Spread);
        assert_eq!(spread.iter().map(|b| b.placed.len()).collect::<Vec<_>>(), vec![2, 2, 2]);
    }

    #[test]
    fn fill_first_takes_the_least_room_left_spread_the_least_loaded() {
        let mut boards = vec![board("big"), small_board("small", "aarch64")];
        push(&mut boards[..1], &request(1000, 1024), Policy::FillFirst);
        push(&mut boards[1..], &request(1000, 1024), Policy::FillFirst);
        push(&mut boards[1..], &request(1000, 1024), Policy::FillFirst);
        // big: 1 of 7 cores used (14 %); small: 2 of 4 cores and 2 of 3.5 GiB (57 %), but after
        // one more it has 1000 millicores left, big 5000.
        assert_eq!(place(&boards, &request(1000, 1024), Policy::FillFirst).unwrap().board_id, "small");
        assert_eq!(place(&boards, &request(1000, 1024), Policy::Spread).unwrap().board_id, "big");
    }

    #[test]
    fn batch_reports_why_it_stopped() {
        let mut boards = vec![board("a")];
        let batch = place_many(&mut boards, &request(1000, 4096), 5, Policy::FillFirst);
        assert_eq!((batch.placed.len(), boards[0].placed.len()), (3, 3));
        let failure = batch.failure.unwrap();
        assert_eq!(failure.rejected[0].reason, Reason::Memory { needed: 4096, free: 15488 - 3 * 4096 });
    }

    #[test]
    fn place_all_serves_the_most_constrained_first() {
        let boards = vec![small_board("x86", "x86_64"), board("arm")];
        let anywhere = request(1000, 1024);
        let x86_only = PlacementRequest { archs: ["x86_64".to_string()].into(), ..request(1000, 1024) };
        let demand = [(anywhere.clone(), 6), (x86_only.clone(), 3)];
        // One at a time in the order given, the flexible instances take the small x86 board
        // first (least room left) and the x86-only ones find no room.
        let mut in_order = boards.clone();
        place_many(&mut in_order, &anywhere, 6, Policy::FillFirst);
        assert!(place_many(&mut in_order, &x86_only, 3, Policy::FillFirst).failure.is_some());
        let mut all = boards;
        let batches = place_all(&mut all, &demand, Policy::FillFirst);
        assert!(batches.iter().all(|b| b.failure.is_none()));
        assert_eq!(batches.iter().map(|b| b.placed.len()).collect::<Vec<_>>(), vec![6, 3]);
        assert!(batches[1].placed.iter().all(|p| p.board_id == "x86"));
        assert!(batches[0].placed.iter().all(|p| p.board_id == "arm"));
        all.iter().for_each(|b| check_board(b).unwrap());
    }

    #[test]
    fn place_all_interleaves_requests_of_the_same_reach() {
        let mut boards = vec![board("a")];
        let demand = [(request(500, 512), 2), (request(1000, 1024), 2)];
        let batches = place_all(&mut boards, &demand, Policy::FillFirst);
        // Ports are given out in order: a, b, a, b.
        let adb = |b: usize, i: usize| batches[b].placed[i].ports.adb;
        assert_eq!([adb(0, 0), adb(1, 0), adb(0, 1), adb(1, 1)], [20000, 20002, 20004, 20006]);
        let stop = place_all(&mut boards, &[(request(1000, 20_000), 1), (request(1, 1), 2)], Policy::Spread);
        assert!(stop[0].failure.is_some() && stop[0].placed.is_empty());
        assert_eq!(stop[1].placed.len(), 2);
    }

    #[test]
    fn make_room_moves_instances_of_the_batch_only() {
        let mut boards = vec![small_board("s", "aarch64"), board("a")];
        let (a, b) = (request(500, 3000), request(3000, 3000));
        let demand = [(a.clone(), 1), (b.clone(), 3)];
        let scale = scale(&boards);
        let mut batches = vec![Batch { placed: Vec::new(), failure: None }; 2];
        // a on the small board, two b on the big one: the third b fits nowhere.
        batches[0].placed.push(push(&mut boards[..1], &a, Policy::FillFirst));
        for _ in 0..2 {
            batches[1].placed.push(push(&mut boards[1..], &b, Policy::FillFirst));
        }
        assert!(place(&boards, &b, Policy::FillFirst).is_err());
        // Placed before the batch, a does not move.
        let mut before = vec![Batch { placed: Vec::new(), failure: None }, batches[1].clone()];
        let mut fixed = boards.clone();
        assert!(make_room(&mut fixed, &demand, &mut before, 1, &scale).is_none());
        assert_eq!(fixed, boards);
        // Part of the batch, a moves to the big board and b takes the small one.
        let p = make_room(&mut boards, &demand, &mut batches, 1, &scale).unwrap();
        assert_eq!((p.board_id.as_str(), batches[0].placed[0].board_id.as_str()), ("s", "a"));
        assert_eq!(boards.iter().map(|x| x.placed.len()).collect::<Vec<_>>(), vec![1, 3]);
        boards.iter().for_each(|x| check_board(x).unwrap());
    }
}
