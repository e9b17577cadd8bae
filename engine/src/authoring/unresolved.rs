//! Expressions that resolved to nothing in a run: each template or JSONPath of a step that ran
//! whose path was missing (or `null`, except a step's output field written `null`) in the context
//! it rendered against, with the file, line and
//! field where it is written and the closest path that does exist ("did you mean …?").
//!
//! Paths an expression expects may be missing are not flagged: `default`'s fallbacks, `#if`
//! conditions, and the `value` of `exists`/`is_empty` conditions. Nor are paths into the output of
//! a step that only described its call (a dry run): what it would have answered is unknown.

use std::fmt;

use serde_json::Value;

use super::offline::Trace;
use crate::expr::references;
use crate::flow::position::PositionIndex;
use crate::flow::Flow;
use crate::ids::StepId;
use crate::steps::join_path;

/// One expression that resolved to nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unresolved {
    /// The flow file.
    pub file: String,
    /// 1-based line of the string.
    pub line: usize,
    /// 1-based column.
    pub col: usize,
    /// The step.
    pub step: StepId,
    /// The field's path in the flow (`steps[2].http.json.email`).
    pub field: String,
    /// The missing path (`trigger.body.emial`).
    pub path: String,
    /// The closest path that exists.
    pub suggestion: Option<String>,
}

impl fmt::Display for Unresolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: `{}` resolved to nothing",
            self.file, self.line, self.col, self.field, self.path
        )?;
        match &self.suggestion {
            Some(s) => write!(f, " — did you mean `{s}`?"),
            None => Ok(()),
        }
    }
}

/// The expressions of the steps that ran in `trace` that resolved to nothing.
pub fn unresolved(flow: &Flow, trace: &Trace) -> Vec<Unresolved> {
    let Ok(doc) = serde_yaml::from_str::<serde_yaml::Value>(&flow.source) else {
        return Vec::new();
    };
    let index = PositionIndex::new(&flow.source);
    let mut out = Vec::new();
    for (i, step) in flow.steps.iter().enumerate() {
        if trace.record(&step.id).is_none() {
            continue;
        }
        let mut field = format!("steps[{i}].{}", step.kind);
        let mut config = &doc["steps"][i][step.kind];
        if step.kind == "foreach" {
            // The nested steps read `item`, `index` and each other: only the list is checked here.
            field.push_str(".items");
            config = &config["items"];
        }
        let mut strings = Vec::new();
        strings_in(config, &field, false, &mut strings);
        let ctx = trace.context(&step.id);
        for (field, text, optional) in strings {
            for reference in references(&text) {
                if optional || reference.optional || !is_missing(&ctx, &reference.segments) {
                    continue;
                }
                if only_described(trace, &reference.segments) {
                    continue;
                }
                let at = index.value(&field).unwrap_or_else(|| index.locate(&field));
                let path = reference.dotted();
                out.push(Unresolved {
                    file: flow.file.clone(),
                    line: at.line,
                    col: at.col,
                    step: step.id.clone(),
                    field: field.clone(),
                    suggestion: closest(&ctx, &path),
                    path,
                });
            }
        }
    }
    out
}

/// Every string under `value` with its field path, and whether a missing value is expected there.
fn strings_in(
    value: &serde_yaml::Value,
    field: &str,
    optional: bool,
    out: &mut Vec<(String, String, bool)>,
) {
    match value {
        serde_yaml::Value::String(s) => out.push((field.to_owned(), s.clone(), optional)),
        serde_yaml::Value::Sequence(items) => {
            for (i, item) in items.iter().enumerate() {
                strings_in(item, &format!("{field}[{i}]"), optional, out);
            }
        }
        serde_yaml::Value::Mapping(map) => {
            // A condition that asks whether the value is there expects it may not be.
            let presence_test = ["exists", "is_empty"].iter().any(|k| map.contains_key(*k));
            for (k, v) in map {
                let key = k.as_str().unwrap_or_default();
                if key == "paginate" {
                    continue; // an `http` step's paging reads each page's response, not the run
                }
                let optional = optional || (presence_test && key == "value");
                strings_in(v, &join_path(field, key), optional, out);
            }
        }
        serde_yaml::Value::Tagged(t) => strings_in(&t.value, field, optional, out),
        _ => {}
    }
}

