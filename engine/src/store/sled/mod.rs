//! The sled backend: hookflow's embedded default store, for one node.
//!
//! This file opens the store and implements [`Store`]; beside it: `layout` (trees, keys, value
//! encoding, errors), `new_runs` (new runs written to the trees, and the promoter that reads them
//! from the inbox), `fresh` (new runs claimed from memory and written with their first update),
//! `update` (run updates, written in shared transactions), `hints` (where claims start scanning),
//! `pending_keys` (dedupe keys of runs still in the inbox), `group_commit` (acknowledgments sharing
//! one fsync), `reingest` (quarantined inbox records ingested again), `logs` (the audit record and
//! the hook logs), `storage` (storage between runs), and `../inbox.rs` (the fsynced log new runs are
//! appended to).
//!
//! # The engine on one page
//!
//! A new run goes from the catch hook's `ingest` to the trees through the states below. An item is
//! **leased** if and only if `Leases::items` has an entry for its id, giving its queue key and the
//! lease's owner, fencing token and expiry. That map is in memory only
//! and ends with the process.
//!
//! ## Where a run can be
//!
//! | state | where it lives | durable | `run`/`event`/`list_runs` | its items claimable |
//! |---|---|---|---|---|
//! | **appending** | an `Append` in the inbox writer's channel, or written at a segment's end with its `fdatasync` still pending (number > `durable_through`) | no (a torn tail is cut off at open, but a whole record may survive a process crash and run without having been acknowledged) | no | no |
//! | **unread** | an inbox segment: `Reader::next` ≤ n ≤ `durable_through` | yes (inbox) | no (`next_due` answers "in 2 ms") | no |
//! | **reading** | the promoter thread, between `Reader::read` and `Fresh::add` | yes (inbox) | no | no |
//! | **waiting** | `Fresh`, `Place::Waiting`; also in `State::waiting` if it has exactly one item | inbox | yes, from memory | its one item, once due |
//! | **taken** | `Fresh`, `Place::Taken`; its item leased | inbox | yes | no |
//! | **promoting** | `Fresh`, `Place::Promoting { leased }`: in the promoter's `write_fresh` batch | inbox | yes | no (out of `waiting` and not yet in `flow_queue`) |
//! | **first update** | taken or promoting-leased, with a `PendingUpdate { fresh: Some }` in `UpdateBatches` or in its transaction | inbox | yes | no |
//! | **stored** | `events`, `runs`, `runs_by_flow`, `flow_queue` (+ `dedupe`, `dedupe_expiry`), all written in one transaction | from the next sled flush + log fsync; until then its inbox record (n > `inbox:promoted`) covers it | yes | a queued item once due, unless it is leased or its run is in `Leases::writing` |
//! | **promoted** | stored, and n ≤ `inbox:promoted` on disk: its segment may be deleted | yes (sled) | yes | as stored |
//!
//! A run can also skip the inbox: `NewRunTrees::write` stores it directly under the `PendingKeys` lock,
//! followed by `durable()`, before `ingest` returns. That happens for a temporary store, when `MAX_PENDING`
//! keys are held, when the `dedupe` tree holds the key (then nothing is written: the run is a `Duplicate`),
//! or for a run with step records (steps executed before ingest: inbox records carry none; the
//! runtime sends such runs only to backends whose `takes_steps_at_ingest` is true, not to sled).
//!
//! A run that waits (a `delay`, a retry's backoff, a `wait_for_callback` step until its timeout) is
//! **stored** with its item queued for later; a callback to a resume URL is an `update_run` without
//! a lease, applied like any other.
//!
//! ## What moves it
//!
//! | from | event (actor) | to |
//! |---|---|---|
//! | — | `ingest`: `Inbox::append` sends an `Append` (a run with a dedupe key first holds the key in `PendingKeys`, `durable` = false) | appending |
//! | — | `ingest` with a key held in `PendingKeys`: waits for that run's `durable`, then answers `Duplicate` | (none) |
//! | appending | inbox writer thread: one `write` + `fdatasync` per batch, then `durable_through` = n, `grew.notify_all()`, answers (and `send_replace(true)`) | unread |
//! | appending | the write fails: the segment is cut back (`set_len`), the error is answered and the held key is released | gone (not acknowledged) |
//! | unread | promoter `Reader::read`, while `Fresh` has room (`Tuning::capacity` waiting) | reading |
//! | reading | n ≤ `recovering_through` and `runs` holds it: skipped, key released; an undecodable record is moved to the quarantine | stored / quarantined |
//! | reading | a run with more than one first item: `write_runs(skip_stored)` straight away, key released (if that fails it is added to `Fresh` anyway) | stored |
//! | reading | `Fresh::add` (sets `Fresh::read_through`) | waiting |
//! | waiting | `claim_due`: `Fresh::peek` + `Fresh::took` + lease, all under `leases` | taken |
//! | waiting | promoter `Fresh::for_trees`: no claim for `Tuning::idle`, or waiting for `Tuning::stale`, or not exactly one item; and only while `queued` < `PROMOTE_WINDOW` | promoting (not leased) |
//! | taken | `requeue_expired`: the lease ended, so `Fresh::released` | waiting |
//! | taken | promoter `for_trees`: taken for `Tuning::stale` | promoting (leased) |
//! | taken, promoting (leased) | `update_run`, first update: `write_batch` creates event, index, run (+ dedupe key) with the update, without the finished item, or finds the run already stored; afterwards `Leases`, `Fresh::written`, key released | stored |
//! | promoting | `write_fresh` (`skip_stored`), then `Fresh::written` and keys released; if the write fails it stays promoting and is retried on the next step | stored (item queued, or still leased) |
//! | any fresh | `Drop`: `Fresh::all` marks every run promoting, not leased; `write_fresh` + `Db::flush`, then `Fresh::written` | stored |
//! | stored: item queued | `claim_due` (tree scan from `ScanHints`) | item leased |
//! | stored: item leased | `update_run` finishing it: the batch transaction removes it, queues new items, and the items the caller takes are leased after the transaction | next items |
//! | stored: item leased | `requeue_expired` (`queued` += 1, `ScanHints::clear`) | item queued |
//! | stored | promoter `store_position` when `low_water` ≥ n (every `MARK_EVERY`, or when a segment is done): sync, write `inbox:promoted`, sync; segments ≤ mark are deleted | promoted |
//! | (open) | `requeue_stored_leases`; `Inbox::open(mark)` cuts a torn tail and deletes segments ≤ mark; `hold_unpromoted`; the reader starts at mark + 1 | records > mark: unread; every item in `flow_queue`: queued |
//!
//! ## Invariants
//!
//! - An acknowledged inbox run has n ≤ `durable_through`, and its segment stays until `inbox:promoted` on
//!   disk ≥ n. A segment is deleted only when its last record ≤ `Promoter::mark`.
//! - `inbox:promoted` = `Promoter::mark` ≤ `Fresh::low_water()`, and low water never decreases. Every record
//!   ≤ low water has its run stored (its transaction has returned) or was set aside in the quarantine. `store_position` flushes
//!   and fsyncs before it writes the mark. So a fresh run's number is always > the mark and its record is
//!   on disk.
//! - A run leaves `Fresh` only through `Fresh::written`, called after a transaction that wrote it, or
//!   found it stored, has returned. `run`, `event` and `list_runs` read `Fresh` first and then the trees,
//!   so a run that has once been readable stays readable. `list_runs` keeps the stored copy when both
//!   show up.
//! - Both writers of a fresh run (promoter and first update) check in their transaction that `runs`
//!   does not hold it yet; the second writer finds it stored. A run's event, index entry, items and
//!   dedupe entries go in the same transaction as the run.
//! - A fresh run is claimable only in `Place::Waiting` with exactly one item. While it is
//!   `Place::Taken`, its item is in `Leases`: `took` and the lease are recorded under `leases`, and so is
//!   `released`.
//! - An item of `flow_queue` stays there until the update that finishes it removes it (the item a fresh
//!   run's first update finishes is never written). A claim skips it while it is leased or while its
//!   run is in `Leases::writing`. Items a caller takes in an update are leased before `Writing` ends.
//! - While a run with a dedupe key is anywhere from appending to fresh, `PendingKeys` maps the key to
//!   it. An ingest checks that map and the `dedupe` tree, and inserts or writes directly, under the one
//!   `PendingKeys` lock. A key is released only after its run's transaction, or when its append failed.
//!   A duplicate answered from memory waits until the original is on disk. At open, the keys of the
//!   records after the mark are held before `open` returns.
//! - `durable()` returns only after a flush and a log fsync that started after the caller's write
//!   (`GroupCommit`).
//! - `Leases`, `Fresh`, `PendingKeys`, `ScanHints` and `queued` live in memory and are rebuilt at open:
//!   no leases (every item in `flow_queue` is due), fresh runs from the records after the mark, and
//!   `queued` = `flow_queue.len()`.
//!
//! ## Positions and counters
//!
//! `inbox:promoted` = `mark` ≤ `low_water()` ≤ `Fresh::read_through` ≤ `Promoter::read_through`
//! = `Reader::next` − 1 (after each successful read) ≤ `durable_through` = `Writer::next` − 1 (between batches).
//!
//! | name | meaning | moved by |
//! |---|---|---|
//! | `Writer::next` | the number the next appended record gets | inbox writer, after a synced batch |
//! | `Durable::through` (`durable_through()`) | last record synced to disk; the reader never reads past it | inbox writer (then `grew`); at open: last whole record, or the mark |
//! | `Reader::next` | next record the promoter reads | `Reader::read` |
//! | `Promoter::read_through` / `Fresh::read_through` | last record read / last record handed to `Fresh` | `Promoter::read` / `Fresh::add` |
//! | `Fresh::low_water()` | every run of a record ≤ it is stored, though maybe not flushed (lowest fresh number − 1, else `read_through`) | `Fresh::add`, `Fresh::written` |
//! | `Promoter::mark` = `state` key `inbox:promoted` | every run of a record ≤ it is stored on disk; recovery reads from mark + 1 | `store_position` |
//! | `Promoter::recovering_through` | `durable_through` at open: records up to it may already be stored | fixed |
//! | `NewRunTrees::queued` | unleased items in `flow_queue`; promotion of runs that are not leased pauses at `PROMOTE_WINDOW` | `write_runs` +, `claim_due` −, `update_run` +, `requeue_expired` + |
//! | `ScanHints` (per flow) | a claim's scan start; every item before it was leased when it was found; at most `MAX_AGE` old | claims set it; new keys before a hint drop it; `requeue_expired` clears all |
//! | `GroupCommit::{requested, flushed}` | tickets taken / tickets covered by a completed flush | `durable()` |
//! | `in_inbox()` | `durable_through` − `low_water` (a metric, in `stats`) | derived |
//!
//! ## Threads and locks
//!
//! Threads: `hookflow-inbox` (`Writer::run`: frames, writes and syncs appends, advances
//! `durable_through`; it stops when `Inbox` is dropped) and `hookflow-promoter` (`Promoter::run`: reads
//! records, writes fresh runs, stores the mark, deletes segments; it stops at `stop`, which `Drop` sets
//! without joining). Beside them run sled's flusher thread and I/O pool (`flush_async`) and tokio's
//! blocking pool (the log fsync). Async tasks call sled directly, and it blocks.
//!
//! | lock | kind | guards |
//! |---|---|---|
//! | `SledStore::leases` | std `Mutex<Leases>` | leased items, `writing` runs |
//! | `PendingKeys::keys` | std `Mutex` | dedupe keys of runs not yet stored |
//! | `Fresh` (`Mutex<State>`) | std | fresh runs, their `Place`, `waiting`, `numbers`, `read_through`, `last_claim` |
//! | `ScanHints` | std | per-flow scan starts |
//! | `UpdateBatches::queued` | std | updates waiting for a batch |
//! | `durable_tokens` | std | hook tokens known to be on disk |
//! | `Inbox::appends` | std `Mutex<mpsc::Sender>` | the writer's channel |
//! | `Durable::through` + `grew` | std `Mutex` + `Condvar` | last synced record; the promoter waits on `grew` |
//! | `UpdateBatches::turn` | tokio | the right to write a batch (held across `write_batch`) |
//! | `GroupCommit::flushing` | tokio | one flush at a time (held across `flush_async` + fsync) |
//! | sled's `concurrency_control` | process-wide parking_lot `RwLock` | exclusive: every transaction; shared: each get/insert/remove/CAS, each iterator step, and every flush |
//!
//! Locks held together (the complete list): `leases` → `Fresh` (claim_due: `peek`, `took`; next_due;
//! requeue_expired: `released`), `leases` → `ScanHints` (claim_due, requeue_expired), `leases` →
//! `Durable::through` (next_due), `leases` → sled shared (the scans in claim_due, next_due); `PendingKeys`
//! → sled shared (`key_taken`), `PendingKeys` → sled exclusive, then `ScanHints` (a direct write);
//! `turn` → `UpdateBatches::queued` and `turn` → sled exclusive (the batch); `flushing` → sled shared.
//!
//! **Lock order:** `turn`, `flushing` → `leases`, `PendingKeys` → `Fresh`, `ScanHints`,
//! `Durable::through`, `UpdateBatches::queued`, `durable_tokens`, `Inbox::appends`,
//! `Coordination`'s lanes and accounts → sled's lock.
//! - Never take a lock while holding one that comes later in this order.
//! - Never hold two locks from the same group. In particular, never take `leases` while holding
//!   `PendingKeys`, and never the reverse.
//! - The third group holds leaves: call nothing while holding one.
//! - Never take any of our locks inside a transaction closure or a `Decide`.
//! - Never take a tokio lock while holding a std lock, and never keep a std guard across an `.await`.
//!
//! Cost of this order: sled's lock prefers writers, so a transaction that waits for a flush makes every
//! plain read wait with it. A claim holding `leases`, or a direct write holding `PendingKeys`, can
//! therefore keep that lock for the length of an fsync.
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
//! | `state`        | a runtime state key (`pacing:hubspot:…`, `schedule:FLOW`) | JSON value          |
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
//! Every change that touches more than one record is one multi-tree sled transaction: writing a new
//! run (event, run, index, items, dedupe entries: at ingest for a direct write, else later by the
//! promoter or with the run's first update; an ingest through the inbox is one inbox record) and
//! update (run, records, new items, removal of the finished item). sled 0.34
//! runs transactions under a process-wide lock that also excludes plain reads and writes, so a
//! transaction sees a stable state; a transaction is also recovered all-or-nothing after a crash.
//! So little happens inside one: an update is decided and encoded on the run as read before it
//! (`Prepared`), and the transaction only checks that the stored run is still that value (if not,
//! the update is decided again inside a transaction of its own). Concurrent updates of different
//! runs share one transaction (`UpdateBatches`, a group commit): each stays all-or-nothing, and
//! sled's per-transaction cost (a log buffer roll, the exclusive lock) is paid once per batch.
//! Invariants kept:
//! - a queue item stays in the queue tree until the update that finishes it removes it (the one
//!   item a fresh run's first update finishes is never written to it);
//! - every run has exactly one `runs_by_flow` entry (written in the same transaction as the run).
//!
//! # Leases
//!
//! A sled database is open in one process at a time, so a lease cannot outlive the process holding
//! it: leases are kept in memory (`Leases`: owner, fencing token from a counter, expiry, and how
//! many items each flow holds, for concurrency limits), and claiming writes nothing. A commit or
//! renewal is checked against that map under its lock: a token that is not the item's current one
//! is refused (`LeaseLost`). A leased item stays in the queue tree, skipped by claims; the update
//! that finishes it removes it in its transaction and then forgets the lease. When the process
//! stops or crashes, its leases end with it and the items are simply due at the next open, so the
//! `requeue_expired(now)` of start-up finds nothing to take over. Items a worker
//! takes for itself in an update (`RunUpdate::take`) are written to the queue tree and marked
//! leased after the transaction; while an update of a run is being written, claims skip that run's
//! items, so none is claimed in between. Earlier versions kept leases in a `leases` tree: whatever
//! it holds is moved back to the queue at open.
//!
//! # Durability
//!
//! sled buffers writes and flushes in the background (every 500 ms by default), and its flush is
//! slow and blocks transactions. So a new run (with or without a dedupe key, except a direct write,
//! below) is not written to the trees at ingest: it is appended to the **inbox** (`inbox.rs`, `DATA/inbox/`), an fsynced log with group
//! commit, and `ingest` returns once that append is on disk. A promoter thread reads inbox records
//! in order into memory as **fresh runs** (`fresh.rs`), readable, listed and claimable from there a
//! few milliseconds after their acknowledgment. A claimed fresh run is written to the trees by the
//! update of its first step, in that update's transaction (one transaction per run, no queue item
//! written and removed); the fresh runs claims leave alone (no claim looked for a moment, or one
//! waited a second) the promoter writes to the trees itself, a batch per transaction, pausing
//! while the queue holds [`PROMOTE_WINDOW`] items, so a large backlog waits in the inbox on disk
//! instead of in memory. The number of the record through which the trees hold every run (`state`
//! key `inbox:promoted`) is stored after a flush that covers those runs (every half second, or when
//! an inbox segment is done), and a segment is deleted only once that number is on disk past it.
//! After a crash the promoter reads on from that number, skipping the runs the trees hold.
//!
//! A new run with a dedupe key goes through the inbox too. Until it is written to the trees (by
//! its first update or by the promoter), its key is held in memory (`pending_keys.rs`): an
//! ingest checks that and the `dedupe` tree under one lock. Beyond `MAX_PENDING` waiting keys,
//! such a run is written to the trees directly. At open, the keys of the records not yet
//! promoted are read back into memory before anything is ingested. A duplicate found in the
//! `dedupe` tree, and a run written directly, wait for a flush and fsync (`GroupCommit`,
//! concurrent callers share one); a duplicate of a run still in the inbox waits for that run's
//! append to be on disk. So do
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
//!
//! # Coordination
//!
//! Named queues' lanes and connector accounts' pacing windows are kept in memory
//! (`store::coordination`, one process). An account's blocked-until time (`pacing:ACCOUNT`) and a
//! schedule flow's last claimed tick (`schedule:FLOW`) are kept in `state`, raised by compare and
//! swap (so a lower time never replaces a higher one, and one caller wins each tick) and synced
//! before the call returns.

