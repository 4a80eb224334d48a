//! A small YAML tree with positions, built from `saphyr-parser` events.
//!
//! GitLab reads `.gitlab-ci.yml` with Ruby's Psych, so this loader follows Psych where the YAML
//! specs leave room: anchors and aliases are expanded, merge keys (`<<`) merge in document order
//! (a merged key replaces an explicit key written *before* the `<<`, and is replaced by one
//! written after it; in a list of merged maps the earlier map wins), duplicate keys keep the last
//! value, and the YAML 1.1 booleans (`yes`, `on`, …) are booleans. Every node keeps the file,
//! line and column it came from so that later errors and warnings can point at it.
//!
//! The `!reference [job, key, …]` tag becomes [`Value::Reference`]; it is resolved later, after
//! includes and `extends`, as GitLab does. Other application tags are refused. This module does
//! not interpret any GitLab key.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use saphyr_parser::{Event, Parser, ScalarStyle, Span, Tag};

use crate::error::{Location, PipelineError};

/// Where a node starts: file, 1-based line, 1-based column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Loc {
    pub(crate) file: Arc<str>,
    pub(crate) line: usize,
    pub(crate) column: usize,
}

impl Loc {
    pub(crate) fn new(file: &Arc<str>, span: &Span) -> Self {
        Self {
            file: Arc::clone(file),
            line: span.start.line(),
            column: span.start.col() + 1,
        }
    }

    pub(crate) fn location(&self) -> Location {
        Location {
            file: self.file.to_string(),
            line: self.line,
            column: self.column,
        }
    }
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// What kind of scalar a plain or quoted scalar resolved to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ScalarKind {
    Str,
    Int,
    Float,
    Bool(bool),
    Null,
}

/// A node value.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    Scalar {
        text: String,
        kind: ScalarKind,
    },
    Seq(Vec<Node>),
    Map(Map),
    /// `!reference [job, key, …]`, resolved after `extends`.
    Reference(Vec<String>),
}

/// A YAML node and where it starts.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Node {
    pub(crate) value: Value,
    pub(crate) loc: Loc,
}

/// A mapping key and where it starts.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Key {
    pub(crate) name: String,
    pub(crate) loc: Loc,
}

/// A mapping that keeps insertion order, like a Ruby hash.
#[derive(Clone, Debug, PartialEq, Default)]
pub(crate) struct Map {
    pub(crate) entries: Vec<(Key, Node)>,
}

impl Map {
    pub(crate) fn get(&self, name: &str) -> Option<&Node> {
        self.entries
            .iter()
            .find(|(k, _)| k.name == name)
            .map(|(_, v)| v)
    }

    pub(crate) fn get_entry(&self, name: &str) -> Option<(&Key, &Node)> {
        self.entries
            .iter()
            .find(|(k, _)| k.name == name)
            .map(|(k, v)| (k, v))
    }

    /// Sets `name`; an existing key keeps its place (Ruby `Hash#[]=`).
    pub(crate) fn insert(&mut self, key: Key, value: Node) {
        if let Some(slot) = self.entries.iter_mut().find(|(k, _)| k.name == key.name) {
            slot.1 = value;
        } else {
            self.entries.push((key, value));
        }
    }

    pub(crate) fn remove(&mut self, name: &str) -> Option<Node> {
        let index = self.entries.iter().position(|(k, _)| k.name == name)?;
        Some(self.entries.remove(index).1)
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &Key> {
        self.entries.iter().map(|(k, _)| k)
    }
}

impl Node {
    pub(crate) fn is_null(&self) -> bool {
        matches!(
            self.value,
            Value::Scalar {
                kind: ScalarKind::Null,
                ..
            }
        )
    }

    pub(crate) fn as_map(&self) -> Option<&Map> {
        match &self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    /// A scalar's text (strings, numbers, booleans); `None` for null and collections.
    pub(crate) fn as_scalar(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { kind, .. } if *kind == ScalarKind::Null => None,
            Value::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// The text of a string scalar only.
    pub(crate) fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar {
                text,
                kind: ScalarKind::Str,
            } => Some(text),
            _ => None,
        }
    }

    pub(crate) fn as_bool(&self) -> Option<bool> {
        match &self.value {
            Value::Scalar {
                kind: ScalarKind::Bool(b),
                ..
            } => Some(*b),
            _ => None,
        }
    }

