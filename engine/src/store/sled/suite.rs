//! The store conformance suite run against the sled backend, and the checks of what only the
//! sled backend has: fresh runs claimed from memory, the promotion window in front of the trees,
//! and a compressed store keeping its setting.
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::ids::{FlowId, RunId};
use crate::model::{QueueItem, Run, RunStatus, StepStatus};
use crate::store::conformance::*;
use crate::store::sled::SledStore;
use crate::store::Store;
use crate::store::{FlowLimits, Ingested, NewRun, RunQuery, RunUpdate};

/// A sled store in a temporary directory of its own.
struct Sled;

impl Backend for Sled {
    type Place = tempfile::TempDir;

    fn place() -> Self::Place {
        tempfile::tempdir().unwrap()
    }

    fn open(place: &Self::Place) -> Arc<dyn Store> {
        Arc::new(open_when_released(place.path(), false))
    }
}

conformance_suite!(Sled);

/// Opens the store, waiting (a bounded time) for a store dropped just before to let go of
/// the directory's lock: sled's I/O threads may still hold the file for a moment after the
/// last handle is dropped, and sled has no way to wait for them.
fn open_when_released(path: &Path, compression: bool) -> SledStore {
    let cache = crate::store::sled::DEFAULT_CACHE_BYTES;
    released(|| SledStore::open(path, cache, compression))
}

/// What `open` opens, once a store dropped just before has let go of the directory.
fn released(open: impl Fn() -> crate::store::Result<SledStore>) -> SledStore {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match open() {
            Ok(store) => return store,
            Err(e) if e.to_string().contains("could not acquire lock") => {
                assert!(Instant::now() < deadline, "the store stayed locked: {e}");
                std::thread::yield_now();
            }
            Err(e) => panic!("open the sled store: {e}"),
        }
    }
}

/// Opens a sled store in `dir` with a promotion window, and room and timing for fresh runs.
fn open_tuned(
    dir: &Path,
    window: i64,
    capacity: usize,
    idle: Duration,
    stale: Duration,
) -> Arc<SledStore> {
    let tuning = crate::store::sled::FreshTuning {
        capacity,
        idle,
        stale,
    };
    let cache = crate::store::sled::DEFAULT_CACHE_BYTES;
    Arc::new(released(|| {
        SledStore::open_tuned(dir, cache, false, window, tuning)
    }))
}

/// Beyond the promotion window and the fresh runs in memory, accepted runs wait in the inbox
/// (counted as queued, not yet readable) and move into the store as claims make room, in
/// order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_beyond_the_window_waits_in_the_inbox_and_follows_claims() {
    let dir = tempfile::tempdir().unwrap();
    let idle = Duration::from_millis(20);
    let store: Arc<dyn Store> = open_tuned(dir.path(), 10, 5, idle, Duration::from_secs(3600));
    let f = flow("orders");
    let runs: Vec<NewRun> = (1..=50)
        .map(|n| new_run(&f, run_id(n), at(n as i64)))
        .collect();
    for new in runs.clone() {
        assert_eq!(store.ingest(new).await.unwrap(), Ingested::Created);
    }
    let readable = |n: usize| {
        let store = store.clone();
        let id = runs[n - 1].run.id;
        async move { store.run(id).await.unwrap().is_some() }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !readable(15).await {
        assert!(
            Instant::now() < deadline,
            "the first 15 runs never became readable"
        );
        tokio::task::yield_now().await;
    }
    assert!(
        !readable(16).await,
        "the window holds 10 items, memory 5 more"
    );
    assert_eq!(
        store.stats().await.unwrap().queued,
        50,
        "the inbox counts as queued"
    );

    let room = FlowLimits::new();
    let claimed = claim_items(&store, at(1_000), 4, at(100_000), &room)
        .await
        .unwrap();
    assert_eq!(
        item_ids(&claimed),
        item_ids(&[1, 2, 3, 4].map(|n| runs[n - 1].items[0].clone()))
    );
    while !readable(19).await {
        assert!(
            Instant::now() < deadline,
            "claims did not make room for more runs"
        );
        tokio::task::yield_now().await;
    }
    assert!(!readable(20).await);
    assert_eq!(store.stats().await.unwrap().queued, 50);
}

