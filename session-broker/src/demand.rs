//! Demand: the arrival rate of session requests per (game, region) and the time a game's
//! instance takes to boot, both measured, so a warm target can follow demand:
//! `warm = arrivals per second x boot seconds x safety`, within the operator's floor and cap.
//!
//! Both are exponentially weighted, so a burst raises the target at once and a quiet hour lets
//! it fall back to the floor without a timer.
//!
//! It also keeps, per game, the RTT maps of the latest [`prices::WINDOW`] arrivals: the sample
//! from which the scheduler's region prices are learned ([`crate::scheduler::prices`]). A
//! bounded window, so it costs at most a few hundred small maps per game and follows the
//! demand as it moves.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use crate::scheduler::prices;

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
    players: Mutex<HashMap<String, VecDeque<BTreeMap<String, f64>>>>,
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

    /// A new session of `game` by a player who measured `rtt_ms` to the regions (counted once
    /// per session, on arrival). A player without measurements is not kept: it says nothing of
    /// which regions are wanted.
    pub fn player(&self, game: &str, rtt_ms: &BTreeMap<String, f64>) {
        if rtt_ms.is_empty() {
            return;
        }
        let mut map = self.players.lock().unwrap_or_else(|p| p.into_inner());
        let window = map.entry(game.to_string()).or_default();
        if window.len() >= prices::WINDOW {
            window.pop_front();
        }
        window.push_back(rtt_ms.clone());
    }

    /// The RTT maps of `game`'s latest arrivals, oldest first (at most [`prices::WINDOW`]).
    pub fn recent_players(&self, game: &str) -> Vec<BTreeMap<String, f64>> {
        let map = self.players.lock().unwrap_or_else(|p| p.into_inner());
        map.get(game).map(|w| w.iter().cloned().collect()).unwrap_or_default()
    }

    /// Games with recent arrivals in the window.
    pub fn games_with_players(&self) -> Vec<String> {
        let map = self.players.lock().unwrap_or_else(|p| p.into_inner());
        let mut games: Vec<String> = map.keys().cloned().collect();
        games.sort();
        games
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
    fn the_player_window_keeps_the_latest_arrivals_per_game() {
        let d = Demand::default();
        let rtts = |v: f64| BTreeMap::from([("east".to_string(), v)]);
        for i in 0..prices::WINDOW + 10 {
            d.player("g", &rtts(i as f64));
        }
        d.player("h", &rtts(1.0));
        d.player("h", &BTreeMap::new());
        let g = d.recent_players("g");
        assert_eq!(g.len(), prices::WINDOW);
        assert_eq!(g[0]["east"], 10.0, "the oldest arrivals leave first");
        assert_eq!(g[g.len() - 1]["east"], (prices::WINDOW + 9) as f64);
        assert_eq!(d.recent_players("h").len(), 1, "a player without measurements is not kept");
        assert!(d.recent_players("nobody").is_empty());
        assert_eq!(d.games_with_players(), vec!["g".to_string(), "h".to_string()]);
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
