//! Built-in handlebars helpers: text (`upper`, `lower`, `trim`, `title`, `truncate`, `replace`,
//! `split`, `join`, `slug`, `extract_email`, `extract_url`, `extract_number`), numbers (`round`,
//! `add`, `subtract`, `multiply`, `divide`), utilities (`base64_encode`, `base64_decode`,
//! `url_encode`, `sha256`, `uuid`), and `default`, `json`; numbers, dates, lookups and JSON are in
//! `formatter.rs`.
//!
//! Missing input (`null`) gives `null` (so `default` can supply a fallback); input of the wrong kind
//! is an error naming the helper.
//!
//! A helper here is a plain function from its arguments to a JSON value, listed in [`HELPERS`];
//! adding one is adding a line there. The same function serves both ways handlebars calls a
//! helper: as an expression inside text (`Hi {{upper x}}`, the value is written as text through
//! [`write_text`], so objects come out as compact JSON) and as a subexpression
//! (`{{upper (default x "n/a")}}`, the value is passed on typed). A string that is exactly one
//! helper call renders the helper's value, typed (`{{multiply x 2}}` is a number).

use handlebars::{
    Context, Handlebars, Helper, HelperDef, HelperResult, Output, RenderContext, RenderError,
    RenderErrorReason, ScopedJson,
};
use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use regex::Regex;
use serde_json::Value;

use super::template::{to_text, write_text};
use crate::secrets::Secrets;

/// The internal helper every expression of a handlebars template is rewritten to (see
/// `template.rs`): writes its argument as text.
pub(super) const VALUE_HELPER: &str = "__hookflow_value";

/// The helper that writes its value as JSON text; a handlebars template that is one expression
/// calls it instead of the value helper, to render typed (see `template.rs`).
pub(super) const JSON_HELPER: &str = "json";

/// A helper: its arguments (missing fields are `null`) to its value, or a message.
pub(super) type HelperFn = fn(&[&Value]) -> Result<Value, String>;

