//! Source positions for flow YAML files.
//!
//! Flows are deserialized with `serde_yaml`, and most validation (duplicate step
//! ids, unknown `needs`, cycles, templates, step kinds, fields inside a step's
//! config) runs afterwards on values that no longer know where they came from.
//! [`PositionIndex`] re-reads the YAML text with `yaml-rust2`'s event parser and
//! records, for every node of the first document, the line and column of its
//! value and (for mapping entries) of its key, keyed by field path, so that such
//! problems can be reported as `file:line:col: field.path: message`.
//!
//! Paths join mapping keys with `.` and write sequence indexes as `[n]`, as
//! serde_yaml does: `steps[2].http.headers.Authorization`,
//! `steps[0].filter.all[1].gt`; the root is `""`.
//!
//! [`split_serde_yaml_error`] turns a `serde_yaml` error into the same
//! `(path, position, message)` parts.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Nesting depth below which nodes are indexed; deeper content is skipped.
const MAX_DEPTH: usize = 256;

/// A 1-based line and column (in characters), as editors show them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Position {
    /// Line, starting at 1.
    pub line: usize,
    /// Column, starting at 1.
    pub col: usize,
}

impl Position {
    /// Line 1, column 1: the start of the file.
    pub const START: Position = Position { line: 1, col: 1 };

