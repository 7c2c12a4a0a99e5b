//! Choosing a board for an instance and giving it concrete resources.
//!
//! Every board is checked in turn; the first unmet requirement rejects it with a [`Reason`] an
//! operator can act on. Among the boards that fit, the [`Policy`] picks one (ties go to the
//! board listed first, so the result is deterministic).

use std::fmt;

use api::instance::InstancePorts;
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
pub fn place_all(
    boards: &mut [BoardState],
    demand: &[(PlacementRequest, usize)],
    policy: Policy,
) -> Vec<Batch> {
    let eligible: Vec<usize> =
        demand.iter().map(|(req, _)| boards.iter().filter(|b| admits(b, req).is_ok()).count()).collect();
    let mut tiers = eligible.clone();
    tiers.sort_unstable();
    tiers.dedup();
    let mut batches = vec![Batch { placed: Vec::new(), failure: None }; demand.len()];
    let mut credit = vec![0i64; demand.len()];
    for tier in tiers {
        let mut open: Vec<usize> =
            (0..demand.len()).filter(|&i| eligible[i] == tier && demand[i].1 > 0).collect();
        while !open.is_empty() {
            let total: i64 = open.iter().map(|&i| demand[i].1 as i64).sum();
            for &i in &open {
                credit[i] += demand[i].1 as i64;
            }
            let next =
                *open.iter().max_by_key(|&&i| (credit[i], std::cmp::Reverse(i))).expect("open is not empty");
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
        let mut load = Load { now: 0.0, left: 0.0 };
        for d in 0..5 {
            if cap[d] > 0 {
                load.now = load.now.max(used[d] as f64 / cap[d] as f64);
                if d < 4 {
                    let left = cap[d].saturating_sub(used[d] + need[d]);
                    load.left = load.left.max(left as f64 / scale[d] as f64);
                }
            }
        }
        load
    }

    /// True when `self` is a better board than `other` under `policy`; on a tie the board
    /// listed first stays.
    fn beats(self, other: Load, policy: Policy) -> bool {
        match policy {
            Policy::FillFirst => self.left < other.left,
            Policy::Spread => self.now < other.now,
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
}
