//! The store conformance suite: what every [`Store`] backend must do, written against the trait
//! only, so each backend runs the same checks.
//!
//! Each check is an async function taking a fresh store (`Arc<dyn Store>`, so checks can spawn
//! concurrent tasks), or an [`Open`] function for checks that close and reopen the store. A backend
//! implements [`Backend`] (where its data lives, how to open it) and runs the whole suite with one
//! line, `conformance_suite!(MyBackend)` (the sled backend's is in `sled/suite.rs`); checks of a
//! backend's own internals live beside that backend, not here.
//!
//! The checks that lease name their nodes and hold the tokens the store gave them: several nodes
//! are played by one test, and a commit with a lease no longer held must be refused. They use
//! explicit timestamps, never the clock, and never sleep: where a backend may make an acknowledged
//! run visible a moment later, a check waits for it with a deadline. Orders asserted are the
//! trait's: claims oldest due first, runs newest first (run ids are ULIDs, which sort by time).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde_json::json;
use tokio::task::JoinSet;
use ulid::Ulid;

use super::{
    ClaimRequest, Decide, DedupeKey, FlowLimits, Ingested, Lease, LeaseToken, NewRun, NodeId,
    RunQuery, RunUpdate, Store, StoreError, Take,
};
use crate::ids::{EventId, FlowId, ItemId, RunId, StepId};
use crate::model::{
    Event, QueueItem, Revision, Run, RunStatus, StepProgress, StepRecord, StepStatus, Timestamp,
};

/// The node the checks claim as (unless a check names others).
pub(crate) fn node() -> NodeId {
    NodeId::new("conformance").unwrap()
}

/// The leases the checks hold, by item. Item ids are unique across checks, so one book serves
/// every check running at once.
static LEASES: std::sync::Mutex<BTreeMap<ItemId, Lease>> = std::sync::Mutex::new(BTreeMap::new());

pub(crate) fn lease_of(item: ItemId) -> Lease {
    LEASES.lock().unwrap().get(&item).cloned().unwrap_or(Lease {
        item,
        owner: node(),
        token: LeaseToken(0),
        until: at(0),
    })
}

pub(crate) fn keep_leases(leases: impl IntoIterator<Item = Lease>) {
    let mut book = LEASES.lock().unwrap();
    for lease in leases {
        book.insert(lease.item, lease);
    }
}

/// Claims as [`node`] and keeps the leases in the book: the claimed items.
pub(crate) async fn claim_items<T: Store + ?Sized>(
    store: &impl std::ops::Deref<Target = T>,
    now: Timestamp,
    limit: usize,
    until: Timestamp,
    concurrency: &FlowLimits,
) -> super::Result<Vec<QueueItem>> {
    let claimed = store
        .claim_due(ClaimRequest {
            owner: &node(),
            now,
            limit,
            until,
            concurrency,
        })
        .await?;
    keep_leases(claimed.iter().map(|c| c.lease.clone()));
    Ok(claimed.into_iter().map(|c| c.item).collect())
}

/// `update_run` with the book's lease on `done`, keeping the leases of taken items: the run.
pub(crate) async fn commit<T: Store + ?Sized>(
    store: &impl std::ops::Deref<Target = T>,
    run_id: RunId,
    done: Option<ItemId>,
    decide: Decide<'_>,
) -> super::Result<Option<Run>> {
    let lease = done.map(lease_of);
    let committed = store.update_run(run_id, lease.as_ref(), decide).await?;
    Ok(committed.map(|c| {
        keep_leases(c.taken);
        c.run
    }))
}

/// Opens the store under test on the same data each time it is called. The caller drops the
/// previous store before calling it again.
pub(crate) type Open<'a> = &'a (dyn Fn() -> Arc<dyn Store> + Send + Sync);

/// The checks of lanes, pacing and schedule ticks.
mod coordination;
pub(crate) use self::coordination::*;

/// The checks of the audit record and hook logs.
mod logs;
pub(crate) use self::logs::*;
/// The checks of storage between runs.
mod storage;
pub(crate) use self::storage::*;

/// A lease end later than any time a check uses.
pub(crate) const FAR_FUTURE: Timestamp = Timestamp(i64::MAX / 2);

/// No flow has a concurrency limit.
pub(crate) static NO_LIMITS: std::sync::LazyLock<FlowLimits> =
    std::sync::LazyLock::new(FlowLimits::new);

pub(crate) fn at(ms: i64) -> Timestamp {
    Timestamp(ms)
}

pub(crate) fn flow(name: &str) -> FlowId {
    name.parse().unwrap()
}

pub(crate) fn step(name: &str) -> StepId {
    name.parse().unwrap()
}

/// The `n`th run id of a check: ids made from increasing times sort in `n` order.
pub(crate) fn run_id(n: u64) -> RunId {
    RunId::from_ulid(Ulid::from_parts(1_700_000_000_000 + n, 0x5eed))
}

pub(crate) fn item(flow_id: &FlowId, run_id: RunId, step_id: &str, due_at: Timestamp) -> QueueItem {
    QueueItem {
        id: ItemId::new(),
        run_id,
        flow_id: flow_id.clone(),
        step_id: step(step_id),
        attempt: 1,
        due_at,
    }
}

/// A queued run of a two-step flow (`first`, `second`) with one item for `first` due at `due_at`.
pub(crate) fn new_run(flow_id: &FlowId, id: RunId, due_at: Timestamp) -> NewRun {
    let event = Event {
        id: EventId::new(),
        flow_id: flow_id.clone(),
        received_at: due_at,
        trigger: json!({ "method": "POST", "body": { "amount": 12, "email": "a@example.com" } }),
    };
    let run = Run {
        id,
        flow_id: flow_id.clone(),
        revision: Revision::of("id: test"),
        event_id: event.id,
        status: RunStatus::Queued,
        created_at: due_at,
        updated_at: due_at,
        finished_at: None,
        steps: vec![
            StepProgress::new(step("first"), StepStatus::Queued),
            StepProgress::new(step("second"), StepStatus::Pending),
        ],
        reason: None,
        replay_of: None,
        started_by: None,
        failure: None,
        title: None,
    };
    let items = vec![item(flow_id, id, "first", due_at)];
    NewRun {
        event,
        run,
        items,
        dedupe: None,
        records: Vec::new(),
    }
}

pub(crate) fn record(run_id: RunId, step_id: &str, output: serde_json::Value) -> StepRecord {
    StepRecord {
        run_id,
        step_id: step(step_id),
        kind: "map".into(),
        status: StepStatus::Succeeded,
        input: json!({ "in": step_id }),
        output: Some(output),
        error: None,
        attempts: vec![],
        rendered_for: None,
    }
}

/// Ingests all runs concurrently (which also exercises shared fsyncs).
pub(crate) async fn ingest_all(store: &Arc<dyn Store>, runs: impl IntoIterator<Item = NewRun>) {
    let mut tasks = JoinSet::new();
    for new in runs {
        let store = store.clone();
        tasks.spawn(async move { ingest(&store, new).await });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
}

/// Ingests a run and, if it was created, waits (a bounded time) until reads see it: a backend
/// may make an acknowledged run visible a moment after `ingest` returns (sled's inbox).
/// An update that changes nothing but takes `next` for the caller until `until`.
pub(crate) fn taking(run: Run, next: &QueueItem, until: Timestamp) -> Option<RunUpdate> {
    Some(RunUpdate {
        run,
        records: vec![],
        enqueue: vec![],
        take: Some(Take {
            items: vec![next.clone()],
            owner: node(),
            until,
        }),
    })
}

/// Ingests a run of `f` due at 100 and claims its one item (leased until 60,000): the run and the
/// claimed item.
pub(crate) async fn ingest_and_claim(
    store: &Arc<dyn Store>,
    f: &FlowId,
) -> (NewRun, Vec<QueueItem>) {
    let new = new_run(f, RunId::new(), at(100));
    ingest(store, new.clone()).await;
    let claimed = claim_items(store, at(100), 1, at(60_000), &FlowLimits::new())
        .await
        .unwrap();
    assert_eq!(claimed, new.items);
    (new, claimed)
}

pub(crate) async fn ingest(store: &Arc<dyn Store>, new: NewRun) -> Ingested {
    let id = new.run.id;
    let outcome = store.ingest(new).await.expect("ingest");
    if outcome == Ingested::Created {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while store.run(id).await.unwrap().is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "run {id} never became visible"
            );
            tokio::task::yield_now().await;
        }
    }
    outcome
}

/// Sets a run's status through `update_run`.
pub(crate) async fn set_status(store: &Arc<dyn Store>, id: RunId, status: RunStatus) {
    change_run(store, id, |run| run.status = status).await;
}

/// Changes a run through `update_run` without a lease (as an API call or a callback would).
pub(crate) async fn change_run(
    store: &Arc<dyn Store>,
    id: RunId,
    change: impl Fn(&mut Run) + Send + Sync,
) {
    let decide = |mut run: Run| {
        change(&mut run);
        Some(RunUpdate {
            run,
            records: vec![],
            enqueue: vec![],
            take: None,
        })
    };
    commit(store, id, None, &decide)
        .await
        .unwrap()
        .expect("the run exists");
}

pub(crate) fn ids(runs: &[Run]) -> Vec<RunId> {
    runs.iter().map(|r| r.id).collect()
}

pub(crate) fn item_ids(items: &[QueueItem]) -> Vec<ItemId> {
    items.iter().map(|i| i.id).collect()
}

