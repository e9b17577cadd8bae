//! How one string of a flow is compiled and rendered.
//!
//! Every string goes through [`compile`], which decides what it is:
//!
//! - `$.…` / `$[…` → a JSONPath ([`super::jsonpath`]);
//! - no `{{` → a literal;
//! - otherwise it is parsed once by handlebars' own parser, and the parsed template is inspected:
//!   - exactly one `{{ simple.path }}` → [`Leaf::Path`], rendered typed;
//!   - exactly one call of our own helper on simple paths and literals → [`Leaf::Call`],
//!     rendered typed (`{{multiply x 2}}` is a number, `{{parse_json t}}` an object);
//!   - only text, simple paths and such calls → [`Leaf::Pieces`], rendered here without
//!     handlebars: no clone of the context, no registry lookup (the common cases:
//!     `Hi {{trigger.body.name}}`, `{{lower trigger.body.email}}` inside text);
//!   - anything else (handlebars' own helpers, hash arguments, subexpressions, blocks, `@root`,
//!     `../`) → registered in the flow's handlebars registry as [`Leaf::Handlebars`]. Before
//!     registering, every expression (`{{x.y}}`, `{{this}}` inside `#each`, `{{lookup a "k"}}`)
//!     is rewritten into a call of the internal value helper, so that objects and arrays render
//!     as compact JSON (as they do on the fast path) rather than handlebars' `[object]`. A
//!     template that is exactly one expression (`{{merge a (pick b "x")}}`, `{{len items}}`)
//!     calls `json` instead, and its output is read back as JSON, so it too renders typed.
//!
//! Invariant: a string that is exactly one expression renders the expression's value, typed;
//! anything longer renders text, each expression written by [`write_text`].
//!
//! A *simple path* is what handlebars calls a relative path made only of named segments:
//! `a.b`, `a.0`, `a.[0]`, `a.[odd key]`. Numeric segments index arrays. A segment that does not
//! exist renders `null` (typed) or `""` (text). One known difference from handlebars proper: a
//! non-numeric segment on an array is simply missing here, whereas inside a handlebars template
//! (with helpers or blocks) handlebars reports it as an error.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::fmt::Write as _;

use handlebars::template::{
    HelperTemplate, Parameter, Subexpression, Template, TemplateElement, TemplateMapping,
};
use handlebars::{Context, Handlebars, Path, PathSeg, RenderErrorReason};
use serde_json::Value;

use super::helpers::{self, HelperFn};
use super::jsonpath::JsonPathExpr;
use super::{ExprError, Templates};
use crate::secrets::Secrets;

/// A string, compiled.
pub(super) enum Compiled {
    /// No expression: the text itself (with escaped mustaches unescaped).
    Literal(String),
    /// An expression.
    Leaf(Leaf),
}

/// A string that holds an expression.
#[derive(Debug, Clone)]
pub(super) enum Leaf {
    /// `{{ a.b.c }}` alone: the value at the path, typed.
    Path(SimplePath),
    /// A JSONPath.
    JsonPath(JsonPathExpr),
    /// `{{helper arg…}}` alone: the helper's value, typed.
    Call(Call),
    /// Text, simple paths and calls.
    Pieces(Vec<Piece>),
    /// A handlebars template, registered under `name`; when `typed`, it is one expression
    /// wrapped to write its value as JSON.
    Handlebars { name: String, typed: bool },
}

/// A part of a [`Leaf::Pieces`] template.
#[derive(Debug, Clone)]
pub(super) enum Piece {
    Text(String),
    Path(SimplePath),
    Call(Call),
}

/// `{{helper arg…}}`: one of our helpers on simple paths and literals, the same function
/// handlebars would call, with the same error message.
#[derive(Debug, Clone)]
pub(super) struct Call {
    name: &'static str,
    f: HelperFn,
    args: Box<[Arg]>,
    /// Line and column of the expression in its string.
    at: (usize, usize),
}

/// An argument of a [`Call`].
#[derive(Debug, Clone)]
enum Arg {
    Path(SimplePath),
    Literal(Value),
}

