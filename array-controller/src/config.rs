//! Configuration: flags (each also an environment variable) plus an optional TOML file that
//! also holds the board-class rules. Loading only reads and validates.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

use crate::packing::{ClassRule, Policy};

/// Command-line interface of `array-controller`.
#[derive(Debug, Clone, Default, Parser)]
#[command(
    name = "array-controller",
    version,
    about = "One per rack: enrols boards, packs Android instances onto them, keeps them warm and hands them out.",
    long_about = "One per rack: enrols boards, packs Android instances onto them, keeps them warm and hands \
        them out one session at a time.\n\n\
        Board classes (which facts make which class, and what each class offers) come from the \
        [[class]] tables of the --config file. Credentials: the operator token and the broker \
        token are read from the flags or generated into <data-dir>/operator-token and \
        <data-dir>/broker-token; boards enrol with join tokens ('POST /v1/join-tokens') and then \
        use their own credential."
)]
pub struct Cli {
    /// TOML file with settings (same names as the flags, '_' for '-') and [[class]] rules.
    #[arg(long, env = "CONTROLLER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Rack id (lowercase letters, digits, '-') [default: rack].
    #[arg(long, env = "CONTROLLER_RACK_ID")]
    pub rack_id: Option<String>,
    /// Directory of the database and generated tokens [default: /var/lib/array-controller].
    #[arg(long, env = "CONTROLLER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address the API listens on [default: 0.0.0.0:7200].
    #[arg(long, env = "CONTROLLER_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Operator bearer token [default: generated into <data-dir>/operator-token].
    #[arg(long, env = "CONTROLLER_OPERATOR_TOKEN", hide_env_values = true)]
    pub operator_token: Option<String>,
    /// Broker bearer token [default: generated into <data-dir>/broker-token].
    #[arg(long, env = "CONTROLLER_BROKER_TOKEN", hide_env_values = true)]
    pub broker_token: Option<String>,
    /// How often boards send heartbeats, in ms [default: 1000].
    #[arg(long, env = "CONTROLLER_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u64>,
    /// A board silent this long (ms) is unreachable [default: 10000].
    #[arg(long, env = "CONTROLLER_UNREACHABLE_AFTER_MS")]
    pub unreachable_after_ms: Option<u64>,
    /// Idle instances of a board unreachable this long (ms) are re-placed elsewhere [default: 30000].
    #[arg(long, env = "CONTROLLER_REPLACE_AFTER_MS")]
    pub replace_after_ms: Option<u64>,
    /// Lease given to a claim when the request names none, in ms [default: 60000].
    #[arg(long, env = "CONTROLLER_DEFAULT_LEASE_MS")]
    pub default_lease_ms: Option<u64>,
    /// Hours events are kept for resuming subscribers [default: 24].
    #[arg(long, env = "CONTROLLER_EVENT_RETENTION_HOURS")]
    pub event_retention_hours: Option<u64>,
    /// Packing policy: "fill" (fewest boards) or "spread" (least loaded) [default: fill].
    #[arg(long, env = "CONTROLLER_POLICY")]
    pub policy: Option<String>,
    /// Log as JSON lines.
    #[arg(long, env = "CONTROLLER_LOG_JSON")]
    pub log_json: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    rack_id: Option<String>,
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    operator_token: Option<String>,
    broker_token: Option<String>,
    heartbeat_ms: Option<u64>,
    unreachable_after_ms: Option<u64>,
    replace_after_ms: Option<u64>,
    default_lease_ms: Option<u64>,
    event_retention_hours: Option<u64>,
    policy: Option<String>,
    log_json: Option<bool>,
    #[serde(default)]
    preflight: Option<PreflightLimits>,
    #[serde(default)]
    class: Vec<ClassRule>,
}

/// Limits the preflight checks apply at enrolment.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreflightLimits {
    /// Free disk a board needs, in MiB.
    #[serde(default = "default_min_disk")]
    pub min_disk_mib: u64,
    /// Largest clock difference accepted, in ms.
    #[serde(default = "default_skew")]
    pub max_clock_skew_ms: u64,
}

