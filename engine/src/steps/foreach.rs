//! `foreach` (Zapier's Looping, n8n's Loop): runs a list of steps for each item of an array, up to
//! `concurrency` items at a time and at most `limit` items, and collects each item's outputs in
//! order. Inside, `item` and `index` are the current item, and `steps.<id>` also holds this item's
//! earlier steps. One item's failure fails the step (`on_item_error: fail`, the default: a retry runs
//! the loop again, each call keeping its idempotency key) or is reported and the loop goes on
//! (`continue`).
//!
//! The loop runs inside one step attempt: its items are not separate queue items, so its `timeout`
//! must cover them all. Each nested call's idempotency key is the step's key plus the item's index
//! and the nested step's id.

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::stream::{self, StreamExt};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{Action, BuildContext, ExecContext, NestedStep, Outcome, StepError, StepKind};
use crate::expr::{Templates, ValueExpr};
use crate::flow::OnError;

/// The most items a loop takes by default, and at most.
const DEFAULT_LIMIT: usize = 1000;
const MAX_LIMIT: usize = 10_000;

/// The most items run at once.
const MAX_CONCURRENCY: usize = 50;

/// Run steps for each item of a list.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForeachSpec {
    /// The list: a JSONPath (`$.trigger.body.line_items`) or a lone `{{path}}`.
    pub items: String,
    /// How many items run at once (default 1: in order).
    #[serde(default)]
    pub concurrency: Option<usize>,
    /// The most items taken (default 1000); more are left out and the output says `truncated`.
    #[serde(default)]
    pub limit: Option<usize>,
    /// What an item's failure does: `fail` the step (default) or `continue` with the others.
    #[serde(default)]
    pub on_item_error: OnError,
    /// The steps run for each item (`id` and one kind each, as in `steps`).
    #[schemars(with = "Vec<serde_json::Value>")]
    pub steps: Vec<serde_yaml::Value>,
}

impl StepKind for ForeachSpec {
    const KIND: &'static str = "foreach";

    fn build(self, cx: &mut BuildContext<'_>) -> Option<Arc<dyn Action>> {
        let concurrency = self.concurrency.unwrap_or(1);
        if !(1..=MAX_CONCURRENCY).contains(&concurrency) {
            cx.error("concurrency", format!("must be 1 to {MAX_CONCURRENCY}"));
        }
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            cx.error("limit", format!("must be 1 to {MAX_LIMIT}"));
        }
        if self.steps.is_empty() {
            cx.error("steps", "list the steps to run for each item");
        }
        let items = cx.value("items", &json!(self.items));
        let mut steps: Vec<NestedStep> = Vec::new();
        for (i, spec) in self.steps.iter().enumerate() {
            let Some(step) = cx.nested_step(&format!("steps[{i}]"), spec) else {
                continue;
            };
            if steps.iter().any(|s| s.id == step.id) {
                cx.error(
                    &format!("steps[{i}].id"),
                    format!("duplicate step id `{}`", step.id),
                );
                continue;
            }
            steps.push(step);
        }
        if steps.len() != self.steps.len() {
            return None;
        }
        Some(Arc::new(Foreach {
            items: items?,
            concurrency,
            limit,
            on_item_error: self.on_item_error,
            steps,
        }))
    }
}

#[derive(Debug)]
struct Foreach {
    items: ValueExpr,
    concurrency: usize,
    limit: usize,
    on_item_error: OnError,
    steps: Vec<NestedStep>,
}

/// How one item went.
enum ItemEnd {
    Done(Value),
    Wait(std::time::Duration),
    Failed(StepError, Value),
}

#[async_trait]
impl Action for Foreach {
    /// `{items: [...], total, truncated}`: the items the loop takes.
    fn render(&self, t: &Templates, ctx: &Value) -> Result<Value, StepError> {
        let items = match self.items.render(t, ctx)? {
            Value::Array(items) => items,
            Value::Null => Vec::new(),
            other => {
                let kind = match other {
                    Value::Object(_) => "an object",
                    Value::String(_) => "text",
                    _ => "a single value",
                };
                return Err(StepError::permanent(format!(
                    "`items` rendered {kind}, not a list"
                )));
            }
        };
        let total = items.len();
        let taken: Vec<Value> = items.into_iter().take(self.limit).collect();
        Ok(json!({ "items": taken, "total": total, "truncated": total > self.limit }))
    }

