//! The durable runtime: ingest, the dispatcher that claims due queue items, and the workers that
//! execute steps.
//!
//! The queue lives in the store, so the backlog is not held in memory (only the store's own
//! bookkeeping grows with it) and nothing is lost on a crash. One dispatcher task claims up to as many items as there are free worker slots (and as
//! flows' concurrency limits allow), with a lease; each item runs in its own task: load the run,
//! render the step's input, execute, and commit the outcome through [`Store::update_run`] with the
//! pure [`advance::advance`]. Ingest, commits and runs created on other nodes (store notices) wake
//! the dispatcher; otherwise it sleeps until the
//! next item is due (at most a second). Where the store takes step records at ingest as cheaply as
//! without (PostgreSQL), a run's pure first step runs before its event is stored, and the run is
//! stored as that step left it (a run a filter drops never reaches a worker). Fixing failed runs is
//! in `repair`, pruning history in `retention`.

pub mod advance;
pub mod callbacks;
pub mod catalog;
pub mod context;
mod lanes;
pub mod metrics;
mod repair;
pub mod retention;
pub mod retry;
mod scheduler;
#[cfg(test)]
pub(crate) mod tests;

use std::convert::Infallible;
use std::fmt::Write as _;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use serde_json::Value;
use tokio::sync::{broadcast, Notify, Semaphore};
use tracing::{debug, error, info, info_span, warn, Instrument};

use self::advance::{Attempted, StepResult};
use self::catalog::Catalog;
use self::context::{add_resume_urls, idempotency_key, run_context, take_trigger};
use crate::flow::Flow;
use crate::ids::{EventId, FlowId, RunId, StepId};
use crate::model::{
    Event, QueueItem, Run, RunStatus, StartedBy, StepRecord, StepStatus, Timestamp,
};
use crate::outbound::HttpClient;
use crate::pacing::Pacer;
use crate::secrets::Secrets;
use crate::steps::{ExecContext, Outcome, RunOutcome, StepError, StepLog, SubFlows};
pub use crate::store::RunNotice;
use crate::store::{
    ClaimRequest, Claimed, DedupeKey, FlowLimits, Ingested, Lease, LoadedRun, NewRun, NodeId,
    RunUpdate, SharedClock, Store, StoreError, SystemClock, Take,
};
use crate::Result;

pub use self::repair::{Bulk, ReplayRevision, RunSelection};
pub use self::retention::RetentionConfig;

/// How the engine runs.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// How many steps may execute at once; `0` accepts events but executes nothing (an
    /// ingest-only node, or a server paused while a backlog builds).
    pub workers: usize,
    /// How long a claimed item is leased; a running step renews its lease every third of this, and
    /// an item whose lease expired (its node stopped) is claimed again.
    pub lease: Duration,
    /// This node's id: the owner of its leases, in logs and `/metrics`.
    pub node: NodeId,
    /// Where the runtime reads the time and waits.
    pub clock: SharedClock,
    /// Describe side effects instead of performing them (`hookflow run --dry-run`).
    pub dry_run: bool,
    /// Never retry failed steps (`hookflow run`).
    pub no_retries: bool,
    /// How long run history is kept.
    pub retention: RetentionConfig,
    /// Whether `schedule:` flows fire (not in local one-off runs).
    pub schedules: bool,
    /// The server's base URL, which resume URLs of `wait_for_callback` steps start with; `None`
    /// where no server answers them (`hookflow run`): such a step then fails at once.
    pub base_url: Option<String>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            workers: 32,
            lease: Duration::from_secs(30),
            node: NodeId::generate(),
            clock: Arc::new(SystemClock),
            dry_run: false,
            no_retries: false,
            retention: RetentionConfig::default(),
            schedules: true,
            base_url: None,
        }
    }
}

/// What executing one queue item works on.
struct Work {
    run: Run,
    flow: Arc<Flow>,
    /// The event's `trigger`, lent to each attempt's context (see [`Lent`]).
    trigger: Mutex<Value>,
    records: Vec<StepRecord>,
    /// The resume URLs of the flow's `wait_for_callback` steps in this run.
    resume_urls: Vec<(StepId, String)>,
}

impl Work {
    fn trigger(&self) -> std::sync::MutexGuard<'_, Value> {
        self.trigger.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the flow's step has no effects (filter, map, switch).
    fn is_pure(&self, step: &StepId) -> bool {
        self.flow.step(step).is_some_and(|s| s.action.is_pure())
    }

    /// Takes the run as updated and the step records written (each replacing the record of its
    /// step).
    fn remember(&mut self, run: Run, records: Vec<StepRecord>) {
        for record in records {
            match self
                .records
                .iter_mut()
                .find(|r| r.step_id == record.step_id)
            {
                Some(old) => *old = record,
                None => self.records.push(record),
            }
        }
        self.run = run;
    }
}

/// An attempt's context, made on the work's trigger and giving it back when dropped (however the
/// attempt ends): a webhook's body is moved from step to step, not copied for each.
struct Lent<'a> {
    work: &'a Work,
    context: Option<Arc<Value>>,
}

impl<'a> Lent<'a> {
    fn new(work: &'a Work, item: &QueueItem) -> Self {
        let trigger = std::mem::take(&mut *work.trigger());
        let mut context = run_context(
            trigger,
            &work.run,
            &work.records,
            &item.step_id,
            item.attempt,
        );
        add_resume_urls(&mut context, &work.resume_urls);
        Self {
            work,
            context: Some(Arc::new(context)),
        }
    }

    fn context(&self) -> &Arc<Value> {
        self.context.as_ref().expect("lent until dropped")
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        if let Some(context) = self.context.take() {
            *self.work.trigger() = take_trigger(context);
        }
    }
}

/// How long a step with effects may run before the pure steps deferred ahead of it are committed
/// on their own.
const DEFERRED_PATIENCE: Duration = Duration::from_millis(100);

/// A pure step a worker executed and has not committed yet.
struct Deferred {
    item: QueueItem,
    /// The step's record before this attempt.
    previous: Option<StepRecord>,
    done: Box<Attempted>,
}