use std::collections::HashMap;
use std::fmt;
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use ::sled::transaction::Transactional;
use ::sled::{Config, Db, IVec, Tree};
use async_trait::async_trait;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use super::coordination::{Coordination, LaneEntry, LaneKey};
use super::inbox::Inbox;
use super::{
    ClaimRequest, Claimed, Committed, Decide, Entry, FlowLimits, Ingested, Lease, LeaseToken,
    LogEntry, LogName, LogPage, LogQuery, Namespace, NewRun, NodeId, Notices, PruneLogs,
    Quarantined, Reingested, Result, RunNotice, RunPage, RunQuery, StorageAnswer, StorageCall,
    StorageKey, Store, StoreError,
};
use crate::ids::{EventId, FlowId, ItemId, RunId};
use crate::model::{Event, QueueItem, Revision, Run, StepRecord, Timestamp};

mod fresh;
mod group_commit;
mod hints;
mod layout;
mod logs;
mod new_runs;
mod pending_keys;
mod reingest;
mod storage;
#[cfg(test)]
mod suite;
#[cfg(test)]
mod tests;
mod update;

use self::fresh::Fresh;
#[cfg(test)]
pub(crate) use self::fresh::Tuning as FreshTuning;
use self::group_commit::GroupCommit;
use self::layout::{
    abort, backend, corrupt, decode, describe_key, distinct_flows, due_bytes, encode, flow_key,
    id16, prefix_end, queue_key, tx_error, DedupeEntry, Lease as StoredLease, TreeName, TxResult,
};
use self::logs::Logs;
use self::new_runs::{EncodedRun, NewRunTrees, Promoter};
use self::pending_keys::{PendingKey, Settling, MAX_PENDING};
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

