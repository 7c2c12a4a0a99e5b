//! The simulated device: system properties, the foreground activity, the boot clock and the
//! stream counters. Shared by the ADB shell and the stream server.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::config::Config;

/// Property holding the stream token; empty means any non-empty token is accepted.
pub const STREAM_TOKEN_PROP: &str = "sim.stream.token";

/// Properties computed on every read; `setprop` cannot change them.
const DYNAMIC_PROPS: [&str; 4] =
    ["sys.boot_completed", "dev.bootcomplete", "sim.stream.players", "sim.stream.frames_sent"];

/// Display geometry, fixed for the process lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Display {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Density in dots per inch.
    pub dpi: u32,
    /// Frames per second of the stream.
    pub fps: u32,
}

/// Why `setprop` refused a property.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOnlyProp;

/// Device state. Locks are `std` mutexes held only for a map lookup or update, never across
/// an `.await`, so one client can never stall another through this struct.
#[derive(Debug)]
pub struct State {
    /// Display geometry.
    pub display: Display,
    /// Value of `ro.product.model`, also used in the ADB banner.
    pub model: String,
    started: Instant,
    boot: Duration,
    props: Mutex<BTreeMap<String, String>>,
    foreground: Mutex<Option<String>>,
    players: AtomicU64,
    frames_sent: AtomicU64,
}

impl State {
    /// A freshly started device whose boot clock starts now.
    pub fn new(config: &Config) -> State {
        let display =
            Display { width: config.width, height: config.height, dpi: config.dpi, fps: config.fps };
        let mut props = BTreeMap::new();
        let mut set = |k: &str, v: String| props.insert(k.to_string(), v);
        set("ro.product.model", config.model.clone());
        set("ro.product.name", "android_sim".into());
        set("ro.product.device", "android_sim".into());
        set("ro.product.brand", "appliance".into());
        set("ro.product.manufacturer", "appliance".into());
        set("ro.product.cpu.abi", cpu_abi(std::env::consts::ARCH).into());
        set("ro.build.version.release", "13".into());
        set("ro.build.version.sdk", "33".into());
        set("ro.hardware", "android_sim".into());
        set("ro.sf.lcd_density", config.dpi.to_string());
        set("sim.display.width", config.width.to_string());
        set("sim.display.height", config.height.to_string());
        set("sim.display.dpi", config.dpi.to_string());
        set("sim.display.fps", config.fps.to_string());
        set("sim.boot.seconds", format_seconds(config.boot));
        if let Some(token) = &config.stream_token {
            set(STREAM_TOKEN_PROP, token.clone());
        }
        State {
            display,
            model: config.model.clone(),
            started: Instant::now(),
            boot: config.boot,
            props: Mutex::new(props),
            foreground: Mutex::new(None),
            players: AtomicU64::new(0),
            frames_sent: AtomicU64::new(0),
        }
    }

    /// Whether the simulated boot delay has elapsed.
    pub fn booted(&self) -> bool {
        self.started.elapsed() >= self.boot
    }

    /// Time left until boot completes (zero once booted).
    pub fn until_booted(&self) -> Duration {
        self.boot.saturating_sub(self.started.elapsed())
    }

    /// One property, or `None` if it is not set.
    pub fn prop(&self, key: &str) -> Option<String> {
        self.dynamic_prop(key).or_else(|| lock(&self.props).get(key).cloned())
    }

    /// All properties, sorted by key as `getprop` prints them.
    pub fn props(&self) -> BTreeMap<String, String> {
        let mut all = lock(&self.props).clone();
        for key in DYNAMIC_PROPS {
            if let Some(value) = self.dynamic_prop(key) {
                all.insert(key.to_string(), value);
            }
        }
        all
    }

    /// Sets a property; `ro.*` properties that already exist and computed ones are refused,
    /// as Android's property service does.
    pub fn set_prop(&self, key: &str, value: &str) -> Result<(), ReadOnlyProp> {
        if DYNAMIC_PROPS.contains(&key) {
            return Err(ReadOnlyProp);
        }
        let mut props = lock(&self.props);
        if key.starts_with("ro.") && props.contains_key(key) {
            return Err(ReadOnlyProp);
        }
        props.insert(key.to_string(), value.to_string());
        Ok(())
    }

    /// The resumed activity as `PKG/ACTIVITY`, if any.
    pub fn foreground(&self) -> Option<String> {
        lock(&self.foreground).clone()
    }

