//! Ingesting a quarantined inbox record again, once its bytes decode (repaired by an operator,
//! or read by a version that understands them).
//!
//! The kept bytes are decoded as the run record they held, every part of it (event, run, items,
//! dedupe key), and the run goes through [`Store::ingest`] like any new one. Invariants:
//! - an entry is removed only after the ingest that holds its run returned (the run is durable);
//! - re-ingests run one at a time, and a run the store holds already is not ingested again, so one
//!   entry never makes two runs (nor a run that was promoted before its bytes were damaged);
//! - bytes that do not decode leave the entry as it was, with an error that says where they are.

use super::new_runs::EncodedRun;
use super::SledStore;
use crate::store::inbox::recover_payload;
use crate::store::quarantine::Quarantine;
use crate::store::{Ingested, NewRun, Reingested, Result, Store, StoreError};

/// Ingests the quarantined record `id` again (see the module docs).
pub(super) async fn reingest(
    store: &SledStore,
    quarantine: &Quarantine,
    id: &str,
) -> Result<Reingested> {
    let _one_at_a_time = quarantine.reingesting().await;
    let (entry, bytes) = quarantine
        .get(id)
        .map_err(|e| StoreError::unavailable(format!("cannot read quarantined record {id}"), e))?
        .ok_or_else(|| StoreError::NotQuarantined(id.to_owned()))?;
    let new = decode(&bytes).map_err(|detail| StoreError::StillUnreadable {
        id: id.to_owned(),
        detail: format!("{detail} (repair {} and try again)", entry.kept.display()),
    })?;
    let (run_id, event_id) = (new.run.id, new.event.id);
    let outcome = match store.run(run_id).await? {
        Some(stored) => Ingested::Duplicate {
            event_id: stored.event_id,
            run_id,
        },
        None => store.ingest(new).await?,
    };
    quarantine.resolve(id).map_err(|e| {
        StoreError::unavailable(
            format!("run {run_id} of quarantined record {id} is stored, but the entry cannot be removed"),
            e,
        )
    })?;
    tracing::info!(id, %run_id, ?outcome, "a quarantined inbox record was ingested again");
    Ok(Reingested {
        run_id,
        event_id,
        outcome,
    })
}

/// The new run that kept bytes hold, or why they do not decode.
fn decode(kept: &[u8]) -> std::result::Result<NewRun, String> {
    let (payload, framed) = recover_payload(kept);
    let decoded = EncodedRun::from_record(payload)
        .and_then(|run| run.decode_new_run().map_err(|e| e.to_string()));
    decoded.map_err(|e| match framed {
        true => format!("the record does not decode: {e}"),
        false => format!(
            "the bytes are no whole frame (its length or checksum does not match), nor a bare run record ({e})"
        ),
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::ids::RunId;
    use crate::store::inbox::Inbox;
    use crate::store::sled::tests::sample_run;
    use crate::store::sled::DEFAULT_CACHE_BYTES;
    use crate::store::QuarantineKind;

    fn record(new: &NewRun) -> Vec<u8> {
        EncodedRun::new(new).unwrap().to_record()
    }

    /// Appends records to the inbox in `dir` as a store would have before it stopped.
    async fn appended(dir: &Path, records: Vec<Vec<u8>>) {
        let (inbox, _reader) = Inbox::open(&dir.join("inbox"), 0).unwrap();
        for record in records {
            inbox.append(record).await.unwrap();
        }
    }

    /// Waits (up to 10 s) until the store lists `n` quarantined records.
    async fn quarantined(store: &SledStore, n: usize) -> Vec<crate::store::Quarantined> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let list = store.quarantined().await.unwrap();
            if list.len() == n {
                return list;
            }
            assert!(Instant::now() < deadline, "quarantine: {list:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn wait_for_run(store: &SledStore, run_id: RunId) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.run(run_id).await.unwrap().is_none() {
            assert!(Instant::now() < deadline, "run {run_id} never readable");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A record whose checksum passes but whose payload does not decode is set aside, not
    /// skipped; once its bytes are repaired it is ingested again, and its entry goes.
    #[tokio::test]
    async fn an_undecodable_record_is_quarantined_and_ingested_again_once_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let (before, broken, after) = (sample_run(1), sample_run(2), sample_run(3));
        let good = record(&broken);
        let mut bad = good.clone();
        bad[0] = 0x7f; // neither tag, nor JSON
        appended(dir.path(), vec![record(&before), bad, record(&after)]).await;

        let store = SledStore::open(dir.path(), DEFAULT_CACHE_BYTES, false).unwrap();
        wait_for_run(&store, after.run.id).await;
        wait_for_run(&store, before.run.id).await;
        let list = quarantined(&store, 1).await;
        let entry = &list[0];
        assert_eq!(entry.kind, QuarantineKind::Undecodable);
        assert_eq!((entry.record, entry.records), (2, 1));
        assert_eq!(store.stats().await.unwrap().quarantined, 1);
        assert!(store.run(broken.run.id).await.unwrap().is_none());

        match store.reingest_quarantined(&entry.id).await {
            Err(StoreError::StillUnreadable { id, detail }) => {
                assert_eq!(id, entry.id);
                assert!(
                    detail.contains(&entry.kept.display().to_string()),
                    "{detail}"
                );
            }
            other => panic!("expected still unreadable, got {other:?}"),
        }
        assert_eq!(
            store.quarantined().await.unwrap().len(),
            1,
            "the entry stays"
        );

        // Repaired: the bare record in place of the kept frame.
        std::fs::write(&entry.kept, &good).unwrap();
        let done = store.reingest_quarantined(&entry.id).await.unwrap();
        assert_eq!(
            done,
            Reingested {
                run_id: broken.run.id,
                event_id: broken.event.id,
                outcome: Ingested::Created
            }
        );
        wait_for_run(&store, broken.run.id).await;
        assert!(store.quarantined().await.unwrap().is_empty());
        assert_eq!(store.stats().await.unwrap().quarantined, 0);
        assert!(matches!(
            store.reingest_quarantined(&entry.id).await,
            Err(StoreError::NotQuarantined(_))
        ));
    }

    /// A quarantined record whose run the store holds already makes no second run.
    #[tokio::test]
    async fn a_record_whose_run_is_stored_is_not_ingested_twice() {
        let dir = tempfile::tempdir().unwrap();
        let new = sample_run(5);
        let mut bad = record(&new);
        bad[0] = 0x7f;
        appended(dir.path(), vec![bad]).await;
        let store = SledStore::open(dir.path(), DEFAULT_CACHE_BYTES, false).unwrap();
        let entry = quarantined(&store, 1).await.remove(0);
        store.ingest(new.clone()).await.unwrap();
        wait_for_run(&store, new.run.id).await;
        std::fs::write(&entry.kept, record(&new)).unwrap();
        let done = store.reingest_quarantined(&entry.id).await.unwrap();
        assert_eq!(
            done.outcome,
            Ingested::Duplicate {
                event_id: new.event.id,
                run_id: new.run.id
            }
        );
        assert!(store.quarantined().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_temporary_store_has_an_empty_quarantine() {
        let store = SledStore::temporary().unwrap();
        assert!(store.quarantined().await.unwrap().is_empty());
        assert!(matches!(
            store.reingest_quarantined("1-0").await,
            Err(StoreError::NotQuarantined(_))
        ));
    }
}
