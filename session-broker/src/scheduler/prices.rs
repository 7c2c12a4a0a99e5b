//! Demand-learned region prices (ms): what a region's instances of a game are worth to the
//! players who need them, learned from the RTT maps of the game's recent arrivals.
//!
//! Placing every player in its nearest region while it has a free instance fills a popular
//! region with players who had another good region too; the players who arrive next and have no
//! other good region are then sent far away. The offline optimum keeps capacity in scarce
//! regions for the players who need it most. Prices are the classic online primal-dual answer:
//! solve the fluid assignment on a sample of recent demand, and let the coarse stage rank
//! regions by `rtt + price` ([`super::coarse`]), so a player who loses little by going
//! elsewhere does.
//!
//! **The fluid assignment.** The sample is the last [`WINDOW`] arrivals of the game (past
//! information only). Each sampled player takes the region with the lowest `rtt + price` among
//! those within the game's RTT cap (the coarse stage's first tier also goes by `rtt + price`, so
//! this is the order it ranks regions in, loss, warm and load aside). Region `r` holds at most
//! `c_r = n x U x cap_r / L` sampled players: `n` is the sample size, `cap_r` the region's
//! instances of the game (warm + claimed on reachable racks that match it), `L` the claimed
//! instances over all regions (the game's current concurrency: by Little's law, arrival rate x
//! mean hold). In steady state a region serving a share `s` of arrivals holds `s x L`
//! sessions, so `c_r` is the share of the sample it can serve within `U x cap_r`.
//! [`TARGET_UTILISATION`] `U` below 1 keeps headroom: what fills a region whose mean load fits
//! is the random swing of arrivals around it. `L` is measured now, so prices rise when the
//! game's total load does. When the regions together cannot hold the sample, every `c_r` is
//! scaled up until they can: prices then say which regions are scarcer, not that all are.
//!
//! **Prices** are the least that clear that assignment, found by an ascending auction: from all
//! zero, every over-demanded region raises its price just past the point where its excess
//! players (those who lose least by moving) prefer another region, until no region is
//! over-demanded. Raising one region's price only moves players to others, so prices only rise
//! and the auction ends at the least clearing prices. With ample capacity every price stays 0
//! and the scheduler behaves as without prices. A price is at most the game's RTT cap (the
//! default cap when the game's is not finite).
//!
//! The function is pure and deterministic. The broker runs it in the background at most every
//! [`PERIOD_MS`] per game and puts the result in the [`CapacityIndex`]; `bench_scheduler`
//! does the same in simulated time.
//!
//! Parameters, chosen once on `bench_scheduler`'s default traces and checked on others (see
//! ARCHITECTURE.md for the figures): `U` = 0.95 (0.93 to 0.97 give the same figures within
//! noise; 0.85 and 0.9 divert too many players), a window of 500 (250 is noisier), a period of
//! 1 s (0.3 s and 5 s give the same figures).

use std::collections::BTreeMap;

use super::index::{CapacityIndex, RackState};
use super::request::{DEFAULT_MAX_RTT_MS, Game};

/// Recent arrivals of a game in the sample.
pub const WINDOW: usize = 500;
/// Prices are recomputed at most this often (ms).
pub const PERIOD_MS: u64 = 1_000;
/// Target occupancy of a region in the fluid assignment (`U`): the rest is headroom.
pub const TARGET_UTILISATION: f64 = 0.95;
/// Safety bound on auction rounds (each raises at least one price by at least [`EPS_MS`]).
const MAX_ROUNDS: usize = 200;
/// A raise goes this far past the price at which the marginal player is indifferent.
const EPS_MS: f64 = 0.01;

/// A region's instances of one game, as the price function sees them.
#[derive(Debug, Clone, PartialEq)]
pub struct Supply {
    /// Region id.
    pub region: String,
    /// Warm + claimed instances on racks that are reachable and match the game.
    pub capacity: u32,
    /// Claimed instances among them.
    pub active: u32,
}

/// Every region's [`Supply`] of `game` in `index` (regions in the index's order).
pub fn supply(index: &CapacityIndex, game: &Game) -> Vec<Supply> {
    index
        .regions
        .iter()
        .map(|region| {
            let racks = region.racks.iter().filter(|k| k.state != RackState::Unreachable && k.matches(game));
            let (warm, active) =
                racks.fold((0, 0), |(w, a), k| (w + k.warm(&game.id), a + k.active(&game.id)));
            Supply { region: region.id.clone(), capacity: warm + active, active }
        })
        .collect()
}

