//! The explanation a decision records: every region and rack considered, its score, and why
//! each rejected one was rejected (a stable code plus a sentence), and the demand-learned price
//! applied to each region. Shown by `GET /v1/sessions/{id}/explain` and the console.

use serde::{Deserialize, Serialize};

use super::Outcome;
use super::coarse::{RegionEval, RegionFacts};
use super::fine::RackEval;
use super::index::{CapacityIndex, RackState};
use super::relax::{Level, Limits};
use super::request::Game;

/// Why a region, a rack or the whole request was turned down. Stable, machine-readable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasonCode {
    /// The player's RTT to the region is above the cap in force.
    RttOverCap,
    /// The player gave RTTs but none for this region.
    RttUnmeasured,
    /// The request is pinned to another region.
    PinnedElsewhere,
    /// No usable rack in the region has a warm instance of the game.
    NoWarmCapacity,
    /// No usable rack in the region could ever serve the game (no resource match, no room).
    CannotHost,
    /// Another region scored higher.
    RegionNotChosen,
    /// The rack is unreachable.
    RackUnreachable,
    /// The rack's boards lack the game's architecture or GPU kind.
    ResourceMismatch,
    /// The rack's uplink to the player's region is too slow or too lossy.
    UplinkPoor,
    /// The rack has no warm instance of the game.
    NoWarmInstance,
    /// The rack has neither a warm instance, nor room to start one, nor a session to free.
    NoRoom,
    /// The deadline has passed.
    DeadlinePassed,
    /// No rack anywhere could serve the game before the deadline.
    NoCapacity,
}

/// A rejection: a code and a sentence a person can act on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rejection {
    /// Stable code.
    pub code: ReasonCode,
    /// Human explanation.
    pub message: String,
}

impl Rejection {
    /// A rejection with a code and a message.
    pub fn new(code: ReasonCode, message: impl Into<String>) -> Rejection {
        Rejection { code, message: message.into() }
    }
}

/// A region as the coarse stage saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionCandidate {
    /// Region id.
    pub region: String,
    /// The player's measured RTT to it, if any.
    pub rtt_ms: Option<f64>,
    /// The player's measured loss to it, if any.
    pub loss: Option<f64>,
    /// Warm instances of the game on usable racks.
    pub warm: u32,
    /// True when its effective RTT (RTT + price) is within the preferred RTT (ranks first at
    /// `strict`).
    pub preferred: bool,
    /// The region's demand-learned price for the game (ms), added to the measured RTT when
    /// ranking ([`super::prices`]); 0 when none applied (ample capacity, or no measured RTT).
    #[serde(default)]
    pub price_ms: f64,
    /// Score (higher is better); `None` when rejected before scoring.
    pub score: Option<f64>,
    /// Why it was not chosen (`None` for the chosen region).
    pub rejected: Option<Rejection>,
}

/// A rack as the fine stage saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RackCandidate {
    /// Rack id.
    pub rack: String,
    /// Its region.
    pub region: String,
    /// Its state.
    pub state: RackState,
    /// Warm instances of the game.
    pub warm: u32,
    /// Score (higher is better); `None` when rejected before scoring.
    pub score: Option<f64>,
    /// Why it is not a candidate (`None` for candidates).
    pub rejected: Option<Rejection>,
}

/// The record of one decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    /// Relaxation level in force.
    pub level: Level,
    /// Time left when deciding (ms).
    pub remaining_ms: u64,
    /// The request's deadline (ms).
    pub deadline_ms: u64,
    /// The player's region (hint, else lowest RTT), used for uplink checks.
    pub player_region: Option<String>,
    /// Regions considered, best first (rejected ones after, by id).
    pub regions: Vec<RegionCandidate>,
    /// Racks considered: candidates best first, then the rejected ones.
    pub racks: Vec<RackCandidate>,
    /// One sentence on the outcome.
    pub summary: String,
}

impl Explanation {
    /// Every rejection recorded (regions then racks).
    pub fn rejections(&self) -> impl Iterator<Item = &Rejection> {
        self.regions
            .iter()
            .filter_map(|r| r.rejected.as_ref())
            .chain(self.racks.iter().filter_map(|r| r.rejected.as_ref()))
    }
}

/// Sorts candidates by score descending, ties by id; unscored (rejected) ones last, by id.
pub(crate) fn by_score<'a>(a: (Option<f64>, &'a str), b: (Option<f64>, &'a str)) -> std::cmp::Ordering {
    match (a.0, b.0) {
        (Some(x), Some(y)) => y.total_cmp(&x).then(a.1.cmp(b.1)),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.1.cmp(b.1),
    }
}

/// What [`build`] needs from a decision in progress.
pub(crate) struct Inputs<'a> {
    pub index: &'a CapacityIndex,
    pub game: &'a Game,
    pub limits: &'a Limits,
    pub remaining_ms: u64,
    pub deadline_ms: u64,
    pub player_region: Option<&'a str>,
    pub evals: &'a [Vec<RackEval>],
    pub facts: &'a [RegionFacts],
    pub regions: &'a [RegionEval],
    pub chosen: Option<usize>,
    pub ranked: &'a [(usize, f64)],
    pub outcome: &'a Outcome,
    pub retry: Option<u64>,
}

