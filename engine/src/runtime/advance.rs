//! The executor's decisions, as pure functions: which items a new run starts with, and how a run
//! changes after a step attempt. No I/O here: the worker performs the step, then hands the result to
//! [`advance`] inside the store's atomic `update_run`, which writes what it returns.

use std::time::Duration;

use serde_json::{json, Value};

use crate::flow::{Flow, OnError};
use crate::ids::{ItemId, RunId, StepId};
use crate::model::{
    Attempt, Event, QueueItem, Run, RunStatus, StepFailure, StepProgress, StepRecord, StepStatus,
    Timestamp,
};
use crate::steps::StepError;
use crate::store::{NewRun, NodeId, RunUpdate};

/// How a step attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum StepResult {
    /// It produced an output.
    Output(Value),
    /// It stopped the run on purpose (a filter).
    Stop {
        /// The step's output.
        output: Value,
        /// Why.
        reason: String,
    },
    /// It failed.
    Failed(StepError),
}

/// One finished attempt, as the worker saw it (input and output already redacted).
#[derive(Debug, Clone, PartialEq)]
pub struct Attempted {
    /// The step.
    pub step_id: StepId,
    /// Which attempt (1 for the first).
    pub attempt: u32,
    /// The rendered input.
    pub input: Value,
    /// How it ended.
    pub result: StepResult,
    /// When it started.
    pub started_at: Timestamp,
    /// How long it took.
    pub duration_ms: u64,
    /// When it failed and may be retried: the delay before the next attempt.
    pub retry_in: Option<Duration>,
    /// The node that made the attempt (`None` offline).
    pub node: Option<NodeId>,
    /// For a step with effects: the idempotency key its input was sent under.
    pub sent_under: Option<String>,
    /// The lines the attempt wrote (redacted).
    pub logs: Vec<String>,
}

impl Attempted {
    /// A step's ending that took no time and no call: a `wait_for_callback` step called back or
    /// timed out, with `output`, by `node` at `at`.
    pub fn at_once(
        (step_id, attempt): (StepId, u32),
        input: Value,
        output: Value,
        at: Timestamp,
        node: NodeId,
    ) -> Self {
        Self {
            step_id,
            attempt,
            input,
            result: StepResult::Output(output),
            started_at: at,
            duration_ms: 0,
            retry_in: None,
            node: Some(node),
            sent_under: None,
            logs: Vec::new(),
        }
    }
}

/// A new run of `flow` for `event`: queued, every step pending except the roots, which are queued.
pub fn start(flow: &Flow, event: Event, run_id: RunId, now: Timestamp) -> NewRun {
    let steps = flow
        .steps
        .iter()
        .map(|s| StepProgress::new(s.id.clone(), StepStatus::Pending))
        .collect();
    let mut run = Run {
        id: run_id,
        flow_id: flow.id.clone(),
        revision: flow.revision.clone(),
        event_id: event.id,
        status: RunStatus::Queued,
        created_at: now,
        updated_at: now,
        finished_at: None,
        steps,
        reason: None,
        title: title(flow, &event.trigger),
        replay_of: None,
        started_by: None,
        failure: None,
    };
    let items = queue_ready(flow, &mut run, now);
    NewRun {
        event,
        run,
        items,
        dedupe: None,
        records: Vec::new(),
    }
}

/// The flow's run title for a trigger. A title that does not render, or renders no letter or
/// digit (every field it reads missing), is left out: never an error.
fn title(flow: &Flow, trigger: &Value) -> Option<String> {
    // Checked first: the context copies the whole trigger.
    let template = flow.title.as_ref()?;
    let context = json!({ "trigger": trigger });
    let text = template.render(&flow.templates, &context).ok()?;
    text.chars().any(char::is_alphanumeric).then_some(text)
}

