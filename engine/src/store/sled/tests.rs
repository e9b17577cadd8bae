//! Tests of the sled store's internals (the behaviour every store shares is in `conformance.rs`).

use super::layout::describe_key;
use super::*;

/// The tree names are part of the on-disk format: changing one loses data.
#[test]
fn tree_names_are_fixed_and_distinct() {
    let all = [
        TreeName::Events,
        TreeName::Runs,
        TreeName::RunsByFlow,
        TreeName::StepRecords,
        TreeName::Queue,
        TreeName::Leases,
        TreeName::HookTokens,
        TreeName::Revisions,
        TreeName::Dedupe,
        TreeName::DedupeExpiry,
    ];
    let names: Vec<_> = all.iter().map(|t| t.name()).collect();
    assert_eq!(
        names,
        [
            "events",
            "runs",
            "runs_by_flow",
            "step_records",
            "flow_queue",
            "leases",
            "hook_tokens",
            "revisions",
            "dedupe",
            "dedupe_expiry"
        ]
    );
    assert!(!names.contains(&"queue"), "a retired name");
}

#[test]
fn queue_keys_sort_by_due_time_then_id() {
    let item = |flow: &str, due: i64| QueueItem {
        id: ItemId::new(),
        run_id: RunId::new(),
        flow_id: flow.parse().unwrap(),
        step_id: "s".parse().unwrap(),
        attempt: 1,
        due_at: Timestamp(due),
    };
    let (a, b, c) = (item("f", 5), item("f", 256), item("f", 70_000));
    assert!(queue_key(&a) < queue_key(&b));
    assert!(queue_key(&b) < queue_key(&c));
    assert_eq!(queue_key(&item("f", -3))[2..10], [0; 8]);
    // One flow's items sort together, before the next flow's, however late they are due.
    assert!(queue_key(&item("f", i64::MAX)) < queue_key(&item("f-", 0)));
}

#[test]
fn leases_an_earlier_version_stored_are_requeued() {
    let db = base_config(DEFAULT_CACHE_BYTES, false)
        .temporary(true)
        .open()
        .unwrap();
    let leases = db.open_tree(TreeName::Leases.name()).unwrap();
    let queue = db.open_tree(TreeName::Queue.name()).unwrap();
    let item = QueueItem {
        id: ItemId::new(),
        run_id: RunId::new(),
        flow_id: "f".parse().unwrap(),
        step_id: "s".parse().unwrap(),
        attempt: 2,
        due_at: Timestamp(5),
    };
    let lease = StoredLease {
        lease_until: Timestamp(60_000),
        item: item.clone(),
    };
    leases
        .insert(item.id.to_bytes(), serde_json::to_vec(&lease).unwrap())
        .unwrap();
    assert_eq!(requeue_stored_leases(&leases, &queue).unwrap(), 1);
    assert!(leases.is_empty());
    let queued = queue.get(queue_key(&item)).unwrap().unwrap();
    assert_eq!(serde_json::from_slice::<QueueItem>(&queued).unwrap(), item);
    assert_eq!(requeue_stored_leases(&leases, &queue).unwrap(), 0);
}

#[test]
fn keys_are_described_readably() {
    let run = RunId::new();
    let flow: FlowId = "plan-sync".parse().unwrap();
    assert_eq!(
        describe_key(TreeName::Runs, &run.to_bytes()),
        run.to_string()
    );
    assert_eq!(
        describe_key(TreeName::RunsByFlow, &flow_key(&flow, &run.to_bytes())),
        format!("plan-sync {run}")
    );
    assert_eq!(describe_key(TreeName::Runs, b"\x01\x02"), "0102");
}

#[tokio::test]
async fn a_corrupt_record_is_reported_with_tree_and_key() {
    let store = SledStore::temporary().unwrap();
    let id = RunId::new();
    store
        .new_runs
        .runs
        .insert(id.to_bytes(), &b"{not json"[..])
        .unwrap();
    match store.run(id).await {
        Err(StoreError::Corrupt { tree, detail }) => {
            assert_eq!(tree, "runs");
            assert!(detail.contains(&id.to_string()), "{detail}");
        }
        other => panic!("expected a corrupt-record error, got {other:?}"),
    }
}