/// What a worker's task has executed since its last commit.
struct Chain {
    /// The lease this task holds: the claimed item's, or that of the last item taken in a commit.
    /// The next commit finishes it.
    lease: Lease,
    /// Tells the renewal loop which lease to renew (see [`Chain::hold`]).
    held: tokio::sync::watch::Sender<Lease>,
    /// The item the stored run expects for the step being executed, when a commit made while it
    /// ran (see `attempt_in_chain`) queued it anew: a postponement names that one.
    expected: Option<QueueItem>,
    /// Pure steps executed since, in order, each followed at once by the next (and the last by the
    /// step being committed).
    deferred: Vec<Deferred>,
}

impl Chain {
    /// Holds a new lease, and has the renewal loop renew it from now on.
    fn hold(&mut self, lease: Lease) {
        self.held.send_replace(lease.clone());
        self.lease = lease;
    }

    /// Applies the deferred steps' outcomes to `run` as stored, in order: the run and the records
    /// they write, with the step about to be committed (`last`) queued. If the run went another
    /// way meanwhile (another worker finished these steps: this one's lease had ended), the update
    /// to write instead: up to the first deferred step the run no longer follows, with what that
    /// step decides.
    fn replay(&self, flow: &Flow, mut run: Run, last: &StepId, now: Timestamp) -> Replayed {
        let mut records = Vec::new();
        let mut queued = None;
        for (i, deferred) in self.deferred.iter().enumerate() {
            let expected = self.deferred.get(i + 1).map_or(last, |d| &d.item.step_id);
            let Some(mut update) =
                advance::advance(flow, run, deferred.previous.as_ref(), &deferred.done, now)
            else {
                return Replayed::Diverged(None);
            };
            records.append(&mut update.records);
            if update.enqueue.len() != 1 || &update.enqueue[0].step_id != expected {
                update.records = records;
                return Replayed::Diverged(Some(update));
            }
            run = update.run;
            queued = update.enqueue.pop();
        }
        Replayed::Followed(run, records, queued)
    }
}

/// What replaying a chain's deferred steps on the stored run gave.
enum Replayed {
    /// The run as they leave it, the records they write, and the item the last of them queued
    /// for the step being committed (the run expects that item; `None` without deferred steps).
    Followed(Run, Vec<StepRecord>, Option<QueueItem>),
    /// The run went another way: the update to write instead (`None`: nothing).
    Diverged(Option<RunUpdate>),
}

/// The tracing span of one step's execution.
fn step_span(item: &QueueItem, node: &NodeId) -> tracing::Span {
    info_span!("step", %node, flow = %item.flow_id, run_id = %item.run_id, step_id = %item.step_id, attempt = item.attempt)
}

/// Wakes the dispatcher whenever a run is created on any node sharing the store (or notices were
/// missed), so a node picks up work another node accepted without waiting for its next poll.
async fn wake_on_new_runs(engine: Arc<Engine>) {
    let mut notices = engine.store.notices();
    loop {
        match notices.recv().await {
            Ok(notice) if notice.status == RunStatus::Queued => engine.wake.notify_one(),
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => engine.wake.notify_one(),
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Aborts a background task when dropped (when `run` returns, however it returns).
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

/// The engine as `flow` steps see it: starts child runs (once per calling step) and reads how they
/// ended.
struct EngineFlows(std::sync::Weak<Engine>);

impl std::fmt::Debug for EngineFlows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EngineFlows")
    }
}

#[async_trait::async_trait]
impl SubFlows for EngineFlows {
    async fn start(
        &self,
        flow: &str,
        trigger: Value,
        key: &str,
    ) -> std::result::Result<RunId, StepError> {
        let engine = self
            .0
            .upgrade()
            .ok_or_else(|| StepError::transient("the server is stopping"))?;
        let flow = flow
            .parse::<FlowId>()
            .ok()
            .and_then(|id| engine.catalog.current(&id))
            .ok_or_else(|| StepError::permanent(format!("no flow `{flow}` is deployed")))?;
        let key = DedupeKey {
            key: format!("parent:{key}"),
            expires_at: engine.now().plus(crate::intake::PROVIDER_DEDUPE_WINDOW),
        };
        let accepted = engine
            .store_event(&flow, trigger, Some(key), StartedBy::Flow)
            .await
            .map_err(|e| StepError::transient(format!("could not start the sub-flow: {e}")))?;
        Ok(accepted.run_id)
    }

    async fn outcome(&self, run: RunId) -> std::result::Result<Option<RunOutcome>, StepError> {
        let engine = self
            .0
            .upgrade()
            .ok_or_else(|| StepError::transient("the server is stopping"))?;
        engine
            .run_outcome(run)
            .await
            .map_err(|e| StepError::transient(format!("could not read the sub-flow's run: {e}")))
    }
}

/// How executing an item went.
enum Tried {
    /// The step made an attempt.
    Done(Box<Attempted>),
    /// The step could not act yet: run it again after this long.
    Wait(Duration),
    /// The step waits for a callback until then (`wait_for_callback`).
    Await(Timestamp),
}

/// What `ingest` answers: the ids the caller needs to find its run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Accepted {
    /// The stored event (the original, for a duplicate).
    pub event_id: EventId,
    /// The run it started (the original's, for a duplicate).
    pub run_id: RunId,
    /// Whether this was a repeated delivery that started nothing.
    pub duplicate: bool,
}

/// The runtime: store, flows, workers.
pub struct Engine {
    store: Arc<dyn Store>,
    catalog: Catalog,
    http: HttpClient,
    pacer: Pacer,
    /// What `flow` steps start child runs with (this engine, weakly held).
    sub_flows: Arc<dyn SubFlows>,
    /// Named queues' lanes.
    lanes: lanes::Lanes,
    /// Counters for `/metrics`.
    metrics: metrics::Metrics,
    config: EngineConfig,
    wake: Notify,
    slots: Arc<Semaphore>,
    /// Set when the server stops: a worker finishes its step but takes no next one.
    stopping: AtomicBool,
    /// Signs resume URLs (see `callbacks`); read from the store on first use.
    callback_key: tokio::sync::OnceCell<callbacks::CallbackKey>,
}

