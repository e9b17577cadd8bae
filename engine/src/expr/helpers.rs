//! Built-in handlebars helpers: `upper`, `lower`, `trim`, `default`, `json`.
//!
//! A helper here is a plain function from its arguments to a JSON value, listed in [`HELPERS`];
//! adding one is adding a line there. The same function serves both ways handlebars calls a
//! helper: as an expression (`{{upper x}}`, the value is written as text through
//! [`write_text`], so objects come out as compact JSON) and as a subexpression
//! (`{{upper (default x "n/a")}}`, the value is passed on typed).

use handlebars::{
    Context, Handlebars, Helper, HelperDef, HelperResult, Output, RenderContext, RenderError,
    RenderErrorReason, ScopedJson,
};
use serde_json::Value;

use super::template::{to_text, write_text};

/// The internal helper bare value expressions are rewritten to (see `template.rs`): writes its
/// argument as text.
pub(super) const VALUE_HELPER: &str = "__hookflow_value";

/// A helper: its arguments (missing fields are `null`) to its value, or a message.
type HelperFn = fn(&[&Value]) -> Result<Value, String>;

/// Every helper we register, by name.
const HELPERS: &[(&str, HelperFn)] = &[
    ("upper", |args| text_fn(args, |s| s.to_uppercase())),
    ("lower", |args| text_fn(args, |s| s.to_lowercase())),
    ("trim", |args| text_fn(args, |s| s.trim().to_owned())),
    ("default", default),
    ("json", |args| {
        let [value] = one(args)?;
        Ok(Value::String(value.to_string()))
    }),
    (VALUE_HELPER, |args| {
        let [value] = one(args)?;
        Ok((*value).clone())
    }),
];

/// The helpers handlebars itself registers.
const BUILT_IN: &[&str] = &[
    "if", "unless", "each", "with", "lookup", "raw", "log", "eq", "ne", "gt", "gte", "lt", "lte",
    "and", "or", "not", "len",
];

/// Registers our helpers.
pub(super) fn register(registry: &mut Handlebars<'static>) {
    for &(name, f) in HELPERS {
        registry.register_helper(name, Box::new(FnHelper { name, f }));
    }
}

/// Whether `{{name}}` alone would call a helper rather than read a field.
pub(super) fn is_helper(name: &str) -> bool {
    BUILT_IN.contains(&name) || HELPERS.iter().any(|(n, _)| *n == name)
}

/// The helpers a flow's author can call, for messages.
pub(super) fn public_names() -> Vec<&'static str> {
    HELPERS
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| *n != VALUE_HELPER)
        .chain(
            BUILT_IN
                .iter()
                .copied()
                .filter(|n| !matches!(*n, "raw" | "log")),
        )
        .collect()
}

/// `{{default a b …}}`: the first argument that is not empty (`null`, `""`, `[]`, `{}`), else
/// the last.
fn default(args: &[&Value]) -> Result<Value, String> {
    if args.len() < 2 {
        return Err(
            "needs a value and a fallback, e.g. {{default trigger.body.name \"unknown\"}}".into(),
        );
    }
    let chosen = args
        .iter()
        .find(|v| !is_empty(v))
        .unwrap_or(&args[args.len() - 1]);
    Ok((*chosen).clone())
}

/// Whether a value counts as empty for `default` (and conditions' `is_empty`).
pub(super) fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Bool(_) | Value::Number(_) => false,
    }
}

fn one<'a>(args: &[&'a Value]) -> Result<[&'a Value; 1], String> {
    match args {
        [v] => Ok([*v]),
        _ => Err(format!("takes one value, got {}", args.len())),
    }
}

fn text_fn(args: &[&Value], f: fn(&str) -> String) -> Result<Value, String> {
    let [value] = one(args)?;
    Ok(Value::String(f(&to_text(value))))
}

/// Adapts a [`HelperFn`] to handlebars.
struct FnHelper {
    name: &'static str,
    f: HelperFn,
}

impl HelperDef for FnHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let args: Vec<&Value> = h.params().iter().map(|p| p.value()).collect();
        (self.f)(&args)
            .map(ScopedJson::Derived)
            .map_err(|msg| RenderErrorReason::Other(format!("{} {msg}", self.name)).into())
    }

    fn call<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        r: &'reg Handlebars<'reg>,
        ctx: &'rc Context,
        rc: &mut RenderContext<'reg, 'rc>,
        out: &mut dyn Output,
    ) -> HelperResult {
        let value = self.call_inner(h, r, ctx, rc)?;
        let mut text = String::new();
        write_text(&mut text, value.as_json());
        out.write(&text)?;
        Ok(())
    }
}
