//! Run updates: decided and encoded before their transaction, and written together with the
//! updates other workers made meanwhile (group commit).

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use ::sled::transaction::{Transactional, TransactionalTree};
use ::sled::{IVec, Tree};

use super::fresh::FreshRun;
use super::layout::{
    abort, decode, encode, flow_key, queue_key, record_key, tx_error, TreeName, TxResult,
};
use super::SledStore;
use crate::ids::{ItemId, RunId};
use crate::model::{Run, Timestamp};
use crate::store::{Decide, NodeId, Result, RunUpdate, StoreError};

/// The lease end and owner of an item an update takes for its caller.
type Taker = (Timestamp, NodeId);

/// What an `update_run` transaction wrote.
#[derive(Debug, Default)]
pub(super) struct Written {
    /// The run as written (or as it was).
    pub(super) run: Option<Run>,
    /// The keys of the items it queued (not counting those the caller takes).
    pub(super) queued: Vec<IVec>,
    /// Items the caller takes: id, queue key, lease end and owner.
    pub(super) taken: Vec<(ItemId, IVec, Timestamp, NodeId)>,
    /// The keys of the items a fresh run brought, written with it (queued unless leased).
    pub(super) created: Vec<IVec>,
}

/// Marks a run as being written (`Leases::writing`) for as long as it lives.
pub(super) struct Writing<'a> {
    store: &'a SledStore,
    run_id: RunId,
}

impl<'a> Writing<'a> {
    pub(super) fn start(store: &'a SledStore, run_id: RunId) -> Self {
        *store.leases().writing.entry(run_id).or_default() += 1;
        Self { store, run_id }
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        let mut leases = self.store.leases();
        if let Some(n) = leases.writing.get_mut(&self.run_id) {
            *n -= 1;
            if *n == 0 {
                leases.writing.remove(&self.run_id);
            }
        }
    }
}

/// A run update waiting to be written with others in one transaction (`UpdateBatches`).
pub(super) struct PendingUpdate {
    pub(super) run_key: [u8; 16],
    /// The queue key of the item the update finishes.
    pub(super) done_key: Option<IVec>,
    /// The run as read before the transaction and the update decided on it (`None`: no run).
    pub(super) ahead: Option<(IVec, Prepared)>,
    /// The fresh run `ahead` was read from, written with the update unless the trees hold it
    /// by then.
    pub(super) fresh: Option<Arc<FreshRun>>,
}

/// What became of an update written in a batch.
pub(super) enum Batched {
    Written(Box<Written>),
    /// The run changed after it was read: nothing was written for this update.
    Changed,
    Failed(StoreError),
}

/// Group commit of run updates: concurrent `update_run` calls are written in one sled transaction.
///
/// sled 0.34 rolls its log buffer on every transaction (a write and `sync_file_range` on its
/// thread pool, which also wakes a thread), and each transaction holds the process-wide lock that
/// every read waits for: one transaction for many runs costs about what one for a single run
/// does. A caller queues its update, then either finds it written by the caller that held the
/// turn before, or takes the turn and writes every update queued so far, its own included. Nothing
/// waits for more updates to arrive: a batch is whatever queued while the previous one was being
/// written.
#[derive(Default)]
pub(super) struct UpdateBatches {
    /// Queued updates, each with where its outcome goes.
    pub(super) queued: Mutex<Vec<(PendingUpdate, tokio::sync::oneshot::Sender<Batched>)>>,
    /// Held by the caller writing a batch.
    turn: tokio::sync::Mutex<()>,
}

impl fmt::Debug for UpdateBatches {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let queued = self.queued.lock().map_or(0, |q| q.len());
        f.debug_struct("UpdateBatches")
            .field("queued", &queued)
            .finish()
    }
}

