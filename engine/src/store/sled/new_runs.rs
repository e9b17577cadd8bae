//! How new runs enter the trees: encoded once, written in one transaction per batch, and moved
//! from the inbox by the promoter thread.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ::sled::transaction::Transactional;
use ::sled::{Db, IVec, Tree};

use super::hints::ScanHints;
use super::layout::{
    abort, decode, encode, expiry_key, flow_key, queue_key, tx_error, DedupeEntry, TreeName,
    TxResult,
};
use super::PROMOTED_KEY;
use crate::model::Timestamp;
use crate::store::inbox::{Reader, Record};
use crate::store::{Ingested, NewRun, Result, StoreError};

/// How many inbox records one promotion transaction moves.
const PROMOTE_BATCH: usize = 64;

/// Moves inbox records into the trees, in order, on its own thread, while the queue has room.
pub(super) struct Promoter {
    pub(super) trees: NewRunTrees,
    pub(super) db: Db,
    pub(super) log_file: Arc<std::fs::File>,
    pub(super) reader: Reader,
    /// Records read but not yet written (kept across a failed transaction, to try again).
    pub(super) pending: Vec<Record>,
    /// Promotion pauses while the queue tree holds this many items.
    pub(super) window: i64,
    pub(super) promoted: Arc<AtomicU64>,
    pub(super) stop: Arc<AtomicBool>,
}

impl Promoter {
    pub(super) fn run(mut self) {
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

/// A new run encoded for the trees: keys and values as they are written.
#[derive(Debug, PartialEq)]
pub(super) struct EncodedRun {
    event_key: Vec<u8>,
    pub(super) event: Vec<u8>,
    run_key: Vec<u8>,
    run: Vec<u8>,
    index_key: Vec<u8>,
    pub(super) items: Vec<(Vec<u8>, Vec<u8>)>,
    /// The dedupe tree's key and entry, when the entry expires, and when the event arrived.
    dedupe: Option<(Vec<u8>, Vec<u8>, Timestamp, Timestamp)>,
}

/// The first byte of an inbox record holding an [`EncodedRun`] (a record of an earlier version
/// is a JSON [`NewRun`], which starts with `{`).
const ENCODED_RUN: u8 = 1;

impl EncodedRun {
    pub(super) fn new(new: &NewRun) -> Result<Self> {
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
    pub(super) fn to_record(&self) -> Vec<u8> {
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
    pub(super) fn from_record(record: &[u8]) -> std::result::Result<Self, String> {
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
pub(super) struct NewRunTrees {
    pub(super) events: Tree,
    pub(super) runs: Tree,
    pub(super) runs_by_flow: Tree,
    pub(super) queue: Tree,
    pub(super) dedupe: Tree,
    pub(super) dedupe_expiry: Tree,
    pub(super) state: Tree,
    /// How many items in the queue tree are not leased (what the promotion window counts).
    pub(super) queued: Arc<AtomicI64>,
    /// Where claims start scanning each flow's queue.
    pub(super) hints: Arc<ScanHints>,
}

impl NewRunTrees {
    /// Writes new runs in one transaction, unless a run's dedupe key is taken (and not expired at
    /// its event's arrival); with `promoted`, also records the number of the last inbox record
    /// written, in the trees and in the promoter's counter. Returns what happened to each run.
    pub(super) fn write(
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
        self.hints.queued(
            new.iter()
                .flat_map(|run| run.items.iter().map(|(key, _)| key.as_slice())),
        );
        Ok(outcomes)
    }
}
