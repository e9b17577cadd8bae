//! Expressions: handlebars templates, JSONPath selection and filter conditions over a run context.
//!
//! A flow's YAML holds strings that are evaluated against the *run context* of each event:
//! `{ "trigger": {..}, "steps": { "<step_id>": <output> }, "run": {..} }`. This module turns
//! those strings into compiled expressions once, when the flow is built, so that rendering an
//! event never parses anything.
//!
//! # What a string becomes
//!
//! | written                                | compiled as                 | renders to                         |
//! |----------------------------------------|-----------------------------|------------------------------------|
//! | `{{ trigger.body.amount }}`            | whole simple path           | the value at that path, typed; `null` when missing |
//! | `{{multiply x 2}}`, `{{merge a (pick b "k")}}` | exactly one helper call | the helper's value, typed (number, boolean, object, array, text) |
//! | `$.trigger.body.items[*].id`           | JSONPath (`$.` or `$[`)     | the match (definite path) or an array of matches |
//! | `Hi {{trigger.body.name}}!`, `{{#if a}}…{{/if}}` | any other template | a string; missing fields render as `""` |
//! | anything else, and non-string JSON     | literal                     | itself                             |
//!
//! # Requests: fields that resolve to nothing, and clearing on purpose
//!
//! A step with effects renders its request with [`ValueExpr::render_request`]: a field (an object
//! entry written in the flow) whose expression resolved to nothing — missing, `null` or `""` — is
//! **left out** of the request and listed with why, never sent empty (an empty value clears the
//! field in Stripe, HubSpot and most APIs). Clearing a field takes the marker [`CLEAR`] (`$clear`),
//! written literally in the flow: it renders `null`, which each step sends as its API's way to clear
//! (`""` in a form or a HubSpot property, `null` in JSON). A template that renders the text
//! `$clear` from event data is sent as that text, so an event cannot clear fields.
//!
//! A simple path is dotted segments (`a.b.0`, `a.[0]`, `a.[odd key]`); numeric segments index
//! arrays. Objects and arrays inside a string render as compact JSON, never as `[object]`.
//!
//! # Layout
//!
//! - `mod.rs` (here): the public API: [`Compiler`], [`Templates`], [`ValueExpr`], [`TextExpr`],
//!   [`ExprError`].
//! - `template.rs`: how one string is classified and rendered (simple paths, the fast path for
//!   templates made only of text and paths, handlebars for the rest).
//! - `jsonpath.rs`: JSONPath strings, on top of `jsonpath-rust`.
//! - `helpers.rs`: the built-in handlebars helpers (text, arithmetic, utilities, `default`, `json`);
//!   `formatter.rs`: number formatting, dates and timezones, lookups, JSON.
//! - `condition.rs`: [`ConditionSpec`] as written, compiled to a [`Condition`] that yields a
//!   [`Verdict`].
//! - `refs.rs`: which context paths a string reads ([`references`]), for flagging expressions
//!   that resolve to nothing.
//!
//! # Invariants
//!
//! - Every expression is parsed at most once, by a [`Compiler`]; rendering only walks values.
//! - One [`Compiler`] (one handlebars registry) per flow. Expressions render with the
//!   [`Templates`] of the compiler that made them; using another flow's is an error, not a
//!   wrong answer.
//! - Rendering never clones the whole run context, except once per `render`/`evaluate` call and
//!   only when a template needs handlebars proper (helpers, blocks).

mod condition;
mod formatter;
mod helpers;
mod jsonpath;
mod refs;
mod template;
#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use handlebars::Handlebars;
use serde_json::Value;

pub use condition::{Condition, ConditionSpec, Verdict};
pub use refs::{literal_args, references, Reference};

use crate::secrets::Secrets;

use template::{Compiled, Leaf, Scope};

/// A problem in an expression, found when a flow is built or rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ExprError {
    /// Where, relative to the compiled value (`""` for the value itself, `email`, `items[2]`, `all[0].value`).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl ExprError {
    /// An error at `field` (see [`ExprError::field`]).
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same error, seen from one level up: `prefix` is prepended to its field.
    fn within(mut self, prefix: &str) -> Self {
        self.field = join_field(prefix, &self.field);
        self
    }
}

/// Joins a parent field path and a child one: `("all[0]", "gt")` → `all[0].gt`,
/// `("in", "[2]")` → `in[2]`, `("", "a")` → `a`.
fn join_field(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_owned()
    } else if child.is_empty() {
        parent.to_owned()
    } else if child.starts_with('[') {
        format!("{parent}{child}")
    } else {
        format!("{parent}.{child}")
    }
}

/// The field path segment for an object key: `email`, or `["odd key"]` when the key is not a
/// plain word.
fn key_field(key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '-');
    if plain {
        key.to_owned()
    } else {
        format!("[{}]", Value::String(key.to_owned()))
    }
}

/// Distinguishes compilers, so that an expression rendered with another flow's [`Templates`]
/// fails instead of picking that flow's template of the same number.
static NEXT_COMPILER_ID: AtomicU64 = AtomicU64::new(1);

