//! Configuration: command-line flags, each also settable by environment variable, plus an
//! optional TOML file. Precedence: flag or environment, then file, then default. Loading has no
//! side effects; it only reads and validates.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use api::PortRange;
use api::facts::parse_cpu_list;
use clap::Parser;
use serde::Deserialize;

/// Command-line interface of `board-daemon`.
#[derive(Debug, Clone, Default, Parser)]
#[command(
    name = "board-daemon",
    version,
    about = "Runs this board's Android instances as Docker containers and reports on them.",
    long_about = "Runs this board's Android instances as Docker containers and reports on them.\n\n\
        The daemon detects the board's facts, keeps its desired state in SQLite under --data-dir, \
        reconciles Docker to it (creating, restarting and removing only containers labelled with \
        this board's id), and checks Android readiness over ADB. Give it a desired state with \
        'PUT /v1/desired' and the API token (printed at start, kept in <data-dir>/api-token), or \
        point it at an array controller with --controller-url.\n\n\
        Every flag can also be set by the environment variable shown, or in the --config file \
        (same names, with '_' for '-')."
)]
pub struct Cli {
    /// TOML file with any of the settings below (keys as in the flags, with '_' for '-').
    #[arg(long, env = "BOARD_CONFIG")]
    pub config: Option<PathBuf>,
    /// This board's id (lowercase letters, digits, '-'); defaults to the host name.
    #[arg(long, env = "BOARD_ID")]
    pub board_id: Option<String>,
    /// Directory for the database and the API token [default: /var/lib/board-daemon].
    #[arg(long, env = "BOARD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address the HTTP API listens on [default: 0.0.0.0:7100].
    #[arg(long, env = "BOARD_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Bearer token for the local API; if unset, one is generated and kept in <data-dir>/api-token.
    #[arg(long, env = "BOARD_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Docker Engine socket [default: /var/run/docker.sock].
    #[arg(long, env = "BOARD_DOCKER_SOCKET")]
    pub docker_socket: Option<String>,
    /// CPUs instances may use, as a list like "0-3,6" [default: the CPUs this process may run on].
    #[arg(long, env = "BOARD_CPUS")]
    pub cpus: Option<String>,
    /// Memory the board offers, in MiB [default: detected].
    #[arg(long, env = "BOARD_MEMORY_MIB")]
    pub memory_mib: Option<u64>,
    /// Host ports instances may publish on, as "START-END" [default: 20000-29999].
    #[arg(long, env = "BOARD_HOST_PORTS")]
    pub host_ports: Option<String>,
    /// JSON file whose fields replace detected facts (to play a board class when several daemons
    /// share one test host; never on a real board).
    #[arg(long, env = "BOARD_FACTS_OVERRIDE")]
    pub facts_override: Option<PathBuf>,
    /// Address at which this daemon reaches the instances' published ports [default: 127.0.0.1].
    #[arg(long, env = "BOARD_ADB_HOST")]
    pub adb_host: Option<String>,
    /// Seconds between full reconcile passes (Docker events trigger passes in between) [default: 5].
    #[arg(long, env = "BOARD_RESYNC_SECONDS")]
    pub resync_seconds: Option<u64>,
    /// Array controller to enrol with and take the desired state from (controller mode); without
    /// it the daemon is standalone and takes its desired state from its local API.
    #[arg(long, env = "BOARD_CONTROLLER_URL")]
    pub controller_url: Option<String>,
    /// Join token for the first enrolment (the credential it yields is kept in <data-dir>).
    #[arg(long, env = "BOARD_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
    /// Address players and the controller reach this board at [default: its first address].
    #[arg(long, env = "BOARD_ADVERTISE_ADDRESS")]
    pub advertise_address: Option<String>,
    /// Milliseconds between heartbeats to the controller [default: 1000].
    #[arg(long, env = "BOARD_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u64>,
    /// Log as JSON lines.
    #[arg(long, env = "BOARD_LOG_JSON")]
    pub log_json: bool,
}

/// The file form of the same settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    board_id: Option<String>,
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    api_token: Option<String>,
    docker_socket: Option<String>,
    cpus: Option<String>,
    memory_mib: Option<u64>,
    host_ports: Option<String>,
    facts_override: Option<PathBuf>,
    adb_host: Option<String>,
    resync_seconds: Option<u64>,
    controller_url: Option<String>,
    join_token: Option<String>,
    advertise_address: Option<String>,
    heartbeat_ms: Option<u64>,
    log_json: Option<bool>,
}

/// Validated configuration, as plain data.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub board_id: String,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub api_token: Option<String>,
    pub docker_socket: String,
    pub cpus: Option<Vec<u32>>,
    pub memory_mib: Option<u64>,
    pub host_ports: PortRange,
    pub facts_override: Option<PathBuf>,
    pub adb_host: String,
    pub resync_seconds: u64,
    pub controller_url: Option<String>,
    pub join_token: Option<String>,
    pub advertise_address: Option<String>,
    pub heartbeat_ms: u64,
    pub log_json: bool,
}

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    ReadFile { path: String, source: std::io::Error },
    #[error("config file {path} is not valid: {source}")]
    ParseFile { path: String, source: toml::de::Error },
    #[error("board id {0:?} is not valid: use 1-63 characters of a-z, 0-9 and '-'")]
    BoardId(String),
    #[error("cpus {0:?} is not a CPU list like \"0-3,6\"")]
    Cpus(String),
    #[error("host ports {0:?} must be \"START-END\" with 1024 <= START <= END <= 65535")]
    HostPorts(String),
    #[error("resync seconds must be between 1 and 3600")]
    Resync,
    #[error("memory_mib must be at least 64")]
    Memory,
    #[error("controller url {0:?} must start with http:// or https://")]
    ControllerUrl(String),
    #[error("heartbeat_ms must be between 100 and 60000")]
    Heartbeat,
}

