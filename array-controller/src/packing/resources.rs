//! Capacity and usage arithmetic: what a board offers, what its placements use, and how an
//! instance's millicores are spread over the CPUs it is pinned to.

use std::collections::{BTreeMap, BTreeSet};

use api::facts::PortRange;
use api::rack::Pinning;
use serde::{Deserialize, Serialize};

use super::Placement;

/// What one CPU offers when nothing is reserved on it.
pub const MILLICORES_PER_CPU: u32 = 1000;

/// Host ports one instance publishes (ADB and stream).
pub const PORTS_PER_INSTANCE: usize = 2;

/// What a board offers to instances, after the host reserve.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoardCapacity {
    /// Millicores instances may use in total (1000 per CPU minus the host reserve).
    pub millicores: u32,
    /// Memory instances may use, in MiB.
    pub memory_mib: u64,
    /// Instances that may share the GPU at once (0: no usable GPU).
    pub gpu_slots: u32,
    /// Instances that may share the hardware encoder at once (0: no usable encoder).
    pub encoder_slots: u32,
    /// CPUs instances may be pinned to, ascending by id; a CPU wholly kept for the host is absent.
    pub cpus: Vec<CpuShare>,
    /// Host ports instance ports are published on.
    pub ports: PortRange,
}

/// One CPU as instances see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuShare {
    /// CPU number.
    pub id: u32,
    /// Millicores of this CPU left to instances (1000 unless part of the host reserve is on it).
    pub millicores: u32,
    /// Part of the big set (the highest-capacity cluster, or every CPU when capacity is unknown).
    pub big: bool,
}

impl BoardCapacity {
    /// The big CPU set, ascending.
    pub fn big_cpus(&self) -> Vec<u32> {
        self.cpus.iter().filter(|c| c.big).map(|c| c.id).collect()
    }

    /// The little CPU set (every CPU outside the big set), ascending.
    pub fn little_cpus(&self) -> Vec<u32> {
        self.cpus.iter().filter(|c| !c.big).map(|c| c.id).collect()
    }
}

/// How an instance's millicores spread over its CPUs: `(cpus, share, remainder)`. It is pinned to
/// `cpus = ceil(millicores / 1000)` CPUs (at least one); each carries `share`, and the
/// `remainder` lowest-numbered of them one millicore more.
pub fn cpu_split(millicores: u32) -> (usize, u32, u32) {
    let k = millicores.div_ceil(MILLICORES_PER_CPU).max(1);
    (k as usize, millicores / k, millicores % k)
}

/// Millicores a placement charges to each CPU of its cpuset, ascending by CPU. Derived from
/// the cpuset and millicores alone, so it can be recomputed from stored rows.
pub fn cpu_charges(cpus: &[u32], millicores: u32) -> Vec<(u32, u32)> {
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    sorted_cpu_charges(&sorted, millicores).collect()
}

/// [`cpu_charges`] of a cpuset already in ascending order, without allocating.
fn sorted_cpu_charges(sorted: &[u32], millicores: u32) -> impl Iterator<Item = (u32, u32)> + '_ {
    let n = sorted.len().max(1) as u32;
    let (share, rem) = (millicores / n, millicores % n);
    sorted.iter().enumerate().map(move |(i, &cpu)| (cpu, share + u32::from((i as u32) < rem)))
}

/// What a board's placements use. Totals saturate instead of overflowing, so nonsense input
/// shows up as an overcommit rather than a panic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BoardUsage {
    /// Millicores in use.
    pub millicores: u32,
    /// Memory in use, in MiB.
    pub memory_mib: u64,
    /// GPU slots in use.
    pub gpu_slots: u32,
    /// Encoder slots in use.
    pub encoder_slots: u32,
    /// Millicores in use per CPU.
    pub cpu_millicores: BTreeMap<u32, u32>,
    /// Host ports in use.
    pub ports: BTreeSet<u16>,
    /// Instances per anti-affinity key.
    pub groups: BTreeMap<String, u32>,
}

impl BoardUsage {
    /// The usage of a set of placements.
    pub fn of(placements: &[Placement]) -> BoardUsage {
        let mut usage = BoardUsage::default();
        for placement in placements {
            usage.add(placement);
        }
        usage
    }

    /// The totals of a set of placements (millicores, memory, GPU and encoder slots) and how
    /// many of them carry the anti-affinity key `group`, without the per-CPU, port and group
    /// maps: what the packer's first checks need, at a fraction of the cost of [`Self::of`]
    /// (no allocation), which it pays only for boards that pass them.
    pub fn totals_of(placements: &[Placement], group: Option<&str>) -> (BoardUsage, u32) {
        let mut usage = BoardUsage::default();
        let mut in_group = 0;
        for p in placements {
            usage.add_totals(p);
            in_group += u32::from(group.is_some() && p.group.as_deref() == group);
        }
        (usage, in_group)
    }

