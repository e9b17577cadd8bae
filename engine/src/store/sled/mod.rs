//! The sled backend: hookflow's embedded default store, for one node.
//!
//! This file opens the store and implements [`Store`]; beside it: `layout` (trees, keys, value
//! encoding, errors), `new_runs` (new runs written to the trees, and the promoter that moves them
//! from the inbox), `update` (run updates, written in shared transactions), `hints` (where claims
//! start scanning) and `group_commit` (acknowledgments sharing one fsync).
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
//! scanning past its items. Within a flow, a claim starts where the previous one found the first
//! item not leased (`hints.rs`), not at the leased items in front.
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
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use ::sled::transaction::Transactional;
use ::sled::{Config, Db, IVec, Tree};
use async_trait::async_trait;
use serde::de::DeserializeOwned;

use super::inbox::Inbox;
use super::{Decide, FlowRoom, Ingested, NewRun, Result, RunPage, RunQuery, Store, StoreError};
use crate::ids::{EventId, FlowId, ItemId, RunId};
use crate::model::{Event, QueueItem, Revision, Run, StepRecord, Timestamp};

mod group_commit;
mod hints;
mod layout;
mod new_runs;
#[cfg(test)]
mod tests;
mod update;

use self::group_commit::GroupCommit;
use self::layout::{
    abort, backend, corrupt, decode, distinct_flows, due_bytes, encode, flow_key, id16, prefix_end,
    queue_key, tx_error, DedupeEntry, Lease, TreeName, TxResult,
};
use self::new_runs::{EncodedRun, NewRunTrees, Promoter};
use self::update::{Batched, PendingUpdate, Prepared, UpdateBatches, Writing};

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

impl SledStore {
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
                hints: Arc::default(),
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
            let hints = &self.new_runs.hints;
            let start = hints
                .start(&prefix)
                .map_or(Bound::Included(prefix.clone().into()), Bound::Included);
            let mut due = std::collections::VecDeque::new();
            let mut first_free = None;
            for entry in self
                .new_runs
                .queue
                .range::<IVec, _>((start, Bound::Excluded(prefix_end(&prefix).into())))
            {
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
                first_free.get_or_insert_with(|| key.clone());
                let item: QueueItem = decode(TreeName::Queue, &key, &value)?;
                if item.due_at <= now && !leases.writing.contains_key(&item.run_id) {
                    due.push_back((key, item));
                }
            }
            if let Some(key) = first_free {
                hints.found(&prefix, key);
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
        self.queued_add(written.queued.len() as i64);
        self.new_runs
            .hints
            .queued(written.queued.iter().map(|key| &key[..]));
        Ok(written.run)
    }

    async fn requeue_expired(&self, now: Timestamp) -> Result<usize> {
        let mut leases = self.leases();
        let before = leases.items.len();
        leases.items.retain(|_, (_, until)| *until > now);
        let ended = before - leases.items.len();
        if ended > 0 {
            self.new_runs.hints.clear();
        }
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

impl Drop for SledStore {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
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
