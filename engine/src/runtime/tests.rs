//! The runtime driven end to end on a real store, with a manual clock: panics, lease renewal,
//! leases between runtimes, named queues, and time-based rules (retry backoff, delays) without
//! sleeping.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

use super::catalog::Catalog;
use super::{Engine, EngineConfig};
use crate::expr::Templates;
use crate::flow::{parse_flow, Flow};
use crate::ids::RunId;
use crate::model::{RunStatus, Timestamp};
use crate::outbound::{HttpClient, OutboundPolicy};
use crate::steps::{Action, BuildContext, ExecContext, Outcome, Registry, StepError, StepKind};
use crate::store::sled::SledStore;
use crate::store::{Clock, ManualClock, NodeId, SharedClock, Store, SystemClock};

/// How many times each run's `flaky` step executed, by run.
static EXECUTIONS: Mutex<Option<HashMap<RunId, u32>>> = Mutex::new(None);

/// Counts one execution of a run's test step.
fn executed(run: RunId) {
    *EXECUTIONS
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .entry(run)
        .or_default() += 1;
}

fn executions(run: RunId) -> u32 {
    EXECUTIONS
        .lock()
        .unwrap()
        .as_ref()
        .and_then(|m| m.get(&run).copied())
        .unwrap_or(0)
}

/// Gates by name: a `gate` step waits for one of its gate's permits (see [`open_gate`]).
static GATES: Mutex<Option<HashMap<String, Arc<tokio::sync::Semaphore>>>> = Mutex::new(None);

fn gate(name: &str) -> Arc<tokio::sync::Semaphore> {
    GATES
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .entry(name.to_owned())
        .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(0)))
        .clone()
}

/// Lets `n` more `gate` steps of the named gate through.
fn open_gate(name: &str, n: usize) {
    gate(name).add_permits(n);
}

/// The test steps (`test: { kind: flaky, panics: 1 }`), each counting its executions per run.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum TestSpec {
    /// Panics on its first `panics` attempts, then answers its attempt number.
    Flaky { panics: u32 },
    /// Waits until its gate lets it through ([`open_gate`]): a call as slow as a test wants.
    Gate { name: String },
    /// Counts how many probes of its `name` execute at once ([`probing`]).
    Probe { name: String },
    /// Records its run in its `name`'s order ([`ORDER`]).
    Order { name: String },
}

impl StepKind for TestSpec {
    const KIND: &'static str = "test";

    fn build(self, _cx: &mut BuildContext<'_>) -> Option<Arc<dyn Action>> {
        Some(Arc::new(TestStep(self)))
    }
}

#[derive(Debug)]
struct TestStep(TestSpec);

#[async_trait]
impl Action for TestStep {
    fn render(&self, _: &Templates, _: &Value) -> Result<Value, StepError> {
        Ok(Value::Null)
    }

    async fn execute(&self, _: Value, cx: &ExecContext) -> Result<Outcome, StepError> {
        executed(cx.run_id);
        match &self.0 {
            TestSpec::Flaky { panics } if cx.attempt <= *panics => {
                panic!("boom on attempt {}", cx.attempt)
            }
            TestSpec::Flaky { .. } => {}
            TestSpec::Gate { name } => gate(name).acquire().await.unwrap().forget(),
            TestSpec::Probe { name } => {
                probing(name, 1);
                // Work that gives the other tasks time to run, so overlapping attempts are seen.
                for _ in 0..100 {
                    tokio::task::yield_now().await;
                }
                probing(name, -1);
            }
            TestSpec::Order { name } => ORDER
                .lock()
                .unwrap()
                .get_or_insert_with(HashMap::new)
                .entry(name.clone())
                .or_default()
                .push(cx.run_id),
        }
        Ok(Outcome::Output(json!({ "attempt": cx.attempt })))
    }
}

fn registry() -> Registry {
    let mut registry = Registry::builtin();
    registry.register::<TestSpec>();
    registry
}

fn flow(yaml: &str) -> Flow {
    parse_flow("test.yaml", yaml, &registry(), &|_| None).expect("valid flow")
}

fn engine(store: Arc<dyn Store>, node: &str, clock: SharedClock) -> Arc<Engine> {
    let http = HttpClient::new(OutboundPolicy::default()).unwrap();
    let config = EngineConfig {
        workers: 2,
        node: NodeId::new(node).unwrap(),
        clock,
        ..EngineConfig::default()
    };
    Engine::new(store, Catalog::new(registry()), http, config)
}

