//! The inbox: an append-only, fsynced log of accepted events in front of the sled trees.
//!
//! Acknowledging a webhook must wait for an fsync, and sled's own flush is slow and blocks its
//! transactions (see "Durability" in `sled/mod.rs`). So `SledStore::ingest` appends the new run to
//! this log and returns once the log is synced; a promoter thread (`sled/new_runs.rs`) later reads
//! the records in order and moves their runs into the trees. Records are numbered from 1 in
//! append order. The number through which the trees hold every run is stored in sled's `state`
//! tree (`inbox:promoted`), in a write of its own after a flush that covers those runs, never
//! before them. After a crash the promoter reads on after that number and skips the records whose
//! runs the trees hold already, so no record is lost and none is moved twice.
//!
//! # Files
//! `DIR/NNNNNNNNNNNNNNNNNNNN.log` (the number of the segment's first record, zero-padded), each up
//! to [`SEGMENT_BYTES`] (a larger batch may overrun it). A record is framed as `length: u32 LE`,
//! `crc32(payload): u32 LE`, `payload` (`frames.rs`), and is never empty. A segment is also closed
//! when no append came for [`IDLE_ROLL`], so that a quiet inbox soon holds nothing already
//! promoted. `DIR/quarantine/` holds the records set aside (`quarantine.rs`).
//!
//! # Damage
//! On open, a torn tail of the newest segment is cut off: bytes after which no whole frame
//! follows up to the end of the file, a write the crash interrupted and so never acknowledged.
//! Nothing else is ever cut or skipped. A frame that is not whole anywhere else (acknowledged
//! bytes damaged on disk) starts a damaged span (`frames.rs`), which the readers move to the
//! quarantine before reading on after it; a whole record whose payload the promoter cannot decode
//! goes there too ([`Reader::set_aside_undecodable`]). Either way the record keeps its number.
//!
//! A span takes as many record numbers as the records it seems to have held, so the numbering of
//! the records after it does not shift. In a segment followed by another, whose name gives the
//! number after its last record, the segment's last span takes whatever numbers its whole records
//! leave, which is exact. Elsewhere the count can only be wrong where damage hides where two
//! records began; it then shifts the numbers of the records after the span in that segment, which
//! matters only when the stored position lies among them. A span wholly before the position a
//! reader starts at (its runs are in the trees) is only logged.
//!
//! # Group commit
//! One writer thread takes every append waiting, writes them with one `write` and one
//! `fdatasync`, then answers them all. A failed write is cut off again before the next batch, so
//! the log never holds a record that was not acknowledged in front of one that was.
//!
//! While appends arrive together (the last batch held more than one), the writer syncs at most
//! once per [`SYNC_GAP`]: on a disk with a write-back cache, every `fdatasync` flushes the whole
//! device and so waits for whatever else was written meanwhile (the store's own writes), now and
//! then for several milliseconds. Fewer, larger syncs meet fewer of those waits (bench/RESULTS.md:
//! the ingest p99 10.4 → 6.2–6.9 ms). A lone append is synced at once.

mod frames;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

pub(crate) use self::frames::recover_payload;
use self::frames::{frame, framed_len, Frame, Span};
use super::quarantine::{Found, Quarantine, QuarantineKind};

/// A segment is closed once it holds this many bytes.
pub const SEGMENT_BYTES: u64 = 64 << 20;

/// At most this many bytes are written in one batch.
const BATCH_BYTES: usize = 8 << 20;

/// After this long without an append, the writer starts a new segment (if the current one holds
/// records), so the records of a burst are deleted once promoted instead of waiting for the
/// segment to fill.
const IDLE_ROLL: Duration = Duration::from_secs(1);

/// While appends arrive together, at most one sync per this long.
const SYNC_GAP: Duration = Duration::from_millis(1);

/// A record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its number.
    pub number: u64,
    /// What was appended.
    pub payload: Vec<u8>,
    /// Where its frame starts.
    pub at: Place,
}

/// A place in the inbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    /// The segment's first record number (its name).
    pub segment: u64,
    /// The offset in the segment.
    pub offset: u64,
}

/// An append waiting for the writer.
struct Append {
    payload: Vec<u8>,
    done: tokio::sync::oneshot::Sender<io::Result<()>>,
}

/// How far the log is durable, shared by the writer and readers.
#[derive(Default)]
struct Durable {
    /// The number of the last record synced to disk.
    through: Mutex<u64>,
    grew: Condvar,
    /// How many batches were written and synced.
    syncs: AtomicU64,
}

/// The writing end of the inbox. Dropping it stops the writer thread.
pub struct Inbox {
    appends: Mutex<mpsc::Sender<Append>>,
    durable: Arc<Durable>,
    quarantine: Arc<Quarantine>,
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox")
            .field("durable_through", &self.durable_through())
            .finish()
    }
}

