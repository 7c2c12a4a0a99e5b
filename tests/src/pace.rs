//! Open-loop pacing for the benchmarks: request `i` is due at `start + i / rate`, whatever the
//! answers to the earlier ones, and its latency counts from that instant (no coordinated
//! omission). The schedule is kept by a plain thread, not by tokio's timer: the timer wheel
//! rounds every deadline up to the next millisecond, which at 2,000/s would add up to a
//! millisecond of the harness's own lateness to every figure and send requests in pairs.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;

/// Starts the schedule: `count` ticks at `rate` per second, each with its index and due time.
pub fn ticks(rate: f64, count: usize) -> mpsc::UnboundedReceiver<(usize, Instant)> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let start = Instant::now();
        for i in 0..count {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            // A thread sleep overshoots by the timer slack (~50-100 µs), which is counted in the
            // latency; spinning instead would take a core from the services under test.
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            if tx.send((i, due)).is_err() {
                return;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ticks_come_at_the_rate_in_order() {
        let begin = Instant::now();
        let mut rx = ticks(1000.0, 50);
        let mut seen = Vec::new();
        while let Some((i, due)) = rx.recv().await {
            assert!(Instant::now() >= due, "tick {i} came early");
            seen.push(i);
        }
        assert_eq!(seen, (0..50).collect::<Vec<_>>());
        // 50 ticks at 1,000/s span 49 ms.
        assert!(begin.elapsed() >= Duration::from_millis(49));
    }
}