/// Three callers, one flush in progress when the other two arrive: the two share the next
/// flush, and nobody returns before a flush that started after its ticket.
#[tokio::test]
async fn group_commit_shares_one_flush_between_waiters() {
    use std::sync::Arc;
    use std::sync::Mutex;

    let commit = Arc::new(GroupCommit::default());
    // Each flush records the highest ticket taken when it started.
    let flushes = Arc::new(Mutex::new(Vec::<u64>::new()));
    let (release_first, first_released) = tokio::sync::oneshot::channel::<()>();

    // A caller whose flush records the highest ticket taken when it started, then waits for
    // `gate` (if any) before reporting success.
    let waiter = |commit: Arc<GroupCommit>,
                  flushes: Arc<Mutex<Vec<u64>>>,
                  gate: Option<tokio::sync::oneshot::Receiver<()>>| async move {
        let started = commit.clone();
        commit
            .wait_durable(|| async move {
                flushes
                    .lock()
                    .unwrap()
                    .push(started.requested.load(Ordering::SeqCst));
                if let Some(gate) = gate {
                    gate.await.unwrap();
                }
                Ok(())
            })
            .await
    };
    let first = tokio::spawn(waiter(
        commit.clone(),
        flushes.clone(),
        Some(first_released),
    ));
    // Let the first caller take ticket 1 and start its (blocked) flush.
    while flushes.lock().unwrap().is_empty() {
        tokio::task::yield_now().await;
    }
    let second = tokio::spawn(waiter(commit.clone(), flushes.clone(), None));
    let third = tokio::spawn(waiter(commit.clone(), flushes.clone(), None));
    while commit.requested.load(Ordering::SeqCst) < 3 {
        tokio::task::yield_now().await;
    }
    assert!(!second.is_finished() && !third.is_finished());
    release_first.send(()).unwrap();
    for task in [first, second, third] {
        task.await.unwrap().unwrap();
    }
    assert_eq!(
        *flushes.lock().unwrap(),
        [1, 3],
        "one flush for ticket 1, one for 2 and 3"
    );
    assert_eq!(commit.flushed.load(Ordering::SeqCst), 3);
}

/// Once a flow's token is on disk, asking for it again is a read: no flush.
#[tokio::test]
async fn a_durable_hook_token_is_read_without_a_flush() {
    let store = SledStore::temporary().unwrap();
    let flow_id: FlowId = "orders".parse().unwrap();
    assert_eq!(store.hook_token(&flow_id, "tok-a").await.unwrap(), "tok-a");
    let flushes = store.commit.requested.load(Ordering::SeqCst);
    assert_eq!(store.hook_token(&flow_id, "tok-b").await.unwrap(), "tok-a");
    assert_eq!(store.commit.requested.load(Ordering::SeqCst), flushes);
    let other: FlowId = "refunds".parse().unwrap();
    assert_eq!(store.hook_token(&other, "tok-c").await.unwrap(), "tok-c");
    assert_eq!(store.commit.requested.load(Ordering::SeqCst), flushes + 1);
}

const CRASH_DIR: &str = "HOOKFLOW_TEST_CRASH_DIR";

