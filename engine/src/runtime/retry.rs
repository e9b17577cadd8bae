//! Retry policies: how long to wait before each further attempt of a failed step.
//!
//! The default schedule follows DESIGN.md: 5 s, 30 s, 2 min, 10 min, 1 h, 3 h (seven attempts in
//! all), with ±20 % jitter so a burst of failures does not retry in lockstep. A retry is a queue item
//! due later, never a sleeping task, so it survives restarts.

use std::time::Duration;

use rand::Rng;

use crate::flow::spec::{Backoff, RetrySpec};
use crate::steps::StepError;

/// The default delays between attempts.
const DEFAULT_SCHEDULE: [u64; 6] = [5, 30, 120, 600, 3600, 3 * 3600];

/// How a step is retried.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, including the first (1 = never retry).
    pub attempts: u32,
    /// The delay before each retry.
    pub delays: Delays,
    /// Whether to spread delays by ±20 %.
    pub jitter: bool,
    /// HTTP statuses retried although the step called them permanent.
    pub on_status: Vec<u16>,
}

/// The delay sequence of a retry policy.
#[derive(Debug, Clone, PartialEq)]
pub enum Delays {
    /// The given delays in order; the last repeats.
    Schedule(Vec<Duration>),
    /// `initial × 2ⁿ`, capped at `max`.
    Exponential {
        /// The first delay.
        initial: Duration,
        /// The largest delay.
        max: Duration,
    },
    /// The same delay each time.
    Fixed(Duration),
}

impl Default for RetryPolicy {
    fn default() -> Self {
        let schedule = DEFAULT_SCHEDULE
            .iter()
            .map(|s| Duration::from_secs(*s))
            .collect();
        Self {
            attempts: DEFAULT_SCHEDULE.len() as u32 + 1,
            delays: Delays::Schedule(schedule),
            jitter: true,
            on_status: Vec::new(),
        }
    }
}

impl RetryPolicy {
    /// The policy a step's `retry:` spec describes (unset fields take the defaults).
    pub fn from_spec(spec: &RetrySpec) -> Self {
        let default = Self::default();
        let initial = spec.initial.map(|d| d.0);
        let delays = match (spec.backoff, initial) {
            (Some(Backoff::Fixed), i) => Delays::Fixed(i.unwrap_or(Duration::from_secs(5))),
            (Some(Backoff::Exponential), i) | (None, i @ Some(_)) => Delays::Exponential {
                initial: i.unwrap_or(Duration::from_secs(5)),
                max: spec
                    .max
                    .map(|d| d.0)
                    .unwrap_or(Duration::from_secs(3 * 3600)),
            },
            (None, None) => default.delays,
        };
        Self {
            attempts: spec.attempts.unwrap_or(default.attempts).max(1),
            delays,
            jitter: spec.jitter.unwrap_or(true),
            on_status: spec.on_status.clone(),
        }
    }

    /// A policy that never retries.
    pub fn never() -> Self {
        Self {
            attempts: 1,
            delays: Delays::Fixed(Duration::ZERO),
            jitter: false,
            on_status: Vec::new(),
        }
    }

    /// Whether this failure may be retried: the step said so, or its HTTP status is listed in
    /// `on_status`.
    pub fn covers(&self, e: &StepError) -> bool {
        e.retryable || e.http_status.is_some_and(|s| self.on_status.contains(&s))
    }

    /// The delay before attempt `failed + 1`, after attempt `failed` failed; `None` when attempts
    /// are used up. `retry_after` (from the target) is a lower bound.
    pub fn next_delay(&self, failed: u32, retry_after: Option<Duration>) -> Option<Duration> {
        if failed >= self.attempts {
            return None;
        }
        let n = failed.saturating_sub(1);
        let base = match &self.delays {
            Delays::Schedule(list) => list
                .get(n as usize)
                .or(list.last())
                .copied()
                .unwrap_or_default(),
            Delays::Exponential { initial, max } => initial
                .saturating_mul(2u32.saturating_pow(n.min(30)))
                .min(*max),
            Delays::Fixed(d) => *d,
        };
        let jittered = if self.jitter && !base.is_zero() {
            base.mul_f64(rand::rng().random_range(0.8..1.2))
        } else {
            base
        };
        Some(jittered.max(retry_after.unwrap_or_default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::spec::HumanDuration;

    #[test]
    fn default_schedule_then_gives_up() {
        let p = RetryPolicy {
            jitter: false,
            ..RetryPolicy::default()
        };
        let delays: Vec<_> = (1..=6)
            .map(|n| p.next_delay(n, None).unwrap().as_secs())
            .collect();
        assert_eq!(delays, [5, 30, 120, 600, 3600, 10800]);
        assert_eq!(p.next_delay(7, None), None);
    }

    #[test]
    fn exponential_is_capped_and_retry_after_is_a_floor() {
        let spec = RetrySpec {
            attempts: Some(10),
            backoff: Some(Backoff::Exponential),
            initial: Some(HumanDuration(Duration::from_secs(1))),
            max: Some(HumanDuration(Duration::from_secs(5))),
            jitter: Some(false),
            on_status: vec![404],
        };
        let p = RetryPolicy::from_spec(&spec);
        let delays: Vec<_> = (1..=5)
            .map(|n| p.next_delay(n, None).unwrap().as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 5, 5]);
        assert_eq!(
            p.next_delay(1, Some(Duration::from_secs(30))),
            Some(Duration::from_secs(30))
        );
        assert_eq!(p.next_delay(10, None), None);
        let mut not_found = StepError::permanent("the server answered 404");
        assert!(!p.covers(&not_found));
        not_found.http_status = Some(404);
        assert!(p.covers(&not_found));
        assert!(!RetryPolicy::default().covers(&not_found));
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let p = RetryPolicy::default();
        for _ in 0..100 {
            let d = p.next_delay(2, None).unwrap().as_secs_f64();
            assert!((24.0..=36.0).contains(&d), "{d}");
        }
    }
}
