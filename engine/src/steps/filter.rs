//! `filter`: lets the run go on only when its conditions pass; otherwise the run ends as `filtered`
//! (not failed), and the step records which condition stopped it.

use std::sync::Arc;

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{Action, BuildContext, ExecContext, Outcome, StepError, StepKind};
use crate::expr::{Condition, ConditionSpec, Templates};

/// Continue only if the conditions pass, e.g. `all: [{ value: "{{trigger.body.amount}}", gt: 10 }]`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct FilterSpec(pub ConditionSpec);

impl StepKind for FilterSpec {
    const KIND: &'static str = "filter";

    fn build(self, cx: &mut BuildContext<'_>) -> Option<Arc<dyn Action>> {
        let condition = cx.condition("", &self.0)?;
        Some(Arc::new(Filter { condition }))
    }
}

#[derive(Debug)]
struct Filter {
    condition: Condition,
}

#[async_trait]
impl Action for Filter {
    fn is_pure(&self) -> bool {
        true
    }

    fn render(&self, templates: &Templates, ctx: &Value) -> Result<Value, StepError> {
        let verdict = self.condition.evaluate(templates, ctx)?;
        Ok(json!({ "passed": verdict.passed, "reason": verdict.reason }))
    }

    async fn execute(&self, input: Value, _cx: &ExecContext) -> Result<Outcome, StepError> {
        if input["passed"] == Value::Bool(true) {
            return Ok(Outcome::Output(input));
        }
        let reason = input["reason"]
            .as_str()
            .unwrap_or("the conditions did not pass")
            .to_owned();
        Ok(Outcome::Stop {
            output: input,
            reason,
        })
    }
}
