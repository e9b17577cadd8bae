//! The sled backend: hookflow's embedded default store, for one node.
//!
//! # Layout
//!
//! One sled tree per kind of record, under a fixed name (`TreeName`). A name, once retired, is
//! never reused, so an old database can never be misread by a newer binary. Keys are built so that
//! the queries the runtime makes are range scans; values are JSON (simple and debuggable), and
//! those of `events`, `runs` and `step_records` are zstd-compressed against a dictionary of
//! hookflow's record skeletons (`packed.rs`), which divides what a run keeps on disk by 2.5.
//!
//! | tree           | key                                                  | value                    |
//! |----------------|------------------------------------------------------|--------------------------|
//! | `events`       | event id (16 bytes)                                  | [`Event`]                |
//! | `runs`         | run id (16 bytes: byte order is creation order)      | [`Run`]                  |
//! | `runs_by_flow` | flow id, `0x00`, run id                              | empty (an index)         |
//! | `step_records` | run id, step id                                      | [`StepRecord`]           |
//! | `flow_queue`   | flow id, `0x00`, `due_at` (u64 big-endian ms; before 1970 as 0), item id | [`QueueItem`] |
//! | `leases`       | item id (retired: read once at open, see below)     | lease end + [`QueueItem`] |
//! | `hook_tokens`  | flow id                                              | token (a JSON string)    |
//! | `revisions`    | flow id, `0x00`, revision                            | source (a JSON string)   |
//! | `dedupe`       | flow id, `0x00`, dedupe key                          | [`DedupeEntry`]          |
//! | `dedupe_expiry`| expiry (u64 big-endian ms), flow id, `0x00`, dedupe key | empty (an index)      |
//! | `state`        | a runtime state key (`pacing:hubspot:…`)             | JSON value               |
//!
//! Flow ids are validated names (letters, digits, `_`, `-`), so they never contain `0x00` and the
//! separator keeps one flow's prefix from matching another's. Ids are ULIDs, whose bytes sort by
//! time, so "newest first" is a reverse scan and a time window is a key range.
//!
//! The queue is kept per flow: a claim visits each flow that has queued items (found by seeking
//! from one flow prefix to the next) and shares its limit between them, so a large backlog of one
//! flow does not delay another flow's events, and a flow's concurrency limit is applied without
//! scanning past its items.
//!
//! # Atomicity
//!
//! Every change that touches more than one record is one multi-tree sled transaction: ingest (event,
//! run, index, items) and update (run, records, new items, removal of the finished item). sled 0.34
//! runs transactions under a process-wide lock that also excludes plain reads and writes, so a
//! transaction sees a stable state; a transaction is also recovered all-or-nothing after a crash.
//! So little happens inside one: an update is decided and encoded on the run as read before it
//! (`Prepared`), and the transaction only checks that the stored run is still that value (if not,
//! the update is decided again inside a transaction of its own). Concurrent updates of different
//! runs share one transaction (`UpdateBatches`, a group commit): each stays all-or-nothing, and
//! sled's per-transaction cost (a log buffer roll, the exclusive lock) is paid once per batch.
//! Invariants kept:
//! - a queue item stays in the queue tree until the update that finishes it removes it;
//! - every run has exactly one `runs_by_flow` entry (written in the same transaction as the run).
//!
//! # Leases
//!
//! A sled database is open in one process at a time, so a lease cannot outlive the process holding
//! it: leases are kept in memory (`Leases`), and claiming writes nothing. A leased item stays in
//! the queue tree, skipped by claims; the update that finishes it removes it in its transaction and
//! then forgets the lease. When the process stops or crashes, its leases end with it and the items
//! are due again, which is what `requeue_expired(far future)` at start-up asks for. Items a worker
//! takes for itself in an update (`RunUpdate::take`) are written to the queue tree and marked
//! leased after the transaction; while an update of a run is being written, claims skip that run's
//! items, so none is claimed in between. Earlier versions kept leases in a `leases` tree: whatever
//! it holds is moved back to the queue at open.
//!
//! # Durability
//!
//! sled buffers writes and flushes in the background (every 500 ms by default), and its flush is
//! slow and blocks transactions. So a new run without a dedupe key is not written to the trees at
//! ingest: it is appended to the **inbox** (`inbox.rs`, `DATA/inbox/`), an fsynced log with group
//! commit, and `ingest` returns once that append is on disk. A promoter thread moves inbox records
//! into the trees in order, a batch per transaction, writing the number of the last record moved
//! (`state` key `inbox:promoted`) in the same transaction; it pauses while the queue holds
//! [`PROMOTE_WINDOW`] items, so a large backlog waits in the inbox on disk instead of in sled's
//! memory. A run is readable (and claimable) once promoted, normally a few milliseconds after its
//! acknowledgment. After a crash the promoter resumes after the last number the trees hold; an
//! inbox segment is deleted only after a flush that covers the records moved from it.
//!
//! A new run with a dedupe key is checked against the `dedupe` tree and written there directly,
//! then waits for a flush and fsync (`GroupCommit`, concurrent callers share one), as does
//! `hook_token`, `put_revision` and `put_state`. A hook token already known to be on disk is
//! answered from memory. Other writes become durable with the next flush, whoever triggers it:
//! losing one in a crash only repeats work (the finished item is still leased and gets requeued),
//! never loses an acknowledged event.
//!
//! What sled 0.34's flush guarantees: on Linux it writes each log buffer and syncs it with
//! `sync_file_range`, which survives a process crash (`kill -9`) but does not flush the drive's
//! write cache or file metadata. So after sled's flush the group commit also calls `fsync` on the
//! log file (`db`), as sled's own background flusher does. Values larger than a quarter of a
//! segment are written as separate blob files that sled never syncs; the segment size is raised to
//! [`SEGMENT_SIZE`] so that events up to the catch hooks' largest accepted body (1 MiB) stay in
//! the log.
//!
//! sled calls are fast and blocking, and are made directly on the async task; only the flush runs
//! elsewhere (`flush_async`, on sled's own thread pool). While a flush syncs, sled's transactions
//! wait (they take a process-wide lock the flush also holds, shared), so a transaction can block
//! its worker thread for the length of an fsync.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use ::sled::transaction::{
    ConflictableTransactionError, ConflictableTransactionResult, TransactionError, Transactional,
    TransactionalTree,
};
use ::sled::{Config, Db, IVec, Tree};
use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::inbox::{Inbox, Reader, Record};
use super::packed;
use super::{
    Decide, FlowRoom, Ingested, NewRun, Result, RunPage, RunQuery, RunUpdate, Store, StoreError,
};
use crate::ids::{EventId, FlowId, ItemId, RunId, StepId};
use crate::model::{Event, QueueItem, Revision, Run, StepRecord, Timestamp};

/// Page size of `list_runs` when the query asks for 0 runs.
const DEFAULT_PAGE: usize = 50;
/// The most runs `list_runs` returns at once.
const MAX_PAGE: usize = 1000;
/// How many stored leases (left by an earlier version) one transaction moves back to the queue.
const REQUEUE_CHUNK: usize = 512;
/// How many runs (or dedupe keys) one pruning transaction deletes: small, so ingest never waits
/// long for sled's transaction lock.
const PRUNE_CHUNK: usize = 64;

/// The `state` key holding the number of the last inbox record moved into the trees.
const PROMOTED_KEY: &str = "inbox:promoted";
/// The promoter stops moving inbox records into the trees while the queue holds this many items:
/// beyond it, a backlog waits in the inbox, on disk, costing no memory.
const PROMOTE_WINDOW: i64 = 20_000;
/// How many inbox records one promotion transaction moves.
const PROMOTE_BATCH: usize = 64;

/// The sled trees, each under a fixed name.
///
/// Retired names (never reuse one): `queue` (a single queue keyed by due time, before queues
/// were kept per flow).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TreeName {
    Events,
    Runs,
    RunsByFlow,
    StepRecords,
    Queue,
    Leases,
    HookTokens,
    Revisions,
    Dedupe,
    DedupeExpiry,
    State,
}

impl TreeName {
    /// The tree's name in the database.
    const fn name(self) -> &'static str {
        match self {
            Self::Events => "events",
            Self::Runs => "runs",
            Self::RunsByFlow => "runs_by_flow",
            Self::StepRecords => "step_records",
            Self::Queue => "flow_queue",
            Self::Leases => "leases",
            Self::HookTokens => "hook_tokens",
            Self::Revisions => "revisions",
            Self::Dedupe => "dedupe",
            Self::DedupeExpiry => "dedupe_expiry",
            Self::State => "state",
        }
    }

    /// Whether the tree's values are packed (`packed.rs`): those of what a run keeps. The rest are
    /// small, or short-lived and read on every claim (the queue).
    const fn packs(self) -> bool {
        matches!(self, Self::Events | Self::Runs | Self::StepRecords)
    }
}

/// A taken dedupe key: the ids of the event that took it, and until when.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DedupeEntry {
    event_id: EventId,
    run_id: RunId,
    expires_at: Timestamp,
}

/// A leased queue item as earlier versions stored it in the `leases` tree: the item and when its
/// lease ends.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Lease {
    lease_until: Timestamp,
    item: QueueItem,
}