/// All runs matching a query, following the cursor page by page; checks the pages don't overlap.
pub(crate) async fn all_pages(store: &Arc<dyn Store>, mut query: RunQuery) -> Vec<RunId> {
    let mut seen = Vec::new();
    for _ in 0..1000 {
        let page = store.list_runs(&query).await.unwrap();
        assert!(page.runs.len() <= query.limit.max(1));
        seen.extend(ids(&page.runs));
        match page.next {
            Some(next) => query.before = Some(next),
            None => return seen,
        }
    }
    panic!("list_runs never stopped paging");
}

/// An ingested event and run read back as written; unknown ids read as nothing.
pub(crate) async fn ingest_then_read_back(store: Arc<dyn Store>) {
    let orders = flow("orders");
    let mut new = new_run(&orders, RunId::new(), at(1_000));
    new.items
        .push(item(&new.run.flow_id, new.run.id, "second", at(2_000)));
    ingest(&store, new.clone()).await;

    assert_eq!(
        store.event(new.event.id).await.unwrap(),
        Some(new.event.clone())
    );
    assert_eq!(store.run(new.run.id).await.unwrap(), Some(new.run.clone()));
    assert!(store.step_records(new.run.id).await.unwrap().is_empty());
    assert_eq!(store.next_due().await.unwrap(), Some(at(1_000)));
    let claimed = claim_items(&store, at(5_000), 10, at(9_000), &FlowLimits::new())
        .await
        .unwrap();
    assert_eq!(claimed, new.items, "both first items, oldest due first");

    assert_eq!(store.run(RunId::new()).await.unwrap(), None);
    assert_eq!(store.event(EventId::new()).await.unwrap(), None);
    let page = store.list_runs(&RunQuery::default()).await.unwrap();
    assert_eq!(page.runs, vec![new.run]);
    assert_eq!(page.next, None);
}

/// A run whose first step was executed before ingest is stored with that step's record: one the
/// step ended (a filter that dropped the event) is final, queues nothing and still holds its
/// dedupe key; one it moved on queues its next item.
pub(crate) async fn runs_with_step_records_are_ingested_as_written(store: Arc<dyn Store>) {
    let orders = flow("orders");
    let dropped_run = |n: u64| {
        let mut new = new_run(&orders, run_id(n), at(100));
        new.items.clear();
        new.run.status = RunStatus::Filtered;
        new.run.finished_at = Some(at(100));
        new.run.steps[0].status = StepStatus::Filtered;
        new.run.steps[1].status = StepStatus::Skipped;
        new.records = vec![StepRecord {
            status: StepStatus::Filtered,
            ..record(new.run.id, "first", json!({ "passed": false }))
        }];
        new
    };
    // Notices sent before a backend listens may be missed: probe until one is heard.
    let mut notices = store.notices();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    for n in 100.. {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no notice was ever heard"
        );
        let probe = dropped_run(n);
        ingest(&store, probe.clone()).await;
        let heard = async {
            while notices.recv().await.ok()?.run_id != probe.run.id {}
            Some(())
        };
        let wait = std::time::Duration::from_millis(200);
        if let Ok(Some(())) = tokio::time::timeout(wait, heard).await {
            break;
        }
    }

    let mut dropped = dropped_run(1);
    dropped.dedupe = Some(DedupeKey {
        key: "evt_1".into(),
        expires_at: at(10_000),
    });
    let mut moved_on = new_run(&orders, run_id(2), at(100));
    moved_on.run.steps[0].status = StepStatus::Succeeded;
    moved_on.run.steps[1].status = StepStatus::Queued;
    moved_on.items = vec![item(&orders, moved_on.run.id, "second", at(100))];
    moved_on.records = vec![record(moved_on.run.id, "first", json!({ "n": 1 }))];
    ingest_all(&store, [dropped.clone(), moved_on.clone()]).await;

    for new in [&dropped, &moved_on] {
        assert_eq!(store.run(new.run.id).await.unwrap(), Some(new.run.clone()));
        assert_eq!(
            store.event(new.event.id).await.unwrap(),
            Some(new.event.clone())
        );
        assert_eq!(store.step_records(new.run.id).await.unwrap(), new.records);
    }
    let claimed = claim_items(&store, at(5_000), 10, at(9_000), &FlowLimits::new())
        .await
        .unwrap();
    assert_eq!(
        claimed, moved_on.items,
        "only the run that moved on has an item"
    );
    let mut repeat = new_run(&orders, run_id(3), at(200));
    repeat.dedupe = dropped.dedupe.clone();
    assert_eq!(
        ingest(&store, repeat).await,
        Ingested::Duplicate {
            event_id: dropped.event.id,
            run_id: dropped.run.id,
        }
    );

    // Subscribers hear the run that moved on created (`queued`) and the dropped one `filtered`.
    let mut heard = BTreeSet::new();
    let wanted = BTreeSet::from([
        (dropped.run.id, RunStatus::Filtered),
        (moved_on.run.id, RunStatus::Queued),
    ]);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !wanted.is_subset(&heard) {
        match tokio::time::timeout_at(deadline, notices.recv()).await {
            Ok(Ok(notice)) => heard.insert((notice.run_id, notice.status)),
            outcome => panic!("notices {heard:?} but not all of {wanted:?}: {outcome:?}"),
        };
    }
}

/// The next due time is the earliest of any flow's queued items; leased items do not count.
pub(crate) async fn next_due_is_the_earliest_queued_item_of_any_flow(store: Arc<dyn Store>) {
    let runs = [
        ("alpha", 500),
        ("beta", 300),
        ("gamma", 800),
        ("alpha", 900),
    ]
    .map(|(name, due)| new_run(&flow(name), RunId::new(), at(due)));
    ingest_all(&store, runs.to_vec()).await;
    let lease = at(100_000);
    for (now, next) in [
        (300, Some(500)),
        (500, Some(800)),
        (800, Some(900)),
        (900, None),
    ] {
        assert_eq!(store.next_due().await.unwrap().map(|t| t.0), Some(now));
        let claimed = claim_items(&store, at(now), 1, lease, &FlowLimits::new())
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1, "one item is due at {now}");
        assert_eq!(claimed[0].due_at, at(now));
        assert_eq!(store.next_due().await.unwrap().map(|t| t.0), next);
    }
}

/// Claims take only due items, oldest due first, at most `limit`, each once.
pub(crate) async fn claim_respects_due_time_and_limit(store: Arc<dyn Store>) {
    let f = flow("orders");
    let runs: Vec<_> = (1..=5)
        .map(|n| new_run(&f, run_id(n), at(n as i64 * 100)))
        .collect();
    let due = |n: usize| runs[n - 1].items[0].clone();
    ingest_all(&store, runs.clone()).await;
    let lease = at(100_000);

    assert!(claim_items(&store, at(99), 10, lease, &FlowLimits::new())
        .await
        .unwrap()
        .is_empty());
    assert!(claim_items(&store, at(500), 0, lease, &FlowLimits::new())
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        claim_items(&store, at(300), 2, lease, &FlowLimits::new())
            .await
            .unwrap(),
        [due(1), due(2)]
    );
    assert_eq!(
        claim_items(&store, at(300), 2, lease, &FlowLimits::new())
            .await
            .unwrap(),
        [due(3)],
        "due at now counts"
    );
    assert!(claim_items(&store, at(300), 2, lease, &FlowLimits::new())
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.next_due().await.unwrap(), Some(at(400)));
    assert_eq!(
        claim_items(&store, at(10_000), 10, lease, &FlowLimits::new())
            .await
            .unwrap(),
        [due(4), due(5)]
    );
    assert_eq!(store.next_due().await.unwrap(), None);
    assert!(
        claim_items(&store, FAR_FUTURE, 10, lease, &FlowLimits::new())
            .await
            .unwrap()
            .is_empty()
    );
}

/// An item queued due before items already leased, and an item whose lease ended, are taken by
/// the next claim (a backend that remembers where a flow's free items start must forget it then).
pub(crate) async fn items_freed_or_queued_before_leased_ones_are_claimed_next(
    store: Arc<dyn Store>,
) {
    let f = flow("orders");
    let runs: Vec<_> = (1..=4)
        .map(|n| new_run(&f, run_id(n), at(n as i64 * 100)))
        .collect();
    ingest_all(&store, runs.clone()).await;
    let room = FlowLimits::new();
    let claim = |until: i64| claim_items(&store, at(1_000), 1, at(until), &room);
    assert_eq!(claim(5_000).await.unwrap(), runs[0].items);
    assert_eq!(claim(5_000).await.unwrap(), runs[1].items);

    // Run 1's step queues its next step due at 50: before every item of the flow.
    let early = item(&f, run_id(1), "second", at(50));
    commit(&store, run_id(1), Some(runs[0].items[0].id), &|run| {
        Some(RunUpdate {
            run,
            records: vec![],
            enqueue: vec![early.clone()],
            take: None,
        })
    })
    .await
    .unwrap();
    assert_eq!(
        claim(60_000).await.unwrap(),
        [early],
        "queued before run 2's leased item"
    );
    assert_eq!(claim(60_000).await.unwrap(), runs[2].items);

    // Run 2's lease ends: its item comes before run 4's.
    assert_eq!(store.requeue_expired(at(5_000)).await.unwrap(), 1);
    assert_eq!(
        claim(60_000).await.unwrap(),
        runs[1].items,
        "its lease ended"
    );
    assert_eq!(claim(60_000).await.unwrap(), runs[3].items);

    // A new run due before every leased item.
    let late_comer = new_run(&f, run_id(5), at(60));
    ingest(&store, late_comer.clone()).await;
    assert_eq!(claim(60_000).await.unwrap(), late_comer.items, "a new run");
}