    pub(crate) fn as_int(&self) -> Option<i64> {
        match &self.value {
            Value::Scalar {
                text,
                kind: ScalarKind::Int,
            } => parse_int(text),
            _ => None,
        }
    }

    /// A short name of the node's type for error messages.
    pub(crate) fn type_name(&self) -> &'static str {
        match &self.value {
            Value::Scalar { kind, .. } => match kind {
                ScalarKind::Str => "a string",
                ScalarKind::Int | ScalarKind::Float => "a number",
                ScalarKind::Bool(_) => "a boolean",
                ScalarKind::Null => "null",
            },
            Value::Seq(_) => "a list",
            Value::Map(_) => "a hash",
            Value::Reference(_) => "an unresolved !reference",
        }
    }
}

fn parse_int(text: &str) -> Option<i64> {
    let t = text.replace('_', "");
    let (neg, digits) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t.strip_prefix('+').unwrap_or(&t)),
    };
    let value = if let Some(hex) = digits.strip_prefix("0x") {
        i64::from_str_radix(hex, 16).ok()?
    } else if let Some(oct) = digits.strip_prefix("0o") {
        i64::from_str_radix(oct, 8).ok()?
    } else {
        digits.parse::<i64>().ok()?
    };
    Some(if neg { -value } else { value })
}

fn resolve_plain(text: &str) -> ScalarKind {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return ScalarKind::Null,
        "true" | "True" | "TRUE" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" => {
            return ScalarKind::Bool(true);
        }
        "false" | "False" | "FALSE" | "no" | "No" | "NO" | "off" | "Off" | "OFF" => {
            return ScalarKind::Bool(false);
        }
        _ => {}
    }
    let first = text.as_bytes()[0];
    if !(first.is_ascii_digit() || first == b'-' || first == b'+' || first == b'.') {
        return ScalarKind::Str;
    }
    if parse_int(text).is_some() {
        return ScalarKind::Int;
    }
    let float_like = text
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+' | b'_'))
        && text.bytes().any(|b| b.is_ascii_digit());
    if float_like && text.replace('_', "").parse::<f64>().is_ok() {
        return ScalarKind::Float;
    }
    if matches!(text, ".inf" | "-.inf" | "+.inf" | ".nan" | ".NaN" | ".Inf") {
        return ScalarKind::Float;
    }
    ScalarKind::Str
}

/// Deeper nesting than this is refused (it would only serve to exhaust the stack), also when
/// aliases build it.
const MAX_DEPTH: usize = 200;
/// Alias expansion may not build more nodes than this ("billion laughs" documents).
pub(crate) const MAX_NODES: usize = 500_000;
/// Nor more bytes (scalar text plus a little per node): a few aliases of a long string expand
/// to gigabytes. GitLab's own limit on a loaded configuration is of the same order.
pub(crate) const MAX_BYTES: usize = 32 << 20;
/// What one node costs besides its text.
const NODE_BYTES: usize = 16;

/// What documents may still build: shared by every file of one pipeline load, so that
/// includes cannot multiply it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Budget {
    pub(crate) nodes: usize,
    pub(crate) bytes: usize,
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            nodes: MAX_NODES,
            bytes: MAX_BYTES,
        }
    }
}

/// Size of a tree: nodes, bytes and depth.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Weight {
    pub(crate) nodes: usize,
    pub(crate) bytes: usize,
    pub(crate) depth: usize,
}

pub(crate) fn weight(node: &Node) -> Weight {
    match &node.value {
        Value::Seq(items) => items.iter().map(weight).fold(
            Weight {
                nodes: 1,
                bytes: NODE_BYTES,
                depth: 1,
            },
            |acc, w| Weight {
                nodes: acc.nodes + w.nodes,
                bytes: acc.bytes + w.bytes,
                depth: acc.depth.max(w.depth + 1),
            },
        ),
        Value::Map(map) => map.entries.iter().fold(
            Weight {
                nodes: 1,
                bytes: NODE_BYTES,
                depth: 1,
            },
            |acc, (k, v)| {
                let w = weight(v);
                Weight {
                    nodes: acc.nodes + 1 + w.nodes,
                    bytes: acc.bytes + NODE_BYTES + k.name.len() + w.bytes,
                    depth: acc.depth.max(w.depth + 1),
                }
            },
        ),
        Value::Scalar { text, .. } => Weight {
            nodes: 1,
            bytes: NODE_BYTES + text.len(),
            depth: 1,
        },
        Value::Reference(path) => Weight {
            nodes: 1,
            bytes: NODE_BYTES + path.iter().map(String::len).sum::<usize>(),
            depth: 1,
        },
    }
}

