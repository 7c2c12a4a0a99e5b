//! The planning pass of [`super::place_all`]: the configuration LP over the whole batch, turned
//! into whole boards, then the greedy passes for the rest.
//!
//! The greedy passes decide one instance at a time, so on a mixed rack they can leave every
//! board a little off the mix the rack as a whole needs (one board type out of GPU slots with
//! CPU to spare, another the other way round), which no later move mends. The plan looks at the
//! whole batch at once: boards are grouped into classes of interchangeable ones, every maximal
//! set of instances one board of each class can hold is enumerated ([`super::configs`]), and
//! the LP ([`super::lp`]) says how many boards of each class should hold each set.
//!
//! Its solution is fractional. Rounding it down and leaving the fractional boards' share to the
//! greedy passes usually works, but on a full rack which of the LP's many optimal solutions is
//! rounded decides whether that share still fits anywhere. So the plan dives: it commits whole
//! boards (all the solution's whole boards at once where it can, else one board of a set the
//! solution uses), solves again for the rest with the sets clipped to what is left (a tighter
//! LP, which shows at once when a commitment leaves a rest no whole boards can hold, and the
//! commitment is taken back), and so on until the batch, or as much of it as the first LP
//! covers, is on whole boards. Each set is placed on a board of its class with cpusets from the
//! model's exact search; the greedy passes place anything left (where the dive gave up, the LP
//! rounded down). The enumeration is done once: clipping the sets needs no new one.
//!
//! The LP's optimum, rounded down, is also the most instances of the batch any placement can
//! add when the model is exact ([`Planned::bound`]): [`super::place_all`] stops there instead
//! of searching on.
//!
//! The enumeration is bounded by [`BUDGET`] checks of a set, the dive by [`MAX_SOLVES`] LP
//! solves: on a rack whose boards are too varied the plan gives up and the other passes stand.
//! Everything is deterministic: the same rack and demand give the same placements.

use super::configs::{self, Class, CpuNeed, assign_cpus};
use super::lp;
use super::placer::{Batch, Policy, greedy};
use super::resources::{BoardUsage, PORTS_PER_INSTANCE};
use super::{BoardState, Placement, PlacementRequest, check_board};

/// Most sets the enumeration checks before the plan gives up.
pub const BUDGET: usize = 200_000;

/// LP solves the dive makes at most.
pub const MAX_SOLVES: usize = 100;

/// Single boards the dive tries to commit from one solution (after all of its whole boards at
/// once) before it gives up.
const MOVES: usize = 4;

/// What the plan placed, and the most that can be placed.
#[derive(Debug, Clone)]
pub struct Planned {
    /// One batch per request, as [`super::place_all`] returns them.
    pub batches: Vec<Batch>,
    /// The most instances of the demand any placement can add to these boards (the LP's
    /// optimum, rounded down), when the model is exact for them (see [`Class::exact`]).
    pub bound: Option<usize>,
}

/// Places `demand` on `boards` by the plan (see the module doc), the placements appended to
/// their boards. `None`, with `boards` unchanged, when the enumeration would take more than
/// [`BUDGET`] checks.
pub fn place_planned(
    boards: &mut [BoardState],
    demand: &[(PlacementRequest, usize)],
    policy: Policy,
) -> Option<Planned> {
    place_within(boards, demand, policy, BUDGET)
}

/// [`place_planned`] with another budget.
fn place_within(
    boards: &mut [BoardState],
    demand: &[(PlacementRequest, usize)],
    policy: Policy,
    mut budget: usize,
) -> Option<Planned> {
    let requests: Vec<PlacementRequest> = demand.iter().map(|(r, _)| r.clone()).collect();
    let need: Vec<u32> = demand.iter().map(|(_, n)| u32::try_from(*n).unwrap_or(u32::MAX)).collect();
    let mut classes = configs::classes(boards, &requests);
    let columns = configs::columns(&mut classes, &need, &mut budget)?;
    let per_class: Vec<usize> = classes.iter().map(|c| c.boards.len()).collect();
    let solution = lp::solve(&columns, &per_class, &need)?;
    let most = (solution.placed + EPS).floor();
    let whole = dive(&columns, &per_class, &need, &solution).unwrap_or_else(|| {
        solution.boards.iter().map(|xs| xs.iter().map(|x| (x + EPS).floor() as usize).collect()).collect()
    });
    let batches = follow(boards, demand, &classes, &columns, &whole, policy);
    let bound = classes.iter().all(Class::exact).then_some(most as usize);
    Some(Planned { batches, bound })
}

