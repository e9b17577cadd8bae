//! Storage between runs in sled: the `storage` tree holds each entry under its namespace, `0x00`
//! and its key; `storage_expiry` indexes the entries that expire, by expiry time then that same
//! key, so the sweeper reads only what has expired. `storage_applied` holds the answers of writes
//! made under an operation key, by that key, and `storage_applied_expiry` indexes them by when
//! they are forgotten.
//!
//! Invariants: a write reads the entry (and its operation key's answer), applies [`apply`] and
//! writes the entry, its index entry and the answer in one transaction over the four trees (sled
//! retries it on a conflict, so concurrent increments lose nothing); an entry with an expiry has
//! exactly one index entry, at that expiry, and so does each recorded answer.

use ::sled::transaction::Transactional;
use ::sled::Tree;

use super::layout::{abort, backend, decode, due_bytes, encode, prefix_end, tx_error, TreeName};
use crate::model::Timestamp;
use serde::{Deserialize, Serialize};

use crate::store::storage::{
    apply, Applied, Entry, Namespace, StorageAnswer, StorageCall, StorageKey, APPLIED_KEPT,
};
use crate::store::{Result, StoreError};

/// How many expired entries one transaction deletes.
const EXPIRE_CHUNK: usize = 100;

/// The two storage trees.
#[derive(Debug)]
pub(super) struct StorageTrees {
    pub(super) entries: Tree,
    pub(super) expiry: Tree,
    pub(super) applied: Tree,
    pub(super) applied_expiry: Tree,
}

/// `storage` key: namespace, `0x00`, key.
fn entry_key(namespace: &Namespace, key: &StorageKey) -> Vec<u8> {
    let mut k = namespace.as_str().as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(key.as_str().as_bytes());
    k
}

/// `storage_expiry` key: expiry time, then the `storage` key.
fn expiry_key(at: Timestamp, entry_key: &[u8]) -> Vec<u8> {
    let mut k = due_bytes(at).to_vec();
    k.extend_from_slice(entry_key);
    k
}

/// The answer of a write made under an operation key, and when it is forgotten.
#[derive(Debug, Serialize, Deserialize)]
struct Answer {
    applied: Applied,
    forget_at: Timestamp,
}

/// A `storage` key split into namespace and key.
fn split(raw: &[u8]) -> Result<(Namespace, StorageKey)> {
    let bad = |why: &str| StoreError::Corrupt {
        tree: TreeName::Storage.name(),
        detail: format!("key {}: {why}", String::from_utf8_lossy(raw)),
    };
    let end = raw
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| bad("no namespace"))?;
    let text = |b| std::str::from_utf8(b).map_err(|_| bad("not UTF-8"));
    let namespace = Namespace::new(text(&raw[..end])?).map_err(|e| bad(&e.to_string()))?;
    let key = StorageKey::new(text(&raw[end + 1..])?).map_err(|e| bad(&e.to_string()))?;
    Ok((namespace, key))
}

impl StorageTrees {
    /// Applies `op` (once per operation key `once`) in one transaction over the four trees.
    pub(super) fn apply(&self, call: StorageCall<'_>) -> Result<StorageAnswer> {
        let StorageCall {
            namespace,
            key,
            op,
            once,
            now,
        } = call;
        let raw = entry_key(namespace, key);
        let read = |bytes: Option<::sled::IVec>| -> Result<Option<Entry>> {
            bytes
                .map(|b| decode(TreeName::Storage, &raw, &b))
                .transpose()
        };
        if !op.writes() {
            let stored = read(
                self.entries
                    .get(&raw)
                    .map_err(|e| backend("read", TreeName::Storage, key, e))?,
            )?;
            return Ok(apply(key, stored, op, now));
        }
        let trees = (
            &self.entries,
            &self.expiry,
            &self.applied,
            &self.applied_expiry,
        );
        trees
            .transaction(|(entries, expiry, answers, answers_expiry)| {
                if let Some(once) = once {
                    if let Some(answer) = answers.get(once.as_bytes())? {
                        let answer: Answer =
                            decode(TreeName::StorageApplied, once.as_bytes(), &answer)
                                .map_err(abort)?;
                        return Ok(Ok(answer.applied));
                    }
                }
                let stored = read(entries.get(&raw)?).map_err(abort)?;
                let old_expiry = stored.as_ref().and_then(|e| e.expires_at);
                let applied = match apply(key, stored, op, now) {
                    Ok(applied) => applied,
                    Err(refused) => return Ok(Err(refused)),
                };
                if let Some(at) = old_expiry {
                    expiry.remove(expiry_key(at, &raw))?;
                }
                match &applied.after {
                    Some(entry) => {
                        let bytes = encode(TreeName::Storage, key, entry).map_err(abort)?;
                        entries.insert(raw.as_slice(), bytes)?;
                        if let Some(at) = entry.expires_at {
                            expiry.insert(expiry_key(at, &raw), &[])?;
                        }
                    }
                    None => {
                        entries.remove(raw.as_slice())?;
                    }
                }
                if let Some(once) = once {
                    let answer = Answer {
                        applied: applied.clone(),
                        forget_at: now.plus(APPLIED_KEPT),
                    };
                    let bytes = encode(TreeName::StorageApplied, &once, &answer).map_err(abort)?;
                    answers.insert(once.as_bytes(), bytes)?;
                    answers_expiry.insert(expiry_key(answer.forget_at, once.as_bytes()), &[])?;
                }
                Ok(Ok(applied))
            })
            .map_err(tx_error("write", TreeName::Storage))
    }

