//! Configuration: flags (each also an environment variable) plus an optional TOML file that
//! also holds the board-class rules. Loading only reads and validates.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use api::broker::{MAX_RTT_MS, UplinkQuality};
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
        use their own credential.\n\n\
        Session broker: with --broker-url the controller dials out to the broker and registers \
        the rack ('POST <broker-url>/v1/racks/<rack-id>/register' with the rack credential from \
        --broker-credential or --broker-credential-file): its --region, --site-label labels, \
        --public-url and broker token (so the broker can call back), --player-host, --uplink \
        qualities and the free resources of every board. The registration is re-sent every \
        heartbeat period the broker answers with (--broker-heartbeat-ms until it has answered). \
        Without --broker-url nothing is sent and the controller runs standalone; the other \
        broker settings are then ignored."
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
    /// How long an ended claim stays readable (and its key answers with it) before it is
    /// deleted, in ms [default: 86400000, a day].
    #[arg(long, env = "CONTROLLER_CLAIM_RETENTION_MS")]
    pub claim_retention_ms: Option<u64>,
    /// Packing policy: "fill" (fewest boards) or "spread" (least loaded) [default: fill].
    #[arg(long, env = "CONTROLLER_POLICY")]
    pub policy: Option<String>,
    /// Log as JSON lines.
    #[arg(long, env = "CONTROLLER_LOG_JSON")]
    pub log_json: bool,
    /// Session broker to register the rack with (http:// or https://); without it nothing is
    /// sent and the controller runs standalone.
    #[arg(long, env = "CONTROLLER_BROKER_URL")]
    pub broker_url: Option<String>,
    /// The rack credential the broker issued ('POST /v1/racks/<id>/credential'); required with
    /// --broker-url unless --broker-credential-file is given.
    #[arg(long, env = "CONTROLLER_BROKER_CREDENTIAL", hide_env_values = true)]
    pub broker_credential: Option<String>,
    /// File holding the rack credential (surrounding whitespace is trimmed).
    #[arg(long, env = "CONTROLLER_BROKER_CREDENTIAL_FILE")]
    pub broker_credential_file: Option<PathBuf>,
    /// Region the rack belongs to (lowercase letters, digits, '-'); required with --broker-url.
    #[arg(long, env = "CONTROLLER_REGION")]
    pub region: Option<String>,
    /// Site label sent to the broker, key=value (repeatable; the env var is comma separated);
    /// added to the config file's site_labels, a flag winning on the same key.
    #[arg(
        long = "site-label",
        env = "CONTROLLER_SITE_LABELS",
        value_delimiter = ',',
        value_name = "KEY=VALUE"
    )]
    pub site_labels: Vec<String>,
    /// URL the broker reaches this controller's API at [default: http://<listen>, with 127.0.0.1
    /// for an unspecified listen address].
    #[arg(long, env = "CONTROLLER_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Address players reach the rack's boards at [default: each board's own address].
    #[arg(long, env = "CONTROLLER_PLAYER_HOST")]
    pub player_host: Option<String>,
    /// Uplink quality to a region's probes, region=rtt_ms[/loss], e.g. 'east=2' or
    /// 'west=35/0.01' (repeatable; the env var is comma separated); added to the config file's
    /// uplinks, a flag winning on the same region.
    #[arg(
        long = "uplink",
        env = "CONTROLLER_UPLINKS",
        value_delimiter = ',',
        value_name = "REGION=RTT_MS[/LOSS]"
    )]
    pub uplinks: Vec<String>,
    /// How often the registration is re-sent until the broker names its own period, in ms
    /// [default: 2000].
    #[arg(long, env = "CONTROLLER_BROKER_HEARTBEAT_MS")]
    pub broker_heartbeat_ms: Option<u64>,
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
    claim_retention_ms: Option<u64>,
    policy: Option<String>,
    log_json: Option<bool>,
    broker_url: Option<String>,
    broker_credential: Option<String>,
    broker_credential_file: Option<PathBuf>,
    region: Option<String>,
    #[serde(default)]
    site_labels: BTreeMap<String, String>,
    public_url: Option<String>,
    player_host: Option<String>,
    #[serde(default)]
    uplinks: BTreeMap<String, UplinkQuality>,
    broker_heartbeat_ms: Option<u64>,
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
    pub claim_retention: Duration,
    pub policy: Policy,
    pub log_json: bool,
    pub preflight: PreflightLimits,
    pub classes: Vec<ClassRule>,
    /// Registration with the session broker; `None` runs standalone.
    pub broker: Option<BrokerLink>,
}

