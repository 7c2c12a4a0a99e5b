//! Demand: the arrival rate of session requests per (game, region) and the time a game's
//! instance takes to boot, both measured, so a warm target can follow demand:
//! `warm = arrivals per second x boot seconds x safety`, within the operator's floor and cap.
//!
//! Both are exponentially weighted, so a burst raises the target at once and a quiet hour lets
//! it fall back to the floor without a timer.

use std::collections::HashMap;
use std::sync::Mutex;

/// Time constant of the arrival rate: a request counts `1/TAU` per second, fading with `e^(-t/TAU)`.
pub const RATE_TAU_S: f64 = 60.0;
/// Weight of the newest boot-time sample.
const BOOT_ALPHA: f64 = 0.2;

#[derive(Debug, Clone, Copy)]
struct Rate {
    /// Rate at `at_ms`, per second.
    value: f64,
    at_ms: u64,
}

impl Rate {
    fn at(&self, now_ms: u64) -> f64 {
        let dt = now_ms.saturating_sub(self.at_ms) as f64 / 1000.0;
        self.value * (-dt / RATE_TAU_S).exp()
    }
}

/// The broker's demand figures.
#[derive(Debug, Default)]
pub struct Demand {
    arrivals: Mutex<HashMap<(String, String), Rate>>,
    boot_ms: Mutex<HashMap<String, f64>>,
}

impl Demand {
    /// A session request for `game` that the scheduler sent to `region`.
    pub fn arrival(&self, game: &str, region: &str, now_ms: u64) {
        let mut map = self.arrivals.lock().unwrap_or_else(|p| p.into_inner());
        let rate =
            map.entry((game.to_string(), region.to_string())).or_insert(Rate { value: 0.0, at_ms: now_ms });
        *rate = Rate { value: rate.at(now_ms) + 1.0 / RATE_TAU_S, at_ms: now_ms };
    }

    /// Arrivals per second of `game` in `region` now.
    pub fn rate(&self, game: &str, region: &str, now_ms: u64) -> f64 {
        let map = self.arrivals.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&(game.to_string(), region.to_string())).map_or(0.0, |r| r.at(now_ms))
    }

    /// An instance of `game` went from created to ready in `ms`.
    pub fn boot_sample(&self, game: &str, ms: u64) {
        let mut map = self.boot_ms.lock().unwrap_or_else(|p| p.into_inner());
        let v = map.entry(game.to_string()).or_insert(ms as f64);
        *v = (1.0 - BOOT_ALPHA) * *v + BOOT_ALPHA * ms as f64;
    }

    /// Measured boot time of `game` (ms), if any instance has booted yet.
    pub fn boot_ms(&self, game: &str) -> Option<u64> {
        self.boot_ms.lock().unwrap_or_else(|p| p.into_inner()).get(game).map(|v| v.round() as u64)
    }
}

/// The warm target that follows demand: `ceil(rate x boot x safety)` within `[floor, cap]`.
/// Without a boot measurement yet, the floor.
pub fn follow(rate_per_s: f64, boot_ms: Option<u64>, safety: f64, floor: u32, cap: u32) -> u32 {
    let Some(boot) = boot_ms else { return floor };
    let want = (rate_per_s * boot as f64 / 1000.0 * safety).ceil();
    if want.is_finite() { (want.max(0.0) as u32).clamp(floor, cap.max(floor)) } else { floor }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steady_stream_converges_to_its_rate_and_fades_when_it_stops() {
        let d = Demand::default();
        // 5 per second for 10 minutes.
        for i in 0..3000u64 {
            d.arrival("g", "east", i * 200);
        }
        let r = d.rate("g", "east", 600_000);
        assert!((r - 5.0).abs() < 0.1, "rate {r}");
        assert!(d.rate("g", "east", 600_000 + 300_000) < 0.05);
        assert_eq!(d.rate("g", "west", 600_000), 0.0);
    }

    #[test]
    fn boot_time_is_a_moving_average() {
        let d = Demand::default();
        assert_eq!(d.boot_ms("g"), None);
        d.boot_sample("g", 10_000);
        assert_eq!(d.boot_ms("g"), Some(10_000));
        for _ in 0..50 {
            d.boot_sample("g", 20_000);
        }
        assert!(d.boot_ms("g").unwrap() > 19_900);
    }

    #[test]
    fn the_target_is_rate_times_boot_times_safety_within_bounds() {
        assert_eq!(follow(2.0, Some(10_000), 1.5, 1, 100), 30);
        assert_eq!(follow(2.0, Some(10_000), 1.5, 1, 20), 20);
        assert_eq!(follow(0.0, Some(10_000), 1.5, 3, 20), 3);
        assert_eq!(follow(2.0, None, 1.5, 3, 20), 3);
        assert_eq!(follow(f64::NAN, Some(1), 1.5, 3, 20), 3);
        assert_eq!(follow(9.0, Some(1000), 1.0, 5, 2), 5, "a cap below the floor is the floor");
    }
}