/// The `state` key holding the number of an inbox record through which the trees hold every run,
/// on disk: recovery reads the inbox on after it.
const PROMOTED_KEY: &str = "inbox:promoted";
/// The promoter stops moving inbox records into the trees while the queue holds this many items:
/// beyond it, a backlog waits in the inbox, on disk, costing no memory.
const PROMOTE_WINDOW: i64 = 20_000;

/// [`PROMOTE_WINDOW`], or the value of `HOOKFLOW_PROMOTE_WINDOW` when it is set to a number (0
/// keeps every accepted event in the inbox: the end-to-end tests of inbox recovery use it).
fn promote_window() -> i64 {
    std::env::var("HOOKFLOW_PROMOTE_WINDOW")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(PROMOTE_WINDOW)
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
    /// New runs read from the inbox and not yet in the trees.
    fresh: Arc<Fresh>,
    /// Tells the promoter thread to stop.
    stop: Arc<AtomicBool>,
    /// Hook tokens known to be on disk, by flow. Tokens never change once stored, so these are
    /// answered from memory (the catch path asks on every request).
    durable_tokens: Mutex<HashMap<FlowId, String>>,
    /// The queue items this process's workers hold.
    leases: Mutex<Leases>,
    /// Run updates waiting to be written together.
    batches: UpdateBatches,
    /// Runs created and finished, for whoever waits on them in this process.
    notices: Notices,
    /// Lanes and pacing windows, in memory (one process); pacing waits are also kept in `state`.
    coordination: Coordination,
    /// The audit record and the hook logs.
    logs: Logs,
    /// Storage between runs.
    storage: storage::StorageTrees,
}

