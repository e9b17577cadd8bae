//! Which paths of the run context a string of a flow reads: the simple paths of a template
//! (`{{trigger.body.email}}`, `{{lower steps.shape.email}}`) and the definite prefix of a JSONPath
//! (`$.trigger.body.items[*].sku` reads `trigger.body.items`). Used to flag expressions that
//! resolve to nothing before they fail a step further on. Also the text literals a string passes
//! to a helper ([`literal_args`]), to check them before a run does.

use handlebars::template::{HelperTemplate, Parameter, Template, TemplateElement};
use jsonpath_rust::parser::model::{Segment, Selector};
use jsonpath_rust::parser::parse_json_path;

use super::template::simple_path;

/// One path a string reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// The path's segments (`["trigger", "body", "email"]`; array indexes as numbers' text).
    pub segments: Vec<String>,
    /// Whether the expression copes with the path being missing (`default`'s fallbacks, `#if`
    /// conditions), so a missing value is not a mistake.
    pub optional: bool,
}

impl Reference {
    /// The path as written in a template: `trigger.body.items.0.sku`.
    pub fn dotted(&self) -> String {
        self.segments.join(".")
    }
}

/// The context paths a flow string reads (none for a literal or a string that does not parse).
pub fn references(text: &str) -> Vec<Reference> {
    let trimmed = text.trim();
    if trimmed.starts_with("$.") || trimmed.starts_with("$[") {
        return jsonpath_reference(trimmed).into_iter().collect();
    }
    if !text.contains("{{") {
        return Vec::new();
    }
    let Ok(template) = Template::compile(text) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    collect(&template, false, &mut out);
    out
}

fn jsonpath_reference(text: &str) -> Option<Reference> {
    let query = parse_json_path(text).ok()?;
    let mut segments = Vec::new();
    for segment in &query.segments {
        let selector = match segment {
            Segment::Selector(s) => s,
            Segment::Selectors(list) if list.len() == 1 => &list[0],
            _ => break,
        };
        match selector {
            Selector::Name(name) => segments.push(name.trim_matches('\'').to_owned()),
            Selector::Index(i) if *i >= 0 => segments.push(i.to_string()),
            _ => break,
        }
    }
    (!segments.is_empty()).then_some(Reference {
        segments,
        optional: false,
    })
}

fn collect(template: &Template, optional: bool, out: &mut Vec<Reference>) {
    for element in &template.elements {
        match element {
            TemplateElement::Expression(ht) | TemplateElement::HtmlExpression(ht) => {
                helper(ht, optional, out);
            }
            TemplateElement::HelperBlock(ht) => {
                // A block's condition may well be missing (`#if`); `#each`/`#with` change the
                // context inside, so only `#if`/`#unless` bodies are read against the run context.
                helper(ht, true, out);
                let name = match &ht.name {
                    Parameter::Name(n) => n.as_str(),
                    _ => "",
                };
                if matches!(name, "if" | "unless") {
                    for inner in [&ht.template, &ht.inverse].into_iter().flatten() {
                        collect(inner, optional, out);
                    }
                }
            }
            _ => {}
        }
    }
}

/// The paths of a helper call or bare expression. `default a b c` reads `c` only as the last
/// resort: `a` and `b` may be missing.
fn helper(ht: &HelperTemplate, optional: bool, out: &mut Vec<Reference>) {
    let name = match &ht.name {
        Parameter::Name(n) => Some(n.as_str()),
        Parameter::Path(path) => {
            if let Some(p) = simple_path(path) {
                if !super::helpers::is_helper(&p.dotted()) {
                    push(p.segments(), optional, out);
                    return;
                }
            }
            None
        }
        _ => None,
    };
    let last = ht.params.len().saturating_sub(1);
    for (i, param) in ht.params.iter().enumerate() {
        let fallback = name == Some("default") && i < last;
        parameter(param, optional || fallback, out);
    }
    for param in ht.hash.values() {
        parameter(param, optional, out);
    }
}