/// Every helper we register, by name.
const HELPERS: &[(&str, HelperFn)] = &[
    ("upper", |args| text_fn(args, |s| s.to_uppercase())),
    ("lower", |args| text_fn(args, |s| s.to_lowercase())),
    ("trim", |args| text_fn(args, |s| s.trim().to_owned())),
    ("title", |args| text_fn(args, title)),
    ("truncate", truncate),
    ("replace", replace),
    ("split", split),
    ("join", join),
    ("slug", |args| text_fn(args, slug)),
    ("extract_email", |args| extract(args, email_pattern())),
    ("extract_url", |args| extract(args, url_pattern())),
    ("extract_number", extract_number),
    ("round", round),
    ("add", |args| arithmetic(args, |a, b| Ok(a + b))),
    ("subtract", |args| arithmetic(args, |a, b| Ok(a - b))),
    ("multiply", |args| arithmetic(args, |a, b| Ok(a * b))),
    ("divide", |args| {
        arithmetic(args, |a, b| {
            if b == 0.0 {
                Err("cannot divide by zero".into())
            } else {
                Ok(a / b)
            }
        })
    }),
    ("base64_encode", |args| text_fn(args, |s| BASE64.encode(s))),
    ("base64_decode", |args| {
        let [value] = one(args)?;
        if value.is_null() {
            return Ok(Value::Null);
        }
        let bytes = BASE64
            .decode(to_text(value).trim())
            .map_err(|_| "takes base64 text".to_owned())?;
        Ok(Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    }),
    ("url_encode", |args| {
        text_fn(args, |s| {
            url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
        })
    }),
    ("sha256", |args| {
        text_fn(args, |s| {
            use sha2::Digest;
            sha2::Sha256::digest(s.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        })
    }),
    ("uuid", |args| {
        if !args.is_empty() {
            return Err("takes no value".into());
        }
        Ok(Value::String(uuid_v4()))
    }),
    ("default", default),
    (JSON_HELPER, |args| {
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

/// Registers our helpers; what they compute from `secrets` is noted as derived.
pub(super) fn register(registry: &mut Handlebars<'static>, secrets: &Secrets) {
    for &(name, f) in all() {
        let secrets = secrets.clone();
        registry.register_helper(name, Box::new(FnHelper { name, f, secrets }));
    }
}

/// Whether `{{name}}` alone would call a helper rather than read a field.
pub(super) fn is_helper(name: &str) -> bool {
    BUILT_IN.contains(&name) || all().any(|(n, _)| *n == name)
}

/// One of our helpers (not handlebars' own), by name: its name and function.
pub(super) fn function(name: &str) -> Option<(&'static str, HelperFn)> {
    all().find(|(n, _)| *n == name).copied()
}

/// Our helpers: these and the formatter's.
fn all() -> impl Iterator<Item = &'static (&'static str, HelperFn)> {
    HELPERS.iter().chain(super::formatter::HELPERS)
}

/// The helpers a flow's author can call, for messages.
pub(super) fn public_names() -> Vec<&'static str> {
    all()
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

/// A text helper of one value; `null` stays `null`.
fn text_fn(args: &[&Value], f: fn(&str) -> String) -> Result<Value, String> {
    let [value] = one(args)?;
    if value.is_null() {
        return Ok(Value::Null);
    }
    Ok(Value::String(f(&to_text(value))))
}

fn title(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut start = true;
    for c in s.chars() {
        if start {
            out.extend(c.to_uppercase());
        } else {
            out.extend(c.to_lowercase());
        }
        start = c.is_whitespace() || c == '-';
    }
    out
}

fn slug(s: &str) -> String {
    let mut out = String::new();
    for c in s.to_lowercase().chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    out.trim_end_matches('-').to_owned()
}

/// Arguments after the first: text, each required.
fn text_args(args: &[&Value], count: usize, usage: &str) -> Result<Vec<String>, String> {
    if args.len() != count + 1 {
        return Err(format!("needs {usage}"));
    }
    Ok(args[1..].iter().map(|v| to_text(v)).collect())
}

/// `{{truncate text 20}}` or `{{truncate text 20 "…"}}`: at most that many characters, the suffix
/// included when text was cut.
fn truncate(args: &[&Value]) -> Result<Value, String> {
    let usage = "a value and a length, e.g. {{truncate trigger.body.note 100}}";
    let (Some(value), Some(len)) = (args.first(), args.get(1).and_then(|n| number(n))) else {
        return Err(format!("needs {usage}"));
    };
    if args.len() > 3 || len < 0.0 {
        return Err(format!("needs {usage}"));
    }
    if value.is_null() {
        return Ok(Value::Null);
    }
    let text = to_text(value);
    let len = len as usize;
    if text.chars().count() <= len {
        return Ok(Value::String(text));
    }
    let suffix = args.get(2).map(|s| to_text(s)).unwrap_or_default();
    let keep = len.saturating_sub(suffix.chars().count());
    Ok(Value::String(
        text.chars().take(keep).collect::<String>() + &suffix,
    ))
}

/// `{{replace text "old" "new"}}`: every occurrence.
fn replace(args: &[&Value]) -> Result<Value, String> {
    let parts = text_args(args, 2, "a value, the text to find and its replacement")?;
    if args[0].is_null() {
        return Ok(Value::Null);
    }
    Ok(Value::String(
        to_text(args[0]).replace(&parts[0], &parts[1]),
    ))
}

/// `{{split text ","}}`: an array of the parts, each trimmed.
fn split(args: &[&Value]) -> Result<Value, String> {
    let parts = text_args(
        args,
        1,
        "a value and a separator, e.g. {{split trigger.body.tags \",\"}}",
    )?;
    if args[0].is_null() {
        return Ok(Value::Null);
    }
    let text = to_text(args[0]);
    if parts[0].is_empty() {
        return Err("the separator is empty".into());
    }
    Ok(Value::Array(
        text.split(parts[0].as_str())
            .map(|p| Value::String(p.trim().to_owned()))
            .collect(),
    ))
}

/// `{{join list ", "}}`: the items as text, joined.
fn join(args: &[&Value]) -> Result<Value, String> {
    let parts = text_args(
        args,
        1,
        "a list and a separator, e.g. {{join trigger.body.tags \", \"}}",
    )?;
    match args[0] {
        Value::Null => Ok(Value::Null),
        Value::Array(items) => Ok(Value::String(
            items
                .iter()
                .map(to_text)
                .collect::<Vec<_>>()
                .join(&parts[0]),
        )),
        _ => Err("takes a list as its first value".into()),
    }
}

fn email_pattern() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
            .expect("valid regex")
    })
}

fn url_pattern() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r#"https?://[^\s<>"']+"#).expect("valid regex"))
}

