//! How new runs enter the trees: encoded once, read from the inbox by the promoter thread, and
//! written either by the update of their first step (`fresh.rs`) or by the promoter, a batch per
//! transaction. A record that does not decode is moved to the inbox's quarantine, never skipped:
//! the stored position passes a record only once its run is in the trees or its bytes are kept.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::sled::transaction::{Transactional, TransactionalTree};
use ::sled::{Db, IVec, Tree};

use super::fresh::{Fresh, FreshRun};
use super::hints::ScanHints;
use super::layout::{
    abort, corrupt, decode, encode, expiry_key, flow_key, id16, queue_key, record_key, tx_error,
    DedupeEntry, TreeName, TxResult,
};
use super::pending_keys::PendingKeys;
use super::PROMOTED_KEY;
use crate::ids::{EventId, FlowId, RunId};
use crate::model::{Event, QueueItem, Run, Timestamp};
use crate::store::inbox::{Reader, Record};
use crate::store::{DedupeKey, Ingested, NewRun, Result, StoreError};

/// How many runs one promotion transaction writes.
const PROMOTE_BATCH: usize = 64;
/// How many inbox records the promoter reads at once.
const READ_BATCH: usize = 256;
/// How often the stored inbox position (what recovery reads on from) moves on at most, apart
/// from when an inbox segment is done: each move costs two flushes.
const MARK_EVERY: Duration = Duration::from_millis(500);

/// Reads inbox records into the fresh runs, in order, on its own thread; writes to the trees the
/// fresh runs claims leave alone, while the queue has room; stores how far the trees hold every
/// run, and deletes the inbox segments behind it.
pub(super) struct Promoter {
    pub(super) trees: NewRunTrees,
    pub(super) fresh: Arc<Fresh>,
    pub(super) db: Db,
    pub(super) log_file: Arc<std::fs::File>,
    pub(super) reader: Reader,
    /// Records up to this one were in the inbox when the store opened: the trees may hold their
    /// runs already (written before a crash, past the stored position).
    pub(super) recovering_through: u64,
    /// The number of the last record read.
    pub(super) read_through: u64,
    /// The inbox position stored (and on disk).
    pub(super) mark: u64,
    pub(super) marked_at: Instant,
    /// Inbox segments read to their end, each with the last record number read by then.
    pub(super) finished: Vec<(PathBuf, u64)>,
    /// Promotion pauses while the queue tree holds this many items.
    pub(super) window: i64,
    pub(super) stop: Arc<AtomicBool>,
}