/// sled's log segment size. A value over a quarter of a segment becomes an unsynced blob file; 8 MiB
/// keeps values up to 2 MiB in the log (sled's default is 512 KiB).
pub const SEGMENT_SIZE: usize = 8 << 20;

/// The size of sled's page cache by default (sled's own default is 1 GiB). sled's accounting of it
/// is loose: measured resident memory grows by several times this much as the cache fills.
pub const DEFAULT_CACHE_BYTES: u64 = 16 << 20;

/// The sled settings every store opens with. sled refuses to reopen a database with another segment
/// size or compression setting, so those never change for an existing data directory; the cache
/// size may. Compression (zstd at its fastest level) stores about a third as much, at a cost in
/// throughput and memory (bench/RESULTS.md).
fn base_config(cache_bytes: u64, compression: bool) -> Config {
    Config::new()
        .segment_size(SEGMENT_SIZE)
        .cache_capacity(cache_bytes)
        .use_compression(compression)
        .compression_factor(1)
}

/// About how much smaller compression makes what sled stores (measured: 8.4 → 2.6 KB per run).
const COMPRESSION_RATIO: u64 = 3;

/// Whether the sled database in `path` was created compressed (`None`: no database there yet),
/// from the settings file sled keeps beside it.
fn stored_compression(path: &Path) -> Option<bool> {
    let settings = std::fs::read_to_string(path.join("conf")).ok()?;
    settings
        .lines()
        .find_map(|line| line.strip_prefix("use_compression: "))
        .and_then(|value| value.trim().parse().ok())
}

/// The sled-backed [`Store`].
#[derive(Debug)]
pub struct SledStore {
    db: Db,
    /// sled's log file, fsynced after each flush (`None` for a temporary store, which sled never syncs).
    log_file: Option<std::sync::Arc<std::fs::File>>,
    step_records: Tree,
    hook_tokens: Tree,
    revisions: Tree,
    commit: GroupCommit,
    /// The trees new runs go to (events, runs, index, queue, dedupe, state), shared with the
    /// promoter thread.
    new_runs: NewRunTrees,
    /// The inbox new runs without a dedupe key are appended to (`None` for a temporary store).
    inbox: Option<Inbox>,
    /// The number of the last inbox record moved into the trees.
    promoted: Arc<AtomicU64>,
    /// Tells the promoter thread to stop.
    stop: Arc<AtomicBool>,
    /// Hook tokens known to be on disk, by flow. Tokens never change once stored, so these are
    /// answered from memory (the catch path asks on every request).
    durable_tokens: Mutex<HashMap<FlowId, String>>,
    /// The queue items this process's workers hold.
    leases: Mutex<Leases>,
    /// Run updates waiting to be written together.
    batches: UpdateBatches,
}

/// The queue items leased to this process's workers, kept in memory: a sled database is open in
/// one process at a time, so a lease cannot outlive the process that holds it. A leased item stays
/// in the queue tree (claims skip it) until the update that finishes it removes it; when the
/// process ends, its leases end with it and the items are simply due. Claiming costs no write.
#[derive(Debug, Default)]
struct Leases {
    /// Leased items: their queue key and when the lease ends.
    items: HashMap<ItemId, (IVec, Timestamp)>,
    /// Runs an `update_run` is writing now (how many calls): their queued items are not claimed
    /// until it has marked the items it takes for its caller as leased.
    writing: HashMap<RunId, usize>,
}

impl Leases {
    /// Whether the item under this queue key (which ends in the item id) is leased.
    fn holds(&self, queue_key: &[u8]) -> bool {
        let id = queue_key.len().checked_sub(16).map(|at| &queue_key[at..]);
        id.and_then(id16)
            .is_some_and(|id| self.items.contains_key(&ItemId::from_bytes(id)))
    }
}

/// What an `update_run` transaction wrote.
#[derive(Debug, Default)]
struct Written {
    /// The run as written (or as it was).
    run: Option<Run>,
    /// How many items it queued (not counting those the caller takes).
    queued: i64,
    /// Items the caller takes: id, queue key, lease end.
    taken: Vec<(ItemId, IVec, Timestamp)>,
}

/// Marks a run as being written (`Leases::writing`) for as long as it lives.
struct Writing<'a> {
    store: &'a SledStore,
    run_id: RunId,
}

