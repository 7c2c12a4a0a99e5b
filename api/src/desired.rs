//! The desired state of a board and the checks it must pass before anything acts on it.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::SpecError;
use crate::facts::PortRange;
use crate::ids::is_valid_id;
use crate::instance::{InstanceSpec, is_valid_stream_token};

/// The versioned set of instances a board must run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredState {
    /// Version of this desired state; a board applies only newer versions.
    pub generation: u64,
    /// Instances the board must run; anything the board owns that is not here is removed.
    pub instances: Vec<InstanceSpec>,
}

/// What a board can offer, against which a desired state is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoardLimits {
    /// CPUs instances may be pinned to.
    pub cpus: Vec<u32>,
    /// Memory of the board in MiB.
    pub memory_mib: u64,
    /// Host ports instances may publish on.
    pub host_port_range: PortRange,
}

impl DesiredState {
    /// Checks every rule that needs no I/O: ids, resources within the board, no host port used
    /// twice. The first violation is returned.
    pub fn validate(&self, limits: &BoardLimits) -> Result<(), SpecError> {
        let mut ids: HashMap<&str, ()> = HashMap::new();
        let mut ports: HashMap<u16, &str> = HashMap::new();
        for spec in &self.instances {
            validate_instance(spec, limits)?;
            if ids.insert(&spec.id, ()).is_some() {
                return Err(SpecError::DuplicateInstance { id: spec.id.clone() });
            }
            for port in [spec.ports.adb, spec.ports.stream] {
                if let Some(first) = ports.insert(port, &spec.id) {
                    return Err(SpecError::PortConflict {
                        port,
                        first: first.to_string(),
                        second: spec.id.clone(),
                    });
                }
            }
        }
        Ok(())
    }
}

fn validate_instance(spec: &InstanceSpec, limits: &BoardLimits) -> Result<(), SpecError> {
    let id = || spec.id.clone();
    if !is_valid_id(&spec.id) {
        return Err(SpecError::InvalidId { id: id() });
    }
    if spec.generation == 0 {
        return Err(SpecError::ZeroGeneration { id: id() });
    }
    if spec.image.trim().is_empty() || spec.image.chars().any(char::is_whitespace) {
        return Err(SpecError::EmptyImage { id: id() });
    }
    if let Some(&cpu) = spec.cpus.iter().find(|c| !limits.cpus.contains(c)) {
        return Err(SpecError::CpusetNotOnBoard { id: id(), cpu, board_cpus: limits.cpus.clone() });
    }
    if spec.memory_mib < 16 || spec.memory_mib > limits.memory_mib {
        return Err(SpecError::MemoryOutOfRange {
            id: id(),
            memory_mib: spec.memory_mib,
            board_memory_mib: limits.memory_mib,
        });
    }
    if spec.pids_limit < 16 {
        return Err(SpecError::PidsLimitTooLow { id: id(), pids_limit: spec.pids_limit });
    }
    for port in [spec.ports.adb, spec.ports.stream] {
        if !limits.host_port_range.contains(port) {
            return Err(SpecError::PortOutOfRange {
                id: id(),
                port,
                start: limits.host_port_range.start,
                end: limits.host_port_range.end,
            });
        }
    }
    if spec.ports.adb == spec.ports.stream {
        return Err(SpecError::PortConflict { port: spec.ports.adb, first: id(), second: id() });
    }
    if let Some(name) = spec.env.keys().find(|k| !is_valid_env_name(k)) {
        return Err(SpecError::InvalidEnvName { id: id(), name: name.clone() });
    }
    if !(1..=3600).contains(&spec.boot_timeout_s) {
        return Err(SpecError::BootTimeoutOutOfRange { id: id(), value: spec.boot_timeout_s });
    }
    if let Some(path) = spec.devices.iter().find(|d| !d.starts_with("/dev/") || d.contains("..")) {
        return Err(SpecError::InvalidDevicePath { id: id(), path: path.clone() });
    }
    if let Some(launch) = &spec.readiness.launch {
        let valid = launch
            .split_once('/')
            .is_some_and(|(p, a)| !p.is_empty() && !a.is_empty() && !launch.contains(char::is_whitespace));
        if !valid {
            return Err(SpecError::InvalidLaunch { id: id(), value: launch.clone() });
        }
    }
    if spec.stream_token.as_deref().is_some_and(|t| !is_valid_stream_token(t)) {
        return Err(SpecError::InvalidStreamToken { id: id() });
    }
    Ok(())
}

