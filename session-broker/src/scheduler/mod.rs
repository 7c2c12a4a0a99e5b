//! The fusion scheduler: pure decision logic (no I/O, no clock; time comes in as arguments).
//!
//! [`decide`] takes a [`CapacityIndex`] snapshot, the [`Game`], the [`Request`] and the time left
//! before the request's deadline, and returns a [`Decision`]:
//!
//! 1. **Relaxation** ([`relax`]): the share of the deadline left picks a [`Level`] and its
//!    [`Limits`] (preferred-RTT tier, RTT cap, uplink limits, unmeasured regions, pin).
//! 2. **Racks** ([`fine::evaluate`]): every rack's hard filters (state, resource type, uplink to
//!    the player's region), once; their aggregates per region feed the coarse stage.
//! 3. **Coarse** ([`coarse`]): regions filtered by pin and RTT cap, scored by tier, effective
//!    RTT (the measured RTT plus the region's demand-learned price for the game, [`prices`]),
//!    loss, warm capacity and load. The best accepted region with a warm instance wins.
//! 4. **Fine** ([`fine::rank`]): that region's racks with a warm instance, best first: the
//!    service claims from the first and falls back to the next on conflict.
//! 5. **Cold path**: with no acceptable warm instance, the best accepted region that can start
//!    one in time (else that has claimed instances coming back) and its best rack:
//!    [`Outcome::Queue`]. With nothing acceptable at this level but something that could still
//!    serve, the request waits in the queue for the next level ([`Decision::retry_at_remaining_ms`]).
//! 6. [`Outcome::NoCapacity`] only when the deadline has passed or no rack anywhere (whatever
//!    its state) could serve the game in time.
//!
//! Every decision carries an [`Explanation`]. A decision reads only per-rack aggregates and the
//! prices in the index: it is O(racks).
//!
//! **Prices** ([`prices`]) are computed apart from decisions, by a pure function of the game's
//! recent arrivals (their RTT maps) and each region's instances: the least prices that clear
//! the fluid assignment of that sample to the regions' capacities. The broker recomputes them
//! in the background at most every second and puts them in the [`CapacityIndex`]; with ample
//! capacity they are all 0 and regions rank by RTT.

pub mod coarse;
pub mod explain;
pub mod fine;
pub mod index;
pub mod prices;
pub mod relax;
pub mod request;

#[cfg(test)]
mod price_tests;
#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

pub use explain::{Explanation, RackCandidate, ReasonCode, RegionCandidate, Rejection};
pub use index::{BoardSnapshot, CapacityIndex, GameStock, Load, Rack, RackState, Region, Uplink};
pub use relax::{Level, Limits};
pub use request::{Game, Packing, Player, Request};

use coarse::{RegionEval, RegionFacts};
use fine::{RackEval, Stock};

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    /// Claim a warm instance: try `racks` in order (fall back to the next on conflict).
    Place {
        /// The chosen region.
        region: String,
        /// Racks to claim from, best first.
        racks: Vec<String>,
    },
    /// No acceptable warm instance now: keep the request `queued`.
    Queue {
        /// The region it waits for (`None`: nothing acceptable at this level yet).
        region: Option<String>,
        /// The rack to ask (`None`: nothing acceptable at this level yet).
        rack: Option<String>,
        /// True: ask `rack` to start one more instance; false: wait for one to be released.
        start_instance: bool,
    },
    /// Nothing can serve the request before its deadline.
    NoCapacity {
        /// [`ReasonCode::DeadlinePassed`] or [`ReasonCode::NoCapacity`].
        code: ReasonCode,
    },
}

/// A decision and its record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// What to do.
    pub outcome: Outcome,
    /// The constraints that applied.
    pub limits: Limits,
    /// For a queued request: decide again at the latest when this much time is left (the next
    /// relaxation level); `None` at the last level.
    pub retry_at_remaining_ms: Option<u64>,
    /// Candidates, scores and rejections.
    pub explanation: Explanation,
}

