//! YAML-level resolution, in GitLab's order: `include: local` (deep-merged, the including file
//! winning), then `extends` (deep merge of hashes, arrays replaced, several parents merged in
//! order, the job itself last), then `!reference` tags (looked up in the extended config).
//!
//! It works on [`crate::yaml`] trees and knows only the keys `include` and `extends`; typing the
//! result is `load`'s job. Remote, project, template and component includes are not fetched:
//! each one is a warning.

use std::collections::HashMap;

use globset::GlobBuilder;

use crate::error::{PipelineError, Warning};
use crate::source::SourceFiles;
use crate::yaml::{self, Loc, Map, Node, Value};

/// GitLab's limits: include nesting, `extends` depth, `!reference` depth.
const MAX_INCLUDE_DEPTH: usize = 100;
const MAX_EXTENDS_DEPTH: usize = 11;
const MAX_REFERENCE_DEPTH: usize = 10;

/// Reads `path` and every file it includes, merged into one top-level hash.
pub(crate) fn read_with_includes(
    src: &dyn SourceFiles,
    path: &str,
    files: &mut Vec<String>,
    warnings: &mut Vec<Warning>,
) -> Result<Map, PipelineError> {
    let mut chain = Vec::new();
    load_file(src, path, None, &mut chain, files, warnings)
}

fn load_file(
    src: &dyn SourceFiles,
    path: &str,
    included_at: Option<&Loc>,
    chain: &mut Vec<String>,
    files: &mut Vec<String>,
    warnings: &mut Vec<Warning>,
) -> Result<Map, PipelineError> {
    let text = match src.read(path) {
        Ok(text) => text,
        Err(source) => {
            return Err(match included_at {
                Some(loc) => PipelineError::Include {
                    at: loc.location(),
                    path: path.to_owned(),
                    source,
                },
                None => PipelineError::Read {
                    path: path.to_owned(),
                    source,
                },
            });
        }
    };
    files.push(path.to_owned());
    let mut documents = yaml::load(&text, path)?;
    let node = match documents.len() {
        1 => documents.remove(0),
        2 if documents[0]
            .as_map()
            .is_some_and(|m| m.get("spec").is_some()) =>
        {
            warn(
                warnings,
                &documents[0].loc,
                "spec:inputs headers are not supported locally; ignored".to_owned(),
            );
            documents.remove(1)
        }
        _ => {
            return Err(PipelineError::invalid(
                &documents[1].loc,
                "a CI file holds one YAML document (two only with a `spec:` header first)"
                    .to_owned(),
            ));
        }
    };
    let Value::Map(mut map) = node.value else {
        return Err(PipelineError::invalid(
            &node.loc,
            format!("the CI file must be a hash, not {}", node.type_name()),
        ));
    };
    let Some(include) = map.remove("include") else {
        return Ok(map);
    };
    chain.push(path.to_owned());
    let mut merged = Map::default();
    for (pattern, loc) in include_entries(&include, warnings)? {
        if pattern.contains('$') {
            warn(
                warnings,
                &loc,
                format!(
                    "include `{pattern}` uses variables, which are not expanded locally; skipped"
                ),
            );
            continue;
        }
        let targets = expand_local(src, &pattern, &loc)?;
        for target in targets {
            if chain.contains(&target) {
                return Err(PipelineError::invalid(
                    &loc,
                    format!("include cycle: `{target}` includes itself"),
                ));
            }
            if chain.len() >= MAX_INCLUDE_DEPTH {
                return Err(PipelineError::invalid(
                    &loc,
                    format!("includes are nested more than {MAX_INCLUDE_DEPTH} levels deep"),
                ));
            }
            let included = load_file(src, &target, Some(&loc), chain, files, warnings)?;
            deep_merge(&mut merged, included);
        }
    }
    chain.pop();
    deep_merge(&mut merged, map);
    Ok(merged)
}