    async fn execute(&self, input: Value, cx: &ExecContext) -> Result<Outcome, StepError> {
        let items = input["items"].as_array().cloned().unwrap_or_default();
        let ends: Vec<ItemEnd> = stream::iter(items.into_iter().enumerate())
            .map(|(index, item)| self.run_item(index, item, cx))
            .buffered(self.concurrency)
            .collect()
            .await;
        let mut results = Vec::with_capacity(ends.len());
        let (mut failed, mut wait) = (None, None);
        for (index, end) in ends.into_iter().enumerate() {
            match end {
                ItemEnd::Done(result) => results.push(result),
                ItemEnd::Wait(delay) => {
                    wait = Some(wait.map_or(delay, |w: std::time::Duration| w.max(delay)))
                }
                ItemEnd::Failed(error, result) => {
                    failed.get_or_insert((index, error));
                    results.push(result);
                }
            }
        }
        if let Some(delay) = wait {
            let reason = "an item waits for a rate limit: the loop runs again then".to_owned();
            return Ok(Outcome::Wait { delay, reason });
        }
        if let (Some((index, e)), OnError::Fail) = (&failed, self.on_item_error) {
            return Err(StepError {
                message: format!("item {index} failed: {}", e.message),
                detail: json!({ "items": results }),
                ..e.clone()
            });
        }
        let count = |status: &str| results.iter().filter(|r| r["status"] == status).count();
        Ok(Outcome::Output(json!({
            "succeeded": count("succeeded"),
            "failed": count("failed"),
            "filtered": count("filtered"),
            "truncated": input["truncated"],
            "items": results,
        })))
    }
}