    /// Every live entry under `from..to`, in key order, until `take` says stop.
    fn scan(
        &self,
        from: Vec<u8>,
        to: Option<Vec<u8>>,
        now: Timestamp,
        mut take: impl FnMut(Namespace, StorageKey, Entry) -> bool,
    ) -> Result<()> {
        let range = match to {
            Some(to) => self.entries.range(from..to),
            None => self.entries.range(from..),
        };
        for pair in range {
            let (raw, bytes) = pair.map_err(|e| backend("scan", TreeName::Storage, &"", e))?;
            let entry: Entry = decode(TreeName::Storage, &raw, &bytes)?;
            if !entry.is_live(now) {
                continue;
            }
            let (namespace, key) = split(&raw)?;
            if !take(namespace, key, entry) {
                break;
            }
        }
        Ok(())
    }

    /// The namespaces with live entries, and how many each holds.
    pub(super) fn namespaces(&self, now: Timestamp) -> Result<Vec<(Namespace, u64)>> {
        let mut counts: Vec<(Namespace, u64)> = Vec::new();
        self.scan(Vec::new(), None, now, |namespace, _, _| {
            match counts.last_mut() {
                Some((last, n)) if *last == namespace => *n += 1,
                _ => counts.push((namespace, 1)),
            }
            true
        })?;
        Ok(counts)
    }

    /// A page of a namespace's live entries.
    pub(super) fn entries(
        &self,
        namespace: &Namespace,
        after: Option<&StorageKey>,
        limit: usize,
        now: Timestamp,
    ) -> Result<Vec<(StorageKey, Entry)>> {
        let mut prefix = namespace.as_str().as_bytes().to_vec();
        prefix.push(0);
        let end = prefix_end(&prefix);
        let from = match after {
            // The first key after `after`: `after` followed by the smallest byte.
            Some(after) => {
                let mut from = entry_key(namespace, after);
                from.push(0);
                from
            }
            None => prefix,
        };
        let mut page = Vec::new();
        if limit == 0 {
            return Ok(page);
        }
        self.scan(from, Some(end), now, |_, key, entry| {
            page.push((key, entry));
            page.len() < limit
        })?;
        Ok(page)
    }

    /// Deletes up to `max` entries expired at `now`.
    pub(super) fn expire(&self, now: Timestamp, max: usize) -> Result<usize> {
        let end = due_bytes(Timestamp(now.millis().saturating_add(1)));
        let mut expired = Vec::new();
        for key in self.expiry.range(..end).keys().take(max) {
            expired.push(key.map_err(|e| backend("scan", TreeName::StorageExpiry, &"", e))?);
        }
        let mut deleted = 0;
        for chunk in expired.chunks(EXPIRE_CHUNK) {
            deleted += (&self.entries, &self.expiry)
                .transaction(|(entries, expiry)| {
                    let mut deleted = 0;
                    for index_key in chunk {
                        expiry.remove(index_key)?;
                        let raw = &index_key[8..];
                        let Some(bytes) = entries.get(raw)? else {
                            continue;
                        };
                        let entry: Entry = decode(TreeName::Storage, raw, &bytes).map_err(abort)?;
                        if !entry.is_live(now) {
                            entries.remove(raw)?;
                            deleted += 1;
                        }
                    }
                    Ok(deleted)
                })
                .map_err(tx_error("expire", TreeName::Storage))?;
        }
        Ok(deleted + self.forget_answers(now, max)?)
    }

    /// Deletes up to `max` recorded answers whose time is up at `now`.
    fn forget_answers(&self, now: Timestamp, max: usize) -> Result<usize> {
        let end = due_bytes(Timestamp(now.millis().saturating_add(1)));
        let mut due = Vec::new();
        for key in self.applied_expiry.range(..end).keys().take(max) {
            due.push(key.map_err(|e| backend("scan", TreeName::StorageAppliedExpiry, &"", e))?);
        }
        for chunk in due.chunks(EXPIRE_CHUNK) {
            (&self.applied, &self.applied_expiry)
                .transaction(|(answers, answers_expiry)| {
                    for index_key in chunk {
                        answers_expiry.remove(index_key)?;
                        answers.remove(&index_key[8..])?;
                    }
                    Ok(())
                })
                .map_err(tx_error("expire", TreeName::StorageApplied))?;
        }
        Ok(due.len())
    }
}
