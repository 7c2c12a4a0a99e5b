//! Configuration: flags (each also an environment variable) plus an optional TOML file with the
//! same keys. Loading only reads and validates.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

/// Command-line interface of `session-broker`.
#[derive(Debug, Clone, Default, Parser)]
#[command(
    name = "session-broker",
    version,
    about = "The game platform's session API: places players on Android instances across racks and regions.",
    long_about = "The game platform's session API: places players on Android instances across racks and \
        regions with the two-stage fusion scheduler (region, then rack and instance), keeps their \
        leases, and spreads warm targets over racks.\n\n\
        Credentials: the operator token comes from --operator-token or is generated into \
        <data-dir>/operator-token. Tenants' API keys ('POST /v1/tenants/{id}/keys') and rack \
        credentials ('POST /v1/racks/{id}/credential') are issued through the operator API and \
        stored hashed. The API is described at GET /openapi.json."
)]
pub struct Cli {
    /// TOML file with settings (same names as the flags, '_' for '-').
    #[arg(long, env = "BROKER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory of the database and generated tokens [default: /var/lib/session-broker].
    #[arg(long, env = "BROKER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address the API listens on [default: 0.0.0.0:7100].
    #[arg(long, env = "BROKER_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Operator bearer token [default: generated into <data-dir>/operator-token].
    #[arg(long, env = "BROKER_OPERATOR_TOKEN", hide_env_values = true)]
    pub operator_token: Option<String>,
    /// How long a session keeps its instance without a platform heartbeat, in ms [default: 60000].
    #[arg(long, env = "BROKER_SESSION_LEASE_MS")]
    pub session_lease_ms: Option<u64>,
    /// Lease the broker asks of a rack for each claim and renews while the session lives, in ms:
    /// how long a rack keeps serving sessions when the broker is gone [default: 120000].
    #[arg(long, env = "BROKER_CLAIM_LEASE_MS")]
    pub claim_lease_ms: Option<u64>,
    /// Period at which controllers re-register, told to them in the answer, in ms [default: 2000].
    #[arg(long, env = "BROKER_RACK_HEARTBEAT_MS")]
    pub rack_heartbeat_ms: Option<u64>,
    /// A rack without registration or event stream this long is unreachable, in ms [default: 6000].
    #[arg(long, env = "BROKER_RACK_UNREACHABLE_AFTER_MS")]
    pub rack_unreachable_after_ms: Option<u64>,
    /// How long one claim at a rack may take before the next rack is tried, in ms [default: 2000].
    #[arg(long, env = "BROKER_CLAIM_TIMEOUT_MS")]
    pub claim_timeout_ms: Option<u64>,
    /// How long an ended, expired or failed session stays readable (and its idempotency key
    /// answers with it) before it is deleted, in ms [default: 86400000, a day].
    #[arg(long, env = "BROKER_SESSION_RETENTION_MS")]
    pub session_retention_ms: Option<u64>,
    /// Log as JSON lines.
    #[arg(long, env = "BROKER_LOG_JSON")]
    pub log_json: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    operator_token: Option<String>,
    session_lease_ms: Option<u64>,
    claim_lease_ms: Option<u64>,
    rack_heartbeat_ms: Option<u64>,
    rack_unreachable_after_ms: Option<u64>,
    claim_timeout_ms: Option<u64>,
    session_retention_ms: Option<u64>,
    log_json: Option<bool>,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub operator_token: Option<String>,
    pub session_lease: Duration,
    pub claim_lease: Duration,
    pub rack_heartbeat: Duration,
    pub rack_unreachable_after: Duration,
    pub claim_timeout: Duration,
    pub session_retention: Duration,
    pub log_json: bool,
}

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config file {path} is not valid: {source}")]
    Parse { path: String, source: toml::de::Error },
    #[error(transparent)]
    Range(#[from] service_kit::settings::OutOfRange),
    #[error("claim_lease_ms ({claim}) must be at least session_lease_ms ({session})")]
    ClaimLease { claim: u64, session: u64 },
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
        let ms = service_kit::settings::millis;

        let session_lease =
            ms("session_lease_ms", cli.session_lease_ms.or(file.session_lease_ms), 60_000, 1000, 86_400_000)?;
        let claim_lease =
            ms("claim_lease_ms", cli.claim_lease_ms.or(file.claim_lease_ms), 120_000, 1000, 86_400_000)?;
        if claim_lease < session_lease {
            return Err(ConfigError::ClaimLease {
                claim: claim_lease.as_millis() as u64,
                session: session_lease.as_millis() as u64,
            });
        }
        Ok(Config {
            data_dir: cli.data_dir.or(file.data_dir).unwrap_or_else(|| "/var/lib/session-broker".into()),
            listen: cli.listen.or(file.listen).unwrap_or_else(|| ([0, 0, 0, 0], 7100).into()),
            operator_token: cli.operator_token.or(file.operator_token).filter(|t| !t.is_empty()),
            session_lease,
            claim_lease,
            rack_heartbeat: ms(
                "rack_heartbeat_ms",
                cli.rack_heartbeat_ms.or(file.rack_heartbeat_ms),
                2000,
                100,
                60_000,
            )?,
            rack_unreachable_after: ms(
                "rack_unreachable_after_ms",
                cli.rack_unreachable_after_ms.or(file.rack_unreachable_after_ms),
                6000,
                300,
                3_600_000,
            )?,
            claim_timeout: ms(
                "claim_timeout_ms",
                cli.claim_timeout_ms.or(file.claim_timeout_ms),
                2000,
                50,
                60_000,
            )?,
            session_retention: ms(
                "session_retention_ms",
                cli.session_retention_ms.or(file.session_retention_ms),
                86_400_000,
                1000,
                90 * 86_400_000,
            )?,
            log_json: cli.log_json || file.log_json.unwrap_or(false),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(args: &[&str]) -> Result<Config, ConfigError> {
        let mut argv = vec!["session-broker"];
        argv.extend_from_slice(args);
        Config::load(Cli::try_parse_from(argv).unwrap())
    }

    #[test]
    fn defaults_and_ranges() {
        let c = load(&[]).unwrap();
        assert_eq!(c.session_lease, Duration::from_secs(60));
        assert_eq!(c.session_retention, Duration::from_secs(86_400));
        assert_eq!(c.listen.port(), 7100);
        assert!(matches!(load(&["--session-retention-ms", "10"]), Err(ConfigError::Range(_))));
        assert!(matches!(load(&["--session-lease-ms", "5"]), Err(ConfigError::Range(_))));
        assert!(matches!(
            load(&["--session-lease-ms", "200000", "--claim-lease-ms", "100000"]),
            Err(ConfigError::ClaimLease { .. })
        ));
    }

    #[test]
    fn the_file_fills_what_flags_leave() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.toml");
        std::fs::write(&path, "session_lease_ms = 4000\nlisten = \"127.0.0.1:9\"\n").unwrap();
        let c = load(&["--config", path.to_str().unwrap(), "--listen", "127.0.0.1:8"]).unwrap();
        assert_eq!(c.session_lease, Duration::from_millis(4000));
        assert_eq!(c.listen.port(), 8);
        std::fs::write(&path, "nope = 1\n").unwrap();
        assert!(matches!(load(&["--config", path.to_str().unwrap()]), Err(ConfigError::Parse { .. })));
    }
}