/// Queues every pending step that can run now; returns their new items. A step can run when each
/// of its needs has succeeded or was skipped (a switch path not taken) and, on a switch path, when
/// its switch took that path. A step off the taken path, or whose needs were all skipped, is
/// skipped itself (repeated until nothing changes, so skips flow down a path).
fn queue_ready(flow: &Flow, run: &mut Run, now: Timestamp) -> Vec<QueueItem> {
    let mut items = Vec::new();
    loop {
        let mut skipped = false;
        for step in &flow.steps {
            // The on_failure steps run only while the run is failing, the others only before.
            let failing = run.failure.is_some();
            if run.step_status(&step.id) != Some(StepStatus::Pending) || step.handler != failing {
                continue;
            }
            let needs: Vec<Option<StepStatus>> =
                step.needs.iter().map(|n| run.step_status(n)).collect();
            let settled = step
                .needs
                .iter()
                .zip(&needs)
                .all(|(need, status)| match status {
                    Some(StepStatus::Succeeded | StepStatus::Skipped) => true,
                    Some(StepStatus::Failed) => flow
                        .step(need)
                        .is_some_and(|s| s.on_error == OnError::Continue),
                    _ => false,
                });
            if !settled {
                continue;
            }
            let off_path = match &step.route {
                None => false,
                Some(route) => match run.steps.iter().find(|s| s.id == route.switch) {
                    Some(s) if s.status == StepStatus::Succeeded => {
                        s.path.as_deref() != Some(route.path.as_str())
                    }
                    Some(s) if s.status == StepStatus::Skipped => true,
                    _ => continue,
                },
            };
            let all_skipped =
                !needs.is_empty() && needs.iter().all(|s| *s == Some(StepStatus::Skipped));
            if off_path || all_skipped {
                run.set_step_status(&step.id, StepStatus::Skipped);
                skipped = true;
                continue;
            }
            let item = item(run, &step.id, 1, now);
            run.queue_step(&item);
            items.push(item);
        }
        if !skipped {
            return items;
        }
    }
}

fn item(run: &Run, step: &StepId, attempt: u32, due_at: Timestamp) -> QueueItem {
    QueueItem {
        id: ItemId::new(),
        run_id: run.id,
        flow_id: run.flow_id.clone(),
        step_id: step.clone(),
        attempt,
        due_at,
    }
}

/// Why a run cannot be retried.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("run {run_id} is {status}: only failed runs can be retried (replay it to run it again)")]
pub struct NotRetryable {
    /// The run.
    pub run_id: RunId,
    /// Its status.
    pub status: RunStatus,
}

/// Resumes a failed run from where it failed: failed and skipped steps become pending again, and
/// those whose needs have succeeded are queued with a fresh retry budget. Succeeded steps keep their
/// outputs and do not run again; the failed steps get a new idempotency key (a manual retry is a
/// new request: the target may have saved its failed answer under the old key). `by` is who
/// asked (the first attempt of each retried step records it).
pub fn retry(
    flow: &Flow,
    mut run: Run,
    now: Timestamp,
    by: Option<&str>,
) -> Result<RunUpdate, NotRetryable> {
    if run.status != RunStatus::Failed {
        return Err(NotRetryable {
            run_id: run.id,
            status: run.status,
        });
    }
    let handlers: Vec<&StepId> = flow
        .steps
        .iter()
        .filter(|s| s.handler)
        .map(|s| &s.id)
        .collect();
    for s in &mut run.steps {
        if handlers.contains(&&s.id) {
            // The on_failure steps run again if the retried run fails again.
            s.status = StepStatus::Pending;
            s.item = None;
            continue;
        }
        if s.status == StepStatus::Failed {
            s.retried += 1;
            s.retried_by = by.map(str::to_owned);
        }
        if matches!(s.status, StepStatus::Failed | StepStatus::Skipped) {
            s.status = StepStatus::Pending;
            s.item = None;
        }
    }
    run.status = RunStatus::Running;
    run.reason = None;
    run.finished_at = None;
    run.updated_at = now;
    let enqueue = queue_ready(flow, &mut run, now);
    Ok(RunUpdate {
        run,
        records: Vec::new(),
        enqueue,
        take: None,
    })
}