/// Concurrent claimers split the due items between them: every item is claimed exactly once.
pub(crate) async fn claimed_items_are_never_claimed_twice(store: Arc<dyn Store>) {
    let f = flow("orders");
    let runs: Vec<_> = (0..120)
        .map(|n| new_run(&f, RunId::new(), at(n % 17)))
        .collect();
    let expected: BTreeSet<ItemId> = runs.iter().map(|r| r.items[0].id).collect();
    ingest_all(&store, runs).await;

    let mut claimers = JoinSet::new();
    for _ in 0..6 {
        let store = store.clone();
        claimers.spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = claim_items(&store, at(1_000), 7, at(60_000), &FlowLimits::new())
                    .await
                    .unwrap();
                if got.is_empty() {
                    return mine;
                }
                assert!(got.len() <= 7);
                mine.extend(item_ids(&got));
            }
        });
    }
    let mut claimed = Vec::new();
    while let Some(mine) = claimers.join_next().await {
        claimed.extend(mine.unwrap());
    }
    let unique: BTreeSet<ItemId> = claimed.iter().copied().collect();
    assert_eq!(unique.len(), claimed.len(), "an item was claimed twice");
    assert_eq!(unique, expected, "every item was claimed");
    assert!(
        claim_items(&store, FAR_FUTURE, 100, FAR_FUTURE, &FlowLimits::new())
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.requeue_expired(at(59_999)).await.unwrap(), 0);
}

/// While updates take their runs' next items, concurrent claimers never get one of them, nor an
/// item an update is finishing.
pub(crate) async fn claims_racing_updates_never_get_taken_items(store: Arc<dyn Store>) {
    let f = flow("orders");
    let runs: Vec<_> = (0..60).map(|n| new_run(&f, RunId::new(), at(n))).collect();
    ingest_all(&store, runs.clone()).await;
    let claimed = claim_items(&store, at(100), 100, FAR_FUTURE, &FlowLimits::new())
        .await
        .unwrap();
    assert_eq!(claimed.len(), 60);

    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut claimers = JoinSet::new();
    for _ in 0..3 {
        let (store, done) = (store.clone(), done.clone());
        claimers.spawn(async move {
            let mut got = Vec::new();
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let now = at(1_000);
                got.extend(
                    claim_items(&store, now, 10, FAR_FUTURE, &FlowLimits::new())
                        .await
                        .unwrap(),
                );
                tokio::task::yield_now().await;
            }
            got
        });
    }
    let mut updates = JoinSet::new();
    for item in claimed {
        let store = store.clone();
        updates.spawn(async move {
            let next = self::item(&item.flow_id, item.run_id, "second", at(200));
            let decide = |run: Run| taking(run, &next, FAR_FUTURE);
            commit(&store, item.run_id, Some(item.id), &decide)
                .await
                .unwrap();
        });
    }
    while let Some(update) = updates.join_next().await {
        update.unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    while let Some(got) = claimers.join_next().await {
        assert_eq!(got.unwrap(), [], "a claim got an item that was leased");
    }
    assert_eq!(store.requeue_expired(at(1_000_000)).await.unwrap(), 0);
    assert_eq!(
        claim_items(&store, at(1_000), 100, FAR_FUTURE, &FlowLimits::new())
            .await
            .unwrap()
            .len(),
        0,
        "the taken items stay leased"
    );
}

/// Items an update takes for its caller are leased to it at once: no claim returns them and
/// `next_due` does not report them until the lease ends; finishing one removes it.
pub(crate) async fn taken_items_are_leased_to_the_caller(store: Arc<dyn Store>) {
    let f = flow("orders");
    let (new, claimed) = ingest_and_claim(&store, &f).await;
    let id = new.run.id;
    let next = item(&f, id, "second", at(100));
    let decide = |run: Run| taking(run, &next, at(1_000));
    commit(&store, id, Some(claimed[0].id), &decide)
        .await
        .unwrap();
    let room = FlowLimits::new();
    let claim = |now: i64| claim_items(&store, at(now), 10, at(60_000), &room);
    assert!(
        claim(500).await.unwrap().is_empty(),
        "the taken item is leased"
    );
    assert_eq!(store.next_due().await.unwrap(), None);
    assert_eq!(store.stats().await.unwrap().queued, 1, "leased items count");
    assert_eq!(store.requeue_expired(at(999)).await.unwrap(), 0);
    assert_eq!(store.requeue_expired(at(1_000)).await.unwrap(), 1);
    assert_eq!(store.next_due().await.unwrap(), Some(at(100)));
    let again = claim(1_000).await.unwrap();
    assert_eq!(again, std::slice::from_ref(&next));
    commit(&store, id, Some(next.id), &|_| None).await.unwrap();
    assert_eq!(store.requeue_expired(FAR_FUTURE).await.unwrap(), 0);
    assert!(
        claim(2_000).await.unwrap().is_empty(),
        "finished items are gone"
    );
    assert_eq!(store.stats().await.unwrap().queued, 0);
}

/// `update_run` writes the run, its records and its next items together and ends the lease.
pub(crate) async fn update_run_writes_atomically_and_ends_the_lease(store: Arc<dyn Store>) {
    let f = flow("orders");
    let (new, claimed) = ingest_and_claim(&store, &f).await;
    let id = new.run.id;

    let first = record(id, "first", json!({ "plan": "PRO" }));
    let next = item(&f, id, "second", at(5_000));
    let decide = |mut run: Run| {
        run.status = RunStatus::Running;
        run.set_step_status(&step("first"), StepStatus::Succeeded);
        run.set_step_status(&step("second"), StepStatus::Queued);
        run.updated_at = at(200);
        Some(RunUpdate {
            run,
            records: vec![first.clone()],
            enqueue: vec![next.clone()],
            take: None,
        })
    };
    let written = commit(&store, id, Some(claimed[0].id), &decide)
        .await
        .unwrap();
    let written = written.expect("the run exists");
    assert_eq!(written.status, RunStatus::Running);
    assert_eq!(
        written.step_status(&step("second")),
        Some(StepStatus::Queued)
    );
    assert_eq!(store.run(id).await.unwrap(), Some(written));
    assert_eq!(store.step_records(id).await.unwrap(), [first]);
    assert_eq!(store.next_due().await.unwrap(), Some(at(5_000)));
    assert!(
        claim_items(&store, at(4_999), 10, at(60_000), &FlowLimits::new())
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.requeue_expired(FAR_FUTURE).await.unwrap(),
        0,
        "the lease ended"
    );
    assert_eq!(
        claim_items(&store, at(5_000), 10, at(60_000), &FlowLimits::new())
            .await
            .unwrap(),
        std::slice::from_ref(&next)
    );

    // A record for the same run and step replaces the earlier one.
    let first_again = record(id, "first", json!({ "plan": "TEAM" }));
    let second = record(id, "second", json!({ "sent": true }));
    let decide = |mut run: Run| {
        run.status = RunStatus::Succeeded;
        run.finished_at = Some(at(6_000));
        Some(RunUpdate {
            run,
            records: vec![first_again.clone(), second.clone()],
            enqueue: vec![],
            take: None,
        })
    };
    commit(&store, id, Some(next.id), &decide).await.unwrap();
    let mut records = store.step_records(id).await.unwrap();
    records.sort_by(|a, b| a.step_id.cmp(&b.step_id));
    assert_eq!(records, [first_again, second]);
    assert_eq!(
        store.run(id).await.unwrap().unwrap().status,
        RunStatus::Succeeded
    );
    assert_eq!(store.requeue_expired(FAR_FUTURE).await.unwrap(), 0);
    assert_eq!(store.next_due().await.unwrap(), None);
}

/// A decision of `None` writes nothing but still ends the lease; a missing run reads as `None`.
pub(crate) async fn decide_none_writes_nothing_but_ends_the_lease(store: Arc<dyn Store>) {
    let f = flow("orders");
    let (new, claimed) = ingest_and_claim(&store, &f).await;
    let id = new.run.id;

    let unchanged = commit(&store, id, Some(claimed[0].id), &|_| None)
        .await
        .unwrap();
    assert_eq!(unchanged, Some(new.run.clone()));
    assert_eq!(store.run(id).await.unwrap(), Some(new.run));
    assert!(store.step_records(id).await.unwrap().is_empty());
    assert_eq!(
        store.requeue_expired(FAR_FUTURE).await.unwrap(),
        0,
        "the lease ended"
    );
    assert_eq!(store.next_due().await.unwrap(), None);

    // A run that does not exist: nothing decided, nothing written, the lease still ends.
    let other = new_run(&f, RunId::new(), at(200));
    ingest(&store, other).await;
    let claimed = claim_items(&store, at(200), 1, at(60_000), &FlowLimits::new())
        .await
        .unwrap();
    let never = |_: Run| -> Option<RunUpdate> { panic!("decide called for a missing run") };
    let missing = RunId::new();
    assert_eq!(
        commit(&store, missing, Some(claimed[0].id), &never)
            .await
            .unwrap(),
        None
    );
    assert_eq!(store.run(missing).await.unwrap(), None);
    assert_eq!(
        store.requeue_expired(FAR_FUTURE).await.unwrap(),
        0,
        "the lease ended"
    );
}