/// Claims `want` items (waiting for the promoter to read them), with a deadline.
async fn claim_until(store: &SledStore, want: usize) -> Vec<QueueItem> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut claimed = Vec::new();
    while claimed.len() < want {
        assert!(Instant::now() < deadline, "claimed {claimed:?} of {want}");
        let room = FlowLimits::new();
        let more = claim_items(&store, at(1_000), want - claimed.len(), FAR_FUTURE, &room);
        claimed.extend(more.await.unwrap());
        tokio::task::yield_now().await;
    }
    claimed
}

/// The ids of the runs of `flow` the store lists.
async fn listed(store: &SledStore, flow_id: &FlowId) -> Vec<RunId> {
    let query = RunQuery {
        flow_id: Some(flow_id.clone()),
        limit: 100,
        ..RunQuery::default()
    };
    let page = store.list_runs(&query).await.unwrap();
    page.runs.iter().map(|run| run.id).collect()
}

/// A run claimed straight from the inbox is readable and listed from memory, and written to
/// the trees (event, run, index) by the update of its first step, in its transaction. One
/// taken and never written is claimable again after the store reopens; one written is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_runs_are_written_with_their_first_update() {
    let dir = tempfile::tempdir().unwrap();
    let hour = Duration::from_secs(3600);
    let store = open_tuned(dir.path(), 100, 100, hour, hour);
    let f = flow("fresh");
    let (done, dropped) = (new_run(&f, run_id(1), at(1)), new_run(&f, run_id(2), at(2)));
    for new in [done.clone(), dropped.clone()] {
        assert_eq!(store.ingest(new).await.unwrap(), Ingested::Created);
    }
    let claimed = claim_until(&store, 2).await;
    let items = [done.items[0].clone(), dropped.items[0].clone()];
    assert_eq!(item_ids(&claimed), item_ids(&items));
    assert_eq!(
        store.run(done.run.id).await.unwrap(),
        Some(done.run.clone())
    );
    assert_eq!(
        store.event(done.event.id).await.unwrap(),
        Some(done.event.clone())
    );
    assert_eq!(listed(&store, &f).await, vec![dropped.run.id, done.run.id]);
    assert!(!store.in_trees(done.run.id), "written before its update");

    let finished = |mut run: Run| {
        run.status = RunStatus::Succeeded;
        run.steps[0].status = StepStatus::Succeeded;
        let records = vec![record(run.id, "first", json!({ "ok": true }))];
        Some(RunUpdate {
            run,
            records,
            enqueue: Vec::new(),
            take: None,
        })
    };
    let written = commit(&store, done.run.id, Some(claimed[0].id), &finished);
    assert_eq!(written.await.unwrap().unwrap().status, RunStatus::Succeeded);
    assert!(store.in_trees(done.run.id));
    assert!(!store.in_trees(dropped.run.id));
    assert_eq!(store.step_records(done.run.id).await.unwrap().len(), 1);
    drop(store);

    let store = open_tuned(dir.path(), 100, 100, hour, hour);
    let again = claim_until(&store, 1).await;
    assert_eq!(item_ids(&again), item_ids(&[dropped.items[0].clone()]));
    let more = claim_items(&store, at(1_000), 10, FAR_FUTURE, &FlowLimits::new())
        .await
        .unwrap();
    assert!(more.is_empty(), "the written run came back: {more:?}");
    let run = store.run(done.run.id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Succeeded);
    assert_eq!(store.event(done.event.id).await.unwrap(), Some(done.event));
    assert_eq!(listed(&store, &f).await, vec![dropped.run.id, done.run.id]);
}