enum Frame {
    Seq {
        anchor: usize,
        loc: Loc,
        items: Vec<Node>,
        reference: bool,
    },
    Map {
        anchor: usize,
        loc: Loc,
        map: Map,
        pending_key: Option<(Key, bool)>,
    },
}

/// Parses every YAML document of `text` (an empty stream is one empty map).
#[cfg(test)]
pub(crate) fn load(text: &str, file: &str) -> Result<Vec<Node>, PipelineError> {
    load_within(text, file, &mut Budget::default())
}

/// [`load`], spending `budget` on what aliases build (and on the text itself).
pub(crate) fn load_within(
    text: &str,
    file: &str,
    budget: &mut Budget,
) -> Result<Vec<Node>, PipelineError> {
    let file: Arc<str> = Arc::from(file);
    let mut anchors: HashMap<usize, (Node, Weight)> = HashMap::new();
    if text.len() > budget.bytes {
        return Err(PipelineError::Yaml {
            at: Location {
                file: file.to_string(),
                line: 1,
                column: 1,
            },
            message: format!(
                "the configuration is larger than {} MiB in all",
                MAX_BYTES >> 20
            ),
        });
    }
    budget.bytes -= text.len();
    let mut stack: Vec<Frame> = Vec::new();
    let mut roots: Vec<Node> = Vec::new();
    let yaml_error = |loc: &Loc, message: String| PipelineError::Yaml {
        at: loc.location(),
        message,
    };

    for event in Parser::new_from_str(text) {
        let (event, span) = match event {
            Ok(ev) => ev,
            Err(error) => {
                let m = error.marker();
                return Err(PipelineError::Yaml {
                    at: Location {
                        file: file.to_string(),
                        line: m.line(),
                        column: m.col() + 1,
                    },
                    message: error.info().to_owned(),
                });
            }
        };
        let loc = Loc::new(&file, &span);
        let complete: Option<(Node, usize)> = match event {
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => None,
            Event::DocumentStart(_) => None,
            Event::Alias(id) => match anchors.get(&id) {
                Some((node, size)) => {
                    if size.nodes > budget.nodes {
                        return Err(yaml_error(
                            &loc,
                            format!("aliases expand to more than {MAX_NODES} nodes"),
                        ));
                    }
                    if size.bytes > budget.bytes {
                        return Err(yaml_error(
                            &loc,
                            format!("aliases expand to more than {} MiB", MAX_BYTES >> 20),
                        ));
                    }
                    if stack.len() + size.depth > MAX_DEPTH {
                        return Err(yaml_error(
                            &loc,
                            format!("nested more than {MAX_DEPTH} levels deep (through aliases)"),
                        ));
                    }
                    budget.nodes -= size.nodes;
                    budget.bytes -= size.bytes;
                    Some((node.clone(), 0))
                }
                None => return Err(yaml_error(&loc, "unknown alias".to_owned())),
            },
            Event::Scalar(value, style, anchor, tag) => {
                let kind = match tag.as_deref() {
                    Some(tag) if is_core(tag, "str") => ScalarKind::Str,
                    Some(tag) if is_core(tag, "int") => ScalarKind::Int,
                    Some(tag) if is_core(tag, "float") => ScalarKind::Float,
                    Some(tag) if is_core(tag, "bool") => resolve_plain(&value),
                    Some(tag) if is_core(tag, "null") => ScalarKind::Null,
                    Some(tag) if tag.handle == "!" && tag.suffix == "reference" => {
                        return Err(yaml_error(
                            &loc,
                            format!(
                                "!reference {value:?} is not valid; use !reference [job, key, …]"
                            ),
                        ));
                    }
                    Some(tag) => {
                        return Err(yaml_error(
                            &loc,
                            format!("unsupported YAML tag `{}`", show_tag(tag)),
                        ));
                    }
                    None if style == ScalarStyle::Plain => resolve_plain(&value),
                    None => ScalarKind::Str,
                };
                Some((
                    Node {
                        value: Value::Scalar {
                            text: value.into_owned(),
                            kind,
                        },
                        loc,
                    },
                    anchor,
                ))
            }
            Event::SequenceStart(anchor, tag) => {
                let reference = match tag.as_deref() {
                    None => false,
                    Some(tag) if tag.handle == "!" && tag.suffix == "reference" => true,
                    Some(tag) if is_core(tag, "seq") => false,
                    Some(tag) => {
                        return Err(yaml_error(
                            &loc,
                            format!("unsupported YAML tag `{}`", show_tag(tag)),
                        ));
                    }
                };
                if stack.len() >= MAX_DEPTH {
                    return Err(yaml_error(
                        &loc,
                        format!("nested more than {MAX_DEPTH} levels deep"),
                    ));
                }
                stack.push(Frame::Seq {
                    anchor,
                    loc,
                    items: Vec::new(),
                    reference,
                });
                None
            }
            Event::MappingStart(anchor, tag) => {
                match tag.as_deref() {
                    None => {}
                    Some(tag) if is_core(tag, "map") => {}
                    Some(tag) => {
                        return Err(yaml_error(
                            &loc,
                            format!("unsupported YAML tag `{}`", show_tag(tag)),
                        ));
                    }
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(yaml_error(
                        &loc,
                        format!("nested more than {MAX_DEPTH} levels deep"),
                    ));
                }
                stack.push(Frame::Map {
                    anchor,
                    loc,
                    map: Map::default(),
                    pending_key: None,
                });
                None
            }
            Event::SequenceEnd => match stack.pop() {
                Some(Frame::Seq {
                    anchor,
                    loc,
                    items,
                    reference,
                }) => {
                    let value = if reference {
                        let mut path = Vec::with_capacity(items.len());
                        for item in &items {
                            match item.as_scalar() {
                                Some(s) => path.push(s.to_owned()),
                                None => {
                                    return Err(PipelineError::invalid(
                                        &item.loc,
                                        "!reference entries must be job or key names".to_owned(),
                                    ));
                                }
                            }
                        }
                        Value::Reference(path)
                    } else {
                        Value::Seq(items)
                    };
                    Some((Node { value, loc }, anchor))
                }
                _ => return Err(yaml_error(&loc, "unbalanced sequence".to_owned())),
            },
            Event::MappingEnd => match stack.pop() {
                Some(Frame::Map {
                    anchor, loc, map, ..
                }) => Some((
                    Node {
                        value: Value::Map(map),
                        loc,
                    },
                    anchor,
                )),
                _ => return Err(yaml_error(&loc, "unbalanced mapping".to_owned())),
            },
        };

        let Some((node, anchor)) = complete else {
            continue;
        };
        if anchor != 0 {
            let size = weight(&node);
            anchors.insert(anchor, (node.clone(), size));
        }
        match stack.last_mut() {
            None => roots.push(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map {
                map, pending_key, ..
            }) => match pending_key.take() {
                None => {
                    let plain_merge = matches!(
                        &node.value,
                        Value::Scalar { text, kind: ScalarKind::Str } if text == "<<"
                    );
                    let name = match &node.value {
                        Value::Scalar { text, .. } => text.clone(),
                        _ => {
                            return Err(PipelineError::invalid(
                                &node.loc,
                                "mapping keys must be scalars".to_owned(),
                            ));
                        }
                    };
                    *pending_key = Some((
                        Key {
                            name,
                            loc: node.loc,
                        },
                        plain_merge,
                    ));
                }
                Some((key, true)) => merge_into(map, key, node)?,
                Some((key, false)) => map.insert(key, node),
            },
        }
    }
    if roots.is_empty() {
        roots.push(Node {
            value: Value::Map(Map::default()),
            loc: Loc {
                file,
                line: 1,
                column: 1,
            },
        });
    }
    Ok(roots)
}