impl Call {
    /// The call, when `ht` is one this fast path renders as handlebars would: one of our helpers,
    /// no hash, no block, only simple paths and literals as arguments.
    fn of(ht: &HelperTemplate, at: &TemplateMapping) -> Option<Self> {
        if ht.block || !ht.hash.is_empty() || ht.block_param.is_some() {
            return None;
        }
        let name = match &ht.name {
            Parameter::Name(name) => name.as_str(),
            Parameter::Path(Path::Relative((segs, _))) => match segs.as_slice() {
                [PathSeg::Named(name)] => name.as_str(),
                _ => return None,
            },
            _ => return None,
        };
        let (name, f) = helpers::function(name)?;
        let args = ht
            .params
            .iter()
            .map(|param| match param {
                Parameter::Path(path) => simple_path(path).map(Arg::Path),
                Parameter::Literal(value) => Some(Arg::Literal(value.clone())),
                _ => None,
            })
            .collect::<Option<_>>()?;
        Some(Self {
            name,
            f,
            args,
            at: (at.0, at.1),
        })
    }

    /// The helper's value on `data` (a missing field is `null`), noted as derived when it was
    /// computed from a secret.
    fn value(&self, data: &Value, secrets: &Secrets) -> Result<Value, ExprError> {
        static NULL: Value = Value::Null;
        let args: Vec<&Value> = self
            .args
            .iter()
            .map(|arg| match arg {
                Arg::Path(path) => path.lookup(data).unwrap_or(&NULL),
                Arg::Literal(value) => value,
            })
            .collect();
        let value = (self.f)(&args).map_err(|msg| {
            ExprError::new(
                "",
                failed_at(Some(self.at), &format!("{} {msg}", self.name)),
            )
        })?;
        secrets.note(&args, &value);
        Ok(value)
    }
}

/// Dotted path segments into the context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SimplePath(Box<[String]>);

impl SimplePath {
    /// The segments.
    pub(super) fn segments(&self) -> &[String] {
        &self.0
    }

    /// The segments joined with dots.
    pub(super) fn dotted(&self) -> String {
        self.0.join(".")
    }

    /// The value at this path, if any.
    pub(super) fn lookup<'v>(&self, data: &'v Value) -> Option<&'v Value> {
        let mut current = data;
        for seg in self.0.iter() {
            current = match current {
                Value::Object(map) => map.get(seg)?,
                Value::Array(items) => items.get(seg.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(current)
    }
}

/// What one `render`/`evaluate` call renders against: the context, and the handlebars
/// [`Context`] built from it the first time a handlebars template needs one.
pub(super) struct Scope<'a> {
    templates: &'a Templates,
    data: &'a Value,
    handlebars_context: OnceCell<Context>,
}

impl<'a> Scope<'a> {
    pub(super) fn new(templates: &'a Templates, data: &'a Value) -> Self {
        Self {
            templates,
            data,
            handlebars_context: OnceCell::new(),
        }
    }

    fn handlebars_context(&self) -> &Context {
        // handlebars owns its data: this is the one clone of the context per render call.
        self.handlebars_context
            .get_or_init(|| Context::from(self.data.clone()))
    }

    /// Renders the registered template `name`.
    fn render_handlebars(&self, name: &str) -> Result<String, ExprError> {
        let registry = &self.templates.0.registry;
        registry
            .render_with_context(name, self.handlebars_context())
            .map_err(|e| ExprError::new("", render_error_message(&e, registry, name)))
    }
}

impl Leaf {
    /// Renders to a JSON value: paths keep the type of what they select, templates give strings.
    pub(super) fn render_value(&self, scope: &Scope<'_>) -> Result<Value, ExprError> {
        match self {
            Leaf::Path(path) => Ok(path.lookup(scope.data).cloned().unwrap_or(Value::Null)),
            Leaf::JsonPath(jp) => jp.select(scope.data),
            Leaf::Call(call) => call.value(scope.data, scope.templates.secrets()),
            Leaf::Handlebars { name, typed: true } => {
                let json = scope.render_handlebars(name)?;
                serde_json::from_str(&json).map_err(|e| {
                    ExprError::new("", failed_at(None, &format!("not a JSON value: {e}")))
                })
            }
            Leaf::Pieces(_) | Leaf::Handlebars { typed: false, .. } => {
                self.render_text(scope).map(Value::String)
            }
        }
    }

    /// Renders to text.
    pub(super) fn render_text(&self, scope: &Scope<'_>) -> Result<String, ExprError> {
        match self {
            Leaf::Path(path) => {
                let mut out = String::new();
                if let Some(v) = path.lookup(scope.data) {
                    write_text(&mut out, v);
                }
                Ok(out)
            }
            Leaf::JsonPath(_) | Leaf::Call(_) | Leaf::Handlebars { typed: true, .. } => {
                Ok(to_text(&self.render_value(scope)?))
            }
            Leaf::Pieces(pieces) => {
                let mut out = String::new();
                for piece in pieces {
                    match piece {
                        Piece::Text(t) => out.push_str(t),
                        Piece::Path(p) => {
                            if let Some(v) = p.lookup(scope.data) {
                                write_text(&mut out, v);
                            }
                        }
                        Piece::Call(call) => write_text(
                            &mut out,
                            &call.value(scope.data, scope.templates.secrets())?,
                        ),
                    }
                }
                Ok(out)
            }
            Leaf::Handlebars { name, typed: false } => scope.render_handlebars(name),
        }
    }
}