/// The reading end: yields records after a given number, in order, never beyond what is durable;
/// damaged spans on the way are set aside in the quarantine.
pub struct Reader {
    dir: PathBuf,
    durable: Arc<Durable>,
    quarantine: Arc<Quarantine>,
    /// The number of the next record to read.
    next: u64,
    /// The open segment and the offset of record `next` in it. Reads are positioned (`pread`),
    /// never buffered ahead: bytes past the last durable record may still be cut off and
    /// rewritten by the writer after a failed write.
    segment: Option<(Segment, u64)>,
}

impl Inbox {
    /// Opens (or creates) the inbox in `dir`. Segments holding only records up to `consumed` are
    /// deleted; a torn tail of the newest segment is cut off; the reader starts after `consumed`.
    pub fn open(dir: &Path, consumed: u64) -> io::Result<(Self, Reader)> {
        fs::create_dir_all(dir)?;
        let mut segments = segments(dir)?;
        // Keep the last segment that starts at or before the first unconsumed record, and later ones.
        let keep_from = segments
            .iter()
            .rposition(|(first, _)| *first <= consumed + 1)
            .unwrap_or(0);
        for (_, path) in segments.drain(..keep_from) {
            fs::remove_file(path)?;
        }
        let firsts: Vec<u64> = segments.iter().map(|(first, _)| *first).collect();
        let quarantine = Arc::new(Quarantine::open(&dir.join("quarantine"), &firsts)?);
        let (last, file) = match segments.last() {
            Some((first, path)) => {
                let numbers = cut_torn_tail(&Segment::open(dir, *first)?)?;
                let file = OpenOptions::new().write(true).open(path)?;
                let last = first + numbers - 1;
                // Numbering continues after `consumed` even if the log lost its tail.
                if last < consumed {
                    (consumed, create_segment(dir, consumed + 1)?)
                } else {
                    (last, file)
                }
            }
            _ => {
                let first = consumed + 1;
                (consumed, create_segment(dir, first)?)
            }
        };
        let durable = Arc::new(Durable {
            through: Mutex::new(last),
            ..Durable::default()
        });
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            dir: dir.to_owned(),
            file,
            next: last + 1,
            durable: durable.clone(),
        };
        std::thread::Builder::new()
            .name("hookflow-inbox".into())
            .spawn(move || writer.run(&rx))?;
        let reader = Reader {
            dir: dir.to_owned(),
            durable: durable.clone(),
            quarantine: quarantine.clone(),
            next: consumed + 1,
            segment: None,
        };
        Ok((
            Self {
                appends: Mutex::new(tx),
                durable,
                quarantine,
            },
            reader,
        ))
    }

    /// Appends a record (never empty); returns once it is on disk (fsync).
    pub async fn append(&self, payload: Vec<u8>) -> io::Result<()> {
        self.send(payload)?.await
    }

    /// Hands a record (never empty) to the writer at once (it will be written even if the
    /// returned future is dropped); the future answers once it is on disk (fsync).
    pub fn send(
        &self,
        payload: Vec<u8>,
    ) -> io::Result<impl std::future::Future<Output = io::Result<()>> + Send + 'static> {
        if payload.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an inbox record cannot be empty",
            ));
        }
        let (done, answer) = tokio::sync::oneshot::channel();
        self.appends
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .send(Append { payload, done })
            .map_err(|_| io::Error::other("the inbox writer has stopped"))?;
        Ok(async move {
            answer
                .await
                .map_err(|_| io::Error::other("the inbox writer has stopped"))?
        })
    }

    /// How many batches of appends were written and synced so far.
    pub fn syncs(&self) -> u64 {
        self.durable.syncs.load(Ordering::Relaxed)
    }

    /// The number of the last durable record.
    pub fn durable_through(&self) -> u64 {
        *self
            .durable
            .through
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The records set aside.
    pub(crate) fn quarantine(&self) -> &Quarantine {
        &self.quarantine
    }
}

/// Reads the newest segment through and cuts off a torn tail (see "Damage" in the module docs);
/// returns how many record numbers what is left takes.
fn cut_torn_tail(segment: &Segment) -> io::Result<u64> {
    let end = segment.len()?;
    let (mut numbers, mut offset) = (0, 0);
    loop {
        match segment.frame_at(offset)? {
            Frame::End => return Ok(numbers),
            Frame::Whole(payload) => {
                numbers += 1;
                offset += framed_len(&payload);
            }
            Frame::Damaged(span) if span.until < end => {
                numbers += span.records;
                offset = span.until;
            }
            Frame::Damaged(span) => {
                tracing::warn!(
                    segment = %segment.path.display(),
                    offset,
                    bytes = end - offset,
                    why = span.why,
                    "cutting off an unfinished write at the end of the inbox (no whole record follows it, so it was never acknowledged)"
                );
                let file = OpenOptions::new().write(true).open(&segment.path)?;
                file.set_len(offset)?;
                file.sync_all()?;
                return Ok(numbers);
            }
        }
    }
}

/// What one step of a read found.
enum Step {
    Record(Record),
    /// A damaged span, set aside.
    SetAside,
    /// A segment read to its end (the path).
    Finished(PathBuf),
}