/// How `run` changes after the attempt `done`. `previous` is the step's record before this attempt.
///
/// Returns `None` when the attempt is stale (the step was already finished, e.g. an item run twice
/// after a crash): nothing is written. When the run is already final (another branch failed or
/// filtered it while this step was executing) the step's record and status are still written, so
/// history shows what the step did, but the run does not change.
pub fn advance(
    flow: &Flow,
    mut run: Run,
    previous: Option<&StepRecord>,
    done: &Attempted,
    now: Timestamp,
) -> Option<RunUpdate> {
    let run_was_final = run.status.is_final();
    let current = run.step_status(&done.step_id)?;
    let finished_late = run_was_final && current == StepStatus::Skipped;
    if current.is_done() && !finished_late {
        return None;
    }
    let (status, output, error, retry_at) = match &done.result {
        StepResult::Output(v) => (StepStatus::Succeeded, Some(v.clone()), None, None),
        StepResult::Stop { output, .. } => (StepStatus::Filtered, Some(output.clone()), None, None),
        StepResult::Failed(e) => {
            let retry_at = done
                .retry_in
                .filter(|_| !run_was_final)
                .map(|d| now.plus(d));
            let status = if retry_at.is_some() {
                StepStatus::Queued
            } else {
                StepStatus::Failed
            };
            let failure = StepFailure {
                message: e.message.clone(),
                detail: e.detail.clone(),
                retryable: e.retryable,
            };
            (status, None, Some(failure), retry_at)
        }
    };
    let step = flow.step(&done.step_id);
    // A final failure of an `on_error: continue` step: the run goes on, and the step's output says
    // what went wrong.
    let continues = retry_at.is_none()
        && matches!(done.result, StepResult::Failed(_))
        && step.is_some_and(|s| s.on_error == OnError::Continue && !s.handler);
    let output = match (&error, continues) {
        (Some(e), true) => Some(json!({ "error": { "message": e.message, "detail": e.detail } })),
        _ => output,
    };
    let mut attempts = previous.map(|r| r.attempts.clone()).unwrap_or_default();
    // The first attempt after a person retried the step says who did.
    let retried_by = run
        .steps
        .iter()
        .find(|s| s.id == done.step_id && s.retried > 0 && done.attempt == 1)
        .and_then(|s| s.retried_by.clone());
    attempts.push(Attempt {
        // Numbered across manual retries too (each of which restarts `done.attempt` at 1).
        number: attempts.len() as u32 + 1,
        started_at: done.started_at,
        duration_ms: done.duration_ms,
        error: error.as_ref().map(|e| e.message.clone()),
        retry_at,
        node: done.node.clone(),
        sent_under: done.sent_under.clone(),
        retried_by,
        logs: done.logs.clone(),
    });
    let kind = step.map_or("unknown", |s| s.kind);
    let record = StepRecord {
        run_id: run.id,
        step_id: done.step_id.clone(),
        kind: kind.to_owned(),
        status,
        input: done.input.clone(),
        output,
        error,
        attempts,
        rendered_for: None,
    };
    run.set_step_status(&done.step_id, status);
    if let (StepResult::Output(output), Some(step)) = (&done.result, step) {
        if !step.action.paths().is_empty() {
            let taken = output["path"].as_str().map(str::to_owned);
            if let Some(progress) = run.steps.iter_mut().find(|s| s.id == done.step_id) {
                progress.path = taken;
            }
        }
    }
    run.updated_at = now;
    let mut enqueue = Vec::new();

    if !run_was_final {
        match (&done.result, retry_at) {
            (StepResult::Failed(_), Some(at)) => {
                let next = item(&run, &done.step_id, done.attempt + 1, at);
                run.queue_step(&next);
                enqueue.push(next);
                run.status = RunStatus::Running;
            }
            (StepResult::Failed(_), None) if continues => {
                enqueue = settle(flow, &mut run, now, now);
            }
            (StepResult::Failed(e), None) => {
                let reason = format!("step `{}` failed: {}", done.step_id, e.message);
                enqueue = fail(flow, &mut run, reason, now);
            }
            (StepResult::Stop { reason, .. }, _) => match run.failure.take() {
                // A filter among the on_failure steps ends them.
                Some(failure) => finish(&mut run, RunStatus::Failed, Some(failure), now),
                None => {
                    let reason = format!("filtered by step `{}`: {reason}", done.step_id);
                    finish(&mut run, RunStatus::Filtered, Some(reason), now);
                }
            },
            (StepResult::Output(output), _) => {
                let due = step
                    .and_then(|s| s.action.resume_at(output))
                    .map_or(now, |at| at.max(now));
                enqueue = settle(flow, &mut run, now, due);
            }
        }
    }
    Some(RunUpdate {
        run,
        records: vec![record],
        enqueue,
        take: None,
    })
}

