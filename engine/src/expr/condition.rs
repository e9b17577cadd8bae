//! Filter conditions: [`ConditionSpec`] as written in a flow, compiled to a [`Condition`] whose
//! evaluation gives a [`Verdict`] with a reason a RevOps engineer can read.
//!
//! # Semantics (Zapier-like)
//!
//! - **Groups.** `all` passes when every condition in it passes, `any` when at least one does,
//!   `not` when its condition fails. `all` and `any` need at least one condition.
//! - **Missing.** A missing field and `null` are the same thing. A missing value is not a string,
//!   number, date or list, so every operator that needs one fails: `equals`, `gt`/`gte`/`lt`/`lte`,
//!   `contains`, `starts_with`, `ends_with`, `matches`, `in`. The negative operators
//!   (`not_equals`, `not_contains`, `not_in`) are exactly the negation of their positive forms,
//!   so they pass. `exists: false` and `is_empty: true` pass too; `exists: true` and
//!   `is_empty: false` fail. `equals: null` is refused at build time (write `exists: false`).
//! - **equals / not_equals** compare JSON values, except that a number and a string holding a
//!   number compare as numbers (`"10"` equals `10`, `"1.50"` equals `1.5`), a boolean and the
//!   string `"true"`/`"false"` compare as booleans, and strings compare ignoring case with
//!   `ignore_case`. Arrays and objects compare element by element with the same rules.
//! - **gt / gte / lt / lte** compare as numbers when both sides are numbers or numeric strings,
//!   else as dates when both sides are dates (RFC 3339 `2024-05-01T10:00:00Z`, or `2024-05-01`
//!   taken as midnight UTC), else fail.
//! - **contains / not_contains**: on a string, substring (the operand taken as text); on a list,
//!   an element that `equals` the operand; on an object, a key equal to the operand. Numbers and
//!   booleans are taken as text.
//! - **starts_with / ends_with / matches** work on the text of strings, numbers and booleans;
//!   `matches` is a regular expression (Rust `regex` syntax, unanchored: add `^…$` to match the
//!   whole value), compiled when the flow is built.
//! - **in / not_in**: the value `equals` one of the listed values.
//! - **exists**: the value is not missing. **is_empty**: the value is missing, `""`, `[]` or `{}`.
//! - **ignore_case** applies to the string comparisons: `equals`, `not_equals`, `contains`,
//!   `not_contains`, `starts_with`, `ends_with`, `matches`, `in`, `not_in`.
//!
//! `value` and every operand (except `matches`, `exists`, `is_empty`) are compiled like any
//! value of a flow: usually a template (`{{trigger.body.amount}}`) or a JSONPath.

use std::borrow::Cow;
use std::cmp::Ordering;

use regex::{Regex, RegexBuilder};
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::{Date, Month, OffsetDateTime};

use super::helpers::is_empty;
use super::template::Scope;
use super::{join_field, Compiler, ExprError, Templates, ValueExpr};