impl Reader {
    /// Another reader at this one's position, reading on independently.
    pub fn fork(&self) -> Reader {
        Reader {
            dir: self.dir.clone(),
            durable: self.durable.clone(),
            quarantine: self.quarantine.clone(),
            next: self.next,
            segment: None,
        }
    }

    /// The number of the last record read or set aside.
    pub fn read_through(&self) -> u64 {
        self.next - 1
    }

    /// Waits up to `wait` for a durable record after those read so far; true if there is one,
    /// or if the segment read so far was closed since (`read` then reports it finished).
    pub fn wait(&self, wait: Duration) -> bool {
        let through = self
            .durable
            .through
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (through, _) = self
            .durable
            .grew
            .wait_timeout_while(through, wait, |t| *t < self.next)
            .unwrap_or_else(PoisonError::into_inner);
        *through >= self.next || self.read_segment_closed()
    }

    /// Whether every record of the open segment has been read and the writer has gone on to the
    /// next segment.
    fn read_segment_closed(&self) -> bool {
        matches!(&self.segment, Some((segment, _)) if segment.first < self.next)
            && segment_path(&self.dir, self.next).exists()
    }

    /// Reads up to `max` durable records, with their numbers, setting aside the damaged spans on
    /// the way. Also returns the segment files that the read finished (every record in them has
    /// now been read), for the caller to delete once what it did with the records is durable.
    ///
    /// A failure after some records were read returns those; the next call meets it again.
    pub fn read(&mut self, max: usize) -> io::Result<(Vec<Record>, Vec<PathBuf>)> {
        let through = *self
            .durable
            .through
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (mut records, mut finished) = (Vec::new(), Vec::new());
        while records.len() < max && self.next <= through {
            match self.step() {
                Ok(Step::Record(record)) => records.push(record),
                Ok(Step::SetAside) => {}
                Ok(Step::Finished(path)) => finished.push(path),
                Err(e) if records.is_empty() && finished.is_empty() => return Err(e),
                Err(e) => {
                    tracing::debug!(error = %e, "an inbox read stopped early; the next one goes on");
                    return Ok((records, finished));
                }
            }
        }
        if records.len() < max && self.read_segment_closed() {
            let (segment, _) = self.segment.take().expect("checked above");
            finished.push(segment.path);
        }
        Ok((records, finished))
    }

    /// Keeps a record whose frame is whole but whose payload the caller cannot decode in the
    /// quarantine, with why; the caller goes on without it.
    pub fn set_aside_undecodable(&self, record: &Record, why: &str) -> io::Result<()> {
        let mut bytes = Vec::new();
        frame(&mut bytes, &record.payload);
        let found = Found {
            segment: record.at.segment,
            offset: record.at.offset,
            record: record.number,
            records: 1,
            kind: QuarantineKind::Undecodable,
            reason: format!("the record cannot be decoded: {why}"),
            bytes: &bytes,
        };
        if let Some(entry) = self.quarantine.keep(&found)? {
            tracing::error!(
                file = %segment_path(&self.dir, record.at.segment).display(),
                offset = record.at.offset,
                record = record.number,
                kept = %entry.kept.display(),
                reason = why,
                "an inbox record that cannot be decoded was moved to the quarantine; see `hookflow quarantine list`"
            );
        }
        Ok(())
    }

    /// Reads what comes next: a record, a damaged span (set aside), or the end of a segment.
    /// Changes nothing when it fails.
    fn step(&mut self) -> io::Result<Step> {
        if self.segment.is_none() {
            self.segment = Some(self.open_segment()?);
        }
        let (segment, offset) = self.segment.as_ref().expect("opened above");
        let offset = *offset;
        match segment.frame_at(offset)? {
            Frame::Whole(payload) => {
                let at = Place {
                    segment: segment.first,
                    offset,
                };
                let record = Record {
                    number: self.next,
                    payload,
                    at,
                };
                self.moved(offset + framed_len(&record.payload), 1);
                Ok(Step::Record(record))
            }
            Frame::Damaged(span) => {
                let numbers = self.set_aside(offset, &span)?;
                self.moved(span.until, numbers);
                Ok(Step::SetAside)
            }
            Frame::End => self.end_segment().map(Step::Finished),
        }
    }

    /// Moves on in the open segment to `offset`, past `numbers` record numbers.
    fn moved(&mut self, offset: u64, numbers: u64) {
        if let Some((_, at)) = &mut self.segment {
            *at = offset;
        }
        self.next += numbers;
    }