/// Runs `engines` until dropped.
struct Running(
    Vec<tokio::task::JoinHandle<()>>,
    Vec<tokio::sync::oneshot::Sender<()>>,
);

impl Running {
    fn start(engines: &[&Arc<Engine>]) -> Self {
        let (mut tasks, mut stops) = (Vec::new(), Vec::new());
        for engine in engines {
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let run = (*engine).clone().run(
                async {
                    let _ = stopped.await;
                },
                Duration::from_secs(5),
            );
            tasks.push(tokio::spawn(async move { run.await.unwrap() }));
            stops.push(stop);
        }
        Self(tasks, stops)
    }

    async fn stop(self) {
        for stop in self.1 {
            let _ = stop.send(());
        }
        for task in self.0 {
            task.await.unwrap();
        }
    }
}

/// Waits (at most 20 s) until `check` holds for the run's stored state.
async fn until_run(
    store: &dyn Store,
    run: RunId,
    what: &str,
    check: impl Fn(&crate::model::Run) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if store.run(run).await.unwrap().is_some_and(|r| check(&r)) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "run {run} never {what}: {:?}",
            store.run(run).await.unwrap()
        );
        tokio::task::yield_now().await;
    }
}

/// Waits (at most 20 s) until the run's first step has recorded its first attempt: its record.
async fn first_attempt(store: &dyn Store, run: RunId) -> crate::model::StepRecord {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let records = store.step_records(run).await.unwrap();
        if let Some(record) = records.into_iter().find(|r| r.attempts.len() == 1) {
            return record;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "run {run} never recorded an attempt"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_step_fails_its_attempt_and_is_retried_after_its_backoff() {
    let clock = ManualClock::new(Timestamp::now());
    let store: Arc<dyn Store> = Arc::new(SledStore::temporary().unwrap());
    let engine = engine(store.clone(), "one", Arc::new(clock.clone()));
    let flow = flow("id: panics\nconcurrency: 1\ntrigger: { manual: {} }\nsteps:\n  - id: boom\n    test: { kind: flaky, panics: 1 }\n");
    let flow = engine.deploy(vec![flow]).await.unwrap().remove(0).0;
    let running = Running::start(&[&engine]);
    let run = engine.start_manual(&flow, json!({})).await.unwrap().run_id;

    // The first attempt panics: recorded as failed, with the panic's message, retry queued.
    let records = first_attempt(store.as_ref(), run).await;
    let error = records.attempts[0]
        .error
        .as_ref()
        .expect("the attempt failed");
    assert!(
        error.contains("step panicked: boom on attempt 1"),
        "{error:?}"
    );
    assert_eq!(engine.metrics().snapshot().step_panics, 1);
    // The slot and the flow's one place are free again: another run of the flow executes at once
    // (it panics too, and waits for its own backoff).
    let second = engine.start_manual(&flow, json!({})).await.unwrap().run_id;
    first_attempt(store.as_ref(), second).await;
    // Nothing runs again until the clock passes the backoff.
    assert_eq!(executions(run), 1);
    assert_eq!(
        store.run(run).await.unwrap().unwrap().status,
        RunStatus::Running
    );
    clock.advance(Duration::from_secs(3600));
    for id in [run, second] {
        until_run(store.as_ref(), id, "succeeded", |r| {
            r.status == RunStatus::Succeeded
        })
        .await;
        assert_eq!(executions(id), 2);
    }
    running.stop().await;
}

/// Two runtimes (nodes) sharing one store: every step of 100 runs, started through either,
/// executes exactly once. Part of the store conformance suite.
pub(crate) async fn two_runtimes_on_one_store_never_both_execute_a_step(store: Arc<dyn Store>) {
    // Real time: no rule here waits for it, and a backend may time its own work on it.
    let clock: SharedClock = Arc::new(SystemClock);
    let flow = flow("id: shared\ntrigger: { manual: {} }\nsteps:\n  - id: once\n    test: { kind: flaky, panics: 0 }\n  - id: twice\n    test: { kind: flaky, panics: 0 }\n");
    let (a, b) = (
        engine(store.clone(), "node-a", clock.clone()),
        engine(store.clone(), "node-b", clock),
    );
    let flow = a.deploy(vec![flow]).await.unwrap().remove(0).0;
    b.catalog().deploy(flow.clone());
    let running = Running::start(&[&a, &b]);
    let mut runs = Vec::new();
    for n in 0..100 {
        let engine = if n % 2 == 0 { &a } else { &b };
        runs.push(engine.start_manual(&flow, json!({})).await.unwrap().run_id);
    }
    for run in &runs {
        until_run(store.as_ref(), *run, "succeeded", |r| {
            r.status == RunStatus::Succeeded
        })
        .await;
        assert_eq!(executions(*run), 2, "each of the run's two steps ran once");
    }
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delay_holds_the_next_step_until_the_clock_reaches_its_end() {
    let clock = ManualClock::new(Timestamp::now());
    let store: Arc<dyn Store> = Arc::new(SledStore::temporary().unwrap());
    let engine = engine(store.clone(), "one", Arc::new(clock.clone()));
    let flow = flow("id: waits\ntrigger: { manual: {} }\nsteps:\n  - { id: wait, delay: { for: 2h } }\n  - { id: after, test: { kind: flaky, panics: 0 } }\n");
    let flow = engine.deploy(vec![flow]).await.unwrap().remove(0).0;
    let running = Running::start(&[&engine]);
    let run = engine.start_manual(&flow, json!({})).await.unwrap().run_id;
    let wait = first_attempt(store.as_ref(), run).await;
    let until = wait.output.as_ref().unwrap()["until"].as_str().unwrap();
    assert_eq!(
        Timestamp::parse_rfc3339(until),
        Some(clock.now().plus(Duration::from_secs(7200))),
        "two hours on the runtime's clock"
    );
    clock.advance(Duration::from_secs(7200));
    until_run(store.as_ref(), run, "succeeded", |r| {
        r.status == RunStatus::Succeeded
    })
    .await;
    assert_eq!(executions(run), 1);
    running.stop().await;
}

/// Per probe name: how many `probe` steps are executing now, and the most there ever were.
static PROBING: Mutex<Option<HashMap<String, (u32, u32)>>> = Mutex::new(None);

fn probing(name: &str, change: i32) -> (u32, u32) {
    let mut probing = PROBING.lock().unwrap();
    let (now, most) = probing
        .get_or_insert_with(HashMap::new)
        .entry(name.to_owned())
        .or_default();
    *now = now.saturating_add_signed(change);
    *most = (*most).max(*now);
    (*now, *most)
}

/// Two runtimes (nodes) sharing one store share a named queue's lanes: the steps of one lane never
/// execute at once, whichever node runs them. On the system clock (a step finding its lane busy
/// looks again a moment later). Part of the store conformance suite.
pub(crate) async fn two_runtimes_on_one_store_share_a_named_queues_lane(store: Arc<dyn Store>) {
    let name = format!("lane-{}", ulid::Ulid::new());
    let flow = flow(&format!(
        "id: serial\ntrigger: {{ manual: {{}} }}\nsteps:\n  - id: call\n    queue: {{ name: crm, key: {name}, concurrency: 1 }}\n    test: {{ kind: probe, name: {name} }}\n"
    ));
    let engine = |node: &str| {
        let http = HttpClient::new(OutboundPolicy::default()).unwrap();
        let config = EngineConfig {
            workers: 4,
            node: NodeId::new(node).unwrap(),
            ..EngineConfig::default()
        };
        Engine::new(store.clone(), Catalog::new(registry()), http, config)
    };
    let (a, b) = (engine("node-a"), engine("node-b"));
    let flow = a.deploy(vec![flow]).await.unwrap().remove(0).0;
    b.catalog().deploy(flow.clone());
    let running = Running::start(&[&a, &b]);
    let mut runs = Vec::new();
    for n in 0..8 {
        let engine = if n % 2 == 0 { &a } else { &b };
        runs.push(engine.start_manual(&flow, json!({})).await.unwrap().run_id);
    }
    for run in &runs {
        until_run(store.as_ref(), *run, "succeeded", |r| {
            r.status == RunStatus::Succeeded
        })
        .await;
    }
    assert_eq!(probing(&name, 0), (0, 1), "one step of the lane at a time");
    running.stop().await;
}

/// Waits (at most 20 s) until `check` holds for the engine's counters.
async fn until_metrics(
    engine: &Engine,
    what: &str,
    check: impl Fn(&super::metrics::Snapshot) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check(&engine.metrics().snapshot()) {
        assert!(tokio::time::Instant::now() < deadline, "never {what}");
        tokio::task::yield_now().await;
    }
}

/// A step that outlasts its lease keeps it by renewal, also after the pure steps before it were
/// committed on their own while it ran (which hands the worker a new lease): the lease is never
/// taken over, and the step runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_step_keeps_its_lease_by_renewal_and_runs_once() {
    let clock = ManualClock::new(Timestamp::now());
    let store: Arc<dyn Store> = Arc::new(SledStore::temporary().unwrap());
    let engine = engine(store.clone(), "one", Arc::new(clock.clone()));
    let flow = flow("id: slow\ntrigger: { manual: {} }\nsteps:\n  - { id: shape, map: { a: 1 } }\n  - { id: call, test: { kind: gate, name: slow-call } }\n");
    let flow = engine.deploy(vec![flow]).await.unwrap().remove(0).0;
    let running = Running::start(&[&engine]);
    let run = engine.start_manual(&flow, json!({})).await.unwrap().run_id;
    // The map is committed on its own once the call has taken a moment.
    first_attempt(store.as_ref(), run).await;
    assert_eq!(executions(run), 1);
    // 35 s on a 30 s lease, renewed every 10 s.
    for renewals in 1..=3 {
        clock.advance(Duration::from_secs(10));
        until_metrics(&engine, "renewed the lease", |m| {
            m.lease_renewals >= renewals
        })
        .await;
    }
    clock.advance(Duration::from_secs(5));
    assert_eq!(
        store.requeue_expired(clock.now()).await.unwrap(),
        0,
        "the running step's lease is held"
    );
    open_gate("slow-call", 1);
    until_run(store.as_ref(), run, "succeeded", |r| {
        r.status == RunStatus::Succeeded
    })
    .await;
    assert_eq!(executions(run), 1);
    assert_eq!(engine.metrics().snapshot().refused_commits, 0);
    running.stop().await;
}

/// A step that finds its named queue's lane busy, right after a pure step, goes back to the queue
/// and runs once the lane is free (it does not wedge its run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_waiting_for_its_lane_after_a_pure_step_runs_once_the_lane_is_free() {
    let clock = ManualClock::new(Timestamp::now());
    let store: Arc<dyn Store> = Arc::new(SledStore::temporary().unwrap());
    let engine = engine(store.clone(), "one", Arc::new(clock.clone()));
    let flow = flow("id: laned\ntrigger: { manual: {} }\nsteps:\n  - { id: shape, map: { a: 1 } }\n  - id: call\n    queue: { name: one-lane }\n    test: { kind: gate, name: laned-call }\n");
    let flow = engine.deploy(vec![flow]).await.unwrap().remove(0).0;
    let running = Running::start(&[&engine]);
    let first = engine.start_manual(&flow, json!({})).await.unwrap().run_id;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while executions(first) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first run never reached its call"
        );
        tokio::task::yield_now().await;
    }
    // The second run's call finds the lane taken: it is put back in the queue, its map recorded.
    let second = engine.start_manual(&flow, json!({})).await.unwrap().run_id;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let records = store.step_records(second).await.unwrap();
        let queued = store.run(second).await.unwrap().is_some_and(|r| {
            r.steps
                .iter()
                .any(|s| s.item.is_some() && s.id.as_str() == "call")
        });
        if records.iter().any(|r| r.step_id.as_str() == "shape") && queued {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second run was not put back in the queue"
        );
        tokio::task::yield_now().await;
    }
    assert_eq!(executions(second), 0);
    open_gate("laned-call", 2);
    until_run(store.as_ref(), first, "succeeded", |r| {
        r.status == RunStatus::Succeeded
    })
    .await;
    clock.advance(Duration::from_secs(5));
    until_run(store.as_ref(), second, "succeeded", |r| {
        r.status == RunStatus::Succeeded
    })
    .await;
    assert_eq!((executions(first), executions(second)), (1, 1));
    running.stop().await;
}

