//! `spec:inputs` and `include:inputs`: the header of a CI file declares its inputs (type,
//! default, options, regex), an include passes values, and `$[[ inputs.NAME ]]` in the file's
//! keys and values is replaced by them, as GitLab does.
//!
//! A value that is exactly one `$[[ … ]]` block takes the input's type (a list stays a list, a
//! boolean a boolean); inside longer text the input is written as text. The functions
//! `expand_vars`, `truncate(offset, length)` and `posix_escape` can follow the name. Unknown
//! inputs, missing required ones, values of the wrong type, not among `options` or not matching
//! `regex` are errors naming the input; so are inputs given to a file without a `spec` header.
//! Blocks of other contexts (`$[[ matrix.X ]]`, used by `needs:parallel:matrix`) are left alone.

use std::collections::BTreeMap;

use crate::error::PipelineError;
use crate::yaml::{Key, Loc, Map, Node, ScalarKind, Value};

/// Interpolated text may not grow past this (a long input used many times).
const MAX_TEXT: usize = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    String,
    Number,
    Boolean,
    Array,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::String => "string",
            Kind::Number => "number",
            Kind::Boolean => "boolean",
            Kind::Array => "array",
        }
    }

    fn accepts(self, node: &Node) -> bool {
        match (self, &node.value) {
            (Kind::String, Value::Scalar { kind, .. }) => *kind != ScalarKind::Null,
            (Kind::Number, Value::Scalar { kind, .. }) => {
                matches!(kind, ScalarKind::Int | ScalarKind::Float)
            }
            (Kind::Boolean, Value::Scalar { kind, .. }) => matches!(kind, ScalarKind::Bool(_)),
            (Kind::Array, Value::Seq(_)) => true,
            _ => false,
        }
    }
}

fn invalid<T>(loc: &Loc, message: String) -> Result<T, PipelineError> {
    Err(PipelineError::invalid(loc, message))
}