/// A filter condition as written: either a group (`all`, `any` or `not`), or a comparison
/// (`value` and exactly one operator).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConditionSpec {
    /// Group: passes when every one of these conditions passes (at least one).
    #[serde(default)]
    #[schemars(skip_serializing_if = "Option::is_none")]
    pub all: Option<Vec<ConditionSpec>>,
    /// Group: passes when at least one of these conditions passes (at least one).
    #[serde(default)]
    #[schemars(skip_serializing_if = "Option::is_none")]
    pub any: Option<Vec<ConditionSpec>>,
    /// Group: passes when this condition fails.
    #[serde(default)]
    #[schemars(skip_serializing_if = "Option::is_none")]
    pub not: Option<Box<ConditionSpec>>,
    /// Comparison: the value to test, usually a template (`{{trigger.body.amount}}`) or a
    /// JSONPath (`$.trigger.body.items[*].sku`). A missing field counts as missing (`null`):
    /// then only `not_equals`, `not_contains`, `not_in`, `exists: false` and `is_empty: true` pass.
    #[serde(default, deserialize_with = "present")]
    #[schemars(skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    /// Passes when the value equals this (a number and a numeric string compare as numbers).
    #[serde(default, deserialize_with = "present")]
    #[schemars(skip_serializing_if = "Option::is_none")]
    pub equals: Option<Value>,
    /// Passes when the value does not equal this (also when the value is missing).
    #[serde(default, deserialize_with = "present")]
    #[schemars(skip_serializing_if = "Option::is_none")]
    pub not_equals: Option<Value>,
    /// Passes when the value is greater than this: numbers (numeric strings too) or dates
    /// (RFC 3339 or `YYYY-MM-DD`).
    #[serde(default, deserialize_with = "present")]
    #[schemars(skip_serializing_if = "Option::is_none")]
    pub gt: Option<Value>,
    /// Passes when the value is greater than or equal to this (numbers or dates).
    #[serde(default, deserialize_with = "present")]
    #[schemars(skip_serializing_if = "Option::is_none")]
    pub gte: Option<Value>,
    /// Passes when the value is less than this (numbers or dates).
    #[serde(default, deserialize_with = "present")]
    #[schemars(skip_serializing_if = "Option::is_none")]
    pub lt: Option<Value>,
    /// Passes when the value is less than or equal to this (numbers or dates).
    #[serde(default, deserialize_with = "present")]
    #[schemars(skip_serializing_if = "Option::is_none")]
    pub lte: Option<Value>,
    /// Passes when the value contains this: a substring of a string, an element of a list, a
    /// key of an object.
    #[serde(default, deserialize_with = "present")]
    #[schemars(skip_serializing_if = "Option::is_none")]
    pub contains: Option<Value>,
    /// Passes when the value does not contain this (also when the value is missing).
    #[serde(default, deserialize_with = "present")]
    #[schemars(skip_serializing_if = "Option::is_none")]
    pub not_contains: Option<Value>,
    /// Passes when the value, as text, starts with this.
    #[serde(default, deserialize_with = "present")]
    #[schemars(skip_serializing_if = "Option::is_none")]
    pub starts_with: Option<Value>,
    /// Passes when the value, as text, ends with this.
    #[serde(default, deserialize_with = "present")]
    #[schemars(skip_serializing_if = "Option::is_none")]
    pub ends_with: Option<Value>,
    /// `true`: passes when the value is present (not missing, not `null`); `false`: when it is
    /// missing.
    #[serde(default)]
    #[schemars(skip_serializing_if = "Option::is_none")]
    pub exists: Option<bool>,
    /// `true`: passes when the value is missing, `""`, `[]` or `{}`; `false`: when it is not.
    #[serde(default)]
    #[schemars(skip_serializing_if = "Option::is_none")]
    pub is_empty: Option<bool>,
    /// Passes when the value, as text, matches this regular expression (unanchored; use `^…$`
    /// for the whole value).
    #[serde(default)]
    #[schemars(skip_serializing_if = "Option::is_none")]
    pub matches: Option<String>,
    /// Passes when the value equals one of these.
    #[serde(default, rename = "in")]
    #[schemars(skip_serializing_if = "Option::is_none")]
    pub in_: Option<Vec<Value>>,
    /// Passes when the value equals none of these (also when the value is missing).
    #[serde(default)]
    #[schemars(skip_serializing_if = "Option::is_none")]
    pub not_in: Option<Vec<Value>>,
    /// Compare strings ignoring upper/lower case (`equals`, `contains`, `starts_with`,
    /// `ends_with`, `matches`, `in` and their negations).
    #[serde(default)]
    pub ignore_case: bool,
}

/// Keeps an explicit `null` as `Some(Value::Null)` (plain `Option<Value>` would drop it).
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

/// A compiled condition.
#[derive(Debug, Clone)]
pub struct Condition(Node);

