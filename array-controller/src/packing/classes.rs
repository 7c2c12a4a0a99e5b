//! Board classes: ordered `[[class]]` rules in the controller's config map a board's facts to a
//! class (first match wins), and the class turns the facts into what instances may use.
//!
//! ```toml
//! [[class]]
//! name = "rk3588-16g"
//! match = { arch = "aarch64", soc = "rk3588", min_memory_mib = 12288 }
//! reserve = { millicores = 1000, memory_mib = 1536 }
//! gpu_kind = "mali-g610"
//! gpu_slots = 8
//! encoder_slots = 8
//! labels = { site = "edge-1" }
//! ```

use std::collections::{BTreeMap, BTreeSet};

use api::facts::{BoardFacts, CpuTopology};
use serde::{Deserialize, Serialize};

use super::resources::{BoardCapacity, CpuShare, MILLICORES_PER_CPU};

/// One `[[class]]` table: a board whose facts satisfy `matches` is of class `class`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RuleTable")]
pub struct ClassRule {
    /// Conditions on the facts (the `match` key); all must hold, none given matches every board.
    pub matches: ClassMatch,
    /// The class (the table's other keys).
    pub class: BoardClass,
}

/// Conditions on a board's facts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassMatch {
    /// Architecture exactly as the kernel names it (`aarch64`, `x86_64`).
    #[serde(default)]
    pub arch: Option<String>,
    /// Case-insensitive substring of the SoC model (`rk3588` matches `rockchip,rk3588`); a board
    /// without a SoC model does not match.
    #[serde(default)]
    pub soc: Option<String>,
    /// Least total memory, in MiB (a "16 GiB" board reports somewhat less than 16384).
    #[serde(default)]
    pub min_memory_mib: Option<u64>,
    /// Most total memory, in MiB.
    #[serde(default)]
    pub max_memory_mib: Option<u64>,
}

/// A class of boards and what it offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoardClass {
    /// Class name shown to operators (`rk3588-16g`).
    pub name: String,
    /// Kept for the host (OS, Docker, the daemon), never given to instances.
    #[serde(default)]
    pub reserve: HostReserve,
    /// GPU kind (`mali-g610`); none when the class has no GPU worth sharing.
    #[serde(default)]
    pub gpu_kind: Option<String>,
    /// Instances that may share the GPU.
    #[serde(default)]
    pub gpu_slots: u32,
    /// Instances that may share the hardware encoder.
    #[serde(default)]
    pub encoder_slots: u32,
    /// Labels placement constraints can ask for.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Instances run real Android, so the kernel must offer binder and memfd or ashmem.
    #[serde(default = "android_by_default")]
    pub android_kernel: bool,
}

fn android_by_default() -> bool {
    true
}

/// What a class keeps for the host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostReserve {
    /// Millicores kept for the host, taken from the little cores first.
    #[serde(default)]
    pub millicores: u32,
    /// Memory kept for the host, in MiB.
    #[serde(default)]
    pub memory_mib: u64,
}

/// The `[[class]]` table as written: `match` plus the class's own keys, flat.
#[derive(Deserialize)]
struct RuleTable {
    #[serde(rename = "match", default)]
    matches: ClassMatch,
    #[serde(flatten)]
    class: serde_json::Map<String, serde_json::Value>,
}

impl TryFrom<RuleTable> for ClassRule {
    type Error = String;

    fn try_from(table: RuleTable) -> Result<ClassRule, String> {
        // `flatten` straight into `BoardClass` would silently drop unknown keys; reading the class
        // from the leftovers keeps `deny_unknown_fields` working, so a typo is an error.
        let class = BoardClass::deserialize(serde_json::Value::Object(table.class))
            .map_err(|e| format!("board class: {e}"))?;
        if !api::ids::is_valid_id(&class.name) {
            return Err(format!(
                "board class name {:?} is not valid: use 1-63 characters of a-z, 0-9 and '-'",
                class.name
            ));
        }
        if let (Some(min), Some(max)) = (table.matches.min_memory_mib, table.matches.max_memory_mib)
            && min > max
        {
            return Err(format!(
                "board class {}: min_memory_mib {min} is above max_memory_mib {max}",
                class.name
            ));
        }
        Ok(ClassRule { matches: table.matches, class })
    }
}