/// A value as text: strings as they are, `null` as nothing, numbers and booleans as JSON,
/// objects and arrays as compact JSON.
pub(super) fn write_text(out: &mut String, value: &Value) {
    match value {
        Value::Null => {}
        Value::String(s) => out.push_str(s),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Value::Array(_) | Value::Object(_) => {
            let _ = write!(out, "{value}");
        }
    }
}

/// [`write_text`] into a new string.
pub(super) fn to_text(value: &Value) -> String {
    let mut out = String::new();
    write_text(&mut out, value);
    out
}

/// The most expressions (`{{…}}`) one string may hold: handlebars' parser works out the line and
/// column of every expression from the start of the text, so its cost grows with their number
/// times the text's length.
pub(super) const MAX_EXPRESSIONS: usize = 256;

/// How deep blocks (`{{#if}}…{{/if}}`) and subexpressions (`(upper x)`) may nest in one string:
/// handlebars' parser, and our walks of what it parsed, recurse once per level.
pub(super) const MAX_NESTING: usize = 32;

/// Refuses a string past [`MAX_EXPRESSIONS`] or [`MAX_NESTING`] in one linear pass, before
/// handlebars parses it: past those bounds its parse could take quadratic time or exhaust a
/// thread's stack. Errs on the side of counting: an escaped `\{{` counts like any other.
fn check_bounds(text: &str) -> Result<(), String> {
    let bytes = text.as_bytes();
    let (mut expressions, mut blocks, mut at) = (0usize, 0usize, 0usize);
    while let Some(found) = text[at..].find("{{").map(|i| at + i) {
        expressions += 1;
        if expressions > MAX_EXPRESSIONS {
            return Err(bound_error(
                text,
                found,
                &format!("more than {MAX_EXPRESSIONS} expressions in one value (split it up)"),
            ));
        }
        let mut i = found + 2;
        while matches!(bytes.get(i), Some(b'{' | b'~')) {
            i += 1;
        }
        match (bytes.get(i), bytes.get(i + 1)) {
            (Some(b'!'), _) => {
                let close = if text[i..].starts_with("!--") {
                    "--}}"
                } else {
                    "}}"
                };
                at = text[i..]
                    .find(close)
                    .map_or(bytes.len(), |e| i + e + close.len());
                continue;
            }
            (Some(b'#' | b'^'), Some(next)) if !matches!(next, b'}' | b'~') => blocks += 1,
            (Some(b'/'), _) => blocks = blocks.saturating_sub(1),
            _ => {}
        }
        let (mut parens, mut quote) = (0usize, None);
        while i < bytes.len() {
            let c = bytes[i];
            match quote {
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None if c == b'"' || c == b'\'' => quote = Some(c),
                None if c == b'(' => parens += 1,
                None if c == b')' => parens = parens.saturating_sub(1),
                None if c == b'}' && bytes.get(i + 1) == Some(&b'}') => break,
                None => {}
            }
            if blocks + parens > MAX_NESTING {
                return Err(bound_error(
                    text,
                    i,
                    &format!("blocks and subexpressions nest more than {MAX_NESTING} deep"),
                ));
            }
            i += 1;
        }
        at = i;
    }
    Ok(())
}

/// A bound's error message, with the line and column of byte `offset` in `text`.
fn bound_error(text: &str, offset: usize, what: &str) -> String {
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .unwrap_or_default()
        .chars()
        .count()
        + 1;
    format!("template too large at line {line}, column {column}: {what}")
}