/// Builds the explanation of a decision.
pub(crate) fn build(x: Inputs<'_>) -> Explanation {
    let game = &x.game.id;
    let placing = matches!(x.outcome, Outcome::Place { .. });
    let passed = matches!(x.outcome, Outcome::NoCapacity { code: ReasonCode::DeadlinePassed });
    let chosen_score = x.chosen.map(|i| x.regions[i].score);
    let mut regions: Vec<RegionCandidate> = Vec::with_capacity(x.regions.len());
    for (i, (region, eval)) in x.index.regions.iter().zip(x.regions).enumerate() {
        let f = &x.facts[i];
        let rejected = if let Err(r) = &eval.verdict {
            Some(r.clone())
        } else if x.chosen == Some(i) {
            None
        } else if passed {
            Some(Rejection::new(ReasonCode::DeadlinePassed, "the deadline has passed"))
        } else if f.warm == 0 && (placing || !(f.can_start || f.can_free)) {
            if f.can_start || f.can_free {
                Some(Rejection::new(
                    ReasonCode::NoWarmCapacity,
                    format!("no warm instance of {game} in {}", region.id),
                ))
            } else {
                Some(Rejection::new(
                    ReasonCode::CannotHost,
                    format!(
                        "no usable rack in {} can start or free an instance of {game} in time",
                        region.id
                    ),
                ))
            }
        } else {
            let priced = if eval.price_ms > 0.0 {
                format!(" (with a price of {:.1} ms for its scarce capacity)", eval.price_ms)
            } else {
                String::new()
            };
            Some(Rejection::new(
                ReasonCode::RegionNotChosen,
                format!(
                    "scored {:.3}{priced}, below the chosen region's {:.3}",
                    eval.score,
                    chosen_score.unwrap_or(f64::NAN)
                ),
            ))
        };
        regions.push(RegionCandidate {
            region: region.id.clone(),
            rtt_ms: eval.rtt_ms,
            loss: eval.loss,
            warm: f.warm,
            preferred: eval.preferred,
            price_ms: eval.price_ms,
            score: eval.verdict.is_ok().then_some(eval.score),
            rejected,
        });
    }
    regions.sort_by(|a, b| by_score((a.score, &a.region), (b.score, &b.region)));

    let mut racks: Vec<RackCandidate> = Vec::with_capacity(x.evals.iter().map(Vec::len).sum());
    if let Some(c) = x.chosen {
        let region = &x.index.regions[c];
        for &(k, score) in x.ranked {
            let rack = &region.racks[k];
            racks.push(RackCandidate {
                rack: rack.id.clone(),
                region: region.id.clone(),
                state: rack.state,
                warm: x.evals[c][k].warm,
                score: Some(score),
                rejected: None,
            });
        }
    }
    for (i, region) in x.index.regions.iter().enumerate() {
        for (k, (rack, eval)) in region.racks.iter().zip(&x.evals[i]).enumerate() {
            if x.chosen == Some(i) && x.ranked.iter().any(|&(j, _)| j == k) {
                continue;
            }
            let rejected = match &eval.verdict {
                Err(r) => r.clone(),
                Ok(()) if passed => Rejection::new(ReasonCode::DeadlinePassed, "the deadline has passed"),
                Ok(()) if x.chosen != Some(i) => Rejection::new(
                    ReasonCode::RegionNotChosen,
                    format!("region {} was not chosen", region.id),
                ),
                Ok(()) if placing => Rejection::new(
                    ReasonCode::NoWarmInstance,
                    format!("no warm instance of {game} on {}", rack.id),
                ),
                Ok(()) => Rejection::new(
                    ReasonCode::NoRoom,
                    format!("{} can neither start nor free an instance of {game} in time", rack.id),
                ),
            };
            racks.push(RackCandidate {
                rack: rack.id.clone(),
                region: region.id.clone(),
                state: rack.state,
                warm: eval.warm,
                score: None,
                rejected: Some(rejected),
            });
        }
    }

    let summary = match x.outcome {
        Outcome::Place { region, racks } => {
            format!("place in {region}: claim from {} (then {} more)", racks[0], racks.len() - 1)
        }
        Outcome::Queue { region: Some(region), rack: Some(rack), start_instance: true } => {
            format!("queued: no acceptable warm instance; ask {rack} in {region} to start one")
        }
        Outcome::Queue { region: Some(region), rack, .. } => format!(
            "queued: no acceptable warm instance; wait for a release on {} in {region}",
            rack.as_deref().unwrap_or("?")
        ),
        Outcome::Queue { .. } => format!(
            "queued: nothing acceptable at level {:?}; constraints relax at {} ms left",
            x.limits.level,
            x.retry.map_or("-".to_string(), |r| r.to_string())
        ),
        Outcome::NoCapacity { code: ReasonCode::DeadlinePassed } => {
            "failed: the deadline has passed".to_string()
        }
        Outcome::NoCapacity { .. } => {
            format!("failed: no rack anywhere can serve {game} before the deadline")
        }
    };
    Explanation {
        level: x.limits.level,
        remaining_ms: x.remaining_ms,
        deadline_ms: x.deadline_ms,
        player_region: x.player_region.map(str::to_string),
        regions,
        racks,
        summary,
    }
}