/// The values of every declared input: given ones checked, defaults for the others.
fn resolve(
    spec: &Map,
    given: Option<&Node>,
    at: &Loc,
) -> Result<BTreeMap<String, Node>, PipelineError> {
    let declared = match spec.get("inputs") {
        Some(node) if node.is_null() => Map::default(),
        Some(node) => match node.as_map() {
            Some(map) => map.clone(),
            None => return invalid(&node.loc, "spec:inputs must be a hash".to_owned()),
        },
        None => Map::default(),
    };
    for key in spec.keys() {
        if key.name != "inputs" {
            return invalid(
                &key.loc,
                format!("spec contains unknown key `{}`", key.name),
            );
        }
    }
    let given_map = match given {
        None => Map::default(),
        Some(node) if node.is_null() => Map::default(),
        Some(node) => match node.as_map() {
            Some(map) => map.clone(),
            None => return invalid(&node.loc, "include:inputs must be a hash".to_owned()),
        },
    };
    let unknown: Vec<&str> = given_map
        .keys()
        .filter(|k| declared.get(&k.name).is_none())
        .map(|k| k.name.as_str())
        .collect();
    if !unknown.is_empty() {
        return invalid(
            at,
            format!(
                "unknown input arguments: {} (the file's spec:inputs declares: {})",
                unknown.join(", "),
                declared
                    .keys()
                    .map(|k| k.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }
    let mut out = BTreeMap::new();
    for (key, decl) in &declared.entries {
        let name = &key.name;
        let decl_map = decl.as_map().cloned().unwrap_or_default();
        for k in decl_map.keys() {
            if !matches!(
                k.name.as_str(),
                "default" | "type" | "options" | "regex" | "description" | "rules"
            ) {
                return invalid(
                    &k.loc,
                    format!("input `{name}` has unknown key `{}`", k.name),
                );
            }
        }
        if let Some(rules) = decl_map.get("rules") {
            return invalid(
                &rules.loc,
                format!("input `{name}`: spec:inputs:rules are not supported by runnel exec"),
            );
        }
        let kind = match decl_map.get("type").and_then(Node::as_scalar) {
            None => Kind::String,
            Some("string") => Kind::String,
            Some("number") => Kind::Number,
            Some("boolean") => Kind::Boolean,
            Some("array") => Kind::Array,
            Some(other) => {
                return invalid(&decl.loc, format!("input `{name}`: unknown type `{other}`"));
            }
        };
        let (value, from) = match given_map.get(name) {
            Some(v) => (v.clone(), at),
            None => match decl_map.get("default") {
                Some(d) if !(d.is_null() && kind != Kind::String) => (d.clone(), &d.loc),
                Some(d) => (d.clone(), &d.loc),
                None => {
                    return invalid(
                        at,
                        format!("`{name}` input: required value has not been provided"),
                    );
                }
            },
        };
        // A null string default means the empty string.
        let value = if value.is_null() && kind == Kind::String {
            Node {
                value: Value::Scalar {
                    text: String::new(),
                    kind: ScalarKind::Str,
                },
                loc: value.loc.clone(),
            }
        } else {
            value
        };
        if !kind.accepts(&value) {
            return invalid(
                from,
                format!(
                    "`{name}` input: provided value is not a {} ({})",
                    kind.name(),
                    value.type_name()
                ),
            );
        }
        if let Some(options) = decl_map.get("options") {
            let allowed: Vec<&str> = match &options.value {
                Value::Seq(items) => items.iter().filter_map(Node::as_scalar).collect(),
                _ => {
                    return invalid(
                        &options.loc,
                        format!("input `{name}`: options must be a list"),
                    );
                }
            };
            let text = value.as_scalar().unwrap_or_default();
            if !allowed.contains(&text) {
                return invalid(
                    from,
                    format!(
                        "`{name}` input: `{text}` cannot be used because it is not in the list of allowed options ({})",
                        allowed.join(", ")
                    ),
                );
            }
        }
        if let Some(regex) = decl_map.get("regex").and_then(Node::as_scalar) {
            let pattern = regex
                .strip_prefix('/')
                .and_then(|r| r.strip_suffix('/'))
                .unwrap_or(regex);
            let compiled = regex::Regex::new(pattern).map_err(|e| {
                PipelineError::invalid(&decl.loc, format!("input `{name}`: invalid regex: {e}"))
            })?;
            let text = value.as_scalar().unwrap_or_default();
            if !compiled.is_match(text) {
                return invalid(
                    from,
                    format!("`{name}` input: provided value does not match required RegEx pattern"),
                );
            }
        }
        out.insert(name.clone(), value);
    }
    Ok(out)
}

/// Applies a file's `spec` header (if any) and an include's `inputs` (if any) to `body`.
/// `lookup` gives variables for the `expand_vars` function.
pub(crate) fn apply(
    header: Option<&Node>,
    given: Option<&Node>,
    body: &mut Node,
    at: &Loc,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), PipelineError> {
    let spec = match header.and_then(Node::as_map).and_then(|m| m.get("spec")) {
        Some(spec) => match spec.as_map() {
            Some(map) => Some(map.clone()),
            None if spec.is_null() => Some(Map::default()),
            None => return invalid(&spec.loc, "spec must be a hash".to_owned()),
        },
        None => None,
    };
    let Some(spec) = spec else {
        let given_any =
            given.is_some_and(|g| g.as_map().map_or(!g.is_null(), |m| !m.entries.is_empty()));
        if given_any {
            return invalid(
                at,
                "given inputs not defined in the `spec` section of the included configuration file"
                    .to_owned(),
            );
        }
        return Ok(());
    };
    let values = resolve(&spec, given, at)?;
    interpolate(body, &values, lookup)
}

fn interpolate(
    node: &mut Node,
    values: &BTreeMap<String, Node>,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), PipelineError> {
    match &mut node.value {
        Value::Scalar {
            text,
            kind: ScalarKind::Str,
        } if text.contains("$[[") => {
            if let Some(replacement) = whole_block(text, &node.loc, values, lookup)? {
                let loc = node.loc.clone();
                *node = replacement;
                node.loc = loc;
            } else {
                *text = substitute(text, &node.loc, values, lookup)?;
            }
        }
        Value::Seq(items) => {
            for item in items {
                interpolate(item, values, lookup)?;
            }
        }
        Value::Map(map) => {
            let entries = std::mem::take(&mut map.entries);
            let mut out = Map::default();
            for (key, mut value) in entries {
                let name = if key.name.contains("$[[") {
                    substitute(&key.name, &key.loc, values, lookup)?
                } else {
                    key.name.clone()
                };
                interpolate(&mut value, values, lookup)?;
                out.insert(Key { name, loc: key.loc }, value);
            }
            *map = out;
        }
        _ => {}
    }
    Ok(())
}

/// `(context, name, functions)` of the block starting at `text`, and its length; `None` when
/// it is not a complete `$[[ … ]]` block.
fn parse_block(text: &str) -> Option<(&str, usize)> {
    let rest = text.strip_prefix("$[[")?;
    let end = rest.find("]]")?;
    Some((&rest[..end], end + 5))
}

/// The value of one block's inside (`inputs.name | fn`), or `None` for another context.
fn evaluate(
    inner: &str,
    loc: &Loc,
    values: &BTreeMap<String, Node>,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Node>, PipelineError> {
    let mut parts = inner.split('|').map(str::trim);
    let access = parts.next().unwrap_or_default();
    let Some(name) = access.strip_prefix("inputs.") else {
        return Ok(None);
    };
    let Some(value) = values.get(name) else {
        return invalid(loc, format!("unknown interpolation key: `{name}`"));
    };
    let mut value = value.clone();
    for function in parts {
        let text = scalar_text(&value, name, loc)?;
        let result = if function == "expand_vars" {
            crate::eval::expand(&text, lookup)
        } else if function == "posix_escape" {
            posix_escape(&text)
        } else if let Some(args) = function
            .strip_prefix("truncate(")
            .and_then(|a| a.strip_suffix(')'))
        {
            let numbers: Vec<usize> = args
                .split(',')
                .map(|a| a.trim().parse::<usize>())
                .collect::<Result<_, _>>()
                .map_err(|_| {
                    PipelineError::invalid(loc, format!("invalid function `{function}`"))
                })?;
            let [offset, length] = numbers[..] else {
                return invalid(loc, format!("invalid function `{function}`"));
            };
            text.chars().skip(offset).take(length).collect()
        } else {
            return invalid(
                loc,
                format!("unknown interpolation function `{function}` for input `{name}`"),
            );
        };
        value = Node {
            value: Value::Scalar {
                text: result,
                kind: ScalarKind::Str,
            },
            loc: value.loc,
        };
    }
    Ok(Some(value))
}

fn scalar_text(value: &Node, name: &str, loc: &Loc) -> Result<String, PipelineError> {
    match &value.value {
        Value::Scalar { text, .. } => Ok(text.clone()),
        _ => invalid(
            loc,
            format!(
                "input `{name}` is {} and cannot be used inside text",
                value.type_name()
            ),
        ),
    }
}

fn whole_block(
    text: &str,
    loc: &Loc,
    values: &BTreeMap<String, Node>,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Node>, PipelineError> {
    let trimmed = text.trim();
    match parse_block(trimmed) {
        Some((inner, len)) if len == trimmed.len() => evaluate(inner, loc, values, lookup),
        _ => Ok(None),
    }
}

fn substitute(
    text: &str,
    loc: &Loc,
    values: &BTreeMap<String, Node>,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, PipelineError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("$[[") {
        out.push_str(&rest[..start]);
        let Some((inner, len)) = parse_block(&rest[start..]) else {
            out.push_str(&rest[start..]);
            rest = "";
            break;
        };
        match evaluate(inner, loc, values, lookup)? {
            Some(value) => {
                let name = inner.split('|').next().unwrap_or_default().trim();
                out.push_str(&scalar_text(&value, name, loc)?);
            }
            None => out.push_str(&rest[start..start + len]),
        }
        rest = &rest[start + len..];
        if out.len() > MAX_TEXT {
            return invalid(
                loc,
                format!("interpolated text is longer than {} KiB", MAX_TEXT >> 10),
            );
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Escapes every character a POSIX shell treats specially with a backslash.
fn posix_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | ',' | ':' | '@')) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml;

    fn docs(text: &str) -> Vec<Node> {
        yaml::load(text, "t.yml").unwrap()
    }

    fn run(file: &str, given: Option<&str>) -> Result<Node, String> {
        let mut d = docs(file);
        let (header, mut body) = if d.len() == 2 {
            let body = d.remove(1);
            (Some(d.remove(0)), body)
        } else {
            (None, d.remove(0))
        };
        let given = given.map(|g| docs(g).remove(0));
        let at = body.loc.clone();
        apply(header.as_ref(), given.as_ref(), &mut body, &at, &|k| {
            (k == "HOME").then(|| "/root".to_owned())
        })
        .map_err(|e| e.to_string())?;
        Ok(body)
    }

    const FILE: &str = "spec:\n  inputs:\n    stage: {default: test}\n    flags: {type: array, default: [-v]}\n    level: {type: number, default: 1}\n    env: {options: [dev, prod], default: dev}\n    tag: {regex: '^v[0-9]+$', default: v1}\n---\n\"job-$[[ inputs.stage ]]\":\n  stage: $[[ inputs.stage ]]\n  script: $[[ inputs.flags ]]\n  variables:\n    LEVEL: $[[ inputs.level ]]\n    TEXT: \"at $[[ inputs.env | truncate(0,2) ]] $[[ matrix.OS ]] $[[ inputs.tag | expand_vars ]]\"\n";

    #[test]
    fn inputs_interpolate_with_types_and_functions() {
        let body = run(FILE, Some("{stage: build, flags: [-a, -b], env: prod}")).unwrap();
        let map = body.as_map().unwrap();
        let job = map
            .get("job-build")
            .and_then(Node::as_map)
            .expect("job key");
        assert_eq!(job.get("stage").and_then(Node::as_str), Some("build"));
        assert!(matches!(&job.get("script").unwrap().value, Value::Seq(items) if items.len() == 2));
        let vars = job.get("variables").and_then(Node::as_map).unwrap();
        assert_eq!(vars.get("LEVEL").and_then(Node::as_int), Some(1));
        assert_eq!(
            vars.get("TEXT").and_then(Node::as_str),
            Some("at pr $[[ matrix.OS ]] v1")
        );
    }

    #[test]
    fn input_errors_name_the_input() {
        let error = |given: &str| run(FILE, Some(given)).unwrap_err();
        assert!(error("{nope: 1}").contains("unknown input arguments: nope"));
        assert!(error("{env: qa}").contains("not in the list of allowed options"));
        assert!(error("{level: many}").contains("`level` input: provided value is not a number"));
        assert!(error("{tag: x1}").contains("does not match"));
        let required = "spec:\n  inputs:\n    must: {}\n---\na: {script: [x]}\n";
        assert!(
            run(required, None)
                .unwrap_err()
                .contains("`must` input: required")
        );
        let no_spec = run("a: {script: [x]}\n", Some("{x: 1}")).unwrap_err();
        assert!(no_spec.contains("not defined in the `spec` section"));
        let unknown_key = "spec:\n  inputs:\n    a: {default: x}\n---\nj:\n  script:\n    - echo $[[ inputs.b ]]\n";
        assert!(
            run(unknown_key, None)
                .unwrap_err()
                .contains("unknown interpolation key: `b`")
        );
    }

    #[test]
    fn posix_escape_quotes_shell_characters() {
        assert_eq!(posix_escape("a b;$(x)"), "a\\ b\\;\\$\\(x\\)");
    }
}
