//! Stage 1, coarse: which region.
//!
//! Filters (per region, under the relaxation level's [`Limits`]):
//! - pinned elsewhere: rejected (a pin beats every other rule; at `any_region` it is lifted only
//!   when the pinned region cannot host the game at all);
//! - the player gave RTTs but none for this region: rejected, until `any_region`;
//! - RTT above the cap in force: rejected (a pinned region skips this check: the platform's
//!   routing knows best).
//!
//! Score (higher is better), tier first:
//!
//! `1.0 if in the first tier + 0.55 x rtt + 0.15 x loss + 0.15 x warm + 0.15 x (1 - pressure)`
//!
//! - first tier: at `strict`, an effective RTT (`rtt + price`) at or below the game's preferred
//!   RTT; with only a hint (no RTTs), the hinted region, at every level;
//! - rtt: `max_rtt / (max_rtt + rtt + price)` when measured (1 at 0 ms, 0.5 at the cap with no
//!   price); with only a hint, 1 for the hinted region and 0.5 for others; 0.5 with neither;
//!   0.25 when unmeasured;
//! - loss: `1 - loss / 0.05` clamped to 0..1 (0.8 when unknown);
//! - warm: `warm / (warm + 4)` over the region's usable racks (saturating);
//! - pressure: mean load pressure of the region's usable racks.
//!
//! `price` is the region's demand-learned price for the game ([`super::prices`]): 0 unless its
//! capacity is scarce for its recent demand, so with ample capacity the ranking is by RTT. It
//! applies only to a measured RTT. Regions are thus ranked by effective RTT, tier included:
//! a scarce region can drop out of the first tier for a player who has a good region that is
//! not scarce, which is how it is kept for the players who have none (with the tier on the
//! measured RTT alone, a player at 38 ms from a scarce region and 42 ms from a free one could
//! never be moved: in a one-off experiment on `bench_scheduler`'s worst trace, deciding with the
//! offline bound's own prices, that alone cost 1.8 points of the gap). The RTT cap uses the
//! measured RTT alone: a price never makes a region pass a cap it fails, nor fail one it passes.
//!
//! Whether a region has capacity (warm, or room on the cold path) is decided by the caller
//! from [`RegionFacts`].

use super::explain::{ReasonCode, Rejection};
use super::relax::Limits;
use super::request::{Game, Request};

/// Weight of the RTT term.
pub const W_RTT: f64 = 0.55;
/// Weight of the loss term.
pub const W_LOSS: f64 = 0.15;
/// Weight of the warm-capacity term.
pub const W_WARM: f64 = 0.15;
/// Weight of the load term.
pub const W_LOAD: f64 = 0.15;
/// Bonus of the first tier (larger than any spread of the other terms).
pub const TIER_BONUS: f64 = 1.0;

/// Aggregates of one region's racks that passed the fine filters.
#[derive(Debug, Clone, Copy, Default)]
pub struct RegionFacts {
    /// Warm instances of the game.
    pub warm: u32,
    /// Racks that passed the filters.
    pub usable: u32,
    /// Sum of their load pressures.
    pub pressure_sum: f64,
    /// Some usable rack can start a cold instance in time.
    pub can_start: bool,
    /// Some usable rack has claimed instances of the game that will come back.
    pub can_free: bool,
    /// Some rack, whatever its state, could ever host the game.
    pub could_host: bool,
}

/// The coarse verdict on one region.
#[derive(Debug, Clone)]
pub struct RegionEval {
    /// Measured RTT, if any.
    pub rtt_ms: Option<f64>,
    /// Measured loss, if any.
    pub loss: Option<f64>,
    /// In the first tier.
    pub preferred: bool,
    /// The price (ms) added to the measured RTT in the score (0 when none applied).
    pub price_ms: f64,
    /// Filter verdict (RTT, pin).
    pub verdict: Result<(), Rejection>,
    /// Score (meaningful when the verdict is `Ok`).
    pub score: f64,
}

/// Judges one region for `request` under `limits`, with the region's price for the game
/// `price_ms`. `pin_lifted` is true when the caller lifted the request's pin (see the module
/// docs).
pub fn evaluate(
    region: &str,
    price_ms: f64,
    facts: &RegionFacts,
    game: &Game,
    request: &Request,
    limits: &Limits,
    pin_lifted: bool,
) -> RegionEval {
    let player = &request.player;
    let rtt_ms = player.rtt_ms.get(region).copied();
    let loss = player.loss.get(region).copied();
    let measured = !player.rtt_ms.is_empty();
    let pinned_here = request.pinned_region.as_deref() == Some(region) && !pin_lifted;

    let price_ms = if measured && rtt_ms.is_some() { price_ms } else { 0.0 };
    let (rtt_term, preferred) = match (measured, rtt_ms, player.region.as_deref()) {
        (true, Some(rtt), _) => (
            game.max_rtt_ms / (game.max_rtt_ms + rtt.max(0.0) + price_ms),
            limits.preferred_rtt_ms.is_some_and(|p| rtt + price_ms <= p),
        ),
        (true, None, _) => (0.25, false),
        (false, _, Some(hint)) => (if hint == region { 1.0 } else { 0.5 }, hint == region),
        (false, _, None) => (0.5, false),
    };
    let loss_term = loss.map_or(0.8, |l| (1.0 - l / 0.05).clamp(0.0, 1.0));
    let warm_term = f64::from(facts.warm) / (f64::from(facts.warm) + 4.0);
    let pressure = if facts.usable == 0 { 1.0 } else { facts.pressure_sum / f64::from(facts.usable) };
    let base = W_RTT * rtt_term + W_LOSS * loss_term + W_WARM * warm_term + W_LOAD * (1.0 - pressure);
    let score = if base.is_finite() { base } else { 0.0 } + if preferred { TIER_BONUS } else { 0.0 };

    let verdict = match (&request.pinned_region, pin_lifted) {
        (Some(pin), false) if pin != region => {
            Err(Rejection::new(ReasonCode::PinnedElsewhere, format!("the request is pinned to region {pin}")))
        }
        _ if pinned_here => Ok(()),
        _ => match (measured, rtt_ms, limits.max_rtt_ms) {
            (true, None, _) if !limits.unmeasured_ok => Err(Rejection::new(
                ReasonCode::RttUnmeasured,
                format!("no RTT measured from the player to {region}"),
            )),
            (true, Some(rtt), Some(cap)) if rtt.is_nan() || rtt > cap => Err(Rejection::new(
                ReasonCode::RttOverCap,
                format!("RTT {rtt:.0} ms to {region} is above the cap of {cap:.0} ms"),
            )),
            _ => Ok(()),
        },
    };
    RegionEval { rtt_ms, loss, preferred, price_ms, verdict, score }
}
