//! The store: everything the runtime persists, behind one small trait.
//!
//! [`Store`] is what the runtime needs and nothing more: ingest an event with its run and first queue
//! items (durable before it returns), claim due queue items with a lease, apply a step's outcome to a
//! run atomically together with its queue changes, and read history back. Backends: [`sled`] (the
//! embedded default, one process) and [`postgres`] (several nodes on one database). Every backend
//! passes the same conformance suite (`conformance.rs`), instantiated with one line per backend.
//!
//! The contract assumes that several processes ("nodes", each with a [`NodeId`]) may share one
//! backend, even where a backend (sled) cannot. Invariants every backend keeps:
//! - `ingest` returns only after the event, run and items are durable (fsync); concurrent calls may
//!   share one fsync (group commit). They may become readable and claimable a moment later (the
//!   sled backend moves them from its inbox log), but never partly. A run whose pure first step was
//!   executed before ingest is ingested with that step's record, as that step left it.
//! - A queue item is in exactly one place: queued (due at a time) or leased. A claim returns a
//!   [`Lease`]: the owner node, a fencing [`LeaseToken`] (never handed out twice by one backend)
//!   and an expiry. A lease is **held** from its claim until the commit that finishes its item, or
//!   until it has expired *and* been taken over (by `requeue_expired`). A commit or renewal that
//!   names a lease no longer held fails with [`StoreError::LeaseLost`] and changes nothing.
//! - At start-up a node calls `requeue_expired(now)`: it recovers expired leases only (its own
//!   earlier incarnation's included), never another live node's. (sled keeps leases in memory, so
//!   after a restart none is held and every item is simply queued.)
//! - A flow's concurrency limit counts its leased items across every node sharing the backend.
//! - `update_run` applies the decision function to the run as stored when the update is written,
//!   and writes its run, records and new queue items and removes the finished item atomically (a
//!   backend may decide ahead on the run as read, and decide again if it changed meanwhile).
//! - **When effects may start.** `update_run` need not be durable when it returns; [`Store::flush`]
//!   is the one call after which every write this handle made before it is durable. The runtime
//!   calls `flush` before a step with effects whenever the run has committed an earlier step with
//!   effects, and nowhere else for durability; a crash may therefore only repeat pure steps and the
//!   step in flight, never a step with effects after a later one has acted.
//! - A dedupe key is checked and taken atomically with respect to other deliveries: of two
//!   concurrent deliveries with one key, one starts a run and the other is answered as its
//!   duplicate, and only once the original is durable. (sled holds the keys of runs still in its
//!   inbox in memory and writes them to its `dedupe` tree with their runs.)
//! - Pruning removes only final runs, each together with its event and step records.
//! - The logs beside runs (the audit record, each flow's hook log: `logs.rs`) are appended to
//!   durably, read newest first, and pruned by age and count; every node sharing a backend reads
//!   every node's entries.
//! - Storage between runs (`storage.rs`): each operation on a key is atomic across every node
//!   (increments and appends from concurrent runs lose nothing), and an entry whose expiry has
//!   passed counts as absent until `expire_storage` deletes it.
//! - A stored record that cannot be read is reported as [`StoreError::Corrupt`]; an acknowledged
//!   event's record that cannot be read is quarantined, never silently skipped.

mod clock;
pub(crate) mod coordination;
mod inbox;
mod logs;
mod packed;
pub mod postgres;
mod quarantine;
pub mod sled;
pub mod storage;

#[cfg(test)]
mod conformance;

use std::collections::HashMap;

use async_trait::async_trait;

pub use self::clock::{Clock, ManualClock, SharedClock, Sleep, SystemClock};
pub use self::coordination::{LaneEntry, LaneKey, WAIT_TURN};
use crate::ids::{EventId, FlowId, ItemId, RunId};
use crate::model::{Event, QueueItem, Revision, Run, RunStatus, StepRecord, Timestamp};

pub use self::logs::{LogEntry, LogKind, LogName, LogPage, LogQuery, PruneLogs, MAX_LOG_PAGE};
pub use self::quarantine::{QuarantineKind, Quarantined};
pub use self::storage::{
    Applied, Entry, Namespace, StorageAnswer, StorageCall, StorageError, StorageKey, StorageOp,
};