/// Compiles one string (see the module docs); `name` is the registry name to use if it turns
/// out to need handlebars. Errors are messages for the flow's author.
pub(super) fn compile(
    text: &str,
    registry: &mut Handlebars<'static>,
    name: &str,
) -> Result<Compiled, String> {
    if text.starts_with("$.") || text.starts_with("$[") {
        return JsonPathExpr::compile(text).map(|jp| Compiled::Leaf(Leaf::JsonPath(jp)));
    }
    if !text.contains("{{") {
        return Ok(Compiled::Literal(text.to_owned()));
    }
    check_bounds(text)?;
    let mut template = Template::compile(text).map_err(|e| parse_error_message(text, &e))?;
    check_names(&template.elements)?;

    if let [TemplateElement::Expression(ht) | TemplateElement::HtmlExpression(ht)] =
        template.elements.as_slice()
    {
        if let Some(path) = bare_path(ht).and_then(simple_path) {
            return Ok(Compiled::Leaf(Leaf::Path(path)));
        }
    }

    if let Some(pieces) = pieces(&template) {
        return Ok(match <[Piece; 1]>::try_from(pieces) {
            Ok([Piece::Text(t)]) => Compiled::Literal(t),
            Ok([Piece::Call(call)]) => Compiled::Leaf(Leaf::Call(call)),
            Ok([piece]) => Compiled::Leaf(Leaf::Pieces(vec![piece])),
            Err(pieces) if pieces.is_empty() => Compiled::Literal(String::new()),
            Err(pieces) => Compiled::Leaf(Leaf::Pieces(pieces)),
        });
    }

    rewrite_expressions(&mut template);
    let typed = write_single_expression_as_json(&mut template);
    template.name = Some(name.to_owned());
    registry.register_template(name, template);
    Ok(Compiled::Leaf(Leaf::Handlebars {
        name: name.to_owned(),
        typed,
    }))
}

/// A parse error as one line: where, a hint in plain words, and handlebars' own reason (its
/// list of grammar rules expected, cut short).
fn parse_error_message(text: &str, e: &handlebars::TemplateError) -> String {
    let reason = match e.reason() {
        handlebars::TemplateErrorReason::InvalidSyntax(s) => s.clone(),
        other => other.to_string(),
    };
    let reason = cut(&reason, 100);
    let Some((line, col)) = e.pos() else {
        return format!("invalid template: {reason}");
    };
    let rest: String = text
        .split('\n')
        .nth(line.saturating_sub(1))
        .unwrap_or_default()
        .chars()
        .skip(col.saturating_sub(1))
        .collect();
    let hint = if rest.trim().is_empty() && line >= text.split('\n').count() {
        "the template ends too early (is a `}}` or a closing `{{/…}}` missing?)".to_owned()
    } else {
        let near: String = rest
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .chars()
            .take(12)
            .collect();
        format!("unexpected `{near}`")
    };
    format!("invalid template at line {line}, column {col}: {hint} (handlebars: {reason})")
}

/// `s`, cut to `max` characters.
fn cut(s: &str, max: usize) -> Cow<'_, str> {
    match s.char_indices().nth(max) {
        Some((idx, _)) => Cow::Owned(format!("{}…", &s[..idx])),
        None => Cow::Borrowed(s),
    }
}

/// Refuses, at build time, what could only fail at render time: helpers we do not have,
/// partials and decorators (a flow has no partials to include).
fn check_names(elements: &[TemplateElement]) -> Result<(), String> {
    for element in elements {
        match element {
            TemplateElement::Expression(ht)
            | TemplateElement::HtmlExpression(ht)
            | TemplateElement::HelperBlock(ht) => check_helper(ht)?,
            TemplateElement::PartialExpression(_) | TemplateElement::PartialBlock(_) => {
                return Err("partials (`{{> name}}`) are not supported in flows".to_owned());
            }
            TemplateElement::DecoratorExpression(_) | TemplateElement::DecoratorBlock(_) => {
                return Err("decorators (`{{* name}}`) are not supported in flows".to_owned());
            }
            _ => {}
        }
    }
    Ok(())
}

fn check_helper(ht: &handlebars::template::HelperTemplate) -> Result<(), String> {
    if let Parameter::Name(name) = &ht.name {
        if !helpers::is_helper(name) {
            return Err(format!(
                "unknown helper `{name}` (there are: {})",
                helpers::public_names().join(", ")
            ));
        }
    }
    for param in ht.params.iter().chain(ht.hash.values()) {
        if let Parameter::Subexpression(sub) = param {
            check_names(std::slice::from_ref(sub.as_element()))?;
        }
    }
    if let Parameter::Subexpression(sub) = &ht.name {
        check_names(std::slice::from_ref(sub.as_element()))?;
    }
    for inner in [&ht.template, &ht.inverse].into_iter().flatten() {
        check_names(&inner.elements)?;
    }
    Ok(())
}

/// The path of a bare value expression (`{{a.b}}`, no parameters, not a helper call).
fn bare_path(ht: &handlebars::template::HelperTemplate) -> Option<&Path> {
    if ht.block || !ht.params.is_empty() || !ht.hash.is_empty() || ht.block_param.is_some() {
        return None;
    }
    match &ht.name {
        Parameter::Path(path) if !is_helper_name(path) => Some(path),
        _ => None,
    }
}