/// After a step is done: queues what can run (due at `due`: later after a `delay`), and ends the
/// run when every step is done (`failed` with its reason when it was running its `on_failure`
/// steps, else `succeeded`).
fn settle(flow: &Flow, run: &mut Run, now: Timestamp, due: Timestamp) -> Vec<QueueItem> {
    run.status = RunStatus::Running;
    let enqueue = queue_ready(flow, run, due);
    // While the run is not failing, its on_failure steps wait for nothing.
    let failing = run.failure.is_some();
    let waiting = |s: &StepProgress| {
        !s.status.is_done() && (failing || !flow.step(&s.id).is_some_and(|f| f.handler))
    };
    if !run.steps.iter().any(waiting) {
        match run.failure.take() {
            Some(failure) => finish(run, RunStatus::Failed, Some(failure), now),
            None => finish(run, RunStatus::Succeeded, None, now),
        }
    }
    enqueue
}

/// A step failed for good: the run fails, after its flow's `on_failure` steps if it has any (the
/// steps that had not run are skipped, the handlers queued). A failing handler ends the run.
fn fail(flow: &Flow, run: &mut Run, reason: String, now: Timestamp) -> Vec<QueueItem> {
    if let Some(failure) = run.failure.take() {
        let reason = format!("{failure} (then an on_failure step failed: {reason})");
        finish(run, RunStatus::Failed, Some(reason), now);
        return Vec::new();
    }
    if !flow.steps.iter().any(|s| s.handler) {
        finish(run, RunStatus::Failed, Some(reason), now);
        return Vec::new();
    }
    run.failure = Some(reason);
    for s in &mut run.steps {
        if matches!(s.status, StepStatus::Pending | StepStatus::Queued) {
            s.status = StepStatus::Skipped;
            s.item = None;
        }
    }
    // The handlers were skipped with the rest: they are the ones to run now.
    for handler in flow.steps.iter().filter(|s| s.handler) {
        run.set_step_status(&handler.id, StepStatus::Pending);
    }
    settle(flow, run, now, now)
}

/// Puts a step that could not act yet (a rate limit) back in the queue, due after `delay`, with the
/// same attempt number; its history is unchanged. `None` when the item is stale or the run is over.
pub fn postpone(
    run: Run,
    item_done: &QueueItem,
    delay: Duration,
    now: Timestamp,
) -> Option<RunUpdate> {
    requeue(run, item_done, now.plus(delay), now)
}

/// Holds a step that waits for a callback (`wait_for_callback`): its item is queued again, due at
/// `until` (when it times out), with the same attempt number, and the run says until when it
/// waits. `None` when the item is stale or the run is over.
pub fn await_callback(
    run: Run,
    item_done: &QueueItem,
    until: Timestamp,
    now: Timestamp,
) -> Option<RunUpdate> {
    let mut update = requeue(run, item_done, until, now)?;
    if let Some(s) = update
        .run
        .steps
        .iter_mut()
        .find(|s| s.id == item_done.step_id)
    {
        s.waiting_until = Some(until);
    }
    Some(update)
}

/// Queues `item_done`'s step again, due at `due`, with the same attempt number.
fn requeue(
    mut run: Run,
    item_done: &QueueItem,
    due: Timestamp,
    now: Timestamp,
) -> Option<RunUpdate> {
    if run.status.is_final() || !run.expects(item_done) {
        return None;
    }
    let next = item(&run, &item_done.step_id, item_done.attempt, due);
    run.queue_step(&next);
    run.status = RunStatus::Running;
    run.updated_at = now;
    Some(RunUpdate {
        run,
        records: Vec::new(),
        enqueue: vec![next],
        take: None,
    })
}