impl Promoter {
    pub(super) fn run(mut self) {
        while !self.stop.load(Ordering::SeqCst) {
            if let Err(e) = self.step() {
                tracing::error!(error = %e, "cannot move accepted events from the inbox into the store; retrying");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }

    /// Reads what the inbox has (while fresh runs have room), writes the runs due for the trees,
    /// and moves the stored position on.
    fn step(&mut self) -> Result<()> {
        let room = self.fresh.capacity().saturating_sub(self.fresh.waiting());
        let patience = Duration::from_millis(if self.fresh.is_empty() { 100 } else { 10 });
        if room == 0 {
            std::thread::sleep(patience);
        } else if self.reader.wait(patience) {
            self.read(room.min(READ_BATCH))?;
        }
        let queued = self.trees.queued.load(Ordering::SeqCst);
        let queue_room = usize::try_from(self.window - queued).unwrap_or(0);
        let due = self.fresh.for_trees(PROMOTE_BATCH, queue_room);
        if !due.is_empty() {
            self.trees.write_fresh(&due)?;
            self.fresh.written(due.iter().map(|(run, _)| run.run_id));
        }
        self.store_position()
    }

    /// Reads up to `max` records into the fresh runs.
    fn read(&mut self, max: usize) -> Result<()> {
        let (records, finished) = self
            .reader
            .read(max)
            .map_err(|e| StoreError::unavailable("inbox read failed", e))?;
        let mut runs = Vec::with_capacity(records.len());
        for record in records {
            let n = record.number;
            let run = EncodedRun::from_record(&record.payload)
                .and_then(|encoded| FreshRun::new(n, encoded));
            match run {
                // Written before the restart: its key, held since the store opened, is in the
                // trees too.
                Ok(run) if n <= self.recovering_through && self.stored(&run) => {
                    self.trees.release_keys(std::iter::once(&run.encoded));
                }
                Ok(run) => runs.push(run),
                Err(e) => self.set_aside(&record, &e)?,
            }
        }
        // Past the damaged records set aside too.
        self.read_through = self.reader.read_through();
        // A run of several first items is not claimed from memory: it goes to the trees at once,
        // so that its items are claimable as soon as it is readable (left in memory if that
        // fails: the promoter writes it on its next pass).
        let several: Vec<_> = runs
            .iter()
            .filter(|run| run.item.is_none())
            .map(|run| (&run.encoded, false))
            .collect();
        if !several.is_empty() && self.trees.write_runs(&several, true).is_ok() {
            self.trees.release_keys(several.iter().map(|(run, _)| *run));
            runs.retain(|run| run.item.is_some());
        }
        self.fresh.add(runs, self.read_through);
        self.finished
            .extend(finished.into_iter().map(|path| (path, self.read_through)));
        Ok(())
    }

    /// Moves a record that does not decode to the quarantine, trying again every second while
    /// that fails: the stored position must not pass a record that is neither run nor kept. Fails
    /// only when the store is closing (the record is read again at the next open).
    fn set_aside(&self, record: &Record, why: &str) -> Result<()> {
        loop {
            match self.reader.set_aside_undecodable(record, why) {
                Ok(()) => return Ok(()),
                Err(e) if self.stop.load(Ordering::SeqCst) => {
                    return Err(StoreError::unavailable(
                        format!("cannot quarantine inbox record {}", record.number),
                        e,
                    ))
                }
                Err(e) => {
                    tracing::error!(record = record.number, error = %e, "cannot move an undecodable inbox record to the quarantine; retrying");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
    }

    /// Whether the trees hold this run already (if unsure, no: whoever writes it checks again in
    /// its transaction).
    fn stored(&self, run: &FreshRun) -> bool {
        self.trees
            .runs
            .contains_key(run.run_id.to_bytes())
            .unwrap_or_else(|e| {
                tracing::warn!(run_id = %run.run_id, error = %e, "cannot tell whether a recovered run is stored; it is kept");
                false
            })
    }

    /// Stores the position before which every run is in the trees, once those runs are on disk
    /// (at most every [`MARK_EVERY`], or when an inbox segment is done); deletes the inbox
    /// segments behind the stored position.
    fn store_position(&mut self) -> Result<()> {
        let low = self.fresh.low_water();
        // A segment to delete once the position passes it, or time for the position to move on.
        let segment_done = self.finished.iter().any(|(_, last)| *last <= low);
        let due = segment_done || self.marked_at.elapsed() >= MARK_EVERY;
        if low > self.mark && due {
            // The runs before `low` first, then the position: never a position without its runs.
            self.sync()?;
            self.trees
                .state
                .insert(PROMOTED_KEY, low.to_string().into_bytes())
                .map_err(|e| super::layout::backend("write", TreeName::State, &PROMOTED_KEY, e))?;
            self.sync()?;
            self.mark = low;
            self.marked_at = Instant::now();
        }
        let mark = self.mark;
        for (path, _) in self.finished.iter().filter(|(_, last)| *last <= mark) {
            std::fs::remove_file(path).map_err(|e| {
                StoreError::unavailable(format!("cannot delete {}", path.display()), e)
            })?;
        }
        self.finished.retain(|(_, last)| *last > mark);
        Ok(())
    }

    /// Flushes sled and fsyncs its log.
    fn sync(&self) -> Result<()> {
        self.db
            .flush()
            .map_err(|e| StoreError::unavailable("sled: flush failed", e))?;
        self.log_file
            .sync_all()
            .map_err(|e| StoreError::unavailable("fsync of sled's log failed", e))
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
    /// The records of steps executed before ingest (keys and values). Inbox records carry none:
    /// a run with records is written to the trees directly (see [`EncodedRun::has_records`]).
    records: Vec<(Vec<u8>, Vec<u8>)>,
}

impl EncodedRun {
    /// The run's id.
    pub(super) fn run_id(&self) -> Result<RunId> {
        id16(&self.run_key)
            .map(RunId::from_bytes)
            .ok_or_else(|| StoreError::unavailable_because("a new run's key is not 16 bytes"))
    }

    /// Its event's id.
    pub(super) fn event_id(&self) -> Result<EventId> {
        id16(&self.event_key)
            .map(EventId::from_bytes)
            .ok_or_else(|| StoreError::unavailable_because("a new event's key is not 16 bytes"))
    }

    /// Whether steps were executed before ingest (the run has step records), so it is written to
    /// the trees directly, never through the inbox.
    pub(super) fn has_records(&self) -> bool {
        !self.records.is_empty()
    }

    /// The run's only queue item, if it has exactly one.
    pub(super) fn single_item(&self) -> Result<Option<QueueItem>> {
        match &self.items[..] {
            [(key, value)] => decode(TreeName::Queue, key, value).map(Some),
            _ => Ok(None),
        }
    }

    /// Whether the run is of this flow.
    pub(super) fn in_flow(&self, flow_id: &FlowId) -> bool {
        self.index_key.starts_with(&flow_key(flow_id, &[]))
    }

    /// The run as stored.
    pub(super) fn run_value(&self) -> &[u8] {
        &self.run
    }

    /// Writes the run's dedupe key, in a transaction, unless an unexpired one is there: then
    /// answers the run that holds it. Without a dedupe key, does nothing.
    pub(super) fn take_key(
        &self,
        dedupe_keys: &TransactionalTree,
        expiry: &TransactionalTree,
    ) -> TxResult<Option<Ingested>> {
        let Some((key, value, expires_at, received_at)) = &self.dedupe else {
            return Ok(None);
        };
        if let Some(taken) = dedupe_keys.get(key)? {
            let taken: DedupeEntry = decode(TreeName::Dedupe, key, &taken).map_err(abort)?;
            if taken.expires_at > *received_at {
                return Ok(Some(Ingested::Duplicate {
                    event_id: taken.event_id,
                    run_id: taken.run_id,
                }));
            }
            expiry.remove(expiry_key(taken.expires_at, key))?;
        }
        dedupe_keys.insert(key.as_slice(), value.as_slice())?;
        expiry.insert(expiry_key(*expires_at, key), IVec::default())?;
        Ok(None)
    }

    /// Writes, in a transaction, the event, the run's index entry and its items (but `except`);
    /// not the run itself. Returns the keys of the items written.
    pub(super) fn create(
        &self,
        events: &TransactionalTree,
        by_flow: &TransactionalTree,
        queue: &TransactionalTree,
        except: Option<&[u8]>,
    ) -> TxResult<Vec<IVec>> {
        events.insert(&self.event_key[..], self.event.as_slice())?;
        by_flow.insert(self.index_key.as_slice(), IVec::default())?;
        let mut keys = Vec::with_capacity(self.items.len());
        for (key, item) in &self.items {
            if except != Some(key.as_slice()) {
                queue.insert(key.as_slice(), item.as_slice())?;
                keys.push(IVec::from(key.as_slice()));
            }
        }
        Ok(keys)
    }
}

/// The first byte of an inbox record holding an [`EncodedRun`] (a record of an earlier version
/// is a JSON [`NewRun`], which starts with `{`).
const ENCODED_RUN: u8 = 1;
/// The first byte of an inbox record holding an [`EncodedRun`] with a dedupe key, which the
/// promoter writes to the trees with the run. Its first four parts are the dedupe key, its entry,
/// and the entry's expiry and the event's arrival (i64 little endian).
const DEDUPED_RUN: u8 = 2;

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
            records: new
                .records
                .iter()
                .map(|r| {
                    let key = record_key(r.run_id, &r.step_id);
                    Ok((key, encode(TreeName::StepRecords, &r.step_id, r)?))
                })
                .collect::<Result<Vec<_>>>()?,
        })
    }

    /// The run as an inbox record: its keys and values, each after its length (u32, little
    /// endian), so the promoter writes them without decoding anything; with its dedupe key first
    /// when it has one ([`DEDUPED_RUN`]).
    pub(super) fn to_record(&self) -> Vec<u8> {
        debug_assert!(
            !self.has_records(),
            "a run with step records never goes to the inbox"
        );
        let times;
        let dedupe: Vec<&[u8]> = match &self.dedupe {
            Some((key, value, expires_at, received_at)) => {
                times = [expires_at.0.to_le_bytes(), received_at.0.to_le_bytes()];
                vec![key, value, &times[0], &times[1]]
            }
            None => Vec::new(),
        };
        let parts = [
            &self.event_key,
            &self.event,
            &self.run_key,
            &self.run,
            &self.index_key,
        ];
        let items = self.items.iter().flat_map(|(key, value)| [key, value]);
        let tag = if self.dedupe.is_some() {
            DEDUPED_RUN
        } else {
            ENCODED_RUN
        };
        let mut record = vec![tag];
        let all = dedupe
            .into_iter()
            .chain(parts.into_iter().chain(items).map(Vec::as_slice));
        for part in all {
            record.extend_from_slice(&(part.len() as u32).to_le_bytes());
            record.extend_from_slice(part);
        }
        record
    }

    /// The run's dedupe key (the `dedupe` tree's key), when it expires and when its event
    /// arrived, if it has one.
    pub(super) fn dedupe(&self) -> Option<(&[u8], Timestamp, Timestamp)> {
        self.dedupe
            .as_ref()
            .map(|(key, _, expires_at, received_at)| (key.as_slice(), *expires_at, *received_at))
    }

    /// Whether an inbox record holds a run with a dedupe key (without reading the rest).
    pub(super) fn carries_dedupe(record: &[u8]) -> bool {
        record.first() == Some(&DEDUPED_RUN)
    }

    /// Reads an inbox record (see [`to_record`](Self::to_record); a JSON [`NewRun`] of an earlier
    /// version is encoded afresh).
    pub(super) fn from_record(record: &[u8]) -> std::result::Result<Self, String> {
        let (deduped, mut rest) = match record.split_first() {
            Some((&ENCODED_RUN, rest)) => (false, rest),
            Some((&DEDUPED_RUN, rest)) => (true, rest),
            _ => {
                let new: NewRun = serde_json::from_slice(record).map_err(|e| e.to_string())?;
                return Self::new(&new).map_err(|e| e.to_string());
            }
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
        let dedupe = if deduped {
            if parts.len() < 4 {
                return Err("the dedupe key is cut off".into());
            }
            let rest = parts.split_off(4);
            let [key, value, expires_at, received_at] =
                <[Vec<u8>; 4]>::try_from(std::mem::replace(&mut parts, rest))
                    .map_err(|_| "four dedupe parts expected")?;
            let time = |bytes: Vec<u8>| {
                <[u8; 8]>::try_from(bytes)
                    .map(|b| Timestamp(i64::from_le_bytes(b)))
                    .map_err(|_| "a dedupe time is not 8 bytes")
            };
            Some((key, value, time(expires_at)?, time(received_at)?))
        } else {
            None
        };
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
            dedupe,
            records: Vec::new(),
        })
    }

    /// The new run this holds, every part decoded and checked to belong together (to ingest it
    /// again from the quarantine, where damage may have left parts that do not).
    pub(super) fn decode_new_run(&self) -> Result<NewRun> {
        let event: Event = decode(TreeName::Events, &self.event_key, &self.event)?;
        let run: Run = decode(TreeName::Runs, &self.run_key, &self.run)?;
        let items = self
            .items
            .iter()
            .map(|(key, value)| decode(TreeName::Queue, key, value))
            .collect::<Result<Vec<QueueItem>>>()?;
        if run.event_id != event.id || items.iter().any(|item| item.run_id != run.id) {
            return Err(corrupt(
                TreeName::Runs,
                &self.run_key,
                "its event or items belong to another run",
            ));
        }
        let dedupe = match &self.dedupe {
            Some((key, _, expires_at, _)) => {
                let prefix = flow_key(&run.flow_id, &[]);
                let text = key
                    .strip_prefix(prefix.as_slice())
                    .and_then(|k| std::str::from_utf8(k).ok())
                    .ok_or_else(|| corrupt(TreeName::Dedupe, key, "not a key of the run's flow"))?;
                Some(DedupeKey {
                    key: text.to_owned(),
                    expires_at: *expires_at,
                })
            }
            None => None,
        };
        Ok(NewRun {
            event,
            run,
            items,
            dedupe,
            records: Vec::new(),
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
    pub(super) step_records: Tree,
    pub(super) state: Tree,
    /// How many items in the queue tree are not leased (what the promotion window counts).
    pub(super) queued: Arc<AtomicI64>,
    /// Where claims start scanning each flow's queue.
    pub(super) hints: Arc<ScanHints>,
    /// The dedupe keys of runs in the inbox, released as their runs are written.
    pub(super) pending_keys: Arc<PendingKeys>,
}

impl NewRunTrees {
    /// Writes new runs in one transaction, unless a run's dedupe key is taken (and not expired at
    /// its event's arrival). Returns what happened to each run.
    pub(super) fn write(&self, new: &[EncodedRun]) -> Result<Vec<Ingested>> {
        let runs: Vec<_> = new.iter().map(|run| (run, false)).collect();
        Ok(self
            .write_runs(&runs, false)?
            .into_iter()
            .flatten()
            .collect())
    }

    /// Writes fresh runs the promoter took over, in one transaction, each unless the trees hold
    /// it already; the items of those marked `true` are leased (not counted as queued).
    pub(super) fn write_fresh(&self, due: &[(Arc<FreshRun>, bool)]) -> Result<()> {
        let runs: Vec<_> = due
            .iter()
            .map(|(run, leased)| (&run.encoded, *leased))
            .collect();
        self.write_runs(&runs, true)?;
        self.release_keys(runs.iter().map(|(run, _)| *run));
        Ok(())
    }

    /// Releases the dedupe keys the runs held in memory: the trees hold them now.
    fn release_keys<'a>(&self, runs: impl Iterator<Item = &'a EncodedRun>) {
        for run in runs {
            if let (Some((key, ..)), Ok(run_id)) = (run.dedupe(), run.run_id()) {
                self.pending_keys.release(key, run_id);
            }
        }
    }

    /// Writes runs (each with whether its items are leased). With `skip_stored` (runs from the
    /// inbox, already acknowledged), a run the trees hold already is left as it is (`None`), and a
    /// run whose dedupe key another run took meanwhile (a newer delivery, after this one's key
    /// expired) is written all the same, leaving the key to that run. Without it (a direct write at
    /// ingest), such a run is a duplicate and nothing is written.
    fn write_runs(
        &self,
        new: &[(&EncodedRun, bool)],
        skip_stored: bool,
    ) -> Result<Vec<Option<Ingested>>> {
        let trees = (
            &self.events,
            &self.runs,
            &self.runs_by_flow,
            &self.queue,
            &self.dedupe,
            &self.dedupe_expiry,
            &self.step_records,
        );
        let outcomes = trees
            .transaction(
                |(events, runs, by_flow, queue, dedupe_keys, expiry, records)| -> TxResult<Vec<Option<Ingested>>> {
                    let mut outcomes = Vec::with_capacity(new.len());
                    for (run, _) in new {
                        if skip_stored && runs.get(&run.run_key)?.is_some() {
                            outcomes.push(None);
                            continue;
                        }
                        if let Some(duplicate) = run.take_key(dedupe_keys, expiry)? {
                            if !skip_stored {
                                outcomes.push(Some(duplicate));
                                continue;
                            }
                        }
                        run.create(events, by_flow, queue, None)?;
                        runs.insert(&run.run_key[..], run.run.as_slice())?;
                        for (key, record) in &run.records {
                            records.insert(key.as_slice(), record.as_slice())?;
                        }
                        outcomes.push(Some(Ingested::Created));
                    }
                    Ok(outcomes)
                },
            )
            .map_err(tx_error("ingest", TreeName::Runs))?;
        let queued: Vec<&[u8]> = new
            .iter()
            .zip(&outcomes)
            .filter(|((_, leased), o)| !leased && **o == Some(Ingested::Created))
            .flat_map(|((run, _), _)| run.items.iter().map(|(key, _)| key.as_slice()))
            .collect();
        self.queued.fetch_add(queued.len() as i64, Ordering::SeqCst);
        self.hints.queued(queued);
        Ok(outcomes)
    }
}