/// Whether handlebars would call a helper for this bare name (`{{upper}}`).
fn is_helper_name(path: &Path) -> bool {
    match path {
        Path::Relative((segs, _)) => match segs.as_slice() {
            [PathSeg::Named(name)] => helpers::is_helper(name),
            _ => false,
        },
        Path::Local(_) => false,
    }
}

/// The path as [`SimplePath`], when it is one (no `this`, `@root`, `../`, `@index`).
pub(super) fn simple_path(path: &Path) -> Option<SimplePath> {
    let Path::Relative((segs, _)) = path else {
        return None;
    };
    if segs.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(segs.len());
    for (i, seg) in segs.iter().enumerate() {
        match seg {
            PathSeg::Named(name) if !(i == 0 && name == "this") => out.push(name.clone()),
            _ => return None,
        }
    }
    Some(SimplePath(out.into_boxed_slice()))
}

/// The template as text, simple paths and helper calls ([`Call`]), when that is all it is.
fn pieces(template: &Template) -> Option<Vec<Piece>> {
    let mut out: Vec<Piece> = Vec::with_capacity(template.elements.len());
    for (element, at) in template.elements.iter().zip(&template.mapping) {
        match element {
            TemplateElement::RawString(text) => match out.last_mut() {
                Some(Piece::Text(prev)) => prev.push_str(text),
                _ if text.is_empty() => {}
                _ => out.push(Piece::Text(text.clone())),
            },
            TemplateElement::Comment(_) => {}
            TemplateElement::Expression(ht) | TemplateElement::HtmlExpression(ht) => {
                out.push(match bare_path(ht).and_then(simple_path) {
                    Some(path) => Piece::Path(path),
                    None => Piece::Call(Call::of(ht, at)?),
                });
            }
            _ => return None,
        }
    }
    Some(out)
}

/// Rewrites every expression `{{e}}` into `{{<value helper> e}}` (a bare value) or
/// `{{<value helper> (e)}}` (a helper call), recursively into blocks, so that handlebars writes
/// every value through our [`write_text`]: objects and arrays as compact JSON, never `[object]`.
fn rewrite_expressions(template: &mut Template) {
    for element in &mut template.elements {
        match element {
            TemplateElement::Expression(ht) | TemplateElement::HtmlExpression(ht) => {
                let arg = match bare_path(ht).cloned() {
                    Some(path) => Parameter::Path(path),
                    None => Parameter::Subexpression(Subexpression::new(
                        std::mem::replace(&mut ht.name, Parameter::Name(String::new())),
                        std::mem::take(&mut ht.params),
                        std::mem::take(&mut ht.hash),
                    )),
                };
                ht.name = Parameter::Name(helpers::VALUE_HELPER.to_owned());
                ht.params = vec![arg];
            }
            TemplateElement::HelperBlock(ht) => {
                if let Some(inner) = ht.template.as_mut() {
                    rewrite_expressions(inner);
                }
                if let Some(inner) = ht.inverse.as_mut() {
                    rewrite_expressions(inner);
                }
            }
            _ => {}
        }
    }
}

/// When the (rewritten) template is exactly one expression, makes it write its value as JSON
/// rather than text; says whether it did.
fn write_single_expression_as_json(template: &mut Template) -> bool {
    let [TemplateElement::Expression(ht) | TemplateElement::HtmlExpression(ht)] =
        template.elements.as_mut_slice()
    else {
        return false;
    };
    ht.name = Parameter::Name(helpers::JSON_HELPER.to_owned());
    true
}

/// A render error in the words of the flow's author (our generated template names stay hidden).
fn render_error_message(
    e: &handlebars::RenderError,
    registry: &Handlebars<'_>,
    name: &str,
) -> String {
    if let RenderErrorReason::TemplateNotFound(_) = e.reason() {
        if registry.get_template(name).is_none() {
            return "this expression was compiled for another flow's templates".to_owned();
        }
    }
    let reason = match e.reason() {
        RenderErrorReason::Other(msg) => msg.clone(),
        other => other.to_string(),
    };
    failed_at(e.line_no.zip(e.column_no), &reason)
}

/// A render failure's message, with where in the string when known.
fn failed_at(at: Option<(usize, usize)>, reason: &str) -> String {
    match at {
        Some((line, col)) => format!("template failed at line {line}, column {col}: {reason}"),
        None => format!("template failed: {reason}"),
    }
}