impl ClassMatch {
    /// True when the facts satisfy every condition.
    pub fn matches(&self, facts: &BoardFacts) -> bool {
        let soc_ok = match &self.soc {
            None => true,
            Some(wanted) => facts
                .soc_model
                .as_deref()
                .is_some_and(|soc| soc.to_ascii_lowercase().contains(&wanted.to_ascii_lowercase())),
        };
        self.arch.as_deref().is_none_or(|arch| arch == facts.arch)
            && soc_ok
            && self.min_memory_mib.is_none_or(|min| facts.memory_mib >= min)
            && self.max_memory_mib.is_none_or(|max| facts.memory_mib <= max)
    }
}

/// The class of the first rule the facts match, if any.
pub fn classify<'a>(facts: &BoardFacts, rules: &'a [ClassRule]) -> Option<&'a BoardClass> {
    rules.iter().find(|rule| rule.matches.matches(facts)).map(|rule| &rule.class)
}

/// What a board of `class` with `facts` offers to instances.
///
/// Millicores are 1000 per CPU minus the reserve; memory is total minus the reserve; GPU and
/// encoder slots come from the class, but are 0 when the board reports no such device nodes.
/// The big set is the cluster(s) of the highest capacity (every CPU when the kernel exposes no
/// capacity); the little set is the rest.
///
/// The reserve comes off the little cores first, lowest-numbered first, whole CPUs before
/// partial ones: the host's own work (the daemon, Docker, interrupts, which land on CPU 0 by
/// default) runs fine on little cores, and the big cores stay whole for big-pinned games. A CPU
/// the reserve takes entirely is given to no instance.
pub fn allocatable(facts: &BoardFacts, class: &BoardClass) -> BoardCapacity {
    let big = big_cpus(&facts.cpu);
    let mut order: Vec<(u32, bool)> = facts.cpu.cpus.iter().map(|&cpu| (cpu, big.contains(&cpu))).collect();
    order.sort_unstable_by_key(|&(cpu, big)| (big, cpu));
    order.dedup();
    let mut reserve = class.reserve.millicores;
    let mut cpus = Vec::new();
    for (id, big) in order {
        let taken = reserve.min(MILLICORES_PER_CPU);
        reserve -= taken;
        if taken < MILLICORES_PER_CPU {
            cpus.push(CpuShare { id, millicores: MILLICORES_PER_CPU - taken, big });
        }
    }
    cpus.sort_unstable_by_key(|c| c.id);
    let slots = |devices: &[String], slots: u32| if devices.is_empty() { 0 } else { slots };
    BoardCapacity {
        millicores: cpus.iter().map(|c| c.millicores).sum(),
        memory_mib: facts.memory_mib.saturating_sub(class.reserve.memory_mib),
        gpu_slots: slots(&facts.gpu_devices, class.gpu_slots),
        encoder_slots: slots(&facts.encoder_devices, class.encoder_slots),
        cpus,
        ports: facts.host_port_range,
    }
}

