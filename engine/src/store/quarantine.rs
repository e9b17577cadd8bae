//! The quarantine: inbox records the store could not read, set aside byte for byte instead of
//! being cut off or skipped, so that nothing acknowledged is dropped (issue 22).
//!
//! Two kinds of record end up here: a **damaged** one (its frame's length or checksum does not
//! match: bytes on disk changed after they were acknowledged) and an **undecodable** one (its
//! frame is whole but its payload is not a run this version can read). The inbox reads on after
//! either: every whole record behind it is read and runs.
//!
//! # Files
//! An entry is two files in `DIR` (the inbox's `quarantine/` folder):
//! - `ID.bin`: the bytes exactly as they were in the inbox segment (the whole frame, header
//!   included);
//! - `ID.json`: what is known about them ([`Quarantined`]).
//!
//! The id is `FIRST-OFFSET`: the segment's first record number and the bytes' offset in it. The
//! same damage found again (after a restart, or by a second reader of the same segment) names the
//! same entry, so keeping it again changes nothing.
//!
//! # Invariants
//! - An entry exists once its `.json` is on disk. Both files are written to a temporary name,
//!   synced, renamed and the directory synced, `.bin` first: a listed entry always has its bytes.
//! - An entry that was ingested again leaves `ID.done` behind instead of its other files, so its
//!   bytes, read again from a segment not deleted yet, are not quarantined a second time. A marker
//!   whose segment is gone can never be needed again: it is removed at open.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use crate::model::Timestamp;

/// Why a record is in the quarantine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuarantineKind {
    /// The frame's length or checksum does not match: the bytes changed on disk.
    Damaged,
    /// The frame is whole, but its payload does not decode as a run.
    Undecodable,
}

/// One quarantined inbox record (or damaged span of one): where it was, why it is here, and where
/// its bytes are kept.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Quarantined {
    /// The entry's id, usable in a URL: `FIRST-OFFSET` (the segment's first record number, the
    /// offset in it).
    pub id: String,
    /// The inbox segment the bytes were in (a file name in `DATA/inbox/`).
    pub segment: String,
    /// Where in the segment the bytes started.
    pub offset: u64,
    /// The number of the (first) record the bytes held.
    pub record: u64,
    /// How many record numbers the bytes took: 1, unless damage hid where further records began.
    pub records: u64,
    /// Damaged or undecodable.
    pub kind: QuarantineKind,
    /// What is wrong, in words.
    pub reason: String,
    /// The size of the kept bytes.
    pub bytes: u64,
    /// When the entry was made.
    pub quarantined_at: Timestamp,
    /// The file that holds the bytes (`DATA/inbox/quarantine/ID.bin`): repair it there, then
    /// ingest it again.
    #[serde(default)]
    pub kept: PathBuf,
}

/// What a reader found to set aside.
#[derive(Debug)]
pub(crate) struct Found<'a> {
    /// The segment's first record number.
    pub(crate) segment: u64,
    /// The bytes' offset in the segment.
    pub(crate) offset: u64,
    /// The number of the (first) record the bytes held, and how many numbers they take.
    pub(crate) record: u64,
    pub(crate) records: u64,
    pub(crate) kind: QuarantineKind,
    pub(crate) reason: String,
    /// The bytes, exactly as in the segment.
    pub(crate) bytes: &'a [u8],
}

/// The quarantine folder of an inbox (see the module docs).
#[derive(Debug)]
pub(crate) struct Quarantine {
    dir: PathBuf,
    /// How many entries the folder holds.
    held: AtomicU64,
    /// Held while files are written or removed, so that keeping and resolving never interleave.
    files: Mutex<()>,
    /// Held while an entry is ingested again: one at a time, so one entry never makes two runs.
    reingesting: tokio::sync::Mutex<()>,
}

/// The id of the entry for bytes at `offset` of the segment starting with record `segment`.
pub(crate) fn entry_id(segment: u64, offset: u64) -> String {
    format!("{segment}-{offset}")
}