/// The LP's values are exact up to rounding error of this size.
const EPS: f64 = 1e-6;

/// Whole boards per set (per class, per column) that hold as many instances as the LP's
/// `first` solution (rounded down), if a dive finds them: commit whole boards (every whole
/// board of the solution, else one board of one of the sets it uses most), then solve again
/// for what is left, the sets clipped to what is left. Clipped sets make a tighter LP, so a
/// commitment that leaves a rest no whole boards can hold shows at once and is taken back.
/// Gives up after [`MAX_SOLVES`] solves, or when none of [`MOVES`] moves keeps the count.
fn dive(
    columns: &[Vec<Vec<u32>>],
    per_class: &[usize],
    need: &[u32],
    first: &lp::Solution,
) -> Option<Vec<Vec<usize>>> {
    let target = (first.placed + EPS).floor();
    let mut whole: Vec<Vec<usize>> = columns.iter().map(|cs| vec![0; cs.len()]).collect();
    let mut boards = per_class.to_vec();
    let mut left = need.to_vec();
    let mut committed = 0u64;
    let mut solves = 1;
    let mut solution = first.clone();
    loop {
        // Moves, best first: every whole board of the solution, then one board of a set it
        // uses, the most used first.
        let mut used: Vec<(f64, usize, usize)> = Vec::new();
        for (t, xs) in solution.boards.iter().enumerate() {
            for (c, &x) in xs.iter().enumerate().filter(|(_, x)| **x > EPS) {
                used.push((x, t, c));
            }
        }
        if used.is_empty() || left.iter().all(|&n| n == 0) {
            return Some(whole);
        }
        used.sort_by(|a, b| b.0.total_cmp(&a.0).then((a.1, a.2).cmp(&(b.1, b.2))));
        let floors: Vec<(usize, usize, usize)> =
            used.iter().map(|&(x, t, c)| (t, c, (x + EPS).floor() as usize)).filter(|m| m.2 > 0).collect();
        let mut moves: Vec<Vec<(usize, usize, usize)>> = Vec::new();
        if !floors.is_empty() {
            moves.push(floors);
        }
        moves.extend(used.iter().take(MOVES).map(|&(_, t, c)| vec![(t, c, 1)]));
        let mut next = None;
        for commit in moves {
            if solves == MAX_SOLVES {
                return None;
            }
            let (mut b, mut l, mut gained) = (boards.clone(), left.clone(), 0u64);
            for &(t, c, n) in &commit {
                b[t] -= n.min(b[t]);
                for (l, &k) in l.iter_mut().zip(&columns[t][c]) {
                    let took = (*l).min(k.saturating_mul(n as u32));
                    *l -= took;
                    gained += u64::from(took);
                }
            }
            let clipped: Vec<Vec<Vec<u32>>> = columns
                .iter()
                .map(|cs| cs.iter().map(|c| c.iter().zip(&l).map(|(&k, &n)| k.min(n)).collect()).collect())
                .collect();
            solves += 1;
            let Some(s) = lp::solve(&clipped, &b, &l) else { continue };
            if (committed + gained) as f64 + s.placed >= target - EPS {
                next = Some((commit, b, l, gained, s));
                break;
            }
        }
        let (commit, b, l, gained, s) = next?;
        for (t, c, n) in commit {
            whole[t][c] += n;
        }
        (boards, left, committed, solution) = (b, l, committed + gained, s);
    }
}

/// Places `whole[t][c]` boards of class `t` with set `c`, then the rest of the demand by the
/// greedy passes; returns one batch per request.
fn follow(
    boards: &mut [BoardState],
    demand: &[(PlacementRequest, usize)],
    classes: &[Class],
    columns: &[Vec<Vec<u32>>],
    whole: &[Vec<usize>],
    policy: Policy,
) -> Vec<Batch> {
    let mut left: Vec<usize> = demand.iter().map(|(_, n)| *n).collect();
    let mut planned: Vec<Vec<Placement>> = vec![Vec::new(); demand.len()];
    for ((class, sets), counts) in classes.iter().zip(columns).zip(whole) {
        let mut free = class.boards.iter();
        for (set, &count) in sets.iter().zip(counts) {
            for &b in free.by_ref().take(count) {
                for (j, p) in realise(&mut boards[b], set, demand, &mut left) {
                    planned[j].push(p);
                }
            }
        }
    }
    let rest: Vec<(PlacementRequest, usize)> =
        demand.iter().zip(&left).map(|((req, _), &n)| (req.clone(), n)).collect();
    let mut batches = greedy(boards, &rest, policy);
    for (batch, mut first) in batches.iter_mut().zip(planned) {
        first.append(&mut batch.placed);
        batch.placed = first;
    }
    batches
}

