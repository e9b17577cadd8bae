//! The inbox: an append-only, fsynced log of accepted events in front of the sled trees.
//!
//! Acknowledging a webhook must wait for an fsync, and sled's own flush is slow and blocks its
//! transactions (see `sled.rs`). So `SledStore::ingest` appends the new run to this log instead and
//! returns once the log is synced; a promoter thread (in `sled.rs`) later moves records into the
//! trees in order. Records are numbered from 1 in append order; the promoter keeps the number of
//! the last record it moved in the same sled transaction as the records, so after a crash it
//! resumes exactly where the trees stop, and no record is moved twice or lost.
//!
//! # Files
//! `DIR/NNNNNNNNNNNNNNNNNNNN.log` (the number of the segment's first record, zero-padded), each up
//! to [`SEGMENT_BYTES`] (a larger batch may overrun it). A record is framed as `length: u32 LE`,
//! `crc32(payload): u32 LE`, `payload`. On open, a torn or corrupt tail of the newest segment (a
//! write the crash interrupted, never acknowledged) is cut off. A segment is also closed when no
//! append came for [`IDLE_ROLL`], so that a quiet inbox soon holds nothing already promoted.
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

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

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

/// The frame header: length and checksum.
const HEADER: usize = 8;

/// A record read back: its number and payload.
pub type Record = (u64, Vec<u8>);

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
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox")
            .field("durable_through", &self.durable_through())
            .finish()
    }
}

/// The reading end: yields records after a given number, in order, never beyond what is durable.
pub struct Reader {
    dir: PathBuf,
    durable: Arc<Durable>,
    /// The number of the next record to read.
    next: u64,
    /// The open segment: its first record number, the file, and the offset of record `next`.
    /// Reads are positioned (`pread`), never buffered ahead: bytes past the last durable record
    /// may still be cut off and rewritten by the writer after a failed write.
    segment: Option<(u64, File, u64)>,
}

impl Inbox {
    /// Opens (or creates) the inbox in `dir`. Segments holding only records up to `consumed` are
    /// deleted; the reader starts after `consumed`.
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
        let (last, file) = match segments.last() {
            Some((first, path)) => {
                let (count, valid_len) = scan(path)?;
                let file = OpenOptions::new().write(true).open(path)?;
                if file.metadata()?.len() != valid_len {
                    tracing::warn!(segment = %path.display(), "cutting off an unfinished write at the end of the inbox");
                    file.set_len(valid_len)?;
                    file.sync_all()?;
                }
                let last = first + count - 1;
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
            next: consumed + 1,
            segment: None,
        };
        Ok((
            Self {
                appends: Mutex::new(tx),
                durable,
            },
            reader,
        ))
    }

    /// Appends a record; returns once it is on disk (fsync).
    pub async fn append(&self, payload: Vec<u8>) -> io::Result<()> {
        self.send(payload)?.await
    }

    /// Hands a record to the writer at once (it will be written even if the returned future is
    /// dropped); the future answers once it is on disk (fsync).
    pub fn send(
        &self,
        payload: Vec<u8>,
    ) -> io::Result<impl std::future::Future<Output = io::Result<()>> + Send + 'static> {
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
}

impl Reader {
    /// Another reader at this one's position, reading on independently.
    pub fn fork(&self) -> Reader {
        Reader {
            dir: self.dir.clone(),
            durable: self.durable.clone(),
            next: self.next,
            segment: None,
        }
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
        matches!(self.segment, Some((first, ..)) if first < self.next)
            && segment_path(&self.dir, self.next).exists()
    }