/// The queue items leased to this process's workers, kept in memory: a sled database is open in
/// one process at a time, so a lease cannot outlive the process that holds it. A leased item stays
/// in the queue tree (claims skip it) until the update that finishes it removes it; when the
/// process ends, its leases end with it and the items are simply due. Claiming costs no write.
#[derive(Debug, Default)]
struct Leases {
    /// Leased items, by id.
    items: HashMap<ItemId, Held>,
    /// How many items each flow has leased (for flows' concurrency limits).
    per_flow: HashMap<FlowId, usize>,
    /// The last fencing token handed out.
    last_token: u64,
    /// Runs an `update_run` is writing now (how many calls): their queued items are not claimed
    /// until it has marked the items it takes for its caller as leased.
    writing: HashMap<RunId, usize>,
}

/// One held lease.
#[derive(Debug)]
struct Held {
    /// The item's queue key.
    key: IVec,
    flow: FlowId,
    owner: NodeId,
    token: LeaseToken,
    until: Timestamp,
    /// How many `update_run` calls are committing under this lease now: while any is, the lease
    /// is not taken over (`requeue_expired`), even if it expires, so a commit found held is
    /// applied while it is still held.
    committing: usize,
}

/// Marks a held lease as committing for as long as it lives (see [`Held::committing`]).
struct Committing<'a> {
    store: &'a SledStore,
    lease: &'a Lease,
}

impl<'a> Committing<'a> {
    /// Marks `lease` as committing and answers its item's queue key, or `LeaseLost`.
    fn start(store: &'a SledStore, lease: &'a Lease) -> Result<(Self, IVec)> {
        let mut leases = store.leases();
        let held = leases.held(lease)?;
        held.committing += 1;
        Ok((Self { store, lease }, held.key.clone()))
    }
}

impl Drop for Committing<'_> {
    fn drop(&mut self) {
        if let Ok(held) = self.store.leases().held(self.lease) {
            held.committing -= 1;
        }
    }
}

impl Leases {
    /// Whether the item under this queue key (which ends in the item id) is leased.
    fn holds(&self, queue_key: &[u8]) -> bool {
        let id = queue_key.len().checked_sub(16).map(|at| &queue_key[at..]);
        id.and_then(id16)
            .is_some_and(|id| self.items.contains_key(&ItemId::from_bytes(id)))
    }

    /// Leases an item under a new token.
    fn grant(
        &mut self,
        item: ItemId,
        key: IVec,
        flow: &FlowId,
        owner: &NodeId,
        until: Timestamp,
    ) -> Lease {
        self.last_token += 1;
        let token = LeaseToken(self.last_token);
        *self.per_flow.entry(flow.clone()).or_default() += 1;
        let held = Held {
            key,
            flow: flow.clone(),
            owner: owner.clone(),
            token,
            until,
            committing: 0,
        };
        if let Some(old) = self.items.insert(item, held) {
            self.forget_flow(&old.flow);
        }
        Lease {
            item,
            owner: owner.clone(),
            token,
            until,
        }
    }

    /// The held lease that `lease` names, if it is still held.
    fn held(&mut self, lease: &Lease) -> Result<&mut Held> {
        match self.items.get_mut(&lease.item) {
            Some(held) if held.token == lease.token && held.owner == lease.owner => Ok(held),
            _ => Err(StoreError::LeaseLost { item: lease.item }),
        }
    }

    /// Ends an item's lease.
    fn end(&mut self, item: &ItemId) -> Option<Held> {
        let held = self.items.remove(item)?;
        self.forget_flow(&held.flow);
        Some(held)
    }

    fn forget_flow(&mut self, flow: &FlowId) {
        if let Some(n) = self.per_flow.get_mut(flow) {
            *n -= 1;
            if *n == 0 {
                self.per_flow.remove(flow);
            }
        }
    }

