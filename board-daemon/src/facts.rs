//! Detecting the board's facts from the kernel, `/sys`, `/proc`, `/dev` and the Docker engine.
//! What the board lacks is reported as absent; configured overrides (for several daemons sharing
//! one test host) replace named facts and are listed in `overridden`.

use std::path::Path;

use api::{BoardFacts, CpuCluster, CpuTopology, DiskFacts, DockerFacts, KernelFacts};

use crate::config::Config;

/// Why facts could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum FactsError {
    #[error("cannot read facts override {path}: {source}")]
    ReadOverride { path: String, source: std::io::Error },
    #[error("facts override {path} is not valid: {source}")]
    ParseOverride { path: String, source: serde_json::Error },
    #[error("facts override {path} must be a JSON object of BoardFacts fields")]
    NotAnObject { path: String },
}

/// Detects the facts; `docker` and `docker_root` come from the engine when it answered.
pub fn detect(
    config: &Config,
    docker: DockerFacts,
    docker_root: Option<&str>,
) -> Result<BoardFacts, FactsError> {
    let mut overridden = Vec::new();
    let detected_cpus = usable_cpus();
    let cpus = match &config.cpus {
        Some(cpus) => {
            overridden.push("cpu".to_string());
            cpus.clone()
        }
        None => detected_cpus,
    };
    let memory_mib = match config.memory_mib {
        Some(m) => {
            overridden.push("memory_mib".to_string());
            m
        }
        None => detected_memory_mib(),
    };
    let facts = BoardFacts {
        board_id: config.board_id.clone(),
        arch: std::env::consts::ARCH.to_string(),
        soc_model: soc_model(),
        cpu: CpuTopology { clusters: clusters(&cpus), cpus },
        memory_mib,
        disk: disk(docker_root.unwrap_or("/")),
        gpu_devices: list_dev(&["dri/renderD", "dri/card", "mali", "kgsl"]),
        encoder_devices: list_dev(&["mpp_service", "rga", "video", "vpu", "hantro"]),
        kernel: kernel(),
        docker,
        addresses: addresses(),
        host_port_range: config.host_ports,
        overridden,
    };
    match &config.facts_override {
        Some(path) => apply_override(facts, path),
        None => Ok(facts),
    }
}

/// Replaces the fields named in the JSON object at `path`.
fn apply_override(facts: BoardFacts, path: &Path) -> Result<BoardFacts, FactsError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|source| FactsError::ReadOverride { path: name.clone(), source })?;
    let patch: serde_json::Value = serde_json::from_str(&text)
        .map_err(|source| FactsError::ParseOverride { path: name.clone(), source })?;
    let serde_json::Value::Object(patch) = patch else {
        return Err(FactsError::NotAnObject { path: name });
    };
    let mut value = serde_json::to_value(&facts)
        .map_err(|source| FactsError::ParseOverride { path: name.clone(), source })?;
    let mut keys = facts.overridden.clone();
    for (key, field) in patch {
        if key != "board_id" && key != "overridden" {
            value[&key] = field;
            keys.push(key);
        }
    }
    value["overridden"] = serde_json::json!(keys);
    serde_json::from_value(value).map_err(|source| FactsError::ParseOverride { path: name, source })
}

fn usable_cpus() -> Vec<u32> {
    match nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)) {
        Ok(set) => (0..nix::sched::CpuSet::count() as u32)
            .filter(|&c| set.is_set(c as usize).unwrap_or(false))
            .collect(),
        Err(_) => (0..std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as u32).collect(),
    }
}

fn read_trimmed(path: impl AsRef<Path>) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

fn clusters(cpus: &[u32]) -> Vec<CpuCluster> {
    let mut clusters: Vec<CpuCluster> = Vec::new();
    for &cpu in cpus {
        let capacity = read_trimmed(format!("/sys/devices/system/cpu/cpu{cpu}/cpu_capacity"))
            .and_then(|c| c.parse().ok());
        match clusters.iter_mut().find(|c| c.capacity == capacity) {
            Some(cluster) => cluster.cpus.push(cpu),
            None => clusters.push(CpuCluster { cpus: vec![cpu], capacity }),
        }
    }
    // Biggest cores first.
    clusters.sort_by_key(|c| std::cmp::Reverse(c.capacity));
    clusters
}

fn detected_memory_mib() -> u64 {
    match sysinfo::System::new() {
        Ok(mut system) => {
            system.refresh_memory();
            system.total_memory() / (1024 * 1024)
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot read memory size");
            0
        }
    }
}

fn soc_model() -> Option<String> {
    let raw = std::fs::read("/proc/device-tree/compatible").ok()?;
    // NUL-separated list from most to least specific; the last names the SoC.
    raw.split(|&b| b == 0).rfind(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into_owned())
}