    fn add_totals(&mut self, p: &Placement) {
        self.millicores = self.millicores.saturating_add(p.millicores);
        self.memory_mib = self.memory_mib.saturating_add(p.memory_mib);
        self.gpu_slots = self.gpu_slots.saturating_add(p.gpu_slots);
        self.encoder_slots = self.encoder_slots.saturating_add(p.encoder_slots);
    }

    /// Adds one placement.
    pub fn add(&mut self, p: &Placement) {
        self.add_totals(p);
        // Stored cpusets are ascending, so the charges are usually worked out in place; an
        // unsorted one goes through `cpu_charges`, which sorts a copy.
        if p.cpus.is_sorted() {
            for (cpu, charge) in sorted_cpu_charges(&p.cpus, p.millicores) {
                self.charge(cpu, charge);
            }
        } else {
            for (cpu, charge) in cpu_charges(&p.cpus, p.millicores) {
                self.charge(cpu, charge);
            }
        }
        self.ports.insert(p.ports.adb);
        self.ports.insert(p.ports.stream);
        if let Some(key) = &p.group {
            match self.groups.get_mut(key) {
                Some(count) => *count += 1,
                None => {
                    self.groups.insert(key.clone(), 1);
                }
            }
        }
    }

    fn charge(&mut self, cpu: u32, millicores: u32) {
        let used = self.cpu_millicores.entry(cpu).or_default();
        *used = used.saturating_add(millicores);
    }

    /// Free millicores of one CPU of `capacity`.
    pub fn cpu_free(&self, cpu: &CpuShare) -> u32 {
        cpu.millicores.saturating_sub(self.cpu_millicores.get(&cpu.id).copied().unwrap_or(0))
    }

    /// The lowest `n` free ports of `range`, if there are that many.
    pub fn free_ports(&self, range: PortRange, n: usize) -> Option<Vec<u16>> {
        let free: Vec<u16> = (range.start..=range.end).filter(|p| !self.ports.contains(p)).take(n).collect();
        (free.len() == n).then_some(free)
    }

    /// Number of free ports of `range`.
    pub fn free_port_count(&self, range: PortRange) -> usize {
        range.len().saturating_sub(self.ports.iter().filter(|p| range.contains(**p)).count())
    }
}

