//! The sled store's layout on disk: the trees, how keys and values are encoded, and how sled's
//! errors become store errors.

use std::fmt;

use ::sled::transaction::{
    ConflictableTransactionError, ConflictableTransactionResult, TransactionError,
};
use ::sled::Tree;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::ids::{EventId, FlowId, ItemId, LogEntryId, RunId, StepId};
use crate::model::{QueueItem, Timestamp};
use crate::store::packed;
use crate::store::{Result, StoreError};

/// The sled trees, each under a fixed name.
///
/// Retired names (never reuse one): `queue` (a single queue keyed by due time, before queues
/// were kept per flow).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TreeName {
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
    AuditLog,
    HookLog,
    Storage,
    StorageExpiry,
    StorageApplied,
    StorageAppliedExpiry,
}

impl TreeName {
    /// The tree's name in the database.
    pub(super) const fn name(self) -> &'static str {
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
            Self::AuditLog => "audit_log",
            Self::HookLog => "hook_log",
            Self::Storage => "storage",
            Self::StorageExpiry => "storage_expiry",
            Self::StorageApplied => "storage_applied",
            Self::StorageAppliedExpiry => "storage_applied_expiry",
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
pub(super) struct DedupeEntry {
    pub(super) event_id: EventId,
    pub(super) run_id: RunId,
    pub(super) expires_at: Timestamp,
}

/// A leased queue item as earlier versions stored it in the `leases` tree: the item and when its
/// lease ends.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Lease {
    pub(super) lease_until: Timestamp,
    pub(super) item: QueueItem,
}

pub(super) type TxResult<T> = ConflictableTransactionResult<T, StoreError>;

/// A store error that aborts a transaction.
pub(super) fn abort(e: StoreError) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(e)
}

/// Maps a failed transaction to a store error naming the operation.
pub(super) fn tx_error(
    op: &'static str,
    tree: TreeName,
) -> impl Fn(TransactionError<StoreError>) -> StoreError {
    move |e| match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => backend(op, tree, &"(transaction)", e),
    }
}

pub(super) fn backend(
    op: &str,
    tree: TreeName,
    what: &dyn fmt::Display,
    e: ::sled::Error,
) -> StoreError {
    StoreError::unavailable(format!("sled: {op} {} {what}", tree.name()), e)
}

pub(super) fn corrupt(tree: TreeName, key: &[u8], why: impl fmt::Display) -> StoreError {
    StoreError::Corrupt {
        tree: tree.name(),
        detail: format!("key {}: {why}", describe_key(tree, key)),
    }
}

pub(super) fn encode<T: Serialize + ?Sized>(
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
        .map_err(|e| {
            StoreError::unavailable(format!("cannot encode {what} for {}", tree.name()), e)
        })
}

pub(super) fn decode<T: DeserializeOwned>(tree: TreeName, key: &[u8], value: &[u8]) -> Result<T> {
    let json = packed::unpack(value).map_err(|e| corrupt(tree, key, e))?;
    serde_json::from_slice(&json).map_err(|e| corrupt(tree, key, e))
}

/// A big-endian time key: byte order is time order (times before 1970 become 0).
pub(super) fn due_bytes(at: Timestamp) -> [u8; 8] {
    (at.millis().max(0) as u64).to_be_bytes()
}

/// `flow_queue` key: flow id, `0x00`, due time, then item id (unique, and ordering items due at
/// the same moment).
pub(super) fn queue_key(item: &QueueItem) -> Vec<u8> {
    let mut rest = [0; 24];
    rest[..8].copy_from_slice(&due_bytes(item.due_at));
    rest[8..].copy_from_slice(&item.id.to_bytes());
    flow_key(&item.flow_id, &rest)
}

/// `dedupe_expiry` key: expiry time, then the `dedupe` key.
pub(super) fn expiry_key(expires_at: Timestamp, dedupe_key: &[u8]) -> Vec<u8> {
    let mut key = due_bytes(expires_at).to_vec();
    key.extend_from_slice(dedupe_key);
    key
}

/// The first key after every key that starts with `prefix` (a flow prefix ends in `0x00`).
pub(super) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

/// The flows that have keys in a tree keyed by flow id and `0x00`, by seeking from one flow's
/// prefix to the next (one read per flow, however many keys each has).
pub(super) fn distinct_flows(tree: &Tree, name: TreeName) -> Result<Vec<FlowId>> {
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
pub(super) fn flow_key(flow_id: &FlowId, rest: &[u8]) -> Vec<u8> {
    let flow = flow_id.as_str().as_bytes();
    let mut key = Vec::with_capacity(flow.len() + 1 + rest.len());
    key.extend_from_slice(flow);
    key.push(0);
    key.extend_from_slice(rest);
    key
}

/// `step_records` key: run id (fixed length), then step id.
pub(super) fn record_key(run_id: RunId, step_id: &StepId) -> Vec<u8> {
    let mut key = run_id.to_bytes().to_vec();
    key.extend_from_slice(step_id.as_str().as_bytes());
    key
}

pub(super) fn id16(bytes: &[u8]) -> Option<[u8; 16]> {
    bytes.try_into().ok()
}

/// A key as a person reads it (ids with their prefix), for error messages.
pub(super) fn describe_key(tree: TreeName, key: &[u8]) -> String {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let split_flow = |k: &[u8]| {
        k.iter()
            .position(|&b| b == 0)
            .map(|i| (text(&k[..i]), k[i + 1..].to_vec()))
    };
    let described = match tree {
        TreeName::Events => id16(key).map(|b| EventId::from_bytes(b).to_string()),
        TreeName::Runs => id16(key).map(|b| RunId::from_bytes(b).to_string()),
        TreeName::AuditLog => id16(key).map(|b| LogEntryId::from_bytes(b).to_string()),
        TreeName::HookLog => split_flow(key).and_then(|(flow, rest)| {
            id16(&rest).map(|b| format!("{flow} {}", LogEntryId::from_bytes(b)))
        }),
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
        TreeName::HookTokens | TreeName::State | TreeName::StorageApplied => Some(text(key)),
        TreeName::Storage => split_flow(key).map(|(ns, rest)| format!("{ns} {}", text(&rest))),
        TreeName::StorageExpiry | TreeName::StorageAppliedExpiry => (key.len() > 8).then(|| {
            let at = u64::from_be_bytes(key[..8].try_into().unwrap_or_default());
            format!(
                "{} {}",
                Timestamp(at as i64),
                text(&key[8..]).replace('\0', " ")
            )
        }),
        TreeName::Dedupe => split_flow(key).map(|(flow, rest)| format!("{flow} {}", text(&rest))),
        TreeName::DedupeExpiry => (key.len() > 8).then(|| {
            let at = u64::from_be_bytes(key[..8].try_into().unwrap_or_default());
            format!("{} {}", Timestamp(at as i64), text(&key[8..]))
        }),
    };
    described.unwrap_or_else(|| key.iter().map(|b| format!("{b:02x}")).collect())
}
