//! The store conformance suite run against PostgreSQL: each check gets a fresh database in the
//! test binary's throwaway cluster (`hookflow-testpg`), so checks run in parallel without
//! sharing rows.
use std::sync::Arc;

use crate::store::conformance::*;
use crate::store::postgres::{PgOptions, PgStore};
use crate::store::Store;

/// A PostgreSQL store on a database of its own.
struct Postgres;

impl Backend for Postgres {
    /// The database's URL.
    type Place = String;

    fn place() -> Self::Place {
        hookflow_testpg::shared()
            .fresh_database()
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn open(place: &Self::Place) -> Arc<dyn Store> {
        let options = PgOptions::new(place.clone());
        let node = node();
        let open = PgStore::open(&options, &node);
        let store =
            tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(open))
                .unwrap_or_else(|e| panic!("open the PostgreSQL store: {e}"));
        Arc::new(store)
    }
}

conformance_suite!(Postgres);

/// Runs `sql` on the database at `url` with `psql`; answers what it printed (unaligned, trimmed).
fn psql(url: &str, sql: &str) -> String {
    let out = hookflow_testpg::shared()
        .psql(url)
        .args(["-Atc", sql])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A queue item this version cannot read is parked, listed in the quarantine and never claimed;
/// once its row reads again (repaired, or read by a newer version) reingesting it puts it back in
/// the queue. The other items go on meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_queue_item_is_parked_listed_and_put_back_once_readable() {
    let url = <Postgres as Backend>::place();
    let store = <Postgres as Backend>::open(&url);
    let f = flow("orders");
    let (damaged, fine) = (new_run(&f, run_id(1), at(1)), new_run(&f, run_id(2), at(2)));
    ingest_all(&store, [damaged.clone(), fine.clone()]).await;
    let item = damaged.items[0].id.to_string();
    // What an older version would see of a record written by a newer one.
    psql(
        &url,
        &format!("UPDATE hookflow.queue SET data = '{{\"id\": 7}}' WHERE id = '{item}'"),
    );

    let claimed = claim_items(&store, at(1_000), 10, at(60_000), &NO_LIMITS)
        .await
        .unwrap();
    assert_eq!(
        claimed, fine.items,
        "the readable item is claimed; the other is not"
    );
    let parked = store.quarantined().await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].id, item);
    assert_eq!(store.stats().await.unwrap().quarantined, 1);
    store.requeue_expired(FAR_FUTURE).await.unwrap();
    assert_eq!(
        claim_items(&store, FAR_FUTURE, 10, FAR_FUTURE, &NO_LIMITS)
            .await
            .unwrap(),
        fine.items,
        "expired leases are taken over, but a parked item never"
    );
    assert!(matches!(
        store.reingest_quarantined(&item).await,
        Err(crate::store::StoreError::StillUnreadable { .. })
    ));

    // Repaired: it runs again.
    let repaired = serde_json::to_string(&damaged.items[0]).unwrap();
    psql(
        &url,
        &format!("UPDATE hookflow.queue SET data = '{repaired}' WHERE id = '{item}'"),
    );
    let back = store.reingest_quarantined(&item).await.unwrap();
    assert_eq!(back.run_id, damaged.run.id);
    assert!(store.quarantined().await.unwrap().is_empty());
    let claimed = claim_items(&store, FAR_FUTURE, 10, FAR_FUTURE, &NO_LIMITS)
        .await
        .unwrap();
    assert_eq!(claimed, damaged.items);
}

