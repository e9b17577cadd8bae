//! Retention: finished runs are deleted in the background once they are older than the flow's
//! `max_age` or beyond its newest `max_runs`, with their events and step records; expired dedupe
//! keys are forgotten, and expired storage entries (which already count as absent) are deleted.
//! Deletion goes in small batches, so ingest never waits long behind it.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::Engine;
use crate::model::Timestamp;
use crate::Result;

/// How many runs (or keys) one store call deletes before the sweeper yields.
const BATCH: usize = 1000;

/// The server-wide retention defaults; a flow's `retention:` overrides them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionConfig {
    /// Finished runs older than this are deleted.
    pub max_age: Duration,
    /// At most this many finished runs are kept per flow (the newest).
    pub max_runs: usize,
    /// How often the sweeper runs.
    pub every: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(14 * 24 * 3600),
            max_runs: 10_000,
            every: Duration::from_secs(60),
        }
    }
}

/// What one sweep deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Runs deleted (with their events and step records).
    pub runs: usize,
    /// Expired dedupe keys forgotten.
    pub dedupe_keys: usize,
    /// Expired storage entries deleted.
    pub storage_entries: usize,
}

/// Sweeps every `every` until the task is aborted.
pub(super) async fn sweep_forever(engine: Arc<Engine>) {
    let every = engine.config.retention.every;
    loop {
        let at = engine.now().plus(every);
        engine.config.clock.sleep_until(at).await;
        match engine.sweep(engine.now()).await {
            Ok(swept) if swept != Swept::default() => {
                info!(
                    runs = swept.runs,
                    dedupe_keys = swept.dedupe_keys,
                    storage_entries = swept.storage_entries,
                    "retention: pruned history"
                )
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "retention: pruning failed; trying again later"),
        }
    }
}

impl Engine {
    /// Deletes what retention no longer keeps, as of `now`.
    pub async fn sweep(&self, now: Timestamp) -> Result<Swept> {
        let defaults = self.config.retention;
        let store = self.store();
        let mut swept = Swept::default();
        for flow_id in store.flows_with_runs().await? {
            let own = self
                .catalog()
                .current(&flow_id)
                .map(|f| f.retention)
                .unwrap_or_default();
            let max_age = own.max_age.unwrap_or(defaults.max_age);
            let keep = own.max_runs.unwrap_or(defaults.max_runs);
            let older_than = Timestamp(now.millis().saturating_sub(max_age.as_millis() as i64));
            loop {
                let n = store.prune_runs(&flow_id, older_than, keep, BATCH).await?;
                swept.runs += n;
                if n < BATCH {
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
        swept.dedupe_keys = in_batches(|| store.expire_dedupe(now, BATCH)).await?;
        swept.storage_entries = in_batches(|| store.expire_storage(now, BATCH)).await?;
        Ok(swept)
    }
}

/// Calls `delete` (which deletes up to [`BATCH`]) until it deletes less than a batch, yielding
/// between batches; how many it deleted.
async fn in_batches<F, Fut>(delete: F) -> crate::store::Result<usize>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = crate::store::Result<usize>>,
{
    let mut total = 0;
    loop {
        let n = delete().await?;
        total += n;
        if n < BATCH {
            return Ok(total);
        }
        tokio::task::yield_now().await;
    }
}