/// The price (ms, at least 0, rounded up to 0.1 ms) of every region in `supply` for `game`,
/// learned from `recent`: the RTT maps of the game's recent arrivals, oldest first (the last
/// [`WINDOW`] are used).
pub fn compute<'a>(
    game: &Game,
    supply: &[Supply],
    recent: impl IntoIterator<Item = &'a BTreeMap<String, f64>>,
) -> BTreeMap<String, f64> {
    let regions = supply.len();
    let recent: Vec<&BTreeMap<String, f64>> = recent.into_iter().collect();
    // Each sampled player's RTT per region, row by row (infinite: above the cap or unmeasured).
    // Players with no region within the cap cannot be served at this level: left out.
    let mut rtt: Vec<f64> = Vec::with_capacity(WINDOW.min(recent.len()) * regions);
    for map in &recent[recent.len().saturating_sub(WINDOW)..] {
        let row = supply.iter().map(|s| match map.get(&s.region) {
            Some(&v) if v >= 0.0 && v <= game.max_rtt_ms => v,
            _ => f64::INFINITY,
        });
        let start = rtt.len();
        rtt.extend(row);
        if rtt[start..].iter().all(|v| v.is_infinite()) {
            rtt.truncate(start);
        }
    }
    let n = rtt.len().checked_div(regions).unwrap_or(0);
    let concurrency: f64 = supply.iter().map(|s| f64::from(s.active)).sum();
    let max_price = if game.max_rtt_ms.is_finite() { game.max_rtt_ms.max(0.0) } else { DEFAULT_MAX_RTT_MS };
    let mut price = vec![0.0f64; regions];
    if n > 0 && concurrency >= 1.0 {
        auction(&rtt, n, &capacity(supply, concurrency, n), max_price, &mut price);
    }
    // Up to the next 0.1 ms, so that a price still moves the players it was raised to move.
    supply.iter().zip(price).map(|(s, p)| (s.region.clone(), (p * 10.0).ceil() / 10.0)).collect()
}

/// `c_r` of the module docs, scaled up when the regions together cannot hold the sample.
fn capacity(supply: &[Supply], concurrency: f64, n: usize) -> Vec<f64> {
    let n = n as f64;
    let mut c: Vec<f64> =
        supply.iter().map(|s| n * TARGET_UTILISATION * f64::from(s.capacity) / concurrency).collect();
    let total: f64 = c.iter().sum();
    if total > 0.0 && total < n {
        c.iter_mut().for_each(|x| *x *= n / total);
    }
    c
}

