//! The logs a store keeps beside runs: the audit record (who did what: logins, retries, replays,
//! manual runs, captures) and each flow's hook log (catch-hook requests that started no run:
//! ignored, duplicate, rejected).
//!
//! Invariants every backend keeps:
//! - An entry's id is a ULID made from its time, so id order is time order; a log reads newest
//!   first, paged by the last id read (`before`).
//! - Entries are only appended and pruned, never changed: pruning keeps each log within an age
//!   and a count (per flow for hook logs), oldest removed first.
//! - What an entry says (`detail`) is opaque to the store: the server decides its shape.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use ulid::Ulid;

use crate::ids::{FlowId, LogEntryId};
use crate::model::Timestamp;

/// The most entries one read returns.
pub const MAX_LOG_PAGE: usize = 1000;

/// Which log: the audit record, or one flow's hook log.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LogName {
    /// Who did what, server-wide.
    Audit,
    /// A flow's catch-hook requests that started no run.
    Hooks(FlowId),
}

impl LogName {
    /// The kind of log this is.
    pub fn kind(&self) -> LogKind {
        match self {
            Self::Audit => LogKind::Audit,
            Self::Hooks(_) => LogKind::Hooks,
        }
    }
}

impl std::fmt::Display for LogName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Audit => f.write_str("audit"),
            Self::Hooks(flow) => write!(f, "hooks:{flow}"),
        }
    }
}

/// A kind of log, for pruning: the audit record, or every flow's hook log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogKind {
    /// The audit record.
    Audit,
    /// The hook logs (each flow's kept within the count on its own).
    Hooks,
}

impl LogKind {
    /// The kind's name as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Audit => "audit",
            Self::Hooks => "hooks",
        }
    }
}

/// What [`Store::prune_logs`](super::Store::prune_logs) deletes: up to `max` entries of the
/// logs of `kind`, oldest first — those before `older_than`, and those beyond each log's newest
/// `keep`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneLogs {
    /// Which logs.
    pub kind: LogKind,
    /// Entries before this time go.
    pub older_than: Timestamp,
    /// Each log keeps at most this many (the newest).
    pub keep: usize,
    /// At most this many are deleted by one call.
    pub max: usize,
}

/// One entry of a log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// The entry's id (its time, then random bits).
    pub id: LogEntryId,
    /// When it happened.
    pub at: Timestamp,
    /// What happened, in one word (`login_failed`, `replay`, `rejected`, …): the filter key.
    pub action: String,
    /// The rest: who, from where, on what, and the outcome.
    pub detail: Value,
}

impl LogEntry {
    /// An entry of `action` at `at`, with a new id of that time.
    pub fn new(at: Timestamp, action: impl Into<String>, detail: Value) -> Self {
        let ulid = Ulid::from_parts(at.millis().max(0) as u64, rand::random());
        Self {
            id: LogEntryId::from_ulid(ulid),
            at,
            action: action.into(),
            detail,
        }
    }
}

/// Which entries of a log to read.
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    /// Only entries of this action.
    pub action: Option<String>,
    /// Only entries at or after this time.
    pub since: Option<Timestamp>,
    /// Only entries older than this one (the cursor from the previous page).
    pub before: Option<LogEntryId>,
    /// At most this many (the backend caps it at [`MAX_LOG_PAGE`]).
    pub limit: usize,
}

impl LogQuery {
    /// Whether an entry passes the action filter.
    pub fn matches(&self, entry: &LogEntry) -> bool {
        self.action.as_ref().is_none_or(|a| *a == entry.action)
    }

    /// The page size, capped.
    pub fn capped_limit(&self) -> usize {
        self.limit.min(MAX_LOG_PAGE)
    }
}

/// A page of a log, newest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogPage {
    /// The entries.
    pub entries: Vec<LogEntry>,
    /// The cursor for the next page, if there may be more.
    pub next: Option<LogEntryId>,
}

impl LogPage {
    /// A page of entries read newest first, `limit` at most: the cursor is set when it is full.
    pub fn of(entries: Vec<LogEntry>, limit: usize) -> Self {
        let next = (entries.len() == limit && limit > 0)
            .then(|| entries.last().map(|e| e.id))
            .flatten();
        Self { entries, next }
    }
}