/// Psych's merge-key semantics.
fn merge_into(map: &mut Map, key: Key, node: Node) -> Result<(), PipelineError> {
    match node.value {
        Value::Map(source) => {
            for (k, v) in source.entries {
                map.insert(k, v);
            }
        }
        Value::Seq(items) => {
            let mut merged = Map::default();
            for item in items.into_iter().rev() {
                match item.value {
                    Value::Map(source) => {
                        for (k, v) in source.entries {
                            merged.insert(k, v);
                        }
                    }
                    _ => {
                        return Err(PipelineError::invalid(
                            &item.loc,
                            "a merge key (<<) list may only hold hashes".to_owned(),
                        ));
                    }
                }
            }
            for (k, v) in merged.entries {
                map.insert(k, v);
            }
        }
        _ => map.insert(key, node),
    }
    Ok(())
}

fn is_core(tag: &Tag, suffix: &str) -> bool {
    tag.suffix == suffix && (tag.handle == "!!" || tag.handle == "tag:yaml.org,2002:")
}

fn show_tag(tag: &Tag) -> String {
    format!("{}{}", tag.handle, tag.suffix)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(text: &str) -> Map {
        match load(text, "t.yml").map(|mut n| n.remove(0).value) {
            Ok(Value::Map(m)) => m,
            other => panic!("not a map: {other:?}"),
        }
    }

    #[test]
    fn merge_keys_follow_psych_order() {
        let m = map("base: &b {a: 1, b: 2}\nx:\n  a: 0\n  <<: *b\n  b: 3\n");
        let x = m.get("x").and_then(Node::as_map).expect("x");
        assert_eq!(x.get("a").and_then(Node::as_scalar), Some("1"));
        assert_eq!(x.get("b").and_then(Node::as_scalar), Some("3"));
    }

    #[test]
    fn merge_list_earlier_wins() {
        let m = map("p: &p {a: 1}\nq: &q {a: 2, c: 3}\nx:\n  <<: [*p, *q]\n");
        let x = m.get("x").and_then(Node::as_map).expect("x");
        assert_eq!(x.get("a").and_then(Node::as_scalar), Some("1"));
        assert_eq!(x.get("c").and_then(Node::as_scalar), Some("3"));
    }

    #[test]
    fn scalars_resolve_like_psych() {
        let m = map("a: yes\nb: 'yes'\nc: 10\nd: 1.5\ne: ~\nf: !!str 3\n");
        assert_eq!(m.get("a").and_then(Node::as_bool), Some(true));
        assert_eq!(m.get("b").and_then(Node::as_str), Some("yes"));
        assert_eq!(m.get("c").and_then(Node::as_int), Some(10));
        assert_eq!(m.get("d").map(Node::type_name), Some("a number"));
        assert!(m.get("e").is_some_and(Node::is_null));
        assert_eq!(m.get("f").and_then(Node::as_str), Some("3"));
    }

    #[test]
    fn reference_tag_is_kept() {
        let m = map("a: !reference [.x, script]\n");
        assert_eq!(
            m.get("a").map(|n| &n.value),
            Some(&Value::Reference(vec![".x".into(), "script".into()]))
        );
    }

    #[test]
    fn alias_bombs_and_deep_nesting_are_refused() {
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let refs = vec![format!("*a{}", i - 1); 10].join(", ");
            bomb.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        let e = load(&bomb, "t.yml").map(|_| ()).map_err(|e| e.to_string());
        assert!(
            e.as_ref()
                .is_err_and(|e| e.contains("aliases expand to more than")),
            "{e:?}"
        );
        // Flow collections hit the parser's own recursion limit; block ones hit ours.
        let flow = format!("a: {}{}", "[".repeat(5000), "]".repeat(5000));
        assert!(load(&flow, "t.yml").is_err());
        let mut deep = String::new();
        for i in 0..300 {
            deep.push_str(&format!("{}k:\n", "  ".repeat(i)));
        }
        let e = load(&deep, "t.yml").map(|_| ()).map_err(|e| e.to_string());
        assert!(
            e.as_ref()
                .is_err_and(|e| e.contains("nested more than 200 levels")),
            "{e:?}"
        );
    }

    #[test]
    fn positions_are_one_based() {
        let m = map("a: 1\nbb:\n  c: 2\n");
        let (k, v) = m.get_entry("bb").expect("bb");
        assert_eq!((k.loc.line, k.loc.column), (2, 1));
        let c = v.as_map().and_then(|m| m.get("c")).expect("c");
        assert_eq!((c.loc.line, c.loc.column), (3, 6));
    }
}
