//! `map`: reshapes data. Its config is the output it produces, with templates and JSONPaths
//! rendered against the run context; a lone `{{path}}` or `$.path` keeps its JSON type.

use std::sync::Arc;

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use super::{Action, BuildContext, ExecContext, Outcome, StepError, StepKind};
use crate::expr::{Templates, ValueExpr};

/// The output to produce, e.g. `{ email: "{{trigger.body.user_email}}", plan: "{{upper trigger.body.plan}}" }`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct MapSpec(pub serde_json::Map<String, Value>);

impl StepKind for MapSpec {
    const KIND: &'static str = "map";

    fn build(self, cx: &mut BuildContext<'_>) -> Option<Arc<dyn Action>> {
        let shape = cx.value("", &Value::Object(self.0))?;
        Some(Arc::new(Map { shape }))
    }
}

#[derive(Debug)]
struct Map {
    shape: ValueExpr,
}

#[async_trait]
impl Action for Map {
    fn is_pure(&self) -> bool {
        true
    }

    fn render(&self, templates: &Templates, ctx: &Value) -> Result<Value, StepError> {
        Ok(self.shape.render(templates, ctx)?)
    }

    async fn execute(&self, input: Value, _cx: &ExecContext) -> Result<Outcome, StepError> {
        Ok(Outcome::Output(input))
    }
}