impl Engine {
    /// An engine over a store; flows are added with [`Engine::deploy`].
    pub fn new(
        store: Arc<dyn Store>,
        catalog: Catalog,
        http: HttpClient,
        config: EngineConfig,
    ) -> Arc<Self> {
        let slots = Arc::new(Semaphore::new(config.workers.max(1)));
        Arc::new_cyclic(|me| Self {
            sub_flows: Arc::new(EngineFlows(me.clone())),
            lanes: lanes::Lanes::new(store.clone(), config.clock.clone()),
            metrics: metrics::Metrics::default(),
            pacer: Pacer::new(store.clone(), config.clock.clone()),
            store,
            catalog,
            http,
            config,
            wake: Notify::new(),
            slots,
            stopping: AtomicBool::new(false),
            callback_key: tokio::sync::OnceCell::new(),
        })
    }

    /// How a run ended (with the output of its last step that produced one), or `None` while it
    /// has not (or does not exist).
    pub async fn run_outcome(&self, run_id: RunId) -> Result<Option<RunOutcome>> {
        let Some(run) = self
            .store
            .run(run_id)
            .await?
            .filter(|r| r.status.is_final())
        else {
            return Ok(None);
        };
        let records = self.store.step_records(run_id).await?;
        let output = run
            .steps
            .iter()
            .rev()
            .find_map(|s| {
                records
                    .iter()
                    .find(|r| r.step_id == s.id)
                    .and_then(|r| r.output.clone())
            })
            .unwrap_or(Value::Null);
        Ok(Some(RunOutcome {
            status: run.status,
            reason: run.reason,
            output,
        }))
    }

    /// The engine's counters.
    pub fn metrics(&self) -> &metrics::Metrics {
        &self.metrics
    }

    /// The outbound HTTP client the steps share.
    pub fn http(&self) -> &HttpClient {
        &self.http
    }

    /// The store.
    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    /// The deployed flows.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Makes flows current: keeps their source in the store and makes sure each has a catch-hook
    /// token. Returns each flow's token.
    pub async fn deploy(&self, flows: Vec<Flow>) -> Result<Vec<(Arc<Flow>, String)>> {
        let mut deployed = Vec::with_capacity(flows.len());
        for flow in flows {
            self.store
                .put_revision(&flow.id, &flow.revision, &flow.source)
                .await?;
            self.record_revision(&flow).await?;
            let token = self.store.hook_token(&flow.id, &new_token()).await?;
            let flow = Arc::new(flow);
            self.catalog.deploy(flow.clone());
            deployed.push((flow, token));
        }
        Ok(deployed)
    }

    /// A flow's revisions as deployed over time, oldest first: `[{revision, deployed_at}]`.
    pub async fn revision_history(&self, flow: &FlowId) -> Result<Vec<Value>> {
        let key = format!("revisions:{flow}");
        let stored = self.store.state(&key).await?;
        Ok(stored
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default())
    }

    /// Appends the flow's revision to its history when it differs from the last one deployed.
    async fn record_revision(&self, flow: &Flow) -> Result<()> {
        let mut history = self.revision_history(&flow.id).await?;
        let last = history.last().and_then(|h| h["revision"].as_str());
        if last == Some(flow.revision.0.as_str()) {
            return Ok(());
        }
        history.push(serde_json::json!({ "revision": flow.revision, "deployed_at": self.now() }));
        let excess = history.len().saturating_sub(MAX_HISTORY);
        history.drain(..excess);
        let key = format!("revisions:{}", flow.id);
        self.store.put_state(&key, &Value::Array(history)).await?;
        Ok(())
    }

    /// The catch-hook token of a flow.
    pub async fn hook_token(&self, flow: &FlowId) -> Result<String> {
        Ok(self.store.hook_token(flow, &new_token()).await?)
    }

    /// Stores an event for `flow` with its new run, durably; the caller may acknowledge after this.
    /// A repeated delivery (same dedupe key within the flow's window) stores nothing and answers
    /// the original's ids.
    pub async fn ingest(&self, flow: &Arc<Flow>, trigger: Value) -> Result<Accepted> {
        let dedupe = crate::intake::dedupe_key(flow, &trigger, self.now());
        self.store_event(flow, trigger, dedupe, StartedBy::Webhook)
            .await
    }

    /// Stores an event the catch hook screened ([`crate::intake::screen`]) with its dedupe key;
    /// see [`Engine::ingest`].
    pub async fn ingest_keyed(
        &self,
        flow: &Arc<Flow>,
        trigger: Value,
        dedupe: Option<DedupeKey>,
    ) -> Result<Accepted> {
        self.store_event(flow, trigger, dedupe, StartedBy::Webhook)
            .await
    }

    /// Starts a run that a person asked for (`hookflow trigger`, the API, the UI), durably. It is
    /// never a duplicate: the flow's dedupe rule is for senders' repeated deliveries.
    pub async fn start_manual(&self, flow: &Arc<Flow>, trigger: Value) -> Result<Accepted> {
        self.store_event(flow, trigger, None, StartedBy::Manual)
            .await
    }

    async fn store_event(
        &self,
        flow: &Arc<Flow>,
        trigger: Value,
        dedupe: Option<DedupeKey>,
        started_by: StartedBy,
    ) -> Result<Accepted> {
        let now = self.now();
        let event = Event {
            id: EventId::new(),
            flow_id: flow.id.clone(),
            received_at: now,
            trigger,
        };
        let (event_id, run_id) = (event.id, RunId::new());
        let mut new_run = advance::start(flow, event, run_id, now);
        new_run.dedupe = dedupe;
        new_run.run.started_by = Some(started_by);
        if self.store.takes_steps_at_ingest() {
            self.first_step_at_ingest(flow, &mut new_run).await;
        }
        let ended = new_run.run.status.is_final().then(|| new_run.run.clone());
        let queued = !new_run.items.is_empty();
        let accepted = match self.store.ingest(new_run).await? {
            Ingested::Created => {
                debug!(flow = %flow.id, %run_id, "event accepted");
                if queued {
                    self.wake.notify_one();
                }
                self.announce(ended);
                Accepted {
                    event_id,
                    run_id,
                    duplicate: false,
                }
            }
            Ingested::Duplicate { event_id, run_id } => {
                info!(flow = %flow.id, %run_id, "repeated delivery: answered with the original run");
                Accepted {
                    event_id,
                    run_id,
                    duplicate: true,
                }
            }
        };
        Ok(accepted)
    }