fn is_valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::{InstancePorts, Readiness};

    fn limits() -> BoardLimits {
        BoardLimits {
            cpus: vec![0, 1, 2, 3],
            memory_mib: 4096,
            host_port_range: PortRange { start: 20000, end: 20099 },
        }
    }

    fn spec(id: &str, adb: u16, stream: u16) -> InstanceSpec {
        InstanceSpec {
            id: id.into(),
            image: "appliance/android-sim:latest".into(),
            generation: 1,
            cpus: vec![0],
            memory_mib: 256,
            pids_limit: 256,
            devices: vec![],
            ports: InstancePorts { adb, stream },
            env: Default::default(),
            args: vec![],
            privileged: false,
            boot_timeout_s: 60,
            readiness: Readiness::default(),
            reset_epoch: 0,
            stream_token: None,
        }
    }

    fn state(instances: Vec<InstanceSpec>) -> DesiredState {
        DesiredState { generation: 1, instances }
    }

    #[test]
    fn a_valid_state_passes() {
        assert_eq!(state(vec![spec("a", 20000, 20001), spec("b", 20002, 20003)]).validate(&limits()), Ok(()));
        let token = format!("st_{}", "0a".repeat(32));
        let with_token = InstanceSpec { stream_token: Some(token), ..spec("a", 20000, 20001) };
        assert_eq!(state(vec![with_token]).validate(&limits()), Ok(()));
    }

    #[test]
    fn the_stream_token_is_left_out_of_the_wire_form_when_absent_and_never_in_errors() {
        let json = serde_json::to_value(spec("a", 20000, 20001)).unwrap();
        assert!(json.get("stream_token").is_none(), "{json}");
        let secret = InstanceSpec { stream_token: Some("sec ret".into()), ..spec("a", 20000, 20001) };
        let err = state(vec![secret]).validate(&limits()).unwrap_err();
        assert!(!err.to_string().contains("sec ret"), "{err}");
    }

    #[test]
    fn each_rule_has_its_code() {
        let cases: Vec<(InstanceSpec, &str)> = vec![
            (spec("Bad_Id", 20000, 20001), "invalid_id"),
            (InstanceSpec { image: " ".into(), ..spec("a", 20000, 20001) }, "invalid_image"),
            (InstanceSpec { cpus: vec![9], ..spec("a", 20000, 20001) }, "cpuset_not_on_board"),
            (InstanceSpec { memory_mib: 8192, ..spec("a", 20000, 20001) }, "memory_out_of_range"),
            (InstanceSpec { pids_limit: 0, ..spec("a", 20000, 20001) }, "pids_limit_too_low"),
            (spec("a", 80, 20001), "port_out_of_range"),
            (spec("a", 20000, 20000), "port_conflict"),
            (InstanceSpec { boot_timeout_s: 0, ..spec("a", 20000, 20001) }, "boot_timeout_out_of_range"),
            (
                InstanceSpec { devices: vec!["/etc/passwd".into()], ..spec("a", 20000, 20001) },
                "invalid_device_path",
            ),
            (InstanceSpec { generation: 0, ..spec("a", 20000, 20001) }, "invalid_generation"),
            (
                InstanceSpec {
                    readiness: Readiness { launch: Some("nopkg".into()) },
                    ..spec("a", 20000, 20001)
                },
                "invalid_launch",
            ),
            // The daemon puts the token on an ADB shell line: nothing a shell would interpret.
            (
                InstanceSpec { stream_token: Some("a;reboot".into()), ..spec("a", 20000, 20001) },
                "invalid_stream_token",
            ),
            (
                InstanceSpec { stream_token: Some(String::new()), ..spec("a", 20000, 20001) },
                "invalid_stream_token",
            ),
            (
                InstanceSpec { stream_token: Some("x".repeat(92)), ..spec("a", 20000, 20001) },
                "invalid_stream_token",
            ),
        ];
        for (spec, code) in cases {
            let err = state(vec![spec]).validate(&limits()).unwrap_err();
            assert_eq!(err.code(), code, "{err}");
        }
        let mut env_spec = spec("a", 20000, 20001);
        env_spec.env.insert("1BAD".into(), "x".into());
        assert_eq!(state(vec![env_spec]).validate(&limits()).unwrap_err().code(), "invalid_env_name");
    }

    #[test]
    fn duplicates_across_instances_are_refused() {
        let dup_id = state(vec![spec("a", 20000, 20001), spec("a", 20002, 20003)]);
        assert_eq!(dup_id.validate(&limits()).unwrap_err().code(), "duplicate_instance");
        let dup_port = state(vec![spec("a", 20000, 20001), spec("b", 20001, 20003)]);
        assert_eq!(
            dup_port.validate(&limits()).unwrap_err(),
            SpecError::PortConflict { port: 20001, first: "a".into(), second: "b".into() }
        );
    }

    #[test]
    fn unknown_fields_are_refused_on_the_wire() {
        let json = r#"{"generation":1,"instances":[],"extra":true}"#;
        assert!(serde_json::from_str::<DesiredState>(json).is_err());
    }
}