    /// Keeps the damaged span at `offset` of the open segment (holding record `next` on) in the
    /// quarantine; returns how many record numbers it takes.
    fn set_aside(&self, offset: u64, span: &Span) -> io::Result<u64> {
        let (segment, _) = self.segment.as_ref().expect("a segment is open");
        let following = self.following(segment.first)?;
        if following.is_none() && span.until >= segment.len()? {
            // Torn tails were cut at open: this is damage since, or a write under way.
            return Err(io::Error::other(format!(
                "inbox record {} in {} is damaged and no whole record follows it yet",
                self.next,
                segment.path.display()
            )));
        }
        let numbers = segment.span_numbers(span, self.next, following)?;
        let bytes = frames::read_range(&segment.file, offset, span.until)?;
        let found = Found {
            segment: segment.first,
            offset,
            record: self.next,
            records: numbers,
            kind: QuarantineKind::Damaged,
            reason: format!("the record is damaged: {}", span.why),
            bytes: &bytes,
        };
        match self.quarantine.keep(&found)? {
            Some(entry) => tracing::error!(
                file = %segment.path.display(),
                offset,
                record = self.next,
                records = numbers,
                bytes = bytes.len(),
                kept = %entry.kept.display(),
                why = span.why,
                "a damaged inbox record was moved to the quarantine; the records after it are read on (see `hookflow quarantine list`)"
            ),
            None => tracing::debug!(
                file = %segment.path.display(),
                offset,
                "a damaged inbox record is in the quarantine already"
            ),
        }
        Ok(numbers)
    }

    /// Moves on from the open segment, read to its end, to the next one; returns the finished
    /// segment's path.
    fn end_segment(&mut self) -> io::Result<PathBuf> {
        let (segment, _) = self.segment.as_ref().expect("a segment is open");
        match self.following(segment.first)? {
            Some(next) if next == self.next => {}
            Some(next) if next > self.next => {
                tracing::error!(
                    segment = %segment.path.display(),
                    missing_from = self.next,
                    missing_to = next - 1,
                    "inbox records are missing from the end of a segment (the file was cut short); reading on at the next segment"
                );
                self.next = next;
            }
            _ => {
                return Err(io::Error::other(format!(
                    "inbox record {} in {} cannot be read (the file is damaged)",
                    self.next,
                    segment.path.display()
                )))
            }
        }
        let (segment, _) = self.segment.take().expect("a segment is open");
        Ok(segment.path)
    }

    /// The first record number of the segment after the one starting with `first`, if there is
    /// one.
    fn following(&self, first: u64) -> io::Result<Option<u64>> {
        Ok(segments(&self.dir)?
            .into_iter()
            .map(|(f, _)| f)
            .find(|f| *f > first))
    }

    /// Opens the segment holding record `next`, with the offset of that record; or of a damaged
    /// span that holds it, moving `next` back to the span's first number (the span is set aside
    /// when read).
    fn open_segment(&mut self) -> io::Result<(Segment, u64)> {
        let all = segments(&self.dir)?;
        let index = all
            .iter()
            .rposition(|(first, _)| *first <= self.next)
            .ok_or_else(|| {
                io::Error::other(format!("inbox record {} has no segment", self.next))
            })?;
        let following = all.get(index + 1).map(|(first, _)| *first);
        let segment = Segment::open(&self.dir, all[index].0)?;
        let (mut number, mut offset) = (segment.first, 0);
        while number < self.next {
            match segment.frame_at(offset)? {
                Frame::Whole(payload) => {
                    number += 1;
                    offset += framed_len(&payload);
                }
                Frame::Damaged(span) => {
                    let numbers = segment.span_numbers(&span, number, following)?;
                    if number + numbers > self.next {
                        self.next = number;
                        break;
                    }
                    tracing::warn!(
                        segment = %segment.path.display(),
                        offset,
                        records = numbers,
                        why = span.why,
                        "a damaged inbox record lies before the stored position (its runs are in the store): it is left"
                    );
                    number += numbers;
                    offset = span.until;
                }
                // Fewer records than numbers: reading finds the end and moves on.
                Frame::End => break,
            }
        }
        Ok((segment, offset))
    }
}

/// A segment open for reading.
struct Segment {
    /// Its first record number.
    first: u64,
    path: PathBuf,
    file: File,
}

impl Segment {
    fn open(dir: &Path, first: u64) -> io::Result<Self> {
        let path = segment_path(dir, first);
        let file = File::open(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        Ok(Self { first, path, file })
    }

    /// How many bytes it holds now.
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    /// What it holds at `offset`.
    fn frame_at(&self, offset: u64) -> io::Result<Frame> {
        frames::frame_at(&self.file, offset, self.len()?)
    }

    /// How many record numbers the damaged `span`, starting with record `number`, takes (see
    /// "Damage" in the module docs): its own count, unless it is the segment's last span and the
    /// next segment starts with record `following`; then what the whole records after it leave,
    /// which is 0 for bytes no record was counted for (a failed write the writer could not cut).
    fn span_numbers(&self, span: &Span, number: u64, following: Option<u64>) -> io::Result<u64> {
        let Some(following) = following else {
            return Ok(span.records);
        };
        let (mut whole, mut offset) = (0, span.until);
        loop {
            match self.frame_at(offset)? {
                Frame::Whole(payload) => {
                    whole += 1;
                    offset += framed_len(&payload);
                }
                Frame::Damaged(_) => return Ok(span.records),
                Frame::End => break,
            }
        }
        Ok(following.saturating_sub(number + whole))
    }
}

/// The writer thread's state.
struct Writer {
    dir: PathBuf,
    file: File,
    /// The number the next record gets.
    next: u64,
    durable: Arc<Durable>,
}

/// When the writer may sync next (see "Group commit" above).
#[derive(Debug, Default)]
struct Pacing {
    /// When the last sync of a batch of several appends started.
    busy_since: Option<Instant>,
}

impl Pacing {
    /// How long to wait at `now` before taking the next batch.
    fn wait(&self, now: Instant) -> Duration {
        self.busy_since
            .map_or(Duration::ZERO, |at| SYNC_GAP.saturating_sub(now - at))
    }

