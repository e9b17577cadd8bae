//! Rate-limit pacing per connector account, shared by every run and kept across restarts.
//!
//! A SaaS API limits calls per account (HubSpot: so many per rolling ten seconds, reported in
//! `X-HubSpot-RateLimit-*` headers; Stripe: a 429 when over). A connector asks [`Pacer::admit`]
//! before each call: when the account's allowance is used up, it answers how long to wait, and the
//! step is put back in the queue for then (see `Outcome::Wait`) instead of failing. After each call
//! the connector reports what the service said with [`Pacer::observe`].
//!
//! Once a service has reported its limit (`max` calls per `window`), the pacer keeps a log of the
//! calls it admitted in the last window and admits no more than `max` in any window (a rolling
//! window, as HubSpot counts). A wait the service imposed (a 429, or the allowance reported
//! exhausted) holds every call until it ends, and is stored, so a restart keeps honouring it.
//!
//! The allowances live behind the store's atomic operations (`Store::pace_admit`,
//! `Store::pace_observe`), so nodes sharing a store share each account's allowance; the rules
//! themselves are in `store::coordination`, which a detached pacer (no store) uses directly.
//!
//! Accounts are named by the connector (`hubspot:<hash of base URL and token>`), never by the
//! credential itself.

use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use crate::model::Timestamp;
use crate::store::coordination::Coordination;
use crate::store::{SharedClock, Store, SystemClock};

/// What a service said about an account's allowance after a call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Observation {
    /// The account's limit and what is left of it (HubSpot's headers).
    Remaining {
        /// Calls allowed per window.
        max: u32,
        /// Calls left in the current window.
        remaining: u32,
        /// How long the window lasts.
        window: Duration,
    },
    /// The call was refused for the rate limit (a 429); no call before `wait` has passed.
    Limited {
        /// How long to hold all calls.
        wait: Duration,
    },
}

/// Where accounts' allowances are kept.
#[derive(Clone)]
enum Allowances {
    /// In the store, shared by every node using it (`Store::pace_admit`, `Store::pace_observe`).
    Store(Arc<dyn Store>),
    /// In this process only (an offline run, which makes no calls that matter to others).
    Detached(Arc<Coordination>),
}

/// Paces calls per connector account. Cheap to clone.
#[derive(Clone)]
pub struct Pacer {
    allowances: Allowances,
    clock: SharedClock,
}

impl std::fmt::Debug for Pacer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pacer").finish_non_exhaustive()
    }
}

impl Pacer {
    /// A pacer keeping allowances in `store` (so waits survive a restart, and nodes sharing the
    /// store share them), reading the time from `clock`.
    pub fn new(store: Arc<dyn Store>, clock: SharedClock) -> Self {
        Self {
            allowances: Allowances::Store(store),
            clock,
        }
    }

    /// A pacer that keeps its waits in memory only (offline runs and flow tests).
    pub fn detached() -> Self {
        Self {
            allowances: Allowances::Detached(Arc::default()),
            clock: Arc::new(SystemClock),
        }
    }

    /// Takes one call of the account's allowance, or answers how long to wait before calling. A
    /// store that cannot answer admits the call (the service's own limit still applies).
    pub async fn admit(&self, account: &str) -> Result<(), Duration> {
        let now = self.clock.now();
        let admitted = match &self.allowances {
            Allowances::Detached(coordination) => coordination.pace_admit(account, now),
            Allowances::Store(store) => match store.pace_admit(account, now).await {
                Ok(admitted) => admitted,
                Err(e) => {
                    warn!(error = %e, account, "could not read the account's rate-limit allowance; calling anyway");
                    Ok(())
                }
            },
        };
        admitted.map_err(|until| wait(until, now))
    }

    /// Records what the service said after a call.
    pub async fn observe(&self, account: &str, observation: Observation) {
        let now = self.clock.now();
        let (limit, blocked_until) = match observation {
            Observation::Remaining {
                max,
                remaining,
                window,
            } => (
                Some((max, window)),
                (remaining == 0).then(|| now.plus(window)),
            ),
            Observation::Limited { wait } => (None, Some(now.plus(wait))),
        };
        match &self.allowances {
            Allowances::Detached(coordination) => {
                coordination.pace_observe(account, limit, blocked_until);
            }
            Allowances::Store(store) => {
                if let Err(e) = store.pace_observe(account, limit, blocked_until).await {
                    warn!(error = %e, account, "could not store the account's rate-limit wait");
                }
            }
        }
    }
}

fn wait(until: Timestamp, now: Timestamp) -> Duration {
    Duration::from_millis(until.millis_since(now).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sled::SledStore;

    fn pacer() -> Pacer {
        Pacer::new(
            Arc::new(SledStore::temporary().unwrap()),
            Arc::new(SystemClock),
        )
    }

    #[tokio::test]
    async fn unknown_accounts_are_admitted() {
        let p = pacer();
        for _ in 0..100 {
            assert_eq!(p.admit("a").await, Ok(()));
        }
    }

    #[tokio::test]
    async fn a_reported_limit_admits_at_most_max_calls_per_window() {
        let p = pacer();
        let window = Duration::from_secs(10);
        let limit = Observation::Remaining {
            max: 2,
            remaining: 50,
            window,
        };
        p.observe("a", limit).await;
        assert_eq!(p.admit("a").await, Ok(()));
        assert_eq!(p.admit("a").await, Ok(()));
        let wait = p.admit("a").await.unwrap_err();
        assert!(wait > Duration::from_secs(9) && wait <= window, "{wait:?}");
        assert_eq!(p.admit("b").await, Ok(()), "accounts are independent");
    }

    #[tokio::test]
    async fn an_exhausted_allowance_holds_calls_for_the_window() {
        let p = pacer();
        let window = Duration::from_secs(10);
        let spent = Observation::Remaining {
            max: 100,
            remaining: 0,
            window,
        };
        p.observe("a", spent).await;
        let wait = p.admit("a").await.unwrap_err();
        assert!(wait > Duration::from_secs(9) && wait <= window, "{wait:?}");
    }

    /// Pacers sharing a store share its waits (a restart is covered by the conformance suite's
    /// `pacing_waits_survive_reopen`).
    #[tokio::test]
    async fn a_429_holds_every_call_of_every_pacer_on_the_store() {
        let store: Arc<dyn Store> = Arc::new(SledStore::temporary().unwrap());
        let p = Pacer::new(store.clone(), Arc::new(SystemClock));
        let hold = Duration::from_secs(30);
        p.observe("a", Observation::Limited { wait: hold }).await;
        assert!(p.admit("a").await.is_err());

        let other = Pacer::new(store, Arc::new(SystemClock));
        let wait = other.admit("a").await.unwrap_err();
        assert!(wait > Duration::from_secs(29) && wait <= hold, "{wait:?}");
    }

    #[tokio::test]
    async fn a_detached_pacer_paces_in_memory() {
        let p = Pacer::detached();
        let window = Duration::from_secs(10);
        let limit = Observation::Remaining {
            max: 1,
            remaining: 50,
            window,
        };
        p.observe("a", limit).await;
        assert_eq!(p.admit("a").await, Ok(()));
        let wait = p.clone().admit("a").await.unwrap_err();
        assert!(wait > Duration::from_secs(9) && wait <= window, "{wait:?}");
        let hold = Duration::from_secs(30);
        p.observe("b", Observation::Limited { wait: hold }).await;
        let wait = p.admit("b").await.unwrap_err();
        assert!(wait > Duration::from_secs(29) && wait <= hold, "{wait:?}");
    }
}