/// Compiles the expressions of one flow; `finish` yields the [`Templates`] they render with.
pub struct Compiler {
    registry: Handlebars<'static>,
    id: u64,
    next_template: usize,
    secrets: Secrets,
}

impl Default for Compiler {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Compiler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Compiler")
            .field("id", &self.id)
            .field("templates", &self.next_template)
            .finish()
    }
}

impl Compiler {
    /// A compiler with the built-in helpers registered.
    pub fn new() -> Self {
        let secrets = Secrets::default();
        let mut registry = Handlebars::new();
        registry.set_strict_mode(false);
        registry.register_escape_fn(handlebars::no_escape);
        helpers::register(&mut registry, &secrets);
        Self {
            registry,
            id: NEXT_COMPILER_ID.fetch_add(1, Ordering::Relaxed),
            next_template: 0,
            secrets,
        }
    }

    /// Compiles a JSON value whose strings may be templates or JSONPaths.
    ///
    /// Every bad string is reported, each with its `field` (`email`, `items[2]`, `a.b`; `""` for
    /// the value itself).
    pub fn value(&mut self, value: &Value) -> Result<ValueExpr, Vec<ExprError>> {
        let mut errors = Vec::new();
        let node = self.node(value, "", &mut errors);
        if errors.is_empty() {
            Ok(ValueExpr(node))
        } else {
            Err(errors)
        }
    }

    /// Compiles a string template that always renders to a string.
    ///
    /// The string is read exactly like a string in [`Compiler::value`]; its result is then
    /// written as text: strings as they are, `null` as `""`, anything else as compact JSON.
    pub fn text(&mut self, text: &str) -> Result<TextExpr, ExprError> {
        match self.compile_str(text)? {
            Compiled::Leaf(leaf) => Ok(TextExpr(TextNode::Leaf(leaf))),
            Compiled::Literal(s) => Ok(TextExpr(TextNode::Literal(s))),
        }
    }

    /// Compiles a filter condition, reporting every problem in it.
    pub fn condition(&mut self, spec: &ConditionSpec) -> Result<Condition, Vec<ExprError>> {
        condition::compile(self, spec)
    }

    /// The compiled templates, rendering for a flow with these secret values: what our helpers
    /// compute from them is remembered as derived (see [`crate::secrets`]).
    pub fn finish(self, secrets: Vec<String>) -> Templates {
        self.secrets.set_values(secrets);
        Templates(Arc::new(TemplatesInner {
            registry: self.registry,
            compiler: self.id,
            secrets: self.secrets,
        }))
    }

    fn node(&mut self, value: &Value, field: &str, errors: &mut Vec<ExprError>) -> Node {
        match value {
            Value::String(s) => match self.compile_str(s) {
                Ok(Compiled::Leaf(leaf)) => Node::Leaf(leaf),
                Ok(Compiled::Literal(s)) => Node::Literal(Value::String(s)),
                Err(e) => {
                    errors.push(e.within(field));
                    Node::Literal(Value::Null)
                }
            },
            Value::Array(items) => {
                let nodes: Vec<Node> = items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| self.node(item, &format!("{field}[{i}]"), errors))
                    .collect();
                if nodes.iter().all(|n| matches!(n, Node::Literal(_))) {
                    Node::Literal(Value::Array(
                        nodes.into_iter().map(Node::into_literal).collect(),
                    ))
                } else {
                    Node::Array(nodes)
                }
            }
            Value::Object(map) => {
                let entries: Vec<(String, Node)> = map
                    .iter()
                    .map(|(k, v)| {
                        let child = join_field(field, &key_field(k));
                        (k.clone(), self.node(v, &child, errors))
                    })
                    .collect();
                if entries.iter().all(|(_, n)| matches!(n, Node::Literal(_))) {
                    Node::Literal(Value::Object(
                        entries
                            .into_iter()
                            .map(|(k, n)| (k, n.into_literal()))
                            .collect(),
                    ))
                } else {
                    Node::Object(entries)
                }
            }
            other => Node::Literal(other.clone()),
        }
    }

    /// Compiles one string.
    fn compile_str(&mut self, text: &str) -> Result<Compiled, ExprError> {
        let name = format!("hf{}_t{}", self.id, self.next_template);
        let compiled = template::compile(text, &mut self.registry, &name)
            .map_err(|message| ExprError::new("", message))?;
        if matches!(compiled, Compiled::Leaf(Leaf::Handlebars { .. })) {
            self.next_template += 1;
        }
        Ok(compiled)
    }
}

/// The compiled templates of one flow. Cheap to clone; shareable across threads.
#[derive(Clone)]
pub struct Templates(Arc<TemplatesInner>);

struct TemplatesInner {
    registry: Handlebars<'static>,
    compiler: u64,
    secrets: Secrets,
}

impl Templates {
    /// The flow's secrets, and the values its expressions derived from them.
    pub fn secrets(&self) -> &Secrets {
        &self.0.secrets
    }
}

impl fmt::Debug for Templates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Templates")
            .field("compiler", &self.0.compiler)
            .field("templates", &self.0.registry.get_templates().len())
            .finish()
    }
}