impl Foreach {
    /// Runs the nested steps for one item: `{index, status, output, steps, error}`.
    async fn run_item(&self, index: usize, item: Value, cx: &ExecContext) -> ItemEnd {
        let mut ctx = (*cx.context).clone();
        ctx["item"] = item;
        ctx["index"] = json!(index);
        if !ctx["steps"].is_object() {
            ctx["steps"] = json!({});
        }
        let mut outputs = Map::new();
        let mut last = Value::Null;
        for step in &self.steps {
            let nested = ExecContext {
                idempotency_key: format!("{}:{index}:{}", cx.idempotency_key, step.id),
                ..cx.clone()
            };
            let outcome = match step.action.render(&cx.templates, &ctx) {
                Ok(input) => step.action.execute(input, &nested).await,
                Err(e) => Err(e),
            };
            match outcome {
                Ok(Outcome::Output(v)) => {
                    ctx["steps"][step.id.as_str()] = v.clone();
                    outputs.insert(step.id.to_string(), v.clone());
                    last = v;
                }
                Ok(Outcome::Stop { output, reason }) => {
                    outputs.insert(step.id.to_string(), output);
                    return ItemEnd::Done(json!({
                        "index": index, "status": "filtered", "reason": reason, "steps": outputs,
                    }));
                }
                Ok(Outcome::Wait { delay, .. }) => return ItemEnd::Wait(delay),
                // Refused as a nested step when the flow is built.
                Ok(Outcome::Await { .. }) => unreachable!("wait_for_callback is never nested"),
                Err(e) => {
                    let result = json!({
                        "index": index, "status": "failed", "steps": outputs,
                        "error": format!("step `{}`: {}", step.id, e.message),
                    });
                    let e = StepError {
                        message: format!("step `{}`: {}", step.id, e.message),
                        ..e
                    };
                    return ItemEnd::Failed(e, result);
                }
            }
        }
        ItemEnd::Done(
            json!({ "index": index, "status": "succeeded", "output": last, "steps": outputs }),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use crate::authoring::offline::{self, Stub};
    use crate::flow::parse_flow;
    use crate::model::RunStatus;
    use crate::steps::Registry;

    fn flow(on_item_error: &str) -> crate::flow::Flow {
        let yaml = format!(
            r#"
id: loop
trigger: {{ webhook: }}
steps:
  - id: lines
    foreach:
      items: "$.trigger.body.lines"
      concurrency: 3
      on_item_error: {on_item_error}
      steps:
        - id: only_real
          filter: {{ value: "{{{{item.qty}}}}", gt: 0 }}
        - id: shape
          map: {{ sku: "{{{{upper item.sku}}}}", n: "{{{{index}}}}", order: "{{{{steps.order.id}}}}" }}
        - id: check
          map: {{ ok: "{{{{divide item.qty item.per}}}}" }}
  - id: after
    map: {{ failed: "{{{{steps.lines.failed}}}}" }}
"#
        );
        let yaml = yaml.replace(
            "steps:\n  - id: lines",
            "steps:\n  - id: order\n    map: { id: o-1 }\n  - id: lines",
        );
        parse_flow("loop.yaml", &yaml, &Registry::builtin(), &|_| None).expect("valid flow")
    }

    fn body() -> serde_json::Value {
        json!({ "body": { "lines": [
            { "sku": "a", "qty": 2, "per": 2 }, { "sku": "b", "qty": 0 },
            { "sku": "c", "qty": 3, "per": 0 }, { "sku": "d", "qty": 1, "per": 1 },
        ] } })
    }

    #[tokio::test]
    async fn items_run_the_nested_steps_in_order_and_failures_are_reported() {
        let flow = flow("continue");
        let trace = offline::run(&flow, body(), &BTreeMap::<String, Stub>::new()).await;
        assert_eq!(
            trace.run.status,
            RunStatus::Succeeded,
            "{:?}",
            trace.run.reason
        );
        let out = trace
            .record(&"lines".parse().unwrap())
            .unwrap()
            .output
            .clone()
            .unwrap();
        let statuses: Vec<&str> = out["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["status"].as_str().unwrap())
            .collect();
        assert_eq!(statuses, ["succeeded", "filtered", "failed", "succeeded"]);
        assert_eq!(
            out["items"][0]["steps"]["shape"],
            json!({ "sku": "A", "n": 0, "order": "o-1" })
        );
        assert_eq!(
            out["items"][3]["output"],
            json!({ "ok": 1 }),
            "a helper call alone keeps its type"
        );
        assert!(out["items"][2]["error"]
            .as_str()
            .unwrap()
            .starts_with("step `check`"));
        assert_eq!(
            (out["succeeded"].clone(), out["failed"].clone()),
            (json!(2), json!(1))
        );
        let after = trace.record(&"after".parse().unwrap()).unwrap();
        assert_eq!(after.output, Some(json!({ "failed": 1 })));
    }

    #[tokio::test]
    async fn an_item_failure_fails_the_step_by_default() {
        let flow = flow("fail");
        let trace = offline::run(&flow, body(), &BTreeMap::<String, Stub>::new()).await;
        assert_eq!(trace.run.status, RunStatus::Failed);
        assert!(trace
            .run
            .reason
            .unwrap()
            .contains("item 2 failed: step `check`"));
    }

    #[test]
    fn nested_steps_are_checked_with_their_place() {
        let yaml = "id: l\ntrigger: { webhook: }\nsteps:\n  - id: each\n    foreach:\n      items: \"$.trigger.body.x\"\n      steps:\n        - { id: a, mapp: {} }\n        - { id: b, delay: { for: 1s } }\n        - { id: c, map: { id: '{{uuid}}' } }\n        - { id: d, http: { url: 'https://example.com', json: { id: '{{uuid}}' } } }\n";
        let errors = parse_flow("l.yaml", yaml, &Registry::builtin(), &|_| None).unwrap_err();
        let shown: Vec<String> = errors
            .iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect();
        assert_eq!(
            shown,
            [
                "steps[0].foreach.steps[0].mapp: unknown step kind `mapp`",
                "steps[0].foreach.steps[1].delay: `delay` shapes the whole run: it cannot be a nested step",
                "steps[0].foreach.steps[3].http: a nested step with effects cannot call `{{uuid}}`: a retry of the loop renders it again and would send another id under the same idempotency key; use `{{run.idempotency_key}}` or a value from the item",
            ]
        );
    }
}