/// The outcome of a condition.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// Whether it passed.
    pub passed: bool,
    /// When it did not pass: which condition stopped it, in words.
    pub reason: Option<String>,
}

impl Condition {
    /// Evaluates against a context. Errors only when an expression fails to render.
    pub fn evaluate(&self, t: &Templates, ctx: &Value) -> Result<Verdict, ExprError> {
        let outcome = self.0.evaluate(&Scope::new(t, ctx))?;
        Ok(Verdict {
            passed: outcome.passed,
            reason: (!outcome.passed).then_some(outcome.fact),
        })
    }
}

#[derive(Debug, Clone)]
enum Node {
    All { label: String, items: Vec<Node> },
    Any { label: String, items: Vec<Node> },
    Not(Box<Node>),
    Compare(Box<Comparison>),
}

#[derive(Debug, Clone)]
struct Comparison {
    /// Field path of the condition (`all[1]`), `""` at the root.
    path: String,
    /// `value` as written, for reasons.
    written: String,
    value: ValueExpr,
    op: Op,
    ignore_case: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Equals,
    NotEquals,
    Gt,
    Gte,
    Lt,
    Lte,
    Contains,
    NotContains,
    StartsWith,
    EndsWith,
    In,
    NotIn,
}

#[derive(Debug, Clone)]
enum Op {
    /// An operator with an operand (for `in`/`not_in`, the list).
    With(Kind, Operand),
    Exists(bool),
    IsEmpty(bool),
    Matches(Regex),
}

#[derive(Debug, Clone)]
struct Operand {
    expr: ValueExpr,
    /// As written, when it is an expression (shown next to its rendered value in reasons).
    written: Option<String>,
}

/// Whether a condition passed, and a sentence saying why, prefixed with its field path.
struct Outcome {
    passed: bool,
    fact: String,
}

// ---------------------------------------------------------------------------------------------
// Compiling
// ---------------------------------------------------------------------------------------------

/// Compiles a spec, collecting every problem.
pub(super) fn compile(
    compiler: &mut Compiler,
    spec: &ConditionSpec,
) -> Result<Condition, Vec<ExprError>> {
    let mut errors = Vec::new();
    let node = compile_node(compiler, spec, "", &mut errors);
    match node {
        Some(node) if errors.is_empty() => Ok(Condition(node)),
        _ => Err(errors),
    }
}

const OPERATORS: &str = "equals, not_equals, gt, gte, lt, lte, contains, not_contains, \
                         starts_with, ends_with, exists, is_empty, matches, in, not_in";

fn compile_node(
    compiler: &mut Compiler,
    spec: &ConditionSpec,
    path: &str,
    errors: &mut Vec<ExprError>,
) -> Option<Node> {
    let mut groups = Vec::new();
    if spec.all.is_some() {
        groups.push("all");
    }
    if spec.any.is_some() {
        groups.push("any");
    }
    if spec.not.is_some() {
        groups.push("not");
    }
    let operators = operators(spec);
    let comparison_keys: Vec<&str> = spec
        .value
        .as_ref()
        .map(|_| "value")
        .into_iter()
        .chain(operators.iter().map(|(name, _)| *name))
        .collect();

    match (groups.as_slice(), comparison_keys.is_empty()) {
        ([], true) => {
            errors.push(ExprError::new(
                path,
                "empty condition: write a comparison (value and one operator) or a group (all, any, not)",
            ));
            None
        }
        ([group], true) => {
            if spec.ignore_case {
                errors.push(ExprError::new(
                    join_field(path, "ignore_case"),
                    format!("ignore_case applies to a comparison, not to a group ({group}); put it on the comparisons inside"),
                ));
            }
            compile_group(compiler, spec, group, path, errors)
        }
        ([], false) => compile_comparison(compiler, spec, operators, path, errors),
        (groups, true) => {
            errors.push(ExprError::new(
                path,
                format!(
                    "one condition has several groups ({}): nest them, e.g. all: [{{any: […]}}, {{not: …}}]",
                    groups.join(", ")
                ),
            ));
            // Still report what is wrong inside each group.
            for group in groups {
                compile_group(compiler, spec, group, path, errors);
            }
            None
        }
        (groups, false) => {
            errors.push(ExprError::new(
                path,
                format!(
                    "a condition is either a group or a comparison, this one has both ({} and {}): put the comparison inside the group",
                    groups.join(", "),
                    comparison_keys.join(", ")
                ),
            ));
            for group in groups {
                compile_group(compiler, spec, group, path, errors);
            }
            None
        }
    }
}