/// Acknowledged ingests survive the process dying with no shutdown at all (`abort`: no
/// destructors, no final flush, sled's background flusher off), as after `kill -9`. The
/// child is this test binary, run again. (The OS keeps what was written, so this cannot tell
/// an fsync from a plain write: losing power is not simulated. The group-commit tests and
/// the order of calls in `ingest` cover the fsync.)
#[test]
fn acknowledged_ingests_survive_an_abort() {
    if let Some(dir) = std::env::var_os(CRASH_DIR) {
        crash_after_ingesting(Path::new(&dir));
    }
    let dir = tempfile::tempdir().unwrap();
    let this_test = module_path!()
        .split_once("::")
        .map(|(_crate, path)| format!("{path}::acknowledged_ingests_survive_an_abort"))
        .unwrap();
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            this_test.as_str(),
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_DIR, dir.path())
        .output()
        .unwrap();
    assert!(!child.status.success(), "the child was meant to abort");
    let acked: Vec<RunId> = String::from_utf8_lossy(&child.stdout)
        .lines()
        .filter_map(|line| line.split_once("acked ").map(|(_, id)| id))
        .map(|id| id.parse().unwrap())
        .collect();
    assert_eq!(acked.len(), 30, "child output: {child:?}");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = SledStore::open(dir.path(), DEFAULT_CACHE_BYTES, false).unwrap();
        // The promoter reads what the trees lack from the inbox, in its own thread.
        for id in &acked {
            wait_for_run(&store, *id).await;
        }
        let items = store
            .claim_due(ClaimRequest {
                owner: &NodeId::new("test").unwrap(),
                now: Timestamp(i64::MAX),
                limit: 100,
                until: Timestamp(0),
                concurrency: &FlowLimits::new(),
            })
            .await
            .unwrap();
        assert_eq!(items.len(), acked.len(), "acknowledged queue items lost");
        // The recovered dedupe keys still answer repeated deliveries with the original run.
        for (n, id) in (20..30).zip(&acked[20..]) {
            let again = deduped_run(n, n);
            match store.ingest(again).await.unwrap() {
                Ingested::Duplicate { run_id, .. } => assert_eq!(run_id, *id),
                Ingested::Created => panic!("the dedupe key of acknowledged run {id} was lost"),
            }
        }
    });
}

/// A dedupe key numbered `n`, far from expiring.
fn sample_key(n: i64) -> crate::store::DedupeKey {
    crate::store::DedupeKey {
        key: format!("delivery-{n}"),
        expires_at: Timestamp(4_000_000_000_000),
    }
}

/// A new run numbered `n` (see [`sample_run`]) with the dedupe key of delivery `key`.
fn deduped_run(n: i64, key: i64) -> NewRun {
    let mut new = sample_run(n);
    new.dedupe = Some(sample_key(key));
    new
}

/// A new run of flow `crash` with one item, numbered `n` (its times).
pub(super) fn sample_run(n: i64) -> NewRun {
    use crate::model::{Event, RunStatus};

    let flow_id: FlowId = "crash".parse().unwrap();
    let event = Event {
        id: EventId::new(),
        flow_id: flow_id.clone(),
        received_at: Timestamp(n),
        trigger: serde_json::json!({ "n": n }),
    };
    let run = Run {
        id: RunId::new(),
        flow_id: flow_id.clone(),
        revision: Revision::of("id: crash"),
        event_id: event.id,
        status: RunStatus::Queued,
        created_at: Timestamp(n),
        updated_at: Timestamp(n),
        finished_at: None,
        steps: vec![],
        reason: None,
        replay_of: None,
        started_by: None,
        failure: None,
        title: None,
    };
    let item = QueueItem {
        id: ItemId::new(),
        run_id: run.id,
        flow_id,
        step_id: "first".parse().unwrap(),
        attempt: 1,
        due_at: Timestamp(n),
    };
    NewRun {
        event,
        run,
        items: vec![item],
        dedupe: None,
        records: Vec::new(),
    }
}