/// Places the instances of `set` that are still `left` on `board`, with the cpusets the
/// model's search finds and the lowest free ports, and counts them off `left`. Returns them
/// with their request's index; places nothing when they do not fit after all (the greedy
/// passes then place them), so the board is never over-committed.
fn realise(
    board: &mut BoardState,
    set: &[u32],
    demand: &[(PlacementRequest, usize)],
    left: &mut [usize],
) -> Vec<(usize, Placement)> {
    let jobs: Vec<usize> =
        (0..demand.len()).flat_map(|j| std::iter::repeat_n(j, (set[j] as usize).min(left[j]))).collect();
    let cap = &board.capacity;
    let mut usage = BoardUsage::of(&board.placed);
    let cpus: Vec<(u32, bool)> = cap.cpus.iter().map(|c| (usage.cpu_free(c), c.big)).collect();
    let items: Vec<CpuNeed> = jobs.iter().map(|&j| CpuNeed::of(&demand[j].0)).collect();
    let Some(cpusets) = assign_cpus(&cpus, &items) else { return Vec::new() };
    let before = board.placed.len();
    let mut made = Vec::with_capacity(jobs.len());
    for (&j, set) in jobs.iter().zip(cpusets) {
        let req = &demand[j].0;
        let Some(ports) = usage.free_ports(cap.ports, PORTS_PER_INSTANCE) else {
            board.placed.truncate(before);
            return Vec::new();
        };
        let mut cpus: Vec<u32> = set.iter().map(|&i| cap.cpus[i].id).collect();
        cpus.sort_unstable();
        let p = req.placement(&board.id, cpus, [ports[0], ports[1]]);
        usage.add(&p);
        board.placed.push(p.clone());
        made.push((j, p));
    }
    if check_board(board).is_err() {
        board.placed.truncate(before);
        return Vec::new();
    }
    for &j in &jobs {
        left[j] -= 1;
    }
    made
}

#[cfg(test)]
mod tests {
    use api::rack::Pinning;

    use super::*;
    use crate::packing::place_all;
    use crate::packing::tests::{class, request, topology_facts};

    /// 8 CPUs (4 little, one of them the host's, and 4 big), 7680 MiB, 6 GPU and encoder slots.
    fn rk3588(id: &str) -> BoardState {
        BoardState::new(&topology_facts(id, "aarch64", None, 8192, 8, Some(4)), &class(1000, Some("g"), 6, 6))
    }

    /// 4 CPUs (all big: capacity unknown), 3584 MiB, 2 GPU and 4 encoder slots.
    fn small(id: &str) -> BoardState {
        BoardState::new(&topology_facts(id, "aarch64", None, 4096, 4, None), &class(0, Some("g"), 2, 4))
    }

    /// One small board and two rk3588-like ones; 1 puzzle, 3 rpg and 3 big-pinned moba. The
    /// only packing of all 7: moba on the small board, 3 rpg filling one rk3588 (memory and
    /// GPU), 2 moba and the puzzle on the other. Every greedy pass puts an rpg on the small
    /// board first.
    fn rack_and_demand() -> (Vec<BoardState>, Vec<(PlacementRequest, usize)>) {
        let puzzle = PlacementRequest { gpu_slots: 1, encoder_slots: 1, ..request(500, 1024) };
        let rpg = PlacementRequest { gpu_slots: 2, encoder_slots: 1, ..request(1500, 2560) };
        let moba = PlacementRequest {
            gpu_slots: 2,
            encoder_slots: 2,
            pinning: Pinning::Big,
            archs: ["aarch64".to_string()].into(),
            ..request(2000, 3072)
        };
        (vec![small("s"), rk3588("a"), rk3588("b")], vec![(puzzle, 1), (rpg, 3), (moba, 3)])
    }