/// The ascending auction: raises `price` (all zero on entry) to the least prices at which no
/// region gets more than `capacity` of the `n` players of `rtt` (row by row), each price at
/// most `max_price`.
fn auction(rtt: &[f64], n: usize, capacity: &[f64], max_price: f64, price: &mut [f64]) {
    let regions = capacity.len();
    let mut choice = vec![0usize; n];
    // What a player loses by moving from its choice to its next best region (infinite: none).
    let mut slack = vec![f64::INFINITY; n];
    for _ in 0..MAX_ROUNDS {
        let mut demand = vec![0usize; regions];
        for i in 0..n {
            let (mut best, mut first, mut second) = (0, f64::INFINITY, f64::INFINITY);
            for (r, v) in rtt[i * regions..(i + 1) * regions].iter().enumerate() {
                let cost = v + price[r];
                if cost < first {
                    (best, second, first) = (r, first, cost);
                } else if cost < second {
                    second = cost;
                }
            }
            choice[i] = best;
            slack[i] = second - first;
            demand[best] += 1;
        }
        let mut raised = false;
        for r in 0..regions {
            let excess = (demand[r] as f64 - capacity[r]).ceil();
            if excess < 1.0 || price[r] >= max_price {
                continue;
            }
            // Move the `excess` players who lose least: past the excess-th smallest slack.
            let mut slacks: Vec<f64> = (0..n).filter(|&i| choice[i] == r).map(|i| slack[i]).collect();
            slacks.sort_by(f64::total_cmp);
            let t = slacks[(excess as usize).min(slacks.len()) - 1];
            let next = (price[r] + t + EPS_MS).min(max_price);
            if next > price[r] {
                price[r] = next;
                raised = true;
            }
        }
        if !raised {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn game() -> Game {
        Game::new("g")
    }

    fn supply(region: &str, capacity: u32, active: u32) -> Supply {
        Supply { region: region.into(), capacity, active }
    }

    fn players(n: usize, rtts: &[(&str, f64)]) -> Vec<BTreeMap<String, f64>> {
        vec![rtts.iter().map(|(r, v)| (r.to_string(), *v)).collect(); n]
    }

    #[test]
    fn an_over_demanded_region_gets_the_least_price_that_moves_its_excess() {
        // 60 sessions run; east holds 20 of them at most (U x 20 / 60 = 0.317 of the sample),
        // yet every player prefers it: 5 ms to east, 12 ms to west.
        let s = [supply("east", 20, 20), supply("west", 100, 40)];
        let mut recent = players(100, &[("east", 5.0), ("west", 12.0)]);
        // A third of them lose more by moving (20 ms to west): they keep east.
        recent.extend(players(50, &[("east", 5.0), ("west", 25.0)]));
        let p = compute(&game(), &s, &recent);
        assert_eq!(p["west"], 0.0);
        // Moving the 5 ms-to-12 ms players costs 7 ms each; the 20 ms ones must still fit:
        // 50 of 150 = 0.333 > 0.317, so some of them move too, at a price past 20 ms.
        assert_eq!(p["east"], 20.1, "{p:?}");
        let fewer: Vec<_> = players(100, &[("east", 5.0), ("west", 12.0)])
            .into_iter()
            .chain(players(40, &[("east", 5.0), ("west", 25.0)]))
            .collect();
        let p = compute(&game(), &s, &fewer);
        assert_eq!(p["east"], 7.1, "only the 7 ms players move: {p:?}");
    }

    #[test]
    fn ample_capacity_or_no_demand_gives_all_zero_prices() {
        let recent = players(200, &[("east", 5.0), ("west", 12.0)]);
        let zero = |p: &BTreeMap<String, f64>| p.values().all(|v| *v == 0.0) && p.len() == 2;
        assert!(zero(&compute(&game(), &[supply("east", 100, 30), supply("west", 100, 10)], &recent)));
        assert!(zero(&compute(&game(), &[supply("east", 5, 0), supply("west", 5, 0)], &recent)), "idle");
        assert!(zero(&compute(&game(), &[supply("east", 5, 5), supply("west", 5, 5)], &[])), "no sample");
        assert!(compute(&game(), &[], &recent).is_empty());
    }

    #[test]
    fn players_beyond_the_cap_count_nowhere_and_prices_are_capped() {
        // Every player measures 90 ms to west, above the 80 ms cap: west is not an alternative,
        // so the price of a full east is the cap, and west (which nobody may use) stays 0.
        let s = [supply("east", 10, 10), supply("west", 100, 10)];
        let recent = players(100, &[("east", 5.0), ("west", 90.0)]);
        let p = compute(&game(), &s, &recent);
        assert_eq!(p["east"], game().max_rtt_ms);
        assert_eq!(p["west"], 0.0);
        // Unmeasured, NaN or negative RTTs are not alternatives either.
        let odd = players(100, &[("east", 5.0), ("west", f64::NAN)]);
        assert_eq!(compute(&game(), &s, &odd)["east"], game().max_rtt_ms);
        let none = players(100, &[("north", 5.0)]);
        assert!(compute(&game(), &s, &none).values().all(|v| *v == 0.0));
    }

    #[test]
    fn only_the_latest_window_counts() {
        let s = [supply("east", 20, 20), supply("west", 100, 40)];
        let mut recent = players(2 * WINDOW, &[("east", 5.0), ("west", 12.0)]);
        recent.extend(players(WINDOW, &[("east", 12.0), ("west", 5.0)]));
        assert!(compute(&game(), &s, &recent).values().all(|v| *v == 0.0), "the old ones are gone");
    }

    #[test]
    fn prices_are_deterministic() {
        let s = [supply("a", 30, 28), supply("b", 20, 20), supply("c", 60, 30)];
        let recent: Vec<BTreeMap<String, f64>> = (0..WINDOW)
            .map(|i| {
                let x = (i * 37 % 101) as f64;
                [("a", x / 2.0), ("b", 50.0 - x / 3.0), ("c", 20.0 + (i % 7) as f64)]
                    .iter()
                    .map(|(r, v)| (r.to_string(), *v))
                    .collect()
            })
            .collect();
        let first = compute(&game(), &s, &recent);
        assert!(first.values().any(|v| *v > 0.0), "{first:?}");
        for _ in 0..3 {
            assert_eq!(compute(&game(), &s, &recent), first);
        }
    }
}