    /// Executes a new run's first step before it is ingested, when it is the run's only item, pure
    /// and outside any named queue (a filter, map or switch at the root), and applies its outcome:
    /// the run is ingested with the step's record and what it queued next, or final when a filter
    /// dropped the event (then no worker ever claims it). The step runs as a worker would run it
    /// (same context, record and node id); a pure step gives the same outcome if run again.
    async fn first_step_at_ingest(&self, flow: &Arc<Flow>, new: &mut NewRun) {
        let [item] = &new.items[..] else {
            return;
        };
        let eligible = flow
            .step(&item.step_id)
            .is_some_and(|step| step.action.is_pure() && step.queue.is_none());
        if !eligible {
            return;
        }
        let item = item.clone();
        let resume_urls = match self.resume_urls(flow, new.run.id).await {
            Ok(urls) => urls,
            Err(e) => {
                debug!(error = %e, "the first step runs on a worker: no resume URLs yet");
                return;
            }
        };
        let work = Work {
            run: new.run.clone(),
            flow: flow.clone(),
            trigger: Mutex::new(std::mem::take(&mut new.event.trigger)),
            records: Vec::new(),
            resume_urls,
        };
        let span = step_span(&item, &self.config.node);
        let tried = self.attempt(&work, &item).instrument(span).await;
        new.event.trigger = std::mem::take(&mut *work.trigger());
        let Tried::Done(done) = tried else {
            return;
        };
        let now = self.now();
        if let Some(update) = advance::advance(flow, new.run.clone(), None, &done, now) {
            new.run = update.run;
            new.items = update.enqueue;
            new.records = update.records;
        }
    }

    /// Runs as they are created and as they finish, on every node sharing the store (a receiver
    /// that lags misses notices: look at the store again).
    pub fn subscribe(&self) -> broadcast::Receiver<RunNotice> {
        self.store.notices()
    }