/// Many concurrent updates of one run, each appending to it: none is lost.
pub(crate) async fn concurrent_updates_of_one_run_lose_nothing(store: Arc<dyn Store>) {
    let f = flow("orders");
    let new = new_run(&f, RunId::new(), at(100));
    let id = new.run.id;
    ingest(&store, new).await;

    let mut tasks = JoinSet::new();
    for i in 0..40 {
        let store = store.clone();
        tasks.spawn(async move {
            let name = format!("s{i}");
            let decide = |mut run: Run| {
                run.steps
                    .push(StepProgress::new(step(&name), StepStatus::Succeeded));
                let records = vec![record(run.id, &name, json!(i))];
                Some(RunUpdate {
                    run,
                    records,
                    enqueue: vec![],
                    take: None,
                })
            };
            commit(&store, id, None, &decide)
                .await
                .unwrap()
                .expect("the run exists")
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let run = store.run(id).await.unwrap().unwrap();
    let appended: BTreeSet<String> = run
        .steps
        .iter()
        .skip(2)
        .map(|s| s.id.as_str().to_owned())
        .collect();
    let expected: BTreeSet<String> = (0..40).map(|i| format!("s{i}")).collect();
    assert_eq!(run.steps.len(), 42, "an update was lost or applied twice");
    assert_eq!(appended, expected);
    assert_eq!(store.step_records(id).await.unwrap().len(), 40);
}

/// `load_run` reads what `run`, `event` and `step_records` read; a missing run is `None`.
pub(crate) async fn load_run_reads_the_run_its_event_and_records(store: Arc<dyn Store>) {
    let f = flow("orders");
    let (new, claimed) = ingest_and_claim(&store, &f).await;
    let id = new.run.id;
    let first = record(id, "first", json!({ "plan": "PRO" }));
    let next = item(&f, id, "second", at(200));
    let written = commit(&store, id, Some(claimed[0].id), &|mut run: Run| {
        run.set_step_status(&step("first"), StepStatus::Succeeded);
        taking(run, &next, at(60_000)).map(|update| RunUpdate {
            records: vec![first.clone()],
            ..update
        })
    })
    .await
    .unwrap()
    .unwrap();

    let loaded = store.load_run(id).await.unwrap().expect("the run exists");
    assert_eq!(loaded.run, written);
    assert_eq!(loaded.event, Some(new.event));
    assert_eq!(loaded.records, [first]);
    assert!(store.load_run(RunId::new()).await.unwrap().is_none());

    // A claim that reads the item's run reads what `load_run` reads.
    let other = new_run(&f, RunId::new(), at(300));
    ingest(&store, other.clone()).await;
    let claimed = store
        .claim_due(ClaimRequest {
            owner: &node(),
            now: at(300),
            limit: 1,
            until: at(60_000),
            concurrency: &NO_LIMITS,
        })
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    if let Some(with_claim) = &claimed[0].run {
        let loaded = store.load_run(other.run.id).await.unwrap();
        assert_eq!(Some(with_claim), loaded.as_ref());
        assert_eq!(with_claim.run, other.run);
    }
}

/// A worker loads its run and goes on through several steps, each commit taking the next item;
/// a change another writer made in between (a callback) is seen by the next `decide`, not
/// overwritten; a lease lost after the load is refused with nothing written.
pub(crate) async fn updates_after_a_load_see_the_stored_run(store: Arc<dyn Store>) {
    let f = flow("orders");
    let (new, claimed) = ingest_and_claim(&store, &f).await;
    let id = new.run.id;
    store.load_run(id).await.unwrap().expect("the run exists");
    let second = item(&f, id, "second", at(200));
    let step_one = |mut run: Run| {
        run.status = RunStatus::Running;
        run.set_step_status(&step("first"), StepStatus::Succeeded);
        run.set_step_status(&step("second"), StepStatus::Queued);
        taking(run, &second, at(60_000))
    };
    let run = commit(&store, id, Some(claimed[0].id), &step_one)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(store.run(id).await.unwrap(), Some(run));

    // Another writer changes the run while the worker executes its second step.
    set_title(&store, id, "changed by a callback").await;
    let third = item(&f, id, "third", at(300));
    let seen = std::sync::Mutex::new(Vec::new());
    let step_two = |mut run: Run| {
        seen.lock().unwrap().push(run.title.clone());
        run.steps
            .push(StepProgress::new(step("third"), StepStatus::Queued));
        run.set_step_status(&step("second"), StepStatus::Succeeded);
        taking(run, &third, at(60_000)).map(|update| RunUpdate {
            records: vec![record(id, "second", json!(2))],
            ..update
        })
    };
    let run = commit(&store, id, Some(second.id), &step_two)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        seen.into_inner().unwrap().last(),
        Some(&Some("changed by a callback".to_owned())),
        "the last decision was made on the stored run"
    );
    assert_eq!(run.title.as_deref(), Some("changed by a callback"));
    assert_eq!(
        run.step_status(&step("second")),
        Some(StepStatus::Succeeded)
    );
    assert_eq!(store.run(id).await.unwrap(), Some(run.clone()));

    // The third step's lease expires and another node takes the item over: the worker's commit
    // is refused and writes nothing.
    assert_eq!(store.requeue_expired(FAR_FUTURE).await.unwrap(), 1);
    let other = NodeId::new("node-b").unwrap();
    let taken_over = store
        .claim_due(ClaimRequest {
            owner: &other,
            now: FAR_FUTURE,
            limit: 1,
            until: FAR_FUTURE,
            concurrency: &NO_LIMITS,
        })
        .await
        .unwrap();
    assert_eq!(
        item_ids(
            &taken_over
                .iter()
                .map(|c| c.item.clone())
                .collect::<Vec<_>>()
        ),
        [third.id]
    );
    let finish = |mut run: Run| {
        run.status = RunStatus::Succeeded;
        Some(RunUpdate {
            run,
            records: vec![record(id, "third", json!(3))],
            enqueue: vec![],
            take: None,
        })
    };
    let refused = commit(&store, id, Some(third.id), &finish).await;
    assert!(
        matches!(&refused, Err(StoreError::LeaseLost { item }) if *item == third.id),
        "{refused:?}"
    );
    assert_eq!(store.run(id).await.unwrap(), Some(run));
    assert_eq!(store.step_records(id).await.unwrap().len(), 1);
}

/// Many workers finish their runs at once (a backend may write them together): each run gets its
/// own outcome, and a run another writer changed since its worker loaded it is decided again on
/// the stored run, whatever happens to the others.
pub(crate) async fn workers_finishing_at_once_each_write_their_own_run(store: Arc<dyn Store>) {
    let f = flow("orders");
    let runs: Vec<NewRun> = (0..40)
        .map(|_| new_run(&f, RunId::new(), at(100)))
        .collect();
    ingest_all(&store, runs.clone()).await;
    let claimed = claim_items(&store, at(100), 40, at(60_000), &NO_LIMITS)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 40);
    for item in &claimed {
        store.load_run(item.run_id).await.unwrap().unwrap();
    }
    // Every fourth run is changed by another writer after its worker loaded it.
    let changed: BTreeSet<RunId> = claimed.iter().step_by(4).map(|i| i.run_id).collect();
    for id in &changed {
        set_title(&store, *id, "changed meanwhile").await;
    }
    let mut tasks = JoinSet::new();
    for item in claimed {
        let store = store.clone();
        tasks.spawn(async move {
            let finish = |mut run: Run| {
                run.status = RunStatus::Succeeded;
                run.set_step_status(&step("first"), StepStatus::Succeeded);
                let records = vec![record(run.id, "first", json!(run.id.to_string()))];
                Some(RunUpdate {
                    run,
                    records,
                    enqueue: vec![],
                    take: None,
                })
            };
            commit(&store, item.run_id, Some(item.id), &finish)
                .await
                .unwrap()
                .expect("the run exists")
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    for new in &runs {
        let id = new.run.id;
        let run = store.run(id).await.unwrap().unwrap();
        assert_eq!(run.status, RunStatus::Succeeded, "{id}");
        let title = changed
            .contains(&id)
            .then(|| "changed meanwhile".to_owned());
        assert_eq!(run.title, title, "{id}");
        let records = store.step_records(id).await.unwrap();
        assert_eq!(records, [record(id, "first", json!(id.to_string()))]);
    }
    assert_eq!(
        store.requeue_expired(FAR_FUTURE).await.unwrap(),
        0,
        "every lease ended"
    );
    assert_eq!(store.next_due().await.unwrap(), None);
}

/// Sets a run's title without a lease (as a callback's update would change a run).
async fn set_title(store: &Arc<dyn Store>, id: RunId, title: &str) {
    change_run(store, id, |run| run.title = Some(title.to_owned())).await;
}

/// Expired leases go back to the queue with their due time, and can be claimed again; leases
/// still running stay leased.
pub(crate) async fn requeue_expired_returns_ended_leases(store: Arc<dyn Store>) {
    let f = flow("orders");
    let runs: Vec<_> = (1..=3)
        .map(|n| new_run(&f, run_id(n), at(n as i64 * 100)))
        .collect();
    let due = |n: usize| runs[n - 1].items[0].clone();
    ingest_all(&store, runs.clone()).await;

    assert_eq!(
        claim_items(&store, at(200), 10, at(1_000), &FlowLimits::new())
            .await
            .unwrap(),
        [due(1), due(2)]
    );
    assert_eq!(
        claim_items(&store, at(300), 10, at(2_000), &FlowLimits::new())
            .await
            .unwrap(),
        [due(3)]
    );
    assert_eq!(store.next_due().await.unwrap(), None);
    assert_eq!(store.requeue_expired(at(999)).await.unwrap(), 0);
    assert_eq!(
        store.requeue_expired(at(1_000)).await.unwrap(),
        2,
        "ended at now counts"
    );
    assert_eq!(store.requeue_expired(at(1_000)).await.unwrap(), 0);
    assert_eq!(
        store.next_due().await.unwrap(),
        Some(at(100)),
        "the item keeps its due time"
    );

    let again = claim_items(&store, at(1_000), 10, at(3_000), &FlowLimits::new())
        .await
        .unwrap();
    assert_eq!(again, [due(1), due(2)], "the same items, unchanged");
    assert_eq!(store.requeue_expired(FAR_FUTURE).await.unwrap(), 3);
    let all = claim_items(&store, at(1_000), 10, at(3_000), &FlowLimits::new())
        .await
        .unwrap();
    assert_eq!(all, [due(1), due(2), due(3)]);
}

/// A commit (or a renewal) naming a lease the store no longer holds changes nothing and says so:
/// after its expired lease was taken over and claimed again, and after the item was finished.
pub(crate) async fn a_commit_on_a_lease_no_longer_held_is_refused(store: Arc<dyn Store>) {
    let f = flow("orders");
    let new = new_run(&f, RunId::new(), at(100));
    let id = new.run.id;
    ingest(&store, new).await;
    let request = |owner, now, until| ClaimRequest {
        owner,
        now,
        limit: 1,
        until,
        concurrency: &NO_LIMITS,
    };
    let a = NodeId::new("node-a").unwrap();
    let b = NodeId::new("node-b").unwrap();
    let stale = store
        .claim_due(request(&a, at(100), at(1_000)))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(stale.lease.owner, a);
    // Node a stalls past its lease; node b's recovery takes the item over and claims it.
    assert_eq!(store.requeue_expired(at(1_000)).await.unwrap(), 1);
    let fresh = store
        .claim_due(request(&b, at(1_000), at(60_000)))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(fresh.item.id, stale.item.id);
    assert_ne!(fresh.lease.token, stale.lease.token, "a new token");
    let finish = |mut run: Run| {
        run.status = RunStatus::Succeeded;
        Some(RunUpdate {
            run,
            records: vec![record(id, "first", json!({ "by": "a" }))],
            enqueue: vec![],
            take: None,
        })
    };
    let refused = store.update_run(id, Some(&stale.lease), &finish).await;
    assert!(
        matches!(&refused, Err(StoreError::LeaseLost { item }) if *item == stale.item.id),
        "{refused:?}"
    );
    assert!(!refused.unwrap_err().is_retryable());
    let renewed = store.renew(&stale.lease, at(90_000)).await;
    assert!(matches!(renewed, Err(StoreError::LeaseLost { .. })));
    assert_eq!(
        store.run(id).await.unwrap().unwrap().status,
        RunStatus::Queued
    );
    assert!(
        store.step_records(id).await.unwrap().is_empty(),
        "nothing written"
    );
    // The holder's commit is applied; after it, the same lease is refused too.
    store
        .update_run(id, Some(&fresh.lease), &finish)
        .await
        .unwrap()
        .expect("the run exists");
    assert_eq!(
        store.run(id).await.unwrap().unwrap().status,
        RunStatus::Succeeded
    );
    let again = store.update_run(id, Some(&fresh.lease), &|_| None).await;
    assert!(matches!(again, Err(StoreError::LeaseLost { .. })));
}

/// A lease is only taken over once it has expired; renewing it moves its expiry, so a running
/// step keeps its item however long it runs.
pub(crate) async fn an_expired_lease_is_handed_over_and_renewal_keeps_one(store: Arc<dyn Store>) {
    let f = flow("orders");
    ingest(&store, new_run(&f, RunId::new(), at(100))).await;
    let a = NodeId::new("node-a").unwrap();
    let claimed = store
        .claim_due(ClaimRequest {
            owner: &a,
            now: at(100),
            limit: 10,
            until: at(1_000),
            concurrency: &NO_LIMITS,
        })
        .await
        .unwrap()
        .remove(0);
    let renewed = store.renew(&claimed.lease, at(5_000)).await.unwrap();
    assert_eq!(renewed.until, at(5_000));
    assert_eq!(renewed.token, claimed.lease.token);
    assert_eq!(
        store.requeue_expired(at(4_999)).await.unwrap(),
        0,
        "a renewed lease is not taken over before its new expiry"
    );
    assert!(claim_items(&store, at(4_999), 10, at(60_000), &NO_LIMITS)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.requeue_expired(at(5_000)).await.unwrap(), 1);
    let handed = claim_items(&store, at(5_000), 10, at(60_000), &NO_LIMITS)
        .await
        .unwrap();
    assert_eq!(item_ids(&handed), [claimed.item.id]);
    commit(&store, claimed.item.run_id, Some(claimed.item.id), &|_| {
        None
    })
    .await
    .unwrap();
}

/// A flow's concurrency limit counts the items every node holds leased.
pub(crate) async fn a_flows_concurrency_counts_every_nodes_leases(store: Arc<dyn Store>) {
    let f = flow("orders");
    let runs: Vec<_> = (1..=4)
        .map(|n| new_run(&f, run_id(n), at(n as i64)))
        .collect();
    ingest_all(&store, runs).await;
    let limits = FlowLimits::from([(f.clone(), 2)]);
    let nodes = [
        NodeId::new("node-a").unwrap(),
        NodeId::new("node-b").unwrap(),
    ];
    let claim = |owner| ClaimRequest {
        owner,
        now: at(1_000),
        limit: 10,
        until: at(60_000),
        concurrency: &limits,
    };
    let mut got = Vec::new();
    for node in &nodes {
        got.extend(store.claim_due(claim(node)).await.unwrap());
    }
    assert_eq!(got.len(), 2, "two at once across both nodes");
    store
        .update_run(got[0].item.run_id, Some(&got[0].lease), &|_| None)
        .await
        .unwrap();
    let more = store.claim_due(claim(&nodes[1])).await.unwrap();
    assert_eq!(more.len(), 1, "a finished item frees its place");
}

/// Runs list newest first; the cursor pages through all of them without overlap.
pub(crate) async fn list_runs_pages_newest_first(store: Arc<dyn Store>) {
    let (a, b) = (flow("alpha"), flow("beta"));
    let runs: Vec<_> = (0..25)
        .map(|n| new_run(if n % 2 == 0 { &a } else { &b }, run_id(n), at(100)))
        .collect();
    ingest_all(&store, runs).await;
    let newest_first: Vec<RunId> = (0..25).rev().map(run_id).collect();

    let page = |limit, before| RunQuery {
        limit,
        before,
        ..RunQuery::default()
    };
    let first = store.list_runs(&page(10, None)).await.unwrap();
    assert_eq!(ids(&first.runs), newest_first[..10]);
    assert_eq!(first.next, Some(run_id(15)));
    let second = store.list_runs(&page(10, first.next)).await.unwrap();
    assert_eq!(
        ids(&second.runs),
        newest_first[10..20],
        "the cursor is exclusive"
    );
    let third = store.list_runs(&page(10, second.next)).await.unwrap();
    assert_eq!(ids(&third.runs), newest_first[20..]);
    assert_eq!(third.next, None, "a short page is the last");

    assert_eq!(
        all_pages(&store, page(5, None)).await,
        newest_first,
        "pages of exactly 5"
    );
    assert_eq!(all_pages(&store, page(1, None)).await, newest_first);
    let default = store.list_runs(&page(0, None)).await.unwrap();
    assert_eq!(
        ids(&default.runs),
        newest_first,
        "limit 0 means the default page size (50)"
    );
    assert_eq!(default.next, None);
    let huge = store.list_runs(&page(usize::MAX, None)).await.unwrap();
    assert_eq!(ids(&huge.runs), newest_first);

    // A cursor need not be a stored run.
    let between = RunId::from_ulid(Ulid::from_parts(1_700_000_000_000 + 10, 0));
    let from_between = store.list_runs(&page(3, Some(between))).await.unwrap();
    assert_eq!(ids(&from_between.runs), [run_id(9), run_id(8), run_id(7)]);
    let older_than_all = store.list_runs(&page(3, Some(run_id(0)))).await.unwrap();
    assert!(older_than_all.runs.is_empty());
    assert_eq!(older_than_all.next, None);
}

/// Flow and status filters, alone and together, with paging.
pub(crate) async fn list_runs_filters_by_flow_and_status(store: Arc<dyn Store>) {
    // `acme-eu` starts with `acme`: the flow filter must not mix them.
    let (acme, acme_eu) = (flow("acme"), flow("acme-eu"));
    let status_of = |n: u64| match n % 4 {
        0 => RunStatus::Failed,
        1 => RunStatus::Succeeded,
        2 => RunStatus::Running,
        _ => RunStatus::Queued,
    };
    let flow_of = |n: u64| if n % 3 == 0 { &acme_eu } else { &acme };
    ingest_all(
        &store,
        (0..30).map(|n| new_run(flow_of(n), run_id(n), at(100))),
    )
    .await;
    for n in 0..30 {
        if status_of(n) != RunStatus::Queued {
            set_status(&store, run_id(n), status_of(n)).await;
        }
    }

    let expect = |flow: Option<&FlowId>, status: Option<RunStatus>| -> Vec<RunId> {
        (0..30)
            .rev()
            .filter(|&n| flow.is_none_or(|f| flow_of(n) == f))
            .filter(|&n| status.is_none_or(|s| status_of(n) == s))
            .map(run_id)
            .collect()
    };
    let query = |flow: Option<&FlowId>, status, limit| RunQuery {
        flow_id: flow.cloned(),
        status,
        limit,
        ..RunQuery::default()
    };
    for flow in [None, Some(&acme), Some(&acme_eu)] {
        for status in [None, Some(RunStatus::Failed), Some(RunStatus::Queued)] {
            let want = expect(flow, status);
            let one_page = store.list_runs(&query(flow, status, 100)).await.unwrap();
            assert_eq!(
                ids(&one_page.runs),
                want,
                "flow {flow:?}, status {status:?}"
            );
            assert!(one_page
                .runs
                .iter()
                .all(|r| status.is_none_or(|s| r.status == s)));
            let paged = all_pages(&store, query(flow, status, 2)).await;
            assert_eq!(paged, want, "paged: flow {flow:?}, status {status:?}");
        }
    }
    let filtered = query(Some(&acme), Some(RunStatus::Filtered), 10);
    assert!(store.list_runs(&filtered).await.unwrap().runs.is_empty());
    let unknown = query(Some(&flow("nobody")), None, 10);
    assert!(store.list_runs(&unknown).await.unwrap().runs.is_empty());
}

/// A flow's hook token is the first one stored, for every later (and concurrent) caller.
pub(crate) async fn hook_token_is_stable_and_first_writer_wins(store: Arc<dyn Store>) {
    let (orders, refunds) = (flow("orders"), flow("refunds"));
    assert_eq!(store.hook_token(&orders, "tok-a").await.unwrap(), "tok-a");
    assert_eq!(store.hook_token(&orders, "tok-b").await.unwrap(), "tok-a");
    assert_eq!(store.hook_token(&refunds, "tok-c").await.unwrap(), "tok-c");
    assert_eq!(store.hook_token(&orders, "tok-d").await.unwrap(), "tok-a");

    let race = flow("race");
    let mut tasks = JoinSet::new();
    for i in 0..16 {
        let (store, race) = (store.clone(), race.clone());
        tasks.spawn(async move { store.hook_token(&race, &format!("cand-{i}")).await.unwrap() });
    }
    let mut tokens = BTreeSet::new();
    while let Some(token) = tasks.join_next().await {
        tokens.insert(token.unwrap());
    }
    assert_eq!(tokens.len(), 1, "callers got different tokens: {tokens:?}");
    let winner = tokens.pop_first().unwrap();
    assert!(winner.starts_with("cand-"));
    assert_eq!(store.hook_token(&race, "late").await.unwrap(), winner);
}

/// Revisions are kept per flow and read back exactly.
pub(crate) async fn revisions_are_kept_per_flow(store: Arc<dyn Store>) {
    let (orders, refunds) = (flow("orders"), flow("refunds"));
    let source = "id: orders\nsteps:\n  - id: shape\n    map: { a: \"ü\" }\n";
    let rev = Revision::of(source);
    store.put_revision(&orders, &rev, source).await.unwrap();
    store.put_revision(&orders, &rev, source).await.unwrap();
    assert_eq!(
        store.revision(&orders, &rev).await.unwrap().as_deref(),
        Some(source)
    );
    assert_eq!(store.revision(&refunds, &rev).await.unwrap(), None);
    assert_eq!(
        store
            .revision(&orders, &Revision::of("other"))
            .await
            .unwrap(),
        None
    );

    let newer = "id: orders\nsteps: []\n";
    store
        .put_revision(&orders, &Revision::of(newer), newer)
        .await
        .unwrap();
    assert_eq!(
        store.revision(&orders, &rev).await.unwrap().as_deref(),
        Some(source)
    );
}

/// Everything written survives closing and reopening the store; once their leases have expired
/// (`requeue_expired` at a time past them), items leased before are claimable again.
pub(crate) async fn everything_survives_reopen(open: Open<'_>) {
    let f = flow("orders");
    let runs: Vec<_> = (1..=3)
        .map(|n| new_run(&f, run_id(n), at(n as i64 * 100)))
        .collect();
    let mut third = runs[2].clone();
    let late = item(&third.run.flow_id, third.run.id, "second", at(10_000));
    third.items.push(late.clone());
    let source = "id: orders\n";
    let rev = Revision::of(source);
    let first_record = record(run_id(2), "first", json!({ "ok": true }));

    let store = open();
    ingest_all(&store, [runs[0].clone(), runs[1].clone(), third.clone()]).await;
    assert_eq!(
        claim_items(&store, at(100), 1, at(50_000), &FlowLimits::new())
            .await
            .unwrap(),
        runs[0].items
    );
    let decide = |mut run: Run| {
        run.status = RunStatus::Running;
        Some(RunUpdate {
            run,
            records: vec![first_record.clone()],
            enqueue: vec![],
            take: None,
        })
    };
    let updated = commit(&store, run_id(2), None, &decide)
        .await
        .unwrap()
        .unwrap();
    let token = store.hook_token(&f, "tok-1").await.unwrap();
    store.put_revision(&f, &rev, source).await.unwrap();
    store.flush().await.unwrap();
    drop(store);

    let store = open();
    for new in [&runs[0], &runs[1], &third] {
        assert_eq!(
            store.event(new.event.id).await.unwrap().as_ref(),
            Some(&new.event)
        );
    }
    assert_eq!(
        store.run(run_id(1)).await.unwrap(),
        Some(runs[0].run.clone())
    );
    assert_eq!(store.run(run_id(2)).await.unwrap(), Some(updated));
    assert_eq!(store.step_records(run_id(2)).await.unwrap(), [first_record]);
    let listed = store.list_runs(&RunQuery::default()).await.unwrap();
    assert_eq!(ids(&listed.runs), [run_id(3), run_id(2), run_id(1)]);
    let by_flow = RunQuery {
        flow_id: Some(f.clone()),
        ..RunQuery::default()
    };
    assert_eq!(store.list_runs(&by_flow).await.unwrap().runs.len(), 3);
    assert_eq!(store.hook_token(&f, "tok-2").await.unwrap(), token);
    assert_eq!(
        store.revision(&f, &rev).await.unwrap().as_deref(),
        Some(source)
    );

    // Queued items are still queued; the leased one is recovered (its lease may have ended with
    // the store, or survive until recovered).
    store.requeue_expired(FAR_FUTURE).await.unwrap();
    assert_eq!(store.next_due().await.unwrap(), Some(at(100)));
    let claimed = claim_items(&store, at(300), 10, at(60_000), &FlowLimits::new())
        .await
        .unwrap();
    let expected = [&runs[0].items[0], &runs[1].items[0], &third.items[0]];
    assert_eq!(claimed.iter().collect::<Vec<_>>(), expected);
    assert_eq!(store.next_due().await.unwrap(), Some(late.due_at));
    drop(store);

    let store = open();
    store.requeue_expired(FAR_FUTURE).await.unwrap();
    assert_eq!(
        claim_items(&store, FAR_FUTURE, 10, FAR_FUTURE, &FlowLimits::new())
            .await
            .unwrap()
            .len(),
        4
    );
}

/// Many concurrent ingests all succeed and are all kept.
pub(crate) async fn concurrent_ingests_are_all_kept(store: Arc<dyn Store>) {
    let f = flow("orders");
    let runs: Vec<_> = (0..64).map(|n| new_run(&f, run_id(n), at(100))).collect();
    ingest_all(&store, runs.clone()).await;
    for new in &runs {
        assert_eq!(
            store.run(new.run.id).await.unwrap().as_ref(),
            Some(&new.run)
        );
    }
    let all = RunQuery {
        limit: 100,
        ..RunQuery::default()
    };
    assert_eq!(store.list_runs(&all).await.unwrap().runs.len(), 64);
    // A claim may miss runs that are moving to sled's trees at that moment (a store may keep new
    // runs in memory first); the next claim gets them. Every item is claimed once.
    let mut claimed = std::collections::HashSet::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while claimed.len() < 64 {
        assert!(
            std::time::Instant::now() < deadline,
            "claimed only {}",
            claimed.len()
        );
        for item in claim_items(&store, at(100), 100, at(1_000), &FlowLimits::new())
            .await
            .unwrap()
        {
            assert!(claimed.insert(item.id), "{} claimed twice", item.id);
        }
    }
}

/// A small deterministic pseudo-random generator (SplitMix64), so model runs are reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The store's queue, leases and runs as plain collections.
#[derive(Default)]
struct Model {
    /// Queued items by (due time, id): the claim order.
    queued: BTreeMap<(Timestamp, ItemId), QueueItem>,
    leased: HashMap<ItemId, (Timestamp, QueueItem)>,
    runs: BTreeMap<RunId, Run>,
}

/// Random operations (ingest, claim, update, requeue, reopen) against the store and a model;
/// after each, the store's answers match the model's. `seed` picks the sequence.
pub(crate) async fn matches_a_simple_model(open: Open<'_>, seed: u64, steps: usize) {
    let mut rng = Rng(seed);
    let mut model = Model::default();
    let mut store = open();
    let f = flow("model");
    let mut next_run = 0;
    for op in 0..steps {
        let now = at(rng.below(1_000) as i64);
        match rng.below(10) {
            0..=2 => {
                next_run += 1;
                let new = new_run(&f, run_id(next_run), at(rng.below(1_000) as i64));
                ingest(&store, new.clone()).await;
                model.runs.insert(new.run.id, new.run);
                for item in new.items {
                    model.queued.insert((item.due_at, item.id), item);
                }
            }
            3..=4 => {
                let limit = rng.below(4) as usize;
                let lease_until = now.plus(std::time::Duration::from_millis(rng.below(500)));
                let claimed = claim_items(&store, now, limit, lease_until, &FlowLimits::new())
                    .await
                    .unwrap();
                let expected: Vec<_> = model
                    .queued
                    .range(..=(now, ItemId::from_bytes([0xff; 16])))
                    .take(limit)
                    .map(|(key, item)| (*key, item.clone()))
                    .collect();
                assert_eq!(
                    claimed,
                    expected.iter().map(|(_, i)| i.clone()).collect::<Vec<_>>()
                );
                for (key, item) in expected {
                    model.queued.remove(&key);
                    model.leased.insert(item.id, (lease_until, item));
                }
            }
            5..=6 if !model.leased.is_empty() => {
                // Finish a leased item: mark its step done and maybe enqueue a follow-up.
                let mut leased: Vec<_> = model.leased.keys().copied().collect();
                leased.sort();
                let done = leased[rng.below(leased.len() as u64) as usize];
                let (_, item) = model.leased.remove(&done).unwrap();
                let follow_up = (rng.below(2) == 0).then(|| {
                    let due = now.plus(std::time::Duration::from_millis(rng.below(300)));
                    QueueItem {
                        attempt: item.attempt + 1,
                        ..self::item(&item.flow_id, item.run_id, "second", due)
                    }
                });
                let status = [RunStatus::Running, RunStatus::Succeeded][rng.below(2) as usize];
                let decide = |mut run: Run| {
                    run.status = status;
                    run.updated_at = now;
                    Some(RunUpdate {
                        run,
                        records: vec![],
                        enqueue: follow_up.iter().cloned().collect(),
                        take: None,
                    })
                };
                let written = commit(&store, item.run_id, Some(done), &decide)
                    .await
                    .unwrap();
                let run = model.runs.get_mut(&item.run_id).unwrap();
                run.status = status;
                run.updated_at = now;
                assert_eq!(written.as_ref(), Some(&*run));
                if let Some(next) = follow_up {
                    model.queued.insert((next.due_at, next.id), next);
                }
            }
            7 => {
                let moved = store.requeue_expired(now).await.unwrap();
                let expired: Vec<ItemId> = model
                    .leased
                    .iter()
                    .filter(|(_, (until, _))| *until <= now)
                    .map(|(id, _)| *id)
                    .collect();
                assert_eq!(moved, expired.len(), "op {op}");
                for id in expired {
                    let (_, item) = model.leased.remove(&id).unwrap();
                    model.queued.insert((item.due_at, item.id), item);
                }
            }
            8 => {
                // A restart: what was leased is due again (whether the backend's leases ended
                // with it or start-up recovers them).
                drop(store);
                store = open();
                store.requeue_expired(FAR_FUTURE).await.unwrap();
                for (_, (_, item)) in model.leased.drain() {
                    model.queued.insert((item.due_at, item.id), item);
                }
            }
            _ => {
                let want = model.queued.keys().next().map(|(due, _)| *due);
                assert_eq!(store.next_due().await.unwrap(), want, "op {op}");
                let status = [None, Some(RunStatus::Running), Some(RunStatus::Succeeded)]
                    [rng.below(3) as usize];
                let query = RunQuery {
                    status,
                    limit: 3,
                    ..RunQuery::default()
                };
                let listed = all_pages(&store, query).await;
                let expected: Vec<RunId> = model
                    .runs
                    .values()
                    .rev()
                    .filter(|r| status.is_none_or(|s| r.status == s))
                    .map(|r| r.id)
                    .collect();
                assert_eq!(listed, expected, "op {op}");
            }
        }
    }
    for run in model.runs.values() {
        assert_eq!(store.run(run.id).await.unwrap().as_ref(), Some(run));
    }
}

/// A dedupe key starts one run per flow until it expires, also under concurrent deliveries;
/// expired keys are forgotten and can be taken again.
pub(crate) async fn dedupe_keys_start_one_run_until_they_expire(store: Arc<dyn Store>) {
    let orders = flow("orders");
    let keyed = |n: u64, received: i64, expires: i64| {
        let mut new = new_run(&orders, run_id(n), at(received));
        new.dedupe = Some(DedupeKey {
            key: "evt_1".into(),
            expires_at: at(expires),
        });
        new
    };
    let original = keyed(1, 100, 1_000);
    assert_eq!(ingest(&store, original.clone()).await, Ingested::Created);
    let repeat = keyed(2, 999, 1_999);
    assert_eq!(
        ingest(&store, repeat.clone()).await,
        Ingested::Duplicate {
            event_id: original.event.id,
            run_id: original.run.id,
        }
    );
    assert_eq!(
        store.run(repeat.run.id).await.unwrap(),
        None,
        "a duplicate stores no run"
    );
    assert_eq!(store.event(repeat.event.id).await.unwrap(), None);

    // Another flow may use the same key; the original's key has expired at 1000.
    let mut other = new_run(&flow("leads"), run_id(3), at(500));
    other.dedupe = original.dedupe.clone();
    assert_eq!(ingest(&store, other).await, Ingested::Created);
    let later = keyed(4, 1_000, 2_000);
    assert_eq!(ingest(&store, later.clone()).await, Ingested::Created);

    // Ten concurrent deliveries of a new key: one run.
    let mut tasks = JoinSet::new();
    for n in 0..10 {
        let store = store.clone();
        let mut new = new_run(&orders, run_id(10 + n), at(1_500));
        new.dedupe = Some(DedupeKey {
            key: "evt_2".into(),
            expires_at: at(5_000),
        });
        tasks.spawn(async move { ingest(&store, new).await });
    }
    let outcomes = tasks.join_all().await;
    let created = outcomes.iter().filter(|o| **o == Ingested::Created).count();
    assert_eq!(created, 1, "{outcomes:?}");

    // At 2000 the second take of evt_1 (and the leads flow's key) have expired; evt_2 has not.
    // A store may hold the keys of new runs apart until it has written the runs: the expired
    // ones are forgotten as they arrive.
    let mut expired = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while expired < 1 && std::time::Instant::now() < deadline {
        expired += store.expire_dedupe(at(1_999), 100).await.unwrap();
        tokio::task::yield_now().await;
    }
    assert_eq!(expired, 1, "the leads key");
    while expired < 2 && std::time::Instant::now() < deadline {
        expired += store.expire_dedupe(at(2_000), 100).await.unwrap();
        tokio::task::yield_now().await;
    }
    assert_eq!(expired, 2, "the second take of evt_1");
    assert_eq!(store.expire_dedupe(at(2_000), 100).await.unwrap(), 0);
    assert_eq!(
        ingest(&store, keyed(30, 1_900, 3_000)).await,
        Ingested::Created,
        "a forgotten key is free"
    );
    let mut again = new_run(&orders, run_id(31), at(4_000));
    again.dedupe = Some(DedupeKey {
        key: "evt_2".into(),
        expires_at: at(9_000),
    });
    assert!(matches!(
        ingest(&store, again).await,
        Ingested::Duplicate { .. }
    ));
}

/// Flows share a claim's limit, and a flow's concurrency limit caps its leased items (counting
/// those leased by earlier claims).
pub(crate) async fn claims_are_shared_between_flows_within_their_room(store: Arc<dyn Store>) {
    let (busy, quiet) = (flow("busy"), flow("quiet"));
    let runs = (1..=10)
        .map(|n| new_run(&busy, run_id(n), at(n as i64)))
        .chain((11..=12).map(|n| new_run(&quiet, run_id(n), at(100 + n as i64))));
    ingest_all(&store, runs).await;
    assert_eq!(store.next_due().await.unwrap(), Some(at(1)));
    let lease = at(100_000);
    let count = |items: &[QueueItem], f: &FlowId| items.iter().filter(|i| &i.flow_id == f).count();

    let got = claim_items(&store, at(1_000), 4, lease, &FlowLimits::new())
        .await
        .unwrap();
    assert_eq!(
        (count(&got, &busy), count(&got, &quiet)),
        (2, 2),
        "an equal share each"
    );
    assert_eq!(got[0].due_at, at(1), "oldest due first within a flow");

    // Two of `busy` are leased: a limit of 3 leaves room for one more, then none.
    let limits = FlowLimits::from([(busy.clone(), 3)]);
    let got = claim_items(&store, at(1_000), 10, lease, &limits)
        .await
        .unwrap();
    assert_eq!((count(&got, &busy), count(&got, &quiet)), (1, 0));
    assert!(claim_items(&store, at(1_000), 10, lease, &limits)
        .await
        .unwrap()
        .is_empty());
    let got = claim_items(&store, at(1_000), 10, lease, &FlowLimits::new())
        .await
        .unwrap();
    assert_eq!(
        count(&got, &busy),
        7,
        "what a share leaves goes to whoever has more"
    );
}

/// `since` and `until` select runs by creation time (inclusive, exclusive), with any filter.
pub(crate) async fn list_runs_selects_a_time_window(store: Arc<dyn Store>) {
    let (a, b) = (flow("a"), flow("b"));
    let base = 1_700_000_000_000;
    ingest_all(
        &store,
        (1..=9).map(|n| {
            new_run(
                if n % 2 == 0 { &a } else { &b },
                run_id(n),
                at(base + n as i64),
            )
        }),
    )
    .await;
    let window = |flow: Option<&FlowId>, since: u64, until: u64, limit| RunQuery {
        flow_id: flow.cloned(),
        since: Some(at(base + since as i64)),
        until: Some(at(base + until as i64)),
        limit,
        ..RunQuery::default()
    };
    assert_eq!(
        all_pages(&store, window(None, 3, 7, 2)).await,
        [6, 5, 4, 3].map(run_id)
    );
    assert_eq!(
        all_pages(&store, window(Some(&a), 3, 9, 1)).await,
        [8, 6, 4].map(run_id)
    );
    assert!(all_pages(&store, window(Some(&b), 4, 5, 10))
        .await
        .is_empty());
}

/// Pruning deletes final runs older than the cutoff or beyond the newest `keep`, with their
/// events and records, oldest first and at most `max`; it never deletes a run still going.
pub(crate) async fn pruning_deletes_old_and_excess_final_runs_only(store: Arc<dyn Store>) {
    let (orders, leads) = (flow("orders"), flow("leads"));
    let runs: Vec<_> = (1..=6)
        .map(|n| new_run(&orders, run_id(n), at(n as i64 * 100)))
        .collect();
    ingest_all(&store, runs.clone()).await;
    ingest_all(&store, [new_run(&leads, run_id(7), at(50))]).await;
    for n in [1, 3, 4, 5, 6] {
        set_status(&store, run_id(n), RunStatus::Succeeded).await;
    }
    let with_record = run_id(1);
    commit(&store, with_record, None, &|run| {
        Some(RunUpdate {
            records: vec![record(run.id, "first", json!(1))],
            run,
            enqueue: vec![],
            take: None,
        })
    })
    .await
    .unwrap();
    let mut flows = store.flows_with_runs().await.unwrap();
    flows.sort();
    assert_eq!(flows, [leads.clone(), orders.clone()]);

    // Older than 350: runs 1, 2, 3 — but 2 is still queued.
    assert_eq!(
        store.prune_runs(&orders, at(350), 100, 1).await.unwrap(),
        1,
        "at most max"
    );
    assert_eq!(store.run(with_record).await.unwrap(), None);
    assert_eq!(store.event(runs[0].event.id).await.unwrap(), None);
    assert!(store.step_records(with_record).await.unwrap().is_empty());
    assert_eq!(
        store.prune_runs(&orders, at(350), 100, 10).await.unwrap(),
        1
    );
    assert!(
        store.run(run_id(2)).await.unwrap().is_some(),
        "a queued run is kept"
    );
    // Keep the newest 2 of the 4 left (2, 4, 5, 6): 4 goes, 2 is not final.
    assert_eq!(store.prune_runs(&orders, at(0), 2, 10).await.unwrap(), 1);
    let left = all_pages(
        &store,
        RunQuery {
            flow_id: Some(orders.clone()),
            limit: 10,
            ..RunQuery::default()
        },
    )
    .await;
    assert_eq!(left, [6, 5, 2].map(run_id));
    assert!(
        store.run(run_id(7)).await.unwrap().is_some(),
        "other flows are untouched"
    );
    assert_eq!(store.prune_runs(&orders, at(0), 2, 10).await.unwrap(), 0);
}

/// Runtime state: the last write under a key wins, keys are independent, and it survives reopen.
pub(crate) async fn state_is_kept_across_reopen(open: Open<'_>) {
    let store = open();
    assert_eq!(store.state("pacing:a").await.unwrap(), None);
    store
        .put_state("pacing:a", &json!({ "until": 1 }))
        .await
        .unwrap();
    store
        .put_state("pacing:a", &json!({ "until": 2 }))
        .await
        .unwrap();
    store.put_state("pacing:b", &json!("other")).await.unwrap();
    drop(store);
    let store = open();
    assert_eq!(
        store.state("pacing:a").await.unwrap(),
        Some(json!({ "until": 2 }))
    );
    assert_eq!(store.state("pacing:b").await.unwrap(), Some(json!("other")));
}

/// `init_state`: of concurrent callers with different values, every one gets the first value
/// stored, and it survives reopen.
pub(crate) async fn init_state_keeps_the_first_value(open: Open<'_>) {
    let store = open();
    let mut tasks = JoinSet::new();
    for i in 0..8 {
        let store = store.clone();
        tasks.spawn(async move { store.init_state("secret", &json!(i)).await.unwrap() });
    }
    let got: Vec<serde_json::Value> = tasks.join_all().await;
    assert!(got.iter().all(|v| v == &got[0]), "callers got {got:?}");
    assert_eq!(store.state("secret").await.unwrap().as_ref(), Some(&got[0]));
    drop(store);
    let store = open();
    assert_eq!(
        store.init_state("secret", &json!("late")).await.unwrap(),
        got[0]
    );
}

/// Stats count queued and leased items, and report some bytes.
pub(crate) async fn stats_count_the_queue(store: Arc<dyn Store>) {
    let f = flow("stats");
    ingest_all(
        &store,
        (1..=3).map(|n| new_run(&f, run_id(n), at(n as i64))),
    )
    .await;
    assert_eq!(store.stats().await.unwrap().queued, 3);
    let claimed = claim_items(&store, at(10), 1, FAR_FUTURE, &FlowLimits::default())
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(
        store.stats().await.unwrap().queued,
        3,
        "leased items count too"
    );
}

/// A backend under test: where its data lives for one check, and how to open a store on it.
pub(crate) trait Backend {
    /// A fresh, empty place for a store's data (a directory, a database), gone when dropped.
    type Place: Send + Sync;

    /// A new place.
    fn place() -> Self::Place;

    /// Opens a store on the place's data; the caller drops the previous store first.
    fn open(place: &Self::Place) -> Arc<dyn Store>;
}

/// Generates one test per check of the suite for a [`Backend`]: a backend runs the whole suite
/// with `conformance_suite!(MyBackend);` inside a test module.
macro_rules! conformance_suite {
    ($backend:ty) => {
        $crate::store::conformance::conformance_suite!(@fresh $backend;
            ingest_then_read_back,
            runs_with_step_records_are_ingested_as_written,
            next_due_is_the_earliest_queued_item_of_any_flow,
            claim_respects_due_time_and_limit,
            items_freed_or_queued_before_leased_ones_are_claimed_next,
            claimed_items_are_never_claimed_twice,
            update_run_writes_atomically_and_ends_the_lease,
            taken_items_are_leased_to_the_caller,
            claims_racing_updates_never_get_taken_items,
            decide_none_writes_nothing_but_ends_the_lease,
            concurrent_updates_of_one_run_lose_nothing,
            load_run_reads_the_run_its_event_and_records,
            updates_after_a_load_see_the_stored_run,
            workers_finishing_at_once_each_write_their_own_run,
            requeue_expired_returns_ended_leases,
            a_commit_on_a_lease_no_longer_held_is_refused,
            an_expired_lease_is_handed_over_and_renewal_keeps_one,
            a_flows_concurrency_counts_every_nodes_leases,
            list_runs_pages_newest_first,
            list_runs_filters_by_flow_and_status,
            hook_token_is_stable_and_first_writer_wins,
            revisions_are_kept_per_flow,
            concurrent_ingests_are_all_kept,
            dedupe_keys_start_one_run_until_they_expire,
            claims_are_shared_between_flows_within_their_room,
            list_runs_selects_a_time_window,
            pruning_deletes_old_and_excess_final_runs_only,
            stats_count_the_queue,
            lanes_admit_their_concurrency_until_given_back_or_expired,
            lanes_honour_their_gap,
            lanes_admit_waiters_in_turn_order,
            racing_entries_take_at_most_concurrency_places,
            pacing_admits_at_most_max_per_window,
            pacing_honours_blocked_until,
            one_caller_claims_each_tick,
            logs_read_newest_first_in_pages_and_filter,
            logs_are_pruned_by_age_and_count,
            storage_increments_from_racing_callers_all_count,
            storage_appends_from_racing_callers_keep_every_element,
            storage_entries_expire_at_their_time,
            storage_namespaces_are_isolated,
            storage_refusals_change_nothing,
            storage_a_repeated_operation_key_applies_once,
        );
        $crate::store::conformance::conformance_suite!(@reopen $backend;
            state_is_kept_across_reopen,
            init_state_keeps_the_first_value,
            everything_survives_reopen,
            pacing_waits_survive_reopen,
            claimed_ticks_survive_reopen,
            logs_survive_reopen,
            storage_survives_reopen,
        );

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn matches_a_simple_model() {
            for seed in 1..=4 {
                let place = <$backend as $crate::store::conformance::Backend>::place();
                let open = || <$backend as $crate::store::conformance::Backend>::open(&place);
                $crate::store::conformance::matches_a_simple_model(&open, seed, 150).await;
            }
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn two_runtimes_on_one_store_share_a_named_queues_lane() {
            let place = <$backend as $crate::store::conformance::Backend>::place();
            let store = <$backend as $crate::store::conformance::Backend>::open(&place);
            $crate::runtime::tests::two_runtimes_on_one_store_share_a_named_queues_lane(store)
                .await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_serial_queue_keeps_its_order_with_two_runtimes() {
            let place = <$backend as $crate::store::conformance::Backend>::place();
            let store = <$backend as $crate::store::conformance::Backend>::open(&place);
            $crate::runtime::tests::a_serial_queue_keeps_its_order_with_two_runtimes(store).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn two_runtimes_on_one_store_never_both_execute_a_step() {
            let place = <$backend as $crate::store::conformance::Backend>::place();
            let store = <$backend as $crate::store::conformance::Backend>::open(&place);
            $crate::runtime::tests::two_runtimes_on_one_store_never_both_execute_a_step(store)
                .await;
        }
    };
    (@fresh $backend:ty; $($check:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $check() {
            let place = <$backend as $crate::store::conformance::Backend>::place();
            let store = <$backend as $crate::store::conformance::Backend>::open(&place);
            $crate::store::conformance::$check(store).await;
        }
    )*};
    (@reopen $backend:ty; $($check:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $check() {
            let place = <$backend as $crate::store::conformance::Backend>::place();
            let open = || <$backend as $crate::store::conformance::Backend>::open(&place);
            $crate::store::conformance::$check(&open).await;
        }
    )*};
}

pub(crate) use conformance_suite;
