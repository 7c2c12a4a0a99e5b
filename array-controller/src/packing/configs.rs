//! Which boards of a rack are interchangeable for a batch, and what one board of each kind can
//! hold at once: the model behind the configuration LP ([`super::lp`]) that [`super::plan`]
//! rounds into placements and `bench_packing` takes its bounds from.
//!
//! A *configuration* is a number of instances per request that one board can run together, on
//! every resource and with some choice of cpusets. Boards are grouped into [`Class`]es by what
//! they have free and which requests they admit, so a configuration enumerated once serves every
//! board of the class. The model is exact for the totals (millicores, memory, GPU and encoder
//! slots, host ports) and searches cpusets exhaustively. Where the packer's rules leave a choice
//! it is conservative, so that every configuration it accepts can really be placed: an instance
//! is charged its larger per-CPU share (`ceil(m / k)`) on each of its CPUs, the remainder not
//! being tied to the lowest-numbered one; instances sharing an anti-affinity key count against
//! the smallest limit any request of the batch gives the key; and boards whose free memory
//! differs by at most [`MEMORY_SLACK`] share a class that assumes the least of it.

use std::collections::{HashMap, HashSet};

use api::rack::Pinning;

use super::placer::admits;
use super::resources::{BoardUsage, PORTS_PER_INSTANCE, cpu_split};
use super::{BoardState, PlacementRequest};

/// Boards whose free memory differs by at most this fraction of the larger may share a class
/// (identical boards may report a few MiB apart; one class each would multiply the work).
pub const MEMORY_SLACK: f64 = 1.0 / 64.0;

/// The CPUs one instance needs: `k` distinct CPUs with `share` millicores free each, big ones
/// only when `big`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct CpuNeed {
    pub(super) k: usize,
    pub(super) share: u32,
    pub(super) big: bool,
}

impl CpuNeed {
    pub(super) fn of(req: &PlacementRequest) -> CpuNeed {
        let (k, share, rem) = cpu_split(req.millicores);
        CpuNeed { k, share: share + u32::from(rem > 0), big: req.pinning == Pinning::Big }
    }
}

/// What one instance of a request takes from a board, as the model counts it.
#[derive(Debug, Clone)]
struct Need {
    millicores: u64,
    memory_mib: u64,
    gpu_slots: u64,
    encoder_slots: u64,
    cpu: CpuNeed,
    /// Index of the request's anti-affinity key among the batch's keys.
    key: Option<usize>,
}

/// What a board has free for the batch, and which of its requests it admits.
#[derive(Debug, Clone, PartialEq)]
struct Room {
    admits: Vec<bool>,
    /// Free millicores and big flag of each CPU offered to instances, sorted.
    cpus: Vec<(u32, bool)>,
    millicores: u64,
    memory_mib: u64,
    gpu_slots: u64,
    encoder_slots: u64,
    ports: u64,
    /// Instances the board may still take per anti-affinity key of the batch.
    allowance: Vec<u64>,
}

/// Boards that are interchangeable for a batch, and the configurations one of them can hold.
#[derive(Debug, Clone)]
pub struct Class {
    /// The boards, as indices into the rack given to [`classes`], in rack order.
    pub boards: Vec<usize>,
    /// What every board of the class has free (the least free memory of any of them).
    room: Room,
    /// The most free memory of any board of the class.
    most_memory_mib: u64,
    needs: Vec<Need>,
    /// The requests' needs are exact: no CPU remainders, one limit per anti-affinity key.
    needs_exact: bool,
    /// Configurations already checked.
    memo: HashMap<Vec<u32>, bool>,
}