#[test]
fn inbox_records_hold_the_encoded_run_and_older_json_records_still_read() {
    let new = sample_run(7);
    let encoded = EncodedRun::new(&new).unwrap();
    let record = encoded.to_record();
    assert_eq!(EncodedRun::from_record(&record).unwrap(), encoded);
    let deduped = deduped_run(8, 8);
    let deduped = EncodedRun::new(&deduped).unwrap();
    let deduped_record = deduped.to_record();
    assert_eq!(EncodedRun::from_record(&deduped_record).unwrap(), deduped);
    for cut in [1, 9, deduped_record.len() - 1] {
        assert!(EncodedRun::from_record(&deduped_record[..cut]).is_err());
    }
    let legacy = serde_json::to_vec(&new).unwrap();
    assert_eq!(EncodedRun::from_record(&legacy).unwrap(), encoded);
    for cut in [1, 3, record.len() - 1] {
        assert!(
            EncodedRun::from_record(&record[..cut]).is_err(),
            "cut at {cut}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_queued_while_a_batch_is_written_go_together_in_the_next() {
    let batches = Arc::new(UpdateBatches::default());
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let writing = Arc::new(AtomicBool::new(false));
    let pending = || PendingUpdate {
        run_key: [0; 16],
        done_key: None,
        ahead: None,
        fresh: None,
    };
    let commit = |wait_for: usize| {
        let (batches, sizes, writing) = (batches.clone(), sizes.clone(), writing.clone());
        async move {
            let write = |batch: &[PendingUpdate]| {
                writing.store(true, Ordering::SeqCst);
                // The first batch is written only once two more updates queued behind it.
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                while batches.queued.lock().unwrap().len() < wait_for {
                    assert!(std::time::Instant::now() < deadline, "nothing queued");
                    std::thread::yield_now();
                }
                sizes.lock().unwrap().push(batch.len());
                batch.iter().map(|_| Batched::Changed).collect()
            };
            batches.commit(pending(), write).await
        }
    };
    let first = tokio::spawn(commit(2));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !writing.load(Ordering::SeqCst) {
        assert!(
            std::time::Instant::now() < deadline,
            "the first batch never started"
        );
        tokio::task::yield_now().await;
    }
    let (second, third) = tokio::join!(tokio::spawn(commit(0)), tokio::spawn(commit(0)));
    for outcome in [first.await, second, third] {
        assert!(matches!(outcome.unwrap(), Batched::Changed));
    }
    assert_eq!(*sizes.lock().unwrap(), vec![1, 2]);
}

#[tokio::test]
async fn what_a_run_keeps_is_packed_and_plain_json_values_still_read() {
    let store = SledStore::temporary().unwrap();
    let mut new = sample_run(3);
    new.event.trigger = serde_json::json!({ "body": { "note": "renewal ".repeat(40) } });
    let encoded = EncodedRun::new(&new).unwrap();
    assert!(encoded.event.len() < 200, "the event is packed");
    assert!(encoded.items.iter().all(|(_, item)| item[0] == b'{'));
    store.new_runs.write(&[encoded]).unwrap();
    assert_eq!(
        store.event(new.event.id).await.unwrap().as_ref(),
        Some(&new.event)
    );

    // A store written before values were packed: plain JSON reads as it is.
    let mut old = sample_run(4);
    old.event.trigger = new.event.trigger;
    let trees = &store.new_runs;
    let event = serde_json::to_vec(&old.event).unwrap();
    trees.events.insert(old.event.id.to_bytes(), event).unwrap();
    let run = serde_json::to_vec(&old.run).unwrap();
    trees.runs.insert(old.run.id.to_bytes(), run).unwrap();
    assert_eq!(store.event(old.event.id).await.unwrap(), Some(old.event));
    assert_eq!(store.run(old.run.id).await.unwrap(), Some(old.run));
}

/// The child's side: ingest, print each acknowledged run id, then abort.
fn crash_after_ingesting(dir: &Path) -> ! {
    use std::io::Write;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        let config = base_config(DEFAULT_CACHE_BYTES, false)
            .path(dir)
            .flush_every_ms(None);
        let store = SledStore::with_config(config, "the crash test directory").unwrap();
        for n in 0..30 {
            let mut new = sample_run(n);
            // The last ten have dedupe keys: written to the trees (whose writes sled has not
            // flushed when the process aborts) and made durable by their inbox record.
            if n >= 20 {
                new.dedupe = Some(sample_key(n));
            }
            let id = new.run.id;
            store.ingest(new).await.unwrap();
            let mut out = std::io::stdout().lock();
            writeln!(out, "acked {id}").unwrap();
            out.flush().unwrap();
        }
    });
    std::process::abort()
}