impl UpdateBatches {
    /// Queues `pending` and returns its outcome once a batch holding it is written by `write`.
    pub(super) async fn commit(
        &self,
        pending: PendingUpdate,
        write: impl FnOnce(&[PendingUpdate]) -> Vec<Batched>,
    ) -> Batched {
        let (reply, mut outcome) = tokio::sync::oneshot::channel();
        self.queued
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((pending, reply));
        let _turn = tokio::select! {
            biased;
            done = &mut outcome => return done.unwrap_or_else(|_| stopped()),
            turn = self.turn.lock() => turn,
        };
        if let Ok(done) = outcome.try_recv() {
            return done;
        }
        let (batch, replies): (Vec<_>, Vec<_>) =
            std::mem::take(&mut *self.queued.lock().unwrap_or_else(PoisonError::into_inner))
                .into_iter()
                .unzip();
        for (reply, done) in replies.into_iter().zip(write(&batch)) {
            let _ = reply.send(done);
        }
        outcome.try_recv().unwrap_or_else(|_| stopped())
    }
}

/// The outcome of an update whose batch was never written (the writer panicked).
fn stopped() -> Batched {
    Batched::Failed(StoreError::unavailable_because(
        "a batch of run updates was dropped before it was written",
    ))
}

/// A run update decided on one stored value of the run, with everything it writes encoded.
pub(super) struct Prepared {
    /// The run as stored.
    current: Run,
    /// The decision and its encoded values; `None` when the decision is to write nothing.
    update: Option<EncodedUpdate>,
}

/// A [`RunUpdate`] with its values as the trees take them.
struct EncodedUpdate {
    update: RunUpdate,
    run: Vec<u8>,
    /// Step records: key and value.
    records: Vec<(Vec<u8>, Vec<u8>)>,
    /// New items: id, queue key, value, and lease end for the items the caller takes.
    items: Vec<(ItemId, IVec, Vec<u8>, Option<Taker>)>,
}

impl Prepared {
    /// Decodes the stored run, calls `decide` on it and encodes the outcome.
    pub(super) fn new(run_id: RunId, stored: &[u8], decide: Decide<'_>) -> Result<Self> {
        let current: Run = decode(TreeName::Runs, &run_id.to_bytes(), stored)?;
        let Some(update) = decide(current.clone()) else {
            return Ok(Self {
                current,
                update: None,
            });
        };
        if update.run.id != run_id {
            return Err(StoreError::Conflict(format!(
                "update_run: the decision changed the run id from {run_id} to {}",
                update.run.id
            )));
        }
        let run = encode(TreeName::Runs, &run_id, &update.run)?;
        let records = update
            .records
            .iter()
            .map(|record| {
                let what = format!("{} {}", record.run_id, record.step_id);
                let value = encode(TreeName::StepRecords, &what, record)?;
                Ok((record_key(record.run_id, &record.step_id), value))
            })
            .collect::<Result<_>>()?;
        let taken = update.take.iter().flat_map(|take| {
            take.items
                .iter()
                .map(|item| (item, Some((take.until, take.owner.clone()))))
        });
        let items = update
            .enqueue
            .iter()
            .map(|item| (item, None))
            .chain(taken)
            .map(|(item, until)| {
                let value = encode(TreeName::Queue, &item.id, item)?;
                Ok((item.id, IVec::from(queue_key(item)), value, until))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            current,
            update: Some(EncodedUpdate {
                update,
                run,
                records,
                items,
            }),
        })
    }

    /// Writes the update in a transaction (the finished item is removed by the caller).
    fn write(
        &self,
        run_key: &[u8],
        runs: &TransactionalTree,
        by_flow: &TransactionalTree,
        records: &TransactionalTree,
        queue: &TransactionalTree,
    ) -> TxResult<Written> {
        let mut written = Written::default();
        let Some(encoded) = &self.update else {
            written.run = Some(self.current.clone());
            return Ok(written);
        };
        let run = &encoded.update.run;
        if run.flow_id != self.current.flow_id {
            by_flow.remove(flow_key(&self.current.flow_id, run_key))?;
            by_flow.insert(flow_key(&run.flow_id, run_key), IVec::default())?;
        }
        runs.insert(run_key, encoded.run.as_slice())?;
        for (key, value) in &encoded.records {
            records.insert(key.as_slice(), value.as_slice())?;
        }
        for (id, key, value, until) in &encoded.items {
            queue.insert(key.clone(), value.as_slice())?;
            match until {
                Some((until, owner)) => {
                    written
                        .taken
                        .push((*id, key.clone(), *until, owner.clone()));
                }
                None => written.queued.push(key.clone()),
            }
        }
        written.run = Some(run.clone());
        Ok(written)
    }
}

