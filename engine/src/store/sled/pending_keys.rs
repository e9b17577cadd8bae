//! Dedupe keys of new runs appended to the inbox and not yet written to the trees.
//!
//! A run with a dedupe key goes through the inbox like any other (one fsynced append; claimed
//! from memory and written by its first update, or written by the promoter) instead of a
//! transaction and a flush of its own. Until its run is in the trees, its key is only here: an
//! ingest checks this map and the `dedupe` tree under the map's lock, so a key is always in one
//! or the other, and two deliveries of one event cannot both start a run. A repeated delivery
//! that finds the original still being appended waits for that append: it is answered as a
//! duplicate only once the original is on disk, or becomes the original itself if the append
//! failed. At open, the keys of the records the promoter has yet to read again are held before
//! anything is ingested ([`hold_unpromoted`]); the promoter releases each once its run is in the
//! trees, also when the trees held it already.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;

use super::new_runs::EncodedRun;
use crate::ids::{EventId, RunId};
use crate::model::Timestamp;
use crate::store::inbox::Reader;

/// At most this many keys wait here; beyond it a run with a dedupe key is written to the trees
/// directly (and flushed), so a large backlog costs no memory.
pub(super) const MAX_PENDING: usize = 20_000;

/// The run that holds a dedupe key it took at ingest.
#[derive(Debug, Clone)]
pub(super) struct PendingKey {
    pub(super) event_id: EventId,
    pub(super) run_id: RunId,
    /// When the key stops counting (against the arrival of a later event).
    pub(super) expires_at: Timestamp,
    /// Becomes `true` once the run's inbox record is on disk; closed without that if the append
    /// failed.
    pub(super) durable: watch::Receiver<bool>,
}

/// The append of a run that took a key, settled however its ingest ends: once on disk, the key's
/// repeats are answered as duplicates; if it failed, the key is released. The ingest awaits it
/// ([`Settling::wait`]); if the ingest is dropped first (a client gone, a step's timeout), a task
/// of its own settles it, so a repeat never takes the key of a record that is on disk.
pub(super) struct Settling {
    on_disk: Option<Pin<Box<dyn Future<Output = io::Result<()>> + Send>>>,
    durable: Option<watch::Sender<bool>>,
    key: Vec<u8>,
    run_id: RunId,
    keys: Arc<PendingKeys>,
}

impl Settling {
    /// Settles the append `on_disk` of `run_id`, which holds `key` in `keys`.
    pub(super) fn new(
        on_disk: impl Future<Output = io::Result<()>> + Send + 'static,
        durable: watch::Sender<bool>,
        key: &[u8],
        run_id: RunId,
        keys: Arc<PendingKeys>,
    ) -> Self {
        Self {
            on_disk: Some(Box::pin(on_disk)),
            durable: Some(durable),
            key: key.to_vec(),
            run_id,
            keys,
        }
    }

    /// Waits for the append and settles the key.
    pub(super) async fn wait(mut self) -> io::Result<()> {
        let appended = match self.on_disk.as_mut() {
            Some(on_disk) => on_disk.await,
            None => Ok(()),
        };
        self.on_disk = None;
        self.settle(&appended);
        appended
    }

    fn settle(&mut self, appended: &io::Result<()>) {
        match appended {
            Ok(()) => {
                if let Some(durable) = self.durable.take() {
                    durable.send_replace(true);
                }
            }
            Err(_) => self.keys.release(&self.key, self.run_id),
        }
    }
}

impl Drop for Settling {
    fn drop(&mut self) {
        let Some(on_disk) = self.on_disk.take() else {
            return;
        };
        let mut rest = Settling {
            on_disk: None,
            durable: self.durable.take(),
            key: std::mem::take(&mut self.key),
            run_id: self.run_id,
            keys: self.keys.clone(),
        };
        let settle = async move {
            let appended = on_disk.await;
            rest.settle(&appended);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(settle)),
            // Dropped outside a runtime: wait for the writer's answer on a thread of its own.
            Err(_) => drop(std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().build();
                if let Ok(runtime) = runtime {
                    runtime.block_on(settle);
                }
            })),
        }
    }
}

/// The keys (the `dedupe` tree's keys) of runs in the inbox and not in the trees yet.
#[derive(Debug, Default)]
pub(super) struct PendingKeys {
    keys: Mutex<HashMap<Vec<u8>, PendingKey>>,
}

impl PendingKeys {
    /// The map, locked: whoever decides whether a key is taken holds it while checking the trees.
    pub(super) fn lock(&self) -> MutexGuard<'_, HashMap<Vec<u8>, PendingKey>> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Holds the key of a run whose record is on disk in the inbox (read again after a restart).
    pub(super) fn hold_durable(
        &self,
        key: &[u8],
        event_id: EventId,
        run_id: RunId,
        expires_at: Timestamp,
    ) {
        let (_, durable) = watch::channel(true);
        let held = PendingKey {
            event_id,
            run_id,
            expires_at,
            durable,
        };
        self.lock().insert(key.to_vec(), held);
    }

    /// Forgets `key` if `run_id` holds it: its run is in the trees now (or was never stored).
    pub(super) fn release(&self, key: &[u8], run_id: RunId) {
        let mut keys = self.lock();
        if keys.get(key).is_some_and(|p| p.run_id == run_id) {
            keys.remove(key);
        }
    }
}

/// Holds the dedupe keys of the inbox records from `reader`'s position on (those not promoted
/// before a restart), so that a repeated delivery cannot start a second run before the promoter
/// has written them. Reads every such record once; answers how many keys it holds.
pub(super) fn hold_unpromoted(reader: &Reader, keys: &PendingKeys) -> std::io::Result<usize> {
    let mut reader = reader.fork();
    let mut held = 0;
    loop {
        let (records, _) = reader.read(1024)?;
        if records.is_empty() {
            return Ok(held);
        }
        for record in records {
            let number = record.number;
            if !EncodedRun::carries_dedupe(&record.payload) {
                continue;
            }
            let run = EncodedRun::from_record(&record.payload).and_then(|run| {
                let ids = (run.event_id(), run.run_id());
                match (run.dedupe(), ids) {
                    (Some((key, expires_at, _)), (Ok(event_id), Ok(run_id))) => {
                        keys.hold_durable(key, event_id, run_id, expires_at);
                        Ok(())
                    }
                    _ => Err("no dedupe key or ids".to_owned()),
                }
            });
            match run {
                Ok(()) => held += 1,
                // The promoter reports it again when it reads the record.
                Err(e) => {
                    tracing::warn!(record = number, error = %e, "an inbox record cannot be read")
                }
            }
        }
    }
}