/// How the controller registers with the session broker.
#[derive(Clone, PartialEq)]
pub struct BrokerLink {
    /// Broker base URL, without a trailing '/'.
    pub url: String,
    /// The rack credential presented to the broker.
    pub credential: String,
    pub region: String,
    /// Site labels.
    pub labels: BTreeMap<String, String>,
    /// Where the broker reaches this controller's API.
    pub public_url: String,
    pub player_host: Option<String>,
    /// Uplink quality to each region's probes.
    pub uplinks: BTreeMap<String, UplinkQuality>,
    /// Re-send period until the broker names its own.
    pub heartbeat: Duration,
}

// Hand-written so the credential never reaches a log line.
impl std::fmt::Debug for BrokerLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerLink")
            .field("url", &self.url)
            .field("credential", &"<redacted>")
            .field("region", &self.region)
            .field("labels", &self.labels)
            .field("public_url", &self.public_url)
            .field("player_host", &self.player_host)
            .field("uplinks", &self.uplinks)
            .field("heartbeat", &self.heartbeat)
            .finish()
    }
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
    #[error(transparent)]
    Range(#[from] service_kit::settings::OutOfRange),
    #[error("no board classes are configured: add [[class]] tables to the config file")]
    NoClasses,
    #[error("{name} {value:?} must start with http:// or https://")]
    Url { name: &'static str, value: String },
    #[error("--broker-url needs the rack credential: give --broker-credential or --broker-credential-file")]
    NoBrokerCredential,
    #[error("give either --broker-credential or --broker-credential-file, not both")]
    TwoBrokerCredentials,
    #[error("cannot read broker credential file {path}: {source}")]
    CredentialFile { path: String, source: std::io::Error },
    #[error("broker credential file {0} is empty")]
    EmptyCredential(String),
    #[error("--broker-url needs --region (the region the rack belongs to)")]
    NoRegion,
    #[error("region {0:?} is not valid: use 1-63 characters of a-z, 0-9 and '-'")]
    Region(String),
    #[error(
        "site label {0:?} is not valid: use key=value, the key 1-63 characters of a-z, 0-9 and '-', \
         the value 1-128 characters without spaces, ',' or control characters"
    )]
    SiteLabel(String),
    #[error(
        "uplink {0:?} is not valid: use region=rtt_ms[/loss] with a valid region id, \
         0 <= rtt_ms <= {MAX_RTT_MS} and 0 <= loss <= 1 (e.g. west=35/0.01)"
    )]
    Uplink(String),
    #[error("player host {0:?} is not valid: give a host name or IP address, without scheme or port")]
    PlayerHost(String),
}

