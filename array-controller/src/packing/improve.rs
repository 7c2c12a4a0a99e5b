//! Ruin and recreate: a bounded local search for a batch that did not fit.
//!
//! The greedy passes of [`super::place_all`] decide each instance once, and its plan
//! ([`super::plan`]) leaves what rounding its LP does not place to them. On a mixed rack that
//! can leave every board a little off the mix the rack as a whole needs (one board type full
//! of CPU and out of GPU slots, another the other way round), and no single move mends it. The
//! search runs when neither places the whole batch and the plan cannot show that no more of it
//! fits. It takes a handful of boards that could run an unplaced instance, lifts this batch's
//! instances off them (instances placed before the batch never move), and places them again
//! together with every unplaced instance: the most constrained requests first, the biggest
//! first within them (or, every other round, in a shuffled order), each on the board the
//! policy prefers. The result is kept when it places at least as many instances as before
//! (ties keep it too, so the search can walk across equal packings) and, one round in eight,
//! when it places one fewer (to leave a dead end); otherwise it is undone. The best state
//! seen is what the search returns. A fixed number of rounds and a fixed seed keep it bounded
//! and deterministic: the same rack and demand give the same placements.

use super::BoardState;
use super::PlacementRequest;
use super::placer::{Batch, Fitting, Policy, put, settle};

/// Rounds of ruin and recreate at most.
pub const ROUNDS: usize = 1000;

/// Boards lifted per round: between 2 and this many that admit the unplaced instance, plus
/// sometimes one board of any kind (so instances can trade places across board types).
const MAX_RUINED: usize = 5;

/// splitmix64, seeded once per search.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) % n.max(1) as u64) as usize
    }
}

/// Improves `batches` (placed on `boards` by a greedy pass) towards placing the whole
/// `demand`. On return every request that is still short has a `failure` saying why, from
/// the final state of the boards; every other has none.
pub fn improve(
    boards: &mut [BoardState],
    demand: &[(PlacementRequest, usize)],
    batches: &mut [Batch],
    policy: Policy,
) {
    let fitting = Fitting::new(boards, policy);
    let eligible: Vec<Vec<usize>> = demand
        .iter()
        .map(|(req, _)| (0..boards.len()).filter(|&b| fitting.admits(&boards[b], req)).collect())
        .collect();
    // Recreate order: fewest eligible boards first, then biggest first.
    let mut order: Vec<usize> = (0..demand.len()).collect();
    order.sort_by(|&a, &b| {
        let size = |i: usize| fitting.dominant(&demand[i].0);
        eligible[a].len().cmp(&eligible[b].len()).then(size(b).total_cmp(&size(a))).then(a.cmp(&b))
    });
    let placed = |batches: &[Batch]| batches.iter().map(|b| b.placed.len()).sum::<usize>();
    let short = |batches: &[Batch]| -> Vec<usize> {
        (0..demand.len())
            .filter(|&j| batches[j].placed.len() < demand[j].1 && !eligible[j].is_empty())
            .collect()
    };
    let mut rng = Rng(0x005e_ed0f_7ac4);
    let mut best = (placed(batches), boards.to_vec(), batches.to_vec());
    for _ in 0..ROUNDS {
        let missing = short(batches);
        if missing.is_empty() {
            break;
        }
        let target = &eligible[missing[rng.below(missing.len())]];
        let mut ruined: Vec<usize> = Vec::new();
        for _ in 0..2 + rng.below(MAX_RUINED - 1) {
            let b = target[rng.below(target.len())];
            if !ruined.contains(&b) {
                ruined.push(b);
            }
        }
        if rng.below(2) == 0 {
            let b = rng.below(boards.len());
            if !ruined.contains(&b) {
                ruined.push(b);
            }
        }
        let before = placed(batches);
        let (saved_boards, saved_batches) = (boards.to_vec(), batches.to_vec());
        for &b in &ruined {
            let id = &boards[b].id;
            let ours: Vec<_> =
                batches.iter().flat_map(|x| &x.placed).filter(|p| &p.board_id == id).cloned().collect();
            boards[b].placed.retain(|p| !ours.contains(p));
            for batch in batches.iter_mut() {
                batch.placed.retain(|p| &p.board_id != id);
            }
        }
        let mut todo: Vec<usize> = order
            .iter()
            .flat_map(|&j| std::iter::repeat_n(j, demand[j].1 - batches[j].placed.len()))
            .collect();
        if rng.below(2) == 0 {
            for i in (1..todo.len()).rev() {
                todo.swap(i, rng.below(i + 1));
            }
        }
        for j in todo {
            if let Ok(p) = fitting.choose(boards, &demand[j].0) {
                put(boards, &mut batches[j].placed, p);
            }
        }
        let now = placed(batches);
        if now > best.0 {
            best = (now, boards.to_vec(), batches.to_vec());
        }
        if now + usize::from(rng.below(8) == 0) < before {
            boards.clone_from_slice(&saved_boards);
            batches.clone_from_slice(&saved_batches);
        }
    }
    if best.0 > placed(batches) {
        boards.clone_from_slice(&best.1);
        batches.clone_from_slice(&best.2);
    }
    settle(boards, demand, batches, policy);
}

#[cfg(test)]
mod tests {
    use api::facts::PortRange;

    use super::*;
    use crate::packing::check_board;
    use crate::packing::placer::greedy;
    use crate::packing::tests::{class, request, topology_facts};

    #[test]
    fn the_search_places_what_the_passes_strand() {
        // Two encoder slots and ports for two instances: every pass starts with the request
        // that has more instances, whose first instance takes both slots.
        let mut f = topology_facts("b0", "x86_64", None, 4096, 12, None);
        f.host_port_range = PortRange { start: 30000, end: 30003 };
        let board = BoardState::new(&f, &class(0, None, 2, 2));
        let wide = PlacementRequest { encoder_slots: 2, ..request(1, 128) };
        let narrow = PlacementRequest { encoder_slots: 1, ..request(1, 128) };
        let demand = [(wide, 3), (narrow, 2)];

        let mut passes_only = vec![board.clone()];
        let stranded = greedy(&mut passes_only, &demand, Policy::FillFirst);
        assert_eq!(stranded.iter().map(|b| b.placed.len()).collect::<Vec<_>>(), vec![1, 0]);

        let mut boards = vec![board];
        let mut batches = greedy(&mut boards, &demand, Policy::FillFirst);
        improve(&mut boards, &demand, &mut batches, Policy::FillFirst);
        assert_eq!(batches.iter().map(|b| b.placed.len()).collect::<Vec<_>>(), vec![0, 2]);
        // The request still short says why, from the final state of the board.
        let why = batches[0].failure.as_ref().expect("the wide request is short").to_string();
        assert!(why.contains("encoder slots"), "{why}");
        assert!(batches[1].failure.is_none());
        check_board(&boards[0]).unwrap();
        assert_eq!(boards[0].placed.len(), 2);
    }
}
