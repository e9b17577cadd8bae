//! JSONPath strings (`$.trigger.body.items[*].id`), on top of `jsonpath-rust` (RFC 9535).
//!
//! A JSONPath is parsed once, at compile time. Whether it is *definite* (selects at most one
//! node: only names and indexes, no wildcard, descendant `..`, filter, slice or union) is decided
//! from the parsed query, not the text, so `$['a*b']` is still definite. A definite path renders
//! the node it selects, or `null`; any other path renders an array of every match (possibly
//! empty), so a flow sees the same shape whatever the event holds.

use jsonpath_rust::parser::model::{JpQuery, Segment, Selector};
use jsonpath_rust::parser::{errors::JsonPathError, parse_json_path};
use jsonpath_rust::query::js_path_process;
use serde_json::Value;

use super::ExprError;

/// A compiled JSONPath.
#[derive(Debug, Clone)]
pub(super) struct JsonPathExpr {
    query: JpQuery,
    definite: bool,
}

impl JsonPathExpr {
    /// Parses a JSONPath; the error is the parser's message, made short.
    pub(super) fn compile(text: &str) -> Result<Self, String> {
        let query = parse_json_path(text).map_err(|e| parse_error_message(&e))?;
        let definite = query.segments.iter().all(is_definite);
        Ok(Self { query, definite })
    }

    /// The selected node (definite path) or array of nodes (any other path).
    pub(super) fn select(&self, data: &Value) -> Result<Value, ExprError> {
        let found = js_path_process(&self.query, data)
            .map_err(|e| ExprError::new("", format!("JSONPath failed: {e}")))?;
        if self.definite {
            Ok(found
                .into_iter()
                .next()
                .map_or(Value::Null, |r| r.val.clone()))
        } else {
            Ok(Value::Array(
                found.into_iter().map(|r| r.val.clone()).collect(),
            ))
        }
    }
}

fn is_definite(segment: &Segment) -> bool {
    match segment {
        Segment::Selector(s) => is_single(s),
        Segment::Selectors(list) => matches!(list.as_slice(), [s] if is_single(s)),
        Segment::Descendant(_) => false,
    }
}

fn is_single(selector: &Selector) -> bool {
    matches!(selector, Selector::Name(_) | Selector::Index(_))
}

/// pest's multi-line report (`--> 1:5`, a caret drawing, `= expected …`) as one line.
fn parse_error_message(e: &JsonPathError) -> String {
    match e {
        JsonPathError::PestError(pest) => {
            // The position is only reachable through pest's types or its report; read the report
            // (` --> line:col`) rather than depend on pest directly.
            let report = pest.to_string();
            let column = report
                .lines()
                .find_map(|l| l.trim_start().strip_prefix("--> "))
                .and_then(|pos| pos.rsplit(':').next())
                .map(str::trim);
            match column {
                Some(col) => format!(
                    "invalid JSONPath at column {col}: {}",
                    pest.variant.message()
                ),
                None => format!("invalid JSONPath: {}", pest.variant.message()),
            }
        }
        other => format!("invalid JSONPath: {other}"),
    }
}
