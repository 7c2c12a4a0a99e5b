//! The error body every service returns and the validation errors of this crate.

use serde::{Deserialize, Serialize};

/// JSON body of every 4xx/5xx answer: a stable machine-readable code and a message a person can
/// act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    /// Stable, snake_case error code (for example `port_conflict`).
    pub code: String,
    /// Human-readable explanation, including what to change.
    pub message: String,
}

/// Why a desired state or instance spec was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("invalid id {id:?}: use 1-63 characters of a-z, 0-9 and '-', starting with a letter or digit")]
    InvalidId { id: String },
    #[error("instance {id:?} appears more than once in the desired state")]
    DuplicateInstance { id: String },
    #[error("instance {id:?}: image must not be empty")]
    EmptyImage { id: String },
    #[error("instance {id:?}: cpu {cpu} is not one of this board's cpus {board_cpus:?}")]
    CpusetNotOnBoard { id: String, cpu: u32, board_cpus: Vec<u32> },
    #[error("instance {id:?}: memory_mib {memory_mib} must be between 16 and the board's {board_memory_mib}")]
    MemoryOutOfRange { id: String, memory_mib: u64, board_memory_mib: u64 },
    #[error("instance {id:?}: pids_limit must be at least 16, got {pids_limit}")]
    PidsLimitTooLow { id: String, pids_limit: i64 },
    #[error("instance {id:?}: host port {port} is outside this board's range {start}-{end}")]
    PortOutOfRange { id: String, port: u16, start: u16, end: u16 },
    #[error("host port {port} is asked for by both {first:?} and {second:?}")]
    PortConflict { port: u16, first: String, second: String },
    #[error(
        "instance {id:?}: environment variable name {name:?} is not valid (A-Z, a-z, 0-9, '_', not starting with a digit)"
    )]
    InvalidEnvName { id: String, name: String },
    #[error("instance {id:?}: boot_timeout_s must be between 1 and 3600, got {value}")]
    BootTimeoutOutOfRange { id: String, value: u32 },
    #[error("instance {id:?}: device path {path:?} must be an absolute path under /dev")]
    InvalidDevicePath { id: String, path: String },
    #[error("instance {id:?}: readiness.launch {value:?} must look like package/activity")]
    InvalidLaunch { id: String, value: String },
    #[error("instance {id:?}: generation must be at least 1")]
    ZeroGeneration { id: String },
    // The token itself is a secret and stays out of the message.
    #[error("instance {id:?}: stream_token must be 1-91 characters of A-Z, a-z, 0-9, '_' and '-'")]
    InvalidStreamToken { id: String },
}

impl SpecError {
    /// The stable code this error is reported under.
    pub fn code(&self) -> &'static str {
        match self {
            SpecError::InvalidId { .. } => "invalid_id",
            SpecError::DuplicateInstance { .. } => "duplicate_instance",
            SpecError::EmptyImage { .. } => "invalid_image",
            SpecError::CpusetNotOnBoard { .. } => "cpuset_not_on_board",
            SpecError::MemoryOutOfRange { .. } => "memory_out_of_range",
            SpecError::PidsLimitTooLow { .. } => "pids_limit_too_low",
            SpecError::PortOutOfRange { .. } => "port_out_of_range",
            SpecError::PortConflict { .. } => "port_conflict",
            SpecError::InvalidEnvName { .. } => "invalid_env_name",
            SpecError::BootTimeoutOutOfRange { .. } => "boot_timeout_out_of_range",
            SpecError::InvalidDevicePath { .. } => "invalid_device_path",
            SpecError::InvalidLaunch { .. } => "invalid_launch",
            SpecError::ZeroGeneration { .. } => "invalid_generation",
            SpecError::InvalidStreamToken { .. } => "invalid_stream_token",
        }
    }

    /// The error as a response body.
    pub fn to_body(&self) -> ErrorBody {
        ErrorBody { code: self.code().to_string(), message: self.to_string() }
    }
}
