//! Acknowledgments that share one fsync.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::store::Result;

/// Group commit: concurrent callers that need their writes on disk share one fsync.
///
/// Each caller takes a ticket *after* its write is applied (the sled call returned, so the write
/// is in sled's log buffer). A flush covers every write applied before the flush starts. So:
/// 1. A caller whose ticket is at most `flushed` is done: a flush that started after its ticket
///    was taken has completed.
/// 2. Otherwise it takes the `flushing` mutex (one flush at a time), and checks again: the flush it
///    waited for may have covered it.
/// 3. Still not covered: it reads `requested` as the target *before* flushing. Every ticket up to
///    the target was taken before that read, hence after its write was applied, hence before the
///    flush starts: the flush covers them all. After the flush succeeds it publishes the target.
///
/// A caller never returns before a flush that began after its write, so a 2xx never precedes the
/// fsync that covers the event. With N concurrent callers there are at most two flushes: the one
/// in progress when they arrive, and one for all of them. A failed flush publishes nothing: its
/// caller gets the error (and answers 5xx); the next waiter flushes again. A caller dropped
/// mid-flush (client gone) releases the mutex; the next waiter flushes again.
#[derive(Debug, Default)]
pub(super) struct GroupCommit {
    /// Tickets taken so far: one per write that must become durable.
    pub(super) requested: AtomicU64,
    /// Every ticket up to this one is covered by a completed flush.
    pub(super) flushed: AtomicU64,
    /// Held by the caller running a flush.
    flushing: tokio::sync::Mutex<()>,
}

impl GroupCommit {
    /// Returns once a flush (`flush`) that started after this call has completed, running one if
    /// needed. Call it after the write is applied.
    pub(super) async fn wait_durable<F, Fut>(&self, flush: F) -> Result<()>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        let ticket = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        if self.flushed.load(Ordering::SeqCst) >= ticket {
            return Ok(());
        }
        let _flushing = self.flushing.lock().await;
        if self.flushed.load(Ordering::SeqCst) >= ticket {
            return Ok(());
        }
        let target = self.requested.load(Ordering::SeqCst);
        flush().await?;
        self.flushed.fetch_max(target, Ordering::SeqCst);
        tracing::trace!(target, ticket, "group commit flushed");
        Ok(())
    }
}
