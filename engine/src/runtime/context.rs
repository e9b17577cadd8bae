//! The run context templates render against (redaction of what gets recorded is in
//! [`crate::secrets`]).
//!
//! Context: `trigger` (the event as received), `steps.<id>` (outputs of finished steps, and
//! `{"error": …}` for a failed `on_error: continue` step; `resume_url` of every
//! `wait_for_callback` step, from the start), and `run` (`id`, `flow`, `revision`,
//! `attempt`, `idempotency_key`, and `error`: why the run failed, while its `on_failure` steps run).

use std::sync::Arc;

use serde_json::{json, Map, Value};

use crate::ids::StepId;
use crate::model::{Run, StepRecord};

/// The context for an attempt of `step` in `run`, on the event's `trigger` (moved in: a webhook's
/// body is the largest part, and [`take_trigger`] gets it back after the attempt).
pub fn run_context(
    trigger: Value,
    run: &Run,
    records: &[StepRecord],
    step: &StepId,
    attempt: u32,
) -> Value {
    let steps: Map<String, Value> = records
        .iter()
        // Succeeded and filtered steps, and failed ones whose run went on (`on_error: continue`).
        .filter_map(|r| Some((r.step_id.to_string(), r.output.clone()?)))
        .collect();
    let run = json!({
        "id": run.id,
        "flow": run.flow_id,
        "revision": run.revision,
        "attempt": attempt,
        "idempotency_key": idempotency_key(run, step),
        "error": run.failure,
    });
    // Built field by field: `json!` would copy the trigger and the outputs once more.
    Value::Object(Map::from_iter([
        ("trigger".to_owned(), trigger),
        ("steps".to_owned(), Value::Object(steps)),
        ("run".to_owned(), run),
    ]))
}

/// Adds `steps.<id>.resume_url` to a context for each `wait_for_callback` step of the run (known
/// before the step runs, so the steps before it can send it).
pub fn add_resume_urls(context: &mut Value, urls: &[(StepId, String)]) {
    let Some(steps) = context.get_mut("steps").and_then(Value::as_object_mut) else {
        return;
    };
    for (step, url) in urls {
        let entry = steps
            .entry(step.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(output) = entry.as_object_mut() {
            output
                .entry("resume_url")
                .or_insert_with(|| Value::String(url.clone()));
        }
    }
}

/// The trigger out of a context [`run_context`] made: moved out when nothing else holds the
/// context any more, copied otherwise.
pub fn take_trigger(context: Arc<Value>) -> Value {
    match Arc::try_unwrap(context) {
        Ok(Value::Object(mut context)) => context.remove("trigger").unwrap_or_default(),
        Ok(_) => Value::Null,
        Err(shared) => shared["trigger"].clone(),
    }
}

/// The idempotency key of a step in a run: the same for every attempt, and new after each manual
/// retry of the run (`{run_id}:{step_id}`, then `{run_id}:{step_id}:retry1`, …).
pub fn idempotency_key(run: &Run, step: &StepId) -> String {
    let retried = run
        .steps
        .iter()
        .find(|s| &s.id == step)
        .map_or(0, |s| s.retried);
    match retried {
        0 => format!("{}:{}", run.id, step),
        n => format!("{}:{}:retry{n}", run.id, step),
    }
}