/// The error a backend's own failure carries.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What can go wrong in a store. [`StoreError::kind`] tells the caller what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend could not be reached or failed (I/O, a lost connection): trying again may work.
    #[error("store unavailable: {context}{}", cause.as_ref().map(|c| format!(": {c}")).unwrap_or_default())]
    Unavailable {
        /// What the store was doing.
        context: String,
        /// The backend's error, if there is one (kept whole; its message is part of this one's).
        cause: Option<BoxError>,
    },
    /// A commit or renewal named a lease that is no longer held: another node may have the item
    /// now. Nothing was written.
    #[error("the lease on queue item {item} is no longer held (it expired and was taken over, or the item is finished)")]
    LeaseLost {
        /// The item whose lease was lost.
        item: ItemId,
    },
    /// Concurrent writers collided (a serialisation failure): trying again may work.
    #[error("store conflict: {0}")]
    Conflict(String),
    /// A stored record could not be decoded. Not retryable: it needs a person.
    #[error("corrupt record in {tree}: {detail}")]
    Corrupt {
        /// Where the record is.
        tree: &'static str,
        /// What is wrong with it.
        detail: String,
    },
    /// What the call named does not exist.
    #[error("{0} not found")]
    NotFound(String),
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

/// The kinds of [`StoreError`], by what a caller does about them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// A lease was lost or writers collided: drop the work (lease) or try again (conflict).
    Conflict,
    /// The backend failed for now: try again later.
    Unavailable,
    /// A record cannot be read: surface it, do not retry.
    Corrupt,
    /// Nothing by that name.
    NotFound,
}

impl StoreError {
    /// A backend failure with its cause.
    pub fn unavailable(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Unavailable {
            context: context.into(),
            cause: Some(source.into()),
        }
    }

    /// A backend failure described in words only.
    pub fn unavailable_because(context: impl Into<String>) -> Self {
        Self::Unavailable {
            context: context.into(),
            cause: None,
        }
    }

    /// This error's kind.
    pub fn kind(&self) -> StoreErrorKind {
        match self {
            Self::Unavailable { .. } => StoreErrorKind::Unavailable,
            Self::LeaseLost { .. } | Self::Conflict(_) => StoreErrorKind::Conflict,
            Self::Corrupt { .. } | Self::StillUnreadable { .. } => StoreErrorKind::Corrupt,
            Self::NotFound(_) | Self::NotQuarantined(_) => StoreErrorKind::NotFound,
        }
    }

    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::Conflict(_))
    }
}

/// A store result.
pub type Result<T> = std::result::Result<T, StoreError>;

/// A run that was created (`queued`) or reached a final status.
#[derive(Debug, Clone, PartialEq)]
pub struct RunNotice {
    /// The run.
    pub run_id: RunId,
    /// Its status.
    pub status: RunStatus,
}

impl RunNotice {
    /// The notice of a run just created: `queued` (it has work queued), or its final status when
    /// the steps executed before ingest ended it (one notice tells both).
    pub fn created(run: &Run) -> Self {
        let status = if run.status.is_final() {
            run.status
        } else {
            RunStatus::Queued
        };
        Self {
            run_id: run.id,
            status,
        }
    }
}

/// How a backend that lives in one process publishes [`RunNotice`]s: a broadcast channel.
#[derive(Debug, Clone)]
pub struct Notices(tokio::sync::broadcast::Sender<RunNotice>);

impl Default for Notices {
    fn default() -> Self {
        Self(tokio::sync::broadcast::channel(1024).0)
    }
}

impl Notices {
    /// Tells subscribers about a run just created: see [`RunNotice::created`].
    pub fn created(&self, run: &Run) {
        let _ = self.0.send(RunNotice::created(run));
    }

    /// Tells subscribers about a run just written, if it is final.
    pub fn written(&self, run: &Run) {
        if run.status.is_final() {
            let _ = self.0.send(RunNotice {
                run_id: run.id,
                status: run.status,
            });
        }
    }

    /// Tells subscribers about a notice another node sent.
    pub fn send(&self, notice: RunNotice) {
        let _ = self.0.send(notice);
    }

    /// A new subscriber.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<RunNotice> {
        self.0.subscribe()
    }
}

/// A node: one hookflow process using a store, named at start (in logs, `/metrics` and step
/// attempts). Leases are held by nodes.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct NodeId(String);

