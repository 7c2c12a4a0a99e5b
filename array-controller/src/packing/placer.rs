//! Choosing a board for an instance and giving it concrete resources.
//!
//! Every board is checked in turn; the first unmet requirement rejects it with a [`Reason`] an
//! operator can act on. Among the boards that fit, the [`Policy`] picks by a score (ties go to
//! the board listed first, so the result is deterministic).

use std::fmt;

use api::instance::InstancePorts;
use api::rack::Pinning;

use super::resources::{self, BoardCapacity, BoardUsage, PORTS_PER_INSTANCE};
use super::{BoardState, Placement, PlacementRequest};

/// How boards are chosen among those that fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// The fullest board that fits, so whole boards stay free and few boards are used.
    FillFirst,
    /// The least loaded board, so instances share boards as little as possible.
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
    let scale = scale(boards);
    let mut best: Option<(Load, Placement)> = None;
    let mut rejected = Vec::new();
    for board in boards {
        match fit(board, request, &scale) {
            Ok((placement, load)) => {
                if best.as_ref().is_none_or(|(l, _)| load.beats(*l, policy)) {
                    best = Some((load, placement));
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
            Ok(p) => {
                if let Some(board) = boards.iter_mut().find(|b| b.id == p.board_id) {
                    board.placed.push(p.clone());
                }
                placed.push(p);
            }
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
pub fn place_all(boards: &mut [BoardState], demand: &[(PlacementRequest, usize)], policy: Policy) -> Vec<Batch> {
    let eligible: Vec<usize> =
        demand.iter().map(|(req, _)| boards.iter().filter(|b| admits(b, req).is_ok()).count()).collect();
    let mut tiers = eligible.clone();
    tiers.sort_unstable();
    tiers.dedup();
    let mut batches = vec![Batch { placed: Vec::new(), failure: None }; demand.len()];
    let mut credit = vec![0i64; demand.len()];
    for tier in tiers {
        let mut open: Vec<usize> = (0..demand.len()).filter(|&i| eligible[i] == tier && demand[i].1 > 0).collect();
        let total: i64 = open.iter().map(|&i| demand[i].1 as i64).sum();
        while !open.is_empty() {
            for &i in &open {
                credit[i] += demand[i].1 as i64;
            }
            let next = *open.iter().max_by_key(|&&i| (credit[i], std::cmp::Reverse(i))).expect("open is not empty");
            credit[next] -= total;
            match place(boards, &demand[next].0, policy) {
                Ok(p) => {
                    if let Some(board) = boards.iter_mut().find(|b| b.id == p.board_id) {
                        board.placed.push(p.clone());
                    }
                    batches[next].placed.push(p);
                }
                Err(no_fit) => batches[next].failure = Some(no_fit),
            }
            open.retain(|&i| batches[i].failure.is_none() && batches[i].placed.len() < demand[i].1);
        }
    }
    batches
}

/// Whether the board may ever run the request, whatever it runs now: cordon, readiness,
/// architecture, GPU kind and labels.
fn admits(board: &BoardState, req: &PlacementRequest) -> Result<(), Reason> {
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
    let usage = BoardUsage::of(&board.placed);
    if let Some(aa) = &req.anti_affinity {
        let count = usage.groups.get(&aa.key).copied().unwrap_or(0);
        if count >= aa.max_per_board {
            return Err(Reason::AntiAffinity { key: aa.key.clone(), count, max: aa.max_per_board });
        }
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
    let placement = Placement {
        board_id: board.id.clone(),
        cpus,
        millicores: req.millicores,
        memory_mib: req.memory_mib,
        gpu_slots: req.gpu_slots,
        encoder_slots: req.encoder_slots,
        ports: InstancePorts { adb: ports[0], stream: ports[1] },
        group: req.anti_affinity.as_ref().map(|aa| aa.key.clone()),
    };
    Ok((placement, Load::of(board, &usage, req, scale)))
}

/// What the policies compare: how loaded a board is now, and how much it has left after
/// placing the instance.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Load {
    /// Dominant share in use now: the largest fraction of any resource (CPU, memory, GPU slots,
    /// encoder slots, host ports) of this board.
    now: f64,
    /// What is left after placing, in absolute terms: the largest amount left of CPU, memory,
    /// GPU or encoder slots, as a fraction of the most any board of the rack has of it.
    left: f64,
}

/// The most any board has of each resource; zero when no board has any.
type Scale = [f64; 5];

fn amounts(cap: &BoardCapacity) -> [u64; 5] {
    [u64::from(cap.millicores), cap.memory_mib, u64::from(cap.gpu_slots), u64::from(cap.encoder_slots), cap.ports.len() as u64]
}

fn scale(boards: &[BoardState]) -> Scale {
    let mut scale = [0.0; 5];
    for b in boards {
        for (s, a) in scale.iter_mut().zip(amounts(&b.capacity)) {
            *s = f64::max(*s, a as f64);
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
        let need =
            [u64::from(req.millicores), req.memory_mib, u64::from(req.gpu_slots), u64::from(req.encoder_slots), 2];
        let mut load = Load { now: 0.0, left: 0.0 };
        for d in 0..5 {
            if cap[d] > 0 {
                load.now = load.now.max(used[d] as f64 / cap[d] as f64);
                // Host ports are not a size: every board tends to have the same range.
                if d < 4 {
                    load.left = load.left.max(cap[d].saturating_sub(used[d] + need[d]) as f64 / scale[d]);
                }
            }
        }
        load
    }

    /// True when `self` is a better board than `other` under `policy` (ties keep the board
    /// listed first).
    fn beats(self, other: Load, policy: Policy) -> bool {
        match policy {
            Policy::FillFirst => self.left < other.left,
            Policy::Spread => self.now < other.now,
        }
    }
}