#[tokio::test]
async fn a_failed_flush_is_reported_and_the_next_caller_flushes_again() {
    let commit = GroupCommit::default();
    let failed = commit
        .wait_durable(|| async { Err(StoreError::unavailable_because("disk full")) })
        .await;
    assert!(matches!(failed, Err(StoreError::Unavailable { .. })));
    assert_eq!(commit.flushed.load(Ordering::SeqCst), 0);
    let mut flushed = false;
    commit
        .wait_durable(|| async {
            flushed = true;
            Ok(())
        })
        .await
        .unwrap();
    assert!(flushed);
    assert_eq!(commit.flushed.load(Ordering::SeqCst), 2);
}

/// After a crash, a run with a dedupe key that was only in the inbox: its key answers repeated
/// deliveries from the moment the store opens, and the promoter writes the run, key included.
#[tokio::test]
async fn a_deduped_run_recovered_from_the_inbox_holds_its_key_from_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let new = deduped_run(3, 3);
    let (run_id, event_id) = (new.run.id, new.event.id);
    let (inbox, _reader) = Inbox::open(&dir.path().join("inbox"), 0).unwrap();
    inbox
        .append(EncodedRun::new(&new).unwrap().to_record())
        .await
        .unwrap();
    drop(inbox);

    let store = SledStore::open(dir.path(), DEFAULT_CACHE_BYTES, false).unwrap();
    // At once, before the promoter may have read the record: the key is held from the start.
    let again = deduped_run(4, 3);
    assert_eq!(
        store.ingest(again).await.unwrap(),
        Ingested::Duplicate { event_id, run_id }
    );
    wait_for_run(&store, run_id).await;
    assert!(store.event(event_id).await.unwrap().is_some());
}

/// A recovered record whose run the trees already hold (the stored inbox position lagged behind
/// it) releases the key held for it at open: the key stays answered by the trees, and held keys
/// do not pile up towards `MAX_PENDING`.
#[tokio::test]
async fn a_recovered_record_already_stored_releases_its_held_key() {
    let dir = tempfile::tempdir().unwrap();
    let new = deduped_run(5, 5);
    let (run_id, event_id) = (new.run.id, new.event.id);
    let record = EncodedRun::new(&new).unwrap().to_record();
    let store = SledStore::open(dir.path(), DEFAULT_CACHE_BYTES, false).unwrap();
    assert_eq!(store.ingest(new).await.unwrap(), Ingested::Created);
    wait_for_run(&store, run_id).await;
    drop(store);
    // The same record once more past the stored position, as a crash before the position moved
    // leaves it.
    let (inbox, _reader) = Inbox::open(&dir.path().join("inbox"), 0).unwrap();
    inbox.append(record).await.unwrap();
    drop(inbox);

    let store = reopen(dir.path()).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !store.new_runs.pending_keys.lock().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the held key is never released"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let again = deduped_run(6, 5);
    assert_eq!(
        store.ingest(again).await.unwrap(),
        Ingested::Duplicate { event_id, run_id }
    );
}

/// Opens the store in `dir` once the one dropped before has let go of it (its promoter thread
/// holds the database until it sees the stop), up to 10 s.
async fn reopen(dir: &std::path::Path) -> SledStore {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match SledStore::open(dir, DEFAULT_CACHE_BYTES, false) {
            Ok(store) => return store,
            Err(e) => assert!(std::time::Instant::now() < deadline, "cannot reopen: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (up to 10 s) until `run_id` is readable.
async fn wait_for_run(store: &SledStore, run_id: RunId) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while store.run(run_id).await.unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "acknowledged run {run_id} lost"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