/// The local paths (or globs) an `include:` value names; other kinds become warnings.
fn include_entries(
    include: &Node,
    warnings: &mut Vec<Warning>,
) -> Result<Vec<(String, Loc)>, PipelineError> {
    let items: Vec<&Node> = match &include.value {
        Value::Seq(items) => items.iter().collect(),
        _ => vec![include],
    };
    let mut out = Vec::new();
    for item in items {
        if let Some(s) = item.as_str() {
            if s.starts_with("http://") || s.starts_with("https://") {
                warn(
                    warnings,
                    &item.loc,
                    format!("include of remote `{s}` is not supported locally; skipped"),
                );
            } else {
                out.push((s.to_owned(), item.loc.clone()));
            }
            continue;
        }
        let Some(map) = item.as_map() else {
            return Err(PipelineError::invalid(
                &item.loc,
                format!(
                    "include entries must be a path or a hash, not {}",
                    item.type_name()
                ),
            ));
        };
        if let Some(local) = map.get("local") {
            let Some(path) = local.as_str() else {
                return Err(PipelineError::invalid(
                    &local.loc,
                    "include:local must be a path".to_owned(),
                ));
            };
            for (key, _) in &map.entries {
                match key.name.as_str() {
                    "local" => {}
                    "rules" => warn(
                        warnings,
                        &key.loc,
                        format!("include:rules is not evaluated; `{path}` is always included"),
                    ),
                    other => warn(
                        warnings,
                        &key.loc,
                        format!("include:{other} is not supported locally; ignored"),
                    ),
                }
            }
            out.push((path.to_owned(), local.loc.clone()));
            continue;
        }
        let kind = ["remote", "project", "template", "component", "artifact"]
            .into_iter()
            .find(|k| map.get(k).is_some());
        match kind {
            Some(kind) => warn(
                warnings,
                &item.loc,
                format!("include:{kind} is not supported locally; skipped"),
            ),
            None => {
                return Err(PipelineError::invalid(
                    &item.loc,
                    "include entry has no `local`, `remote`, `project`, `template` or `component` key"
                        .to_owned(),
                ));
            }
        }
    }
    Ok(out)
}

/// One local include: a file, or every file a glob matches (sorted).
fn expand_local(
    src: &dyn SourceFiles,
    pattern: &str,
    loc: &Loc,
) -> Result<Vec<String>, PipelineError> {
    let pattern = pattern.trim_start_matches("./").trim_start_matches('/');
    if !pattern.contains(['*', '?', '[', '{']) {
        return Ok(vec![pattern.to_owned()]);
    }
    let glob = GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map_err(|e| PipelineError::invalid(loc, format!("invalid include glob `{pattern}`: {e}")))?
        .compile_matcher();
    let mut matched: Vec<String> = src
        .list()
        .into_iter()
        .filter(|f| {
            let f = f.trim_start_matches('/');
            (f.ends_with(".yml") || f.ends_with(".yaml")) && glob.is_match(f)
        })
        .collect();
    matched.sort();
    Ok(matched)
}

/// GitLab's deep merge: hashes merge recursively, everything else is replaced by `over`.
pub(crate) fn deep_merge(base: &mut Map, over: Map) {
    for (key, value) in over.entries {
        let existing = base.entries.iter_mut().find(|(k, _)| k.name == key.name);
        match (existing, value) {
            (
                Some((
                    _,
                    Node {
                        value: Value::Map(base_map),
                        ..
                    },
                )),
                Node {
                    value: Value::Map(over_map),
                    ..
                },
            ) => deep_merge(base_map, over_map),
            (Some(slot), value) => slot.1 = value,
            (None, value) => base.entries.push((key, value)),
        }
    }
}

/// Resolves `extends` for every top-level hash.
pub(crate) fn resolve_extends(root: &mut Map) -> Result<(), PipelineError> {
    let names: Vec<String> = root.keys().map(|k| k.name.clone()).collect();
    let mut done = HashMap::new();
    for name in names {
        extend(root, &name, &mut Vec::new(), &mut done)?;
    }
    Ok(())
}

