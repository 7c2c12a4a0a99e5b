//! Preflight checks run on a board's facts at enrolment. Each failure is a sentence a person can
//! act on; a board with any failure is quarantined with all of them as its reason.

use api::BoardFacts;

use crate::config::PreflightLimits;

/// What the checks need besides the facts.
pub struct PreflightInput<'a> {
    pub facts: &'a BoardFacts,
    /// The class the facts map to, if any rule matched.
    pub class: Option<&'a str>,
    /// The class runs real Android and needs binder and memfd/ashmem from the kernel.
    pub needs_android_kernel: bool,
    /// Board clock minus controller clock, in ms.
    pub clock_skew_ms: i64,
    pub limits: &'a PreflightLimits,
}

/// Returns every failed check (empty when the board may be used).
pub fn check(input: &PreflightInput<'_>) -> Vec<String> {
    let facts = input.facts;
    let mut failures = Vec::new();
    if input.class.is_none() {
        failures.push(format!(
            "no board class matches this board (arch {}, soc {}, {} MiB): add a [[class]] rule for it to the controller config",
            facts.arch,
            facts.soc_model.as_deref().unwrap_or("unknown"),
            facts.memory_mib
        ));
    }
    if !facts.docker.reachable {
        failures.push(
            "the Docker engine did not answer on the board: start dockerd, then restart the board daemon"
                .into(),
        );
    }
    if input.needs_android_kernel {
        if !facts.kernel.binderfs && facts.kernel.binder_devices.is_empty() {
            failures.push(
                "the kernel has no binder (neither binderfs nor /dev/binder): Android cannot start; load binder_linux \
                 or use a kernel built with CONFIG_ANDROID_BINDERFS"
                    .into(),
            );
        }
        if !facts.kernel.memfd && !facts.kernel.ashmem {
            failures.push("the kernel has neither memfd nor ashmem: Android cannot share memory; use a kernel with CONFIG_MEMFD_CREATE".into());
        }
    }
    if facts.disk.available_mib < input.limits.min_disk_mib {
        failures.push(format!(
            "only {} MiB free on {} (at least {} MiB needed for images): free disk space",
            facts.disk.available_mib, facts.disk.mount, input.limits.min_disk_mib
        ));
    }
    if input.clock_skew_ms.unsigned_abs() > input.limits.max_clock_skew_ms {
        failures.push(format!(
            "the board's clock differs from the controller's by {} ms (at most {} allowed): enable NTP on the board",
            input.clock_skew_ms, input.limits.max_clock_skew_ms
        ));
    }
    if facts.cpu.cpus.is_empty() || facts.memory_mib == 0 {
        failures.push(
            "the board reports no CPUs or no memory: check the daemon's --cpus and --memory-mib".into(),
        );
    }
    failures
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use api::{CpuCluster, CpuTopology, DiskFacts, DockerFacts, KernelFacts, PortRange};

    pub fn facts() -> BoardFacts {
        BoardFacts {
            board_id: "b1".into(),
            arch: "aarch64".into(),
            soc_model: Some("rockchip,rk3588".into()),
            cpu: CpuTopology {
                cpus: vec![0, 1],
                clusters: vec![CpuCluster { cpus: vec![0, 1], capacity: None }],
            },
            memory_mib: 16384,
            disk: DiskFacts { mount: "/var/lib/docker".into(), total_mib: 100_000, available_mib: 50_000 },
            gpu_devices: vec![],
            encoder_devices: vec![],
            kernel: KernelFacts {
                release: "6.1".into(),
                page_size: 4096,
                binderfs: true,
                binder_devices: vec![],
                memfd: true,
                ashmem: false,
                inotify_max_user_instances: Some(128),
                inotify_max_user_watches: Some(8192),
            },
            docker: DockerFacts {
                reachable: true,
                version: Some("24".into()),
                api_version: None,
                cgroup_version: Some(2),
            },
            addresses: vec![],
            host_port_range: PortRange { start: 20000, end: 20099 },
            overridden: vec![],
        }
    }

    fn run(facts: &BoardFacts, skew: i64, android: bool) -> Vec<String> {
        check(&PreflightInput {
            facts,
            class: Some("rk3588-16g"),
            needs_android_kernel: android,
            clock_skew_ms: skew,
            limits: &PreflightLimits::default(),
        })
    }

    #[test]
    fn a_healthy_board_passes() {
        assert!(run(&facts(), 10, true).is_empty());
    }

    #[test]
    fn missing_binder_quarantines_android_classes_only() {
        let mut f = facts();
        f.kernel.binderfs = false;
        let failures = run(&f, 0, true);
        assert_eq!(failures.len(), 1);
        assert!(failures[0].contains("binder"));
        assert!(run(&f, 0, false).is_empty());
    }

    #[test]
    fn every_check_explains_itself() {
        let mut f = facts();
        f.docker.reachable = false;
        f.disk.available_mib = 10;
        let failures = run(&f, -60_000, true);
        assert_eq!(failures.len(), 3, "{failures:?}");
        assert!(failures.iter().any(|m| m.contains("Docker")));
        assert!(failures.iter().any(|m| m.contains("MiB free")));
        assert!(failures.iter().any(|m| m.contains("NTP")));
        let none = check(&PreflightInput {
            facts: &facts(),
            class: None,
            needs_android_kernel: false,
            clock_skew_ms: 0,
            limits: &PreflightLimits::default(),
        });
        assert!(none[0].contains("no board class"));
    }
}
