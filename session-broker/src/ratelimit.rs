//! Per-tenant token buckets for session requests: `rate` per second sustained, bursts of
//! twice that.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets keyed by tenant.
#[derive(Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// Takes one token from the tenant's bucket; false when it is empty.
    pub fn allow(&self, tenant: &str, rate_per_s: u32) -> bool {
        self.allow_at(tenant, rate_per_s, Instant::now())
    }

    fn allow_at(&self, tenant: &str, rate_per_s: u32, now: Instant) -> bool {
        let capacity = 2.0 * f64::from(rate_per_s.max(1));
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets.entry(tenant.to_string()).or_insert(Bucket { tokens: capacity, at: now });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * f64::from(rate_per_s)).min(capacity);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bursts_then_refills_per_tenant() {
        let limiter = RateLimiter::default();
        let t0 = Instant::now();
        let allowed = (0..10).filter(|_| limiter.allow_at("a", 2, t0)).count();
        assert_eq!(allowed, 4);
        assert!(limiter.allow_at("b", 2, t0), "tenants do not share buckets");
        assert!(!limiter.allow_at("a", 2, t0 + Duration::from_millis(100)));
        assert!(limiter.allow_at("a", 2, t0 + Duration::from_millis(600)));
    }
}