    /// How many more items of each limited flow may be leased now.
    fn room(&self, limits: &FlowLimits) -> FlowLimits {
        limits
            .iter()
            .map(|(flow, limit)| {
                let leased = self.per_flow.get(flow).copied().unwrap_or(0);
                (flow.clone(), limit.saturating_sub(leased))
            })
            .collect()
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
        Self::open_tuned(
            path,
            cache_bytes,
            compression,
            promote_window(),
            fresh::Tuning::default(),
        )
    }

    /// [`open`](Self::open) with another promotion window and fresh-run timing (for tests).
    pub(crate) fn open_tuned(
        path: &Path,
        cache_bytes: u64,
        compression: bool,
        window: i64,
        tuning: fresh::Tuning,
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
            StoreError::unavailable(
                format!("cannot open sled's log {} for fsync", log.display()),
                e,
            )
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
            StoreError::unavailable(
                format!("cannot open the inbox in {}", inbox_dir.display()),
                e,
            )
        })?;
        let held = pending_keys::hold_unpromoted(&reader, &store.new_runs.pending_keys)
            .map_err(|e| StoreError::unavailable("cannot read the inbox", e))?;
        if held > 0 {
            tracing::info!(
                keys = held,
                "holding the dedupe keys of accepted events not yet in the store"
            );
        }
        store.fresh = Arc::new(Fresh::after(promoted, tuning));
        let promoter = Promoter {
            trees: store.new_runs.clone(),
            fresh: store.fresh.clone(),
            db: store.db.clone(),
            log_file,
            reader,
            recovering_through: inbox.durable_through(),
            read_through: promoted,
            mark: promoted,
            marked_at: std::time::Instant::now(),
            finished: Vec::new(),
            window,
            stop: store.stop.clone(),
        };
        std::thread::Builder::new()
            .name("hookflow-promoter".into())
            .spawn(move || promoter.run())
            .map_err(|e| StoreError::unavailable("cannot start the promoter thread", e))?;
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
            StoreError::unavailable(format!("cannot open the sled store in {place}"), e)
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
                step_records: tree(TreeName::StepRecords)?,
                state: tree(TreeName::State)?,
                queued: Arc::new(AtomicI64::new(queued)),
                hints: Arc::default(),
                pending_keys: Arc::default(),
            },
            inbox: None,
            fresh: Arc::default(),
            stop: Arc::default(),
            durable_tokens: Mutex::default(),
            leases: Mutex::default(),
            batches: UpdateBatches::default(),
            notices: Notices::default(),
            coordination: Coordination::default(),
            logs: Logs::new(tree(TreeName::AuditLog)?, tree(TreeName::HookLog)?),
            storage: storage::StorageTrees {
                entries: tree(TreeName::Storage)?,
                expiry: tree(TreeName::StorageExpiry)?,
                applied: tree(TreeName::StorageApplied)?,
                applied_expiry: tree(TreeName::StorageAppliedExpiry)?,
            },
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
                    .map_err(|e| StoreError::unavailable("sled: flush failed", e))?;
                let Some(file) = self.log_file.clone() else {
                    return Ok(());
                };
                tokio::task::spawn_blocking(move || file.sync_all())
                    .await
                    .map_err(|e| StoreError::unavailable("fsync task failed", e))?
                    .map_err(|e| StoreError::unavailable("fsync of sled's log failed", e))
            })
            .await
    }

    /// Ingests a run with a dedupe key through the inbox, unless the key is taken (in the trees
    /// or by a run still in the inbox), too many keys wait in memory, or the run has step records.
    async fn ingest_deduped(&self, inbox: &Inbox, run: &EncodedRun) -> Result<Ingested> {
        let (key, expires_at, received_at) = run.dedupe().expect("a run with a dedupe key");
        let pending_keys = &self.new_runs.pending_keys;
        loop {
            let decided = {
                let mut pending = pending_keys.lock();
                if let Some(held) = pending.get(key).filter(|p| p.expires_at > received_at) {
                    KeyCheck::Held(held.clone())
                } else if run.has_records()
                    || self.key_taken(key, received_at)?
                    || (pending.len() >= MAX_PENDING && !pending.contains_key(key))
                {
                    // Written under the lock, so no run can take the key in the meantime (and
                    // never while an older run in the inbox holds it, expired: that one must be
                    // written first).
                    KeyCheck::Written(self.new_runs.write(std::slice::from_ref(run))?[0])
                } else {
                    let (durable, receiver) = watch::channel(false);
                    let held = PendingKey {
                        event_id: run.event_id()?,
                        run_id: run.run_id()?,
                        expires_at,
                        durable: receiver,
                    };
                    pending.insert(key.to_vec(), held);
                    KeyCheck::Taken(durable)
                }
            };
            match decided {
                KeyCheck::Written(outcome) => {
                    self.durable().await?;
                    return Ok(outcome);
                }
                // Settled however this call ends (see `Settling`): repeats wait for exactly this
                // outcome.
                KeyCheck::Taken(durable) => {
                    let run_id = run.run_id()?;
                    let appended = match inbox.send(run.to_record()) {
                        Ok(on_disk) => {
                            let keys = pending_keys.clone();
                            Settling::new(on_disk, durable, key, run_id, keys)
                                .wait()
                                .await
                        }
                        Err(e) => {
                            pending_keys.release(key, run_id);
                            Err(e)
                        }
                    };
                    return appended
                        .map(|()| Ingested::Created)
                        .map_err(|e| StoreError::unavailable("inbox append failed", e));
                }
                // A repeated delivery: answered once the original is on disk. If its append
                // failed (or its ingest was dropped before it knew), the key is released and this
                // one tries to become the original.
                KeyCheck::Held(mut held) => {
                    if held.durable.wait_for(|on_disk| *on_disk).await.is_ok() {
                        return Ok(Ingested::Duplicate {
                            event_id: held.event_id,
                            run_id: held.run_id,
                        });
                    }
                    pending_keys.release(key, held.run_id);
                }
            }
        }
    }

    /// Whether the `dedupe` tree holds `key`, unexpired for an event that arrived at `received_at`.
    fn key_taken(&self, key: &[u8], received_at: Timestamp) -> Result<bool> {
        let taken: Option<DedupeEntry> = self.get(
            &self.new_runs.dedupe,
            TreeName::Dedupe,
            key,
            &describe_key(TreeName::Dedupe, key),
        )?;
        Ok(taken.is_some_and(|entry| entry.expires_at > received_at))
    }

    /// Writes a new run to the trees and waits for a flush that covers it: the transaction has
    /// returned, so the write is in sled's log (and, for a duplicate, so is the original, which
    /// was applied before this read it). Only then may the caller acknowledge the event.
    async fn write_durably(&self, run: &EncodedRun) -> Result<Ingested> {
        let outcome = self.new_runs.write(std::slice::from_ref(run))?[0];
        self.durable().await?;
        Ok(outcome)
    }

    /// Appends a new run to the inbox; answers once the record is on disk.
    async fn append(&self, inbox: &Inbox, run: &EncodedRun) -> Result<Ingested> {
        inbox
            .append(run.to_record())
            .await
            .map_err(|e| StoreError::unavailable("inbox append failed", e))?;
        Ok(Ingested::Created)
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
                .saturating_sub(self.fresh.low_water())
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
    /// written), with their keys, each `true` if it is a fresh run's: oldest due first within a
    /// flow, at most `room[flow]` of a listed flow, and `want` shared between flows (an equal share
    /// each first, then what is left to whoever has more).
    fn due_candidates(
        &self,
        leases: &Leases,
        now: Timestamp,
        want: usize,
        room: &FlowLimits,
    ) -> Result<Vec<(IVec, QueueItem, bool)>> {
        let mut flows = distinct_flows(&self.new_runs.queue, TreeName::Queue)?;
        let mut fresh: HashMap<FlowId, Vec<QueueItem>> = HashMap::new();
        let peeked = self
            .fresh
            .peek(now, want, |item| leases.items.contains_key(&item.id));
        for item in peeked {
            if !flows.contains(&item.flow_id) {
                flows.push(item.flow_id.clone());
            }
            fresh.entry(item.flow_id.clone()).or_default().push(item);
        }
        flows.sort();
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
                    due.push_back((key, item, false));
                }
            }
            if let Some(key) = first_free {
                hints.found(&prefix, key);
            }
            // The flow's fresh runs in their place among its queued items.
            if let Some(items) = fresh.remove(flow) {
                let items = items
                    .into_iter()
                    .map(|item| (IVec::from(queue_key(&item)), item, true));
                let mut merged: Vec<_> = due.into_iter().chain(items).collect();
                merged.sort_by(|a, b| a.0.cmp(&b.0));
                // A run the promoter has just written is in both: its queued item is the one.
                merged.dedup_by(|later, first| later.0 == first.0);
                merged.truncate(allowed);
                due = merged.into();
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

/// What an ingest found for a run's dedupe key.
enum KeyCheck {
    /// A run still in the inbox holds it.
    Held(PendingKey),
    /// The trees hold it (or too many keys wait in memory): the run was written directly.
    Written(Ingested),
    /// The run took it, in memory; the sender says when the run's record is on disk.
    Taken(watch::Sender<bool>),
}

#[async_trait]
impl Store for SledStore {
    async fn ingest(&self, new: NewRun) -> Result<Ingested> {
        let encoded = EncodedRun::new(&new)?;
        let ingested = match (&self.inbox, &new.dedupe) {
            // The common case: one fsynced append; the promoter moves it into the trees.
            (Some(inbox), None) if !encoded.has_records() => self.append(inbox, &encoded).await,
            (Some(inbox), Some(_)) => self.ingest_deduped(inbox, &encoded).await,
            // No inbox, or a run with step records (the inbox's records carry none).
            _ => self.write_durably(&encoded).await,
        }?;
        if ingested == Ingested::Created {
            self.notices.created(&new.run);
        }
        Ok(ingested)
    }

    fn notices(&self) -> tokio::sync::broadcast::Receiver<RunNotice> {
        self.notices.subscribe()
    }

    async fn claim_due(&self, request: ClaimRequest<'_>) -> Result<Vec<Claimed>> {
        let mut leases = self.leases();
        let room = leases.room(request.concurrency);
        let mut claimed = self.due_candidates(&leases, request.now, request.limit, &room)?;
        let fresh: Vec<_> = claimed
            .iter()
            .filter(|(_, _, fresh)| *fresh)
            .map(|(_, item, _)| item)
            .collect();
        let got = self.fresh.took(&fresh);
        claimed.retain(|(_, item, fresh)| !fresh || got.contains(&item.id));
        self.queued_add(-((claimed.len() - got.len()) as i64));
        Ok(claimed
            .into_iter()
            .map(|(key, item, _)| {
                let lease = leases.grant(item.id, key, &item.flow_id, request.owner, request.until);
                Claimed {
                    item,
                    lease,
                    run: None,
                }
            })
            .collect())
    }

    async fn renew(&self, lease: &Lease, until: Timestamp) -> Result<Lease> {
        let mut leases = self.leases();
        let held = leases.held(lease)?;
        held.until = until;
        Ok(Lease {
            until,
            ..lease.clone()
        })
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
        if let Some(due) = self.fresh.next_due() {
            next = Some(next.map_or(due, |n| n.min(due)));
        }
        let unread = self
            .inbox
            .as_ref()
            .is_some_and(|inbox| inbox.durable_through() > self.fresh.read_through());
        if unread {
            // Accepted events are on their way to claims: look again very soon.
            let soon = Timestamp::now().plus(Duration::from_millis(2));
            next = Some(next.map_or(soon, |n| n.min(soon)));
        }
        Ok(next)
    }

    async fn update_run(
        &self,
        run_id: RunId,
        done: Option<&Lease>,
        decide: Decide<'_>,
    ) -> Result<Option<Committed>> {
        let run_key = run_id.to_bytes();
        // Claims skip the run's items until the update and its leases are in place (or the call
        // is dropped while its batch waits).
        let _writing = Writing::start(self, run_id);
        // A commit for a lease no longer held writes nothing; one held stays held until written.
        let (_committing, done_key) = match done {
            Some(lease) => {
                let (committing, key) = Committing::start(self, lease)?;
                (Some(committing), Some(key))
            }
            None => (None, None),
        };
        // A fresh run (not in the trees yet) is written with its update. Looked up first: a run
        // moves from the fresh ones to the trees, never back.
        let fresh = self.fresh.run(run_id);
        // Decided and encoded before the transaction, which holds sled's process-wide lock: inside
        // it, only a check that the run is still the value read here (else decided again).
        let read = self
            .new_runs
            .runs
            .get(run_key)
            .map_err(|e| backend("get", TreeName::Runs, &run_id, e));
        let fresh = fresh.filter(|_| matches!(read, Ok(None)));
        let ahead = match (read, &fresh) {
            (Ok(Some(stored)), _) => {
                Prepared::new(run_id, &stored, decide).map(|p| Some((stored, p)))
            }
            (Ok(None), Some(fresh)) => {
                let stored = fresh.encoded.run_value();
                Prepared::new(run_id, stored, decide).map(|p| Some((IVec::from(stored), p)))
            }
            (Ok(None), None) => Ok(None),
            (Err(e), _) => Err(e),
        };
        let written = match ahead {
            Err(e) => Err(e),
            Ok(ahead) => {
                let pending = PendingUpdate {
                    run_key,
                    done_key: done_key.clone(),
                    ahead,
                    fresh: fresh.clone(),
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
        if let Some(lease) = done {
            if leases.held(lease).is_ok() {
                leases.end(&lease.item);
            }
        }
        let taken: Vec<Lease> = match &written.run {
            Some(run) => written
                .taken
                .into_iter()
                .map(|(id, key, until, owner)| leases.grant(id, key, &run.flow_id, &owner, until))
                .collect(),
            None => Vec::new(),
        };
        let mut queued = written.queued;
        queued.extend(written.created.into_iter().filter(|key| !leases.holds(key)));
        drop(leases);
        if let Some(fresh) = &fresh {
            self.fresh.written([run_id]);
            if let Some((key, ..)) = fresh.encoded.dedupe() {
                self.new_runs.pending_keys.release(key, run_id);
            }
        }
        self.queued_add(queued.len() as i64);
        self.new_runs
            .hints
            .queued(queued.iter().map(|key| &key[..]));
        if let Some(run) = &written.run {
            self.notices.written(run);
        }
        Ok(written.run.map(|run| Committed { run, taken }))
    }

    async fn requeue_expired(&self, now: Timestamp) -> Result<usize> {
        let mut leases = self.leases();
        let ended: Vec<ItemId> = leases
            .items
            .iter()
            .filter(|(_, held)| held.until <= now && held.committing == 0)
            .map(|(id, _)| *id)
            .collect();
        for id in &ended {
            leases.end(id);
        }
        // A fresh run's item whose lease ended waits for a claim again.
        let queued = ended.len() - self.fresh.released(&ended);
        if queued > 0 {
            self.new_runs.hints.clear();
        }
        self.queued_add(queued as i64);
        Ok(ended.len())
    }

    async fn run(&self, id: RunId) -> Result<Option<Run>> {
        // Fresh first: a run moves from the fresh ones to the trees, never back.
        let fresh = self.fresh.run(id);
        let key = id.to_bytes();
        match self.get(&self.new_runs.runs, TreeName::Runs, &key, &id)? {
            Some(run) => Ok(Some(run)),
            None => fresh
                .map(|fresh| decode(TreeName::Runs, &key, fresh.encoded.run_value()))
                .transpose(),
        }
    }

    async fn event(&self, id: EventId) -> Result<Option<Event>> {
        // Fresh first, as in `run`.
        let fresh = self.fresh.of_event(id);
        let key = id.to_bytes();
        match self.get(&self.new_runs.events, TreeName::Events, &key, &id)? {
            Some(event) => Ok(Some(event)),
            None => fresh
                .map(|fresh| decode(TreeName::Events, &key, &fresh.encoded.event))
                .transpose(),
        }
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
        // Fresh runs first: one written to the trees meanwhile is then read from either.
        let fresh = self.fresh.listed(query.flow_id.as_ref(), lower, upper);
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
        // The fresh runs (read from the inbox, not yet written) in their place.
        let mut matched = 0;
        for run in fresh {
            let key = run.run_id.to_bytes();
            let run: Run = decode(TreeName::Runs, &key, run.encoded.run_value())?;
            if wanted(&run) {
                runs.push(run);
                matched += 1;
                if matched == limit {
                    break;
                }
            }
        }
        if matched > 0 {
            // Stable: a run written meanwhile keeps its stored version, listed first.
            runs.sort_by_key(|run| std::cmp::Reverse(run.id));
            runs.dedup_by_key(|run| run.id);
            runs.truncate(limit);
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
                    return Err(StoreError::unavailable_because(format!(
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
        let mut flows = distinct_flows(&self.new_runs.runs_by_flow, TreeName::RunsByFlow)?;
        for flow in self.fresh.flows() {
            if !flows.contains(&flow) {
                flows.push(flow);
            }
        }
        flows.sort();
        Ok(flows)
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
            .map_err(|e| StoreError::unavailable("sled: cannot read the size on disk", e))?;
        Ok(super::StoreStats {
            queued: self.new_runs.queue.len() as u64 + self.in_inbox(),
            bytes,
            ingest_syncs: self.inbox.as_ref().map_or(0, Inbox::syncs),
            queue_vacuums: 0,
            quarantined: self.inbox.as_ref().map_or(0, |i| i.quarantine().held()),
        })
    }

    async fn state(&self, key: &str) -> Result<Option<serde_json::Value>> {
        self.get(&self.new_runs.state, TreeName::State, key.as_bytes(), &key)
    }

    async fn init_state(&self, key: &str, value: &serde_json::Value) -> Result<serde_json::Value> {
        let name = TreeName::State;
        let swap = self
            .new_runs
            .state
            .compare_and_swap(
                key.as_bytes(),
                None::<&[u8]>,
                Some(encode(name, &key, value)?),
            )
            .map_err(|e| backend("write", name, &key, e))?;
        let stored = match swap {
            Ok(()) => value.clone(),
            Err(taken) => match taken.current {
                Some(current) => decode(name, key.as_bytes(), &current)?,
                None => {
                    return Err(StoreError::unavailable_because(format!(
                        "sled: compare-and-swap on {} for {key} failed with no current value",
                        name.name()
                    )))
                }
            },
        };
        // Also when it was there already: its writer may still be waiting for its fsync.
        self.durable().await?;
        Ok(stored)
    }

    async fn enter_lane(
        &self,
        lane: &LaneKey,
        concurrency: usize,
        holder: (ItemId, RunId),
        now: Timestamp,
        expires: Timestamp,
    ) -> Result<LaneEntry> {
        Ok(self
            .coordination
            .enter_lane(lane, concurrency, holder, now, expires))
    }

    async fn leave_lane(&self, lane: &LaneKey, holder: ItemId, free_at: Timestamp) -> Result<()> {
        self.coordination.leave_lane(lane, holder, free_at);
        Ok(())
    }

    async fn pace_admit(
        &self,
        account: &str,
        now: Timestamp,
    ) -> Result<std::result::Result<(), Timestamp>> {
        self.restore_pacing(account)?;
        Ok(self.coordination.pace_admit(account, now))
    }

    async fn pace_observe(
        &self,
        account: &str,
        limit: Option<(u32, Duration)>,
        blocked_until: Option<Timestamp>,
    ) -> Result<()> {
        self.restore_pacing(account)?;
        let Some(until) = self
            .coordination
            .pace_observe(account, limit, blocked_until)
        else {
            return Ok(());
        };
        if self.raise_state(&pacing_key(account), BLOCKED_UNTIL, until)? {
            self.durable().await?;
        }
        Ok(())
    }

    async fn claim_tick(&self, flow: &FlowId, tick: Timestamp) -> Result<bool> {
        if !self.raise_state(&tick_key(flow), LAST_TICK, tick)? {
            return Ok(false);
        }
        self.durable().await?;
        Ok(true)
    }

    async fn last_tick(&self, flow: &FlowId) -> Result<Option<Timestamp>> {
        self.state_time(&tick_key(flow), LAST_TICK)
    }

    async fn quarantined(&self) -> Result<Vec<Quarantined>> {
        let Some(inbox) = &self.inbox else {
            return Ok(Vec::new());
        };
        inbox
            .quarantine()
            .list()
            .map_err(|e| StoreError::unavailable("cannot list the inbox's quarantine", e))
    }

    async fn append_log(&self, log: &LogName, entries: &[LogEntry]) -> Result<()> {
        self.logs.append(log, entries)?;
        self.durable().await
    }

    async fn read_log(&self, log: &LogName, query: &LogQuery) -> Result<LogPage> {
        self.logs.read(log, query)
    }

    async fn prune_logs(&self, prune: &PruneLogs) -> Result<usize> {
        self.logs.prune(prune)
    }

    async fn reingest_quarantined(&self, id: &str) -> Result<Reingested> {
        match &self.inbox {
            Some(inbox) => reingest::reingest(self, inbox.quarantine(), id).await,
            None => Err(StoreError::NotQuarantined(id.to_owned())),
        }
    }

    async fn storage(&self, call: StorageCall<'_>) -> Result<StorageAnswer> {
        self.storage.apply(call)
    }

    async fn storage_namespaces(&self, now: Timestamp) -> Result<Vec<(Namespace, u64)>> {
        self.storage.namespaces(now)
    }

    async fn storage_entries(
        &self,
        namespace: &Namespace,
        after: Option<&StorageKey>,
        limit: usize,
        now: Timestamp,
    ) -> Result<Vec<(StorageKey, Entry)>> {
        self.storage.entries(namespace, after, limit, now)
    }

    async fn expire_storage(&self, now: Timestamp, max: usize) -> Result<usize> {
        self.storage.expire(now, max)
    }
}

/// The `state` key of a connector account's pacing (`{"blocked_until": ms}`).
fn pacing_key(account: &str) -> String {
    format!("pacing:{account}")
}

/// The `state` key of a schedule flow's last claimed tick (`{"last_tick": ms}`).
fn tick_key(flow: &FlowId) -> String {
    format!("schedule:{flow}")
}

/// The field of a pacing state holding the account's blocked-until time.
const BLOCKED_UNTIL: &str = "blocked_until";
/// The field of a schedule state holding the last tick claimed.
const LAST_TICK: &str = "last_tick";

/// Coordination kept in the `state` tree (pacing waits, schedule ticks).
impl SledStore {
    /// Gives an account's stored blocked-until time to the in-memory pacing the first time this
    /// process sees the account.
    fn restore_pacing(&self, account: &str) -> Result<()> {
        if self.coordination.pace_known(account) {
            return Ok(());
        }
        let until = self.state_time(&pacing_key(account), BLOCKED_UNTIL)?;
        self.coordination
            .pace_restore(account, until.unwrap_or_default());
        Ok(())
    }

    /// The time in `field` of the JSON object stored under `key` (`None` if there is none).
    fn state_time(&self, key: &str, field: &str) -> Result<Option<Timestamp>> {
        let value: Option<serde_json::Value> =
            self.get(&self.new_runs.state, TreeName::State, key.as_bytes(), &key)?;
        value.map(|v| stored_time(key, &v, field)).transpose()
    }

    /// Sets `field` under `key` to `to` if that is later than the time stored there (or none
    /// is), atomically (compare and swap); answers whether it did. Not durable on return.
    fn raise_state(&self, key: &str, field: &str, to: Timestamp) -> Result<bool> {
        let tree = &self.new_runs.state;
        let new = encode(
            TreeName::State,
            &key,
            &serde_json::json!({ field: to.millis() }),
        )?;
        loop {
            let old = tree
                .get(key.as_bytes())
                .map_err(|e| backend("read", TreeName::State, &key, e))?;
            if let Some(old) = &old {
                let value: serde_json::Value = decode(TreeName::State, key.as_bytes(), old)?;
                if stored_time(key, &value, field)? >= to {
                    return Ok(false);
                }
            }
            let swapped = tree
                .compare_and_swap(key.as_bytes(), old, Some(new.as_slice()))
                .map_err(|e| backend("write", TreeName::State, &key, e))?;
            if swapped.is_ok() {
                return Ok(true);
            }
        }
    }
}

/// The time in `field` of a stored state object, or a corruption error naming `key`.
fn stored_time(key: &str, value: &serde_json::Value, field: &str) -> Result<Timestamp> {
    value[field].as_i64().map(Timestamp).ok_or_else(|| {
        corrupt(
            TreeName::State,
            key.as_bytes(),
            format!("no `{field}` time"),
        )
    })
}

#[cfg(test)]
impl SledStore {
    /// Whether the trees hold the run (not only the fresh runs in memory).
    pub(crate) fn in_trees(&self, run_id: RunId) -> bool {
        self.new_runs.runs.contains_key(run_id.to_bytes()).unwrap()
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // The fresh runs go to the trees (their leases end with the store), so that the store
        // opened next holds them at once.
        let all = self.fresh.all();
        if all.is_empty() {
            return;
        }
        let written = self.new_runs.write_fresh(&all).and_then(|()| {
            self.db
                .flush()
                .map_err(|e| StoreError::unavailable("sled: flush failed", e))
        });
        match written {
            Ok(_) => self.fresh.written(all.iter().map(|(run, _)| run.run_id)),
            Err(e) => tracing::warn!(error = %e, "fresh runs were left in the inbox at close"),
        }
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
                    let lease: StoredLease =
                        decode(TreeName::Leases, key, &value).map_err(abort)?;
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
