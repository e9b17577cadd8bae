//! Warnings found in a flow file's text: what the format allows but the author surely did not
//! mean. Today: a `date_format` format written with another library's tokens (`YYYY-MM-DD`), which
//! strftime prints as the literal text. Each warning names where the string is written and what
//! to write instead; the flow still loads.

use serde_yaml::Value;

use super::position::PositionIndex;
use super::FlowError;
use crate::expr::literal_args;
use crate::steps::join_path;

/// Other date libraries' tokens (Moment, Day.js, Excel) and their strftime spelling, longest first
/// so `MMMM` is read before `MM`.
const TOKENS: [(&str, &str); 12] = [
    ("YYYY", "%Y"),
    ("MMMM", "%B"),
    ("dddd", "%A"),
    ("MMM", "%b"),
    ("ddd", "%a"),
    ("YY", "%y"),
    ("MM", "%m"),
    ("DD", "%d"),
    ("HH", "%H"),
    ("hh", "%I"),
    ("mm", "%M"),
    ("ss", "%S"),
];

/// The warnings of a flow file's text (`doc` is its YAML, `index` its positions).
pub fn warnings(file: &str, doc: &Value, index: &PositionIndex) -> Vec<FlowError> {
    let mut out = Vec::new();
    each_string(doc, "", &mut |field, text| {
        for format in literal_args(text, "date_format", 1) {
            let Some(strftime) = as_strftime(&format) else {
                continue;
            };
            let at = index.value(field).unwrap_or_else(|| index.locate(field));
            out.push(FlowError {
                file: file.to_owned(),
                line: at.line,
                col: at.col,
                path: field.to_owned(),
                message: format!(
                    "`{format}` is not a strftime format: `date_format` prints it as it is \
                     written; write `{strftime}`"
                ),
            });
        }
    });
    out
}

/// The strftime spelling of a format written with another library's tokens, or `None` if it is
/// strftime already (it has a `%`) or has no such token.
fn as_strftime(format: &str) -> Option<String> {
    if format.contains('%') {
        return None;
    }
    let mut out = String::new();
    let mut rest = format;
    let mut found = false;
    'scan: while let Some(c) = rest.chars().next() {
        for (token, strftime) in TOKENS {
            if let Some(after) = rest.strip_prefix(token) {
                out.push_str(strftime);
                rest = after;
                found = true;
                continue 'scan;
            }
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    found.then_some(out)
}

/// Calls `f` with every string under `value` and its field path.
fn each_string(value: &Value, field: &str, f: &mut dyn FnMut(&str, &str)) {
    match value {
        Value::String(s) => f(field, s),
        Value::Sequence(items) => {
            for (i, item) in items.iter().enumerate() {
                each_string(item, &format!("{field}[{i}]"), f);
            }
        }
        Value::Mapping(map) => {
            for (k, v) in map {
                if let Some(key) = k.as_str() {
                    each_string(v, &join_path(field, key), f);
                }
            }
        }
        Value::Tagged(t) => each_string(&t.value, field, f),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_libraries_tokens_are_spelled_in_strftime() {
        assert_eq!(as_strftime("YYYY-MM-DD").as_deref(), Some("%Y-%m-%d"));
        assert_eq!(
            as_strftime("DD MMM YYYY, HH:mm:ss").as_deref(),
            Some("%d %b %Y, %H:%M:%S")
        );
        assert_eq!(as_strftime("dddd hh:mm").as_deref(), Some("%A %I:%M"));
        assert_eq!(as_strftime("%Y-%m-%d"), None);
        assert_eq!(as_strftime("week of"), None);
    }

    #[test]
    fn a_date_format_with_other_tokens_is_warned_where_it_is_written() {
        let text = "id: d\ntrigger: { manual: }\nsteps:\n  - id: a\n    map:\n      day: \"{{date_format trigger.received_at 'YYYY-MM-DD'}}\"\n      ok: \"{{date_format trigger.received_at '%Y'}}\"\n";
        let doc: Value = serde_yaml::from_str(text).unwrap();
        let found = warnings("d.yaml", &doc, &PositionIndex::new(text));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            (found[0].line, found[0].col, found[0].path.as_str()),
            (6, 12, "steps[0].map.day")
        );
        assert!(found[0].message.ends_with("write `%Y-%m-%d`"), "{found:?}");
    }
}