/// Groups the boards that admit at least one of `requests` into classes: boards with the same
/// free CPUs, slots, ports and anti-affinity room that admit the same requests, and free memory
/// within [`MEMORY_SLACK`]. Classes come in the order of their first board.
pub fn classes(boards: &[BoardState], requests: &[PlacementRequest]) -> Vec<Class> {
    let mut keys: Vec<(&str, u32)> = Vec::new();
    let mut needs_exact = requests.iter().all(|r| cpu_split(r.millicores).2 == 0);
    for aa in requests.iter().filter_map(|r| r.anti_affinity.as_ref()) {
        match keys.iter_mut().find(|(key, _)| *key == aa.key) {
            Some((_, max)) => {
                needs_exact &= *max == aa.max_per_board;
                *max = (*max).min(aa.max_per_board);
            }
            None => keys.push((&aa.key, aa.max_per_board)),
        }
    }
    let needs: Vec<Need> = requests
        .iter()
        .map(|r| Need {
            millicores: u64::from(r.millicores),
            memory_mib: r.memory_mib,
            gpu_slots: u64::from(r.gpu_slots),
            encoder_slots: u64::from(r.encoder_slots),
            cpu: CpuNeed::of(r),
            key: r.anti_affinity.as_ref().and_then(|aa| keys.iter().position(|(k, _)| *k == aa.key)),
        })
        .collect();
    let mut classes: Vec<Class> = Vec::new();
    for (i, board) in boards.iter().enumerate() {
        let admits: Vec<bool> = requests.iter().map(|r| admits(board, r).is_ok()).collect();
        if !admits.contains(&true) {
            continue;
        }
        let usage = BoardUsage::of(&board.placed);
        let cap = &board.capacity;
        let mut cpus: Vec<(u32, bool)> = cap.cpus.iter().map(|c| (usage.cpu_free(c), c.big)).collect();
        cpus.sort_unstable();
        let room = Room {
            admits,
            cpus,
            millicores: u64::from(cap.millicores.saturating_sub(usage.millicores)),
            memory_mib: cap.memory_mib.saturating_sub(usage.memory_mib),
            gpu_slots: u64::from(cap.gpu_slots.saturating_sub(usage.gpu_slots)),
            encoder_slots: u64::from(cap.encoder_slots.saturating_sub(usage.encoder_slots)),
            ports: usage.free_port_count(cap.ports) as u64,
            allowance: keys
                .iter()
                .map(|(key, max)| u64::from(max.saturating_sub(usage.groups.get(*key).copied().unwrap_or(0))))
                .collect(),
        };
        let joins = |class: &Class| {
            let least = class.room.memory_mib.min(room.memory_mib);
            let most = class.most_memory_mib.max(room.memory_mib);
            Room { memory_mib: 0, ..class.room.clone() } == Room { memory_mib: 0, ..room.clone() }
                && (most - least) as f64 <= most as f64 * MEMORY_SLACK
        };
        match classes.iter_mut().find(|c| joins(c)) {
            Some(class) => {
                class.boards.push(i);
                class.most_memory_mib = class.most_memory_mib.max(room.memory_mib);
                class.room.memory_mib = class.room.memory_mib.min(room.memory_mib);
            }
            None => classes.push(Class {
                boards: vec![i],
                most_memory_mib: room.memory_mib,
                room,
                needs: needs.clone(),
                needs_exact,
                memo: HashMap::new(),
            }),
        }
    }
    classes
}

impl Class {
    /// Whether [`Class::fits`] is exact for every board of the class, not only safe: the
    /// requests have no CPU remainders and one limit per anti-affinity key, and the boards
    /// have the same free memory. Then the LP's optimum bounds what any placement can add.
    pub fn exact(&self) -> bool {
        self.needs_exact && self.most_memory_mib == self.room.memory_mib
    }

    /// Whether one board of the class can run `counts[j]` instances of each request `j` at once.
    pub fn fits(&mut self, counts: &[u32]) -> bool {
        if let Some(&known) = self.memo.get(counts) {
            return known;
        }
        let ok = self.check(counts);
        self.memo.insert(counts.to_vec(), ok);
        ok
    }

    fn check(&self, counts: &[u32]) -> bool {
        let room = &self.room;
        if counts.iter().zip(&room.admits).any(|(&n, &ok)| n > 0 && !ok) {
            return false;
        }
        let total = |f: fn(&Need) -> u64| -> u64 {
            self.needs.iter().zip(counts).map(|(need, &n)| f(need) * u64::from(n)).sum()
        };
        let mut by_key = vec![0u64; room.allowance.len()];
        for (need, &n) in self.needs.iter().zip(counts) {
            if let Some(key) = need.key {
                by_key[key] += u64::from(n);
            }
        }
        let instances: u64 = counts.iter().map(|&n| u64::from(n)).sum();
        total(|n| n.millicores) <= room.millicores
            && total(|n| n.memory_mib) <= room.memory_mib
            && total(|n| n.gpu_slots) <= room.gpu_slots
            && total(|n| n.encoder_slots) <= room.encoder_slots
            && instances * PORTS_PER_INSTANCE as u64 <= room.ports
            && by_key.iter().zip(&room.allowance).all(|(n, allowed)| n <= allowed)
            && assign_cpus(&room.cpus, &cpu_items(&self.needs, counts)).is_some()
    }

    /// Every maximal configuration with at most `limit[j]` instances of each request (one to
    /// which no instance can be added), in a fixed order. `None` when that takes more than
    /// `budget` new checks (the budget is shared across calls and counted down).
    pub fn maximal(&mut self, limit: &[u32], budget: &mut usize) -> Option<Vec<Vec<u32>>> {
        let mut out = Vec::new();
        let mut counts = vec![0; limit.len()];
        self.extend(&mut counts, 0, limit, budget, &mut out)?;
        Some(out)
    }

