//! Keeps the queue table's dead rows few: every queue item is inserted, leased (updated) and
//! deleted within seconds, and each claim scans its indexes from the oldest due item, where the
//! entries of items already claimed or finished lie until a VACUUM removes them. Autovacuum looks
//! at a table at most once a minute (its default `autovacuum_naptime`), so under load every
//! claim would step over a minute's worth of such entries; instead each node vacuums the queue
//! itself once enough of it has changed.
//!
//! Invariants:
//! - At most one VACUUM per node at a time (one task), and nodes never wait on each other's:
//!   `SKIP_LOCKED` skips the table while another node vacuums it.
//! - Vacuuming changes no row a reader can see; a failed one is logged and tried again later.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;

/// How often the task looks at how much the queue changed.
const EVERY: Duration = Duration::from_secs(1);

/// Queue rows changed (claimed or finished) since the last VACUUM that make the next one worth it.
const AFTER_CHANGES: u64 = 1_000;

/// Counts queue changes and the vacuums they led to.
#[derive(Default)]
pub(super) struct QueueChanges {
    since_vacuum: AtomicU64,
    vacuums: AtomicU64,
}

impl QueueChanges {
    /// Counts `n` queue rows changed.
    pub(super) fn changed(&self, n: usize) {
        self.since_vacuum.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// How many times this node vacuumed the queue.
    pub(super) fn vacuums(&self) -> u64 {
        self.vacuums.load(Ordering::Relaxed)
    }
}

/// Vacuums the queue table whenever enough of it changed, until the task is aborted.
pub(super) async fn tidy_forever(pool: Pool, changes: Arc<QueueChanges>) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let changed = changes.since_vacuum.load(Ordering::Relaxed);
        if changed < AFTER_CHANGES {
            continue;
        }
        let vacuumed = match pool.get().await {
            Ok(client) => client
                .batch_execute("VACUUM (SKIP_LOCKED) hookflow.queue")
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match vacuumed {
            Ok(()) => {
                changes.since_vacuum.fetch_sub(changed, Ordering::Relaxed);
                changes.vacuums.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(error = %e, "could not vacuum the queue table; trying again"),
        }
    }
}