fn compile_group(
    compiler: &mut Compiler,
    spec: &ConditionSpec,
    group: &str,
    path: &str,
    errors: &mut Vec<ExprError>,
) -> Option<Node> {
    let label = join_field(path, group);
    let list = match group {
        "not" => {
            let inner = spec.not.as_deref()?;
            return compile_node(compiler, inner, &label, errors).map(|n| Node::Not(Box::new(n)));
        }
        "all" => spec.all.as_deref().unwrap_or_default(),
        _ => spec.any.as_deref().unwrap_or_default(),
    };
    if list.is_empty() {
        errors.push(ExprError::new(
            &label,
            format!("{group} needs at least one condition"),
        ));
        return None;
    }
    let items: Vec<Option<Node>> = list
        .iter()
        .enumerate()
        .map(|(i, item)| compile_node(compiler, item, &format!("{label}[{i}]"), errors))
        .collect();
    let items: Vec<Node> = items.into_iter().collect::<Option<_>>()?;
    Some(if group == "all" {
        Node::All { label, items }
    } else {
        Node::Any { label, items }
    })
}

/// The operators set on a spec, by name, with their operand as written.
fn operators(spec: &ConditionSpec) -> Vec<(&'static str, Written<'_>)> {
    let mut found = Vec::new();
    let valued = [
        (Kind::Equals, &spec.equals),
        (Kind::NotEquals, &spec.not_equals),
        (Kind::Gt, &spec.gt),
        (Kind::Gte, &spec.gte),
        (Kind::Lt, &spec.lt),
        (Kind::Lte, &spec.lte),
        (Kind::Contains, &spec.contains),
        (Kind::NotContains, &spec.not_contains),
        (Kind::StartsWith, &spec.starts_with),
        (Kind::EndsWith, &spec.ends_with),
    ];
    for (kind, operand) in valued {
        if let Some(v) = operand {
            found.push((kind.name(), Written::Value(kind, v)));
        }
    }
    if let Some(b) = spec.exists {
        found.push(("exists", Written::Exists(b)));
    }
    if let Some(b) = spec.is_empty {
        found.push(("is_empty", Written::IsEmpty(b)));
    }
    if let Some(re) = &spec.matches {
        found.push(("matches", Written::Regex(re)));
    }
    if let Some(list) = &spec.in_ {
        found.push(("in", Written::List(Kind::In, list)));
    }
    if let Some(list) = &spec.not_in {
        found.push(("not_in", Written::List(Kind::NotIn, list)));
    }
    found
}

