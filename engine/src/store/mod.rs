//! The store: everything the runtime persists, behind one small trait.
//!
//! [`Store`] is what the runtime needs and nothing more: ingest an event with its run and first queue
//! items (durable before it returns), claim due queue items with a lease, apply a step's outcome to a
//! run atomically together with its queue changes, and read history back. Backends: [`sled`] (the
//! embedded default). Every backend passes the same conformance suite (`conformance.rs`).
//!
//! Invariants every backend keeps:
//! - `ingest` returns only after the event, run and items are durable (fsync); concurrent calls may
//!   share one fsync (group commit). They may become readable and claimable a moment later (the
//!   sled backend moves them from its inbox log), but never partly.
//! - A queue item is in exactly one place: queued (due at a time) or leased (until a time). A lease
//!   may end when the store is closed (the sled backend keeps leases in memory; a backend shared
//!   by several nodes keeps them stored): after reopening, `requeue_expired(far future)` makes
//!   every item that was leased due again either way.
//! - `update_run` reads the run, calls the decision function, and writes its run, records and new
//!   queue items and removes the finished item, all in one atomic transaction.
//! - A dedupe key is checked and recorded in the same transaction as the event it belongs to, so two
//!   concurrent deliveries of one event never both start a run.
//! - Pruning removes only final runs, each together with its event and step records.

mod inbox;
mod packed;
mod quarantine;
pub mod sled;

#[cfg(test)]
mod conformance;

use std::collections::HashMap;

use async_trait::async_trait;

use crate::ids::{EventId, FlowId, ItemId, RunId};
use crate::model::{Event, QueueItem, Revision, Run, RunStatus, StepRecord, Timestamp};

pub use self::quarantine::{QuarantineKind, Quarantined};

/// What can go wrong in a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed (I/O, database error).
    #[error("store backend error: {0}")]
    Backend(String),
    /// A stored record could not be decoded.
    #[error("corrupt record in {tree}: {detail}")]
    Corrupt {
        /// Where the record is.
        tree: &'static str,
        /// What is wrong with it.
        detail: String,
    },
    /// No quarantined inbox record has this id.
    #[error("no quarantined record `{0}`")]
    NotQuarantined(String),
    /// A quarantined record still does not decode as a run: it stays in the quarantine.
    #[error("quarantined record `{id}` still cannot be read as a run: {detail}")]
    StillUnreadable {
        /// The entry's id.
        id: String,
        /// What is wrong, and where its bytes are to repair.
        detail: String,
    },
}

/// A store result.
pub type Result<T> = std::result::Result<T, StoreError>;

/// An accepted event with its new run and the run's first queue items.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NewRun {
    /// The event.
    pub event: Event,
    /// The run, status `queued`.
    pub run: Run,
    /// The first items (the flow's root steps).
    pub items: Vec<QueueItem>,
    /// The event's dedupe key, if its flow has one: a later event of the same flow with the same
    /// key, before the key expires, starts nothing.
    pub dedupe: Option<DedupeKey>,
}

/// A key that identifies repeated deliveries of one event (e.g. the provider's event id).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DedupeKey {
    /// The key, unique within its flow.
    pub key: String,
    /// When a repeat stops counting as a duplicate.
    pub expires_at: Timestamp,
}

/// What `ingest` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingested {
    /// The event, its run and its items were stored.
    Created,
    /// The dedupe key was already taken: nothing was stored; these are the original's ids.
    Duplicate {
        /// The original event.
        event_id: EventId,
        /// The run the original event started.
        run_id: RunId,
    },
}

/// How many more items of a flow may be claimed now, for flows with a concurrency limit; flows
/// not listed are unlimited.
pub type FlowRoom = HashMap<FlowId, usize>;

/// What a decision function wants written for a run.
#[derive(Debug, Clone)]
pub struct RunUpdate {
    /// The run's new state.
    pub run: Run,
    /// Step records to write (each replaces the record of the same run and step).
    pub records: Vec<StepRecord>,
    /// New queue items.
    pub enqueue: Vec<QueueItem>,
    /// New items the caller executes itself next: written as leased, not queued (so a crash
    /// puts them back in the queue when the lease ends).
    pub take: Option<Take>,
}

/// Items a worker takes for itself in a run update (see [`RunUpdate::take`]).
#[derive(Debug, Clone)]
pub struct Take {
    /// The items.
    pub items: Vec<QueueItem>,
    /// Their lease ends then.
    pub until: Timestamp,
}

/// Decides a run's update from its current state; `None` writes nothing (the finished item is still
/// removed). Called again if the transaction conflicts, so it must be pure; it may run under a
/// backend lock, so it must be quick and must not call the store.
pub type Decide<'a> = &'a (dyn Fn(Run) -> Option<RunUpdate> + Send + Sync);

/// Which runs to list.
#[derive(Debug, Clone, Default)]
pub struct RunQuery {
    /// Only runs of this flow.
    pub flow_id: Option<FlowId>,
    /// Only runs with this status.
    pub status: Option<RunStatus>,
    /// Only runs older than this one (the cursor from the previous page).
    pub before: Option<RunId>,
    /// Only runs created at or after this time.
    pub since: Option<Timestamp>,
    /// Only runs created before this time.
    pub until: Option<Timestamp>,
    /// At most this many runs (the backend caps it at 1000).
    pub limit: usize,
}

/// A page of runs, newest first.
#[derive(Debug, Clone, Default)]
pub struct RunPage {
    /// The runs.
    pub runs: Vec<Run>,
    /// The cursor for the next page, if there may be more.
    pub next: Option<RunId>,
}