/// Once a thousand queue items were claimed and finished, the node vacuums the queue table by
/// itself (counted in the store's stats and in PostgreSQL's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_churned_queue_is_vacuumed_by_the_node() {
    let url = <Postgres as Backend>::place();
    let store = <Postgres as Backend>::open(&url);
    let f = flow("orders");
    let runs: Vec<_> = (0..1_100)
        .map(|_| new_run(&f, crate::ids::RunId::new(), at(1)))
        .collect();
    ingest_all(&store, runs).await;
    loop {
        let claimed = claim_items(&store, at(1_000), 200, at(60_000), &NO_LIMITS)
            .await
            .unwrap();
        if claimed.is_empty() {
            break;
        }
        for item in claimed {
            commit(&store, item.run_id, Some(item.id), &|_| None)
                .await
                .unwrap();
        }
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while store.stats().await.unwrap().queue_vacuums == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the queue was never vacuumed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let vacuums = psql(
        &url,
        "SELECT vacuum_count FROM pg_stat_user_tables \
         WHERE schemaname = 'hookflow' AND relname = 'queue'",
    );
    assert!(vacuums.trim().parse::<u64>().unwrap() >= 1, "{vacuums}");
}

/// Workers' outcomes written together stay independent: one outcome the database refuses (it
/// queues an item under an id already taken) fails its own commit only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_the_database_refuses_fails_alone() {
    let url = <Postgres as Backend>::place();
    let store = <Postgres as Backend>::open(&url);
    let f = flow("orders");
    let waiting = new_run(&f, crate::ids::RunId::new(), at(10_000_000));
    let taken_id = waiting.items[0].id;
    let runs: Vec<_> = (0..12)
        .map(|_| new_run(&f, crate::ids::RunId::new(), at(1)))
        .collect();
    ingest_all(&store, runs.iter().cloned().chain([waiting])).await;
    let claimed = claim_items(&store, at(1_000), 12, at(60_000), &NO_LIMITS)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 12);
    for item in &claimed {
        store.load_run(item.run_id).await.unwrap().unwrap();
    }
    let refused = claimed[5].run_id;
    let mut tasks = tokio::task::JoinSet::new();
    for item in claimed {
        let (store, f) = (store.clone(), f.clone());
        tasks.spawn(async move {
            let finish = |mut run: crate::model::Run| {
                run.status = crate::model::RunStatus::Running;
                let mut next = crate::store::conformance::item(&f, run.id, "second", at(2_000));
                if run.id == refused {
                    next.id = taken_id;
                }
                Some(crate::store::RunUpdate {
                    run,
                    records: vec![],
                    enqueue: vec![next],
                    take: None,
                })
            };
            (
                item.run_id,
                commit(&store, item.run_id, Some(item.id), &finish).await,
            )
        });
    }
    while let Some(done) = tasks.join_next().await {
        let (run, outcome) = done.unwrap();
        if run == refused {
            assert!(outcome.is_err(), "{outcome:?}");
        } else {
            let written = outcome.unwrap().expect("the run exists");
            assert_eq!(written.status, crate::model::RunStatus::Running);
        }
    }
    for new in &runs {
        let stored = store.run(new.run.id).await.unwrap().unwrap();
        let expected = if new.run.id == refused {
            crate::model::RunStatus::Queued
        } else {
            crate::model::RunStatus::Running
        };
        assert_eq!(stored.status, expected, "{}", new.run.id);
    }
}

/// Where the server has lz4, a large event is stored compressed with it (cheaper than pglz), and
/// reads back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_events_are_compressed_with_lz4_where_the_server_has_it() {
    let url = <Postgres as Backend>::place();
    let store = <Postgres as Backend>::open(&url);
    let mut new = new_run(&flow("orders"), crate::ids::RunId::new(), at(1));
    new.event.trigger =
        serde_json::json!({ "body": { "note": "a Stripe-sized event ".repeat(400) } });
    ingest_all(&store, vec![new.clone()]).await;
    assert_eq!(store.event(new.event.id).await.unwrap(), Some(new.event));

    let query = |sql: &str| psql(&url, sql);
    let has_lz4 = query(
        "SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'",
    );
    let expected = if has_lz4 == "t" { "lz4" } else { "pglz" };
    assert_eq!(
        query("SELECT pg_column_compression(data) FROM hookflow.events"),
        expected
    );
}