/// Ends a run: the steps that had not run are skipped.
pub(crate) fn finish(run: &mut Run, status: RunStatus, reason: Option<String>, now: Timestamp) {
    run.status = status;
    run.reason = reason;
    run.failure = None;
    run.finished_at = Some(now);
    for s in &mut run.steps {
        if matches!(s.status, StepStatus::Pending | StepStatus::Queued) {
            s.status = StepStatus::Skipped;
            s.item = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::flow::parse_flow;
    use crate::steps::Registry;

    /// `a` → (`b`, `c`) → `d`: a fan-out and a join.
    const DIAMOND: &str = r#"
id: diamond
trigger: { webhook: }
steps:
  - { id: a, map: { x: 1 } }
  - { id: b, needs: [a], map: { x: 2 } }
  - { id: c, needs: [a], map: { x: 3 } }
  - { id: d, needs: [b, c], map: { x: 4 } }
"#;

    fn flow(yaml: &str) -> Flow {
        parse_flow("test.yaml", yaml, &Registry::builtin(), &|_| None).expect("valid flow")
    }

    fn id(s: &str) -> StepId {
        s.parse().unwrap()
    }

    fn new_run(flow: &Flow) -> NewRun {
        let event = Event {
            id: crate::ids::EventId::new(),
            flow_id: flow.id.clone(),
            received_at: Timestamp(0),
            trigger: json!({}),
        };
        start(flow, event, RunId::new(), Timestamp(0))
    }

    fn attempt(step: &str, n: u32, result: StepResult, retry_in: Option<Duration>) -> Attempted {
        Attempted {
            step_id: id(step),
            attempt: n,
            input: json!({}),
            result,
            started_at: Timestamp(10),
            duration_ms: 5,
            retry_in,
            node: None,
            sent_under: None,
            logs: Vec::new(),
        }
    }

    fn ok(step: &str) -> Attempted {
        attempt(step, 1, StepResult::Output(json!({ "from": step })), None)
    }

    fn statuses(run: &Run) -> Vec<(String, StepStatus)> {
        run.steps
            .iter()
            .map(|s| (s.id.to_string(), s.status))
            .collect()
    }

    fn queued(update: &RunUpdate) -> Vec<String> {
        update
            .enqueue
            .iter()
            .map(|i| i.step_id.to_string())
            .collect()
    }

    #[test]
    fn a_new_run_queues_only_its_roots() {
        let flow = flow(DIAMOND);
        let new = new_run(&flow);
        assert_eq!(new.run.status, RunStatus::Queued);
        assert_eq!(new.items.len(), 1);
        assert_eq!(new.items[0].step_id, id("a"));
        assert_eq!(new.items[0].attempt, 1);
        assert_eq!(new.run.step_status(&id("d")), Some(StepStatus::Pending));
    }

    #[test]
    fn outputs_queue_the_steps_that_become_ready_and_the_join_waits_for_both() {
        let flow = flow(DIAMOND);
        let run = new_run(&flow).run;
        let u = advance(&flow, run, None, &ok("a"), Timestamp(20)).unwrap();
        assert_eq!(u.run.status, RunStatus::Running);
        assert_eq!(queued(&u), ["b", "c"]);
        assert_eq!(u.records[0].output, Some(json!({ "from": "a" })));

        let u = advance(&flow, u.run, None, &ok("b"), Timestamp(30)).unwrap();
        assert!(u.enqueue.is_empty(), "d still waits for c");
        let u = advance(&flow, u.run, None, &ok("c"), Timestamp(40)).unwrap();
        assert_eq!(queued(&u), ["d"]);
        let u = advance(&flow, u.run, None, &ok("d"), Timestamp(50)).unwrap();
        assert_eq!(u.run.status, RunStatus::Succeeded);
        assert_eq!(u.run.finished_at, Some(Timestamp(50)));
    }

    #[test]
    fn a_repeated_attempt_of_a_finished_step_writes_nothing() {
        let flow = flow(DIAMOND);
        let u = advance(&flow, new_run(&flow).run, None, &ok("a"), Timestamp(20)).unwrap();
        assert!(advance(&flow, u.run, None, &ok("a"), Timestamp(30)).is_none());
    }

    #[test]
    fn a_postponed_step_is_queued_again_with_the_same_attempt_and_no_history() {
        let flow = flow(DIAMOND);
        let new = new_run(&flow);
        let claimed = new.items[0].clone();
        let u = postpone(new.run, &claimed, Duration::from_secs(2), Timestamp(1_000)).unwrap();
        assert_eq!(u.run.status, RunStatus::Running);
        assert!(u.records.is_empty(), "waiting is not an attempt");
        let next = &u.enqueue[0];
        assert_eq!((next.attempt, next.due_at), (1, Timestamp(3_000)));
        assert!(u.run.expects(next) && !u.run.expects(&claimed));
        assert!(
            postpone(u.run, &claimed, Duration::ZERO, Timestamp(1_000)).is_none(),
            "a stale item postpones nothing"
        );
    }

    #[test]
    fn a_retryable_failure_requeues_the_step_with_the_next_attempt_due_later() {
        let flow = flow(DIAMOND);
        let error = StepError::transient("the server answered 503");
        let failed = attempt(
            "a",
            1,
            StepResult::Failed(error),
            Some(Duration::from_secs(5)),
        );
        let u = advance(&flow, new_run(&flow).run, None, &failed, Timestamp(1_000)).unwrap();

        assert_eq!(u.run.status, RunStatus::Running);
        assert_eq!(u.run.step_status(&id("a")), Some(StepStatus::Queued));
        assert_eq!(u.enqueue.len(), 1);
        assert_eq!(
            (u.enqueue[0].attempt, u.enqueue[0].due_at),
            (2, Timestamp(6_000))
        );
        let record = &u.records[0];
        assert_eq!(record.attempts[0].retry_at, Some(Timestamp(6_000)));
        assert_eq!(
            record.error.as_ref().unwrap().message,
            "the server answered 503"
        );

        let second = advance(
            &flow,
            u.run,
            Some(record),
            &attempt("a", 2, StepResult::Output(json!(1)), None),
            Timestamp(7_000),
        )
        .unwrap();
        assert_eq!(second.records[0].attempts.len(), 2, "attempts accumulate");
        assert!(second.records[0].error.is_none());
    }

    #[test]
    fn a_final_failure_fails_the_run_and_skips_what_had_not_run() {
        let flow = flow(DIAMOND);
        let u = advance(&flow, new_run(&flow).run, None, &ok("a"), Timestamp(20)).unwrap();
        let failed = attempt(
            "b",
            1,
            StepResult::Failed(StepError::permanent("bad request")),
            None,
        );
        let u = advance(&flow, u.run, None, &failed, Timestamp(30)).unwrap();

        assert_eq!(u.run.status, RunStatus::Failed);
        assert_eq!(
            u.run.reason.as_deref(),
            Some("step `b` failed: bad request")
        );
        assert!(u.enqueue.is_empty());
        let expected = [
            ("a", StepStatus::Succeeded),
            ("b", StepStatus::Failed),
            ("c", StepStatus::Skipped),
            ("d", StepStatus::Skipped),
        ];
        assert_eq!(statuses(&u.run), expected.map(|(s, st)| (s.to_owned(), st)));

        // c was executing when b failed: its result is recorded; the run stays failed.
        let late = advance(&flow, u.run.clone(), None, &ok("c"), Timestamp(40)).unwrap();
        assert_eq!(late.run.status, RunStatus::Failed);
        assert_eq!(late.run.step_status(&id("c")), Some(StepStatus::Succeeded));
        assert_eq!(late.records[0].output, Some(json!({ "from": "c" })));
        assert!(late.enqueue.is_empty());
        assert!(
            advance(&flow, late.run, None, &ok("c"), Timestamp(50)).is_none(),
            "only once"
        );
    }

    #[test]
    fn a_retry_resumes_a_failed_run_from_what_did_not_succeed() {
        let flow = flow(DIAMOND);
        let run = new_run(&flow).run;
        assert!(matches!(
            retry(&flow, run.clone(), Timestamp(1), None),
            Err(NotRetryable {
                status: RunStatus::Queued,
                ..
            })
        ));
        let u = advance(&flow, run, None, &ok("a"), Timestamp(20)).unwrap();
        let stale_c = u
            .enqueue
            .iter()
            .find(|i| i.step_id == id("c"))
            .unwrap()
            .clone();
        let failed = attempt(
            "b",
            3,
            StepResult::Failed(StepError::permanent("400")),
            None,
        );
        let u = advance(&flow, u.run, None, &failed, Timestamp(30)).unwrap();
        assert!(!u.run.expects(&stale_c), "a failed run expects no item");

        let r = retry(&flow, u.run, Timestamp(40), Some("token")).unwrap();
        assert_eq!(r.run.status, RunStatus::Running);
        assert_eq!((r.run.reason.as_deref(), r.run.finished_at), (None, None));
        assert_eq!(
            queued(&r),
            ["b", "c"],
            "a keeps its output; b and c run again"
        );
        assert!(
            r.enqueue.iter().all(|i| i.attempt == 1),
            "a fresh retry budget"
        );
        assert!(r.enqueue.iter().all(|i| r.run.expects(i)));
        assert!(
            !r.run.expects(&stale_c),
            "the item left from before the failure is stale"
        );
        assert_eq!(r.run.step_status(&id("d")), Some(StepStatus::Pending));
        assert!(r.records.is_empty(), "history is kept as it was");
        // The failed step's retry is a new request; the others keep their keys.
        let key = |step: &str| crate::runtime::context::idempotency_key(&r.run, &id(step));
        assert_eq!(key("b"), format!("{}:b:retry1", r.run.id));
        assert_eq!(key("c"), format!("{}:c", r.run.id));

        // Attempts are numbered across the retry: b's record had one attempt before.
        let before = StepRecord {
            run_id: r.run.id,
            step_id: id("b"),
            kind: "map".into(),
            status: StepStatus::Failed,
            input: json!({}),
            output: None,
            error: None,
            attempts: vec![Attempt {
                number: 1,
                started_at: Timestamp(25),
                duration_ms: 1,
                error: Some("400".into()),
                retry_at: None,
                node: None,
                sent_under: None,
                retried_by: None,
                logs: Vec::new(),
            }],
            rendered_for: None,
        };
        let u = advance(&flow, r.run, Some(&before), &ok("b"), Timestamp(50)).unwrap();
        let last = u.records[0].attempts.last().unwrap();
        assert_eq!(last.number, 2);
        assert_eq!(last.retried_by.as_deref(), Some("token"), "who retried it");
    }

    #[test]
    fn a_filter_stop_ends_the_run_filtered_with_its_reason() {
        let flow = flow(DIAMOND);
        let stop = StepResult::Stop {
            output: json!({ "passed": false }),
            reason: "all[0]: x does not exist".into(),
        };
        let u = advance(
            &flow,
            new_run(&flow).run,
            None,
            &attempt("a", 1, stop, None),
            Timestamp(20),
        )
        .unwrap();
        assert_eq!(u.run.status, RunStatus::Filtered);
        assert_eq!(
            u.run.reason.as_deref(),
            Some("filtered by step `a`: all[0]: x does not exist")
        );
        assert_eq!(u.run.step_status(&id("a")), Some(StepStatus::Filtered));
        assert_eq!(u.run.step_status(&id("b")), Some(StepStatus::Skipped));
    }

    #[test]
    fn no_retry_is_scheduled_once_the_run_is_final() {
        let flow = flow(DIAMOND);
        let mut run = new_run(&flow).run;
        run.status = RunStatus::Failed;
        run.set_step_status(&id("a"), StepStatus::Queued);
        let failed = attempt(
            "a",
            1,
            StepResult::Failed(StepError::transient("timeout")),
            Some(Duration::from_secs(5)),
        );
        let u = advance(&flow, run, None, &failed, Timestamp(20)).unwrap();
        assert!(u.enqueue.is_empty());
        assert_eq!(u.run.step_status(&id("a")), Some(StepStatus::Failed));
    }

    #[test]
    fn a_run_is_titled_from_its_trigger_and_an_unrendered_title_is_left_out() {
        let flow = flow(
            r#"
id: titled
title: "{{trigger.body.email}} → {{trigger.body.plan}}"
trigger: { webhook: }
steps:
  - { id: a, map: { x: 1 } }
"#,
        );
        let event = |body: Value| Event {
            id: crate::ids::EventId::new(),
            flow_id: flow.id.clone(),
            received_at: Timestamp(0),
            trigger: json!({ "body": body }),
        };
        let titled = start(
            &flow,
            event(json!({ "email": "a@x.com", "plan": "pro" })),
            RunId::new(),
            Timestamp(0),
        );
        assert_eq!(titled.run.title.as_deref(), Some("a@x.com → pro"));
        let untitled = start(&flow, event(json!({})), RunId::new(), Timestamp(0));
        assert_eq!(untitled.run.title, None, "every field missing: no title");
        assert_eq!(new_run(&self::flow(DIAMOND)).run.title, None);
    }
}