/// An operator and its operand, as written.
enum Written<'a> {
    Value(Kind, &'a Value),
    List(Kind, &'a [Value]),
    Exists(bool),
    IsEmpty(bool),
    Regex(&'a str),
}

fn compile_comparison(
    compiler: &mut Compiler,
    spec: &ConditionSpec,
    operators: Vec<(&'static str, Written<'_>)>,
    path: &str,
    errors: &mut Vec<ExprError>,
) -> Option<Node> {
    let value = match &spec.value {
        Some(written) => compile_value(compiler, written, &join_field(path, "value"), errors),
        None => {
            errors.push(ExprError::new(
                path,
                "missing value: say what to test, e.g. value: \"{{trigger.body.email}}\"",
            ));
            None
        }
    };
    let op = match operators.as_slice() {
        [] => {
            errors.push(ExprError::new(
                path,
                format!("no operator: add one of {OPERATORS}"),
            ));
            None
        }
        [(name, written)] => {
            let field = join_field(path, name);
            compile_op(compiler, written, spec.ignore_case, &field, errors)
        }
        several => {
            let names: Vec<&str> = several.iter().map(|(n, _)| *n).collect();
            errors.push(ExprError::new(
                path,
                format!(
                    "several operators ({}): use one per condition and combine conditions with all",
                    names.join(", ")
                ),
            ));
            None
        }
    };
    let (Some(value), Some(op), Some(written)) = (value, op, &spec.value) else {
        return None;
    };
    Some(Node::Compare(Box::new(Comparison {
        path: path.to_owned(),
        written: written_text(written),
        value,
        op,
        ignore_case: spec.ignore_case,
    })))
}

fn compile_value(
    compiler: &mut Compiler,
    value: &Value,
    field: &str,
    errors: &mut Vec<ExprError>,
) -> Option<ValueExpr> {
    match compiler.value(value) {
        Ok(expr) => Some(expr),
        Err(errs) => {
            errors.extend(errs.into_iter().map(|e| e.within(field)));
            None
        }
    }
}

/// Compiles one operator; `field` is its path (`all[1].gt`).
fn compile_op(
    compiler: &mut Compiler,
    written: &Written<'_>,
    ignore_case: bool,
    field: &str,
    errors: &mut Vec<ExprError>,
) -> Option<Op> {
    match *written {
        Written::Exists(b) => Some(Op::Exists(b)),
        Written::IsEmpty(b) => Some(Op::IsEmpty(b)),
        Written::Regex(pattern) => match RegexBuilder::new(pattern)
            .case_insensitive(ignore_case)
            .build()
        {
            Ok(re) => Some(Op::Matches(re)),
            Err(e) => {
                errors.push(ExprError::new(field, regex_error_message(&e)));
                None
            }
        },
        Written::Value(kind @ (Kind::Equals | Kind::NotEquals), Value::Null) => {
            let instead = if kind == Kind::Equals {
                "exists: false"
            } else {
                "exists: true"
            };
            errors.push(ExprError::new(
                field,
                format!(
                    "{} null is not supported (a missing value is never compared); write {instead}",
                    kind.name()
                ),
            ));
            None
        }
        Written::Value(kind, v) => {
            compile_operand(compiler, v, field, errors).map(|o| Op::With(kind, o))
        }
        Written::List(kind, list) => {
            compile_operand(compiler, &Value::Array(list.to_vec()), field, errors)
                .map(|o| Op::With(kind, o))
        }
    }
}

fn compile_operand(
    compiler: &mut Compiler,
    written: &Value,
    field: &str,
    errors: &mut Vec<ExprError>,
) -> Option<Operand> {
    let expr = compile_value(compiler, written, field, errors)?;
    let written = expr.as_literal().is_none().then(|| written_text(written));
    Some(Operand { expr, written })
}

/// The regex crate's multi-line report as one line.
fn regex_error_message(e: &regex::Error) -> String {
    match e {
        regex::Error::Syntax(report) => {
            let reason = report
                .lines()
                .rev()
                .find_map(|l| l.trim().strip_prefix("error: "))
                .unwrap_or(report.as_str());
            format!("invalid regular expression: {reason}")
        }
        regex::Error::CompiledTooBig(_) => "regular expression is too big".to_owned(),
        other => format!("invalid regular expression: {other}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Evaluating
// ---------------------------------------------------------------------------------------------

impl Node {
    fn evaluate(&self, scope: &Scope<'_>) -> Result<Outcome, ExprError> {
        match self {
            Node::All { label, items } => {
                for item in items {
                    let outcome = item.evaluate(scope)?;
                    if !outcome.passed {
                        return Ok(outcome);
                    }
                }
                Ok(Outcome {
                    passed: true,
                    fact: format!("{label}: every condition passed"),
                })
            }
            Node::Any { label, items } => {
                let mut facts = Vec::with_capacity(items.len());
                for item in items {
                    let outcome = item.evaluate(scope)?;
                    if outcome.passed {
                        return Ok(outcome);
                    }
                    facts.push(outcome.fact);
                }
                Ok(Outcome {
                    passed: false,
                    fact: format!("{label}: none passed ({})", facts.join("; ")),
                })
            }
            Node::Not(inner) => {
                let outcome = inner.evaluate(scope)?;
                Ok(Outcome {
                    passed: !outcome.passed,
                    fact: outcome.fact,
                })
            }
            Node::Compare(c) => c.evaluate(scope),
        }
    }
}

impl Comparison {
    fn evaluate(&self, scope: &Scope<'_>) -> Result<Outcome, ExprError> {
        let actual = self
            .value
            .render_in(scope)
            .map_err(|e| e.within(&join_field(&self.path, "value")))?;
        let ic = self.ignore_case;
        let (passed, sentence) = match &self.op {
            Op::Exists(want) => {
                let exists = !actual.is_null();
                let sentence = if exists {
                    format!("{} (was {}) exists", self.written, shown(&actual))
                } else {
                    format!("{} does not exist", self.written)
                };
                (exists == *want, sentence)
            }
            Op::IsEmpty(want) => {
                let empty = is_empty(&actual);
                let phrase = if empty { "is empty" } else { "is not empty" };
                (empty == *want, self.sentence(&actual, phrase, ""))
            }
            Op::Matches(re) => {
                let holds = text_of(&actual).is_some_and(|t| re.is_match(&t));
                let phrase = if holds { "matches" } else { "does not match" };
                let operand = format!("/{}/{}", re.as_str(), if ic { "i" } else { "" });
                (holds, self.sentence(&actual, phrase, &operand))
            }
            Op::With(kind, operand) => {
                let rendered = operand
                    .expr
                    .render_in(scope)
                    .map_err(|e| e.within(&join_field(&self.path, kind.name())))?;
                let holds = kind.holds(&actual, &rendered, ic);
                let (yes, no) = kind.phrases();
                let mut shown_operand = match &operand.written {
                    Some(written) => format!("{written} (which is {})", shown(&rendered)),
                    None => shown(&rendered),
                };
                if ic && kind.is_textual() {
                    shown_operand.push_str(" (ignoring case)");
                }
                if !holds
                    && kind.is_ordering()
                    && !actual.is_null()
                    && order(&actual, &rendered).is_none()
                {
                    shown_operand.push_str(" (only numbers and dates can be compared)");
                }
                (
                    holds,
                    self.sentence(&actual, if holds { yes } else { no }, &shown_operand),
                )
            }
        };
        let fact = if self.path.is_empty() {
            sentence
        } else {
            format!("{}: {sentence}", self.path)
        };
        Ok(Outcome { passed, fact })
    }

    /// `{{x}} (was 5) is not greater than 10`.
    fn sentence(&self, actual: &Value, phrase: &str, operand: &str) -> String {
        let was = if actual.is_null() {
            Cow::Borrowed("missing")
        } else {
            Cow::Owned(shown(actual))
        };
        if operand.is_empty() {
            format!("{} (was {was}) {phrase}", self.written)
        } else {
            format!("{} (was {was}) {phrase} {operand}", self.written)
        }
    }
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Equals => "equals",
            Kind::NotEquals => "not_equals",
            Kind::Gt => "gt",
            Kind::Gte => "gte",
            Kind::Lt => "lt",
            Kind::Lte => "lte",
            Kind::Contains => "contains",
            Kind::NotContains => "not_contains",
            Kind::StartsWith => "starts_with",
            Kind::EndsWith => "ends_with",
            Kind::In => "in",
            Kind::NotIn => "not_in",
        }
    }

    /// What to say when the operator holds, and when it does not.
    fn phrases(self) -> (&'static str, &'static str) {
        match self {
            Kind::Equals => ("equals", "does not equal"),
            Kind::NotEquals => ("does not equal", "equals"),
            Kind::Gt => ("is greater than", "is not greater than"),
            Kind::Gte => (
                "is greater than or equal to",
                "is not greater than or equal to",
            ),
            Kind::Lt => ("is less than", "is not less than"),
            Kind::Lte => ("is less than or equal to", "is not less than or equal to"),
            Kind::Contains => ("contains", "does not contain"),
            Kind::NotContains => ("does not contain", "contains"),
            Kind::StartsWith => ("starts with", "does not start with"),
            Kind::EndsWith => ("ends with", "does not end with"),
            Kind::In => ("is one of", "is not one of"),
            Kind::NotIn => ("is not one of", "is one of"),
        }
    }

    fn is_ordering(self) -> bool {
        matches!(self, Kind::Gt | Kind::Gte | Kind::Lt | Kind::Lte)
    }

    fn is_textual(self) -> bool {
        !self.is_ordering()
    }

    /// Whether the operator holds for `actual` against the rendered operand.
    fn holds(self, actual: &Value, operand: &Value, ic: bool) -> bool {
        if actual.is_null() {
            // The missing rule: positive operators fail, their negations pass.
            return matches!(self, Kind::NotEquals | Kind::NotContains | Kind::NotIn);
        }
        match self {
            Kind::Equals => loose_eq(actual, operand, ic),
            Kind::NotEquals => !loose_eq(actual, operand, ic),
            Kind::Gt => order(actual, operand) == Some(Ordering::Greater),
            Kind::Gte => matches!(
                order(actual, operand),
                Some(Ordering::Greater | Ordering::Equal)
            ),
            Kind::Lt => order(actual, operand) == Some(Ordering::Less),
            Kind::Lte => matches!(
                order(actual, operand),
                Some(Ordering::Less | Ordering::Equal)
            ),
            Kind::Contains => contains(actual, operand, ic),
            Kind::NotContains => !contains(actual, operand, ic),
            Kind::StartsWith => affix(actual, operand, ic, |t, p| t.starts_with(p)),
            Kind::EndsWith => affix(actual, operand, ic, |t, p| t.ends_with(p)),
            Kind::In => one_of(actual, operand, ic),
            Kind::NotIn => !one_of(actual, operand, ic),
        }
    }
}

/// Equality with Zapier's coercions (see the module docs).
fn loose_eq(a: &Value, b: &Value, ic: bool) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => x.as_f64() == y.as_f64(),
        },
        (Value::Number(n), Value::String(s)) | (Value::String(s), Value::Number(n)) => {
            parse_number(s).is_some_and(|x| Some(x) == n.as_f64())
        }
        (Value::String(x), Value::String(y)) => {
            if ic {
                x.to_lowercase() == y.to_lowercase()
            } else {
                x == y
            }
        }
        (Value::Bool(b), Value::String(s)) | (Value::String(s), Value::Bool(b)) => s
            .trim()
            .eq_ignore_ascii_case(if *b { "true" } else { "false" }),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| loose_eq(x, y, ic))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| loose_eq(v, w, ic)))
        }
        _ => a == b,
    }
}