impl<'a> Writing<'a> {
    fn start(store: &'a SledStore, run_id: RunId) -> Self {
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
struct PendingUpdate {
    run_key: [u8; 16],
    /// The queue key of the item the update finishes.
    done_key: Option<IVec>,
    /// The run as read before the transaction and the update decided on it (`None`: no run).
    ahead: Option<(IVec, Prepared)>,
}

/// What became of an update written in a batch.
enum Batched {
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
struct UpdateBatches {
    /// Queued updates, each with where its outcome goes.
    queued: Mutex<Vec<(PendingUpdate, tokio::sync::oneshot::Sender<Batched>)>>,
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
    async fn commit(
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
    Batched::Failed(StoreError::Backend(
        "a batch of run updates was dropped before it was written".into(),
    ))
}

/// A run update decided on one stored value of the run, with everything it writes encoded.
struct Prepared {
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
    items: Vec<(ItemId, IVec, Vec<u8>, Option<Timestamp>)>,
}

impl Prepared {
    /// Decodes the stored run, calls `decide` on it and encodes the outcome.
    fn new(run_id: RunId, stored: &[u8], decide: Decide<'_>) -> Result<Self> {
        let current: Run = decode(TreeName::Runs, &run_id.to_bytes(), stored)?;
        let Some(update) = decide(current.clone()) else {
            return Ok(Self {
                current,
                update: None,
            });
        };
        if update.run.id != run_id {
            return Err(StoreError::Backend(format!(
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
        let taken = update
            .take
            .iter()
            .flat_map(|take| take.items.iter().map(|item| (item, Some(take.until))));
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
                Some(until) => written.taken.push((*id, key.clone(), *until)),
                None => written.queued += 1,
            }
        }
        written.run = Some(run.clone());
        Ok(written)
    }
}

impl SledStore {
    /// The trees a run update writes.
    fn update_trees(&self) -> (&Tree, &Tree, &Tree, &Tree) {
        (
            &self.new_runs.runs,
            &self.new_runs.runs_by_flow,
            &self.step_records,
            &self.new_runs.queue,
        )
    }

    /// Writes a batch of updates decided ahead in one transaction; an update whose run changed
    /// since it was read is left out (`Changed`: its caller decides again).
    fn write_batch(&self, batch: &[PendingUpdate]) -> Vec<Batched> {
        let written = self
            .update_trees()
            .transaction(|(runs, by_flow, records, queue)| {
                let mut out = Vec::with_capacity(batch.len());
                for pending in batch {
                    let stored = runs.get(pending.run_key)?;
                    let unchanged = match (&pending.ahead, &stored) {
                        (Some((read, _)), Some(stored)) => read == stored,
                        (None, None) => true,
                        _ => false,
                    };
                    if !unchanged {
                        out.push(None);
                        continue;
                    }
                    // The finished item leaves the queue whatever the decision (even with no run).
                    if let Some(key) = &pending.done_key {
                        queue.remove(key)?;
                    }
                    out.push(Some(match &pending.ahead {
                        Some((_, prepared)) => {
                            prepared.write(&pending.run_key, runs, by_flow, records, queue)?
                        }
                        None => Written::default(),
                    }));
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
                .map(|_| Batched::Failed(StoreError::Backend(e.to_string())))
                .collect(),
        }
    }

    /// Updates one run in a transaction of its own, deciding inside it.
    fn update_alone(
        &self,
        run_id: RunId,
        done_key: Option<&IVec>,
        decide: Decide<'_>,
    ) -> Result<Written> {
        let run_key = run_id.to_bytes();
        self.update_trees()
            .transaction(|(runs, by_flow, records, queue)| -> TxResult<Written> {
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

    /// Opens (or creates) the store in a directory. Only one process may have it open at a time.
    ///
    /// The directory stays locked for a moment after the store is dropped (sled's I/O threads let
    /// go of it last), so reopening at once in the same process may fail with a lock error.
    /// `cache_bytes` bounds sled's page cache (see [`DEFAULT_CACHE_BYTES`]). A new database is
    /// created compressed if `compression` says so; an existing one keeps the setting it was
    /// created with.
    pub fn open(path: &Path, cache_bytes: u64, compression: bool) -> Result<Self> {
        Self::open_with_window(path, cache_bytes, compression, PROMOTE_WINDOW)
    }

    /// [`open`](Self::open) with another promotion window (tests use a small one).
    pub(crate) fn open_with_window(
        path: &Path,
        cache_bytes: u64,
        compression: bool,
        window: i64,
    ) -> Result<Self> {
        let stored = stored_compression(path);
        if stored.is_some_and(|stored| stored != compression) {
            tracing::warn!(
                data = %path.display(),
                compressed = !compression,
                "the store keeps the compression setting it was created with"
            );
        }
        let compression = stored.unwrap_or(compression);
        // sled counts a cached page at its size in the log, which compression makes about a third
        // of its size in memory: shrink the budget to match.
        let cache_bytes = if compression {
            cache_bytes / COMPRESSION_RATIO
        } else {
            cache_bytes
        };
        let config = base_config(cache_bytes, compression).path(path);
        let mut store = Self::with_config(config, &path.display().to_string())?;
        let log = path.join("db");
        let file = std::fs::File::open(&log).map_err(|e| {
            StoreError::Backend(format!(
                "cannot open sled's log {} for fsync: {e}",
                log.display()
            ))
        })?;
        let log_file = std::sync::Arc::new(file);
        store.log_file = Some(log_file.clone());
        let promoted: u64 = store
            .get(
                &store.new_runs.state,
                TreeName::State,
                PROMOTED_KEY.as_bytes(),
                &"the inbox position",
            )?
            .unwrap_or(0);
        let inbox_dir = path.join("inbox");
        let (inbox, reader) = Inbox::open(&inbox_dir, promoted).map_err(|e| {
            StoreError::Backend(format!(
                "cannot open the inbox in {}: {e}",
                inbox_dir.display()
            ))
        })?;
        store.promoted.store(promoted, Ordering::SeqCst);
        let promoter = Promoter {
            trees: store.new_runs.clone(),
            db: store.db.clone(),
            log_file,
            reader,
            pending: Vec::new(),
            window,
            promoted: store.promoted.clone(),
            stop: store.stop.clone(),
        };
        std::thread::Builder::new()
            .name("hookflow-promoter".into())
            .spawn(move || promoter.run())
            .map_err(|e| StoreError::Backend(format!("cannot start the promoter thread: {e}")))?;
        store.inbox = Some(inbox);
        Ok(store)
    }

    /// A store in a temporary directory, deleted when the store is dropped (`hookflow run`, tests).
    /// sled skips syncing in temporary mode: nothing in it survives a crash.
    pub fn temporary() -> Result<Self> {
        let config = base_config(DEFAULT_CACHE_BYTES, false).temporary(true);
        Self::with_config(config, "a temporary directory")
    }

    fn with_config(config: Config, place: &str) -> Result<Self> {
        let db = config.open().map_err(|e| {
            StoreError::Backend(format!("cannot open the sled store in {place}: {e}"))
        })?;
        let tree = |name: TreeName| {
            db.open_tree(name.name())
                .map_err(|e| backend("open", name, &"the tree", e))
        };
        let queue = tree(TreeName::Queue)?;
        let requeued = requeue_stored_leases(&tree(TreeName::Leases)?, &queue)?;
        if requeued > 0 {
            tracing::info!(
                requeued,
                "requeued steps an earlier version had leased when it stopped"
            );
        }
        let queued = queue.len() as i64;
        Ok(Self {
            step_records: tree(TreeName::StepRecords)?,
            hook_tokens: tree(TreeName::HookTokens)?,
            revisions: tree(TreeName::Revisions)?,
            commit: GroupCommit::default(),
            new_runs: NewRunTrees {
                events: tree(TreeName::Events)?,
                runs: tree(TreeName::Runs)?,
                runs_by_flow: tree(TreeName::RunsByFlow)?,
                queue,
                dedupe: tree(TreeName::Dedupe)?,
                dedupe_expiry: tree(TreeName::DedupeExpiry)?,
                state: tree(TreeName::State)?,
                queued: Arc::new(AtomicI64::new(queued)),
            },
            inbox: None,
            promoted: Arc::default(),
            stop: Arc::default(),
            durable_tokens: Mutex::default(),
            leases: Mutex::default(),
            batches: UpdateBatches::default(),
            log_file: None,
            db,
        })
    }

    /// Waits until every write this task has made so far is on disk.
    async fn durable(&self) -> Result<()> {
        self.commit
            .wait_durable(|| async {
                self.db
                    .flush_async()
                    .await
                    .map_err(|e| StoreError::Backend(format!("sled: flush failed: {e}")))?;
                let Some(file) = self.log_file.clone() else {
                    return Ok(());
                };
                tokio::task::spawn_blocking(move || file.sync_all())
                    .await
                    .map_err(|e| StoreError::Backend(format!("fsync task failed: {e}")))?
                    .map_err(|e| StoreError::Backend(format!("fsync of sled's log failed: {e}")))
            })
            .await
    }

    /// Counts items queued (or, negative, leased): see `NewRunTrees::queued`.
    fn queued_add(&self, n: i64) {
        self.new_runs.queued.fetch_add(n, Ordering::SeqCst);
    }

    /// How many accepted events wait in the inbox, not yet in the trees.
    fn in_inbox(&self) -> u64 {
        self.inbox.as_ref().map_or(0, |inbox| {
            inbox
                .durable_through()
                .saturating_sub(self.promoted.load(Ordering::SeqCst))
        })
    }

    fn durable_tokens(&self) -> MutexGuard<'_, HashMap<FlowId, String>> {
        self.durable_tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn leases(&self) -> MutexGuard<'_, Leases> {
        self.leases.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Up to `want` queued items due at or before `now` and not leased (nor of a run being
    /// written), with their keys: oldest due first within a flow, at most `room[flow]` of a listed
    /// flow, and `want` shared between flows (an equal share each first, then what is left to
    /// whoever has more).
    fn due_candidates(
        &self,
        leases: &Leases,
        now: Timestamp,
        want: usize,
        room: &FlowRoom,
    ) -> Result<Vec<(IVec, QueueItem)>> {
        let flows = distinct_flows(&self.new_runs.queue, TreeName::Queue)?;
        let now_key = due_bytes(now);
        let mut due_per_flow = Vec::with_capacity(flows.len());
        for flow in &flows {
            let allowed = room.get(flow).copied().unwrap_or(usize::MAX).min(want);
            let prefix = flow_key(flow, &[]);
            let mut due = std::collections::VecDeque::new();
            for entry in self.new_runs.queue.scan_prefix(&prefix) {
                if due.len() >= allowed {
                    break;
                }
                let (key, value) = entry.map_err(|e| backend("scan", TreeName::Queue, flow, e))?;
                let rest = &key[prefix.len()..];
                if rest.len() < 8 || rest[..8] > now_key[..] {
                    break;
                }
                if leases.holds(&key) {
                    continue;
                }
                let item: QueueItem = decode(TreeName::Queue, &key, &value)?;
                if item.due_at <= now && !leases.writing.contains_key(&item.run_id) {
                    due.push_back((key, item));
                }
            }
            due_per_flow.push(due);
        }
        let share = want.div_ceil(flows.len().max(1));
        let mut out = Vec::new();
        for fair_share in [share, usize::MAX] {
            for due in &mut due_per_flow {
                let mut taken = 0;
                while out.len() < want && taken < fair_share {
                    let Some(candidate) = due.pop_front() else {
                        break;
                    };
                    out.push(candidate);
                    taken += 1;
                }
            }
        }
        Ok(out)
    }

    /// Deletes runs (index key, id, event id) with their events and step records, in one
    /// transaction.
    fn delete_runs(&self, doomed: &[(IVec, RunId, Option<EventId>)]) -> Result<()> {
        let mut record_keys = Vec::new();
        for (_, run_id, _) in doomed {
            for key in self.step_records.scan_prefix(run_id.to_bytes()).keys() {
                record_keys
                    .push(key.map_err(|e| backend("scan", TreeName::StepRecords, run_id, e))?);
            }
        }
        let trees = (
            &self.new_runs.runs,
            &self.new_runs.runs_by_flow,
            &self.new_runs.events,
            &self.step_records,
        );
        trees
            .transaction(|(runs, by_flow, events, records)| -> TxResult<()> {
                for (index_key, run_id, event_id) in doomed {
                    by_flow.remove(index_key)?;
                    runs.remove(&run_id.to_bytes()[..])?;
                    if let Some(event_id) = event_id {
                        events.remove(&event_id.to_bytes()[..])?;
                    }
                }
                for key in &record_keys {
                    records.remove(key)?;
                }
                Ok(())
            })
            .map_err(tx_error("prune", TreeName::Runs))
    }

    fn get<T: DeserializeOwned>(
        &self,
        tree: &Tree,
        name: TreeName,
        key: &[u8],
        what: &dyn fmt::Display,
    ) -> Result<Option<T>> {
        match tree.get(key).map_err(|e| backend("read", name, what, e))? {
            Some(value) => decode(name, key, &value).map(Some),
            None => Ok(None),
        }
    }
}

#[async_trait]
impl Store for SledStore {
    async fn ingest(&self, new: NewRun) -> Result<Ingested> {
        if let (Some(inbox), None) = (&self.inbox, &new.dedupe) {
            // The common case: one fsynced append; the promoter moves it into the trees.
            inbox
                .append(EncodedRun::new(&new)?.to_record())
                .await
                .map_err(|e| StoreError::Backend(format!("inbox append failed: {e}")))?;
            return Ok(Ingested::Created);
        }
        // A dedupe key must be checked against the trees before answering: write directly.
        let outcome = self.new_runs.write(&[EncodedRun::new(&new)?], None)?[0];
        // The transaction has returned, so the write is in sled's log: the fsync this waits for
        // covers it (and, for a duplicate, the original, which was applied before this read it).
        // Only now may the caller acknowledge the event.
        self.durable().await?;
        Ok(outcome)
    }

    async fn claim_due(
        &self,
        now: Timestamp,
        limit: usize,
        lease_until: Timestamp,
        room: &FlowRoom,
    ) -> Result<Vec<QueueItem>> {
        let mut leases = self.leases();
        let claimed = self.due_candidates(&leases, now, limit, room)?;
        self.queued_add(-(claimed.len() as i64));
        Ok(claimed
            .into_iter()
            .map(|(key, item)| {
                leases.items.insert(item.id, (key, lease_until));
                item
            })
            .collect())
    }

    async fn next_due(&self) -> Result<Option<Timestamp>> {
        let mut next: Option<Timestamp> = None;
        let leases = self.leases();
        for flow in distinct_flows(&self.new_runs.queue, TreeName::Queue)? {
            let first = self
                .new_runs
                .queue
                .scan_prefix(flow_key(&flow, &[]))
                .find(|entry| entry.as_ref().map_or(true, |(key, _)| !leases.holds(key)))
                .transpose()
                .map_err(|e| backend("scan", TreeName::Queue, &flow, e))?;
            if let Some((key, value)) = first {
                let item: QueueItem = decode(TreeName::Queue, &key, &value)?;
                next = Some(next.map_or(item.due_at, |n| n.min(item.due_at)));
            }
        }
        if self.in_inbox() > 0 {
            // Accepted events are on their way into the queue: look again very soon.
            let soon = Timestamp::now().plus(Duration::from_millis(2));
            next = Some(next.map_or(soon, |n| n.min(soon)));
        }
        Ok(next)
    }

    async fn update_run(
        &self,
        run_id: RunId,
        done: Option<ItemId>,
        decide: Decide<'_>,
    ) -> Result<Option<Run>> {
        let run_key = run_id.to_bytes();
        // Claims skip the run's items until the update and its leases are in place (or the call
        // is dropped while its batch waits).
        let _writing = Writing::start(self, run_id);
        let done_key = done.and_then(|id| self.leases().items.get(&id).map(|(key, _)| key.clone()));
        // Decided and encoded before the transaction, which holds sled's process-wide lock: inside
        // it, only a check that the run is still the value read here (else decided again).
        let read = self
            .new_runs
            .runs
            .get(run_key)
            .map_err(|e| backend("get", TreeName::Runs, &run_id, e));
        let ahead = match read {
            Ok(Some(stored)) => Prepared::new(run_id, &stored, decide).map(|p| Some((stored, p))),
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        };
        let written = match ahead {
            Err(e) => Err(e),
            Ok(ahead) => {
                let pending = PendingUpdate {
                    run_key,
                    done_key: done_key.clone(),
                    ahead,
                };
                match self
                    .batches
                    .commit(pending, |batch| self.write_batch(batch))
                    .await
                {
                    Batched::Written(written) => Ok(*written),
                    Batched::Failed(e) => Err(e),
                    Batched::Changed => self.update_alone(run_id, done_key.as_ref(), decide),
                }
            }
        };
        let written = written?;
        let mut leases = self.leases();
        if let (Some(id), Some(_)) = (done, &done_key) {
            leases.items.remove(&id);
        }
        for (id, key, until) in written.taken {
            leases.items.insert(id, (key, until));
        }
        drop(leases);
        self.queued_add(written.queued);
        Ok(written.run)
    }

    async fn requeue_expired(&self, now: Timestamp) -> Result<usize> {
        let mut leases = self.leases();
        let before = leases.items.len();
        leases.items.retain(|_, (_, until)| *until > now);
        let ended = before - leases.items.len();
        self.queued_add(ended as i64);
        Ok(ended)
    }

    async fn run(&self, id: RunId) -> Result<Option<Run>> {
        self.get(&self.new_runs.runs, TreeName::Runs, &id.to_bytes(), &id)
    }

    async fn event(&self, id: EventId) -> Result<Option<Event>> {
        self.get(&self.new_runs.events, TreeName::Events, &id.to_bytes(), &id)
    }

    async fn step_records(&self, run_id: RunId) -> Result<Vec<StepRecord>> {
        self.step_records
            .scan_prefix(run_id.to_bytes())
            .map(|entry| {
                let (key, value) =
                    entry.map_err(|e| backend("scan", TreeName::StepRecords, &run_id, e))?;
                decode(TreeName::StepRecords, &key, &value)
            })
            .collect()
    }

    async fn list_runs(&self, query: &RunQuery) -> Result<RunPage> {
        let limit = match query.limit {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let wanted = |run: &Run| query.status.is_none_or(|status| run.status == status);
        // The window as run-id bounds: ids sort by creation time.
        let lower = query.since.map(|t| RunId::first_at(t.millis()).to_bytes());
        let upper = [
            query.until.map(|t| RunId::first_at(t.millis())),
            query.before,
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|id| id.to_bytes());
        let mut runs = Vec::new();
        match &query.flow_id {
            None => {
                let lower = lower.map_or(Bound::Unbounded, |l| Bound::Included(l.to_vec()));
                let upper = upper.map_or(Bound::Unbounded, |u| Bound::Excluded(u.to_vec()));
                for entry in self.new_runs.runs.range::<Vec<u8>, _>((lower, upper)).rev() {
                    let (key, value) =
                        entry.map_err(|e| backend("scan", TreeName::Runs, &"", e))?;
                    let run: Run = decode(TreeName::Runs, &key, &value)?;
                    if wanted(&run) {
                        runs.push(run);
                        if runs.len() == limit {
                            break;
                        }
                    }
                }
            }
            Some(flow_id) => {
                let prefix = flow_key(flow_id, &[]);
                let lower = flow_key(flow_id, lower.as_ref().map_or(&[][..], |l| &l[..]));
                let upper = match upper {
                    Some(u) => flow_key(flow_id, &u),
                    None => prefix_end(&prefix),
                };
                for entry in self.new_runs.runs_by_flow.range(lower..upper).rev() {
                    let (key, _) =
                        entry.map_err(|e| backend("scan", TreeName::RunsByFlow, flow_id, e))?;
                    let Some(run_id) = id16(&key[prefix.len()..]).map(RunId::from_bytes) else {
                        return Err(corrupt(TreeName::RunsByFlow, &key, "the key is malformed"));
                    };
                    let Some(run) = self.get::<Run>(
                        &self.new_runs.runs,
                        TreeName::Runs,
                        &run_id.to_bytes(),
                        &run_id,
                    )?
                    else {
                        tracing::warn!(%run_id, %flow_id, "the run index names a missing run");
                        continue;
                    };
                    if wanted(&run) {
                        runs.push(run);
                        if runs.len() == limit {
                            break;
                        }
                    }
                }
            }
        }
        let next = if runs.len() == limit {
            runs.last().map(|run| run.id)
        } else {
            None
        };
        Ok(RunPage { runs, next })
    }

    async fn hook_token(&self, flow_id: &FlowId, candidate: &str) -> Result<String> {
        let name = TreeName::HookTokens;
        if let Some(token) = self.durable_tokens().get(flow_id) {
            return Ok(token.clone());
        }
        let value = encode(name, flow_id, candidate)?;
        let swap = self
            .hook_tokens
            .compare_and_swap(flow_id.as_str(), None::<&[u8]>, Some(value))
            .map_err(|e| backend("write", name, flow_id, e))?;
        let token = match swap {
            Ok(()) => candidate.to_owned(),
            Err(taken) => match taken.current {
                Some(current) => decode(name, flow_id.as_str().as_bytes(), &current)?,
                None => {
                    return Err(StoreError::Backend(format!(
                        "sled: compare-and-swap on {} for {flow_id} failed with no current value",
                        name.name()
                    )))
                }
            },
        };
        // Also when the token was already there: the writer that stored it may still be waiting for
        // its fsync, and a token handed out must survive a crash.
        self.durable().await?;
        self.durable_tokens().insert(flow_id.clone(), token.clone());
        Ok(token)
    }

    async fn put_revision(
        &self,
        flow_id: &FlowId,
        revision: &Revision,
        source: &str,
    ) -> Result<()> {
        let what = format!("{flow_id} {revision}");
        let value = encode(TreeName::Revisions, &what, source)?;
        self.revisions
            .insert(flow_key(flow_id, revision.0.as_bytes()), value)
            .map_err(|e| backend("write", TreeName::Revisions, &what, e))?;
        // Runs that use this revision may be acknowledged through the inbox, without a sled flush.
        self.durable().await
    }

    async fn flows_with_runs(&self) -> Result<Vec<FlowId>> {
        distinct_flows(&self.new_runs.runs_by_flow, TreeName::RunsByFlow)
    }

    async fn prune_runs(
        &self,
        flow_id: &FlowId,
        older_than: Timestamp,
        keep: usize,
        max: usize,
    ) -> Result<usize> {
        let prefix = flow_key(flow_id, &[]);
        let scan_error = |e| backend("scan", TreeName::RunsByFlow, flow_id, e);
        // The first index key the count keeps: the `keep`-th newest (found from the newest end, so
        // this costs `keep` reads however many runs the flow has).
        let kept_from = match keep {
            0 => prefix_end(&prefix),
            _ => match self
                .new_runs
                .runs_by_flow
                .scan_prefix(&prefix)
                .keys()
                .rev()
                .nth(keep - 1)
            {
                Some(key) => key.map_err(scan_error)?.to_vec(),
                None => prefix.clone(), // fewer runs than `keep`: the count keeps them all
            },
        };
        let mut doomed = Vec::new();
        for key in self.new_runs.runs_by_flow.scan_prefix(&prefix).keys() {
            if doomed.len() == max {
                break;
            }
            let key = key.map_err(scan_error)?;
            let Some(run_id) = id16(&key[prefix.len()..]).map(RunId::from_bytes) else {
                return Err(corrupt(TreeName::RunsByFlow, &key, "the key is malformed"));
            };
            let run: Option<Run> = self.get(
                &self.new_runs.runs,
                TreeName::Runs,
                &run_id.to_bytes(),
                &run_id,
            )?;
            let old = run.as_ref().is_none_or(|r| r.created_at < older_than);
            if key.as_ref() >= kept_from.as_slice() && !old {
                break; // Newer runs follow: none of them is due for pruning either.
            }
            match run {
                Some(run) if !run.status.is_final() => continue,
                run => doomed.push((key, run_id, run.map(|r| r.event_id))),
            }
        }
        for chunk in doomed.chunks(PRUNE_CHUNK) {
            self.delete_runs(chunk)?;
        }
        Ok(doomed.len())
    }

    async fn expire_dedupe(&self, now: Timestamp, max: usize) -> Result<usize> {
        let end = due_bytes(Timestamp(now.millis().saturating_add(1)));
        let mut expired = Vec::new();
        for key in self.new_runs.dedupe_expiry.range(..end).keys().take(max) {
            expired.push(key.map_err(|e| backend("scan", TreeName::DedupeExpiry, &"", e))?);
        }
        let trees = (&self.new_runs.dedupe, &self.new_runs.dedupe_expiry);
        for chunk in expired.chunks(PRUNE_CHUNK) {
            trees
                .transaction(|(dedupe, expiry)| -> TxResult<()> {
                    for key in chunk {
                        expiry.remove(key)?;
                        // The key may have been taken again since (with a later expiry).
                        let dedupe_key = &key[8..];
                        if let Some(value) = dedupe.get(dedupe_key)? {
                            let entry: DedupeEntry =
                                decode(TreeName::Dedupe, dedupe_key, &value).map_err(abort)?;
                            if entry.expires_at <= now {
                                dedupe.remove(dedupe_key)?;
                            }
                        }
                    }
                    Ok(())
                })
                .map_err(tx_error("expire", TreeName::Dedupe))?;
        }
        Ok(expired.len())
    }

    async fn flush(&self) -> Result<()> {
        self.durable().await
    }

    async fn revision(&self, flow_id: &FlowId, revision: &Revision) -> Result<Option<String>> {
        let key = flow_key(flow_id, revision.0.as_bytes());
        let what = format!("{flow_id} {revision}");
        self.get(&self.revisions, TreeName::Revisions, &key, &what)
    }

    async fn put_state(&self, key: &str, value: &serde_json::Value) -> Result<()> {
        let bytes = encode(TreeName::State, &key, value)?;
        self.new_runs
            .state
            .insert(key.as_bytes(), bytes)
            .map_err(|e| backend("write", TreeName::State, &key, e))?;
        self.durable().await
    }

    async fn stats(&self) -> Result<super::StoreStats> {
        let bytes = self
            .db
            .size_on_disk()
            .map_err(|e| StoreError::Backend(format!("sled: cannot read the size on disk: {e}")))?;
        Ok(super::StoreStats {
            queued: self.new_runs.queue.len() as u64 + self.in_inbox(),
            bytes,
        })
    }

    async fn state(&self, key: &str) -> Result<Option<serde_json::Value>> {
        self.get(&self.new_runs.state, TreeName::State, key.as_bytes(), &key)
    }
}

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
struct GroupCommit {
    /// Tickets taken so far: one per write that must become durable.
    requested: AtomicU64,
    /// Every ticket up to this one is covered by a completed flush.
    flushed: AtomicU64,
    /// Held by the caller running a flush.
    flushing: tokio::sync::Mutex<()>,
}

impl GroupCommit {
    /// Returns once a flush (`flush`) that started after this call has completed, running one if
    /// needed. Call it after the write is applied.
    async fn wait_durable<F, Fut>(&self, flush: F) -> Result<()>
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

type TxResult<T> = ConflictableTransactionResult<T, StoreError>;

/// Moves inbox records into the trees, in order, on its own thread, while the queue has room.
struct Promoter {
    trees: NewRunTrees,
    db: Db,
    log_file: Arc<std::fs::File>,
    reader: Reader,
    /// Records read but not yet written (kept across a failed transaction, to try again).
    pending: Vec<Record>,
    /// Promotion pauses while the queue tree holds this many items.
    window: i64,
    promoted: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Promoter {
    fn run(mut self) {
        while !self.stop.load(Ordering::SeqCst) {
            let room = self.window - self.trees.queued.load(Ordering::SeqCst);
            if room <= 0 {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            if self.pending.is_empty() && !self.reader.wait(Duration::from_millis(100)) {
                continue;
            }
            let batch = usize::try_from(room).map_or(PROMOTE_BATCH, |r| r.min(PROMOTE_BATCH));
            if let Err(e) = self.promote(batch) {
                tracing::error!(error = %e, "cannot move accepted events from the inbox into the store; retrying");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }

    /// Moves up to `batch` records into the trees; deletes the inbox segments it finished once
    /// the trees are durable past them.
    fn promote(&mut self, batch: usize) -> Result<()> {
        let inbox_error =
            |e: std::io::Error| StoreError::Backend(format!("inbox read failed: {e}"));
        let mut finished = Vec::new();
        if self.pending.is_empty() {
            let (records, done) = self.reader.read(batch).map_err(inbox_error)?;
            self.pending = records;
            finished = done;
        }
        if let Some(&(last, _)) = self.pending.last() {
            let mut runs = Vec::with_capacity(self.pending.len());
            for (n, record) in &self.pending {
                match EncodedRun::from_record(record) {
                    Ok(run) => runs.push(run),
                    Err(e) => {
                        tracing::error!(record = n, error = %e, "an inbox record cannot be read; it is skipped")
                    }
                }
            }
            self.trees.write(&runs, Some((last, &self.promoted)))?;
            self.pending.clear();
        }
        if !finished.is_empty() {
            // The trees must be on disk past these segments before they go.
            self.db
                .flush()
                .map_err(|e| StoreError::Backend(format!("sled: flush failed: {e}")))?;
            self.log_file
                .sync_all()
                .map_err(|e| StoreError::Backend(format!("fsync of sled's log failed: {e}")))?;
            for path in finished {
                std::fs::remove_file(&path).map_err(|e| {
                    StoreError::Backend(format!("cannot delete {}: {e}", path.display()))
                })?;
            }
        }
        Ok(())
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A new run encoded for the trees: keys and values as they are written.
#[derive(Debug, PartialEq)]
struct EncodedRun {
    event_key: Vec<u8>,
    event: Vec<u8>,
    run_key: Vec<u8>,
    run: Vec<u8>,
    index_key: Vec<u8>,
    items: Vec<(Vec<u8>, Vec<u8>)>,
    /// The dedupe tree's key and entry, when the entry expires, and when the event arrived.
    dedupe: Option<(Vec<u8>, Vec<u8>, Timestamp, Timestamp)>,
}

/// The first byte of an inbox record holding an [`EncodedRun`] (a record of an earlier version
/// is a JSON [`NewRun`], which starts with `{`).
const ENCODED_RUN: u8 = 1;

impl EncodedRun {
    fn new(new: &NewRun) -> Result<Self> {
        let run_key = new.run.id.to_bytes();
        let dedupe = new
            .dedupe
            .as_ref()
            .map(|d| {
                let key = flow_key(&new.run.flow_id, d.key.as_bytes());
                let entry = DedupeEntry {
                    event_id: new.event.id,
                    run_id: new.run.id,
                    expires_at: d.expires_at,
                };
                let value = encode(TreeName::Dedupe, &d.key, &entry)?;
                Ok((key, value, d.expires_at, new.event.received_at))
            })
            .transpose()?;
        Ok(Self {
            event_key: new.event.id.to_bytes().to_vec(),
            event: encode(TreeName::Events, &new.event.id, &new.event)?,
            run_key: run_key.to_vec(),
            run: encode(TreeName::Runs, &new.run.id, &new.run)?,
            index_key: flow_key(&new.run.flow_id, &run_key),
            items: new
                .items
                .iter()
                .map(|item| Ok((queue_key(item), encode(TreeName::Queue, &item.id, item)?)))
                .collect::<Result<Vec<_>>>()?,
            dedupe,
        })
    }

    /// The run as an inbox record: its keys and values, each after its length (u32, little
    /// endian), so the promoter writes them without decoding anything. Without its dedupe key:
    /// runs with one are never put in the inbox.
    fn to_record(&self) -> Vec<u8> {
        let parts = [
            &self.event_key,
            &self.event,
            &self.run_key,
            &self.run,
            &self.index_key,
        ];
        let items = self.items.iter().flat_map(|(key, value)| [key, value]);
        let mut record = vec![ENCODED_RUN];
        for part in parts.into_iter().chain(items) {
            record.extend_from_slice(&(part.len() as u32).to_le_bytes());
            record.extend_from_slice(part);
        }
        record
    }

    /// Reads an inbox record (see [`to_record`](Self::to_record); a JSON [`NewRun`] of an earlier
    /// version is encoded afresh).
    fn from_record(record: &[u8]) -> std::result::Result<Self, String> {
        let Some((&ENCODED_RUN, mut rest)) = record.split_first() else {
            let new: NewRun = serde_json::from_slice(record).map_err(|e| e.to_string())?;
            return Self::new(&new).map_err(|e| e.to_string());
        };
        let mut parts = Vec::new();
        while !rest.is_empty() {
            let (len, tail) = rest.split_first_chunk::<4>().ok_or("a length is cut off")?;
            let len = u32::from_le_bytes(*len) as usize;
            if tail.len() < len {
                return Err("a part is cut off".into());
            }
            let (part, tail) = tail.split_at(len);
            parts.push(part.to_vec());
            rest = tail;
        }
        if parts.len() < 5 || parts.len() % 2 == 0 {
            return Err(format!("{} parts, not 5 and pairs", parts.len()));
        }
        let mut items = Vec::with_capacity((parts.len() - 5) / 2);
        let mut tail = parts.split_off(5).into_iter();
        while let (Some(key), Some(value)) = (tail.next(), tail.next()) {
            items.push((key, value));
        }
        let [event_key, event, run_key, run, index_key] =
            <[Vec<u8>; 5]>::try_from(parts).map_err(|_| "five parts expected")?;
        Ok(Self {
            event_key,
            event,
            run_key,
            run,
            index_key,
            items,
            dedupe: None,
        })
    }
}

/// The trees a new run is written to (handles to the store's own), so the promoter thread can
/// write runs without the store.
#[derive(Debug, Clone)]
struct NewRunTrees {
    events: Tree,
    runs: Tree,
    runs_by_flow: Tree,
    queue: Tree,
    dedupe: Tree,
    dedupe_expiry: Tree,
    state: Tree,
    /// How many items in the queue tree are not leased (what the promotion window counts).
    queued: Arc<AtomicI64>,
}

impl NewRunTrees {
    /// Writes new runs in one transaction, unless a run's dedupe key is taken (and not expired at
    /// its event's arrival); with `promoted`, also records the number of the last inbox record
    /// written, in the trees and in the promoter's counter. Returns what happened to each run.
    fn write(
        &self,
        new: &[EncodedRun],
        promoted: Option<(u64, &AtomicU64)>,
    ) -> Result<Vec<Ingested>> {
        let trees = (
            &self.events,
            &self.runs,
            &self.runs_by_flow,
            &self.queue,
            &self.dedupe,
            &self.dedupe_expiry,
            &self.state,
        );
        let counted_before = promoted.map(|(_, counter)| counter.load(Ordering::SeqCst));
        let mark = promoted.map(|(n, _)| n.to_string().into_bytes());
        let outcomes = trees
            .transaction(
                |(events, runs, by_flow, queue, dedupe_keys, expiry, state)| -> TxResult<Vec<Ingested>> {
                    let mut outcomes = Vec::with_capacity(new.len());
                    for run in new {
                        if let Some((key, value, expires_at, received_at)) = &run.dedupe {
                            if let Some(taken) = dedupe_keys.get(key)? {
                                let taken: DedupeEntry =
                                    decode(TreeName::Dedupe, key, &taken).map_err(abort)?;
                                if taken.expires_at > *received_at {
                                    outcomes.push(Ingested::Duplicate {
                                        event_id: taken.event_id,
                                        run_id: taken.run_id,
                                    });
                                    continue;
                                }
                                expiry.remove(expiry_key(taken.expires_at, key))?;
                            }
                            dedupe_keys.insert(key.as_slice(), value.as_slice())?;
                            expiry.insert(expiry_key(*expires_at, key), IVec::default())?;
                        }
                        events.insert(&run.event_key[..], run.event.as_slice())?;
                        runs.insert(&run.run_key[..], run.run.as_slice())?;
                        by_flow.insert(run.index_key.as_slice(), IVec::default())?;
                        for (key, item) in &run.items {
                            queue.insert(key.as_slice(), item.as_slice())?;
                        }
                        outcomes.push(Ingested::Created);
                    }
                    if let (Some(mark), Some((n, counter))) = (&mark, promoted) {
                        state.insert(PROMOTED_KEY, mark.as_slice())?;
                        // Counted while the transaction still holds sled's lock, so no reader
                        // sees one of these runs while the inbox still counts it as waiting.
                        counter.store(n, Ordering::SeqCst);
                    }
                    Ok(outcomes)
                },
            )
            .map_err(tx_error("ingest", TreeName::Runs));
        if let (Err(_), Some(before), Some((_, counter))) = (&outcomes, counted_before, promoted) {
            counter.store(before, Ordering::SeqCst);
        }
        let outcomes = outcomes?;
        let items: usize = new
            .iter()
            .zip(&outcomes)
            .filter(|(_, o)| **o == Ingested::Created)
            .map(|(run, _)| run.items.len())
            .sum();
        self.queued.fetch_add(items as i64, Ordering::SeqCst);
        Ok(outcomes)
    }
}

/// Moves the items an earlier version left in the `leases` tree (it kept leases on disk) back to
/// the queue; returns how many. Leases are in memory now, so at open every stored one has ended.
fn requeue_stored_leases(leases: &Tree, queue: &Tree) -> Result<usize> {
    let keys = leases
        .iter()
        .keys()
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| backend("scan", TreeName::Leases, &"", e))?;
    for chunk in keys.chunks(REQUEUE_CHUNK) {
        (leases, queue)
            .transaction(|(leases, queue)| -> TxResult<()> {
                for key in chunk {
                    let Some(value) = leases.remove(key)? else {
                        continue;
                    };
                    let lease: Lease = decode(TreeName::Leases, key, &value).map_err(abort)?;
                    let item =
                        encode(TreeName::Queue, &lease.item.id, &lease.item).map_err(abort)?;
                    queue.insert(queue_key(&lease.item), item)?;
                }
                Ok(())
            })
            .map_err(tx_error("requeue", TreeName::Leases))?;
    }
    Ok(keys.len())
}

/// A store error that aborts a transaction.
fn abort(e: StoreError) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(e)
}

/// Maps a failed transaction to a store error naming the operation.
fn tx_error(
    op: &'static str,
    tree: TreeName,
) -> impl Fn(TransactionError<StoreError>) -> StoreError {
    move |e| match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => backend(op, tree, &"(transaction)", e),
    }
}

fn backend(op: &str, tree: TreeName, what: &dyn fmt::Display, e: ::sled::Error) -> StoreError {
    StoreError::Backend(format!("sled: {op} {} {what}: {e}", tree.name()))
}

fn corrupt(tree: TreeName, key: &[u8], why: impl fmt::Display) -> StoreError {
    StoreError::Corrupt {
        tree: tree.name(),
        detail: format!("key {}: {why}", describe_key(tree, key)),
    }
}

fn encode<T: Serialize + ?Sized>(
    tree: TreeName,
    what: &dyn fmt::Display,
    value: &T,
) -> Result<Vec<u8>> {
    serde_json::to_vec(value)
        .map(|json| {
            if tree.packs() {
                packed::pack(json)
            } else {
                json
            }
        })
        .map_err(|e| StoreError::Backend(format!("cannot encode {what} for {}: {e}", tree.name())))
}

fn decode<T: DeserializeOwned>(tree: TreeName, key: &[u8], value: &[u8]) -> Result<T> {
    let json = packed::unpack(value).map_err(|e| corrupt(tree, key, e))?;
    serde_json::from_slice(&json).map_err(|e| corrupt(tree, key, e))
}

/// A big-endian time key: byte order is time order (times before 1970 become 0).
fn due_bytes(at: Timestamp) -> [u8; 8] {
    (at.millis().max(0) as u64).to_be_bytes()
}

/// `flow_queue` key: flow id, `0x00`, due time, then item id (unique, and ordering items due at
/// the same moment).
fn queue_key(item: &QueueItem) -> Vec<u8> {
    let mut rest = [0; 24];
    rest[..8].copy_from_slice(&due_bytes(item.due_at));
    rest[8..].copy_from_slice(&item.id.to_bytes());
    flow_key(&item.flow_id, &rest)
}

/// `dedupe_expiry` key: expiry time, then the `dedupe` key.
fn expiry_key(expires_at: Timestamp, dedupe_key: &[u8]) -> Vec<u8> {
    let mut key = due_bytes(expires_at).to_vec();
    key.extend_from_slice(dedupe_key);
    key
}

/// The first key after every key that starts with `prefix` (a flow prefix ends in `0x00`).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

/// The flows that have keys in a tree keyed by flow id and `0x00`, by seeking from one flow's
/// prefix to the next (one read per flow, however many keys each has).
fn distinct_flows(tree: &Tree, name: TreeName) -> Result<Vec<FlowId>> {
    let mut flows = Vec::new();
    let mut from = Vec::new();
    while let Some(entry) = tree.range(from.clone()..).next() {
        let (key, _) = entry.map_err(|e| backend("scan", name, &"", e))?;
        let Some(end) = key.iter().position(|&b| b == 0) else {
            return Err(corrupt(name, &key, "the key has no flow id"));
        };
        let flow = std::str::from_utf8(&key[..end])
            .ok()
            .and_then(|f| f.parse::<FlowId>().ok())
            .ok_or_else(|| corrupt(name, &key, "the flow id is malformed"))?;
        flows.push(flow);
        from = prefix_end(&key[..=end]);
    }
    Ok(flows)
}

/// `runs_by_flow` and `revisions` key: flow id, `0x00`, rest.
fn flow_key(flow_id: &FlowId, rest: &[u8]) -> Vec<u8> {
    let flow = flow_id.as_str().as_bytes();
    let mut key = Vec::with_capacity(flow.len() + 1 + rest.len());
    key.extend_from_slice(flow);
    key.push(0);
    key.extend_from_slice(rest);
    key
}

/// `step_records` key: run id (fixed length), then step id.
fn record_key(run_id: RunId, step_id: &StepId) -> Vec<u8> {
    let mut key = run_id.to_bytes().to_vec();
    key.extend_from_slice(step_id.as_str().as_bytes());
    key
}

fn id16(bytes: &[u8]) -> Option<[u8; 16]> {
    bytes.try_into().ok()
}

/// A key as a person reads it (ids with their prefix), for error messages.
fn describe_key(tree: TreeName, key: &[u8]) -> String {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let split_flow = |k: &[u8]| {
        k.iter()
            .position(|&b| b == 0)
            .map(|i| (text(&k[..i]), k[i + 1..].to_vec()))
    };
    let described = match tree {
        TreeName::Events => id16(key).map(|b| EventId::from_bytes(b).to_string()),
        TreeName::Runs => id16(key).map(|b| RunId::from_bytes(b).to_string()),
        TreeName::Leases => id16(key).map(|b| ItemId::from_bytes(b).to_string()),
        TreeName::StepRecords => (key.len() > 16).then(|| {
            let run = id16(&key[..16]).map(RunId::from_bytes).unwrap_or_default();
            format!("{run} {}", text(&key[16..]))
        }),
        TreeName::Queue => split_flow(key).and_then(|(flow, rest)| {
            (rest.len() == 24).then(|| {
                let due = u64::from_be_bytes(rest[..8].try_into().unwrap_or_default());
                let item = id16(&rest[8..]).map(ItemId::from_bytes).unwrap_or_default();
                format!("{flow} {} {item}", Timestamp(due as i64))
            })
        }),
        TreeName::RunsByFlow => split_flow(key).and_then(|(flow, rest)| {
            id16(&rest).map(|b| format!("{flow} {}", RunId::from_bytes(b)))
        }),
        TreeName::Revisions => {
            split_flow(key).map(|(flow, rest)| format!("{flow} {}", text(&rest)))
        }
        TreeName::HookTokens | TreeName::State => Some(text(key)),
        TreeName::Dedupe => split_flow(key).map(|(flow, rest)| format!("{flow} {}", text(&rest))),
        TreeName::DedupeExpiry => (key.len() > 8).then(|| {
            let at = u64::from_be_bytes(key[..8].try_into().unwrap_or_default());
            format!("{} {}", Timestamp(at as i64), text(&key[8..]))
        }),
    };
    described.unwrap_or_else(|| key.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tree names are part of the on-disk format: changing one loses data.
    #[test]
    fn tree_names_are_fixed_and_distinct() {
        let all = [
            TreeName::Events,
            TreeName::Runs,
            TreeName::RunsByFlow,
            TreeName::StepRecords,
            TreeName::Queue,
            TreeName::Leases,
            TreeName::HookTokens,
            TreeName::Revisions,
            TreeName::Dedupe,
            TreeName::DedupeExpiry,
        ];
        let names: Vec<_> = all.iter().map(|t| t.name()).collect();
        assert_eq!(
            names,
            [
                "events",
                "runs",
                "runs_by_flow",
                "step_records",
                "flow_queue",
                "leases",
                "hook_tokens",
                "revisions",
                "dedupe",
                "dedupe_expiry"
            ]
        );
        assert!(!names.contains(&"queue"), "a retired name");
    }

    #[test]
    fn queue_keys_sort_by_due_time_then_id() {
        let item = |flow: &str, due: i64| QueueItem {
            id: ItemId::new(),
            run_id: RunId::new(),
            flow_id: flow.parse().unwrap(),
            step_id: "s".parse().unwrap(),
            attempt: 1,
            due_at: Timestamp(due),
        };
        let (a, b, c) = (item("f", 5), item("f", 256), item("f", 70_000));
        assert!(queue_key(&a) < queue_key(&b));
        assert!(queue_key(&b) < queue_key(&c));
        assert_eq!(queue_key(&item("f", -3))[2..10], [0; 8]);
        // One flow's items sort together, before the next flow's, however late they are due.
        assert!(queue_key(&item("f", i64::MAX)) < queue_key(&item("f-", 0)));
    }

    #[test]
    fn leases_an_earlier_version_stored_are_requeued() {
        let db = base_config(DEFAULT_CACHE_BYTES, false)
            .temporary(true)
            .open()
            .unwrap();
        let leases = db.open_tree(TreeName::Leases.name()).unwrap();
        let queue = db.open_tree(TreeName::Queue.name()).unwrap();
        let item = QueueItem {
            id: ItemId::new(),
            run_id: RunId::new(),
            flow_id: "f".parse().unwrap(),
            step_id: "s".parse().unwrap(),
            attempt: 2,
            due_at: Timestamp(5),
        };
        let lease = Lease {
            lease_until: Timestamp(60_000),
            item: item.clone(),
        };
        leases
            .insert(item.id.to_bytes(), serde_json::to_vec(&lease).unwrap())
            .unwrap();
        assert_eq!(requeue_stored_leases(&leases, &queue).unwrap(), 1);
        assert!(leases.is_empty());
        let queued = queue.get(queue_key(&item)).unwrap().unwrap();
        assert_eq!(serde_json::from_slice::<QueueItem>(&queued).unwrap(), item);
        assert_eq!(requeue_stored_leases(&leases, &queue).unwrap(), 0);
    }

    #[test]
    fn keys_are_described_readably() {
        let run = RunId::new();
        let flow: FlowId = "plan-sync".parse().unwrap();
        assert_eq!(
            describe_key(TreeName::Runs, &run.to_bytes()),
            run.to_string()
        );
        assert_eq!(
            describe_key(TreeName::RunsByFlow, &flow_key(&flow, &run.to_bytes())),
            format!("plan-sync {run}")
        );
        assert_eq!(describe_key(TreeName::Runs, b"\x01\x02"), "0102");
    }

    #[tokio::test]
    async fn a_corrupt_record_is_reported_with_tree_and_key() {
        let store = SledStore::temporary().unwrap();
        let id = RunId::new();
        store
            .new_runs
            .runs
            .insert(id.to_bytes(), &b"{not json"[..])
            .unwrap();
        match store.run(id).await {
            Err(StoreError::Corrupt { tree, detail }) => {
                assert_eq!(tree, "runs");
                assert!(detail.contains(&id.to_string()), "{detail}");
            }
            other => panic!("expected a corrupt-record error, got {other:?}"),
        }
    }

    /// Three callers, one flush in progress when the other two arrive: the two share the next
    /// flush, and nobody returns before a flush that started after its ticket.
    #[tokio::test]
    async fn group_commit_shares_one_flush_between_waiters() {
        use std::sync::Arc;
        use std::sync::Mutex;

        let commit = Arc::new(GroupCommit::default());
        // Each flush records the highest ticket taken when it started.
        let flushes = Arc::new(Mutex::new(Vec::<u64>::new()));
        let (release_first, first_released) = tokio::sync::oneshot::channel::<()>();

        // A caller whose flush records the highest ticket taken when it started, then waits for
        // `gate` (if any) before reporting success.
        let waiter = |commit: Arc<GroupCommit>,
                      flushes: Arc<Mutex<Vec<u64>>>,
                      gate: Option<tokio::sync::oneshot::Receiver<()>>| async move {
            let started = commit.clone();
            commit
                .wait_durable(|| async move {
                    flushes
                        .lock()
                        .unwrap()
                        .push(started.requested.load(Ordering::SeqCst));
                    if let Some(gate) = gate {
                        gate.await.unwrap();
                    }
                    Ok(())
                })
                .await
        };
        let first = tokio::spawn(waiter(
            commit.clone(),
            flushes.clone(),
            Some(first_released),
        ));
        // Let the first caller take ticket 1 and start its (blocked) flush.
        while flushes.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        let second = tokio::spawn(waiter(commit.clone(), flushes.clone(), None));
        let third = tokio::spawn(waiter(commit.clone(), flushes.clone(), None));
        while commit.requested.load(Ordering::SeqCst) < 3 {
            tokio::task::yield_now().await;
        }
        assert!(!second.is_finished() && !third.is_finished());
        release_first.send(()).unwrap();
        for task in [first, second, third] {
            task.await.unwrap().unwrap();
        }
        assert_eq!(
            *flushes.lock().unwrap(),
            [1, 3],
            "one flush for ticket 1, one for 2 and 3"
        );
        assert_eq!(commit.flushed.load(Ordering::SeqCst), 3);
    }

    /// Once a flow's token is on disk, asking for it again is a read: no flush.
    #[tokio::test]
    async fn a_durable_hook_token_is_read_without_a_flush() {
        let store = SledStore::temporary().unwrap();
        let flow_id: FlowId = "orders".parse().unwrap();
        assert_eq!(store.hook_token(&flow_id, "tok-a").await.unwrap(), "tok-a");
        let flushes = store.commit.requested.load(Ordering::SeqCst);
        assert_eq!(store.hook_token(&flow_id, "tok-b").await.unwrap(), "tok-a");
        assert_eq!(store.commit.requested.load(Ordering::SeqCst), flushes);
        let other: FlowId = "refunds".parse().unwrap();
        assert_eq!(store.hook_token(&other, "tok-c").await.unwrap(), "tok-c");
        assert_eq!(store.commit.requested.load(Ordering::SeqCst), flushes + 1);
    }

    const CRASH_DIR: &str = "HOOKFLOW_TEST_CRASH_DIR";

    /// Acknowledged ingests survive the process dying with no shutdown at all (`abort`: no
    /// destructors, no final flush, sled's background flusher off), as after `kill -9`. The
    /// child is this test binary, run again. (The OS keeps what was written, so this cannot tell
    /// an fsync from a plain write: losing power is not simulated. The group-commit tests and
    /// the order of calls in `ingest` cover the fsync.)
    #[test]
    fn acknowledged_ingests_survive_an_abort() {
        if let Some(dir) = std::env::var_os(CRASH_DIR) {
            crash_after_ingesting(Path::new(&dir));
        }
        let dir = tempfile::tempdir().unwrap();
        let this_test = module_path!()
            .split_once("::")
            .map(|(_crate, path)| format!("{path}::acknowledged_ingests_survive_an_abort"))
            .unwrap();
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                this_test.as_str(),
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CRASH_DIR, dir.path())
            .output()
            .unwrap();
        assert!(!child.status.success(), "the child was meant to abort");
        let acked: Vec<RunId> = String::from_utf8_lossy(&child.stdout)
            .lines()
            .filter_map(|line| line.split_once("acked ").map(|(_, id)| id))
            .map(|id| id.parse().unwrap())
            .collect();
        assert_eq!(acked.len(), 20, "child output: {child:?}");

        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let store = SledStore::open(dir.path(), DEFAULT_CACHE_BYTES, false).unwrap();
            for id in &acked {
                assert!(
                    store.run(*id).await.unwrap().is_some(),
                    "acknowledged run {id} lost"
                );
            }
            let items = store
                .claim_due(Timestamp(i64::MAX), 100, Timestamp(0), &FlowRoom::new())
                .await
                .unwrap();
            assert_eq!(items.len(), acked.len(), "acknowledged queue items lost");
        });
    }

    /// A new run of flow `crash` with one item, numbered `n` (its times).
    fn sample_run(n: i64) -> NewRun {
        use crate::model::{Event, RunStatus};

        let flow_id: FlowId = "crash".parse().unwrap();
        let event = Event {
            id: EventId::new(),
            flow_id: flow_id.clone(),
            received_at: Timestamp(n),
            trigger: serde_json::json!({ "n": n }),
        };
        let run = Run {
            id: RunId::new(),
            flow_id: flow_id.clone(),
            revision: Revision::of("id: crash"),
            event_id: event.id,
            status: RunStatus::Queued,
            created_at: Timestamp(n),
            updated_at: Timestamp(n),
            finished_at: None,
            steps: vec![],
            reason: None,
            replay_of: None,
            failure: None,
        };
        let item = QueueItem {
            id: ItemId::new(),
            run_id: run.id,
            flow_id,
            step_id: "first".parse().unwrap(),
            attempt: 1,
            due_at: Timestamp(n),
        };
        NewRun {
            event,
            run,
            items: vec![item],
            dedupe: None,
        }
    }

    #[test]
    fn inbox_records_hold_the_encoded_run_and_older_json_records_still_read() {
        let new = sample_run(7);
        let encoded = EncodedRun::new(&new).unwrap();
        let record = encoded.to_record();
        assert_eq!(EncodedRun::from_record(&record).unwrap(), encoded);
        let legacy = serde_json::to_vec(&new).unwrap();
        assert_eq!(EncodedRun::from_record(&legacy).unwrap(), encoded);
        for cut in [1, 3, record.len() - 1] {
            assert!(
                EncodedRun::from_record(&record[..cut]).is_err(),
                "cut at {cut}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn updates_queued_while_a_batch_is_written_go_together_in_the_next() {
        let batches = Arc::new(UpdateBatches::default());
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let writing = Arc::new(AtomicBool::new(false));
        let pending = || PendingUpdate {
            run_key: [0; 16],
            done_key: None,
            ahead: None,
        };
        let commit = |wait_for: usize| {
            let (batches, sizes, writing) = (batches.clone(), sizes.clone(), writing.clone());
            async move {
                let write = |batch: &[PendingUpdate]| {
                    writing.store(true, Ordering::SeqCst);
                    // The first batch is written only once two more updates queued behind it.
                    let deadline = std::time::Instant::now() + Duration::from_secs(10);
                    while batches.queued.lock().unwrap().len() < wait_for {
                        assert!(std::time::Instant::now() < deadline, "nothing queued");
                        std::thread::yield_now();
                    }
                    sizes.lock().unwrap().push(batch.len());
                    batch.iter().map(|_| Batched::Changed).collect()
                };
                batches.commit(pending(), write).await
            }
        };
        let first = tokio::spawn(commit(2));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !writing.load(Ordering::SeqCst) {
            assert!(
                std::time::Instant::now() < deadline,
                "the first batch never started"
            );
            tokio::task::yield_now().await;
        }
        let (second, third) = tokio::join!(tokio::spawn(commit(0)), tokio::spawn(commit(0)));
        for outcome in [first.await, second, third] {
            assert!(matches!(outcome.unwrap(), Batched::Changed));
        }
        assert_eq!(*sizes.lock().unwrap(), vec![1, 2]);
    }

    #[tokio::test]
    async fn what_a_run_keeps_is_packed_and_plain_json_values_still_read() {
        let store = SledStore::temporary().unwrap();
        let mut new = sample_run(3);
        new.event.trigger = serde_json::json!({ "body": { "note": "renewal ".repeat(40) } });
        let encoded = EncodedRun::new(&new).unwrap();
        assert!(encoded.event.len() < 200, "the event is packed");
        assert!(encoded.items.iter().all(|(_, item)| item[0] == b'{'));
        store.new_runs.write(&[encoded], None).unwrap();
        assert_eq!(
            store.event(new.event.id).await.unwrap().as_ref(),
            Some(&new.event)
        );

        // A store written before values were packed: plain JSON reads as it is.
        let mut old = sample_run(4);
        old.event.trigger = new.event.trigger;
        let trees = &store.new_runs;
        let event = serde_json::to_vec(&old.event).unwrap();
        trees.events.insert(old.event.id.to_bytes(), event).unwrap();
        let run = serde_json::to_vec(&old.run).unwrap();
        trees.runs.insert(old.run.id.to_bytes(), run).unwrap();
        assert_eq!(store.event(old.event.id).await.unwrap(), Some(old.event));
        assert_eq!(store.run(old.run.id).await.unwrap(), Some(old.run));
    }

    /// The child's side: ingest, print each acknowledged run id, then abort.
    fn crash_after_ingesting(dir: &Path) -> ! {
        use std::io::Write;

        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let config = base_config(DEFAULT_CACHE_BYTES, false)
                .path(dir)
                .flush_every_ms(None);
            let store = SledStore::with_config(config, "the crash test directory").unwrap();
            for n in 0..20 {
                let new = sample_run(n);
                let id = new.run.id;
                store.ingest(new).await.unwrap();
                let mut out = std::io::stdout().lock();
                writeln!(out, "acked {id}").unwrap();
                out.flush().unwrap();
            }
        });
        std::process::abort()
    }

    #[tokio::test]
    async fn a_failed_flush_is_reported_and_the_next_caller_flushes_again() {
        let commit = GroupCommit::default();
        let failed = commit
            .wait_durable(|| async { Err(StoreError::Backend("disk full".into())) })
            .await;
        assert!(matches!(failed, Err(StoreError::Backend(_))));
        assert_eq!(commit.flushed.load(Ordering::SeqCst), 0);
        let mut flushed = false;
        commit
            .wait_durable(|| async {
                flushed = true;
                Ok(())
            })
            .await
            .unwrap();
        assert!(flushed);
        assert_eq!(commit.flushed.load(Ordering::SeqCst), 2);
    }
}