/// The marker a flow writes as a field's whole value to clear that field in a request (see the
/// module docs).
pub const CLEAR: &str = "$clear";

/// The fields a request left out: field path → why.
pub type LeftOut = serde_json::Map<String, Value>;

/// A compiled value.
#[derive(Debug, Clone)]
pub struct ValueExpr(Node);

#[derive(Debug, Clone)]
enum Node {
    Literal(Value),
    Leaf(Leaf),
    Array(Vec<Node>),
    Object(Vec<(String, Node)>),
}

impl Node {
    fn into_literal(self) -> Value {
        match self {
            Node::Literal(v) => v,
            _ => unreachable!("only called on literals"),
        }
    }

    /// Renders in request mode (see [`ValueExpr::render_request`]); `field` is this node's path.
    fn render_request(
        &self,
        scope: &Scope<'_>,
        field: &str,
        left_out: &mut LeftOut,
    ) -> Result<Value, ExprError> {
        match self {
            Node::Literal(v) => Ok(clear_markers(v.clone())),
            Node::Leaf(leaf) => leaf.render_value(scope),
            Node::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let at = format!("[{i}]");
                    n.render_request(scope, &join_field(field, &at), left_out)
                        .map_err(|e| e.within(&at))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            Node::Object(entries) => {
                let mut out = serde_json::Map::new();
                for (k, n) in entries {
                    let at = join_field(field, &key_field(k));
                    let v = match n {
                        Node::Literal(Value::String(s)) if s == CLEAR => Value::Null,
                        n => n
                            .render_request(scope, &at, left_out)
                            .map_err(|e| e.within(&key_field(k)))?,
                    };
                    let why = match (n, &v) {
                        (Node::Leaf(_), Value::Null) => Some("its expression resolved to nothing"),
                        (Node::Leaf(_), Value::String(s)) if s.is_empty() => {
                            Some("its expression resolved to empty text")
                        }
                        _ => None,
                    };
                    match why {
                        Some(why) => {
                            left_out.insert(at, Value::from(why));
                        }
                        None => {
                            out.insert(k.clone(), v);
                        }
                    }
                }
                Ok(Value::Object(out))
            }
        }
    }

    fn render(&self, scope: &Scope<'_>) -> Result<Value, ExprError> {
        match self {
            Node::Literal(v) => Ok(v.clone()),
            Node::Leaf(leaf) => leaf.render_value(scope),
            Node::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, n)| n.render(scope).map_err(|e| e.within(&format!("[{i}]"))))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            Node::Object(entries) => entries
                .iter()
                .map(|(k, n)| {
                    let v = n.render(scope).map_err(|e| e.within(&key_field(k)))?;
                    Ok((k.clone(), v))
                })
                .collect::<Result<serde_json::Map<_, _>, _>>()
                .map(Value::Object),
        }
    }
}

impl ValueExpr {
    /// Renders against a context.
    pub fn render(&self, t: &Templates, ctx: &Value) -> Result<Value, ExprError> {
        self.0.render(&Scope::new(t, ctx))
    }

    /// Renders a request's fields: an object entry whose expression resolved to nothing (missing,
    /// `null` or `""`) is left out and listed in `left_out` (path → why); an entry written as
    /// [`CLEAR`] renders `null`. Array items are never left out (that would shift the others).
    pub fn render_request(
        &self,
        t: &Templates,
        ctx: &Value,
        left_out: &mut LeftOut,
    ) -> Result<Value, ExprError> {
        self.0.render_request(&Scope::new(t, ctx), "", left_out)
    }

    /// The value itself when it holds no expression at all.
    pub fn as_literal(&self) -> Option<&Value> {
        match &self.0 {
            Node::Literal(v) => Some(v),
            _ => None,
        }
    }

    /// Renders within a scope shared with other expressions (conditions).
    fn render_in(&self, scope: &Scope<'_>) -> Result<Value, ExprError> {
        self.0.render(scope)
    }
}

/// A literal with every object entry written as [`CLEAR`] turned into `null`.
fn clear_markers(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| match v {
                    Value::String(s) if s == CLEAR => (k, Value::Null),
                    v => (k, clear_markers(v)),
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(clear_markers).collect()),
        other => other,
    }
}

/// A compiled text template.
#[derive(Debug, Clone)]
pub struct TextExpr(TextNode);

#[derive(Debug, Clone)]
enum TextNode {
    Literal(String),
    Leaf(Leaf),
}

impl TextExpr {
    /// Whether the text holds no expression.
    pub fn is_literal(&self) -> bool {
        matches!(self.0, TextNode::Literal(_))
    }

    /// Renders against a context.
    pub fn render(&self, t: &Templates, ctx: &Value) -> Result<String, ExprError> {
        match &self.0 {
            TextNode::Literal(s) => Ok(s.clone()),
            TextNode::Leaf(leaf) => leaf.render_text(&Scope::new(t, ctx)),
        }
    }
}

/// What kind of JSON value this is, in words for error messages (`text`, `a list`, …).
pub fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}
