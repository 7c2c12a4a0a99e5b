//! Packing Android instances onto the boards of a rack: pure logic, no I/O.
//!
//! - [`classes`]: ordered `[[class]]` rules map a board's facts to a [`BoardClass`];
//!   [`allocatable`] turns facts and class into a [`BoardCapacity`] (after the host reserve).
//! - [`resources`]: capacity and usage arithmetic, the CPU model and the cpuset choice.
//! - [`placer`]: [`place`], [`place_many`] and [`place_all`] choose boards by [`Policy`] and
//!   give each instance concrete resources (cpuset, memory, GPU and encoder slots, two host
//!   ports), or say per board why not ([`NoFit`]).
//! - [`invariants`]: [`check_board`] verifies that a board's placements fit it; the controller
//!   calls it on every write.
//!
//! **CPU model.** A CPU offers 1000 millicores (less if part of the host reserve sits on it).
//! An instance of `m` millicores is pinned to `k = ceil(m / 1000)` CPUs and charges `m / k` to
//! each, the remainder one millicore each to its lowest-numbered CPUs, so the per-CPU charge
//! can be recomputed from a stored cpuset and millicores. The CPUs with the most free
//! millicores are chosen (load spread over the cores; little before big on a tie, so big cores
//! stay whole for big-pinned games). No CPU ever carries more than it offers, nor the board more
//! than its allocatable millicores.
//!
//! **Policies.** Every resource is a dimension: millicores, memory, GPU slots, encoder slots
//! (and host ports for the load). [`Policy::FillFirst`] is a best fit: the board with the least
//! room left after placing, measured in absolute terms (the most left of any resource, as a
//! fraction of the most any board of the rack has), so small and busy boards fill up first and
//! big boards stay whole for the instances that need them. [`Policy::Spread`] takes the least
//! loaded board by dominant share (the largest fraction of any resource in use). Measured on a
//! mixed 60-board rack (`bench_packing`), the absolute best fit packed more than a best fit on
//! the dominant share relative to each board, which piles flexible instances onto big boards
//! that others need. What matters more is the order: [`place_all`] places a whole target mix
//! most constrained first (fewest boards it may run on) and interleaves the rest, which closes
//! most of the gap to the optimum that placing deployment by deployment leaves. When an instance
//! of the batch fits nowhere, [`place_all`] moves up to a few instances of the same batch to
//! other boards to make room for it; and when the whole mix still does not fit, it tries a few
//! other orders and measures of fit on copies of the boards and keeps the pass that places the
//! most (the reach-ordered pass on a tie). If that still leaves instances out, [`improve`] runs
//! a bounded ruin-and-recreate search from the best pass: it lifts this batch's instances off a
//! few boards and places them again with the unplaced ones, keeping what places at least as
//! many. On the 60-board bench rack this closes most of what the passes leave (one or two
//! instances in a hundred) at the cost of about a second of CPU per unmet batch, which is why
//! the pool reconciler packs outside the write lock.

pub mod classes;
mod improve;
pub mod invariants;
pub mod placer;
pub mod resources;

use std::collections::{BTreeMap, BTreeSet};

use api::instance::InstancePorts;
use api::rack::{DeploymentSpec, Pinning};
use serde::{Deserialize, Serialize};

pub use classes::{BoardClass, ClassMatch, ClassRule, HostReserve, allocatable, classify};
pub use invariants::{Overcommit, Violation, check_board};
pub use placer::{Batch, NoFit, Policy, Reason, Rejected, place, place_all, place_many};
pub use resources::{BoardCapacity, BoardUsage, CpuShare};

/// A board as the packer sees it: what it offers, what constrains it, and what it already runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoardState {
    /// Board id.
    pub id: String,
    /// Architecture (`aarch64`, `x86_64`).
    pub arch: String,
    /// What the board offers to instances.
    pub capacity: BoardCapacity,
    /// GPU kind of the board's class, when the board has a GPU.
    pub gpu_kind: Option<String>,
    /// Labels of the board's class.
    pub labels: BTreeMap<String, String>,
    /// An operator cordoned the board: it keeps what it runs but gets nothing new.
    pub cordoned: bool,
    /// The board may receive instances (ready and reachable).
    pub schedulable: bool,
    /// Instances placed on the board.
    pub placed: Vec<Placement>,
}

impl BoardState {
    /// A schedulable, uncordoned, empty board from its facts and class.
    pub fn new(facts: &api::facts::BoardFacts, class: &BoardClass) -> BoardState {
        BoardState {
            id: facts.board_id.clone(),
            arch: facts.arch.clone(),
            capacity: allocatable(facts, class),
            gpu_kind: class.gpu_kind.clone().filter(|_| !facts.gpu_devices.is_empty()),
            labels: class.labels.clone(),
            cordoned: false,
            schedulable: true,
            placed: Vec::new(),
        }
    }
}

/// What one instance needs and where it may go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacementRequest {
    /// CPU in thousandths of a core.
    pub millicores: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// GPU slots.
    pub gpu_slots: u32,
    /// Encoder slots.
    pub encoder_slots: u32,
    /// Big cores only, or any core.
    pub pinning: Pinning,
    /// Architectures the game has an image for; a board of another architecture never fits.
    pub archs: BTreeSet<String>,
    /// GPU kind the board must have.
    pub gpu_kind: Option<String>,
    /// Labels the board must carry, all of them.
    pub labels: BTreeMap<String, String>,
    /// At most `max_per_board` instances with this key on one board.
    pub anti_affinity: Option<AntiAffinity>,
}

/// Anti-affinity: instances sharing `key` are spread, at most `max_per_board` per board.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AntiAffinity {
    /// Group key (usually the deployment id).
    pub key: String,
    /// Largest number of instances of the group on one board.
    pub max_per_board: u32,
}

impl PlacementRequest {
    /// The request for one instance of a deployment (anti-affinity keyed by the deployment id).
    pub fn for_deployment(deployment_id: &str, spec: &DeploymentSpec) -> PlacementRequest {
        PlacementRequest {
            millicores: spec.profile.millicores,
            memory_mib: spec.profile.memory_mib,
            gpu_slots: spec.profile.gpu_slots,
            encoder_slots: spec.profile.encoder_slots,
            pinning: spec.profile.pinning,
            archs: spec.images.keys().cloned().collect(),
            gpu_kind: spec.constraints.gpu_kind.clone(),
            labels: spec.constraints.labels.clone(),
            anti_affinity: spec
                .constraints
                .max_per_board
                .map(|max| AntiAffinity { key: deployment_id.to_string(), max_per_board: max }),
        }
    }
}

/// Concrete resources given to one instance on one board.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    /// Board the instance runs on.
    pub board_id: String,
    /// CPUs it is pinned to, ascending.
    pub cpus: Vec<u32>,
    /// Millicores it is charged, spread over `cpus` (see [`resources::cpu_charges`]).
    pub millicores: u32,
    /// Memory limit in MiB.
    pub memory_mib: u64,
    /// GPU slots it holds.
    pub gpu_slots: u32,
    /// Encoder slots it holds.
    pub encoder_slots: u32,
    /// Host ports for ADB and the stream.
    pub ports: InstancePorts,
    /// Anti-affinity key, if the request had one.
    pub group: Option<String>,
}

#[cfg(test)]
pub(crate) mod tests;