impl Config {
    /// Merges flags/environment with the optional file and validates the result.
    pub fn load(cli: Cli) -> Result<Config, ConfigError> {
        let file = match &cli.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let board_id = cli.board_id.or(file.board_id).unwrap_or_else(default_board_id);
        if !api::ids::is_valid_id(&board_id) {
            return Err(ConfigError::BoardId(board_id));
        }
        let cpus = match cli.cpus.or(file.cpus) {
            Some(text) => {
                Some(parse_cpu_list(&text).filter(|c| !c.is_empty()).ok_or(ConfigError::Cpus(text))?)
            }
            None => None,
        };
        let host_ports =
            parse_port_range(&cli.host_ports.or(file.host_ports).unwrap_or("20000-29999".into()))?;
        let resync_seconds = cli.resync_seconds.or(file.resync_seconds).unwrap_or(5);
        if !(1..=3600).contains(&resync_seconds) {
            return Err(ConfigError::Resync);
        }
        let controller_url = cli.controller_url.or(file.controller_url).filter(|u| !u.is_empty());
        if let Some(url) = &controller_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(ConfigError::ControllerUrl(url.clone()));
        }
        let heartbeat_ms = cli.heartbeat_ms.or(file.heartbeat_ms).unwrap_or(1000);
        if !(100..=60_000).contains(&heartbeat_ms) {
            return Err(ConfigError::Heartbeat);
        }
        let memory_mib = cli.memory_mib.or(file.memory_mib);
        if memory_mib.is_some_and(|m| m < 64) {
            return Err(ConfigError::Memory);
        }
        Ok(Config {
            board_id,
            data_dir: cli.data_dir.or(file.data_dir).unwrap_or_else(|| "/var/lib/board-daemon".into()),
            listen: cli.listen.or(file.listen).unwrap_or_else(|| ([0, 0, 0, 0], 7100).into()),
            api_token: cli.api_token.or(file.api_token).filter(|t| !t.is_empty()),
            docker_socket: cli.docker_socket.or(file.docker_socket).unwrap_or("/var/run/docker.sock".into()),
            cpus,
            memory_mib,
            host_ports,
            facts_override: cli.facts_override.or(file.facts_override),
            adb_host: cli.adb_host.or(file.adb_host).unwrap_or("127.0.0.1".into()),
            resync_seconds,
            controller_url: controller_url.map(|u| u.trim_end_matches('/').to_string()),
            join_token: cli.join_token.or(file.join_token).filter(|t| !t.is_empty()),
            advertise_address: cli.advertise_address.or(file.advertise_address),
            heartbeat_ms,
            log_json: cli.log_json || file.log_json.unwrap_or(false),
        })
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::ReadFile { path: name.clone(), source })?;
    toml::from_str(&text).map_err(|source| ConfigError::ParseFile { path: name, source })
}

fn parse_port_range(text: &str) -> Result<PortRange, ConfigError> {
    let bad = || ConfigError::HostPorts(text.to_string());
    let (a, b) = text.split_once('-').ok_or_else(bad)?;
    let range =
        PortRange { start: a.trim().parse().map_err(|_| bad())?, end: b.trim().parse().map_err(|_| bad())? };
    if range.start < 1024 || range.end < range.start {
        return Err(bad());
    }
    Ok(range)
}

fn default_board_id() -> String {
    let host = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default();
    let id: String = host
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(63)
        .collect();
    let id = id.trim_matches('-').to_string();
    if id.is_empty() { "board".into() } else { id }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_defaults_fill_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("board.toml");
        std::fs::write(&file, "board_id = \"from-file\"\ncpus = \"0-1\"\nhost_ports = \"21000-21099\"\n")
            .unwrap();
        let cli = Cli { config: Some(file.clone()), board_id: Some("from-flag".into()), ..Cli::default() };
        let config = Config::load(cli).unwrap();
        assert_eq!(config.board_id, "from-flag");
        assert_eq!(config.cpus, Some(vec![0, 1]));
        assert_eq!(config.host_ports, PortRange { start: 21000, end: 21099 });
        assert_eq!(config.resync_seconds, 5);
        assert_eq!(config.docker_socket, "/var/run/docker.sock");
    }

    #[test]
    fn bad_values_are_refused_with_a_reason() {
        let load =
            |cli: Cli| Config::load(Cli { board_id: Some("b".into()), ..cli }).unwrap_err().to_string();
        assert!(load(Cli { cpus: Some("x".into()), ..Cli::default() }).contains("CPU list"));
        assert!(load(Cli { host_ports: Some("9-1".into()), ..Cli::default() }).contains("START-END"));
        assert!(Config::load(Cli { board_id: Some("Bad Id".into()), ..Cli::default() }).is_err());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("board.toml");
        std::fs::write(&file, "unknown_key = 1\n").unwrap();
        assert!(load(Cli { config: Some(file), ..Cli::default() }).contains("not valid"));
    }
}