impl NodeId {
    /// A node id from a name: letters, digits, `.`, `_` and `-`, 1 to 64 of them.
    pub fn new(name: &str) -> std::result::Result<Self, String> {
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if valid {
            Ok(Self(name.to_owned()))
        } else {
            Err(format!(
                "node id `{name}`: use 1 to 64 letters, digits, `.`, `_` or `-`"
            ))
        }
    }

    /// A node id for this process: the host's name and a random suffix, so a restarted process
    /// never holds its earlier incarnation's leases.
    pub fn generate() -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| {
                h.trim()
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
                    .take(40)
                    .collect::<String>()
            })
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "node".to_owned());
        let suffix: u32 = rand::random();
        Self(format!("{host}-{suffix:08x}"))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A fencing token: a backend never hands out the same token twice for one item, so a commit
/// carrying an older token than the item's current lease is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeaseToken(pub u64);

/// A held claim on a queue item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The leased item.
    pub item: ItemId,
    /// The node holding it.
    pub owner: NodeId,
    /// Proves this claim (see [`LeaseToken`]).
    pub token: LeaseToken,
    /// When it expires unless renewed.
    pub until: Timestamp,
}

/// A claimed queue item and its lease.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The item.
    pub item: QueueItem,
    /// Its lease.
    pub lease: Lease,
    /// The item's run as the claim read it, where the backend reads it with the claim
    /// (PostgreSQL); otherwise `None`, and [`Store::load_run`] reads it.
    pub run: Option<LoadedRun>,
}

/// What a claim asks for.
#[derive(Debug, Clone, Copy)]
pub struct ClaimRequest<'a> {
    /// The node claiming.
    pub owner: &'a NodeId,
    /// Items due at or before this time are due.
    pub now: Timestamp,
    /// At most this many items.
    pub limit: usize,
    /// The leases expire then.
    pub until: Timestamp,
    /// Flows' concurrency limits: at most this many items of a listed flow leased at once, across
    /// every node. Flows not listed are unlimited.
    pub concurrency: &'a FlowLimits,
}

/// An accepted event with its new run and the run's first queue items, and the records of the
/// steps executed before ingest (see [`Store::takes_steps_at_ingest`]), if any.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NewRun {
    /// The event.
    pub event: Event,
    /// The run: `queued`, or as the steps executed before ingest left it (final when a filter
    /// dropped the event).
    pub run: Run,
    /// The first items: the flow's root steps, or what the steps executed before ingest queued
    /// (none when they ended the run).
    pub items: Vec<QueueItem>,
    /// The event's dedupe key, if its flow has one: a later event of the same flow with the same
    /// key, before the key expires, starts nothing.
    pub dedupe: Option<DedupeKey>,
    /// The records of the steps executed before ingest (a pure first step); usually none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub records: Vec<StepRecord>,
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

/// Flows' concurrency limits: how many of a flow's items may be leased at once; flows not listed
/// are unlimited.
pub type FlowLimits = HashMap<FlowId, usize>;

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
    /// The node that takes them.
    pub owner: NodeId,
    /// Their lease ends then.
    pub until: Timestamp,
}

/// A run as [`Store::load_run`] reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedRun {
    /// The run.
    pub run: Run,
    /// Its event (`None` only if the event was deleted while the run was kept).
    pub event: Option<Event>,
    /// Its step records (in no particular order).
    pub records: Vec<StepRecord>,
}

/// What `update_run` wrote.
#[derive(Debug, Clone)]
pub struct Committed {
    /// The run as written (or as it was, if the decision wrote nothing).
    pub run: Run,
    /// The leases of the items the update took for its caller ([`RunUpdate::take`]).
    pub taken: Vec<Lease>,
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

    /// Whether `ingest` writes a new run with step records (those of steps executed before
    /// ingest) as cheaply as one without. The runtime then executes a run's first step before
    /// ingesting it when the step is pure, so a run a filter drops costs no claim and no second
    /// write. Every backend stores such runs correctly; this only says whether it is cheaper
    /// (sled's inbox takes runs without records: the others are written to its trees directly).
    fn takes_steps_at_ingest(&self) -> bool {
        false
    }