fn parameter(param: &Parameter, optional: bool, out: &mut Vec<Reference>) {
    match param {
        Parameter::Path(path) => {
            if let Some(p) = simple_path(path) {
                push(p.segments(), optional, out);
            }
        }
        Parameter::Subexpression(sub) => {
            if let TemplateElement::Expression(ht) = sub.element.as_ref() {
                helper(ht, optional, out);
            }
        }
        _ => {}
    }
}

/// The text literals a string passes as argument `position` (0-based) of `helper`, wherever the
/// call is (in text, blocks or subexpressions): `literal_args(t, "date_format", 1)` gives the
/// formats written in `{{date_format x "YYYY-MM-DD"}}`.
pub fn literal_args(text: &str, helper: &str, position: usize) -> Vec<String> {
    let Ok(template) = Template::compile(text) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    literals_in(&template.elements, helper, position, &mut out);
    out
}

fn literals_in(elements: &[TemplateElement], helper: &str, position: usize, out: &mut Vec<String>) {
    for element in elements {
        let (TemplateElement::Expression(ht)
        | TemplateElement::HtmlExpression(ht)
        | TemplateElement::HelperBlock(ht)) = element
        else {
            continue;
        };
        if matches!(&ht.name, Parameter::Name(n) if n == helper) {
            if let Some(Parameter::Literal(serde_json::Value::String(s))) = ht.params.get(position)
            {
                out.push(s.clone());
            }
        }
        for param in ht.params.iter().chain(ht.hash.values()) {
            if let Parameter::Subexpression(sub) = param {
                literals_in(
                    std::slice::from_ref(sub.element.as_ref()),
                    helper,
                    position,
                    out,
                );
            }
        }
        for inner in [&ht.template, &ht.inverse].into_iter().flatten() {
            literals_in(&inner.elements, helper, position, out);
        }
    }
}

fn push(segments: &[String], optional: bool, out: &mut Vec<Reference>) {
    out.push(Reference {
        segments: segments.to_vec(),
        optional,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(text: &str) -> Vec<(String, bool)> {
        references(text)
            .into_iter()
            .map(|r| (r.dotted(), r.optional))
            .collect()
    }

    #[test]
    fn finds_the_paths_templates_and_jsonpaths_read() {
        assert_eq!(paths("plain text"), []);
        assert_eq!(
            paths("Hi {{trigger.body.name}}, {{lower trigger.body.email}}"),
            [
                ("trigger.body.name".into(), false),
                ("trigger.body.email".into(), false)
            ]
        );
        assert_eq!(
            paths("{{default steps.a.title steps.b.title}}"),
            [
                ("steps.a.title".into(), true),
                ("steps.b.title".into(), false)
            ]
        );
        assert_eq!(
            paths("{{#if trigger.body.vip}}VIP {{trigger.body.name}}{{/if}}"),
            [
                ("trigger.body.vip".into(), true),
                ("trigger.body.name".into(), false)
            ]
        );
        assert_eq!(
            paths("{{#each trigger.body.items}}{{sku}}{{/each}}"),
            [("trigger.body.items".into(), true)]
        );
        assert_eq!(
            paths("{{upper (lower trigger.body.plan)}}"),
            [("trigger.body.plan".into(), false)]
        );
        assert_eq!(
            paths("$.trigger.body.items[0].price.id"),
            [("trigger.body.items.0.price.id".into(), false)]
        );
        assert_eq!(
            paths("$.trigger.body.items[*].sku"),
            [("trigger.body.items".into(), false)]
        );
    }

    #[test]
    fn finds_the_literals_passed_to_a_helper() {
        let formats = |t: &str| literal_args(t, "date_format", 1);
        assert_eq!(
            formats("On {{date_format trigger.received_at \"YYYY-MM-DD\"}}"),
            ["YYYY-MM-DD"]
        );
        assert_eq!(
            formats("{{upper (date_format (date_parse x) \"%d %b\" \"UTC\")}}"),
            ["%d %b"]
        );
        assert_eq!(
            formats("{{#if a}}{{date_format a \"DD/MM\"}}{{/if}}"),
            ["DD/MM"]
        );
        assert!(formats("{{date_format a b}}").is_empty());
        assert!(formats("{{date_add a \"YYYY\"}}").is_empty());
    }
}