impl SledStore {
    /// The trees a run update writes (the last two: a fresh run's dedupe key).
    fn update_trees(&self) -> (&Tree, &Tree, &Tree, &Tree, &Tree, &Tree, &Tree) {
        (
            &self.new_runs.runs,
            &self.new_runs.runs_by_flow,
            &self.step_records,
            &self.new_runs.queue,
            &self.new_runs.events,
            &self.new_runs.dedupe,
            &self.new_runs.dedupe_expiry,
        )
    }

    /// Writes a batch of updates decided ahead in one transaction; an update whose run changed
    /// since it was read is left out (`Changed`: its caller decides again).
    pub(super) fn write_batch(&self, batch: &[PendingUpdate]) -> Vec<Batched> {
        let written = self
            .update_trees()
            .transaction(|(runs, by_flow, records, queue, events, dedupe, expiry)| {
                let mut out = Vec::with_capacity(batch.len());
                for pending in batch {
                    let stored = runs.get(pending.run_key)?;
                    let fresh = pending.fresh.as_ref().filter(|_| stored.is_none());
                    let unchanged = match (&pending.ahead, &stored) {
                        (Some((read, _)), Some(stored)) => read == stored,
                        (Some(_), None) => fresh.is_some(),
                        (None, None) => true,
                        (None, Some(_)) => false,
                    };
                    if !unchanged {
                        out.push(None);
                        continue;
                    }
                    // The finished item leaves the queue whatever the decision (even with no run).
                    if let Some(key) = &pending.done_key {
                        queue.remove(key)?;
                    }
                    let mut created = Vec::new();
                    if let Some(fresh) = fresh {
                        let done = pending.done_key.as_deref();
                        created = fresh.encoded.create(events, by_flow, queue, done)?;
                        runs.insert(&pending.run_key, fresh.encoded.run_value())?;
                        // Its key is held in memory (`PendingKeys`), so no other run has it.
                        if let Some(other) = fresh.encoded.take_key(dedupe, expiry)? {
                            tracing::error!(run_id = %fresh.run_id, holder = ?other, "a new run's dedupe key was taken by another run; the run is kept");
                        }
                    }
                    let mut written = match &pending.ahead {
                        Some((_, prepared)) => {
                            prepared.write(&pending.run_key, runs, by_flow, records, queue)?
                        }
                        None => Written::default(),
                    };
                    written.created = created;
                    out.push(Some(written));
                }
                Ok(out)
            })
            .map_err(tx_error("update_run", TreeName::Runs));
        match written {
            Ok(out) => out
                .into_iter()
                .map(|w| w.map_or(Batched::Changed, |w| Batched::Written(Box::new(w))))
                .collect(),
            Err(e) => batch
                .iter()
                .map(|_| Batched::Failed(StoreError::unavailable_because(e.to_string())))
                .collect(),
        }
    }

    /// Updates one run in a transaction of its own, deciding inside it.
    pub(super) fn update_alone(
        &self,
        run_id: RunId,
        done_key: Option<&IVec>,
        decide: Decide<'_>,
    ) -> Result<Written> {
        let run_key = run_id.to_bytes();
        self.update_trees()
            .transaction(|(runs, by_flow, records, queue, ..)| -> TxResult<Written> {
                // The finished item leaves the queue whatever the decision (even with no run).
                if let Some(key) = done_key {
                    queue.remove(key)?;
                }
                let Some(stored) = runs.get(run_key)? else {
                    return Ok(Written::default());
                };
                // sled may run this closure again on a conflict: `decide` is pure by contract.
                let prepared = Prepared::new(run_id, &stored, decide).map_err(abort)?;
                prepared.write(&run_key, runs, by_flow, records, queue)
            })
            .map_err(tx_error("update_run", TreeName::Runs))
    }
}
