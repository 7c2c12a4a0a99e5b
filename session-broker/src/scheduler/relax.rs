//! Relaxation: how far constraints are loosened, as a pure function of the time left.
//!
//! | share of the deadline left | level               | RTT rule                                    |
//! |----------------------------|---------------------|---------------------------------------------|
//! | more than 60%              | `strict`            | cap = `max_rtt_ms`; regions <= preferred rank first |
//! | 30% - 60%                  | `preferred_relaxed` | cap = `max_rtt_ms`; no preferred tier       |
//! | 10% - 30%                  | `cap_relaxed`       | cap = 1.5 x `max_rtt_ms`; uplink limits x2  |
//! | 10% or less                | `any_region`        | no cap, unmeasured regions allowed, pin lifted if the pinned region cannot host |

use serde::{Deserialize, Serialize};

use super::request::Game;

/// Above this share of the deadline left, the level is `strict`.
pub const PREFERRED_RELAX_AT: f64 = 0.6;
/// Below this share (the brief's "< 30% of the deadline"), the RTT cap is 1.5x.
pub const CAP_RELAX_AT: f64 = 0.3;
/// Below this share, any region.
pub const ANY_REGION_AT: f64 = 0.1;
/// The RTT cap multiplier at `cap_relaxed`.
pub const CAP_FACTOR: f64 = 1.5;
/// Uplink loss above this is poor (strict levels).
pub const UPLINK_MAX_LOSS: f64 = 0.02;

/// How far constraints are relaxed, loosest last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// Budget as the game states it; regions within the preferred RTT rank first.
    Strict,
    /// The preferred RTT no longer ranks regions first.
    PreferredRelaxed,
    /// The RTT cap is 1.5x the game's.
    CapRelaxed,
    /// Any region (no RTT cap).
    AnyRegion,
}

/// The constraints that apply at a level.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// The level.
    pub level: Level,
    /// Regions above this RTT are rejected (`None`: no cap).
    pub max_rtt_ms: Option<f64>,
    /// Regions at or below this RTT rank first (`None`: no tier).
    pub preferred_rtt_ms: Option<f64>,
    /// Racks whose uplink to the player's region is slower are rejected (`None`: no limit).
    pub uplink_max_rtt_ms: Option<f64>,
    /// Racks whose uplink loss is higher are rejected.
    pub uplink_max_loss: f64,
    /// Regions without a measured RTT may be used (when the player gave RTTs).
    pub unmeasured_ok: bool,
    /// A pin may be lifted when the pinned region cannot host the game.
    pub pin_soft: bool,
}

/// The level for `remaining_ms` left out of `deadline_ms`.
pub fn level(remaining_ms: u64, deadline_ms: u64) -> Level {
    let share = if deadline_ms == 0 { 0.0 } else { remaining_ms as f64 / deadline_ms as f64 };
    if share > PREFERRED_RELAX_AT {
        Level::Strict
    } else if share > CAP_RELAX_AT {
        Level::PreferredRelaxed
    } else if share > ANY_REGION_AT {
        Level::CapRelaxed
    } else {
        Level::AnyRegion
    }
}

/// The remaining time (ms) at which the level after `level` starts (`None` at the last one).
pub fn next_relax_at(level: Level, deadline_ms: u64) -> Option<u64> {
    let at = |share: f64| (deadline_ms as f64 * share).floor() as u64;
    match level {
        Level::Strict => Some(at(PREFERRED_RELAX_AT)),
        Level::PreferredRelaxed => Some(at(CAP_RELAX_AT)),
        Level::CapRelaxed => Some(at(ANY_REGION_AT)),
        Level::AnyRegion => None,
    }
}

impl Limits {
    /// The constraints for `game` at `level`.
    pub fn for_level(game: &Game, level: Level) -> Limits {
        let cap = game.max_rtt_ms;
        match level {
            Level::Strict => Limits {
                level,
                max_rtt_ms: Some(cap),
                preferred_rtt_ms: Some(game.preferred_rtt_ms),
                uplink_max_rtt_ms: Some(cap),
                uplink_max_loss: UPLINK_MAX_LOSS,
                unmeasured_ok: false,
                pin_soft: false,
            },
            Level::PreferredRelaxed => {
                Limits { level, preferred_rtt_ms: None, ..Limits::for_level(game, Level::Strict) }
            }
            Level::CapRelaxed => Limits {
                level,
                max_rtt_ms: Some(cap * CAP_FACTOR),
                preferred_rtt_ms: None,
                uplink_max_rtt_ms: Some(cap * CAP_FACTOR),
                uplink_max_loss: UPLINK_MAX_LOSS * 2.0,
                unmeasured_ok: false,
                pin_soft: false,
            },
            Level::AnyRegion => Limits {
                level,
                max_rtt_ms: None,
                preferred_rtt_ms: None,
                uplink_max_rtt_ms: None,
                uplink_max_loss: 1.0,
                unmeasured_ok: true,
                pin_soft: true,
            },
        }
    }
}
