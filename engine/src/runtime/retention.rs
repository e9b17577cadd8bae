//! Retention: finished runs are deleted in the background once they are older than the flow's
//! `max_age` or beyond its newest `max_runs`, with their events and step records; expired dedupe
//! keys are forgotten, expired storage entries (which already count as absent) are deleted, and
//! the audit record and the hook logs are kept within their own age and count.
//! Deletion goes in small batches, so ingest never waits long behind it.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::Engine;
use crate::model::Timestamp;
use crate::store::{LogKind, PruneLogs};
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
    /// Audit record and hook log entries older than this are deleted.
    pub log_max_age: Duration,
    /// At most this many audit record entries are kept (the newest).
    pub audit_max_entries: usize,
    /// At most this many hook log entries are kept per flow (the newest).
    pub hook_log_max_entries: usize,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(14 * 24 * 3600),
            max_runs: 10_000,
            every: Duration::from_secs(60),
            log_max_age: Duration::from_secs(90 * 24 * 3600),
            audit_max_entries: 100_000,
            hook_log_max_entries: 1_000,
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
    /// Audit record and hook log entries deleted.
    pub log_entries: usize,
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
                    log_entries = swept.log_entries,
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
        let logs_older_than = Timestamp(
            now.millis()
                .saturating_sub(defaults.log_max_age.as_millis() as i64),
        );
        for (kind, keep) in [
            (LogKind::Audit, defaults.audit_max_entries),
            (LogKind::Hooks, defaults.hook_log_max_entries),
        ] {
            let prune = PruneLogs {
                kind,
                older_than: logs_older_than,
                keep,
                max: BATCH,
            };
            swept.log_entries += in_batches(|| store.prune_logs(&prune)).await?;
        }
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use serde_json::json;

    use super::RetentionConfig;
    use crate::model::Timestamp;
    use crate::outbound::{HttpClient, OutboundPolicy};
    use crate::runtime::catalog::Catalog;
    use crate::runtime::{Engine, EngineConfig};
    use crate::steps::Registry;
    use crate::store::sled::SledStore;
    use crate::store::{LogEntry, LogName, LogQuery, Store};

    const DAY: i64 = 24 * 3600 * 1000;

    #[tokio::test]
    async fn a_sweep_keeps_the_logs_within_their_age_and_count() {
        let store: Arc<dyn Store> = Arc::new(SledStore::temporary().unwrap());
        let config = EngineConfig {
            retention: RetentionConfig {
                log_max_age: Duration::from_secs(10 * 24 * 3600),
                audit_max_entries: 3,
                hook_log_max_entries: 2,
                ..RetentionConfig::default()
            },
            ..EngineConfig::default()
        };
        let http = HttpClient::new(OutboundPolicy::default()).unwrap();
        let engine = Engine::new(
            store.clone(),
            Catalog::new(Registry::builtin()),
            http,
            config,
        );
        let now = Timestamp(100 * DAY);
        // Day 80 is too old; days 95..=99 are young, but only the newest 3 (audit) or 2 (hooks) stay.
        let entries: Vec<LogEntry> = [80, 95, 96, 97, 98, 99]
            .into_iter()
            .map(|day| LogEntry::new(Timestamp(day * DAY), "x", json!({ "day": day })))
            .collect();
        let hooks = LogName::Hooks("orders".parse().unwrap());
        store.append_log(&LogName::Audit, &entries).await.unwrap();
        store.append_log(&hooks, &entries).await.unwrap();

        let swept = engine.sweep(now).await.unwrap();
        assert_eq!(swept.log_entries, 3 + 4);
        let days = |log: LogName| {
            let store = store.clone();
            async move {
                let query = LogQuery {
                    limit: 10,
                    ..LogQuery::default()
                };
                let page = store.read_log(&log, &query).await.unwrap();
                page.entries
                    .iter()
                    .map(|e| e.detail["day"].as_i64().unwrap())
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(days(LogName::Audit).await, [99, 98, 97]);
        assert_eq!(days(hooks).await, [99, 98]);
    }
}
