//! The clock the runtime and the stores ask for the time.
//!
//! The runtime's timing rules (lease expiry and renewal, retry backoff, delays, schedules,
//! connector pacing, retention) read the time from an injected [`Clock`] and wait through it, so a
//! test can drive them with a [`ManualClock`] instead of sleeping. [`SystemClock`] is the real one.
//! Stores take the time they judge by (claims, lease expiry) as arguments; what a backend times
//! for itself (sled's promoter and group commits) runs on real time.
//!
//! Invariant: a [`ManualClock`] only moves forward, and every `sleep_until` waiting on it resolves
//! as soon as the time it waits for has been reached (waiters are woken on every advance).

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::model::Timestamp;

/// A future that a [`Clock`] resolves.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Where the time comes from.
pub trait Clock: Send + Sync + Debug + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;

    /// Resolves once [`now`](Self::now) is at or after `at`.
    fn sleep_until(&self, at: Timestamp) -> Sleep;
}

/// The shared handle the runtime keeps.
pub type SharedClock = Arc<dyn Clock>;

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }

    fn sleep_until(&self, at: Timestamp) -> Sleep {
        let wait = Duration::from_millis(at.millis_since(Timestamp::now()));
        Box::pin(tokio::time::sleep(wait))
    }
}

/// A clock that moves only when told to (tests).
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<AtomicI64>,
    moved: watch::Sender<i64>,
}

impl ManualClock {
    /// A clock that reads `start` until advanced.
    pub fn new(start: Timestamp) -> Self {
        let (moved, _) = watch::channel(start.millis());
        Self {
            now: Arc::new(AtomicI64::new(start.millis())),
            moved,
        }
    }

    /// Moves the time forward by `by` and wakes every sleeper whose time has come.
    pub fn advance(&self, by: Duration) {
        let now = Timestamp(self.now.load(Ordering::SeqCst)).plus(by);
        self.now.store(now.millis(), Ordering::SeqCst);
        self.moved.send_replace(now.millis());
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.now.load(Ordering::SeqCst))
    }

    fn sleep_until(&self, at: Timestamp) -> Sleep {
        let mut moved = self.moved.subscribe();
        Box::pin(async move {
            // The sender lives as long as the clock; if it is gone, nothing will ever move time.
            let _ = moved.wait_for(|now| *now >= at.millis()).await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_manual_sleep_ends_when_the_clock_reaches_its_time_and_not_before() {
        let clock = ManualClock::new(Timestamp(1_000));
        let mut sleep = clock.sleep_until(Timestamp(1_500));
        assert!(futures_poll(&mut sleep).is_pending());
        clock.advance(Duration::from_millis(499));
        assert!(futures_poll(&mut sleep).is_pending());
        clock.advance(Duration::from_millis(1));
        sleep.await;
        assert_eq!(clock.now(), Timestamp(1_500));
        // A time already passed resolves at once.
        clock.sleep_until(Timestamp(10)).await;
    }

    fn futures_poll(sleep: &mut Sleep) -> std::task::Poll<()> {
        let waker = std::task::Waker::noop();
        sleep
            .as_mut()
            .poll(&mut std::task::Context::from_waker(waker))
    }
}