/// Chooses the cpuset for `millicores` with `pinning`: the CPUs with the most free millicores
/// (little before big on a tie, so big cores stay free for big-pinned instances, then by id).
/// `None` when no set of CPUs can carry the split; the search is complete: when the preferred
/// set fails only because the remainder lands on a CPU that is exactly full, the canonical set
/// (remainder CPUs first) is tried.
pub fn choose_cpus(
    capacity: &BoardCapacity,
    usage: &BoardUsage,
    millicores: u32,
    pinning: Pinning,
) -> Option<Vec<u32>> {
    let (k, share, rem) = cpu_split(millicores);
    let mut candidates: Vec<(u32, bool, u32)> = capacity
        .cpus
        .iter()
        .filter(|c| pinning == Pinning::Any || c.big)
        .map(|c| (c.id, c.big, usage.cpu_free(c)))
        .filter(|&(_, _, free)| free >= share)
        .collect();
    candidates.sort_by_key(|&(id, big, free)| (std::cmp::Reverse(free), big, id));
    if candidates.len() < k {
        return None;
    }
    let fits = |set: &[(u32, bool, u32)]| {
        let mut ids: Vec<(u32, u32)> = set.iter().map(|&(id, _, free)| (id, free)).collect();
        ids.sort_unstable();
        ids.iter().enumerate().all(|(i, &(_, free))| free >= share + u32::from((i as u32) < rem))
    };
    let preferred = &candidates[..k];
    let chosen: Vec<(u32, bool, u32)> = if fits(preferred) {
        preferred.to_vec()
    } else {
        // The `rem` lowest-numbered CPUs with room for `share + 1`, then the freest CPUs above them.
        let mut rich: Vec<u32> = candidates.iter().filter(|c| c.2 > share).map(|c| c.0).collect();
        rich.sort_unstable();
        let first: Vec<u32> = rich.into_iter().take(rem as usize).collect();
        if first.len() < rem as usize {
            return None;
        }
        // `rem` is not 0 here: with no remainder the preferred set always fits.
        let top = *first.last()?;
        let rest = candidates.iter().filter(|c| c.0 > top).take(k - first.len());
        let set: Vec<_> = candidates.iter().filter(|c| first.contains(&c.0)).chain(rest).copied().collect();
        if set.len() < k || !fits(&set) {
            return None;
        }
        set
    };
    let mut cpus: Vec<u32> = chosen.into_iter().map(|c| c.0).collect();
    cpus.sort_unstable();
    Some(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capacity(cpus: &[(u32, u32, bool)]) -> BoardCapacity {
        BoardCapacity {
            millicores: cpus.iter().map(|c| c.1).sum(),
            memory_mib: 8192,
            gpu_slots: 0,
            encoder_slots: 0,
            cpus: cpus.iter().map(|&(id, millicores, big)| CpuShare { id, millicores, big }).collect(),
            ports: PortRange { start: 100, end: 103 },
        }
    }

    #[test]
    fn split_rounds_up_cpus_and_spreads_the_remainder_on_low_ids() {
        assert_eq!(cpu_split(0), (1, 0, 0));
        assert_eq!(cpu_split(500), (1, 500, 0));
        assert_eq!(cpu_split(1000), (1, 1000, 0));
        assert_eq!(cpu_split(1001), (2, 500, 1));
        assert_eq!(cpu_split(2500), (3, 833, 1));
        assert_eq!(cpu_charges(&[7, 2, 5], 2500), vec![(2, 834), (5, 833), (7, 833)]);
        assert_eq!(cpu_charges(&[3, 1], 1001).iter().map(|c| c.1).sum::<u32>(), 1001);
    }

    #[test]
    fn cpus_with_most_free_first_little_on_ties_big_only_when_pinned() {
        let cap = capacity(&[(0, 1000, false), (1, 1000, false), (4, 1000, true), (5, 1000, true)]);
        let mut usage = BoardUsage::default();
        usage.cpu_millicores.insert(0, 600);
        assert_eq!(choose_cpus(&cap, &usage, 1500, Pinning::Any), Some(vec![1, 4]));
        assert_eq!(choose_cpus(&cap, &usage, 2000, Pinning::Big), Some(vec![4, 5]));
        assert_eq!(choose_cpus(&cap, &usage, 2500, Pinning::Big), None);
        assert_eq!(choose_cpus(&cap, &usage, 400, Pinning::Any), Some(vec![1]));
    }

    #[test]
    fn remainder_on_an_exactly_full_cpu_falls_back_to_the_canonical_set() {
        // 1001 millicores: 501 on the lower CPU, 500 on the higher one. CPU 0 has exactly 500
        // free, so the preferred pair {0, 1} fails; {1, 2} works.
        let cap = capacity(&[(0, 500, false), (1, 1000, false), (2, 600, false)]);
        let usage = BoardUsage::default();
        assert_eq!(choose_cpus(&cap, &usage, 1001, Pinning::Any), Some(vec![1, 2]));
        let cap = capacity(&[(0, 500, false), (1, 500, false)]);
        assert_eq!(choose_cpus(&cap, &usage, 1001, Pinning::Any), None);
    }

    fn placed(cpus: &[u32], millicores: u32, port: u16, group: Option<&str>) -> Placement {
        Placement {
            group: group.map(str::to_string),
            ..crate::packing::tests::placement(cpus, millicores, (port, port + 1))
        }
    }

    #[test]
    fn usage_charges_every_cpuset_the_same_sorted_or_not_and_totals_match_it() {
        // An unsorted cpuset (as a hand-edited row could hold) is charged as its sorted self:
        // the remainder goes to the lowest-numbered CPUs either way.
        let unsorted = BoardUsage::of(&[placed(&[7, 2, 5], 2500, 100, None)]);
        let sorted = BoardUsage::of(&[placed(&[2, 5, 7], 2500, 100, None)]);
        assert_eq!(unsorted, sorted);
        assert_eq!(sorted.cpu_millicores, BTreeMap::from([(2, 834), (5, 833), (7, 833)]));

        let all = [
            placed(&[0, 1], 1001, 100, Some("g")),
            placed(&[1], 600, 102, Some("h")),
            placed(&[2, 3], 1500, 104, Some("g")),
        ];
        let usage = BoardUsage::of(&all);
        assert_eq!(usage.cpu_millicores, BTreeMap::from([(0, 501), (1, 1100), (2, 750), (3, 750)]));
        assert_eq!(usage.groups, BTreeMap::from([("g".to_string(), 2), ("h".to_string(), 1)]));
        let (totals, in_g) = BoardUsage::totals_of(&all, Some("g"));
        assert_eq!(
            (totals.millicores, totals.memory_mib, totals.gpu_slots, totals.encoder_slots, in_g),
            (usage.millicores, usage.memory_mib, usage.gpu_slots, usage.encoder_slots, 2)
        );
        assert_eq!(BoardUsage::totals_of(&all, None).1, 0, "no key, no count");
        assert_eq!(BoardUsage::totals_of(&all, Some("x")).1, 0);
    }

    #[test]
    fn lowest_free_ports_are_taken() {
        let mut usage = BoardUsage::default();
        usage.ports.insert(100);
        usage.ports.insert(102);
        let range = PortRange { start: 100, end: 103 };
        assert_eq!(usage.free_ports(range, 2), Some(vec![101, 103]));
        assert_eq!(usage.free_port_count(range), 2);
        usage.ports.insert(103);
        assert_eq!(usage.free_ports(range, 2), None);
    }
}