/// Decides where to place `request` for `game`, with `now_remaining_ms` left before its
/// deadline. Pure and deterministic: the same inputs give the same decision.
pub fn decide(index: &CapacityIndex, game: &Game, request: &Request, now_remaining_ms: u64) -> Decision {
    let level = relax::level(now_remaining_ms, request.deadline_ms);
    let limits = Limits::for_level(game, level);
    let player_region = request.player.home_region();

    // Racks: filters once, aggregated per region.
    let mut evals: Vec<Vec<RackEval>> = Vec::with_capacity(index.regions.len());
    let mut facts: Vec<RegionFacts> = Vec::with_capacity(index.regions.len());
    for region in &index.regions {
        let mut f = RegionFacts::default();
        let e: Vec<RackEval> = region
            .racks
            .iter()
            .map(|rack| {
                let e = fine::evaluate(rack, game, player_region, &limits, now_remaining_ms);
                f.could_host |= rack.could_host(game) && (e.warm > 0 || e.can_free || e.can_start);
                if e.verdict.is_ok() {
                    f.usable += 1;
                    f.warm += e.warm;
                    f.pressure_sum += rack.load.pressure();
                    f.can_start |= e.can_start;
                    f.can_free |= e.can_free;
                }
                e
            })
            .collect();
        evals.push(e);
        facts.push(f);
    }
    let anything = facts.iter().any(|f| f.could_host);

    // A pin is lifted at the last level when the pinned region cannot host the game at all.
    let pin_lifted = limits.pin_soft
        && request.pinned_region.as_ref().is_some_and(|pin| {
            index.regions.iter().zip(&facts).all(|(r, f)| &r.id != pin || !(f.could_host && f.usable > 0))
        });
    let regions: Vec<RegionEval> = index
        .regions
        .iter()
        .zip(&facts)
        .map(|(r, f)| {
            coarse::evaluate(&r.id, index.price_ms(&game.id, &r.id), f, game, request, &limits, pin_lifted)
        })
        .collect();

    let best = |ok: &dyn Fn(&RegionFacts) -> bool| -> Option<usize> {
        (0..regions.len()).filter(|&i| regions[i].verdict.is_ok() && ok(&facts[i])).min_by(|&a, &b| {
            regions[b].score.total_cmp(&regions[a].score).then(index.regions[a].id.cmp(&index.regions[b].id))
        })
    };

    let chosen;
    let ranked;
    let outcome;
    let mut retry = None;
    if now_remaining_ms == 0 {
        (chosen, ranked) = (None, Vec::new());
        outcome = Outcome::NoCapacity { code: ReasonCode::DeadlinePassed };
    } else if let Some(i) = best(&|f| f.warm > 0) {
        let racks = rack_refs(index, &evals, i);
        ranked = fine::rank(&racks, game, player_region, Stock::Warm);
        chosen = Some(i);
        outcome = Outcome::Place {
            region: index.regions[i].id.clone(),
            racks: ranked.iter().map(|&(k, _)| racks[k].0.id.clone()).collect(),
        };
    } else if let Some(i) = best(&|f| f.can_start || f.can_free) {
        let racks = rack_refs(index, &evals, i);
        let start = facts[i].can_start;
        ranked = fine::rank(&racks, game, player_region, if start { Stock::Spare } else { Stock::Active });
        chosen = Some(i);
        retry = relax::next_relax_at(level, request.deadline_ms);
        outcome = Outcome::Queue {
            region: Some(index.regions[i].id.clone()),
            rack: ranked.first().map(|&(k, _)| racks[k].0.id.clone()),
            start_instance: start,
        };
    } else if anything {
        (chosen, ranked) = (None, Vec::new());
        retry = relax::next_relax_at(level, request.deadline_ms);
        outcome = Outcome::Queue { region: None, rack: None, start_instance: false };
    } else {
        (chosen, ranked) = (None, Vec::new());
        outcome = Outcome::NoCapacity { code: ReasonCode::NoCapacity };
    }

    let explanation = explain::build(explain::Inputs {
        index,
        game,
        limits: &limits,
        remaining_ms: now_remaining_ms,
        deadline_ms: request.deadline_ms,
        player_region,
        evals: &evals,
        facts: &facts,
        regions: &regions,
        chosen,
        ranked: &ranked,
        outcome: &outcome,
        retry,
    });
    Decision { outcome, limits, retry_at_remaining_ms: retry, explanation }
}

fn rack_refs<'a>(
    index: &'a CapacityIndex,
    evals: &'a [Vec<RackEval>],
    i: usize,
) -> Vec<(&'a Rack, &'a RackEval)> {
    index.regions[i].racks.iter().zip(&evals[i]).collect()
}