impl Config {
    /// Merges flags, file and defaults, and validates.
    pub fn load(cli: Cli) -> Result<Config, ConfigError> {
        let mut file: FileConfig = match &cli.config {
            Some(path) => {
                let name = path.display().to_string();
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: name.clone(), source })?;
                toml::from_str(&text).map_err(|source| ConfigError::Parse { path: name, source })?
            }
            None => FileConfig::default(),
        };
        let listen = cli.listen.or(file.listen).unwrap_or_else(|| ([0, 0, 0, 0], 7200).into());
        let broker = broker_link(&cli, &mut file, listen)?;
        let rack_id = cli.rack_id.or(file.rack_id).unwrap_or_else(|| "rack".into());
        if !api::ids::is_valid_id(&rack_id) {
            return Err(ConfigError::RackId(rack_id));
        }
        let policy = match cli.policy.or(file.policy).as_deref().unwrap_or("fill") {
            "fill" => Policy::FillFirst,
            "spread" => Policy::Spread,
            other => return Err(ConfigError::Policy(other.to_string())),
        };
        let ms = service_kit::settings::millis;
        let classes = file.class;
        if classes.is_empty() {
            return Err(ConfigError::NoClasses);
        }
        Ok(Config {
            rack_id,
            data_dir: cli.data_dir.or(file.data_dir).unwrap_or_else(|| "/var/lib/array-controller".into()),
            listen,
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
            claim_retention: ms(
                "claim_retention_ms",
                cli.claim_retention_ms.or(file.claim_retention_ms),
                86_400_000,
                1000,
                90 * 86_400_000,
            )?,
            policy,
            log_json: cli.log_json || file.log_json.unwrap_or(false),
            preflight: file.preflight.unwrap_or_default(),
            classes,
            broker,
        })
    }
}

/// The broker settings merged from flags and file and validated; `None` without a broker URL
/// (the other broker settings are then not looked at).
fn broker_link(
    cli: &Cli,
    file: &mut FileConfig,
    listen: SocketAddr,
) -> Result<Option<BrokerLink>, ConfigError> {
    let Some(url) = cli.broker_url.clone().or(file.broker_url.take()) else {
        return Ok(None);
    };
    let url = http_url("broker url", &url)?;
    let credential = broker_credential(
        cli.broker_credential.clone().or(file.broker_credential.take()),
        cli.broker_credential_file.clone().or(file.broker_credential_file.take()),
    )?;
    let region = cli.region.clone().or(file.region.take()).ok_or(ConfigError::NoRegion)?;
    if !api::ids::is_valid_id(&region) {
        return Err(ConfigError::Region(region));
    }
    let public_url = match cli.public_url.clone().or(file.public_url.take()) {
        Some(url) => http_url("public url", &url)?,
        None => default_public_url(listen),
    };
    let player_host = cli.player_host.clone().or(file.player_host.take());
    if let Some(host) = &player_host
        && !valid_host(host)
    {
        return Err(ConfigError::PlayerHost(host.clone()));
    }
    Ok(Some(BrokerLink {
        url,
        credential,
        region,
        labels: site_labels(std::mem::take(&mut file.site_labels), &cli.site_labels)?,
        public_url,
        player_host,
        uplinks: uplinks(std::mem::take(&mut file.uplinks), &cli.uplinks)?,
        heartbeat: service_kit::settings::millis(
            "broker_heartbeat_ms",
            cli.broker_heartbeat_ms.or(file.broker_heartbeat_ms),
            2000,
            100,
            60_000,
        )?,
    }))
}

/// `url` without a trailing '/', if it is http(s).
fn http_url(name: &'static str, url: &str) -> Result<String, ConfigError> {
    let url = url.trim();
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
    match rest {
        Some(host) if !host.is_empty() && !url.chars().any(|c| c.is_whitespace()) => {
            Ok(url.trim_end_matches('/').to_string())
        }
        _ => Err(ConfigError::Url { name, value: url.to_string() }),
    }
}

/// `http://<listen>`, with the loopback address for an unspecified (wildcard) listen address.
fn default_public_url(listen: SocketAddr) -> String {
    let mut addr = listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    format!("http://{addr}")
}

/// The credential given inline or read from a file (trimmed); exactly one of them.
fn broker_credential(inline: Option<String>, file: Option<PathBuf>) -> Result<String, ConfigError> {
    match (inline.filter(|c| !c.trim().is_empty()), file) {
        (Some(_), Some(_)) => Err(ConfigError::TwoBrokerCredentials),
        (Some(credential), None) => Ok(credential.trim().to_string()),
        (None, Some(path)) => {
            let name = path.display().to_string();
            let text = std::fs::read_to_string(&path)
                .map_err(|source| ConfigError::CredentialFile { path: name.clone(), source })?;
            let credential = text.trim();
            if credential.is_empty() {
                return Err(ConfigError::EmptyCredential(name));
            }
            Ok(credential.to_string())
        }
        (None, None) => Err(ConfigError::NoBrokerCredential),
    }
}