fn default_min_disk() -> u64 {
    2048
}

fn default_skew() -> u64 {
    5000
}

impl Default for PreflightLimits {
    fn default() -> Self {
        PreflightLimits { min_disk_mib: default_min_disk(), max_clock_skew_ms: default_skew() }
    }
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub rack_id: String,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub operator_token: Option<String>,
    pub broker_token: Option<String>,
    pub heartbeat: Duration,
    pub unreachable_after: Duration,
    pub replace_after: Duration,
    pub default_lease: Duration,
    pub event_retention: Duration,
    pub policy: Policy,
    pub log_json: bool,
    pub preflight: PreflightLimits,
    pub classes: Vec<ClassRule>,
}

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config file {path} is not valid: {source}")]
    Parse { path: String, source: toml::de::Error },
    #[error("rack id {0:?} is not valid: use 1-63 characters of a-z, 0-9 and '-'")]
    RackId(String),
    #[error("policy {0:?} is not one of \"fill\", \"spread\"")]
    Policy(String),
    #[error("{name} must be between {min} and {max} ms")]
    Range { name: &'static str, min: u64, max: u64 },
    #[error("no board classes are configured: add [[class]] tables to the config file")]
    NoClasses,
}

impl Config {
    /// Merges flags, file and defaults, and validates.
    pub fn load(cli: Cli) -> Result<Config, ConfigError> {
        let file = match &cli.config {
            Some(path) => {
                let name = path.display().to_string();
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: name.clone(), source })?;
                toml::from_str(&text).map_err(|source| ConfigError::Parse { path: name, source })?
            }
            None => FileConfig::default(),
        };
        let rack_id = cli.rack_id.or(file.rack_id).unwrap_or_else(|| "rack".into());
        if !api::ids::is_valid_id(&rack_id) {
            return Err(ConfigError::RackId(rack_id));
        }
        let policy = match cli.policy.or(file.policy).as_deref().unwrap_or("fill") {
            "fill" => Policy::FillFirst,
            "spread" => Policy::Spread,
            other => return Err(ConfigError::Policy(other.to_string())),
        };
        let ms = |name: &'static str, value: Option<u64>, default: u64, min: u64, max: u64| {
            let v = value.unwrap_or(default);
            if (min..=max).contains(&v) {
                Ok(Duration::from_millis(v))
            } else {
                Err(ConfigError::Range { name, min, max })
            }
        };
        let classes = file.class;
        if classes.is_empty() {
            return Err(ConfigError::NoClasses);
        }
        Ok(Config {
            rack_id,
            data_dir: cli.data_dir.or(file.data_dir).unwrap_or_else(|| "/var/lib/array-controller".into()),
            listen: cli.listen.or(file.listen).unwrap_or_else(|| ([0, 0, 0, 0], 7200).into()),
            operator_token: cli.operator_token.or(file.operator_token).filter(|t| !t.is_empty()),
            broker_token: cli.broker_token.or(file.broker_token).filter(|t| !t.is_empty()),
            heartbeat: ms("heartbeat_ms", cli.heartbeat_ms.or(file.heartbeat_ms), 1000, 100, 60_000)?,
            unreachable_after: ms(
                "unreachable_after_ms",
                cli.unreachable_after_ms.or(file.unreachable_after_ms),
                10_000,
                500,
                3_600_000,
            )?,
            replace_after: ms(
                "replace_after_ms",
                cli.replace_after_ms.or(file.replace_after_ms),
                30_000,
                0,
                86_400_000,
            )?,
            default_lease: ms(
                "default_lease_ms",
                cli.default_lease_ms.or(file.default_lease_ms),
                60_000,
                1000,
                86_400_000,
            )?,
            event_retention: Duration::from_secs(
                3600 * cli
                    .event_retention_hours
                    .or(file.event_retention_hours)
                    .unwrap_or(24)
                    .clamp(1, 24 * 90),
            ),
            policy,
            log_json: cli.log_json || file.log_json.unwrap_or(false),
            preflight: file.preflight.unwrap_or_default(),
            classes,
        })
    }
}