/// The order in which `order` test steps executed, by name.
static ORDER: Mutex<Option<HashMap<String, Vec<RunId>>>> = Mutex::new(None);

/// Two runtimes (nodes) sharing one store: the runs waiting for a serial queue's lane pass
/// through it in the order their events arrived (their ids'), whichever node runs them. Part of the store
/// conformance suite.
pub(crate) async fn a_serial_queue_keeps_its_order_with_two_runtimes(store: Arc<dyn Store>) {
    let name = format!("ordered-{}", ulid::Ulid::new());
    let queue = format!("queue: {{ name: {name}, key: k }}");
    let held = flow(&format!(
        "id: held\ntrigger: {{ manual: {{}} }}\nsteps:\n  - id: hold\n    {queue}\n    test: {{ kind: gate, name: {name} }}\n"
    ));
    let ordered = flow(&format!(
        "id: ordered\ntrigger: {{ manual: {{}} }}\nsteps:\n  - id: call\n    {queue}\n    test: {{ kind: order, name: {name} }}\n"
    ));
    let clock: SharedClock = Arc::new(SystemClock);
    let (a, b) = (
        engine(store.clone(), "node-a", clock.clone()),
        engine(store.clone(), "node-b", clock),
    );
    let deployed = a.deploy(vec![held, ordered]).await.unwrap();
    for (flow, _) in &deployed {
        b.catalog().deploy(flow.clone());
    }
    let (held, ordered) = (&deployed[0].0, &deployed[1].0);
    let running = Running::start(&[&a, &b]);
    // One run holds the lane while the others arrive and wait for it.
    let holder = a.start_manual(held, json!({})).await.unwrap().run_id;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while executions(holder) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lane was never taken"
        );
        tokio::task::yield_now().await;
    }
    let mut runs = Vec::new();
    for n in 0..8 {
        let engine = if n % 2 == 0 { &a } else { &b };
        runs.push(
            engine
                .start_manual(ordered, json!({}))
                .await
                .unwrap()
                .run_id,
        );
    }
    // Every run has found the lane taken (and so waits for its turn).
    for run in &runs {
        until_run(store.as_ref(), *run, "waited for the lane", |r| {
            r.status == RunStatus::Running
        })
        .await;
    }
    open_gate(&name, 1);
    for run in &runs {
        until_run(store.as_ref(), *run, "succeeded", |r| {
            r.status == RunStatus::Succeeded
        })
        .await;
    }
    let order = ORDER.lock().unwrap().as_ref().unwrap()[&name].clone();
    // Run ids sort by the events' arrival, to the millisecond.
    runs.sort();
    assert_eq!(order, runs, "in the order the events arrived");
    running.stop().await;
}