    fn count(batches: &[Batch]) -> Vec<usize> {
        batches.iter().map(|b| b.placed.len()).collect()
    }

    #[test]
    fn the_plan_places_what_every_greedy_pass_misses() {
        let (boards, demand) = rack_and_demand();
        let mut passes = boards.clone();
        let short = greedy(&mut passes, &demand, Policy::FillFirst);
        assert!(count(&short).iter().sum::<usize>() < 7, "{:?}", count(&short));

        let mut planned = boards.clone();
        let plan = place_planned(&mut planned, &demand, Policy::FillFirst).expect("within the budget");
        assert_eq!(count(&plan.batches), vec![1, 3, 3]);
        assert!(plan.batches.iter().all(|b| b.failure.is_none()));
        assert_eq!(plan.bound, Some(7));
        planned.iter().for_each(|b| check_board(b).unwrap());
        let on = |id: &str| planned.iter().find(|b| b.id == id).unwrap().placed.len();
        assert_eq!(on("s"), 1);
        assert_eq!(on("a") + on("b"), 6);

        // place_all takes the plan when its first pass falls short, under either policy.
        for policy in [Policy::FillFirst, Policy::Spread] {
            let mut all = boards.clone();
            assert_eq!(count(&place_all(&mut all, &demand, policy)), vec![1, 3, 3]);
            all.iter().for_each(|b| check_board(b).unwrap());
        }
    }

    #[test]
    fn past_the_bound_the_most_is_placed_and_the_rest_says_why() {
        let (boards, mut demand) = rack_and_demand();
        demand[1].1 = 5;
        let mut planned = boards.clone();
        let plan = place_planned(&mut planned, &demand, Policy::FillFirst).unwrap();
        let bound = plan.bound.expect("the model is exact here");
        assert!(bound < 9);
        let mut all = boards;
        let batches = place_all(&mut all, &demand, Policy::FillFirst);
        assert_eq!(count(&batches).iter().sum::<usize>(), bound);
        for ((_, wanted), batch) in demand.iter().zip(&batches) {
            assert_eq!(batch.failure.is_none(), batch.placed.len() == *wanted);
        }
        all.iter().for_each(|b| check_board(b).unwrap());
    }

    #[test]
    fn over_budget_the_plan_gives_up_and_changes_nothing() {
        let (boards, demand) = rack_and_demand();
        let mut planned = boards.clone();
        assert!(place_within(&mut planned, &demand, Policy::FillFirst, 3).is_none());
        assert_eq!(planned, boards);
    }

    #[test]
    fn the_plan_leaves_what_ran_before_alone() {
        // The puzzle already runs on board a (where the packing of all 7 has it): a is a class
        // of its own now, and the rest still fits around it.
        let (mut boards, demand) = rack_and_demand();
        let p = crate::packing::place(&boards[1..2], &demand[0].0, Policy::FillFirst).unwrap();
        boards[1].placed.push(p);
        let before = boards.clone();
        let plan = place_planned(&mut boards, &demand[1..], Policy::FillFirst).unwrap();
        assert_eq!(count(&plan.batches), vec![3, 3]);
        for (b, old) in boards.iter().zip(&before) {
            assert_eq!(&b.placed[..old.placed.len()], &old.placed[..]);
            check_board(b).unwrap();
        }
    }

    #[test]
    fn the_dive_finds_whole_boards_that_cover_the_demand() {
        // Two classes: 2 boards holding [2, 0] or [1, 1], 1 board holding [0, 3] or [1, 2].
        let columns = vec![vec![vec![2, 0], vec![1, 1]], vec![vec![0, 3], vec![1, 2]]];
        let need = [3, 3];
        let first = lp::solve(&columns, &[2, 1], &need).unwrap();
        assert!(first.covers(&need));
        let whole = dive(&columns, &[2, 1], &need, &first).expect("whole boards exist");
        assert!(whole[0].iter().sum::<usize>() <= 2 && whole[1].iter().sum::<usize>() <= 1);
        for j in 0..2 {
            let held: usize = whole
                .iter()
                .zip(&columns)
                .flat_map(|(w, cs)| w.iter().zip(cs).map(move |(n, c)| n * c[j] as usize))
                .sum();
            assert!(held >= need[j] as usize, "{whole:?}");
        }
    }
}
