//! Configuration from `SIM_*` environment variables, read once at start-up as plain data.

use std::fmt;
use std::time::Duration;

/// Everything the simulator can be told, with the defaults of a small phone-like display.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Delay from process start until `sys.boot_completed` becomes 1 (`SIM_BOOT_SECONDS`).
    pub boot: Duration,
    /// Display width in pixels (`SIM_DISPLAY_WIDTH`).
    pub width: u32,
    /// Display height in pixels (`SIM_DISPLAY_HEIGHT`).
    pub height: u32,
    /// Display density (`SIM_DISPLAY_DPI`).
    pub dpi: u32,
    /// Frames per second of the synthetic stream (`SIM_DISPLAY_FPS`).
    pub fps: u32,
    /// Exit with code 3 after this long, to simulate a crash (`SIM_CRASH_AFTER_SECONDS`).
    pub crash_after: Option<Duration>,
    /// Accept ADB connections but never answer (`SIM_HANG_ADB=1`).
    pub hang_adb: bool,
    /// MiB of resident memory to hold for the process lifetime (`SIM_BALLAST_MIB`).
    pub ballast_mib: u64,
    /// Value of `ro.product.model` (`SIM_MODEL`).
    pub model: String,
    /// ADB listen port on 0.0.0.0; 0 picks a free one (`SIM_ADB_PORT`).
    pub adb_port: u16,
    /// Stream listen port on 0.0.0.0; 0 picks a free one (`SIM_STREAM_PORT`).
    pub stream_port: u16,
    /// Initial value of `sim.stream.token` (`SIM_STREAM_TOKEN`).
    pub stream_token: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            boot: Duration::from_secs(3),
            width: 720,
            height: 1280,
            dpi: 320,
            fps: 30,
            crash_after: None,
            hang_adb: false,
            ballast_mib: 0,
            model: "android-sim".to_string(),
            adb_port: 5555,
            stream_port: 8000,
            stream_token: None,
        }
    }
}

/// A variable that is set but cannot be used; the message says what would be accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Name of the offending variable.
    pub var: &'static str,
    /// The value as given.
    pub value: String,
    /// What a valid value looks like.
    pub expected: &'static str,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}={:?}: expected {}", self.var, self.value, self.expected)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads variables through `lookup`, so tests can inject them without touching the
    /// process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let d = Config::default();
        let get = |var: &'static str| lookup(var).map(|value| (var, value));
        Ok(Config {
            boot: get("SIM_BOOT_SECONDS").map_or(Ok(d.boot), seconds)?,
            width: get("SIM_DISPLAY_WIDTH").map_or(Ok(d.width), |v| positive(v, 16384, PIXELS))?,
            height: get("SIM_DISPLAY_HEIGHT").map_or(Ok(d.height), |v| positive(v, 16384, PIXELS))?,
            dpi: get("SIM_DISPLAY_DPI")
                .map_or(Ok(d.dpi), |v| positive(v, 2000, "a whole number of dpi between 1 and 2000"))?,
            fps: get("SIM_DISPLAY_FPS").map_or(Ok(d.fps), |v| {
                positive(v, 240, "a whole number of frames per second between 1 and 240")
            })?,
            crash_after: get("SIM_CRASH_AFTER_SECONDS").map(seconds).transpose()?,
            hang_adb: get("SIM_HANG_ADB").map_or(Ok(d.hang_adb), flag)?,
            ballast_mib: get("SIM_BALLAST_MIB").map_or(Ok(d.ballast_mib), mebibytes)?,
            model: get("SIM_MODEL").map_or(Ok(d.model), model)?,
            adb_port: get("SIM_ADB_PORT").map_or(Ok(d.adb_port), port)?,
            stream_port: get("SIM_STREAM_PORT").map_or(Ok(d.stream_port), port)?,
            stream_token: get("SIM_STREAM_TOKEN").map(token).transpose()?,
        })
    }
}

type Var = (&'static str, String);

fn error(var: &'static str, value: String, expected: &'static str) -> ConfigError {
    ConfigError { var, value, expected }
}

fn seconds((var, value): Var) -> Result<Duration, ConfigError> {
    match value.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && (0.0..=1e9).contains(&s) => Ok(Duration::from_secs_f64(s)),
        _ => Err(error(var, value, "a number of seconds >= 0, such as 3 or 1.5")),
    }
}

