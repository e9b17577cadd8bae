//! Where a claim starts scanning a flow's queue: past the leased items at its front.
//!
//! Leased items stay in the queue tree until the update that finishes them removes them, and
//! they are the oldest due, so a claim that scanned from the start of a flow's keys would walk
//! past every item the workers hold (dozens) to find one to take. A claim remembers instead the
//! first key it found not leased; the next claim starts there. A hint is dropped when an item is
//! queued before it or a lease ends, and is used for [`MAX_AGE`] at most, so an item queued
//! before a hint while a claim was scanning waits that long at worst.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use ::sled::IVec;

/// How long a hint is used before a claim scans a flow from its start again.
const MAX_AGE: Duration = Duration::from_millis(100);

/// Per flow (its key prefix: flow id and `0x00`), a queue key before which every item was leased
/// when a claim last scanned, and when it was found.
#[derive(Debug, Default)]
pub(super) struct ScanHints(Mutex<HashMap<Vec<u8>, (IVec, Instant)>>);

impl ScanHints {
    fn hints(&self) -> MutexGuard<'_, HashMap<Vec<u8>, (IVec, Instant)>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Where a claim may start scanning the flow with this key prefix (`None`: at its start).
    pub(super) fn start(&self, prefix: &[u8]) -> Option<IVec> {
        let hints = self.hints();
        let (key, found) = hints.get(prefix)?;
        (found.elapsed() < MAX_AGE).then(|| key.clone())
    }

    /// A claim found every item of the flow before `first_free` leased.
    pub(super) fn found(&self, prefix: &[u8], first_free: IVec) {
        self.hints()
            .insert(prefix.to_vec(), (first_free, Instant::now()));
    }

    /// Items were queued (not leased) under these keys: a hint past one of them is dropped.
    pub(super) fn queued<'k>(&self, keys: impl IntoIterator<Item = &'k [u8]>) {
        let mut hints = self.hints();
        if hints.is_empty() {
            return;
        }
        for key in keys {
            let Some(end) = key.iter().position(|b| *b == 0) else {
                continue;
            };
            let prefix = &key[..=end];
            if hints.get(prefix).is_some_and(|(hint, _)| key < &hint[..]) {
                hints.remove(prefix);
            }
        }
    }

    /// Leases ended: items before any hint may be free.
    pub(super) fn clear(&self) {
        self.hints().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hint_holds_until_an_item_is_queued_before_it() {
        let hints = ScanHints::default();
        assert_eq!(hints.start(b"crm\0"), None);
        hints.found(b"crm\0", IVec::from(b"crm\0\x05"));
        assert_eq!(hints.start(b"crm\0"), Some(IVec::from(b"crm\0\x05")));
        assert_eq!(hints.start(b"billing\0"), None, "per flow");

        hints.queued([&b"crm\0\x07"[..], &b"billing\0\x01"[..]]);
        assert!(hints.start(b"crm\0").is_some(), "queued after the hint");
        hints.queued([&b"crm\0\x03"[..]]);
        assert_eq!(hints.start(b"crm\0"), None, "queued before the hint");

        hints.found(b"crm\0", IVec::from(b"crm\0\x05"));
        hints.clear();
        assert_eq!(hints.start(b"crm\0"), None, "leases ended");
    }

    #[test]
    fn a_hint_ages_out() {
        let hints = ScanHints::default();
        hints.found(b"crm\0", IVec::from(b"crm\0\x05"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while hints.start(b"crm\0").is_some() {
            assert!(Instant::now() < deadline, "the hint never aged out");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