    /// Notes a sync of `appends` appends that started at `at`.
    fn synced(&mut self, at: Instant, appends: usize) {
        self.busy_since = (appends > 1).then_some(at);
    }
}

impl Writer {
    fn run(mut self, appends: &mpsc::Receiver<Append>) {
        let mut buf = Vec::new();
        let mut pacing = Pacing::default();
        loop {
            let first = match appends.recv_timeout(IDLE_ROLL) {
                Ok(first) => first,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Err(e) = self.roll_if_used() {
                        tracing::warn!(error = %e, "cannot start a new inbox segment; the current one stays open");
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            let wait = pacing.wait(Instant::now());
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
            let mut batch = vec![first];
            let mut bytes = batch[0].payload.len();
            while bytes < BATCH_BYTES {
                match appends.try_recv() {
                    Ok(more) => {
                        bytes += more.payload.len();
                        batch.push(more);
                    }
                    Err(_) => break,
                }
            }
            buf.clear();
            for append in &batch {
                frame(&mut buf, &append.payload);
            }
            pacing.synced(Instant::now(), batch.len());
            let written = self.write(&buf);
            if written.is_ok() {
                self.durable.syncs.fetch_add(1, Ordering::Relaxed);
                self.next += batch.len() as u64;
                *self
                    .durable
                    .through
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = self.next - 1;
                self.durable.grew.notify_all();
            }
            for append in batch {
                let answer = match &written {
                    Ok(()) => Ok(()),
                    Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                };
                let _ = append.done.send(answer);
            }
        }
    }

    /// Starts a new segment if the current one holds records.
    fn roll_if_used(&mut self) -> io::Result<()> {
        if self.file.metadata()?.len() > 0 {
            self.file = create_segment(&self.dir, self.next)?;
        }
        Ok(())
    }

    /// Writes a batch at the end of the current segment (starting a new one when it is full) and
    /// syncs it; on failure cuts the segment back to where it was.
    fn write(&mut self, buf: &[u8]) -> io::Result<()> {
        let len = self.file.seek(SeekFrom::End(0))?;
        if len >= SEGMENT_BYTES {
            self.file = create_segment(&self.dir, self.next)?;
            return self.write(buf);
        }
        let written = self
            .file
            .write_all(buf)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            tracing::error!(error = %e, "inbox write failed; the events in it were not acknowledged");
            if let Err(cut) = self.file.set_len(len) {
                // The failed bytes stay: leave them at the end of this segment, where readers
                // count no record for them (the next segment's name says so), and go on in a
                // new one.
                tracing::error!(error = %cut, "cannot cut a failed inbox write off; starting a new segment");
                self.file = create_segment(&self.dir, self.next)?;
            }
            return Err(e);
        }
        Ok(())
    }
}

/// The segments in `dir`, oldest first, with their first record numbers.
fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let first = path
            .file_name()
            .and_then(|n| n.to_str()?.strip_suffix(".log")?.parse().ok());
        if let Some(first) = first {
            found.push((first, path));
        }
    }
    found.sort();
    Ok(found)
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.log"))
}