/// A `storage` step's expiry counts on the engine's clock, and the retention sweep deletes the
/// entry once it has expired, not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_deletes_storage_entries_once_they_expire_on_the_engines_clock() {
    let clock = ManualClock::new(Timestamp::now());
    let store: Arc<dyn Store> = Arc::new(SledStore::temporary().unwrap());
    let engine = engine(store.clone(), "one", Arc::new(clock.clone()));
    let flow = flow("id: remembers\ntrigger: { manual: {} }\nsteps:\n  - id: keep\n    storage: { action: set, key: seen, value: 1, expires_in: 1h }\n");
    let flow = engine.deploy(vec![flow]).await.unwrap().remove(0).0;
    let running = Running::start(&[&engine]);
    let run = engine.start_manual(&flow, json!({})).await.unwrap().run_id;
    until_run(store.as_ref(), run, "succeeded", |r| {
        r.status == RunStatus::Succeeded
    })
    .await;
    running.stop().await;

    let namespace = crate::store::Namespace::new("remembers").unwrap();
    let listed = || store.storage_entries(&namespace, None, 10, clock.now());
    assert_eq!(listed().await.unwrap().len(), 1);
    clock.advance(Duration::from_secs(59 * 60));
    assert_eq!(engine.sweep(clock.now()).await.unwrap().storage_entries, 0);
    assert_eq!(listed().await.unwrap().len(), 1);
    clock.advance(Duration::from_secs(60));
    assert!(
        listed().await.unwrap().is_empty(),
        "expired: absent at once"
    );
    assert_eq!(engine.sweep(clock.now()).await.unwrap().storage_entries, 1);
}