const PIXELS: &str = "a whole number of pixels between 1 and 16384";

fn positive((var, value): Var, max: u32, expected: &'static str) -> Result<u32, ConfigError> {
    match value.trim().parse::<u32>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(error(var, value, expected)),
    }
}

fn flag((var, value): Var) -> Result<bool, ConfigError> {
    match value.trim() {
        "0" => Ok(false),
        "1" => Ok(true),
        _ => Err(error(var, value, "0 or 1")),
    }
}

fn mebibytes((var, value): Var) -> Result<u64, ConfigError> {
    match value.trim().parse::<u64>() {
        // A ceiling keeps a typo from asking for exabytes; no board has a terabyte of RAM.
        Ok(n) if n <= 1 << 20 => Ok(n),
        _ => Err(error(var, value, "a whole number of MiB between 0 and 1048576")),
    }
}

fn model((var, value): Var) -> Result<String, ConfigError> {
    // The model is embedded in the ADB banner, where ';' separates properties.
    if value.is_empty() || value.len() > 92 || value.contains([';', '\n', '\r', '\0']) {
        Err(error(var, value, "1-92 characters without ';' or line breaks"))
    } else {
        Ok(value)
    }
}

fn port((var, value): Var) -> Result<u16, ConfigError> {
    value
        .trim()
        .parse::<u16>()
        .map_err(|_| error(var, value, "a TCP port between 0 and 65535 (0 picks a free one)"))
}

fn token((var, value): Var) -> Result<String, ConfigError> {
    // The token travels in a single space-separated line.
    if value.contains(char::is_whitespace) {
        Err(error(var, value, "a token without whitespace"))
    } else {
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_when_nothing_is_set() {
        assert_eq!(parse(&[]).unwrap(), Config::default());
    }

    #[test]
    fn reads_every_variable() {
        let c = parse(&[
            ("SIM_BOOT_SECONDS", "1.5"),
            ("SIM_DISPLAY_WIDTH", "1080"),
            ("SIM_DISPLAY_HEIGHT", "1920"),
            ("SIM_DISPLAY_DPI", "480"),
            ("SIM_DISPLAY_FPS", "60"),
            ("SIM_CRASH_AFTER_SECONDS", "10"),
            ("SIM_HANG_ADB", "1"),
            ("SIM_BALLAST_MIB", "64"),
            ("SIM_MODEL", "Pixel 7"),
            ("SIM_ADB_PORT", "0"),
            ("SIM_STREAM_PORT", "9000"),
            ("SIM_STREAM_TOKEN", "secret"),
        ])
        .unwrap();
        assert_eq!(c.boot, Duration::from_millis(1500));
        assert_eq!((c.width, c.height, c.dpi, c.fps), (1080, 1920, 480, 60));
        assert_eq!(c.crash_after, Some(Duration::from_secs(10)));
        assert!(c.hang_adb);
        assert_eq!(c.ballast_mib, 64);
        assert_eq!(c.model, "Pixel 7");
        assert_eq!((c.adb_port, c.stream_port), (0, 9000));
        assert_eq!(c.stream_token.as_deref(), Some("secret"));
    }

    #[test]
    fn rejects_bad_values_naming_the_variable() {
        for (var, value) in [
            ("SIM_BOOT_SECONDS", "soon"),
            ("SIM_BOOT_SECONDS", "-1"),
            ("SIM_BOOT_SECONDS", "NaN"),
            ("SIM_DISPLAY_WIDTH", "0"),
            ("SIM_DISPLAY_FPS", "1000"),
            ("SIM_HANG_ADB", "yes"),
            ("SIM_BALLAST_MIB", "-5"),
            ("SIM_MODEL", "a;b"),
            ("SIM_MODEL", ""),
            ("SIM_ADB_PORT", "70000"),
            ("SIM_STREAM_TOKEN", "two words"),
        ] {
            let err = parse(&[(var, value)]).unwrap_err();
            assert_eq!(err.var, var);
            assert!(err.to_string().contains(var), "{err}");
        }
    }
}