/// CPUs of the highest-capacity cluster(s); every CPU when no capacity is known.
fn big_cpus(topology: &CpuTopology) -> BTreeSet<u32> {
    match topology.clusters.iter().filter_map(|c| c.capacity).max() {
        None => topology.cpus.iter().copied().collect(),
        Some(top) => topology
            .clusters
            .iter()
            .filter(|c| c.capacity == Some(top))
            .flat_map(|c| c.cpus.iter().copied())
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packing::tests::facts;

    fn rules(text: &str) -> Result<Vec<ClassRule>, toml::de::Error> {
        #[derive(Deserialize)]
        struct File {
            class: Vec<ClassRule>,
        }
        toml::from_str::<File>(text).map(|f| f.class)
    }

    const RULES: &str = r#"
        [[class]]
        name = "rk3588-16g"
        match = { arch = "aarch64", soc = "RK3588", min_memory_mib = 12288 }
        reserve = { millicores = 1500, memory_mib = 1536 }
        gpu_kind = "mali-g610"
        gpu_slots = 8
        encoder_slots = 6
        labels = { site = "edge" }

        [[class]]
        name = "rk3588-8g"
        match = { arch = "aarch64", soc = "rk3588" }

        [[class]]
        name = "any-arm"
        android_kernel = false
        match = { arch = "aarch64", max_memory_mib = 4096 }
    "#;

    #[test]
    fn first_matching_rule_wins() {
        let rules = rules(RULES).unwrap();
        let name = |f: &BoardFacts| classify(f, &rules).map(|c| c.name.clone());
        assert_eq!(name(&facts("aarch64", Some("rockchip,rk3588"), 16000)).as_deref(), Some("rk3588-16g"));
        assert_eq!(name(&facts("aarch64", Some("rockchip,rk3588"), 8000)).as_deref(), Some("rk3588-8g"));
        assert_eq!(name(&facts("aarch64", Some("rockchip,rk3568"), 4000)).as_deref(), Some("any-arm"));
        assert_eq!(name(&facts("aarch64", None, 8000)), None);
        assert_eq!(name(&facts("x86_64", Some("rockchip,rk3588"), 16000)), None);
        assert!(rules[0].class.android_kernel && !rules[2].class.android_kernel);
    }

    #[test]
    fn unknown_keys_and_bad_names_are_refused() {
        let typo = rules("[[class]]\nname = \"a\"\ngpu_slot = 2\n").unwrap_err().to_string();
        assert!(typo.contains("unknown field `gpu_slot`"), "{typo}");
        let in_match = rules("[[class]]\nname = \"a\"\nmatch = { socc = \"x\" }\n").unwrap_err().to_string();
        assert!(in_match.contains("unknown field `socc`"), "{in_match}");
        let name = rules("[[class]]\nname = \"Big Board\"\n").unwrap_err().to_string();
        assert!(name.contains("is not valid"), "{name}");
        let range = rules("[[class]]\nname = \"a\"\nmatch = { min_memory_mib = 9, max_memory_mib = 1 }\n");
        assert!(range.unwrap_err().to_string().contains("above max_memory_mib"));
    }

    #[test]
    fn big_set_is_the_top_cluster_and_reserve_comes_off_little_cores() {
        let rules = rules(RULES).unwrap();
        let f = facts("aarch64", Some("rockchip,rk3588"), 16000);
        let cap = allocatable(&f, &rules[0].class);
        assert_eq!(cap.big_cpus(), vec![4, 5, 6, 7]);
        // 1500 reserved: CPU 0 wholly, half of CPU 1.
        assert_eq!(cap.little_cpus(), vec![1, 2, 3]);
        assert_eq!(cap.cpus[0], CpuShare { id: 1, millicores: 500, big: false });
        assert_eq!(cap.millicores, 8000 - 1500);
        assert_eq!(cap.memory_mib, 16000 - 1536);
        assert_eq!((cap.gpu_slots, cap.encoder_slots), (8, 6));
        assert_eq!(cap.ports, f.host_port_range);
    }

    #[test]
    fn unknown_capacity_makes_every_cpu_big_and_the_reserve_comes_off_low_ids() {
        let mut f = facts("x86_64", None, 32000);
        f.cpu.clusters = vec![api::facts::CpuCluster { cpus: f.cpu.cpus.clone(), capacity: None }];
        let class = BoardClass {
            reserve: HostReserve { millicores: 2000, memory_mib: 0 },
            ..rules(RULES).unwrap()[1].class.clone()
        };
        let cap = allocatable(&f, &class);
        assert_eq!(cap.big_cpus(), vec![2, 3, 4, 5, 6, 7]);
        assert!(cap.little_cpus().is_empty());
        assert_eq!(cap.millicores, 6000);
    }

    #[test]
    fn slots_need_device_nodes_and_reserve_saturates() {
        let mut f = facts("aarch64", Some("rk3588"), 1000);
        f.gpu_devices.clear();
        let class = BoardClass {
            reserve: HostReserve { millicores: 99_000, memory_mib: 99_000 },
            ..rules(RULES).unwrap()[0].class.clone()
        };
        let cap = allocatable(&f, &class);
        assert_eq!((cap.gpu_slots, cap.encoder_slots, cap.millicores, cap.memory_mib), (0, 6, 0, 0));
        assert!(cap.cpus.is_empty());
    }
}
