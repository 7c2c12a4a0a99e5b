//! CPU accounting for the benchmarks, from `/proc`: a process's CPU time, and how the machine's
//! cores were spent over an interval (busy, idle, and stolen by the hypervisor). On a shared VM
//! the steal share is what makes one run differ from the next, so benchmarks print it next to
//! their figures.

use std::time::Duration;

/// Clock ticks per second of the `/proc` counters.
pub fn ticks_per_second() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().map_or(100, |v| v as u64)
}

/// utime + stime of `pid` in clock ticks; `None` when it cannot be read (the process is gone).
pub fn process_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at field 3 (state).
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    Some(field(14)? + field(15)?)
}

/// CPU time (user + system) of `pid` so far; zero when it cannot be read.
pub fn process_time(pid: u32) -> Duration {
    let ticks = process_ticks(pid).unwrap_or(0);
    Duration::from_secs_f64(ticks as f64 / ticks_per_second() as f64)
}

/// The machine's CPU counters (all cores summed) at one instant, from the `cpu` line of
/// `/proc/stat`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MachineTicks {
    /// user, nice, system, irq, softirq.
    pub busy: u64,
    /// idle and iowait.
    pub idle: u64,
    /// Time a virtual CPU wanted to run but the hypervisor ran something else.
    pub steal: u64,
}

impl MachineTicks {
    /// Now; all zero when `/proc/stat` cannot be read.
    pub fn now() -> MachineTicks {
        std::fs::read_to_string("/proc/stat").ok().and_then(|s| MachineTicks::parse(&s)).unwrap_or_default()
    }

    fn parse(stat: &str) -> Option<MachineTicks> {
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let f: Vec<u64> = line.split_whitespace().skip(1).map(|v| v.parse().unwrap_or(0)).collect();
        let at = |i: usize| f.get(i).copied().unwrap_or(0);
        // user nice system idle iowait irq softirq steal (guest time is already in user).
        Some(MachineTicks { busy: at(0) + at(1) + at(2) + at(5) + at(6), idle: at(3) + at(4), steal: at(7) })
    }

    /// Ticks spent from `earlier` to `self`.
    pub fn since(&self, earlier: &MachineTicks) -> MachineTicks {
        MachineTicks {
            busy: self.busy.saturating_sub(earlier.busy),
            idle: self.idle.saturating_sub(earlier.idle),
            steal: self.steal.saturating_sub(earlier.steal),
        }
    }

    pub fn add(&mut self, other: &MachineTicks) {
        self.busy += other.busy;
        self.idle += other.idle;
        self.steal += other.steal;
    }

    /// Shares of the total as percentages: (busy, idle, steal).
    pub fn percentages(&self) -> (f64, f64, f64) {
        let total = (self.busy + self.idle + self.steal).max(1) as f64;
        let pct = |v: u64| v as f64 * 100.0 / total;
        (pct(self.busy), pct(self.idle), pct(self.steal))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_line_splits_into_busy_idle_and_steal() {
        let stat = "cpu  100 5 30 400 20 3 2 40 0 0\ncpu0 50 2 15 200 10 1 1 20 0 0\nintr 1\n";
        let t = MachineTicks::parse(stat).unwrap();
        assert_eq!(t, MachineTicks { busy: 140, idle: 420, steal: 40 });
        let later = MachineTicks { busy: 240, idle: 470, steal: 90 };
        let (busy, idle, steal) = later.since(&t).percentages();
        assert_eq!((busy.round(), idle.round(), steal.round()), (50.0, 25.0, 25.0));
    }

    #[test]
    fn this_process_has_spent_some_cpu() {
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(30) {}
        assert!(process_ticks(std::process::id()).is_some());
        assert!(process_time(std::process::id()) > Duration::ZERO);
        assert!(MachineTicks::now().busy > 0);
    }
}