    /// Reads up to `max` durable records, with their numbers. Also returns the segment files that
    /// the read finished (every record in them has now been read), for the caller to delete once
    /// what it did with the records is durable.
    pub fn read(&mut self, max: usize) -> io::Result<(Vec<Record>, Vec<PathBuf>)> {
        let through = *self
            .durable
            .through
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (mut records, mut finished) = (Vec::new(), Vec::new());
        while records.len() < max && self.next <= through {
            if self.segment.is_none() {
                self.segment = Some(self.open_segment()?);
            }
            let (first, file, offset) = self.segment.as_mut().expect("opened above");
            match read_frame(&mut Positioned(file, offset))? {
                Some(payload) => {
                    records.push((self.next, payload));
                    self.next += 1;
                }
                None => {
                    // The end of a segment: the next record must start the next one.
                    let path = segment_path(&self.dir, *first);
                    if !segment_path(&self.dir, self.next).exists() {
                        return Err(io::Error::other(format!(
                            "inbox record {} in {} cannot be read (the file is damaged)",
                            self.next,
                            path.display()
                        )));
                    }
                    finished.push(path);
                    self.segment = None;
                }
            }
        }
        if records.len() < max && self.read_segment_closed() {
            let (first, ..) = self.segment.take().expect("checked above");
            finished.push(segment_path(&self.dir, first));
        }
        Ok((records, finished))
    }

    /// Opens the segment holding record `next`, with the offset of that record.
    fn open_segment(&self) -> io::Result<(u64, File, u64)> {
        let (first, path) = segments(&self.dir)?
            .into_iter()
            .rev()
            .find(|(first, _)| *first <= self.next)
            .ok_or_else(|| {
                io::Error::other(format!("inbox record {} has no segment", self.next))
            })?;
        let file = File::open(&path)?;
        let mut offset = 0;
        for _ in first..self.next {
            // Skip a record by its header alone.
            let mut header = [0; HEADER];
            if !read_all(&mut Positioned(&file, &mut offset), &mut header)? {
                return Err(io::Error::other(format!(
                    "{} ends before record {}",
                    path.display(),
                    self.next
                )));
            }
            offset += u64::from(u32::from_le_bytes(header[..4].try_into().expect("4 bytes")));
        }
        Ok((first, file, offset))
    }
}

/// Reads a file at an offset with `pread`, advancing the offset.
struct Positioned<'a>(&'a File, &'a mut u64);

impl Read for Positioned<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = std::os::unix::fs::FileExt::read_at(self.0, buf, *self.1)?;
        *self.1 += n as u64;
        Ok(n)
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
            self.file.set_len(len)?;
            return Err(e);
        }
        Ok(())
    }
}

/// Appends one framed record to `buf`.
fn frame(buf: &mut Vec<u8>, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("records are far smaller than 4 GiB");
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    buf.extend_from_slice(payload);
}

/// Reads one framed record; `None` at the end of the data (or at a torn or corrupt frame, which
/// only the end of the newest segment can hold: it is cut off on open).
fn read_frame(reader: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut header = [0; HEADER];
    if !read_all(reader, &mut header)? {
        return Ok(None);
    }
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    let mut payload = vec![0; len];
    if !read_all(reader, &mut payload)? || crc32fast::hash(&payload) != crc {
        return Ok(None);
    }
    Ok(Some(payload))
}

/// Fills `buf`; false if the data ends first.
fn read_all(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => return Ok(false),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// How many whole records a segment holds and the length of the bytes they take.
fn scan(path: &Path) -> io::Result<(u64, u64)> {
    let mut reader = BufReader::with_capacity(1 << 20, File::open(path)?);
    let (mut count, mut len) = (0, 0);
    while let Some(payload) = read_frame(&mut reader)? {
        count += 1;
        len += (HEADER + payload.len()) as u64;
    }
    Ok((count, len))
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
            records,
            vec![(1, vec![0; 10]), (2, vec![1; 10]), (3, vec![2; 10])]
        );
        assert!(finished.is_empty());
        drop((inbox, reader));
        // Reopened after record 2 was consumed: 3, 4 and 5 come back, and new ones follow.
        let (inbox, mut reader) = Inbox::open(dir.path(), 2).unwrap();
        block_on(inbox.append(vec![9; 3])).unwrap();
        let numbers: Vec<u64> = reader.read(10).unwrap().0.iter().map(|r| r.0).collect();
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
        let numbers: Vec<u64> = read.iter().map(|r| r.0).collect();
        assert_eq!(numbers, (1..=records).collect::<Vec<_>>());
        assert!(read.iter().all(|(n, p)| p[0] == (n - 1) as u8));
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
        assert_eq!(
            reader.read(10).unwrap(),
            (vec![(4, b"later".to_vec())], vec![])
        );
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
        assert_eq!(records, vec![(1, b"whole".to_vec()), (2, b"next".to_vec())]);
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
}