/// Fresh runs no claim looks for go to the trees (and are claimed from the queue); one taken
/// and not written for too long goes too, its item still leased to its taker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_runs_claims_leave_alone_go_to_the_trees() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_tuned(
        dir.path(),
        100,
        100,
        Duration::ZERO,
        Duration::from_secs(3600),
    );
    let f = flow("idle");
    let runs: Vec<NewRun> = (1..=3)
        .map(|n| new_run(&f, run_id(n), at(n as i64)))
        .collect();
    for new in runs.clone() {
        assert_eq!(store.ingest(new).await.unwrap(), Ingested::Created);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !runs.iter().all(|run| store.in_trees(run.run.id)) {
        assert!(
            Instant::now() < deadline,
            "the runs never reached the trees"
        );
        tokio::task::yield_now().await;
    }
    let claimed = claim_until(&store, 3).await;
    let items: Vec<_> = runs.iter().map(|run| run.items[0].clone()).collect();
    assert_eq!(item_ids(&claimed), item_ids(&items));
    drop(store);

    let dir = tempfile::tempdir().unwrap();
    let hour = Duration::from_secs(3600);
    let store = open_tuned(dir.path(), 100, 100, hour, Duration::from_millis(20));
    let taken = new_run(&f, run_id(4), at(4));
    store.ingest(taken.clone()).await.unwrap();
    let claimed = claim_until(&store, 1).await;
    // A deadline of its own: the first half may have used much of the first one on a busy
    // machine (it failed once so while many other tests ran).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !store.in_trees(taken.run.id) {
        assert!(
            Instant::now() < deadline,
            "the taken run never reached the trees"
        );
        tokio::task::yield_now().await;
    }
    let more = claim_items(&store, at(1_000), 10, FAR_FUTURE, &FlowLimits::new())
        .await
        .unwrap();
    assert!(more.is_empty(), "a leased item was claimed again: {more:?}");
    commit(&store, taken.run.id, Some(claimed[0].id), &|_| None)
        .await
        .unwrap();
    assert_eq!(
        store.stats().await.unwrap().queued,
        0,
        "the taken item left the queue"
    );
}

/// A store created compressed passes the reopen check, opened afterwards by callers asking for
/// no compression: it keeps the setting it was created with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_store_keeps_everything_and_its_setting() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let opened = std::sync::atomic::AtomicUsize::new(0);
    let open = || {
        let first = opened.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
        Arc::new(open_when_released(&path, first)) as Arc<dyn Store>
    };
    crate::store::conformance::everything_survives_reopen(&open).await;
    assert!(opened.into_inner() > 1);
    let settings = std::fs::read_to_string(dir.path().join("conf")).unwrap();
    assert!(settings.contains("use_compression: true"), "{settings}");
}

/// An acknowledged run whose dedupe key a newer delivery took after it expired is still written
/// when it leaves the inbox after that newer run, never dropped as a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_run_whose_expired_key_was_taken_again_is_kept() {
    use crate::store::DedupeKey;
    let dir = tempfile::tempdir().unwrap();
    let idle = Duration::from_millis(20);
    let store = open_tuned(dir.path(), 100, 100, idle, Duration::from_secs(3600));
    let f = flow("orders");
    let key = |expires_at| {
        Some(DedupeKey {
            key: "evt_1".into(),
            expires_at,
        })
    };
    // The first delivery: due late, its key's window ends at 100.
    let mut older = new_run(&f, run_id(1), at(5_000));
    older.event.received_at = at(10);
    older.dedupe = key(at(100));
    // A repeat at 200: the window has passed, so it is a new run, due at once.
    let mut newer = new_run(&f, run_id(2), at(200));
    newer.dedupe = key(at(100_000));
    assert_eq!(
        store.ingest(older.clone()).await.unwrap(),
        Ingested::Created
    );
    assert_eq!(
        store.ingest(newer.clone()).await.unwrap(),
        Ingested::Created
    );
    // The newer run is claimed from memory and written first, with the key.
    let claimed = claim_until(&store, 1).await;
    assert_eq!(item_ids(&claimed), item_ids(&newer.items));
    assert!(!store.in_trees(older.run.id) && !store.in_trees(newer.run.id));
    commit(&store, newer.run.id, Some(claimed[0].id), &|run| {
        Some(RunUpdate {
            run,
            records: vec![],
            enqueue: vec![],
            take: None,
        })
    })
    .await
    .unwrap();
    assert!(store.in_trees(newer.run.id));
    // The older run then leaves the inbox: written, and claimable when due.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !store.in_trees(older.run.id) {
        assert!(Instant::now() < deadline, "the older run was dropped");
        tokio::task::yield_now().await;
    }
    let due = claim_items(&store, at(5_000), 10, FAR_FUTURE, &FlowLimits::new())
        .await
        .unwrap();
    assert_eq!(item_ids(&due), item_ids(&older.items));
}

