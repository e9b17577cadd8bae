//! Request fields a sample would send empty: in the steps with effects (HTTP, connectors) of an
//! offline run, each field written as an expression that rendered blank text and is sent so —
//! a raw `body:`, an array item, text around expressions (`"{{first}} {{last}}"` sends a space).
//! (An object field whose expression resolved to nothing is left out, never sent empty: the
//! input's `left_out` lists it, and that is not a mistake.) Each is a warning at the field's
//! `file:line:col` with a fallback to write instead. A field whose path is missing from the
//! sample, or that reads a step that only described its call, is not warned here:
//! [`unresolved`](super::unresolved) reports the former with the closest path that exists, and
//! the latter's answer is unknown.

use std::collections::HashSet;

use serde_json::Value;

use super::offline::Trace;
use super::unresolved::{only_described, unresolved};
use crate::expr::references;
use crate::flow::position::PositionIndex;
use crate::flow::{Flow, FlowError};
use crate::steps::join_path;

/// Parts of a rendered request that are not fields the flow wrote as data.
const NOT_FIELDS: [&str; 7] = [
    "method", "url", "action", "left_out", "sign", "paginate", "auth",
];

/// The request fields of the steps that ran in `trace` (on the sample named `sample`) that would
/// be sent blank.
pub fn empty_fields(flow: &Flow, trace: &Trace, sample: &str) -> Vec<FlowError> {
    let Ok(doc) = serde_yaml::from_str::<serde_yaml::Value>(&flow.source) else {
        return Vec::new();
    };
    let index = PositionIndex::new(&flow.source);
    let reported: HashSet<String> = unresolved(flow, trace)
        .into_iter()
        .map(|u| u.field)
        .collect();
    let mut out = Vec::new();
    for (i, step) in flow.steps.iter().enumerate() {
        let Some(record) = trace.record(&step.id) else {
            continue;
        };
        if step.action.is_pure() {
            continue;
        }
        let kind_path = format!("steps[{i}].{}", step.kind);
        let config = &doc["steps"][i][step.kind];
        let action = record.input["action"].as_str();
        let mut found = Vec::new();
        blank_strings(&record.input, "", &mut |field| found.push(field));
        for field in found {
            // The field as written: under the kind, or under its action (`hubspot: {update: …}`).
            let written = [Some(field.clone()), action.map(|a| join_path(a, &field))]
                .into_iter()
                .flatten()
                .find_map(|f| Some((join_path(&kind_path, &f), lookup(config, &f)?.as_str()?)));
            let Some((path, text)) = written else {
                continue;
            };
            let refs = references(text);
            let unknown = refs.iter().any(|r| only_described(trace, &r.segments));
            if reported.contains(&path) || unknown {
                continue;
            }
            let fallback = match refs.first() {
                Some(r) => format!("`{{{{default {} \"…\"}}}}`", r.dotted()),
                None => continue, // written blank on purpose
            };
            let at = index.value(&path).unwrap_or_else(|| index.locate(&path));
            out.push(FlowError {
                file: flow.file.clone(),
                line: at.line,
                col: at.col,
                path,
                message: format!(
                    "on sample `{sample}` this field would be sent as empty text (its \
                     expressions resolved to nothing): give a fallback such as {fallback}"
                ),
            });
        }
    }
    out
}

/// Calls `f` with the path of every blank string (`""`, spaces) among a rendered request's fields.
fn blank_strings(value: &Value, field: &str, f: &mut dyn FnMut(String)) {
    match value {
        Value::String(s) if s.trim().is_empty() && !field.is_empty() => f(field.to_owned()),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                blank_strings(item, &format!("{field}[{i}]"), f);
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                if field.is_empty() && NOT_FIELDS.contains(&k.as_str()) {
                    continue;
                }
                blank_strings(v, &join_path(field, k), f);
            }
        }
        _ => {}
    }
}

/// The YAML value at a field path (`json.email`, `lines[0].sku`) under `value`.
fn lookup<'v>(value: &'v serde_yaml::Value, field: &str) -> Option<&'v serde_yaml::Value> {
    field.split('.').try_fold(value, |node, part| {
        let (key, indexes) = part
            .split_once('[')
            .map_or((part, ""), |(k, rest)| (k, rest));
        let mut node = if key.is_empty() { node } else { node.get(key)? };
        for index in indexes.split('[').filter(|s| !s.is_empty()) {
            node = node.get(index.trim_end_matches(']').parse::<usize>().ok()?)?;
        }
        Some(node)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_up_written_fields_by_path() {
        let doc: serde_yaml::Value =
            serde_yaml::from_str("json: { email: a, lines: [{ sku: x }] }").unwrap();
        assert_eq!(
            lookup(&doc, "json.email").and_then(|v| v.as_str()),
            Some("a")
        );
        assert_eq!(
            lookup(&doc, "json.lines[0].sku").and_then(|v| v.as_str()),
            Some("x")
        );
        assert!(lookup(&doc, "json.nope").is_none());
    }
}
