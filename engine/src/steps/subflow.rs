//! `flow` (sub-flows): starts a run of another deployed flow with a payload, and optionally waits
//! for its result. The child run is started once per step (its dedupe key is the step's
//! idempotency key), so a retry or a crash never starts it twice. Waiting is durable: while the
//! child runs, the step goes back to the queue and looks again a second later, holding nothing in
//! memory. A child that fails fails the step; a filtered child succeeds with its status.
//!
//! The child's `trigger.body` is the payload, and `trigger.parent` names the calling run
//! (`run_id`, `flow`, `step`, `depth`); flows may call flows up to a depth of 8.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{Action, BuildContext, ExecContext, Outcome, StepError, StepKind};
use crate::expr::{Templates, ValueExpr};
use crate::ids::FlowId;
use crate::model::{RunStatus, Timestamp};

/// How deep flows may call flows.
const MAX_DEPTH: u64 = 8;

/// How often a waiting step looks at its child run.
const POLL: Duration = Duration::from_secs(1);

/// Start a run of another flow.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SubflowSpec {
    /// The flow's id.
    pub id: String,
    /// The child run's `trigger.body` (templates).
    #[serde(default)]
    pub payload: Value,
    /// Wait for the child run to finish; the step's output is then its result.
    #[serde(default)]
    pub wait: bool,
}

impl StepKind for SubflowSpec {
    const KIND: &'static str = "flow";

    fn build(self, cx: &mut BuildContext<'_>) -> Option<Arc<dyn Action>> {
        let flow = match self.id.parse::<FlowId>() {
            Ok(id) => Some(id),
            Err(e) => {
                cx.error("id", e.to_string());
                None
            }
        };
        let payload = cx.value("payload", &self.payload);
        Some(Arc::new(Subflow {
            flow: flow?,
            payload: payload?,
            wait: self.wait,
        }))
    }
}

#[derive(Debug)]
struct Subflow {
    flow: FlowId,
    payload: ValueExpr,
    wait: bool,
}

#[async_trait]
impl Action for Subflow {
    /// `{flow, payload, wait}`.
    fn render(&self, t: &Templates, ctx: &Value) -> Result<Value, StepError> {
        Ok(json!({ "flow": self.flow, "payload": self.payload.render(t, ctx)?, "wait": self.wait }))
    }

    async fn execute(&self, input: Value, cx: &ExecContext) -> Result<Outcome, StepError> {
        if cx.dry_run {
            return Ok(Outcome::Output(
                json!({ "dry_run": true, "request": input }),
            ));
        }
        let Some(flows) = &cx.sub_flows else {
            return Err(StepError::permanent("sub-flows run only on a server"));
        };
        let depth = cx.context["trigger"]["parent"]["depth"]
            .as_u64()
            .unwrap_or(0)
            + 1;
        if depth > MAX_DEPTH {
            return Err(StepError::permanent(format!(
                "flows call flows {depth} deep here: at most {MAX_DEPTH} (is a flow calling itself?)"
            )));
        }
        let trigger = json!({
            "method": "FLOW",
            "headers": {},
            "query": {},
            "body": input["payload"],
            "parent": { "run_id": cx.run_id, "flow": cx.context["run"]["flow"], "step": cx.step_id, "depth": depth },
            "received_at": Timestamp::now(),
        });
        let run_id = flows
            .start(self.flow.as_str(), trigger, &cx.idempotency_key)
            .await?;
        if !self.wait {
            return Ok(Outcome::Output(
                json!({ "run_id": run_id, "status": "queued" }),
            ));
        }
        match flows.outcome(run_id).await? {
            None => Ok(Outcome::Wait {
                delay: POLL,
                reason: format!("waiting for the run {run_id} of flow `{}`", self.flow),
            }),
            Some(done) if done.status == RunStatus::Failed => Err(StepError::permanent(format!(
                "the run {run_id} of flow `{}` failed: {}",
                self.flow,
                done.reason.unwrap_or_default()
            ))),
            Some(done) => Ok(Outcome::Output(json!({
                "run_id": run_id, "status": done.status, "reason": done.reason, "output": done.output,
            }))),
        }
    }
}