/// The segment and offset an id names, if it is one (ids come from URLs: nothing else may
/// name a file).
fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (segment, offset) = id.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(segment) || !digits(offset) {
        return None;
    }
    let parsed = (segment.parse().ok()?, offset.parse().ok()?);
    (entry_id(parsed.0, parsed.1) == id).then_some(parsed)
}

impl Quarantine {
    /// Opens (or creates) the quarantine in `dir`. `segments` are the first record numbers of the
    /// inbox segments that still exist: markers of entries from other segments are removed.
    pub(crate) fn open(dir: &Path, segments: &[u64]) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let mut held = 0;
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.ends_with(".tmp") {
                fs::remove_file(&path)?;
            } else if let Some(id) = name.strip_suffix(".json") {
                held += u64::from(parse_id(id).is_some());
            } else if let Some((segment, _)) = name.strip_suffix(".done").and_then(parse_id) {
                if !segments.contains(&segment) {
                    fs::remove_file(&path)?;
                }
            }
        }
        Ok(Self {
            dir: dir.to_owned(),
            held: AtomicU64::new(held),
            files: Mutex::default(),
            reingesting: tokio::sync::Mutex::default(),
        })
    }

    /// How many entries the quarantine holds.
    pub(crate) fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// Keeps what a reader found, durably. Returns the new entry, or `None` if it is kept already
    /// or was ingested again since (found again in a segment not deleted yet).
    pub(crate) fn keep(&self, found: &Found<'_>) -> io::Result<Option<Quarantined>> {
        let id = entry_id(found.segment, found.offset);
        let _files = self.files.lock().unwrap_or_else(PoisonError::into_inner);
        if self.path(&id, "json").exists() || self.path(&id, "done").exists() {
            return Ok(None);
        }
        let entry = Quarantined {
            id: id.clone(),
            segment: format!("{:020}.log", found.segment),
            offset: found.offset,
            record: found.record,
            records: found.records,
            kind: found.kind,
            reason: found.reason.clone(),
            bytes: found.bytes.len() as u64,
            quarantined_at: Timestamp::now(),
            kept: self.path(&id, "bin"),
        };
        let json = serde_json::to_vec_pretty(&entry).map_err(io::Error::other)?;
        self.write(&id, "bin", found.bytes)?;
        self.write(&id, "json", &json)?;
        self.held.fetch_add(1, Ordering::Relaxed);
        Ok(Some(entry))
    }

    /// Every entry, in inbox order.
    pub(crate) fn list(&self) -> io::Result<Vec<Quarantined>> {
        let mut entries = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let id = path
                .file_name()
                .and_then(|n| n.to_str()?.strip_suffix(".json"));
            if let Some(id) = id.filter(|id| parse_id(id).is_some()) {
                if let Some(entry) = self.entry(id)? {
                    entries.push(entry);
                }
            }
        }
        entries.sort_by_key(|e| parse_id(&e.id));
        Ok(entries)
    }

    /// One entry with its kept bytes; `None` if there is no such entry.
    pub(crate) fn get(&self, id: &str) -> io::Result<Option<(Quarantined, Vec<u8>)>> {
        if parse_id(id).is_none() {
            return Ok(None);
        }
        let Some(entry) = self.entry(id)? else {
            return Ok(None);
        };
        let bytes = fs::read(&entry.kept)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", entry.kept.display())))?;
        Ok(Some((entry, bytes)))
    }

    /// Removes an entry that was ingested again, leaving its marker (see the module docs).
    pub(crate) fn resolve(&self, id: &str) -> io::Result<()> {
        if parse_id(id).is_none() {
            return Ok(());
        }
        let _files = self.files.lock().unwrap_or_else(PoisonError::into_inner);
        if !self.path(id, "json").exists() {
            return Ok(());
        }
        self.write(id, "done", b"")?;
        fs::remove_file(self.path(id, "json"))?;
        fs::remove_file(self.path(id, "bin"))?;
        File::open(&self.dir)?.sync_all()?;
        self.held.fetch_sub(1, Ordering::Relaxed);
        Ok(())
    }

    /// Waits for any other re-ingest to finish; re-ingest while holding what this returns.
    pub(crate) async fn reingesting(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.reingesting.lock().await
    }

    /// The entry's metadata, with the path of its bytes as they are kept now.
    fn entry(&self, id: &str) -> io::Result<Option<Quarantined>> {
        let path = self.path(id, "json");
        let json = match fs::read(&path) {
            Ok(json) => json,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut entry: Quarantined = serde_json::from_slice(&json).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        })?;
        entry.kept = self.path(id, "bin");
        Ok(Some(entry))
    }

    fn path(&self, id: &str, extension: &str) -> PathBuf {
        self.dir.join(format!("{id}.{extension}"))
    }

    /// Writes a file atomically and durably: a temporary file, synced, renamed, then the
    /// directory synced.
    fn write(&self, id: &str, extension: &str, bytes: &[u8]) -> io::Result<()> {
        let temporary = self.dir.join(format!("{id}.{extension}.tmp"));
        let mut file = File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temporary, self.path(id, extension))?;
        File::open(&self.dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(bytes: &[u8]) -> Found<'_> {
        Found {
            segment: 101,
            offset: 4242,
            record: 150,
            records: 1,
            kind: QuarantineKind::Damaged,
            reason: "the checksum does not match".into(),
            bytes,
        }
    }

    #[test]
    fn an_entry_is_kept_byte_for_byte_once_and_listed() {
        let dir = tempfile::tempdir().unwrap();
        let quarantine = Quarantine::open(dir.path(), &[101]).unwrap();
        let bytes = [7u8, 0, 0, 0, 1, 2, 3, 4, 9, 9, 9];
        let entry = quarantine
            .keep(&found(&bytes))
            .unwrap()
            .expect("a new entry");
        assert_eq!(entry.id, "101-4242");
        assert_eq!(entry.segment, "00000000000000000101.log");
        assert_eq!(entry.bytes, bytes.len() as u64);
        assert_eq!(fs::read(&entry.kept).unwrap(), bytes);
        assert_eq!(quarantine.held(), 1);
        // Found again (a second reader, or after a restart): nothing changes.
        assert_eq!(quarantine.keep(&found(&bytes)).unwrap(), None);
        assert_eq!(quarantine.list().unwrap(), vec![entry.clone()]);
        let reopened = Quarantine::open(dir.path(), &[101]).unwrap();
        assert_eq!(reopened.held(), 1);
        assert_eq!(
            reopened.get("101-4242").unwrap(),
            Some((entry, bytes.to_vec()))
        );
    }

    #[test]
    fn a_resolved_entry_is_not_kept_again_while_its_segment_exists() {
        let dir = tempfile::tempdir().unwrap();
        let quarantine = Quarantine::open(dir.path(), &[101]).unwrap();
        quarantine.keep(&found(b"bytes")).unwrap().unwrap();
        quarantine.resolve("101-4242").unwrap();
        assert_eq!(quarantine.held(), 0);
        assert!(quarantine.list().unwrap().is_empty());
        assert_eq!(quarantine.get("101-4242").unwrap(), None);
        assert_eq!(quarantine.keep(&found(b"bytes")).unwrap(), None);
        // Once the segment is gone, the marker goes too.
        let _ = Quarantine::open(dir.path(), &[101]).unwrap();
        assert!(dir.path().join("101-4242.done").exists());
        let _ = Quarantine::open(dir.path(), &[300]).unwrap();
        assert!(!dir.path().join("101-4242.done").exists());
    }

    #[test]
    fn only_well_formed_ids_name_entries() {
        let dir = tempfile::tempdir().unwrap();
        let quarantine = Quarantine::open(dir.path(), &[]).unwrap();
        for id in ["../x", "1-", "-1", "01-2", "1-2-3", "a-b", "1-2/../3"] {
            assert_eq!(quarantine.get(id).unwrap(), None, "{id}");
        }
        assert_eq!(parse_id("17-0"), Some((17, 0)));
    }
}