/// Orders two values as numbers, else as dates, else not at all.
fn order(a: &Value, b: &Value) -> Option<Ordering> {
    if let (Some(x), Some(y)) = (as_number(a), as_number(b)) {
        return x.partial_cmp(&y);
    }
    if let (Some(x), Some(y)) = (as_date(a), as_date(b)) {
        return Some(x.cmp(&y));
    }
    None
}

fn as_number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => parse_number(s),
        _ => None,
    }
}

/// A string holding a finite number (`" 10 "`, `"-1.5"`, `"1e3"`).
fn parse_number(s: &str) -> Option<f64> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    s.parse::<f64>().ok().filter(|f| f.is_finite())
}

/// An RFC 3339 timestamp, or a `YYYY-MM-DD` date taken as midnight UTC.
fn as_date(v: &Value) -> Option<OffsetDateTime> {
    let s = v.as_str()?.trim();
    if s.len() < 10 || s.as_bytes()[4] != b'-' {
        return None;
    }
    if s.len() == 10 {
        let digits = |r: std::ops::Range<usize>| -> Option<u32> {
            let part = s.get(r)?;
            part.bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| part.parse().ok())?
        };
        if s.as_bytes()[7] != b'-' {
            return None;
        }
        let year = i32::try_from(digits(0..4)?).ok()?;
        let month = Month::try_from(u8::try_from(digits(5..7)?).ok()?).ok()?;
        let day = u8::try_from(digits(8..10)?).ok()?;
        return Some(
            Date::from_calendar_date(year, month, day)
                .ok()?
                .midnight()
                .assume_utc(),
        );
    }
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