    /// Depth first over configurations that only add requests from `from` on, so each is
    /// visited once; records it when no request at all can be added.
    fn extend(
        &mut self,
        counts: &mut Vec<u32>,
        from: usize,
        limit: &[u32],
        budget: &mut usize,
        out: &mut Vec<Vec<u32>>,
    ) -> Option<()> {
        let mut maximal = true;
        for j in 0..counts.len() {
            if counts[j] >= limit[j] {
                continue;
            }
            counts[j] += 1;
            if !self.memo.contains_key(counts.as_slice()) {
                *budget = budget.checked_sub(1)?;
            }
            if self.fits(counts) {
                maximal = false;
                if j >= from {
                    self.extend(counts, j, limit, budget, out)?;
                }
            }
            counts[j] -= 1;
        }
        if maximal {
            out.push(counts.clone());
        }
        Some(())
    }
}

/// The maximal configurations of every class (see [`Class::maximal`]), or `None` when they take
/// more than `budget` checks in all (counted down).
pub fn columns(classes: &mut [Class], limit: &[u32], budget: &mut usize) -> Option<Vec<Vec<Vec<u32>>>> {
    classes.iter_mut().map(|class| class.maximal(limit, budget)).collect()
}

/// The CPU needs of `counts[j]` instances of each request, one entry per instance.
fn cpu_items(needs: &[Need], counts: &[u32]) -> Vec<CpuNeed> {
    needs.iter().zip(counts).flat_map(|(need, &n)| std::iter::repeat_n(need.cpu, n as usize)).collect()
}

/// A cpuset for every item on CPUs with `cpus[i] = (free millicores, big)`: for each item, in
/// the order given, the indices of its CPUs. Exact: a best fit settles most cases, else a search
/// over the CPUs grouped by (free, big) that remembers states that failed. `None` when no
/// choice of cpusets fits.
pub(super) fn assign_cpus(cpus: &[(u32, bool)], items: &[CpuNeed]) -> Option<Vec<Vec<usize>>> {
    // Big-only instances first, then the largest shares: the hardest to fit go first.
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| {
        let it = items[i];
        (std::cmp::Reverse(it.big), std::cmp::Reverse(it.share), std::cmp::Reverse(it.k), i)
    });
    let sorted: Vec<(usize, CpuNeed)> = order.iter().map(|&i| (i, items[i])).collect();
    let mut chosen = vec![Vec::new(); items.len()];
    if best_fit(cpus, &sorted, &mut chosen) {
        return Some(chosen);
    }
    let state: Vec<(u32, bool, usize)> =
        cpus.iter().enumerate().map(|(i, &(free, big))| (free, big, i)).collect();
    search(state, &sorted, 0, &mut HashSet::new(), &mut chosen).then_some(chosen)
}

/// Each item on the `k` allowed CPUs with the least room that still take its share.
fn best_fit(cpus: &[(u32, bool)], items: &[(usize, CpuNeed)], chosen: &mut [Vec<usize>]) -> bool {
    let mut free: Vec<u32> = cpus.iter().map(|c| c.0).collect();
    for &(at, need) in items {
        let mut allowed: Vec<usize> =
            (0..cpus.len()).filter(|&i| free[i] >= need.share && (cpus[i].1 || !need.big)).collect();
        if allowed.len() < need.k {
            return false;
        }
        allowed.sort_by_key(|&i| (free[i], cpus[i].1, i));
        allowed.truncate(need.k);
        for &i in &allowed {
            free[i] -= need.share;
        }
        chosen[at] = allowed;
    }
    true
}

/// Places items `i..` on `state` (free, big, CPU index): every way of taking the item's CPUs
/// from the groups of interchangeable CPUs, remembering the states from which it failed.
fn search(
    mut state: Vec<(u32, bool, usize)>,
    items: &[(usize, CpuNeed)],
    i: usize,
    failed: &mut HashSet<(usize, Vec<(u32, bool)>)>,
    chosen: &mut [Vec<usize>],
) -> bool {
    let Some(&(at, need)) = items.get(i) else { return true };
    state.sort_unstable();
    let key = (i, state.iter().map(|&(free, big, _)| (free, big)).collect::<Vec<_>>());
    if failed.contains(&key) {
        return false;
    }
    // Runs of CPUs with the same (free, big) that may take the item: (first, length).
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (c, &(free, big, _)) in state.iter().enumerate() {
        if free < need.share || (need.big && !big) {
            continue;
        }
        match runs.last_mut() {
            Some(run) if run.0 + run.1 == c && state[run.0].0 == free && state[run.0].1 == big => run.1 += 1,
            _ => runs.push((c, 1)),
        }
    }
    let mut take = vec![0; runs.len()];
    let found = combinations(&runs, &mut take, 0, need.k, &mut |take| {
        let mut next = state.clone();
        let mut cpus = Vec::with_capacity(need.k);
        for (&(first, _), &n) in runs.iter().zip(take) {
            for cpu in &mut next[first..first + n] {
                cpu.0 -= need.share;
                cpus.push(cpu.2);
            }
        }
        let ok = search(next, items, i + 1, failed, chosen);
        if ok {
            chosen[at] = cpus;
        }
        ok
    });
    if !found {
        failed.insert(key);
    }
    found
}

