//! Throttling failed logins per client address, so a password cannot be guessed at speed.
//!
//! # Invariants
//!
//! - The first [`FREE_FAILURES`] failures of an address cost nothing; each further failure locks
//!   the address out for twice as long as the one before (1 s, 2 s, 4 s, … at most
//!   [`MAX_LOCKOUT`]). While locked out, a login is answered 429 with `Retry-After` and its
//!   password is not even checked. A success clears the address's record.
//! - The address is the TCP peer's: behind a reverse proxy, every login shares the proxy's.
//! - Memory is bounded: at most [`MAX_TRACKED`] addresses, records quiet for [`FORGET_AFTER`]
//!   forgotten first.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Failures an address may have before lockouts start.
const FREE_FAILURES: u32 = 5;
/// The longest lockout.
const MAX_LOCKOUT: Duration = Duration::from_secs(15 * 60);
/// The most addresses tracked.
const MAX_TRACKED: usize = 10_000;
/// How long a record is kept after its last failure.
const FORGET_AFTER: Duration = Duration::from_secs(3600);

#[derive(Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    locked_until: Instant,
}

/// Failed logins per address, and counters for `/metrics`.
#[derive(Clone, Default)]
pub struct LoginThrottle {
    failures: Arc<Mutex<HashMap<IpAddr, Failures>>>,
    failed: Arc<AtomicU64>,
    throttled: Arc<AtomicU64>,
}

impl LoginThrottle {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Failures>> {
        self.failures.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How long `ip` must wait before trying again, if it is locked out (counted as throttled).
    pub fn locked(&self, ip: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let wait = self
            .lock()
            .get(&ip)
            .and_then(|f| f.locked_until.checked_duration_since(now))
            .filter(|wait| !wait.is_zero());
        if wait.is_some() {
            self.throttled.fetch_add(1, Ordering::Relaxed);
        }
        wait
    }

    /// Records a failure of `ip`.
    pub fn failed(&self, ip: IpAddr) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut failures = self.lock();
        if failures.len() >= MAX_TRACKED && !failures.contains_key(&ip) {
            failures.retain(|_, f| now.duration_since(f.last) < FORGET_AFTER);
            if failures.len() >= MAX_TRACKED {
                let stalest = failures
                    .iter()
                    .min_by_key(|(_, f)| f.last)
                    .map(|(ip, _)| *ip);
                failures.remove(&stalest.expect("the map is full"));
            }
        }
        let entry = failures.entry(ip).or_insert(Failures {
            count: 0,
            last: now,
            locked_until: now,
        });
        entry.count += 1;
        entry.last = now;
        if let Some(beyond) = entry.count.checked_sub(FREE_FAILURES + 1) {
            let lockout = Duration::from_secs(1u64 << beyond.min(20)).min(MAX_LOCKOUT);
            entry.locked_until = now + lockout;
        }
    }

    /// Clears `ip`'s record after a success.
    pub fn succeeded(&self, ip: IpAddr) {
        self.lock().remove(&ip);
    }

    /// Failed logins since start.
    pub fn failed_total(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Logins refused for a lockout since start.
    pub fn throttled_total(&self) -> u64 {
        self.throttled.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lockouts_start_after_the_free_failures_and_double() {
        let throttle = LoginThrottle::default();
        let (ip, other): (IpAddr, IpAddr) =
            ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        for _ in 0..FREE_FAILURES {
            throttle.failed(ip);
            assert_eq!(throttle.locked(ip), None);
        }
        throttle.failed(ip);
        let first = throttle.locked(ip).expect("locked out");
        assert!(first <= Duration::from_secs(1) && first > Duration::from_millis(900));
        throttle.failed(ip);
        let second = throttle.locked(ip).expect("locked out");
        assert!(second > Duration::from_millis(1900), "{second:?}");
        assert_eq!(throttle.locked(other), None, "per address");
        throttle.succeeded(ip);
        assert_eq!(throttle.locked(ip), None);
        assert_eq!(
            (throttle.failed_total(), throttle.throttled_total()),
            (7, 2)
        );
    }
}