fn disk(mount: &str) -> DiskFacts {
    match nix::sys::statvfs::statvfs(mount) {
        Ok(stat) => {
            let block = stat.fragment_size();
            DiskFacts {
                mount: mount.to_string(),
                total_mib: stat.blocks() * block / (1024 * 1024),
                available_mib: stat.blocks_available() * block / (1024 * 1024),
            }
        }
        Err(_) => DiskFacts { mount: mount.to_string(), total_mib: 0, available_mib: 0 },
    }
}

fn list_dev(prefixes: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for dir in ["/dev", "/dev/dri"] {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path().display().to_string();
            let rel = path.trim_start_matches("/dev/");
            if prefixes.iter().any(|p| rel.starts_with(p)) {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

fn kernel() -> KernelFacts {
    let release =
        nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    let page_size =
        nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().unwrap_or(4096) as u64;
    let binderfs =
        std::fs::read_to_string("/proc/filesystems").is_ok_and(|f| f.lines().any(|l| l.ends_with("binder")));
    let binder_devices = ["/dev/binder", "/dev/hwbinder", "/dev/vndbinder", "/dev/binderfs/binder"]
        .into_iter()
        .filter(|p| Path::new(p).exists())
        .map(String::from)
        .collect();
    let memfd =
        nix::sys::memfd::memfd_create(c"board-daemon-probe", nix::sys::memfd::MFdFlags::MFD_CLOEXEC).is_ok();
    KernelFacts {
        release,
        page_size,
        binderfs,
        binder_devices,
        memfd,
        ashmem: Path::new("/dev/ashmem").exists(),
        inotify_max_user_instances: read_trimmed("/proc/sys/fs/inotify/max_user_instances")
            .and_then(|v| v.parse().ok()),
        inotify_max_user_watches: read_trimmed("/proc/sys/fs/inotify/max_user_watches")
            .and_then(|v| v.parse().ok()),
    }
}

fn addresses() -> Vec<String> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else { return Vec::new() };
    let mut out: Vec<String> = addrs
        .filter_map(|ifa| {
            let addr = ifa.address?;
            let ip = if let Some(v4) = addr.as_sockaddr_in() {
                std::net::IpAddr::V4(v4.ip())
            } else {
                std::net::IpAddr::V6(addr.as_sockaddr_in6()?.ip())
            };
            (!ip.is_loopback()).then(|| ip.to_string())
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Cli;

    fn config() -> Config {
        Config::load(Cli { board_id: Some("b1".into()), ..Cli::default() }).unwrap()
    }

    fn no_docker() -> DockerFacts {
        DockerFacts { reachable: false, version: None, api_version: None, cgroup_version: None }
    }

    #[test]
    fn detects_this_machine_without_guessing() {
        let facts = detect(&config(), no_docker(), None).unwrap();
        assert_eq!(facts.arch, std::env::consts::ARCH);
        assert!(!facts.cpu.cpus.is_empty());
        assert_eq!(facts.cpu.clusters.iter().map(|c| c.cpus.len()).sum::<usize>(), facts.cpu.cpus.len());
        assert!(facts.memory_mib > 0);
        assert!(facts.kernel.page_size >= 4096);
        assert!(facts.overridden.is_empty());
        // Absent on this x86 host: a device tree and binder devices are not invented.
        if !Path::new("/proc/device-tree/compatible").exists() {
            assert_eq!(facts.soc_model, None);
        }
        assert_eq!(facts.kernel.ashmem, Path::new("/dev/ashmem").exists());
    }

    #[test]
    fn overrides_replace_named_facts_and_say_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("facts.json");
        std::fs::write(&path, r#"{"arch":"aarch64","soc_model":"rockchip,rk3588","memory_mib":16384}"#)
            .unwrap();
        let mut config = config();
        config.facts_override = Some(path);
        config.cpus = Some(vec![0]);
        let facts = detect(&config, no_docker(), None).unwrap();
        assert_eq!(facts.arch, "aarch64");
        assert_eq!(facts.soc_model.as_deref(), Some("rockchip,rk3588"));
        assert_eq!(facts.memory_mib, 16384);
        assert_eq!(facts.cpu.cpus, vec![0]);
        for key in ["cpu", "arch", "soc_model", "memory_mib"] {
            assert!(facts.overridden.contains(&key.to_string()), "{key}");
        }
    }

    #[test]
    fn a_bad_override_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("facts.json");
        std::fs::write(&path, r#"{"memory_mib":"lots"}"#).unwrap();
        let mut config = config();
        config.facts_override = Some(path);
        assert!(matches!(detect(&config, no_docker(), None), Err(FactsError::ParseOverride { .. })));
    }
}