/// Tries every way of taking `left` CPUs from the runs from index `r` on (as many as possible
/// from the fullest first), until `f` accepts one.
fn combinations(
    runs: &[(usize, usize)],
    take: &mut Vec<usize>,
    r: usize,
    left: usize,
    f: &mut dyn FnMut(&[usize]) -> bool,
) -> bool {
    if left == 0 {
        return f(take);
    }
    if r == runs.len() {
        return false;
    }
    for n in (0..=runs[r].1.min(left)).rev() {
        take[r] = n;
        if combinations(runs, take, r + 1, left - n, f) {
            take[r] = 0;
            return true;
        }
    }
    take[r] = 0;
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packing::tests::{class, request, topology_facts};
    use crate::packing::{Policy, place};

    fn board(id: &str, memory_mib: u64) -> BoardState {
        BoardState::new(&topology_facts(id, "aarch64", None, memory_mib, 4, None), &class(0, None, 0, 0))
    }

    #[test]
    fn boards_with_the_same_room_share_a_class() {
        let mut boards: Vec<BoardState> = ["a", "b", "c"].iter().map(|id| board(id, 4096)).collect();
        // A few MiB less is the same class (assuming the least); a board that runs something is not.
        boards.push(board("d", 4090));
        let mut used = board("e", 4096);
        let p = place(std::slice::from_ref(&used), &request(1000, 512), Policy::FillFirst).unwrap();
        used.placed.push(p);
        boards.push(used);
        // A board that admits nothing of the batch is in no class.
        boards.push(BoardState { cordoned: true, ..board("f", 4096) });
        let requests = [request(1000, 1024)];
        let classes = classes(&boards, &requests);
        assert_eq!(
            classes.iter().map(|c| c.boards.clone()).collect::<Vec<_>>(),
            vec![vec![0, 1, 2, 3], vec![4]]
        );
        assert!(!classes[0].exact(), "free memory differs within the class");
        assert!(classes[1].exact());
        assert_eq!(classes[0].room.memory_mib, 4090 - 512);
    }

    #[test]
    fn maximal_configurations_are_enumerated_within_the_limit_and_budget() {
        // 4 CPUs, 3584 MiB: three of A (memory), or one A and one B.
        let requests = [request(1000, 1024), request(500, 2048)];
        let mut class = classes(&[board("a", 4096)], &requests).remove(0);
        assert_eq!(class.maximal(&[10, 10], &mut 1000).unwrap(), vec![vec![3, 0], vec![1, 1]]);
        assert_eq!(class.maximal(&[2, 0], &mut 1000).unwrap(), vec![vec![2, 0]]);
        assert!(class.fits(&[1, 1]) && !class.fits(&[2, 1]) && !class.fits(&[4, 0]));
        // A fresh class (nothing checked yet) runs out of a budget of 2 checks.
        let mut fresh = classes(&[board("a", 4096)], &requests).remove(0);
        assert_eq!(fresh.maximal(&[10, 10], &mut 2), None);
    }

    #[test]
    fn cpusets_are_found_where_best_fit_fails() {
        // Two whole CPUs; four instances of 300 and two of 400 fit only as 400 + 300 + 300 on
        // each, which best fit (largest first, fullest CPU first) misses.
        let cpus = [(1000, false), (1000, false)];
        let one = |share| CpuNeed { k: 1, share, big: false };
        let items = [one(300), one(300), one(300), one(300), one(400), one(400)];
        let mut chosen = vec![Vec::new(); items.len()];
        let sorted: Vec<(usize, CpuNeed)> = [4, 5, 0, 1, 2, 3].iter().map(|&i| (i, items[i])).collect();
        assert!(!best_fit(&cpus, &sorted, &mut chosen));
        let sets = assign_cpus(&cpus, &items).expect("a packing exists");
        let mut load = [0; 2];
        for (set, item) in sets.iter().zip(&items) {
            assert_eq!(set.len(), item.k);
            set.iter().for_each(|&c| load[c] += item.share);
        }
        assert_eq!(load, [1000, 1000]);
        assert!(assign_cpus(&cpus, &[one(300), one(300), one(300), one(300), one(400), one(401)]).is_none());
        // Big-pinned instances only get big CPUs.
        let mixed = [(1000, false), (1000, true)];
        let big = CpuNeed { k: 1, share: 1000, big: true };
        assert_eq!(assign_cpus(&mixed, &[one(1000), big]), Some(vec![vec![0], vec![1]]));
        assert!(assign_cpus(&mixed, &[big, big]).is_none());
    }
}