    fn from_marker(mark: Marker) -> Self {
        Position {
            line: mark.line().max(1),
            col: mark.col() + 1,
        }
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

/// One indexed node.
#[derive(Debug)]
struct Node {
    path: String,
    /// Position of the key, for mapping entries.
    key: Option<Position>,
    /// Position of the value (for an empty value, that of its key).
    value: Option<Position>,
    /// Where the key's name starts in `path`, for mapping entries.
    name_start: Option<usize>,
    /// For a scalar: where its text starts (after an opening quote; for a block scalar, the
    /// first character of its first line).
    text: Option<Position>,
    /// Whether it is a block scalar (`|`, `>`), whose text starts on the line after its key.
    block: bool,
}

/// Map from field path to the positions of a YAML document's keys and values.
///
/// Built once per file with [`PositionIndex::new`]; lookups accept the paths
/// serde_yaml prints (a leading `.` as in `.[0]`, or `.` for the root, is ignored).
#[derive(Debug, Default)]
pub struct PositionIndex {
    /// Nodes in document order (depth-first, pre-order).
    nodes: Vec<Node>,
    by_path: HashMap<String, usize>,
}

impl PositionIndex {
    /// Indexes the first document of a YAML text; never fails (a text that does
    /// not parse yields an index of what was read before the error).
    ///
    /// Aliases are leaves at their own position (never expanded); entries whose
    /// key is not a scalar are skipped, as is anything nested deeper than 256
    /// levels. When a key repeats, the first occurrence wins.
    pub fn new(text: &str) -> Self {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        while let Ok((event, mark)) = parser.next_token() {
            if !builder.event(event, mark) {
                break;
            }
        }
        let mut index = builder.index;
        let lines: Vec<&str> = text.lines().collect();
        // A block scalar's event is marked where the scalar ends; its indicator is on its key's
        // line (`script: |`), and its text starts on the next.
        for node in index.nodes.iter_mut().filter(|n| n.block) {
            node.text = node.key.map(|k| block_text_start(&lines, k.line));
        }
        index
    }

    /// Where the text of the scalar at `path` starts: line and column of its first character
    /// (for a block scalar `|` or `>`, on the line after the indicator, at its indentation).
    /// A script written as a block scalar maps its own line N to the file's `line + N - 1`.
    pub fn text_start(&self, path: &str) -> Option<Position> {
        self.node(path).and_then(|n| n.text)
    }

    /// Position of the node at `path` (its value), e.g. `"steps[2].http.url"`,
    /// `"steps[0]"`, or `""` for the root.
    pub fn value(&self, path: &str) -> Option<Position> {
        self.node(path).and_then(|n| n.value)
    }

    /// Position of the key of the mapping entry at `path` (the `url:` of
    /// `"steps[2].http.url"`); for sequence items, the item's position.
    pub fn key(&self, path: &str) -> Option<Position> {
        self.node(path).and_then(|n| n.key.or(n.value))
    }

    /// Best position for `path`: its key if known, else its value, else that of
    /// the nearest known ancestor, else line 1 column 1.
    pub fn locate(&self, path: &str) -> Position {
        let mut path = normalize(path);
        loop {
            if let Some(pos) = self.key(path) {
                return pos;
            }
            match parent(path) {
                Some(p) => path = p,
                None => return Position::START,
            }
        }
    }

    /// Full path of the first key named `name` strictly under `prefix`
    /// (depth-first, document order), e.g. to point at an "unknown field `x`"
    /// that was reported without a path.
    pub fn find_key_under(&self, prefix: &str, name: &str) -> Option<String> {
        let prefix = normalize(prefix);
        self.nodes
            .iter()
            .filter(|n| is_under(&n.path, prefix))
            .find(|n| n.name_start.is_some_and(|s| &n.path[s..] == name))
            .map(|n| n.path.clone())
    }

    fn node(&self, path: &str) -> Option<&Node> {
        self.by_path.get(normalize(path)).map(|&i| &self.nodes[i])
    }
}

/// Accepts serde_yaml's spellings of paths: `.` for the root and `.[0]` for an
/// item of a root sequence.
fn normalize(path: &str) -> &str {
    if path == "." {
        ""
    } else if path.starts_with(".[") {
        &path[1..]
    } else {
        path
    }
}

/// The path one level up, or `None` for the root.
fn parent(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    if path.ends_with(']') {
        if let Some(i) = path.rfind('[') {
            return Some(&path[..i]);
        }
    }
    Some(path.rfind('.').map_or("", |i| &path[..i]))
}

/// Whether `path` lies strictly below `prefix`.
fn is_under(path: &str, prefix: &str) -> bool {
    if prefix.is_empty() {
        return !path.is_empty();
    }
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
}

/// State of an open collection while indexing.
#[derive(Debug)]
enum Frame {
    Seq {
        path: String,
        next: usize,
    },
    /// `pending` is `None` while awaiting a key; `Some(None)` when awaiting the
    /// value of a key that is not indexed; `Some(Some(..))` for a scalar key.
    /// `start` is the mapping's node until its first key has been seen.
    Map {
        path: String,
        pending: Option<Option<(String, Position)>>,
        start: Option<usize>,
    },
}

/// Where the next node goes.
enum Slot {
    /// Index it at this path, with this key position and name offset.
    At(String, Option<Position>, Option<usize>),
    /// It is a mapping key.
    Key,
    /// Don't index it (or its contents).
    Skip,
}

#[derive(Default)]
struct Builder {
    index: PositionIndex,
    stack: Vec<Frame>,
    /// Nesting level inside a skipped collection (0 when not skipping).
    skip: usize,
    started: bool,
}

impl Builder {
    /// Handles one event; returns false once the first document is done.
    fn event(&mut self, event: Event, mark: Marker) -> bool {
        match event {
            Event::StreamStart | Event::Nothing => true,
            Event::DocumentStart => !std::mem::replace(&mut self.started, true),
            Event::DocumentEnd | Event::StreamEnd => false,
            Event::MappingEnd | Event::SequenceEnd => {
                if self.skip > 0 {
                    self.skip -= 1;
                    true
                } else {
                    self.stack.pop();
                    !self.stack.is_empty()
                }
            }
            Event::Scalar(value, style, ..) => {
                if self.skip == 0 {
                    let synthesized = value.is_empty() && style == TScalarStyle::Plain;
                    self.leaf(Some(value), mark, synthesized, style);
                }
                true
            }
            Event::Alias(_) => {
                if self.skip == 0 {
                    self.leaf(None, mark, false, TScalarStyle::Plain);
                }
                true
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                if self.skip > 0 {
                    self.skip += 1;
                    return true;
                }
                let is_map = matches!(event, Event::MappingStart(..));
                let pos = Position::from_marker(mark);
                self.first_key(pos);
                match self.slot() {
                    Slot::At(path, key, name_start) => {
                        let node = self.record(path.clone(), key, pos, name_start);
                        if self.stack.len() >= MAX_DEPTH {
                            self.skip = 1;
                        } else if is_map {
                            self.stack.push(Frame::Map {
                                path,
                                pending: None,
                                start: node,
                            });
                        } else {
                            self.stack.push(Frame::Seq { path, next: 0 });
                        }
                    }
                    // A collection as a key, or under one: skip it and its value.
                    Slot::Key => {
                        self.set_pending(None);
                        self.skip = 1;
                    }
                    Slot::Skip => self.skip = 1,
                }
                true
            }
        }
    }

    /// Handles a scalar (`Some`) or an alias (`None`).
    fn leaf(
        &mut self,
        scalar: Option<String>,
        mark: Marker,
        synthesized: bool,
        style: TScalarStyle,
    ) {
        let pos = Position::from_marker(mark);
        self.first_key(pos);
        match self.slot() {
            Slot::At(path, key, name_start) => {
                // An empty value has no text of its own: its mark is that of the
                // next token, so use its key's position (or none for an item).
                let value = if synthesized { key } else { Some(pos) };
                if let Some(i) = self.record(path, key, value, name_start) {
                    let node = &mut self.index.nodes[i];
                    match style {
                        TScalarStyle::Literal | TScalarStyle::Folded => node.block = true,
                        TScalarStyle::SingleQuoted | TScalarStyle::DoubleQuoted => {
                            node.text = value.map(|v| Position {
                                col: v.col + 1,
                                ..v
                            });
                        }
                        _ => node.text = value,
                    }
                }
            }
            // Aliases and empty (omitted) keys are not indexed.
            Slot::Key => self.set_pending(scalar.filter(|_| !synthesized).map(|name| (name, pos))),
            Slot::Skip => {}
        }
    }

    /// Decides where the next node goes, advancing the parent's state.
    fn slot(&mut self) -> Slot {
        match self.stack.last_mut() {
            None if self.index.nodes.is_empty() => Slot::At(String::new(), None, None),
            None => Slot::Skip,
            Some(Frame::Seq { path, next }) => {
                let p = format!("{path}[{next}]");
                *next += 1;
                Slot::At(p, None, None)
            }
            Some(Frame::Map { path, pending, .. }) => match pending.take() {
                None => Slot::Key,
                Some(None) => Slot::Skip,
                Some(Some((name, key_pos))) => {
                    let (p, start) = if path.is_empty() {
                        (name, 0)
                    } else {
                        (format!("{path}.{name}"), path.len() + 1)
                    };
                    Slot::At(p, Some(key_pos), Some(start))
                }
            },
        }
    }

    /// A block mapping's start event is marked where its first key ends, so
    /// the mapping's position becomes that of its first key if earlier.
    fn first_key(&mut self, pos: Position) {
        if let Some(Frame::Map { start, .. }) = self.stack.last_mut() {
            if let Some(i) = start.take() {
                let value = &mut self.index.nodes[i].value;
                *value = (*value).min(Some(pos));
            }
        }
    }

    fn set_pending(&mut self, key: Option<(String, Position)>) {
        if let Some(Frame::Map { pending, .. }) = self.stack.last_mut() {
            *pending = Some(key);
        }
    }

    fn record(
        &mut self,
        path: String,
        key: Option<Position>,
        value: impl Into<Option<Position>>,
        name_start: Option<usize>,
    ) -> Option<usize> {
        let index = &mut self.index;
        if index.by_path.contains_key(&path) {
            return None;
        }
        let i = index.nodes.len();
        index.by_path.insert(path.clone(), i);
        index.nodes.push(Node {
            path,
            key,
            value: value.into(),
            name_start,
            text: None,
            block: false,
        });
        Some(i)
    }
}

/// Where the text of a block scalar whose indicator is on (1-based) `line` starts: the next line, at the
/// indentation of its first non-blank line.
fn block_text_start(lines: &[&str], line: usize) -> Position {
    let indent = lines
        .iter()
        .skip(line)
        .find(|l| !l.trim().is_empty())
        .map_or(0, |l| l.len() - l.trim_start_matches(' ').len());
    Position {
        line: line + 1,
        col: indent + 1,
    }
}

/// Messages serde and serde_yaml start errors with; what precedes one of these
/// (and `": "`) is a path.
const MESSAGE_HEADS: &[&str] = &[
    "invalid type: ",
    "invalid value: ",
    "invalid length ",
    "unknown variant ",
    "unknown field ",
    "missing field ",
    "duplicate field ",
    "duplicate entry ",
    "data did not match ",
    "no variant of enum ",
];

/// Splits a serde_yaml error into (field path, position, message).
///
/// serde_yaml 0.9 renders errors as ``"steps[1]: unknown field `mapp`, expected
/// ... at line 12 column 5"``. The path is cut off the front (`""` when there is
/// none: the root, a syntax error, or a path serde_yaml lost), and the
/// `" at line L column C"` of [`serde_yaml::Error::location`] is removed.
///
/// The position is `None` when serde_yaml has none or reports line 1 column 1,
/// which it also does when it lost track (errors inside internally tagged or
/// untagged enums); fall back to [`PositionIndex::locate`] of the path then, or
/// to [`PositionIndex::find_key_under`] for an "unknown field".
pub fn split_serde_yaml_error(err: &serde_yaml::Error) -> (String, Option<Position>, String) {
    let location = err.location().map(|l| Position {
        line: l.line(),
        col: l.column(),
    });
    let mut msg = err.to_string();
    if let Some(p) = location {
        let suffix = format!(" at line {} column {}", p.line, p.col);
        if msg.ends_with(&suffix) {
            msg.truncate(msg.len() - suffix.len());
        } else if let Some(i) = msg.find(&suffix) {
            // Syntax errors: "problem at line L column C, context at line ...".
            msg.replace_range(i..i + suffix.len(), "");
        }
    }
    let pos = location.filter(|&p| p != Position::START);
    match split_path(&msg) {
        Some((path, rest)) => (normalize(path).to_string(), pos, rest.to_string()),
        None => (String::new(), pos, msg),
    }
}

/// Splits `"path: message"`, or returns `None` if `msg` has no path prefix.
fn split_path(msg: &str) -> Option<(&str, &str)> {
    let is_head = |s: &str| MESSAGE_HEADS.iter().any(|h| s.starts_with(h));
    if is_head(msg) {
        return None;
    }
    // A path may contain spaces or ": " (in keys), so prefer splitting right
    // before a message serde writes.
    let mut from = 0;
    while let Some(i) = msg[from..].find(": ").map(|i| i + from) {
        if is_head(&msg[i + 2..]) {
            return Some((&msg[..i], &msg[i + 2..]));
        }
        from = i + 2;
    }
    // A custom message (from a Deserialize impl): trust a path-like prefix only.
    let (head, rest) = msg.split_once(": ")?;
    let path_like = !head.is_empty()
        && !head
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '`' | '"' | '\'' | ','));
    path_like.then_some((head, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_start_of_block_and_quoted_scalars() {
        let text = "steps:\n  - id: a\n    code:\n      script: |\n\n        let x = 1;\n        return x\n      input: \"ab\"\n      other: plain\n";
        let index = PositionIndex::new(text);
        let at = |line, col| Some(Position { line, col });
        assert_eq!(index.text_start("steps[0].code.script"), at(5, 9));
        assert_eq!(index.text_start("steps[0].code.input"), at(8, 15));
        assert_eq!(index.text_start("steps[0].code.other"), at(9, 14));
        assert_eq!(index.text_start("steps[0].code"), None);
    }

    fn p(line: usize, col: usize) -> Option<Position> {
        Some(Position { line, col })
    }

    const FLOW: &str = "\
# a flow
name: demo   # trailing comment
trigger:
  webhook:
    path: /hooks/x
steps:
  - id: fetch
    http:
      url: \"https://example.com/{{ x }}\"
      headers:
        Authorization: Bearer t
  - id: store
    needs: [fetch]
    filter:
      all:
        - eq: 1
        - gt: 2
";

    #[test]
    fn nested_block_maps() {
        let idx = PositionIndex::new(FLOW);
        assert_eq!(idx.value(""), p(2, 1));
        assert_eq!(idx.key("name"), p(2, 1));
        assert_eq!(idx.value("name"), p(2, 7));
        assert_eq!(idx.key("trigger"), p(3, 1));
        assert_eq!(idx.value("trigger"), p(4, 3));
        assert_eq!(idx.key("trigger.webhook"), p(4, 3));
        assert_eq!(idx.value("trigger.webhook"), p(5, 5));
        assert_eq!(idx.key("trigger.webhook.path"), p(5, 5));
        assert_eq!(idx.value("trigger.webhook.path"), p(5, 11));
        assert_eq!(idx.value("nope"), None);
    }

    #[test]
    fn sequence_of_maps() {
        let idx = PositionIndex::new(FLOW);
        assert_eq!(idx.key("steps"), p(6, 1));
        assert_eq!(idx.value("steps"), p(7, 3));
        assert_eq!(idx.value("steps[0]"), p(7, 5));
        assert_eq!(idx.key("steps[0]"), p(7, 5));
        assert_eq!(idx.key("steps[0].id"), p(7, 5));
        assert_eq!(idx.value("steps[0].id"), p(7, 9));
        assert_eq!(idx.key("steps[0].http.url"), p(9, 7));
        assert_eq!(idx.value("steps[0].http.url"), p(9, 12));
        assert_eq!(idx.key("steps[0].http.headers.Authorization"), p(11, 9));
        assert_eq!(idx.value("steps[1]"), p(12, 5));
        assert_eq!(idx.value("steps[1].needs[0]"), p(13, 13));
        assert_eq!(idx.key("steps[1].filter.all[1]"), p(17, 11));
        assert_eq!(idx.key("steps[1].filter.all[1].gt"), p(17, 11));
        assert_eq!(idx.value("steps[1].filter.all[1].gt"), p(17, 15));
        assert_eq!(idx.value("steps[2]"), None);
    }

    #[test]
    fn indentless_sequence() {
        let idx = PositionIndex::new("steps:\n- id: a\n- id: b\n  kind: http\n");
        // An indentless sequence is marked where its first item starts.
        assert_eq!(idx.value("steps"), p(2, 3));
        assert_eq!(idx.value("steps[0]"), p(2, 3));
        assert_eq!(idx.value("steps[1]"), p(3, 3));
        assert_eq!(idx.key("steps[1].kind"), p(4, 3));
    }

    #[test]
    fn flow_style() {
        let text = "a: { b: 1, c: [x, {d: y}] }\ne: [1, 2]\n";
        let idx = PositionIndex::new(text);
        assert_eq!(idx.value("a"), p(1, 4));
        assert_eq!(idx.key("a.b"), p(1, 6));
        assert_eq!(idx.value("a.b"), p(1, 9));
        assert_eq!(idx.value("a.c"), p(1, 15));
        assert_eq!(idx.value("a.c[0]"), p(1, 16));
        assert_eq!(idx.value("a.c[1]"), p(1, 19));
        assert_eq!(idx.key("a.c[1].d"), p(1, 20));
        assert_eq!(idx.value("a.c[1].d"), p(1, 23));
        assert_eq!(idx.value("e[1]"), p(2, 8));
        let idx = PositionIndex::new("[a, {b: 1}]");
        assert_eq!(idx.value(""), p(1, 1));
        assert_eq!(idx.key("[1].b"), p(1, 6));
        assert_eq!(idx.key(".[1].b"), p(1, 6));
        assert_eq!(idx.value("."), p(1, 1));
    }

    #[test]
    fn comments_and_quoted_keys() {
        let text = "\
# header comment

'single q': 1 # c
\"double q\":   # c
  # inside
  inner: x
plain: |
  multi
  line: not a key
after: >-
  folded
  text
next: 2
";
        let idx = PositionIndex::new(text);
        assert_eq!(idx.key("single q"), p(3, 1));
        assert_eq!(idx.value("single q"), p(3, 13));
        assert_eq!(idx.key("double q"), p(4, 1));
        assert_eq!(idx.key("double q.inner"), p(6, 3));
        assert_eq!(idx.key("plain"), p(7, 1));
        // A block scalar's value starts at its content, not at `|`.
        assert_eq!(idx.value("plain"), p(8, 3));
        assert_eq!(idx.key("plain.line"), None);
        assert_eq!(idx.key("after"), p(10, 1));
        assert_eq!(idx.key("next"), p(13, 1));
        assert_eq!(idx.value("next"), p(13, 7));
    }

    #[test]
    fn empty_values_point_at_their_key() {
        let idx = PositionIndex::new("a:\nb:\n  c:\nd: 1\n");
        assert_eq!(idx.value("a"), p(1, 1));
        assert_eq!(idx.value("b.c"), p(3, 3));
        assert_eq!(idx.value("d"), p(4, 4));
    }

    #[test]
    fn find_key_under_searches_depth_first() {
        let idx = PositionIndex::new(FLOW);
        assert_eq!(
            idx.find_key_under("steps[0]", "Authorization").as_deref(),
            Some("steps[0].http.headers.Authorization")
        );
        assert_eq!(idx.find_key_under("", "id").as_deref(), Some("steps[0].id"));
        assert_eq!(
            idx.find_key_under("steps[1]", "id").as_deref(),
            Some("steps[1].id")
        );
        assert_eq!(
            idx.find_key_under("steps", "gt").as_deref(),
            Some("steps[1].filter.all[1].gt")
        );
        assert_eq!(idx.find_key_under("steps[1]", "url"), None);
        // Strictly under: the prefix itself and siblings sharing its text don't count.
        assert_eq!(idx.find_key_under("steps[0].id", "id"), None);
        let idx = PositionIndex::new("ab:\n  x: 1\na:\n  y: 2\n");
        assert_eq!(idx.find_key_under("a", "x"), None);
    }

    #[test]
    fn locate_falls_back() {
        let idx = PositionIndex::new(FLOW);
        assert_eq!(
            idx.locate("steps[0].http.url"),
            Position { line: 9, col: 7 }
        );
        assert_eq!(
            idx.locate("steps[0].http.timeout"),
            Position { line: 8, col: 5 }
        );
        assert_eq!(
            idx.locate("steps[1].filter.all[7].x"),
            Position { line: 15, col: 7 }
        );
        assert_eq!(idx.locate("steps[9]"), Position { line: 6, col: 1 });
        assert_eq!(idx.locate("missing.deep[3]"), Position { line: 2, col: 1 });
        assert_eq!(idx.locate(""), Position { line: 2, col: 1 });
        let empty = PositionIndex::new("");
        assert!(empty.nodes.is_empty());
        assert_eq!(empty.locate("a.b"), Position::START);
    }

    #[test]
    fn broken_document_keeps_what_was_read() {
        let text = "name: x\nsteps:\n  - id: a\n    kind: [http\n  - id: b\n";
        let idx = PositionIndex::new(text);
        assert_eq!(idx.key("name"), p(1, 1));
        assert_eq!(idx.key("steps[0].id"), p(3, 5));
        assert_eq!(idx.key("steps[1].id"), None);
        assert_eq!(idx.locate("steps[1].id"), Position { line: 2, col: 1 });

        let idx = PositionIndex::new("a: 1\n b: 2\n\tc: [");
        assert_eq!(idx.locate("c"), Position::START);
        let _ = PositionIndex::new("{{{{ ]]] :: - - &&& ***");
        let _ = PositionIndex::new("key: \"unterminated\n");
    }

    #[test]
    fn aliases_are_leaves() {
        let text = "\
base: &b
  timeout: 5
  retries: 2
steps:
  - <<: *b
    id: x
  - conf: *b
";
        let idx = PositionIndex::new(text);
        assert_eq!(idx.value("base"), p(2, 3));
        assert_eq!(idx.key("base.timeout"), p(2, 3));
        assert_eq!(idx.value("steps[0].<<"), p(5, 9));
        assert_eq!(idx.key("steps[0].id"), p(6, 5));
        assert_eq!(idx.value("steps[1].conf"), p(7, 11));
        assert_eq!(idx.value("steps[1].conf.timeout"), None);
        assert_eq!(
            idx.find_key_under("steps", "timeout"),
            None,
            "aliases are never expanded"
        );
    }

    #[test]
    fn only_first_document_and_odd_keys() {
        let text = "---\na: 1\n? [x, y]\n: {z: 1}\n? {k: v}\nb: 2\n...\n---\nc: 3\n";
        let idx = PositionIndex::new(text);
        assert_eq!(idx.key("a"), p(2, 1));
        assert_eq!(idx.key("b"), p(6, 1));
        assert_eq!(idx.value("c"), None);
        assert_eq!(idx.find_key_under("", "z"), None);
        assert_eq!(idx.find_key_under("", "k"), None);

        let idx = PositionIndex::new("\u{feff}a: 1\n---\nb: 2\n");
        assert_eq!(idx.key("a"), p(1, 1));
        assert_eq!(idx.key("b"), None);

        let idx = PositionIndex::new("a: &x k\nm: {: 1, *x : 2, k: 3}\n");
        assert_eq!(idx.key("m."), None);
        assert_eq!(idx.key("m.k"), p(2, 18));
        assert_eq!(idx.find_key_under("m", "k").as_deref(), Some("m.k"));

        let idx = PositionIndex::new("a: 1\na: 2\n");
        assert_eq!(idx.value("a"), p(1, 4), "first occurrence wins");
    }

    #[test]
    fn deep_and_large_inputs() {
        let deep = "[".repeat(50_000);
        let idx = PositionIndex::new(&deep);
        assert!(idx.nodes.len() <= MAX_DEPTH + 1);

        let mut nested = String::new();
        for i in 0..400 {
            nested.push_str(&format!("{}k{i}:\n", "  ".repeat(i)));
        }
        let idx = PositionIndex::new(&nested);
        assert_eq!(idx.nodes.len(), MAX_DEPTH + 1);
        assert!(idx.find_key_under("", "k300").is_none());

        let mut big = String::from("steps:\n");
        for i in 0..5_000 {
            big.push_str(&format!("  - id: s{i}\n    http: {{url: 'u{i}'}}\n"));
        }
        let idx = PositionIndex::new(&big);
        assert_eq!(idx.key("steps[4999].http.url"), p(10_001, 12));
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Flow {
        name: String,
        #[serde(default)]
        steps: Vec<Step>,
        #[serde(default)]
        vars: std::collections::BTreeMap<String, u32>,
        #[serde(default)]
        kind: Option<Kind>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Step {
        id: String,
        #[serde(default)]
        http: Option<Http>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Http {
        url: String,
        #[serde(default)]
        timeout: u32,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    #[allow(dead_code)]
    enum Kind {
        Http(Http),
        Log { msg: String },
    }

    fn split(text: &str) -> (String, Option<Position>, String) {
        let err = serde_yaml::from_str::<Flow>(text).unwrap_err();
        split_serde_yaml_error(&err)
    }

    fn s(path: &str, pos: Option<Position>, msg: &str) -> (String, Option<Position>, String) {
        (path.to_string(), pos, msg.to_string())
    }

    #[test]
    fn serde_unknown_field_points_at_the_key() {
        let text = "name: x\nsteps:\n  - id: a\n  - id: b\n    mapp: 1\n";
        assert_eq!(
            split(text),
            s(
                "steps[1]",
                p(5, 5),
                "unknown field `mapp`, expected `id` or `http`"
            )
        );
        let idx = PositionIndex::new(text);
        assert_eq!(
            idx.find_key_under("steps[1]", "mapp").as_deref(),
            Some("steps[1].mapp")
        );
        // At the root there is no path prefix.
        let (path, pos, msg) = split("name: x\nsteps: []\nbogus: 1\n");
        assert_eq!((path.as_str(), pos), ("", p(3, 1)));
        assert!(msg.starts_with("unknown field `bogus`, expected one of `name`"));
        // A root sequence's items are ".[n]" in serde_yaml, "[n]" here.
        let err = serde_yaml::from_str::<Vec<Step>>("- id: a\n- {id: b, bad: 1}\n").unwrap_err();
        assert!(err.to_string().starts_with(".[1]: unknown field"));
        assert_eq!(
            split_serde_yaml_error(&err),
            s(
                "[1]",
                p(2, 11),
                "unknown field `bad`, expected `id` or `http`"
            )
        );
    }

    #[test]
    fn serde_missing_field_points_at_the_mapping() {
        assert_eq!(
            split("name: x\nsteps:\n  - id: a\n    http:\n      timeout: 3\n"),
            s("steps[0].http", p(5, 7), "missing field `url`")
        );
        // Line 1 column 1: serde_yaml prints no " at ..." and it tells nothing.
        assert_eq!(split("steps: []\n"), s("", None, "missing field `name`"));
        assert_eq!(split(""), s("", None, "missing field `name`"));
    }

    #[test]
    fn serde_wrong_types_point_at_the_value() {
        assert_eq!(
            split("name: x\nsteps:\n  - id: a\n    http: {url: u, timeout: soon}\n"),
            s(
                "steps[0].http.timeout",
                p(4, 29),
                "invalid type: string \"soon\", expected u32"
            )
        );
        assert_eq!(
            split("name: x\nvars:\n  retries: -1\n"),
            s(
                "vars.retries",
                p(3, 12),
                "invalid type: integer `-1`, expected u32"
            )
        );
        assert_eq!(
            split("name: [1]\n"),
            s("name", p(1, 7), "invalid type: sequence, expected a string")
        );
        // Keys with spaces stay in the path; "invalid type:" is never a path.
        assert_eq!(
            split("name: x\nvars: {\"a b\": x}\n"),
            s(
                "vars.a b",
                p(2, 15),
                "invalid type: string \"x\", expected u32"
            )
        );
        assert_eq!(
            split("- 1\n"),
            s("", None, "invalid type: sequence, expected struct Flow")
        );
    }

    #[test]
    fn serde_loses_track_inside_tagged_enums() {
        assert_eq!(
            split("name: x\nkind: {type: http, url: u, timeout: x}\n"),
            s("", None, "invalid type: string \"x\", expected u32")
        );
        let text = "name: x\nkind:\n  type: http\n  urlx: u\n";
        let (path, pos, msg) = split(text);
        assert_eq!((path.as_str(), pos), ("", None));
        assert_eq!(msg, "unknown field `urlx`, expected `url` or `timeout`");
        let idx = PositionIndex::new(text);
        let found = idx.find_key_under("", "urlx").unwrap();
        assert_eq!(
            (found.as_str(), idx.locate(&found)),
            ("kind.urlx", Position { line: 4, col: 3 })
        );
        // The tag itself is still located.
        assert_eq!(
            split("name: x\nkind: {type: zzz}\n"),
            s(
                "kind.type",
                p(2, 14),
                "unknown variant `zzz`, expected `http` or `log`"
            )
        );
    }

    #[test]
    fn serde_syntax_errors() {
        assert_eq!(
            split("name: x\nsteps:\n  - id: a\n   bad\n"),
            s(
                "",
                p(4, 4),
                "did not find expected '-' indicator, while parsing a block collection at line 3 column 3"
            )
        );
        assert_eq!(
            split("name: x\nsteps: [\n"),
            s(
                "",
                p(3, 1),
                "did not find expected node content, while parsing a flow node"
            )
        );
        assert_eq!(
            split("name: x\n---\nname: y\n"),
            s(
                "",
                None,
                "deserializing from YAML containing more than one document is not supported"
            )
        );
    }

    #[test]
    fn custom_messages() {
        assert_eq!(
            split_path("a.b[0]: bad thing: x"),
            Some(("a.b[0]", "bad thing: x"))
        );
        assert_eq!(split_path("bad thing: x"), None);
        assert_eq!(split_path("no path here"), None);
    }
}