/// Creates an empty segment whose first record will be `first`, durably (the directory is synced).
fn create_segment(dir: &Path, first: u64) -> io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(segment_path(dir, first))?;
    File::open(dir)?.sync_all()?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The records' numbers and payloads.
    fn numbered(records: Vec<Record>) -> Vec<(u64, Vec<u8>)> {
        records.into_iter().map(|r| (r.number, r.payload)).collect()
    }

    /// The quarantine's entries.
    fn list(dir: &tempfile::TempDir) -> Vec<crate::store::quarantine::Quarantined> {
        Quarantine::open(&dir.path().join("quarantine"), &[])
            .unwrap()
            .list()
            .unwrap()
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn after_a_batch_of_several_the_next_sync_waits_out_the_gap_and_after_one_it_does_not() {
        let start = Instant::now();
        let mut pacing = Pacing::default();
        assert_eq!(
            pacing.wait(start),
            Duration::ZERO,
            "the first sync goes at once"
        );
        pacing.synced(start, 1);
        assert_eq!(
            pacing.wait(start),
            Duration::ZERO,
            "a lone append is synced at once"
        );
        pacing.synced(start, 5);
        assert_eq!(pacing.wait(start), SYNC_GAP);
        let later = start + SYNC_GAP / 4;
        assert_eq!(pacing.wait(later), SYNC_GAP - SYNC_GAP / 4);
        assert_eq!(pacing.wait(start + SYNC_GAP), Duration::ZERO);
        assert_eq!(pacing.wait(start + 3 * SYNC_GAP), Duration::ZERO);
    }

    #[test]
    fn each_batch_written_counts_as_one_sync() {
        let dir = tempfile::tempdir().unwrap();
        let (inbox, _reader) = Inbox::open(dir.path(), 0).unwrap();
        block_on(async {
            for n in 0..3u8 {
                inbox.append(vec![n]).await.unwrap();
            }
        });
        assert_eq!(
            inbox.syncs(),
            3,
            "appends one after another are synced one by one"
        );
    }

    #[test]
    fn records_come_back_in_order_across_segments_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (inbox, mut reader) = Inbox::open(dir.path(), 0).unwrap();
        block_on(async {
            for n in 0..5u8 {
                inbox.append(vec![n; 10]).await.unwrap();
            }
        });
        let (records, finished) = reader.read(3).unwrap();
        assert_eq!(
            numbered(records),
            vec![(1, vec![0; 10]), (2, vec![1; 10]), (3, vec![2; 10])]
        );
        assert!(finished.is_empty());
        drop((inbox, reader));
        // Reopened after record 2 was consumed: 3, 4 and 5 come back, and new ones follow.
        let (inbox, mut reader) = Inbox::open(dir.path(), 2).unwrap();
        block_on(inbox.append(vec![9; 3])).unwrap();
        let numbers: Vec<u64> = reader
            .read(10)
            .unwrap()
            .0
            .iter()
            .map(|r| r.number)
            .collect();
        assert_eq!(numbers, vec![3, 4, 5, 6]);
    }

    #[test]
    fn a_full_segment_is_followed_by_a_new_one_and_reported_finished() {
        let dir = tempfile::tempdir().unwrap();
        let (inbox, mut reader) = Inbox::open(dir.path(), 0).unwrap();
        let records = SEGMENT_BYTES / (1 << 20) + 3;
        block_on(async {
            for n in 0..records {
                inbox.append(vec![n as u8; 1 << 20]).await.unwrap();
            }
        });
        assert_eq!(segments(dir.path()).unwrap().len(), 2);
        let (mut read, mut finished) = (Vec::new(), Vec::new());
        while read.len() < records as usize {
            let (more, done) = reader.read(16).unwrap();
            read.extend(more);
            finished.extend(done);
        }
        let numbers: Vec<u64> = read.iter().map(|r| r.number).collect();
        assert_eq!(numbers, (1..=records).collect::<Vec<_>>());
        assert!(read.iter().all(|r| r.payload[0] == (r.number - 1) as u8));
        // The second segment is reported too if the writer closed it for idleness (a slow run
        // of this test: more than `IDLE_ROLL` after the last append).
        let second = segment_path(dir.path(), records - 2);
        assert_eq!(finished[0], segment_path(dir.path(), 1));
        assert!(
            finished[1..].iter().all(|path| *path == second),
            "{finished:?}"
        );
    }

    #[test]
    fn a_quiet_inbox_closes_its_segment_and_reports_it_finished() {
        let dir = tempfile::tempdir().unwrap();
        let (inbox, mut reader) = Inbox::open(dir.path(), 0).unwrap();
        block_on(async {
            for n in 0..3u8 {
                inbox.append(vec![n; 10]).await.unwrap();
            }
        });
        let (records, finished) = reader.read(10).unwrap();
        assert_eq!(records.len(), 3);
        assert!(finished.is_empty());
        // Nothing more comes: after IDLE_ROLL the writer starts segment 4, and the reader,
        // woken without a record, hands over segment 1.
        let deadline = std::time::Instant::now() + IDLE_ROLL * 10;
        while !reader.wait(Duration::from_millis(50)) {
            assert!(
                std::time::Instant::now() < deadline,
                "segment 1 never closed"
            );
        }
        let (records, finished) = reader.read(10).unwrap();
        assert!(records.is_empty());
        assert_eq!(finished, vec![segment_path(dir.path(), 1)]);
        // An empty segment is not closed again, and records go on in the new one.
        block_on(inbox.append(b"later".to_vec())).unwrap();
        let (records, finished) = reader.read(10).unwrap();
        assert_eq!(numbered(records), vec![(4, b"later".to_vec())]);
        assert!(finished.is_empty());
        assert_eq!(segments(dir.path()).unwrap().len(), 2);
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_numbering_continues() {
        let dir = tempfile::tempdir().unwrap();
        let (inbox, _) = Inbox::open(dir.path(), 0).unwrap();
        block_on(inbox.append(b"whole".to_vec())).unwrap();
        drop(inbox);
        // A crash in the middle of a write: a header promising more than is there.
        let path = segment_path(dir.path(), 1);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, 5]).unwrap();
        drop(file);
        let (inbox, mut reader) = Inbox::open(dir.path(), 0).unwrap();
        assert_eq!(inbox.durable_through(), 1);
        block_on(inbox.append(b"next".to_vec())).unwrap();
        let (records, _) = reader.read(10).unwrap();
        assert_eq!(
            numbered(records),
            vec![(1, b"whole".to_vec()), (2, b"next".to_vec())]
        );
        assert!(list(&dir).is_empty(), "a torn tail is not quarantined");
    }

    #[test]
    fn consumed_segments_are_deleted_on_open() {
        let dir = tempfile::tempdir().unwrap();
        for first in [1u64, 4, 9] {
            let mut f = create_segment(dir.path(), first).unwrap();
            let mut buf = Vec::new();
            frame(&mut buf, b"x");
            f.write_all(&buf).unwrap();
        }
        let _ = Inbox::open(dir.path(), 5).unwrap();
        let left: Vec<u64> = segments(dir.path()).unwrap().iter().map(|s| s.0).collect();
        assert_eq!(left, vec![4, 9]);
    }

    /// The payload of record `n` in the damage tests: 40 bytes naming it.
    fn payload(n: u64) -> Vec<u8> {
        format!("record {n:03} ").repeat(4).into_bytes()
    }

    /// Writes segment `first` holding records `first..first + count`; returns each frame's
    /// offset, and the offset after the last.
    fn write_segment(dir: &Path, first: u64, count: u64) -> Vec<u64> {
        let mut buf = Vec::new();
        let mut offsets = Vec::new();
        for n in first..first + count {
            offsets.push(buf.len() as u64);
            frame(&mut buf, &payload(n));
        }
        offsets.push(buf.len() as u64);
        fs::write(segment_path(dir, first), buf).unwrap();
        offsets
    }

    /// Overwrites bytes of segment `first` at `offset`.
    fn damage(dir: &Path, first: u64, offset: u64, bytes: &[u8]) {
        let path = segment_path(dir, first);
        let mut data = fs::read(&path).unwrap();
        data[offset as usize..offset as usize + bytes.len()].copy_from_slice(bytes);
        fs::write(path, data).unwrap();
    }

    /// Reads until the reader has nothing more: the records' numbers and payloads, and the
    /// segments finished.
    fn read_everything(reader: &mut Reader) -> (Vec<(u64, Vec<u8>)>, Vec<PathBuf>) {
        let (mut read, mut finished) = (Vec::new(), Vec::new());
        loop {
            let (records, done) = reader.read(4).unwrap();
            if records.is_empty() && done.is_empty() {
                return (read, finished);
            }
            read.extend(numbered(records));
            finished.extend(done);
        }
    }

    /// The records `numbers`, as [`payload`] makes them.
    fn expected(numbers: impl IntoIterator<Item = u64>) -> Vec<(u64, Vec<u8>)> {
        numbers.into_iter().map(|n| (n, payload(n))).collect()
    }

    /// Damage in the middle of the newest segment, of each kind: the damaged bytes are kept
    /// byte for byte, every record after them is read under its own number, nothing is cut, and
    /// numbering goes on after the last record.
    #[test]
    fn damage_in_the_middle_of_the_newest_segment_is_quarantined_and_the_rest_read() {
        /// What is hit, where (from the frames' offsets), with what; the first record number
        /// the damage takes, and how many.
        struct Case {
            what: &'static str,
            at: fn(&[u64]) -> u64,
            bytes: &'static [u8],
            record: u64,
            records: u64,
        }
        let cases = [
            Case {
                what: "the payload",
                at: |o| o[4] + 20,
                bytes: &[0xaa; 16],
                record: 5,
                records: 1,
            },
            Case {
                what: "the length",
                at: |o| o[4],
                bytes: &[0xff, 0xff, 0xff, 0x7f],
                record: 5,
                records: 1,
            },
            Case {
                what: "all of it, zeroed",
                at: |o| o[4],
                bytes: &[0; 48],
                record: 5,
                records: 1,
            },
            Case {
                what: "the end of 4 and the header of 5",
                at: |o| o[4] - 4,
                bytes: &[0xee; 12],
                record: 4,
                records: 2,
            },
        ];
        for Case {
            what,
            at,
            bytes,
            record,
            records,
        } in cases
        {
            let dir = tempfile::tempdir().unwrap();
            let offsets = write_segment(dir.path(), 1, 10);
            let at = at(&offsets);
            damage(dir.path(), 1, at, bytes);
            let before = fs::read(segment_path(dir.path(), 1)).unwrap();

            let (inbox, mut reader) = Inbox::open(dir.path(), 0).unwrap();
            assert_eq!(inbox.durable_through(), 10, "{what}");
            let (read, _) = read_everything(&mut reader);
            let taken = record..record + records;
            assert_eq!(
                read,
                expected((1..=10).filter(|n| !taken.contains(n))),
                "{what}"
            );
            assert_eq!(reader.read_through(), 10, "{what}");
            assert_eq!(
                fs::read(segment_path(dir.path(), 1)).unwrap(),
                before,
                "{what}: cut"
            );

            let entries = list(&dir);
            assert_eq!(entries.len(), 1, "{what}: {entries:?}");
            let entry = &entries[0];
            let (from, to) = (
                offsets[record as usize - 1],
                offsets[(record + records) as usize - 1],
            );
            assert_eq!(
                (entry.record, entry.records, entry.offset),
                (record, records, from),
                "{what}"
            );
            assert_eq!(entry.kind, QuarantineKind::Damaged);
            assert_eq!(entry.segment, "00000000000000000001.log");
            assert_eq!(
                fs::read(&entry.kept).unwrap(),
                &before[from as usize..to as usize],
                "{what}"
            );

            block_on(inbox.append(b"later".to_vec())).unwrap();
            let (records_after, _) = reader.read(10).unwrap();
            assert_eq!(
                numbered(records_after),
                vec![(11, b"later".to_vec())],
                "{what}"
            );
            drop((inbox, reader));
            // Reopened after record 7 was consumed: the numbers have not moved, and the damage
            // is not kept twice.
            let (_inbox, mut reader) = Inbox::open(dir.path(), 7).unwrap();
            let (read, _) = read_everything(&mut reader);
            assert_eq!(read[..3], expected(8..=10)[..], "{what}");
            assert_eq!(list(&dir).len(), 1, "{what}");
        }
    }

    /// Damage in an older segment: the inbox opens, the damage is kept, and the records after it
    /// (in that segment and the next) are read. Where the damage hid where a record began, the
    /// next segment's name still gives each later record its number.
    #[test]
    fn damage_in_an_older_segment_is_quarantined_and_the_rest_read() {
        for (hidden_boundary, taken) in [(false, 3..4), (true, 3..5)] {
            let dir = tempfile::tempdir().unwrap();
            let offsets = write_segment(dir.path(), 1, 5);
            write_segment(dir.path(), 6, 3);
            damage(dir.path(), 1, offsets[2], &[0xc3; 8]);
            if hidden_boundary {
                damage(dir.path(), 1, offsets[3], &[0xc3; 8]);
            }
            let (inbox, mut reader) = Inbox::open(dir.path(), 0).unwrap();
            assert_eq!(inbox.durable_through(), 8);
            let (read, finished) = read_everything(&mut reader);
            assert_eq!(read, expected((1..=8).filter(|n| !taken.contains(n))));
            assert_eq!(finished[0], segment_path(dir.path(), 1));
            let entries = list(&dir);
            assert_eq!(entries.len(), 1, "{entries:?}");
            assert_eq!(
                (entries[0].record, entries[0].records),
                (3, taken.end - taken.start)
            );
        }
    }

    /// The end of an older segment damaged: kept, not cut, and the next segment read.
    #[test]
    fn a_damaged_end_of_an_older_segment_is_quarantined_not_cut() {
        let dir = tempfile::tempdir().unwrap();
        let offsets = write_segment(dir.path(), 1, 5);
        write_segment(dir.path(), 6, 2);
        damage(dir.path(), 1, offsets[4] + 10, &[0; 30]);
        let (_inbox, mut reader) = Inbox::open(dir.path(), 0).unwrap();
        let (read, _) = read_everything(&mut reader);
        assert_eq!(read, expected([1, 2, 3, 4, 6, 7]));
        let entries = list(&dir);
        assert_eq!((entries[0].record, entries[0].records), (5, 1));
    }

    /// Zeroed bytes after the last record of the newest segment (a crash in the middle of a
    /// write): cut off like any torn tail, not quarantined.
    #[test]
    fn a_zeroed_tail_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let offsets = write_segment(dir.path(), 1, 3);
        let path = segment_path(dir.path(), 1);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&[0; 4096]).unwrap();
        drop(file);
        let (inbox, mut reader) = Inbox::open(dir.path(), 0).unwrap();
        assert_eq!(inbox.durable_through(), 3);
        assert_eq!(fs::metadata(&path).unwrap().len(), offsets[3]);
        assert_eq!(read_everything(&mut reader).0, expected(1..=3));
        assert!(list(&dir).is_empty());
    }

    /// Damage among records already consumed: left (their runs are stored), and reading starts
    /// at the right record; damage that holds an unconsumed record is kept.
    #[test]
    fn damage_before_the_stored_position_is_left_and_reading_starts_right() {
        let dir = tempfile::tempdir().unwrap();
        let offsets = write_segment(dir.path(), 1, 10);
        damage(dir.path(), 1, offsets[2] + 12, &[0x11; 8]);
        let (_inbox, mut reader) = Inbox::open(dir.path(), 5).unwrap();
        assert_eq!(read_everything(&mut reader).0, expected(6..=10));
        assert!(list(&dir).is_empty());

        // Records 4 and 5 in one span, with 4 consumed: the span holds 5, so it is kept.
        let dir = tempfile::tempdir().unwrap();
        let offsets = write_segment(dir.path(), 1, 10);
        damage(dir.path(), 1, offsets[4] - 4, &[0xee; 12]);
        let (_inbox, mut reader) = Inbox::open(dir.path(), 4).unwrap();
        assert_eq!(read_everything(&mut reader).0, expected(6..=10));
        assert_eq!(reader.read_through(), 10);
        let entries = list(&dir);
        assert_eq!((entries[0].record, entries[0].records), (4, 2));
    }

    #[test]
    fn an_empty_record_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (inbox, _) = Inbox::open(dir.path(), 0).unwrap();
        let refused = block_on(inbox.append(Vec::new())).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::InvalidInput);
    }
}
