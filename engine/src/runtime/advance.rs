//! The executor's decisions, as pure functions: which items a new run starts with, and how a run
//! changes after a step attempt. No I/O here: the worker performs the step, then hands the result to
//! [`advance`] inside the store's atomic `update_run`, which writes what it returns.

use std::time::Duration;

use serde_json::Value;

use crate::flow::Flow;
use crate::ids::{ItemId, RunId, StepId};
use crate::model::{
    Attempt, Event, QueueItem, Run, RunStatus, StepFailure, StepProgress, StepRecord, StepStatus,
    Timestamp,
};
use crate::steps::StepError;
use crate::store::{NewRun, RunUpdate};

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
}

/// A new run of `flow` for `event`: queued, every step pending except the roots, which are queued.
pub fn start(flow: &Flow, event: Event, run_id: RunId, now: Timestamp) -> NewRun {
    let steps = flow
        .steps
        .iter()
        .map(|s| StepProgress {
            id: s.id.clone(),
            status: if s.needs.is_empty() {
                StepStatus::Queued
            } else {
                StepStatus::Pending
            },
        })
        .collect();
    let items = flow.roots().map(|s| item(run_id, &s.id, 1, now)).collect();
    let run = Run {
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
    };
    NewRun { event, run, items }
}

fn item(run_id: RunId, step: &StepId, attempt: u32, due_at: Timestamp) -> QueueItem {
    QueueItem {
        id: ItemId::new(),
        run_id,
        step_id: step.clone(),
        attempt,
        due_at,
    }
}

/// How `run` changes after the attempt `done`. `previous` is the step's record before this attempt.
///
/// Returns `None` when the attempt is stale (the step was already finished, e.g. an item run twice
/// after a crash): nothing is written. When the run is already final (another branch failed or
/// filtered it) only the step's record is written.
pub fn advance(
    flow: &Flow,
    mut run: Run,
    previous: Option<&StepRecord>,
    done: &Attempted,
    now: Timestamp,
) -> Option<RunUpdate> {
    if run.step_status(&done.step_id)?.is_done() {
        return None;
    }
    let run_was_final = run.status.is_final();
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
    let mut attempts = previous.map(|r| r.attempts.clone()).unwrap_or_default();
    attempts.push(Attempt {
        number: done.attempt,
        started_at: done.started_at,
        duration_ms: done.duration_ms,
        error: error.as_ref().map(|e| e.message.clone()),
        retry_at,
    });
    let kind = flow.step(&done.step_id).map_or("unknown", |s| s.kind);
    let record = StepRecord {
        run_id: run.id,
        step_id: done.step_id.clone(),
        kind: kind.to_owned(),
        status,
        input: done.input.clone(),
        output,
        error,
        attempts,
    };
    run.set_step_status(&done.step_id, status);
    run.updated_at = now;
    let mut enqueue = Vec::new();

    if !run_was_final {
        match (&done.result, retry_at) {
            (StepResult::Failed(_), Some(at)) => {
                enqueue.push(item(run.id, &done.step_id, done.attempt + 1, at));
                run.status = RunStatus::Running;
            }
            (StepResult::Failed(e), None) => {
                let reason = format!("step `{}` failed: {}", done.step_id, e.message);
                finish(&mut run, RunStatus::Failed, Some(reason), now);
            }
            (StepResult::Stop { reason, .. }, _) => {
                let reason = format!("filtered by step `{}`: {reason}", done.step_id);
                finish(&mut run, RunStatus::Filtered, Some(reason), now);
            }
            (StepResult::Output(_), _) => {
                run.status = RunStatus::Running;
                for step in &flow.steps {
                    let ready = run.step_status(&step.id) == Some(StepStatus::Pending)
                        && step
                            .needs
                            .iter()
                            .all(|n| run.step_status(n) == Some(StepStatus::Succeeded));
                    if ready {
                        run.set_step_status(&step.id, StepStatus::Queued);
                        enqueue.push(item(run.id, &step.id, 1, now));
                    }
                }
                if run.steps.iter().all(|s| s.status.is_done()) {
                    finish(&mut run, RunStatus::Succeeded, None, now);
                }
            }
        }
    }
    Some(RunUpdate {
        run,
        records: vec![record],
        enqueue,
    })
}

/// Ends a run: the steps that had not run are skipped.
fn finish(run: &mut Run, status: RunStatus, reason: Option<String>, now: Timestamp) {
    run.status = status;
    run.reason = reason;
    run.finished_at = Some(now);
    for s in &mut run.steps {
        if matches!(s.status, StepStatus::Pending | StepStatus::Queued) {
            s.status = StepStatus::Skipped;
        }
    }
}