    /// Waits until `run_id` is final or `timeout` passes; returns the run as it then is (`None`
    /// if it is not readable yet).
    pub async fn wait_for(&self, run_id: RunId, timeout: Duration) -> Result<Option<Run>> {
        let mut finished = self.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // A run just accepted may not be readable yet (the store's inbox): wait for it too.
            let run = self.store.run(run_id).await?;
            if run.as_ref().is_some_and(|r| r.status.is_final()) {
                return Ok(run);
            }
            // Wait for this run's notice (or any lag, which means: look again).
            loop {
                match tokio::time::timeout_at(deadline, finished.recv()).await {
                    Err(_) => return Ok(self.store.run(run_id).await?),
                    Ok(Ok(done)) if done.run_id != run_id => continue,
                    Ok(_) => break,
                }
            }
        }
    }

    /// Runs the dispatcher (unless `workers` is 0), the retention sweeper and the scheduler until `shutdown`
    /// resolves, then waits up to `drain` for executing steps to finish; what is left stays queued
    /// (or leased, and is recovered at the next start).
    pub async fn run(
        self: Arc<Self>,
        shutdown: impl std::future::Future<Output = ()>,
        drain: Duration,
    ) -> Result<()> {
        let _sweeper = AbortOnDrop(Some(tokio::spawn(retention::sweep_forever(self.clone()))));
        let scheduler = self
            .config
            .schedules
            .then(|| scheduler::Running::start(self.clone()));
        if self.config.workers == 0 {
            info!("workers: 0 — accepting events, executing none");
            shutdown.await;
            if let Some(scheduler) = scheduler {
                scheduler.stop().await;
            }
            return Ok(());
        }
        info!(node = %self.config.node, "workers started");
        let _waker = AbortOnDrop(Some(tokio::spawn(wake_on_new_runs(self.clone()))));
        let recovered = self.store.requeue_expired(self.now()).await?;
        if recovered > 0 {
            info!(
                recovered,
                "requeued steps whose lease expired (their node stopped)"
            );
        }
        tokio::pin!(shutdown);
        let mut last_sweep = Instant::now();
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                result = self.dispatch_once() => {
                    if let Err(e) = result {
                        error!(error = %e, "dispatcher: store error; retrying in a second");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
            // Often enough that a dead node's steps run again soon after their leases expire.
            if last_sweep.elapsed() > self.config.lease / 10 {
                last_sweep = Instant::now();
                // A store that is away (a database restarting) is looked at again next time; the
                // workers keep going.
                match self.store.requeue_expired(self.now()).await {
                    Ok(0) => {}
                    Ok(n) => warn!(n, "requeued steps whose lease expired"),
                    Err(e) => error!(error = %e, "cannot requeue expired leases; trying again"),
                }
            }
        }
        if let Some(scheduler) = scheduler {
            scheduler.stop().await;
        }
        self.stopping.store(true, Ordering::SeqCst);
        let workers = self.config.workers as u32;
        let executing = workers as usize - self.slots.available_permits();
        info!(
            executing,
            "stopping: no new steps start; waiting for those in flight"
        );
        match tokio::time::timeout(drain, self.slots.acquire_many(workers)).await {
            Ok(_) => info!("stopped: no step in flight"),
            Err(_) => {
                warn!("stopped with steps still in flight; they will run again at the next start")
            }
        }
        Ok(())
    }

    /// The time, from the engine's clock.
    pub fn now(&self) -> Timestamp {
        self.config.clock.now()
    }

    /// This node's id.
    pub fn node(&self) -> &NodeId {
        &self.config.node
    }

    /// The concurrency limits of the deployed flows that have one.
    fn flow_limits(&self) -> FlowLimits {
        self.catalog
            .all()
            .iter()
            .filter_map(|flow| Some((flow.id.clone(), flow.concurrency?)))
            .collect()
    }

    /// Claims what free slots and flows' limits allow and starts it, or waits for work.
    async fn dispatch_once(self: &Arc<Self>) -> Result<()> {
        // Wait for at least one free slot.
        drop(self.slots.acquire().await.expect("semaphore never closed"));
        let free = self.slots.available_permits();
        let now = self.now();
        let limits = self.flow_limits();
        let items = self
            .store
            .claim_due(ClaimRequest {
                owner: &self.config.node,
                now,
                limit: free,
                until: now.plus(self.config.lease),
                concurrency: &limits,
            })
            .await?;
        let claimed = items.len();
        for claim in items {
            let permit = self
                .slots
                .clone()
                .acquire_owned()
                .await
                .expect("semaphore never closed");
            let engine = self.clone();
            tokio::spawn(async move {
                let item = claim.item.clone();
                match engine.execute(claim).await {
                    Ok(()) => {}
                    Err(crate::Error::Store(StoreError::LeaseLost { item: lost })) => {
                        engine.metrics.commit_refused();
                        warn!(flow = %item.flow_id, run_id = %item.run_id, item = %lost, "the step's lease was lost (it expired and another worker took it over): its outcome was not written");
                    }
                    Err(e) => {
                        error!(flow = %item.flow_id, run_id = %item.run_id, error = %e, "step could not be completed; it will be retried when its lease expires");
                    }
                }
                drop(permit);
                engine.wake.notify_one();
            });
        }
        if claimed < free {
            // Items due now that were not claimed belong to flows at their concurrency limit: wait
            // for a step to finish (which wakes us) rather than spin.
            let wake_at = match self.store.next_due().await? {
                Some(due) if due > now => due.min(now.plus(Duration::from_secs(1))),
                Some(_) if claimed > 0 => now,
                _ => now.plus(Duration::from_secs(1)),
            };
            tokio::select! {
                () = self.config.clock.sleep_until(wake_at) => {}
                () = self.wake.notified() => {}
            }
        }
        Ok(())
    }

    /// Executes a claimed item and commits its outcome; then, while the run's next step is due at
    /// once, takes it and executes it too, without going back to the queue or reloading the run.
    /// A pure step (filter, map, switch: see `Action::is_pure`) followed at once by another step
    /// is not written on its own: its outcome is committed with the next step's, or before it
    /// when that step has effects and takes longer than [`DEFERRED_PATIENCE`] (after a crash, the
    /// chain runs again from the item the store holds leased, and pure steps give the same
    /// outcome). A step with effects (HTTP, connectors) waits until the commits of the run's
    /// earlier steps with effects are on disk, so a crash never repeats a step once a later one
    /// has acted.
    async fn execute(&self, claim: Claimed) -> Result<()> {
        let (held, current) = tokio::sync::watch::channel(claim.lease.clone());
        let work = async {
            let Claimed {
                mut item,
                lease,
                run,
            } = claim;
            let mut chain = Chain {
                lease,
                held,
                expected: None,
                deferred: Vec::new(),
            };
            let span = step_span(&item, &self.config.node);
            let loading = self.load(&item, &chain.lease, run);
            let Some(mut work) = loading.instrument(span).await? else {
                return Ok(());
            };
            loop {
                let span = step_span(&item, &self.config.node);
                let Some(next) = self
                    .step(&mut work, &mut chain, item)
                    .instrument(span)
                    .await?
                else {
                    return Ok(());
                };
                item = next;
            }
        };
        tokio::select! {
            done = work => done,
            never = self.renew_forever(current) => match never {},
        }
    }

    /// Renews the worker's current lease every third of the lease time, for as long as the worker
    /// runs. A lost lease is logged here; the worker's next commit is refused.
    async fn renew_forever(&self, current: tokio::sync::watch::Receiver<Lease>) -> Infallible {
        let every = self.config.lease / 3;
        // Every third of the lease from when the worker started, however long each renewal took.
        let mut due = self.now();
        loop {
            due = due.plus(every);
            self.config.clock.sleep_until(due).await;
            let lease = current.borrow().clone();
            match self
                .store
                .renew(&lease, self.now().plus(self.config.lease))
                .await
            {
                Ok(_) => {
                    self.metrics.lease_renewed();
                    debug!(item = %lease.item, "lease renewed");
                }
                Err(e) if current.borrow().token != lease.token => {
                    debug!(error = %e, "the worker moved on while its lease was renewed");
                }
                Err(e) => warn!(item = %lease.item, error = %e, "could not renew the step's lease"),
            }
        }
    }

    /// Executes one step of a loaded run and commits it with the steps `chain` deferred, or defers
    /// it too; returns the run's next item if this worker took it (`work` is then up to date for
    /// it).
    async fn step(
        &self,
        work: &mut Work,
        chain: &mut Chain,
        item: QueueItem,
    ) -> Result<Option<QueueItem>> {
        let acted_before = work
            .records
            .iter()
            .any(|r| r.step_id != item.step_id && !work.is_pure(&r.step_id));
        if acted_before && !work.is_pure(&item.step_id) {
            // An earlier step's effect must not be repeated after a crash once this one acts.
            self.store.flush().await?;
        }
        let tried = self.attempt_in_chain(work, chain, &item).await?;
        let now = self.now();
        let previous = work
            .records
            .iter()
            .find(|r| r.step_id == item.step_id)
            .cloned();
        if let (Tried::Done(_), true) = (&tried, work.is_pure(&item.step_id)) {
            let step = (&item, &tried, previous.as_ref());
            if let Some(mut update) = self.decide(work, work.run.clone(), step, now) {
                if let Some(next) = update.take.take().and_then(|t| t.items.into_iter().next()) {
                    work.remember(update.run, update.records);
                    if let Tried::Done(done) = tried {
                        chain.deferred.push(Deferred {
                            item,
                            previous,
                            done,
                        });
                    }
                    return Ok(Some(next));
                }
            }
        }
        let taken = Mutex::new(None);
        let committed = self
            .store
            .update_run(item.run_id, Some(&chain.lease), &|run| {
                let (run, mut records, queued) =
                    match chain.replay(&work.flow, run, &item.step_id, now) {
                        Replayed::Followed(run, records, queued) => (run, records, queued),
                        Replayed::Diverged(update) => return update,
                    };
                // The item the stored run expects for this step (a postponement must name it).
                let expected = queued.as_ref().or(chain.expected.as_ref()).unwrap_or(&item);
                let step = (expected, &tried, previous.as_ref());
                let mut update = self.decide(work, run, step, now)?;
                records.append(&mut update.records);
                update.records = records;
                *taken.lock().unwrap_or_else(PoisonError::into_inner) = update
                    .take
                    .as_ref()
                    .and_then(|take| take.items.first().cloned())
                    .map(|next| (next, update.records.clone()));
                Some(update)
            })
            .await?;
        chain.deferred.clear();
        chain.expected = None;
        let Some(committed) = committed else {
            return Ok(None);
        };
        self.announce(Some(committed.run.clone()));
        let next = taken.into_inner().unwrap_or_else(PoisonError::into_inner);
        let (Some((next, records)), Some(lease)) = (next, committed.taken.into_iter().next())
        else {
            return Ok(None);
        };
        chain.hold(lease);
        work.remember(committed.run, records);
        Ok(Some(next))
    }

    /// Attempts the step; a step with effects that outlasts [`DEFERRED_PATIENCE`] first has the
    /// pure steps deferred ahead of it committed on their own (with itself leased), so the run's
    /// page shows them while a slow call is in flight.
    async fn attempt_in_chain(
        &self,
        work: &Work,
        chain: &mut Chain,
        item: &QueueItem,
    ) -> Result<Tried> {
        if chain.deferred.is_empty() || work.is_pure(&item.step_id) {
            return Ok(self.attempt(work, item).await);
        }
        let attempt = self.attempt(work, item);
        tokio::pin!(attempt);
        tokio::select! {
            tried = &mut attempt => return Ok(tried),
            () = tokio::time::sleep(DEFERRED_PATIENCE) => {}
        }
        let now = self.now();
        let until = now.plus(self.config.lease);
        // The item the run expects for this step, as written (the closure may run more than once).
        let expected = Mutex::new(None);
        let committed = self
            .store
            .update_run(item.run_id, Some(&chain.lease), &|run| {
                let replayed = chain.replay(&work.flow, run, &item.step_id, now);
                let (update, queued) = match replayed {
                    Replayed::Followed(run, records, queued) => (
                        Some(RunUpdate {
                            run,
                            records,
                            enqueue: Vec::new(),
                            take: queued.clone().map(|q| Take {
                                items: vec![q],
                                owner: self.config.node.clone(),
                                until,
                            }),
                        }),
                        queued,
                    ),
                    Replayed::Diverged(update) => (update, None),
                };
                *expected.lock().unwrap_or_else(PoisonError::into_inner) = queued;
                update
            })
            .await?;
        // That item is leased to this worker now (renewed from here on); if the run went another
        // way, the lease is gone and this step's commit will be refused.
        if let Some(lease) = committed.and_then(|c| c.taken.into_iter().next()) {
            chain.hold(lease);
            chain.expected = expected
                .into_inner()
                .unwrap_or_else(PoisonError::into_inner);
        }
        chain.deferred.clear();
        Ok(attempt.await)
    }

    /// The update for one step's outcome, applied to `run`: `advance` (or `postpone`), and the
    /// run's next item taken for this worker when it is due now, the run has nothing else queued,
    /// and the worker knows the record of every finished step (a parallel branch writes records
    /// this worker's copy of the run would miss).
    fn decide(
        &self,
        work: &Work,
        run: Run,
        (item, tried, previous): (&QueueItem, &Tried, Option<&StepRecord>),
        now: Timestamp,
    ) -> Option<RunUpdate> {
        let mut update = match tried {
            Tried::Done(done) => advance::advance(&work.flow, run, previous, done, now),
            Tried::Wait(delay) => advance::postpone(run, item, *delay, now),
            Tried::Await(until) => advance::await_callback(run, item, *until, now),
        }?;
        let known = |id: &StepId| {
            work.records
                .iter()
                .chain(&update.records)
                .any(|r| &r.step_id == id)
        };
        let alone = update.enqueue.len() == 1
            && update.run.steps.iter().all(|s| match s.status {
                StepStatus::Queued => update.enqueue[0].step_id == s.id,
                StepStatus::Succeeded | StepStatus::Failed | StepStatus::Filtered => known(&s.id),
                StepStatus::Pending | StepStatus::Skipped => true,
            });
        let keep_going = alone && !self.stopping.load(Ordering::SeqCst);
        let due = update
            .enqueue
            .iter()
            .position(|next| keep_going && next.due_at <= now);
        update.take = due.map(|i| Take {
            items: vec![update.enqueue.remove(i)],
            owner: self.config.node.clone(),
            until: now.plus(self.config.lease),
        });
        Some(update)
    }

    /// What executing an item needs (its run as `claimed` with it, or read now), or `None` when
    /// the item needs no execution (it was dropped, or its run was failed because its flow
    /// revision cannot be loaded).
    async fn load(
        &self,
        item: &QueueItem,
        lease: &Lease,
        claimed: Option<LoadedRun>,
    ) -> Result<Option<Work>> {
        let store = self.store.as_ref();
        let loaded = match claimed {
            Some(loaded) => Some(loaded),
            None => store.load_run(item.run_id).await?,
        };
        let Some(LoadedRun {
            run,
            event,
            records,
        }) = loaded.filter(|l| !l.run.status.is_final() && l.run.expects(item))
        else {
            // A run that is gone or over, or an item the run no longer expects (its step is done,
            // or was queued again by a manual retry).
            store
                .update_run(item.run_id, Some(lease), &|_| None)
                .await?;
            return Ok(None);
        };
        let flow = match self
            .catalog
            .revision(store, &run.flow_id, &run.revision)
            .await
        {
            Ok(flow) => flow,
            Err(e) if !e.is_retryable() => {
                error!(error = %e, "the run's flow revision cannot be loaded; failing the run");
                self.fail_run(item, lease, &e.to_string()).await?;
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let event = event.ok_or_else(|| {
            StoreError::NotFound(format!("event {} of run {}", run.event_id, run.id))
        })?;
        let resume_urls = self.resume_urls(&flow, run.id).await?;
        Ok(Some(Work {
            run,
            flow,
            trigger: Mutex::new(event.trigger),
            records,
            resume_urls,
        }))
    }

    /// Renders and executes the step once; the result is redacted and carries its retry delay.
    async fn attempt(&self, work: &Work, item: &QueueItem) -> Tried {
        if let Some(until) = work.run.waiting_until(&item.step_id) {
            return self.time_out(item, until);
        }
        let Work { run, flow, .. } = work;
        let step = flow
            .step(&item.step_id)
            .expect("a run's steps come from its flow revision");
        let lent = Lent::new(work, item);
        let ctx = lent.context();
        let started_at = self.now();
        let clock = Instant::now();
        let key = idempotency_key(run, &step.id);
        let rendered = std::panic::catch_unwind(AssertUnwindSafe(|| {
            step.action.render(&flow.templates, ctx)
        }))
        .unwrap_or_else(|panic| {
            self.metrics.step_panicked();
            Err(StepError::transient(panicked(panic.as_ref())))
        });
        // A step with effects sends the same request on every automatic retry of one key.
        let sent_under = (!work.is_pure(&item.step_id)).then(|| key.clone());
        let rendered = match (rendered, self.sent_before(work, item, &key)) {
            (Ok(fresh), Some(sent)) => {
                debug!("resending the request recorded for this key");
                self.metrics.request_resent(flow.id.as_str());
                Ok(resend(sent, &fresh))
            }
            // Rendered anew: kept first if a crash mid-call could not render it the same again.
            (Ok(fresh), None) if step.varies && sent_under.is_some() => {
                self.keep_before_sending(work, item, fresh, &key).await
            }
            (rendered, _) => rendered,
        };
        let log = StepLog::default();
        let (mut input, result) = match rendered {
            Err(e) => (Value::Null, StepResult::Failed(e)),
            Ok(input) => {
                // A step in a named queue waits for a place in its lane (not an attempt).
                let place = match &step.queue {
                    None => None,
                    Some(q) => {
                        let key = q.key.render(&flow.templates, ctx).unwrap_or_default();
                        let lane = crate::store::LaneKey::new(&q.name, key);
                        let entered = self.lanes.enter(
                            lane,
                            q.concurrency,
                            q.gap,
                            (item.id, item.run_id),
                            step.timeout,
                        );
                        match entered.await {
                            Ok(place) => Some(place),
                            Err(wait) => return Tried::Wait(wait),
                        }
                    }
                };
                let cx = ExecContext {
                    run_id: run.id,
                    step_id: step.id.clone(),
                    attempt: item.attempt,
                    idempotency_key: key,
                    dry_run: self.config.dry_run,
                    timeout: step.timeout,
                    http: self.http.clone(),
                    pacer: self.pacer.clone(),
                    templates: flow.templates.clone(),
                    context: ctx.clone(),
                    sub_flows: Some(self.sub_flows.clone()),
                    clock: self.config.clock.clone(),
                    state: Some(crate::steps::SharedState::new(self.store.clone())),
                    log: log.clone(),
                    storage: crate::steps::storage::StepStorage::Store(self.store.clone()),
                };
                // A panic fails the attempt like any error; the worker, its slot and its lease
                // carry on.
                let execute = AssertUnwindSafe(step.action.execute(input.clone(), &cx));
                let outcome = tokio::time::timeout(step.timeout, execute.catch_unwind()).await;
                // The lane's place is given back however the attempt ended.
                if let Some(place) = place {
                    place.leave().await;
                }
                let result = match outcome {
                    Err(_) if step.action.may_repeat() => StepResult::Failed(StepError::transient(
                        format!("the step timed out after {:?}", step.timeout),
                    )),
                    Err(_) => StepResult::Failed(StepError::permanent(format!(
                        "the step timed out after {:?} and is not retried: its call may have \
                         created a record, and a retry could create another",
                        step.timeout
                    ))),
                    Ok(Err(panic)) => {
                        self.metrics.step_panicked();
                        StepResult::Failed(StepError::transient(panicked(panic.as_ref())))
                    }
                    Ok(Ok(Err(e))) => StepResult::Failed(e),
                    Ok(Ok(Ok(Outcome::Output(v)))) => StepResult::Output(v),
                    Ok(Ok(Ok(Outcome::Stop { output, reason }))) => {
                        StepResult::Stop { output, reason }
                    }
                    Ok(Ok(Ok(Outcome::Wait { delay, reason }))) => {
                        info!(?delay, reason = %flow.secrets.redact_text(&reason), "step waits");
                        return Tried::Wait(delay);
                    }
                    Ok(Ok(Ok(Outcome::Await { .. }))) if self.config.base_url.is_none() => {
                        StepResult::Failed(StepError::permanent(
                            "the step waits for a callback, which only a running server \
                             (`hookflow serve`) receives",
                        ))
                    }
                    Ok(Ok(Ok(Outcome::Await { until }))) => {
                        info!(%until, "step waits for a callback");
                        return Tried::Await(until);
                    }
                };
                (input, result)
            }
        };
        flow.secrets.redact(&mut input);
        let result = redact_result(result, &flow.secrets);
        let retry_in = match &result {
            StepResult::Failed(e) if step.retry.covers(e) && !self.config.no_retries => {
                step.retry.next_delay(item.attempt, e.retry_after)
            }
            _ => None,
        };
        self.metrics
            .step_took(flow.id.as_str(), step.kind, clock.elapsed());
        if retry_in.is_some() {
            self.metrics.retry_scheduled(flow.id.as_str());
        }
        match &result {
            StepResult::Failed(e) => warn!(error = %e.message, retry_in = ?retry_in, "step failed"),
            _ => debug!("step done"),
        }
        Tried::Done(Box::new(Attempted {
            step_id: item.step_id.clone(),
            attempt: item.attempt,
            input,
            result,
            started_at,
            duration_ms: clock.elapsed().as_millis() as u64,
            retry_in,
            node: Some(self.config.node.clone()),
            sent_under,
            logs: redact_lines(log.take(), &flow.secrets),
        }))
    }

    /// A waiting `wait_for_callback` step's item came due: the step takes its `timeout` path (or,
    /// claimed early by a node whose clock is behind, waits on).
    fn time_out(&self, item: &QueueItem, until: Timestamp) -> Tried {
        let now = self.now();
        if now < until {
            return Tried::Await(until);
        }
        info!("no callback came in time: the step times out");
        Tried::Done(Box::new(Attempted::at_once(
            (item.step_id.clone(), item.attempt),
            serde_json::json!({ "waited_until": until }),
            serde_json::json!({ "path": crate::steps::callback::TIMEOUT_PATH, "timed_out": true }),
            now,
            self.config.node.clone(),
        )))
    }

    /// The request an earlier attempt of this step sent under `key` (its recorded input), when
    /// this attempt is an automatic retry of a step with effects, or runs again after a crash
    /// interrupted a call whose input was stored before it was made.
    fn sent_before<'w>(&self, work: &'w Work, item: &QueueItem, key: &str) -> Option<&'w Value> {
        if work.is_pure(&item.step_id) {
            return None;
        }
        let record = work.records.iter().find(|r| r.step_id == item.step_id)?;
        let stored = record.rendered_for.as_deref() == Some(key);
        let retried = item.attempt > 1
            && record
                .attempts
                .last()
                .is_some_and(|last| last.sent_under.as_deref() == Some(key));
        ((stored || retried) && !record.input.is_null()).then_some(&record.input)
    }

    /// Stores a step's freshly rendered input (redacted) as its record before the call is made,
    /// durably, for a step whose input differs each time it is rendered: a crash mid-call then
    /// resends this request under its key. Returns the input to send.
    async fn keep_before_sending(
        &self,
        work: &Work,
        item: &QueueItem,
        input: Value,
        key: &str,
    ) -> Result<Value, StepError> {
        let mut kept = input.clone();
        work.flow.secrets.redact(&mut kept);
        let earlier = work.records.iter().find(|r| r.step_id == item.step_id);
        let record = StepRecord {
            run_id: item.run_id,
            step_id: item.step_id.clone(),
            kind: work
                .flow
                .step(&item.step_id)
                .map_or("unknown", |s| s.kind)
                .to_owned(),
            status: StepStatus::Queued,
            input: kept,
            output: None,
            error: None,
            attempts: earlier.map(|r| r.attempts.clone()).unwrap_or_default(),
            rendered_for: Some(key.to_owned()),
        };
        let stored = async {
            self.store
                .update_run(item.run_id, None, &|run| {
                    // Pending too: pure steps before it may be deferred, not yet committed.
                    let open = run.step_status(&item.step_id).is_some_and(|s| !s.is_done());
                    (open && !run.status.is_final()).then(|| RunUpdate {
                        run,
                        records: vec![record.clone()],
                        enqueue: Vec::new(),
                        take: None,
                    })
                })
                .await?;
            self.store.flush().await
        };
        match stored.await {
            Ok(()) => Ok(input),
            Err(e) => Err(StepError::transient(format!(
                "could not store the request before sending it: {e}"
            ))),
        }
    }

    /// Fails a run that cannot go on (its flow revision cannot be loaded): no step of it can run.
    async fn fail_run(&self, item: &QueueItem, lease: &Lease, why: &str) -> Result<()> {
        let reason = format!("step `{}` could not run: {why}", item.step_id);
        let now = self.now();
        let run = self
            .store
            .update_run(item.run_id, Some(lease), &|mut run| {
                advance::finish(&mut run, RunStatus::Failed, Some(reason.clone()), now);
                run.updated_at = now;
                Some(RunUpdate {
                    run,
                    records: Vec::new(),
                    enqueue: Vec::new(),
                    take: None,
                })
            })
            .await?;
        self.announce(run.map(|c| c.run));
        Ok(())
    }

    fn announce(&self, run: Option<Run>) {
        if let Some(run) = run.filter(|r| r.status.is_final()) {
            debug!(run_id = %run.id, status = %run.status, "run finished");
            self.metrics.run_finished(run.flow_id.as_str(), run.status);
        }
    }
}

