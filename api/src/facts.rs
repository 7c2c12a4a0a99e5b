//! Board facts: what a board daemon detects about its board. Never typed in by hand; a fact the
//! board lacks is reported as absent (`None`, `false` or empty), never guessed.

use serde::{Deserialize, Serialize};

/// Everything the daemon knows about its board.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoardFacts {
    /// The board's id, as configured for its daemon.
    pub board_id: String,
    /// CPU architecture as the kernel names it (`aarch64`, `x86_64`).
    pub arch: String,
    /// SoC model from the device tree `compatible` (for example `rockchip,rk3588`), if present.
    pub soc_model: Option<String>,
    /// CPUs this board offers to instances and how they group into clusters.
    pub cpu: CpuTopology,
    /// Total memory in MiB.
    pub memory_mib: u64,
    /// The disk that holds Docker's data.
    pub disk: DiskFacts,
    /// GPU device nodes (`/dev/dri/*`, `/dev/mali*`).
    pub gpu_devices: Vec<String>,
    /// Hardware video encoder nodes (`/dev/mpp_service`, `/dev/video*`, ...).
    pub encoder_devices: Vec<String>,
    /// Kernel capabilities Android needs.
    pub kernel: KernelFacts,
    /// The container engine.
    pub docker: DockerFacts,
    /// Addresses of the board's network interfaces (loopback excluded).
    pub addresses: Vec<String>,
    /// Host ports this board may publish instance ports on.
    pub host_port_range: PortRange,
    /// Names of the facts replaced by configured overrides (empty on a real board).
    pub overridden: Vec<String>,
}

/// CPU topology.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuTopology {
    /// CPU numbers usable by instances, ascending.
    pub cpus: Vec<u32>,
    /// Clusters of CPUs sharing a relative capacity (big.LITTLE); one cluster when the kernel
    /// exposes no `cpu_capacity`.
    pub clusters: Vec<CpuCluster>,
}

/// A group of CPUs of the same relative capacity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuCluster {
    /// CPU numbers in this cluster, ascending.
    pub cpus: Vec<u32>,
    /// Relative capacity from `/sys/devices/system/cpu/cpuN/cpu_capacity` (1024 = biggest), if
    /// the kernel exposes it.
    pub capacity: Option<u32>,
}

/// Disk facts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskFacts {
    /// Mount point measured.
    pub mount: String,
    /// Size in MiB.
    pub total_mib: u64,
    /// Free space in MiB available to unprivileged users.
    pub available_mib: u64,
}

/// Kernel facts relevant to Android containers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelFacts {
    /// `uname -r`.
    pub release: String,
    /// Page size in bytes.
    pub page_size: u64,
    /// `binder` is listed in `/proc/filesystems` (binderfs available).
    pub binderfs: bool,
    /// Binder device nodes present in `/dev` (`binder`, `hwbinder`, `vndbinder`).
    pub binder_devices: Vec<String>,
    /// `memfd_create` works.
    pub memfd: bool,
    /// `/dev/ashmem` exists.
    pub ashmem: bool,
    /// `fs.inotify.max_user_instances`, if readable.
    pub inotify_max_user_instances: Option<u64>,
    /// `fs.inotify.max_user_watches`, if readable.
    pub inotify_max_user_watches: Option<u64>,
}

/// Container engine facts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerFacts {
    /// Whether the engine answered when the facts were taken.
    pub reachable: bool,
    /// Engine version (`docker version`), if reachable.
    pub version: Option<String>,
    /// Negotiated API version, if reachable.
    pub api_version: Option<String>,
    /// cgroup version the engine runs with (1 or 2), if reachable.
    pub cgroup_version: Option<u8>,
}

/// An inclusive range of TCP ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortRange {
    /// First port of the range.
    pub start: u16,
    /// Last port of the range (inclusive).
    pub end: u16,
}

impl PortRange {
    /// True when `port` lies in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.start..=self.end).contains(&port)
    }

    /// Number of ports in the range.
    pub fn len(&self) -> usize {
        if self.end < self.start { 0 } else { usize::from(self.end - self.start) + 1 }
    }

    /// True when the range holds no port.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Formats CPU numbers the way Docker's `cpuset_cpus` expects (`0-3,6`).
pub fn cpuset_string(cpus: &[u32]) -> String {
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        parts.push(if start == end { start.to_string() } else { format!("{start}-{end}") });
        i += 1;
    }
    parts.join(",")
}

/// Parses a kernel/Docker CPU list (`0-3,6`) into CPU numbers; `None` when malformed.
pub fn parse_cpu_list(text: &str) -> Option<Vec<u32>> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                if b < a || b - a > 4096 {
                    return None;
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.trim().parse().ok()?),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    Some(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_round_trip() {
        assert_eq!(cpuset_string(&[0, 1, 2, 3, 6]), "0-3,6");
        assert_eq!(cpuset_string(&[5]), "5");
        assert_eq!(parse_cpu_list("0-3,6"), Some(vec![0, 1, 2, 3, 6]));
        assert_eq!(parse_cpu_list("4-7\n"), Some(vec![4, 5, 6, 7]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
        let cpus = vec![0, 2, 3, 4, 9];
        assert_eq!(parse_cpu_list(&cpuset_string(&cpus)), Some(cpus));
    }

    #[test]
    fn port_range_bounds() {
        let r = PortRange { start: 10, end: 12 };
        assert!(r.contains(10) && r.contains(12) && !r.contains(13));
        assert_eq!(r.len(), 3);
        assert!(PortRange { start: 5, end: 4 }.is_empty());
    }
}
