//! Stage 2, fine: which racks of the chosen region to claim from, in order.
//!
//! Hard filters (per rack): not `unreachable`; the game's architecture and GPU kind present;
//! uplink to the player's region within the limits of the relaxation level (unknown uplinks
//! pass). Score (higher is better):
//!
//! `0.35 x (1 - load pressure) + 0.35 x packing + 0.30 x uplink - 1.0 if degraded`
//!
//! - load pressure: 40% CPU, 40% GPU, 20% (1 - thermal headroom) ([`Load::pressure`]);
//! - packing, with `w` = the rack's warm instances over the most warm on any candidate rack of
//!   the region: fill = `1 - w` (drain the emptiest rack first, keep others whole), spread =
//!   `w`. On the cold path the same rule applies to spare slots instead of warm instances;
//! - uplink: half `1 - rtt / (1.5 x max_rtt)`, half `1 - loss / 0.05`, each clamped to 0..1;
//!   0.5 when unknown;
//! - degraded: -1.0, so every degraded rack ranks below every online one.
//!
//! [`Load::pressure`]: super::index::Load::pressure

use super::explain::{ReasonCode, Rejection};
use super::index::{Rack, RackState};
use super::relax::{CAP_FACTOR, Limits};
use super::request::{Game, Packing};

/// Weight of load headroom in a rack's score.
pub const W_LOAD: f64 = 0.35;
/// Weight of the packing preference.
pub const W_PACKING: f64 = 0.35;
/// Weight of uplink quality.
pub const W_UPLINK: f64 = 0.30;
/// Penalty of a degraded rack (larger than any spread of the other terms).
pub const DEGRADED_PENALTY: f64 = 1.0;

/// What the fine stage found out about one rack for one request.
#[derive(Debug, Clone)]
pub struct RackEval {
    /// The hard-filter verdict.
    pub verdict: Result<(), Rejection>,
    /// Warm instances of the game.
    pub warm: u32,
    /// It can start a cold instance in time (room, and boot time fits the time left).
    pub can_start: bool,
    /// It has claimed instances of the game that will come back.
    pub can_free: bool,
}

/// Applies the hard filters to `rack` for `game`, a player in `player_region`, under `limits`,
/// with `remaining_ms` left.
pub fn evaluate(
    rack: &Rack,
    game: &Game,
    player_region: Option<&str>,
    limits: &Limits,
    remaining_ms: u64,
) -> RackEval {
    let warm = rack.warm(&game.id);
    let can_start = rack.spare_slots > 0 && remaining_ms >= game.boot_ms;
    let can_free = rack.active(&game.id) > 0;
    let verdict = filter(rack, game, player_region, limits);
    RackEval { verdict, warm, can_start, can_free }
}

fn filter(rack: &Rack, game: &Game, player_region: Option<&str>, limits: &Limits) -> Result<(), Rejection> {
    if rack.state == RackState::Unreachable {
        return Err(Rejection::new(ReasonCode::RackUnreachable, format!("rack {} is unreachable", rack.id)));
    }
    if !rack.matches(game) {
        return Err(Rejection::new(
            ReasonCode::ResourceMismatch,
            format!(
                "rack {} has no board with the game's resource type (archs {:?}, gpu {:?})",
                rack.id, game.archs, game.gpu_kind
            ),
        ));
    }
    if let Some(u) = player_region.and_then(|r| rack.uplinks.get(r)) {
        let slow = limits.uplink_max_rtt_ms.is_some_and(|m| u.rtt_ms.is_nan() || u.rtt_ms > m);
        if slow || u.loss.is_nan() || u.loss > limits.uplink_max_loss {
            return Err(Rejection::new(
                ReasonCode::UplinkPoor,
                format!(
                    "rack {} uplink to {} is {:.0} ms / {:.1}% loss (limits {} / {:.1}%)",
                    rack.id,
                    player_region.unwrap_or("?"),
                    u.rtt_ms,
                    u.loss * 100.0,
                    limits.uplink_max_rtt_ms.map_or("none".to_string(), |m| format!("{m:.0} ms")),
                    limits.uplink_max_loss * 100.0
                ),
            ));
        }
    }
    Ok(())
}

/// The score of a rack that passed the filters. `stock` is its warm instances (or spare slots
/// on the cold path) and `max_stock` the most of any candidate in the region.
pub fn score(rack: &Rack, game: &Game, player_region: Option<&str>, stock: u32, max_stock: u32) -> f64 {
    let load = 1.0 - rack.load.pressure();
    let packing = if max_stock == 0 {
        0.5
    } else {
        let w = f64::from(stock) / f64::from(max_stock);
        match game.packing {
            Packing::Fill => 1.0 - w,
            Packing::Spread => w,
        }
    };
    let uplink = match player_region.and_then(|r| rack.uplinks.get(r)) {
        None => 0.5,
        Some(u) => {
            let rtt = (1.0 - u.rtt_ms / (game.max_rtt_ms * CAP_FACTOR)).clamp(0.0, 1.0);
            let loss = (1.0 - u.loss / 0.05).clamp(0.0, 1.0);
            let v = 0.5 * rtt + 0.5 * loss;
            if v.is_finite() { v } else { 0.0 }
        }
    };
    let penalty = if rack.state == RackState::Degraded { DEGRADED_PENALTY } else { 0.0 };
    W_LOAD * load + W_PACKING * packing + W_UPLINK * uplink - penalty
}

/// Which figure the fine stage ranks on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stock {
    /// Warm instances (a claim now).
    Warm,
    /// Spare slots (ask the rack to start one).
    Spare,
    /// Claimed instances (wait for one to be released).
    Active,
}

impl Stock {
    /// The figure of `rack` for `game`.
    pub fn of(self, rack: &Rack, game: &str) -> u32 {
        match self {
            Stock::Warm => rack.warm(game),
            Stock::Spare => rack.spare_slots,
            Stock::Active => rack.active(game),
        }
    }
}

/// Ranks the racks (indices into `racks`) that passed the filters and have `stock`, best first
/// (ties by id). Returns `(index, score)` pairs.
pub fn rank(
    racks: &[(&Rack, &RackEval)],
    game: &Game,
    player_region: Option<&str>,
    stock: Stock,
) -> Vec<(usize, f64)> {
    let usable = |e: &RackEval| {
        e.verdict.is_ok()
            && match stock {
                Stock::Warm => e.warm > 0,
                Stock::Spare => e.can_start,
                Stock::Active => e.can_free,
            }
    };
    let max_stock =
        racks.iter().filter(|(_, e)| usable(e)).map(|(r, _)| stock.of(r, &game.id)).max().unwrap_or(0);
    let mut out: Vec<(usize, f64)> = racks
        .iter()
        .enumerate()
        .filter(|(_, (_, e))| usable(e))
        .map(|(i, (r, _))| (i, score(r, game, player_region, stock.of(r, &game.id), max_stock)))
        .collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1).then(racks[a.0].0.id.cmp(&racks[b.0].0.id)));
    out
}