    /// Makes `component` (`PKG/ACTIVITY`) the resumed activity.
    pub fn start_activity(&self, component: &str) {
        *lock(&self.foreground) = Some(component.to_string());
    }

    /// Stops `package`: if it owns the foreground activity, nothing is resumed any more.
    pub fn stop_package(&self, package: &str) {
        let mut fg = lock(&self.foreground);
        if fg.as_deref().is_some_and(|c| c.split('/').next() == Some(package)) {
            *fg = None;
        }
    }

    /// Counts a stream player in; the returned guard counts it out when dropped.
    pub fn player_joined(&self) -> PlayerGuard<'_> {
        self.players.fetch_add(1, Ordering::Relaxed);
        PlayerGuard { state: self }
    }

    /// Players connected right now.
    pub fn players(&self) -> u64 {
        self.players.load(Ordering::Relaxed)
    }

    /// Counts one more frame sent.
    pub fn frame_sent(&self) {
        self.frames_sent.fetch_add(1, Ordering::Relaxed);
    }

    fn dynamic_prop(&self, key: &str) -> Option<String> {
        let value = match key {
            "sys.boot_completed" | "dev.bootcomplete" => u8::from(self.booted()).to_string(),
            "sim.stream.players" => self.players().to_string(),
            "sim.stream.frames_sent" => self.frames_sent.load(Ordering::Relaxed).to_string(),
            _ => return None,
        };
        Some(value)
    }
}

/// Keeps a stream player counted while alive.
#[derive(Debug)]
pub struct PlayerGuard<'a> {
    state: &'a State,
}

impl Drop for PlayerGuard<'_> {
    fn drop(&mut self) {
        self.state.players.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Android's primary ABI name for a Rust target architecture.
pub fn cpu_abi(arch: &str) -> &str {
    match arch {
        "aarch64" => "arm64-v8a",
        "arm" => "armeabi-v7a",
        "x86" => "x86",
        other => other,
    }
}

/// Seconds without a trailing `.0` for whole numbers (`3`, `1.5`).
fn format_seconds(d: Duration) -> String {
    let s = d.as_secs_f64();
    format!("{s}")
}

// A panic while holding one of these locks cannot leave the maps half-updated (each critical
// section is a single insert or clone), so a poisoned lock is still safe to use.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(boot_secs: f64) -> State {
        State::new(&Config { boot: Duration::from_secs_f64(boot_secs), ..Config::default() })
    }

    #[test]
    fn boot_completed_follows_the_clock() {
        assert_eq!(state(3600.0).prop("sys.boot_completed").unwrap(), "0");
        let s = state(0.0);
        assert_eq!(s.prop("sys.boot_completed").unwrap(), "1");
        assert_eq!(s.prop("dev.bootcomplete").unwrap(), "1");
        assert_eq!(s.prop("sim.boot.seconds").unwrap(), "0");
        assert_eq!(state(1.5).prop("sim.boot.seconds").unwrap(), "1.5");
    }

    #[test]
    fn read_only_props_are_refused() {
        let s = state(0.0);
        assert_eq!(s.set_prop("ro.product.model", "x"), Err(ReadOnlyProp));
        assert_eq!(s.set_prop("sys.boot_completed", "1"), Err(ReadOnlyProp));
        assert_eq!(s.set_prop("ro.new.thing", "x"), Ok(()));
        assert_eq!(s.set_prop("debug.x", "y"), Ok(()));
        assert_eq!(s.prop("debug.x").unwrap(), "y");
    }

    #[test]
    fn players_are_counted_while_guards_live() {
        let s = state(0.0);
        let a = s.player_joined();
        let b = s.player_joined();
        assert_eq!(s.prop("sim.stream.players").unwrap(), "2");
        drop(a);
        drop(b);
        assert_eq!(s.players(), 0);
    }

    #[test]
    fn stopping_the_foreground_package_clears_it() {
        let s = state(0.0);
        s.start_activity("com.game/.Main");
        s.stop_package("com.other");
        assert_eq!(s.foreground().unwrap(), "com.game/.Main");
        s.stop_package("com.game");
        assert_eq!(s.foreground(), None);
    }

    #[test]
    fn abi_names() {
        assert_eq!(cpu_abi("aarch64"), "arm64-v8a");
        assert_eq!(cpu_abi("x86_64"), "x86_64");
    }
}
