//! Writes the logs kept in the store (the audit record, the hook logs) off the request path.
//!
//! A handler hands an entry to [`LogWriter::write`], which never waits and never fails: the entry
//! goes into a bounded channel, and one task appends what has gathered to the store in a batch
//! per log. So a slow or failing store never slows an acknowledgement or turns a successful
//! action into an error. Invariants: memory is bounded (at most [`CAPACITY`] entries wait; one
//! more is dropped and counted); every entry is either written, dropped (counted) or failed
//! (logged and counted); entries reach the store within moments, in the order they were given.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hookflow_engine::runtime::Engine;
use hookflow_engine::store::{LogEntry, LogName};
use tokio::sync::mpsc;

/// How many entries may wait for the store.
const CAPACITY: usize = 10_000;
/// The most entries one append carries.
const BATCH: usize = 256;

/// What became of the entries given to the writer, for `/metrics`.
#[derive(Debug, Default)]
pub struct LogWrites {
    /// Appended to the store.
    pub written: AtomicU64,
    /// Not kept: too many were waiting.
    pub dropped: AtomicU64,
    /// The store refused them (logged).
    pub failed: AtomicU64,
}

/// Hands log entries to the task that appends them to the store.
#[derive(Clone)]
pub struct LogWriter {
    queue: mpsc::Sender<(LogName, LogEntry)>,
    writes: Arc<LogWrites>,
}

impl LogWriter {
    /// Starts the writing task on the engine's store; it ends once every writer is dropped and
    /// what they gave is written (the handle says when).
    pub fn start(engine: Arc<Engine>) -> (Self, tokio::task::JoinHandle<()>) {
        let (queue, entries) = mpsc::channel(CAPACITY);
        let writes = Arc::new(LogWrites::default());
        let task = tokio::spawn(write_all(engine, entries, writes.clone()));
        (Self { queue, writes }, task)
    }

    /// Queues an entry for `log`; never waits.
    pub fn write(&self, log: LogName, entry: LogEntry) {
        if self.queue.try_send((log, entry)).is_err() {
            self.writes.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("a log entry was dropped: too many wait for the store");
        }
    }

    /// What became of the entries so far.
    pub fn writes(&self) -> &LogWrites {
        &self.writes
    }
}

async fn write_all(
    engine: Arc<Engine>,
    mut entries: mpsc::Receiver<(LogName, LogEntry)>,
    writes: Arc<LogWrites>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while entries.recv_many(&mut batch, BATCH).await > 0 {
        // One append per log, in the order the entries came.
        let mut logs: Vec<(LogName, Vec<LogEntry>)> = Vec::new();
        for (log, entry) in batch.drain(..) {
            match logs.iter_mut().find(|(l, _)| *l == log) {
                Some((_, list)) => list.push(entry),
                None => logs.push((log, vec![entry])),
            }
        }
        for (log, list) in logs {
            let n = list.len() as u64;
            match engine.store().append_log(&log, &list).await {
                Ok(()) => writes.written.fetch_add(n, Ordering::Relaxed),
                Err(e) => {
                    tracing::error!(error = %e, %log, entries = n, "could not write log entries to the store; they are lost");
                    writes.failed.fetch_add(n, Ordering::Relaxed)
                }
            };
        }
    }
}