/// Persistence for the runtime. See the module docs for the invariants.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Writes an event, its run and its first queue items atomically and durably, unless its
    /// dedupe key is taken (and not expired at the event's `received_at`). Returns once what it
    /// reports is durable, including an original that another call is still writing. A created
    /// run may become readable (and its items claimable) a moment after this returns.
    async fn ingest(&self, new: NewRun) -> Result<Ingested>;

    /// Leases up to `limit` items due at or before `now` until `lease_until`, at most
    /// `room[flow]` of a listed flow. Within a flow, oldest due first; flows share `limit` fairly,
    /// so one flow's backlog does not hold up another's events.
    async fn claim_due(
        &self,
        now: Timestamp,
        limit: usize,
        lease_until: Timestamp,
        room: &FlowRoom,
    ) -> Result<Vec<QueueItem>>;

    /// When the earliest queued (not leased) item is due.
    async fn next_due(&self) -> Result<Option<Timestamp>>;

    /// Atomically: reads the run, applies `decide`, writes the result, and removes the finished
    /// leased item `done`. Returns the run as written (or as it was, if `decide` returned `None`);
    /// `None` if the run does not exist.
    async fn update_run(
        &self,
        run_id: RunId,
        done: Option<ItemId>,
        decide: Decide<'_>,
    ) -> Result<Option<Run>>;

    /// Puts leased items whose lease ended at or before `now` back in the queue, keeping their own
    /// due time (which has passed, so they are due at once). Returns how many. Called at start-up
    /// with the far future to recover what was in flight when the server stopped.
    async fn requeue_expired(&self, now: Timestamp) -> Result<usize>;

    /// One run.
    async fn run(&self, id: RunId) -> Result<Option<Run>>;

    /// One event.
    async fn event(&self, id: EventId) -> Result<Option<Event>>;

    /// The step records of a run (in no particular order).
    async fn step_records(&self, run_id: RunId) -> Result<Vec<StepRecord>>;

    /// Runs matching a query, newest first.
    async fn list_runs(&self, query: &RunQuery) -> Result<RunPage>;

    /// The flow's catch-hook token: the stored one, or `candidate` after storing it durably.
    async fn hook_token(&self, flow_id: &FlowId, candidate: &str) -> Result<String>;

    /// Keeps a flow revision's source, so runs stay explainable (and runnable) after edits.
    async fn put_revision(&self, flow_id: &FlowId, revision: &Revision, source: &str)
        -> Result<()>;

    /// A kept flow revision's source.
    async fn revision(&self, flow_id: &FlowId, revision: &Revision) -> Result<Option<String>>;

    /// The flows that have runs stored (deployed or not).
    async fn flows_with_runs(&self) -> Result<Vec<FlowId>>;

    /// Deletes up to `max` of a flow's final runs, oldest first, with their events and step
    /// records: those created before `older_than`, and those beyond the newest `keep`. Runs that are
    /// not final are never deleted. Returns how many were deleted.
    async fn prune_runs(
        &self,
        flow_id: &FlowId,
        older_than: Timestamp,
        keep: usize,
        max: usize,
    ) -> Result<usize>;

    /// Forgets up to `max` dedupe keys that expired at or before `now`; returns how many.
    async fn expire_dedupe(&self, now: Timestamp, max: usize) -> Result<usize>;

    /// Stores a small piece of runtime state under a key (a connector account's rate-limit pacing,
    /// …), durably: it survives a restart.
    async fn put_state(&self, key: &str, value: &serde_json::Value) -> Result<()>;

    /// The state stored under a key.
    async fn state(&self, key: &str) -> Result<Option<serde_json::Value>>;

    /// How much is stored: queue items waiting or leased, and bytes on disk. Counting may walk
    /// the queue; call it for metrics, not per event.
    async fn stats(&self) -> Result<StoreStats>;

    /// Makes every write so far durable (at shutdown, and before a step with effects follows another
    /// one in a run). Concurrent callers may share one flush.
    async fn flush(&self) -> Result<()>;

    /// The accepted events the store could not read back and set aside instead of dropping them
    /// (damaged on disk, or not decodable), in the order they were accepted. A store without such
    /// a log (a temporary one) has none.
    async fn quarantined(&self) -> Result<Vec<Quarantined>>;

    /// Decodes a quarantined record's kept bytes (repaired, or readable by this version) as the
    /// new run it held, ingests it through [`ingest`](Self::ingest), and removes the entry. A run
    /// that is stored already is not ingested twice (answered as a duplicate). Fails with
    /// [`StoreError::NotQuarantined`] for an unknown id, and with [`StoreError::StillUnreadable`]
    /// (the entry stays) when the bytes still do not decode.
    async fn reingest_quarantined(&self, id: &str) -> Result<Reingested>;
}

/// What [`Store::reingest_quarantined`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reingested {
    /// The run the quarantined record held.
    pub run_id: RunId,
    /// Its event.
    pub event_id: EventId,
    /// `Created`, or `Duplicate` when the run was stored already or its dedupe key was taken
    /// (then with the original's ids).
    pub outcome: Ingested,
}

/// How much a store holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Queue items waiting to run or running (leased).
    pub queued: u64,
    /// The store's size on disk.
    pub bytes: u64,
    /// How many syncs to disk acknowledged events so far (concurrent events share one).
    pub ingest_syncs: u64,
    /// How many accepted events are held in the quarantine (see [`Store::quarantined`]).
    pub quarantined: u64,
}
