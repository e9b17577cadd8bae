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
//! Accounts are named by the connector (`hubspot:<hash of base URL and token>`), never by the
//! credential itself.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::json;
use tracing::warn;

use crate::model::Timestamp;
use crate::store::Store;

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

/// One account's known allowance.
#[derive(Debug, Clone, Default)]
struct Allowance {
    /// No call before this (a 429, or the window's allowance used up).
    blocked_until: Timestamp,
    /// The limit the service reported: calls per window.
    limit: Option<(u32, Duration)>,
    /// When the calls admitted within the last window started, oldest first.
    admitted: VecDeque<Timestamp>,
}

/// Paces calls per connector account. Cheap to clone.
#[derive(Clone)]
pub struct Pacer {
    /// Where waits are kept (none for an offline run, which makes no calls).
    store: Option<Arc<dyn Store>>,
    accounts: Arc<Mutex<HashMap<String, Allowance>>>,
}

impl std::fmt::Debug for Pacer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pacer").finish_non_exhaustive()
    }
}

impl Pacer {
    /// A pacer keeping its waits in `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store: Some(store),
            accounts: Arc::default(),
        }
    }

    /// A pacer that keeps its waits in memory only (offline runs and flow tests).
    pub fn detached() -> Self {
        Self {
            store: None,
            accounts: Arc::default(),
        }
    }

    /// Takes one call of the account's allowance, or answers how long to wait before calling.
    pub async fn admit(&self, account: &str) -> Result<(), Duration> {
        self.load(account).await;
        let now = Timestamp::now();
        let mut accounts = self.accounts();
        let allowance = accounts.entry(account.to_owned()).or_default();
        if allowance.blocked_until > now {
            return Err(wait(allowance.blocked_until, now));
        }
        let Some((max, window)) = allowance.limit else {
            return Ok(());
        };
        let window_start = Timestamp(now.millis() - window.as_millis() as i64);
        while allowance
            .admitted
            .front()
            .is_some_and(|t| *t <= window_start)
        {
            allowance.admitted.pop_front();
        }
        match allowance.admitted.front() {
            Some(oldest) if allowance.admitted.len() >= max as usize => {
                Err(wait(oldest.plus(window), now))
            }
            _ => {
                allowance.admitted.push_back(now);
                Ok(())
            }
        }
    }

    /// Records what the service said after a call.
    pub async fn observe(&self, account: &str, observation: Observation) {
        let now = Timestamp::now();
        let blocked_until = {
            let mut accounts = self.accounts();
            let allowance = accounts.entry(account.to_owned()).or_default();
            let until = match observation {
                Observation::Remaining {
                    max,
                    remaining,
                    window,
                } => {
                    allowance.limit = Some((max.max(1), window));
                    (remaining == 0).then(|| now.plus(window))
                }
                Observation::Limited { wait } => Some(now.plus(wait)),
            };
            match until {
                Some(until) if until > allowance.blocked_until => {
                    allowance.blocked_until = until;
                    until
                }
                _ => return,
            }
        };
        let Some(store) = &self.store else {
            return;
        };
        let key = state_key(account);
        let value = json!({ "blocked_until": blocked_until.millis() });
        if let Err(e) = store.put_state(&key, &value).await {
            warn!(error = %e, account, "could not store the account's rate-limit wait");
        }
    }

    /// Reads the account's stored wait the first time the account is seen in this process.
    async fn load(&self, account: &str) {
        if self.accounts().contains_key(account) {
            return;
        }
        let Some(store) = &self.store else {
            return;
        };
        let stored = match store.state(&state_key(account)).await {
            Ok(v) => v,
            Err(e) => {
                warn!(error = %e, account, "could not read the account's rate-limit wait");
                None
            }
        };
        let blocked_until = stored
            .and_then(|v| v["blocked_until"].as_i64())
            .map_or(Timestamp(0), Timestamp);
        self.accounts()
            .entry(account.to_owned())
            .or_insert(Allowance {
                blocked_until,
                ..Allowance::default()
            });
    }

    fn accounts(&self) -> std::sync::MutexGuard<'_, HashMap<String, Allowance>> {
        self.accounts.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn state_key(account: &str) -> String {
    format!("pacing:{account}")
}

fn wait(until: Timestamp, now: Timestamp) -> Duration {
    Duration::from_millis(until.millis_since(now).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sled::SledStore;

    fn pacer() -> Pacer {
        Pacer::new(Arc::new(SledStore::temporary().unwrap()))
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

    #[tokio::test]
    async fn a_429_holds_every_call_and_is_kept_in_the_store() {
        let store: Arc<dyn Store> = Arc::new(SledStore::temporary().unwrap());
        let p = Pacer::new(store.clone());
        let hold = Duration::from_secs(30);
        p.observe("a", Observation::Limited { wait: hold }).await;
        assert!(p.admit("a").await.is_err());

        let after_restart = Pacer::new(store);
        let wait = after_restart.admit("a").await.unwrap_err();
        assert!(wait > Duration::from_secs(29) && wait <= hold, "{wait:?}");
    }
}