/// The request to resend: the one recorded (`sent`), with each redacted value (a credential, never
/// recorded) taken from the input rendered now (`fresh`).
fn resend(sent: &Value, fresh: &Value) -> Value {
    match sent {
        Value::String(s) if s.contains(crate::secrets::REDACTED) => fresh.clone(),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), resend(v, fresh.get(k).unwrap_or(&Value::Null))))
                .collect(),
        ),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| resend(v, fresh.get(i).unwrap_or(&Value::Null)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The error message of a step that panicked.
fn panicked(panic: &(dyn std::any::Any + Send)) -> String {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_owned());
    format!("step panicked: {message}")
}

/// A step's log lines with the flow's secrets redacted, as recorded.
pub(crate) fn redact_lines(lines: Vec<String>, secrets: &Secrets) -> Vec<String> {
    lines.iter().map(|l| secrets.redact_text(l)).collect()
}

/// The result with the flow's secrets (and values derived from them) redacted, as recorded.
pub(crate) fn redact_result(result: StepResult, secrets: &Secrets) -> StepResult {
    match result {
        StepResult::Output(mut v) => {
            secrets.redact(&mut v);
            StepResult::Output(v)
        }
        StepResult::Stop { mut output, reason } => {
            secrets.redact(&mut output);
            StepResult::Stop {
                output,
                reason: secrets.redact_text(&reason),
            }
        }
        StepResult::Failed(mut e) => {
            e.message = secrets.redact_text(&e.message);
            secrets.redact(&mut e.detail);
            StepResult::Failed(e)
        }
    }
}

/// How many revisions a flow's history keeps (the newest).
const MAX_HISTORY: usize = 100;

/// A new catch-hook token: 160 random bits, hex.
fn new_token() -> String {
    let bytes: [u8; 20] = rand::random();
    bytes.iter().fold(String::with_capacity(40), |mut hex, b| {
        let _ = write!(hex, "{b:02x}");
        hex
    })
}
