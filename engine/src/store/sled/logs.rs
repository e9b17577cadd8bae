//! The sled backend's logs (see `store/logs.rs`): the audit record in `audit_log`, keyed by entry
//! id, and the hook logs in `hook_log`, keyed by flow id, `0x00`, entry id. Entry ids are ULIDs
//! made from the entry's time, so byte order is time order within a log.

use ::sled::{Batch, Tree};

use super::layout::{
    backend, corrupt, decode, distinct_flows, encode, flow_key, prefix_end, TreeName,
};
use crate::ids::LogEntryId;
use crate::model::Timestamp;
use crate::store::{LogEntry, LogKind, LogName, LogPage, LogQuery, PruneLogs, Result};

/// The two log trees.
#[derive(Debug)]
pub(super) struct Logs {
    audit: Tree,
    hooks: Tree,
}

impl Logs {
    /// The logs in their trees.
    pub(super) fn new(audit: Tree, hooks: Tree) -> Self {
        Self { audit, hooks }
    }

    /// A log's tree, its name, and the prefix of its keys.
    fn place(&self, log: &LogName) -> (&Tree, TreeName, Vec<u8>) {
        match log {
            LogName::Audit => (&self.audit, TreeName::AuditLog, Vec::new()),
            LogName::Hooks(flow) => (&self.hooks, TreeName::HookLog, flow_key(flow, &[])),
        }
    }

    /// Writes entries (the caller makes them durable).
    pub(super) fn append(&self, log: &LogName, entries: &[LogEntry]) -> Result<()> {
        let (tree, name, prefix) = self.place(log);
        let mut batch = Batch::default();
        for entry in entries {
            let key = [prefix.as_slice(), &entry.id.to_bytes()].concat();
            batch.insert(key, encode(name, &entry.id, entry)?);
        }
        tree.apply_batch(batch)
            .map_err(|e| backend("append to", name, &log, e))
    }

    /// A log's entries, newest first.
    pub(super) fn read(&self, log: &LogName, query: &LogQuery) -> Result<LogPage> {
        let (tree, name, prefix) = self.place(log);
        let limit = query.capped_limit();
        let end = match query.before {
            Some(before) => [prefix.as_slice(), &before.to_bytes()].concat(),
            None => prefix_end_or_all(&prefix),
        };
        let oldest = query
            .since
            .map(|since| LogEntryId::first_at(since.millis()).to_bytes());
        let mut entries = Vec::new();
        for kv in tree.range(prefix.clone()..end).rev() {
            if entries.len() == limit {
                break;
            }
            let (key, value) = kv.map_err(|e| backend("read", name, &log, e))?;
            if oldest.is_some_and(|o| key[prefix.len()..] < o[..]) {
                break;
            }
            let entry: LogEntry = decode(name, &key, &value)?;
            if query.matches(&entry) {
                entries.push(entry);
            }
        }
        Ok(LogPage::of(entries, limit))
    }

    /// Deletes what `prune` says.
    pub(super) fn prune(&self, prune: &PruneLogs) -> Result<usize> {
        let PruneLogs {
            kind,
            older_than,
            keep,
            max,
        } = *prune;
        let logs = match kind {
            LogKind::Audit => vec![LogName::Audit],
            LogKind::Hooks => distinct_flows(&self.hooks, TreeName::HookLog)?
                .into_iter()
                .map(LogName::Hooks)
                .collect(),
        };
        let mut pruned = 0;
        for log in logs {
            if pruned == max {
                break;
            }
            pruned += self.prune_one(&log, older_than, keep, max - pruned)?;
        }
        Ok(pruned)
    }

    fn prune_one(
        &self,
        log: &LogName,
        older_than: Timestamp,
        keep: usize,
        max: usize,
    ) -> Result<usize> {
        let (tree, name, prefix) = self.place(log);
        let cutoff = LogEntryId::first_at(older_than.millis()).to_bytes();
        let mut doomed = Vec::new();
        let range = tree.range(prefix.clone()..prefix_end_or_all(&prefix));
        for (n, kv) in range.rev().enumerate() {
            let (key, _) = kv.map_err(|e| backend("prune", name, log, e))?;
            let Some(id) = key.get(prefix.len()..) else {
                return Err(corrupt(name, &key, "the key is too short"));
            };
            if n >= keep || id < &cutoff[..] {
                doomed.push(key);
            }
        }
        // Oldest first, at most `max`.
        doomed.reverse();
        doomed.truncate(max);
        let mut batch = Batch::default();
        for key in &doomed {
            batch.remove(key.clone());
        }
        tree.apply_batch(batch)
            .map_err(|e| backend("prune", name, log, e))?;
        Ok(doomed.len())
    }
}

/// The end of a prefix's range; for the empty prefix (the audit tree), past every key.
fn prefix_end_or_all(prefix: &[u8]) -> Vec<u8> {
    if prefix.is_empty() {
        vec![0xff; 17]
    } else {
        prefix_end(prefix)
    }
}