/// An ingest with a dedupe key that its caller stops waiting for (a client gone, a step's
/// timeout) still settles its key: a repeat is answered with that run, never started twice. On
/// one thread, so that nothing else runs between the one poll of the first ingest and its drop.
#[tokio::test]
async fn a_repeat_of_an_ingest_its_caller_gave_up_on_is_its_duplicate() {
    use crate::store::DedupeKey;
    let dir = tempfile::tempdir().unwrap();
    let store = open_when_released(dir.path(), false);
    let f = flow("orders");
    let keyed = |n| {
        let mut new = new_run(&f, run_id(n), at(100));
        new.dedupe = Some(DedupeKey {
            key: "evt_1".into(),
            expires_at: FAR_FUTURE,
        });
        new
    };
    let first = keyed(1);
    // Polled once (the record is handed to the inbox), then dropped.
    let mut cut = store.ingest(first.clone());
    let waker = std::task::Waker::noop();
    let polled = cut
        .as_mut()
        .poll(&mut std::task::Context::from_waker(waker));
    assert!(polled.is_pending(), "the first ingest was cut short");
    drop(cut);
    match store.ingest(keyed(2)).await.unwrap() {
        Ingested::Duplicate { run_id, .. } => assert_eq!(run_id, first.run.id),
        other => panic!("a second run was started: {other:?}"),
    }
}

/// The pacing waits and last schedule ticks earlier versions stored (as `put_state` JSON under
/// `pacing:ACCOUNT` and `schedule:FLOW`) still count after an upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pacing_and_ticks_stored_by_earlier_versions_still_count() {
    let place = Sled::place();
    let store = Sled::open(&place);
    let pacing = json!({ "blocked_until": 5_000 });
    store.put_state("pacing:a", &pacing).await.unwrap();
    let tick = json!({ "last_tick": 100 });
    store.put_state("schedule:nightly", &tick).await.unwrap();
    drop(store);
    let store = Sled::open(&place);
    assert_eq!(
        store.pace_admit("a", at(4_000)).await.unwrap(),
        Err(at(5_000))
    );
    let f = flow("nightly");
    assert_eq!(store.last_tick(&f).await.unwrap(), Some(at(100)));
    assert!(!store.claim_tick(&f, at(100)).await.unwrap());
    assert!(store.claim_tick(&f, at(200)).await.unwrap());
}

/// A lease found held by a commit stays held until that commit is written: `requeue_expired`
/// does not take it over meanwhile, even once it has expired (else the commit would be applied
/// after another node claimed the item).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committing_lease_is_not_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open_when_released(dir.path(), false));
    let f = flow("orders");
    let new = new_run(&f, run_id(1), at(100));
    ingest(&(store.clone() as Arc<dyn Store>), new).await;
    let claimed = store
        .claim_due(crate::store::ClaimRequest {
            owner: &node(),
            now: at(100),
            limit: 1,
            until: at(1_000),
            concurrency: &NO_LIMITS,
        })
        .await
        .unwrap()
        .remove(0);
    let committing = super::Committing::start(&store, &claimed.lease).unwrap();
    assert_eq!(store.requeue_expired(at(5_000)).await.unwrap(), 0);
    drop(committing);
    assert_eq!(store.requeue_expired(at(5_000)).await.unwrap(), 1);
}