/// The first match of a pattern in the text, or `null`.
fn extract(args: &[&Value], pattern: &Regex) -> Result<Value, String> {
    let [value] = one(args)?;
    let text = to_text(value);
    Ok(pattern.find(&text).map_or(Value::Null, |m| {
        Value::String(m.as_str().trim_end_matches(['.', ',', ')']).to_owned())
    }))
}

/// `{{extract_number "Total: $1,234.50"}}` → `1234.5`; `null` when there is none.
fn extract_number(args: &[&Value]) -> Result<Value, String> {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| Regex::new(r"-?\d[\d,]*(\.\d+)?").expect("valid regex"));
    let [value] = one(args)?;
    let text = to_text(value);
    Ok(re
        .find(&text)
        .and_then(|m| m.as_str().replace(',', "").parse::<f64>().ok())
        .map_or(Value::Null, number_value))
}

/// A number, or numeric text.
pub(super) fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A float as JSON, whole numbers as integers.
pub(super) fn number_value(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() < 9e15 {
        Value::from(n as i64)
    } else {
        serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)
    }
}

/// `{{round 3.14159 2}}` → `3.14` (0 places by default).
fn round(args: &[&Value]) -> Result<Value, String> {
    let usage = "a number and, optionally, decimal places: {{round trigger.body.amount 2}}";
    let Some((n, places)) = number_and_places(args, usage)? else {
        return Ok(Value::Null);
    };
    let scale = 10f64.powi(places as i32);
    Ok(number_value((n * scale).round() / scale))
}

/// A helper's first argument as a number and its optional second as decimal places (0 to 12,
/// default 0); `None` when the number is missing. `usage` says how to call the helper.
pub(super) fn number_and_places(
    args: &[&Value],
    usage: &str,
) -> Result<Option<(f64, usize)>, String> {
    let Some(value) = args.first() else {
        return Err(format!("needs {usage}"));
    };
    if value.is_null() {
        return Ok(None);
    }
    let n = number(value).ok_or_else(|| format!("takes a number, not `{}`", to_text(value)))?;
    let places = match args.get(1) {
        None => 0,
        Some(p) => number(p)
            .filter(|p| (0.0..=12.0).contains(p))
            .ok_or_else(|| format!("needs {usage}"))? as usize,
    };
    Ok(Some((n, places)))
}

/// `{{add a b}}` and the like: numbers or numeric text; `null` if either is missing.
fn arithmetic(args: &[&Value], op: fn(f64, f64) -> Result<f64, String>) -> Result<Value, String> {
    let [a, b] = args else {
        return Err("takes two numbers".into());
    };
    if a.is_null() || b.is_null() {
        return Ok(Value::Null);
    }
    let n = |v: &Value| number(v).ok_or_else(|| format!("takes numbers, not `{}`", to_text(v)));
    Ok(number_value(op(n(a)?, n(b)?)?))
}

/// A random (version 4) UUID.
fn uuid_v4() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// Adapts a [`HelperFn`] to handlebars.
struct FnHelper {
    name: &'static str,
    f: HelperFn,
    secrets: Secrets,
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
        let value = (self.f)(&args)
            .map_err(|msg| RenderErrorReason::Other(format!("{} {msg}", self.name)))?;
        self.secrets.note(&args, &value);
        Ok(ScopedJson::Derived(value))
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