/// The text of a scalar: strings, numbers, booleans.
fn text_of(v: &Value) -> Option<Cow<'_, str>> {
    match v {
        Value::String(s) => Some(Cow::Borrowed(s)),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
        _ => None,
    }
}

fn fold(s: Cow<'_, str>, ic: bool) -> Cow<'_, str> {
    if ic {
        Cow::Owned(s.to_lowercase())
    } else {
        s
    }
}

fn contains(haystack: &Value, needle: &Value, ic: bool) -> bool {
    match haystack {
        Value::Array(items) => items.iter().any(|item| loose_eq(item, needle, ic)),
        Value::Object(map) => text_of(needle).is_some_and(|key| {
            if ic {
                let key = key.to_lowercase();
                map.keys().any(|k| k.to_lowercase() == key)
            } else {
                map.contains_key(key.as_ref())
            }
        }),
        _ => match (text_of(haystack), text_of(needle)) {
            (Some(h), Some(n)) => fold(h, ic).contains(fold(n, ic).as_ref()),
            _ => false,
        },
    }
}

fn affix(actual: &Value, operand: &Value, ic: bool, test: fn(&str, &str) -> bool) -> bool {
    match (text_of(actual), text_of(operand)) {
        (Some(t), Some(p)) => test(&fold(t, ic), &fold(p, ic)),
        _ => false,
    }
}

fn one_of(actual: &Value, list: &Value, ic: bool) -> bool {
    match list {
        Value::Array(items) => items.iter().any(|item| loose_eq(actual, item, ic)),
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Words
// ---------------------------------------------------------------------------------------------

/// The longest value shown in a reason, in characters.
const SHOWN_MAX: usize = 80;

/// A value as JSON in a reason, cut to [`SHOWN_MAX`] characters. Serialization stops early, so a
/// huge payload costs no more than a small one.
fn shown(v: &Value) -> String {
    /// Accepts bytes until it holds enough, then refuses, which stops serde_json.
    struct Capped(Vec<u8>);
    impl std::io::Write for Capped {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            // Four bytes per character at most: past this we hold more than SHOWN_MAX characters.
            if self.0.len() > SHOWN_MAX * 4 {
                return Err(std::io::Error::other("enough"));
            }
            self.0.extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut capped = Capped(Vec::new());
    let stopped = serde_json::to_writer(&mut capped, v).is_err();
    let mut text = cut(String::from_utf8_lossy(&capped.0).into_owned());
    if stopped && !text.ends_with('…') {
        text.push('…');
    }
    text
}

/// An expression as written: strings as they are, anything else as JSON; cut to [`SHOWN_MAX`].
fn written_text(v: &Value) -> String {
    match v {
        Value::String(s) => cut(s.clone()),
        other => shown(other),
    }
}

fn cut(mut s: String) -> String {
    if let Some((idx, _)) = s.char_indices().nth(SHOWN_MAX) {
        s.truncate(idx);
        s.push('…');
    }
    s
}