    /// Leases up to `request.limit` items due at or before `request.now` to `request.owner` until
    /// `request.until`, keeping each listed flow's leased items within its concurrency limit.
    /// Within a flow, oldest due first; flows share the limit fairly, so one flow's backlog does
    /// not hold up another's events. Each lease has a new token.
    async fn claim_due(&self, request: ClaimRequest<'_>) -> Result<Vec<Claimed>>;

    /// Extends a held lease to `until`; [`StoreError::LeaseLost`] if it is no longer held. A
    /// running step renews its lease well before it expires.
    async fn renew(&self, lease: &Lease, until: Timestamp) -> Result<Lease>;

    /// When the earliest queued (not leased) item is due.
    async fn next_due(&self) -> Result<Option<Timestamp>>;

    /// Atomically: reads the run, applies `decide`, writes the result, and removes the finished
    /// leased item `done`. Returns what was written (the run as it was, if `decide` returned
    /// `None`); `None` if the run does not exist. With `done`, succeeds only while that lease is
    /// held: otherwise [`StoreError::LeaseLost`], and nothing is written. Not durable when it
    /// returns: see [`Store::flush`].
    async fn update_run(
        &self,
        run_id: RunId,
        done: Option<&Lease>,
        decide: Decide<'_>,
    ) -> Result<Option<Committed>>;

    /// Takes over leases that expired at or before `now` (whoever held them) and puts their items
    /// back in the queue, keeping their own due time (which has passed, so they are due at once).
    /// Returns how many. Called at start-up and now and then to recover the work of nodes that
    /// stopped; a lease not yet expired is never taken.
    async fn requeue_expired(&self, now: Timestamp) -> Result<usize>;

    /// One run.
    async fn run(&self, id: RunId) -> Result<Option<Run>>;

    /// One event.
    async fn event(&self, id: EventId) -> Result<Option<Event>>;

    /// The step records of a run (in no particular order).
    async fn step_records(&self, run_id: RunId) -> Result<Vec<StepRecord>>;

    /// A run with its event and step records, as executing it needs them; `None` if the run does
    /// not exist. One read where the backend can (PostgreSQL answers in one statement).
    async fn load_run(&self, id: RunId) -> Result<Option<LoadedRun>> {
        let Some(run) = self.run(id).await? else {
            return Ok(None);
        };
        let (event, records) = tokio::try_join!(self.event(run.event_id), self.step_records(id))?;
        Ok(Some(LoadedRun {
            run,
            event,
            records,
        }))
    }

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

    /// The state stored under `key`, after storing `value` there durably if there was none:
    /// atomic, so every caller on every node gets the first value stored (a secret the nodes must
    /// share, such as the key that signs resume URLs).
    async fn init_state(&self, key: &str, value: &serde_json::Value) -> Result<serde_json::Value>;

    /// How much is stored: queue items waiting or leased, and bytes on disk. Counting may walk
    /// the queue; call it for metrics, not per event.
    async fn stats(&self) -> Result<StoreStats>;

    /// Notices of runs created (`ingest`) and written with a final status (`update_run`) through
    /// any node sharing the backend, at least once each (a finished run may be told twice). A
    /// receiver that lags misses notices and must read the store again. `respond: result` and the
    /// UI's live updates wait on these.
    fn notices(&self) -> tokio::sync::broadcast::Receiver<RunNotice>;

    /// Makes every write this handle made before the call durable: the one call after which effects
    /// may start (see the module docs). Concurrent callers may share one flush.
    async fn flush(&self) -> Result<()>;

    // Coordination between the nodes sharing the store (see `coordination.rs` for the rules as
    // one process keeps them). Each call is one atomic operation: a backend shared by several
    // nodes must apply it as a whole, as if every node's calls were made one after another.

    /// Takes a place in a named queue's `lane` for `holder` (the queue item attempting its
    /// step, and its turn: its run's id), if fewer than `concurrency` (at least 1) holders have
    /// one at `now`, the lane's gap has passed, and no earlier turn waits; a caller refused
    /// waits under its turn (kept for [`WAIT_TURN`] after it last
    /// asked), so a serial queue admits its runs in the order their events arrived, across
    /// nodes. A holder that has a place already keeps it with the new expiry. A place
    /// stops counting once `expires` has passed, even if it is never given back (its node died),
    /// so a lane is never wedged: the caller sets `expires` beyond the longest its attempt can
    /// take. Atomic: of concurrent callers, at most `concurrency` hold a place at once, across
    /// nodes. Places need not survive a restart of a backend used by one process (sled keeps them
    /// in memory: they end with it); a shared backend keeps them where every node sees them.
    async fn enter_lane(
        &self,
        lane: &LaneKey,
        concurrency: usize,
        holder: (ItemId, RunId),
        now: Timestamp,
        expires: Timestamp,
    ) -> Result<LaneEntry>;

    /// Gives `holder`'s place in `lane` back: nobody enters the lane before `free_at` (the
    /// caller's time plus the queue's gap; a later leave never moves it back). Giving back a
    /// place that is not held (it expired) only applies `free_at`.
    async fn leave_lane(&self, lane: &LaneKey, holder: ItemId, free_at: Timestamp) -> Result<()>;

    /// Admits one call to a connector `account` at `now`, or answers the earliest time a call may
    /// be made: the account's blocked-until time, or, once the account's limit is known (`max`
    /// calls per `window`, from [`pace_observe`](Self::pace_observe)), when the oldest call of a
    /// full window leaves it. Atomic: across every caller and node, no window holds more than
    /// `max` admitted calls. An account never observed is always admitted.
    async fn pace_admit(
        &self,
        account: &str,
        now: Timestamp,
    ) -> Result<std::result::Result<(), Timestamp>>;

    /// Records what a service said about an `account`: its `limit` (`max` calls per window, the
    /// latest report wins) and a time before which no call may be made. The blocked-until time
    /// only ever rises (atomically: a lower one never replaces a higher one) and is durable: it
    /// survives a restart. The limit and the window's log of admitted calls need not be durable
    /// (the service reports its limit again with its next answer).
    async fn pace_observe(
        &self,
        account: &str,
        limit: Option<(u32, std::time::Duration)>,
        blocked_until: Option<Timestamp>,
    ) -> Result<()>;

    /// Claims a schedule flow's `tick` for the caller: true for exactly one caller per (flow,
    /// tick), and only if `tick` is later than every tick of the flow claimed before. Atomic across
    /// nodes and durable before it returns true: after a restart the tick is still claimed (it is
    /// the flow's [`last_tick`](Self::last_tick)).
    async fn claim_tick(&self, flow: &FlowId, tick: Timestamp) -> Result<bool>;

    /// The latest tick claimed for a schedule flow (`None` if it never fired).
    async fn last_tick(&self, flow: &FlowId) -> Result<Option<Timestamp>>;

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

    /// Appends entries to a log, durably before it returns (see `logs.rs`).
    async fn append_log(&self, log: &LogName, entries: &[LogEntry]) -> Result<()>;

    /// A log's entries matching a query, newest first.
    async fn read_log(&self, log: &LogName, query: &LogQuery) -> Result<LogPage>;

    /// Deletes what `prune` says (see [`PruneLogs`]); returns how many entries were deleted.
    async fn prune_logs(&self, prune: &PruneLogs) -> Result<usize>;
    // Storage between runs (see `storage.rs` for what each operation does).

    /// Applies the call's `op` to its `key` in its `namespace` at its `now`, atomically across
    /// every caller and node: reads the entry, applies [`storage::apply`] and writes its answer.
    /// Answers the entry before and after, or why the operation was refused (then nothing
    /// changed). A write with an operation key `once` that was applied before (within
    /// [`storage::APPLIED_KEPT`]) changes nothing and answers what it answered then. Not durable
    /// when it returns: see [`Store::flush`].
    async fn storage(&self, call: StorageCall<'_>) -> Result<StorageAnswer>;

    /// The namespaces holding entries live at `now`, by name, with how many each holds.
    async fn storage_namespaces(&self, now: Timestamp) -> Result<Vec<(Namespace, u64)>>;

    /// Up to `limit` entries of `namespace` live at `now`, by key (byte order), after the key
    /// `after` if given (the cursor of the previous page).
    async fn storage_entries(
        &self,
        namespace: &Namespace,
        after: Option<&StorageKey>,
        limit: usize,
        now: Timestamp,
    ) -> Result<Vec<(StorageKey, Entry)>>;

    /// Deletes up to `max` storage entries that expired at or before `now`, and up to `max`
    /// recorded answers of operation keys older than [`storage::APPLIED_KEPT`]; returns how many
    /// entries and answers.
    async fn expire_storage(&self, now: Timestamp, max: usize) -> Result<usize>;
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
    /// How many times this node vacuumed the PostgreSQL queue table (always 0 on sled).
    pub queue_vacuums: u64,
}