fn lookup<'v>(ctx: &'v Value, segments: &[String]) -> Option<&'v Value> {
    segments.iter().try_fold(ctx, |node, seg| match node {
        Value::Object(map) => map.get(seg),
        Value::Array(items) => items.get(seg.parse::<usize>().ok()?),
        _ => None,
    })
}

fn is_missing(ctx: &Value, segments: &[String]) -> bool {
    match lookup(ctx, segments) {
        None => true,
        // A step's output field that is there but `null` came from an expression of that step
        // (a helper of a missing value), which is flagged where it is written.
        Some(Value::Null) => segments.first().is_none_or(|s| s != "steps"),
        Some(_) => false,
    }
}

/// Whether the path reads the output of a step that only described its call (or did not
/// succeed): what it would have answered is unknown.
pub(crate) fn only_described(trace: &Trace, segments: &[String]) -> bool {
    let [first, step, ..] = segments else {
        return false;
    };
    if first != "steps" {
        return false;
    }
    let Ok(step) = step.parse::<StepId>() else {
        return false;
    };
    match trace.record(&step) {
        Some(r) => r.output.as_ref().is_none_or(|o| o["dry_run"] == true),
        None => trace.run.steps.iter().any(|s| s.id == step),
    }
}

/// The most paths looked at for a suggestion.
const MAX_CANDIDATES: usize = 20_000;

/// The existing path closest to `missing`: by edit distance over the whole path, or one that ends
/// with the same key (the right name at another depth).
fn closest(ctx: &Value, missing: &str) -> Option<String> {
    let mut candidates = Vec::new();
    paths(ctx, String::new(), 0, &mut candidates);
    let last = missing.rsplit('.').next().unwrap_or(missing);
    let score = |candidate: &str| {
        let whole = strsim::normalized_damerau_levenshtein(missing, candidate);
        let tail = candidate.rsplit('.').next().unwrap_or(candidate);
        let same_root = candidate.split('.').next() == missing.split('.').next();
        let by_key = if same_root {
            0.75 * strsim::normalized_damerau_levenshtein(last, tail) + 0.25 * whole
        } else {
            0.0
        };
        whole.max(by_key)
    };
    candidates
        .into_iter()
        .map(|c| (score(&c), c))
        .filter(|(s, _)| *s >= 0.75)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

fn paths(value: &Value, prefix: String, depth: usize, out: &mut Vec<String>) {
    if depth > 12 || out.len() >= MAX_CANDIDATES {
        return;
    }
    let child = |key: &str| {
        if prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{prefix}.{key}")
        }
    };
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let p = child(k);
                out.push(p.clone());
                paths(v, p, depth + 1, out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().take(3).enumerate() {
                let p = child(&i.to_string());
                out.push(p.clone());
                paths(v, p, depth + 1, out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;
    use crate::authoring::offline;
    use crate::flow::parse_flow;
    use crate::steps::Registry;

    const FLOW: &str = r#"
id: typo
trigger: { webhook: }
steps:
  - id: only_paid
    filter: { value: "{{trigger.body.data.object.paid_at}}", exists: true }
  - id: shape
    map:
      email: "{{lower trigger.body.customer_email}}"
      name: "{{default trigger.body.nickname trigger.body.data.object.name}}"
      plan: "$.trigger.body.data.object.plan.nam"
  - id: post
    http: { url: "https://crm.example.com", json: { email: "{{steps.shape.email}}" } }
  - id: after
    map: { crm_id: "{{steps.post.body.id}}" }
"#;

    #[tokio::test]
    async fn flags_missing_paths_with_their_place_and_a_suggestion() {
        let flow = parse_flow("flows/typo.yaml", FLOW, &Registry::builtin(), &|_| None).unwrap();
        let body = json!({ "data": { "object": {
            "customer_email": "a@x.com", "name": "Ann", "paid_at": 1, "plan": { "name": "pro" },
        } } });
        let trace = offline::run(&flow, json!({ "body": body }), &BTreeMap::new()).await;
        let found = unresolved(&flow, &trace);
        let shown: Vec<String> = found.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "flows/typo.yaml:9:14: steps[1].map.email: `trigger.body.customer_email` resolved \
                 to nothing — did you mean `trigger.body.data.object.customer_email`?",
                "flows/typo.yaml:11:13: steps[1].map.plan: `trigger.body.data.object.plan.nam` \
                 resolved to nothing — did you mean `trigger.body.data.object.plan.name`?",
            ],
            "the default's fallback, the dry-run step's output and the exists test are not flagged"
        );
    }
}