/// A host name or IP address: no scheme, path, port or spaces.
fn valid_host(host: &str) -> bool {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    !host.is_empty()
        && host.len() <= 253
        && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

fn valid_label_value(value: &str) -> bool {
    !value.is_empty()
        && value.chars().count() <= 128
        && !value.chars().any(|c| c.is_whitespace() || c.is_control() || c == ',')
}

/// The file's labels with the flags' `key=value` entries added (a flag wins on the same key).
fn site_labels(
    mut labels: BTreeMap<String, String>,
    flags: &[String],
) -> Result<BTreeMap<String, String>, ConfigError> {
    for entry in flags {
        let (key, value) = entry.split_once('=').ok_or_else(|| ConfigError::SiteLabel(entry.clone()))?;
        labels.insert(key.trim().to_string(), value.trim().to_string());
    }
    for (key, value) in &labels {
        if !api::ids::is_valid_id(key) || !valid_label_value(value) {
            return Err(ConfigError::SiteLabel(format!("{key}={value}")));
        }
    }
    Ok(labels)
}

/// The file's uplinks with the flags' `region=rtt_ms[/loss]` entries added (a flag wins on the
/// same region).
fn uplinks(
    mut uplinks: BTreeMap<String, UplinkQuality>,
    flags: &[String],
) -> Result<BTreeMap<String, UplinkQuality>, ConfigError> {
    for entry in flags {
        let (region, quality) = parse_uplink(entry).ok_or_else(|| ConfigError::Uplink(entry.clone()))?;
        uplinks.insert(region, quality);
    }
    for (region, q) in &uplinks {
        let rtt_ok = q.rtt_ms.is_finite() && (0.0..=MAX_RTT_MS).contains(&q.rtt_ms);
        let loss_ok = q.loss.is_finite() && (0.0..=1.0).contains(&q.loss);
        if !api::ids::is_valid_id(region) || !rtt_ok || !loss_ok {
            return Err(ConfigError::Uplink(format!("{region}={}/{}", q.rtt_ms, q.loss)));
        }
    }
    Ok(uplinks)
}

/// `region=rtt_ms[/loss]`; range checks are the caller's.
fn parse_uplink(entry: &str) -> Option<(String, UplinkQuality)> {
    let (region, quality) = entry.split_once('=')?;
    let (rtt, loss) = match quality.split_once('/') {
        Some((rtt, loss)) => (rtt, loss.trim().parse().ok()?),
        None => (quality, 0.0),
    };
    Some((region.trim().to_string(), UplinkQuality { rtt_ms: rtt.trim().parse().ok()?, loss }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLASS: &str = "[[class]]\nname = \"any\"\n";

    /// Loads `cli` with a config file of [`CLASS`] followed by `toml`.
    fn load(dir: &tempfile::TempDir, toml: &str, cli: Cli) -> Result<Config, ConfigError> {
        let path = dir.path().join("c.toml");
        std::fs::write(&path, format!("{toml}\n{CLASS}")).unwrap();
        Config::load(Cli { config: Some(path), ..cli })
    }

    fn broker_cli() -> Cli {
        Cli {
            broker_url: Some("http://broker:7300/".into()),
            broker_credential: Some("rack-secret".into()),
            region: Some("east".into()),
            ..Cli::default()
        }
    }

    #[test]
    fn without_a_broker_url_the_controller_is_standalone() {
        let dir = tempfile::tempdir().unwrap();
        let config = load(&dir, "", Cli { region: Some("NOT VALID".into()), ..Cli::default() }).unwrap();
        assert!(config.broker.is_none());
        assert_eq!(config.claim_retention, Duration::from_secs(86_400), "a day by default");
        let short = Cli { claim_retention_ms: Some(10), ..Cli::default() };
        assert!(matches!(load(&dir, "", short), Err(ConfigError::Range(_))));
    }

    #[test]
    fn broker_flags_are_parsed_with_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let cli = Cli::try_parse_from([
            "array-controller",
            "--broker-url",
            "https://broker.example/",
            "--broker-credential",
            " rack-secret ",
            "--region",
            "east",
            "--site-label",
            "site=east-1",
            "--site-label",
            "row=3",
            "--uplink",
            "east=2",
            "--uplink",
            "west=35/0.01",
            "--player-host",
            "203.0.113.7",
            "--listen",
            "0.0.0.0:7201",
        ])
        .unwrap();
        let link = load(&dir, "", cli).unwrap().broker.unwrap();
        assert_eq!(link.url, "https://broker.example");
        assert_eq!(link.credential, "rack-secret");
        assert_eq!(link.region, "east");
        assert_eq!(
            link.labels,
            BTreeMap::from([("row".into(), "3".into()), ("site".into(), "east-1".into())])
        );
        assert_eq!(link.uplinks["east"], UplinkQuality { rtt_ms: 2.0, loss: 0.0 });
        assert_eq!(link.uplinks["west"], UplinkQuality { rtt_ms: 35.0, loss: 0.01 });
        assert_eq!(link.public_url, "http://127.0.0.1:7201");
        assert_eq!(link.player_host.as_deref(), Some("203.0.113.7"));
        assert_eq!(link.heartbeat, Duration::from_millis(2000));
        assert!(!format!("{link:?}").contains("rack-secret"), "the credential must not be logged");
    }

    #[test]
    fn broker_keys_come_from_the_file_and_flags_win_per_entry() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("credential");
        std::fs::write(&secret, "from-file\n").unwrap();
        let toml = format!(
            "broker_url = \"http://broker\"\nbroker_credential_file = {:?}\nregion = \"west\"\n\
             public_url = \"http://10.0.0.5:7200\"\nbroker_heartbeat_ms = 500\n\
             site_labels = {{ site = \"east-1\", row = \"1\" }}\n\
             uplinks = {{ east = {{ rtt_ms = 2.0, loss = 0.0 }}, west = {{ rtt_ms = 30 }} }}\n",
            secret.display()
        );
        let cli =
            Cli { site_labels: vec!["row=2".into()], uplinks: vec!["west=31/0.5".into()], ..Cli::default() };
        let link = load(&dir, &toml, cli).unwrap().broker.unwrap();
        assert_eq!(link.url, "http://broker");
        assert_eq!(link.credential, "from-file");
        assert_eq!(link.region, "west");
        assert_eq!(link.public_url, "http://10.0.0.5:7200");
        assert_eq!(link.heartbeat, Duration::from_millis(500));
        assert_eq!(
            link.labels,
            BTreeMap::from([("row".into(), "2".into()), ("site".into(), "east-1".into())])
        );
        assert_eq!(link.uplinks["east"], UplinkQuality { rtt_ms: 2.0, loss: 0.0 });
        assert_eq!(link.uplinks["west"], UplinkQuality { rtt_ms: 31.0, loss: 0.5 });
    }

    #[test]
    fn list_settings_are_comma_separated_in_env_vars() {
        // Setting the variables would need `std::env::set_var` (unsafe in edition 2024, and
        // unsafe code is forbidden), so check the declaration and the same delimiter on a flag.
        let cmd = <Cli as clap::CommandFactory>::command();
        let arg = cmd.get_arguments().find(|a| a.get_id() == "uplinks").unwrap();
        assert_eq!(arg.get_env().and_then(|e| e.to_str()), Some("CONTROLLER_UPLINKS"));
        assert_eq!(arg.get_value_delimiter(), Some(','));
        let arg = cmd.get_arguments().find(|a| a.get_id() == "site_labels").unwrap();
        assert_eq!(arg.get_env().and_then(|e| e.to_str()), Some("CONTROLLER_SITE_LABELS"));
        assert_eq!(arg.get_value_delimiter(), Some(','));
        let cli = Cli::try_parse_from(["array-controller", "--uplink", "east=2,west=35/0.01"]).unwrap();
        assert_eq!(cli.uplinks, ["east=2", "west=35/0.01"]);
    }

    #[test]
    fn each_bad_broker_setting_has_its_own_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, " \n").unwrap();
        // Each case with the start of the error's Debug form: the variant (and which setting).
        let cases: Vec<(Cli, &str)> = vec![
            (Cli { broker_url: Some("broker:7300".into()), ..broker_cli() }, "Url { name: \"broker url\""),
            (Cli { broker_url: Some("http://".into()), ..broker_cli() }, "Url { name: \"broker url\""),
            (Cli { broker_credential: None, ..broker_cli() }, "NoBrokerCredential"),
            (Cli { broker_credential: Some("  ".into()), ..broker_cli() }, "NoBrokerCredential"),
            (Cli { broker_credential_file: Some(empty.clone()), ..broker_cli() }, "TwoBrokerCredentials"),
            (
                Cli { broker_credential: None, broker_credential_file: Some(missing), ..broker_cli() },
                "CredentialFile",
            ),
            (
                Cli { broker_credential: None, broker_credential_file: Some(empty), ..broker_cli() },
                "EmptyCredential",
            ),
            (Cli { region: None, ..broker_cli() }, "NoRegion"),
            (Cli { region: Some("East".into()), ..broker_cli() }, "Region"),
            (Cli { site_labels: vec!["site".into()], ..broker_cli() }, "SiteLabel"),
            (Cli { site_labels: vec!["Site=x".into()], ..broker_cli() }, "SiteLabel"),
            (Cli { site_labels: vec!["site=".into()], ..broker_cli() }, "SiteLabel"),
            (Cli { site_labels: vec!["site=a b".into()], ..broker_cli() }, "SiteLabel"),
            (Cli { uplinks: vec!["east".into()], ..broker_cli() }, "Uplink"),
            (Cli { uplinks: vec!["east=fast".into()], ..broker_cli() }, "Uplink"),
            (Cli { uplinks: vec!["east=-1".into()], ..broker_cli() }, "Uplink"),
            (Cli { uplinks: vec!["east=1e9".into()], ..broker_cli() }, "Uplink"),
            (Cli { uplinks: vec!["east=2/1.5".into()], ..broker_cli() }, "Uplink"),
            (Cli { uplinks: vec!["east=2/x".into()], ..broker_cli() }, "Uplink"),
            (Cli { uplinks: vec!["East=2".into()], ..broker_cli() }, "Uplink"),
            (Cli { uplinks: vec!["east=NaN".into()], ..broker_cli() }, "Uplink"),
            (Cli { public_url: Some("10.0.0.5:7200".into()), ..broker_cli() }, "Url { name: \"public url\""),
            (Cli { player_host: Some("http://host".into()), ..broker_cli() }, "PlayerHost"),
            (Cli { player_host: Some(String::new()), ..broker_cli() }, "PlayerHost"),
            (
                Cli { broker_heartbeat_ms: Some(99), ..broker_cli() },
                "Range(OutOfRange { name: \"broker_heartbeat_ms\"",
            ),
            (
                Cli { broker_heartbeat_ms: Some(60_001), ..broker_cli() },
                "Range(OutOfRange { name: \"broker_heartbeat_ms\"",
            ),
        ];
        for (cli, expected) in cases {
            let shown = format!("{:?}", (&cli.broker_url, &cli.region, &cli.site_labels, &cli.uplinks));
            match load(&dir, "", cli) {
                Ok(_) => panic!("accepted {shown}"),
                Err(err) => {
                    assert!(
                        format!("{err:?}").starts_with(expected),
                        "{shown}: expected {expected}, got {err:?}"
                    )
                }
            }
        }
        // Range ends are accepted.
        for ms in [100, 60_000] {
            load(&dir, "", Cli { broker_heartbeat_ms: Some(ms), ..broker_cli() }).unwrap();
        }
    }

    #[test]
    fn unknown_broker_keys_in_the_file_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = load(&dir, "uplinks = { east = { rtt = 2.0 } }", Cli::default()).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
    }
}
