//! Catch-hook rate limits (`rate_limit: 100/s` on a webhook trigger): a token bucket per flow,
//! in memory, holding up to one second's worth of requests. A request over the limit is answered
//! 429 `rate_limited` (saying when to retry), stores nothing, and shows in the flow's hook log.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hookflow_engine::ids::FlowId;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The buckets of the flows with a limit.
#[derive(Clone, Default)]
pub struct HookLimits(Arc<Mutex<HashMap<FlowId, Bucket>>>);

impl HookLimits {
    /// Takes one request from the flow's allowance of `per_second`, or answers how long until
    /// the next one is allowed.
    pub fn admit(&self, flow: &FlowId, per_second: f64) -> Result<(), Duration> {
        let burst = per_second.max(1.0);
        let now = Instant::now();
        let mut buckets = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let bucket = buckets.entry(flow.clone()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let refill = now.duration_since(bucket.at).as_secs_f64() * per_second;
        bucket.tokens = (bucket.tokens + refill).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / per_second))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flow_gets_its_rate_and_no_more() {
        let limits = HookLimits::default();
        let flow: FlowId = "leads".parse().unwrap();
        for _ in 0..3 {
            assert!(limits.admit(&flow, 3.0).is_ok());
        }
        let wait = limits.admit(&flow, 3.0).unwrap_err();
        assert!(wait <= Duration::from_millis(334), "{wait:?}");
        let other: FlowId = "other".parse().unwrap();
        assert!(limits.admit(&other, 3.0).is_ok(), "flows are independent");
    }
}