fn extend(
    root: &mut Map,
    name: &str,
    stack: &mut Vec<String>,
    done: &mut HashMap<String, usize>,
) -> Result<(), PipelineError> {
    // `done` maps a resolved entry to the length of its longest `extends` chain, so that depth
    // is checked along the full chain whatever order entries were resolved in (as GitLab does).
    if let Some(&height) = done.get(name) {
        if stack.len() + height > MAX_EXTENDS_DEPTH {
            let at = root
                .get(name)
                .and_then(Node::as_map)
                .and_then(|m| m.get("extends"))
                .map_or_else(
                    || root.get(name).map(|n| n.loc.clone()),
                    |n| Some(n.loc.clone()),
                );
            if let Some(at) = at {
                return Err(PipelineError::invalid(
                    &at,
                    format!(
                        "`{name}`: nesting too deep in `extends` (more than {} levels)",
                        MAX_EXTENDS_DEPTH - 1
                    ),
                ));
            }
        }
        return Ok(());
    }
    let Some(job) = root.get(name).and_then(Node::as_map) else {
        done.insert(name.to_owned(), 0);
        return Ok(());
    };
    let Some(extends) = job.get("extends") else {
        done.insert(name.to_owned(), 0);
        return Ok(());
    };
    let extends = extends.clone();
    let parents: Vec<(String, Loc)> = match &extends.value {
        Value::Seq(items) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(|s| (s.to_owned(), i.loc.clone()))
                    .ok_or_else(|| {
                        PipelineError::invalid(
                            &i.loc,
                            "extends entries must be job names".to_owned(),
                        )
                    })
            })
            .collect::<Result<_, _>>()?,
        _ => match extends.as_str() {
            Some(s) => vec![(s.to_owned(), extends.loc.clone())],
            None => {
                return Err(PipelineError::invalid(
                    &extends.loc,
                    format!(
                        "`{name}`: extends must be a job name or a list of job names, not {}",
                        extends.type_name()
                    ),
                ));
            }
        },
    };
    stack.push(name.to_owned());
    if stack.len() > MAX_EXTENDS_DEPTH {
        return Err(PipelineError::invalid(
            &extends.loc,
            format!(
                "`{name}`: nesting too deep in `extends` (more than {} levels)",
                MAX_EXTENDS_DEPTH - 1
            ),
        ));
    }
    for (parent, loc) in &parents {
        if let Some(pos) = stack.iter().position(|s| s == parent) {
            let mut cycle: Vec<&str> = stack[pos..].iter().map(String::as_str).collect();
            cycle.push(parent);
            return Err(PipelineError::invalid(
                loc,
                format!(
                    "circular dependency detected in `extends`: {}",
                    cycle.join(" -> ")
                ),
            ));
        }
        match root.get(parent) {
            None => {
                return Err(PipelineError::invalid(
                    loc,
                    format!("`{name}`: unknown keys in `extends` ({parent})"),
                ));
            }
            Some(node) if node.as_map().is_none() => {
                return Err(PipelineError::invalid(
                    loc,
                    format!("`{name}`: invalid base hashes in `extends` ({parent})"),
                ));
            }
            Some(_) => {}
        }
        extend(root, parent, stack, done)?;
    }
    stack.pop();
    let height = 1 + parents
        .iter()
        .map(|(p, _)| done.get(p).copied().unwrap_or(0))
        .max()
        .unwrap_or(0);
    let mut merged = Map::default();
    for (parent, _) in &parents {
        if let Some(parent_map) = root.get(parent).and_then(Node::as_map) {
            deep_merge(&mut merged, parent_map.clone());
        }
    }
    let Some(slot) = root.entries.iter_mut().find(|(k, _)| k.name == name) else {
        return Ok(());
    };
    if let Value::Map(own) = &mut slot.1.value {
        deep_merge(&mut merged, std::mem::take(own));
        *own = merged;
    }
    done.insert(name.to_owned(), height);
    Ok(())
}

/// Replaces every `!reference [job, key, …]` with the value it points at.
pub(crate) fn resolve_references(root: &mut Map) -> Result<(), PipelineError> {
    let snapshot = root.clone();
    let mut budget = yaml::MAX_NODES;
    for (_, node) in &mut root.entries {
        resolve_node(node, &snapshot, &mut Vec::new(), &mut budget)?;
    }
    Ok(())
}

fn resolve_node(
    node: &mut Node,
    snapshot: &Map,
    active: &mut Vec<Vec<String>>,
    budget: &mut usize,
) -> Result<(), PipelineError> {
    match &mut node.value {
        Value::Reference(path) => {
            if active.contains(path) {
                return Err(PipelineError::invalid(
                    &node.loc,
                    format!(
                        "!reference [{}] is part of a circular chain",
                        path.join(", ")
                    ),
                ));
            }
            if active.len() >= MAX_REFERENCE_DEPTH {
                return Err(PipelineError::invalid(
                    &node.loc,
                    format!("!reference nesting is deeper than {MAX_REFERENCE_DEPTH} levels"),
                ));
            }
            let found = lookup(snapshot, path, &node.loc)?;
            let size = yaml::node_count(found);
            if size > *budget {
                return Err(PipelineError::invalid(
                    &node.loc,
                    format!(
                        "!reference tags expand to more than {} nodes",
                        yaml::MAX_NODES
                    ),
                ));
            }
            *budget -= size;
            let mut found = found.clone();
            active.push(path.clone());
            resolve_node(&mut found, snapshot, active, budget)?;
            active.pop();
            *node = found;
        }
        Value::Seq(items) => {
            for item in items {
                resolve_node(item, snapshot, active, budget)?;
            }
        }
        Value::Map(map) => {
            for (_, value) in &mut map.entries {
                resolve_node(value, snapshot, active, budget)?;
            }
        }
        Value::Scalar { .. } => {}
    }
    Ok(())
}

fn lookup<'a>(snapshot: &'a Map, path: &[String], loc: &Loc) -> Result<&'a Node, PipelineError> {
    let shown = path.join(", ");
    let Some((first, rest)) = path.split_first() else {
        return Err(PipelineError::invalid(
            loc,
            "!reference [] is not valid".to_owned(),
        ));
    };
    let missing =
        || PipelineError::invalid(loc, format!("!reference [{shown}] could not be found"));
    let mut node = snapshot.get(first).ok_or_else(missing)?;
    for key in rest {
        node = node.as_map().and_then(|m| m.get(key)).ok_or_else(missing)?;
    }
    Ok(node)
}

pub(crate) fn warn(warnings: &mut Vec<Warning>, loc: &Loc, message: String) {
    tracing::debug!(message = %message, at = %loc, "ci config warning");
    warnings.push(Warning {
        at: loc.location(),
        message,
    });
}
