//! Polling instead of sleeping: a condition is checked until it holds or a deadline passes, and
//! a timeout says what was last seen.

use std::fmt::Debug;
use std::future::Future;
use std::time::{Duration, Instant};

/// How often [`wait_until`] looks again.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Polls `check` every [`POLL_INTERVAL`] until it returns `Ok(value)`, and returns the value.
/// `Err(observation)` means "not yet"; after `timeout` it panics naming `what` and the last
/// observation.
pub async fn wait_until<T, E, F, Fut>(timeout: Duration, what: &str, check: F) -> T
where
    E: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    wait_until_every(timeout, POLL_INTERVAL, what, check).await
}

/// [`wait_until`] with a chosen poll interval (short ones for measurements).
pub async fn wait_until_every<T, E, F, Fut>(timeout: Duration, every: Duration, what: &str, mut check: F) -> T
where
    E: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let started = Instant::now();
    loop {
        let observation = match check().await {
            Ok(value) => return value,
            Err(observation) => observation,
        };
        if started.elapsed() >= timeout {
            panic!("timed out after {timeout:?} waiting for {what}; last observation: {observation:#?}");
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_the_value_once_the_condition_holds() {
        let mut calls = 0;
        let value = wait_until(Duration::from_secs(5), "third call", || {
            calls += 1;
            let n = calls;
            async move { if n >= 3 { Ok(n) } else { Err(format!("call {n}")) } }
        })
        .await;
        assert_eq!(value, 3);
    }

    #[tokio::test]
    #[should_panic(expected = "last observation: \"still 1\"")]
    async fn a_timeout_names_the_last_observation() {
        wait_until(Duration::from_millis(250), "never", || async { Err::<(), _>("still 1") }).await;
    }
}
