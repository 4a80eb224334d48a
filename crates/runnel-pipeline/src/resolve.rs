//! YAML-level resolution, in GitLab's order: includes (deep-merged, the including file
//! winning), then `extends` (deep merge of hashes, arrays replaced, several parents merged in
//! order, the job itself last), then `!reference` tags (looked up in the extended config).
//!
//! Includes of every kind are read through [`SourceFiles`]: `local` files and globs from the
//! project, `remote`, `project`, `template` and `component` ones through
//! [`SourceFiles::fetch`] (this crate fetches nothing itself). Include values are expanded
//! with the pipeline's variables, `include:rules` decide whether an entry is used,
//! `include:inputs` fill the included file's `spec:inputs`, and an include named twice (same
//! file, same inputs) is read once, as GitLab does. An include that cannot be read stops the
//! load with one error naming it. It works on [`crate::yaml`] trees and knows only the keys
//! `include` and `extends`; typing the result is `load`'s job.

use std::cell::OnceCell;
use std::collections::{HashMap, HashSet};

use globset::GlobBuilder;
use runnel_types::Variable;

use crate::error::{PipelineError, Warning};
use crate::expr::Expr;
use crate::source::{External, SourceFiles};
use crate::yaml::{self, Loc, Map, Node, Value};

/// GitLab's limits: include nesting, included files in all, `extends` depth, `!reference`
/// depth.
const MAX_INCLUDE_DEPTH: usize = 100;
const MAX_INCLUDES: usize = 150;
const MAX_EXTENDS_DEPTH: usize = 11;
const MAX_REFERENCE_DEPTH: usize = 10;

/// What include values and `include:rules` are evaluated against.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct IncludeContext<'a> {
    /// Predefined and user variables (later entries win).
    pub(crate) variables: &'a [Variable],
    /// Changed files for `rules:changes` (`None`: unknown, every `changes` matches).
    pub(crate) changed_files: Option<&'a [String]>,
    /// Pipeline inputs of the root file.
    pub(crate) inputs: &'a [(String, String)],
}

/// Where a file came from: its `include: local` entries are read from the same place.
#[derive(Clone, Debug)]
enum Origin {
    Project,
    External(External),
}

/// What an include entry names.
#[derive(Clone, Debug)]
enum Target {
    Local(String),
    External(External),
}

struct Entry<'n> {
    target: Target,
    at: Loc,
    rules: Option<&'n Node>,
    inputs: Option<&'n Node>,
    integrity: Option<String>,
}

struct Includes<'a> {
    src: &'a dyn SourceFiles,
    cx: IncludeContext<'a>,
    project_files: OnceCell<Vec<String>>,
    budget: yaml::Budget,
    seen: HashSet<String>,
    loads: usize,
    chain: Vec<String>,
    files: Vec<String>,
    warnings: Vec<Warning>,
}

/// Reads `path` and every file it includes, merged into one top-level hash.
pub(crate) fn read_with_includes(
    src: &dyn SourceFiles,
    path: &str,
    cx: IncludeContext<'_>,
    files: &mut Vec<String>,
    warnings: &mut Vec<Warning>,
) -> Result<Map, PipelineError> {
    let mut includes = Includes {
        src,
        cx,
        project_files: OnceCell::new(),
        budget: yaml::Budget::default(),
        seen: HashSet::new(),
        loads: 0,
        chain: Vec::new(),
        files: Vec::new(),
        warnings: Vec::new(),
    };
    let root_inputs = pipeline_inputs(cx.inputs)?;
    let result = includes.load_file(
        &Target::Local(path.to_owned()),
        &Origin::Project,
        None,
        root_inputs.as_ref(),
        None,
    );
    files.append(&mut includes.files);
    warnings.append(&mut includes.warnings);
    let root = result?;
    let size = yaml::weight(&Node {
        value: Value::Map(root.clone()),
        loc: Loc {
            file: path.into(),
            line: 1,
            column: 1,
        },
    });
    if size.bytes > yaml::MAX_BYTES {
        return Err(PipelineError::Invalid {
            at: crate::error::Location {
                file: path.to_owned(),
                line: 1,
                column: 1,
            },
            message: format!(
                "the merged configuration is larger than {} MiB",
                yaml::MAX_BYTES >> 20
            ),
        });
    }
    Ok(root)
}

/// Pipeline inputs (`--input NAME=VALUE`) as the hash an `include:inputs` would be: each value
/// read as YAML, so `3` is a number, `true` a boolean and `[a, b]` a list.
fn pipeline_inputs(inputs: &[(String, String)]) -> Result<Option<Node>, PipelineError> {
    if inputs.is_empty() {
        return Ok(None);
    }
    let loc = Loc {
        file: "--input".into(),
        line: 1,
        column: 1,
    };
    let mut map = Map::default();
    for (name, text) in inputs {
        let mut budget = yaml::Budget::default();
        let value = match yaml::load_within(text, &format!("--input {name}"), &mut budget) {
            Ok(mut docs) if docs.len() == 1 && !text.trim().is_empty() => docs.remove(0),
            _ => Node {
                value: Value::Scalar {
                    text: text.clone(),
                    kind: yaml::ScalarKind::Str,
                },
                loc: loc.clone(),
            },
        };
        map.insert(
            yaml::Key {
                name: name.clone(),
                loc: loc.clone(),
            },
            value,
        );
    }
    Ok(Some(Node {
        value: Value::Map(map),
        loc,
    }))
}

/// A stable text of a node's value (no positions), to recognise repeated `inputs`.
fn canonical(node: &Node, out: &mut String) {
    match &node.value {
        Value::Scalar { text, kind } => {
            out.push_str(&format!("{kind:?}:{text:?}"));
        }
        Value::Seq(items) => {
            out.push('[');
            for item in items {
                canonical(item, out);
                out.push(',');
            }
            out.push(']');
        }
        Value::Map(map) => {
            out.push('{');
            for (k, v) in &map.entries {
                out.push_str(&format!("{:?}=", k.name));
                canonical(v, out);
                out.push(',');
            }
            out.push('}');
        }
        Value::Reference(path) => out.push_str(&format!("!reference{path:?}")),
    }
}

impl Includes<'_> {
    fn lookup(&self, key: &str) -> Option<String> {
        self.cx
            .variables
            .iter()
            .rev()
            .find(|v| v.key == key)
            .map(|v| v.value.clone())
    }

    fn expand(&self, text: &str) -> String {
        if text.contains('$') {
            crate::eval::expand(text, &|k| self.lookup(k))
        } else {
            text.to_owned()
        }
    }

    fn project_files(&self) -> &[String] {
        self.project_files.get_or_init(|| self.src.list())
    }

    fn read(
        &mut self,
        target: &Target,
        included_at: Option<&Loc>,
        integrity: Option<&str>,
    ) -> Result<(String, String), PipelineError> {
        match target {
            Target::Local(path) => match self.src.read(path) {
                Ok(text) => Ok((path.clone(), text)),
                Err(source) => Err(match included_at {
                    Some(loc) => PipelineError::Include {
                        at: loc.location(),
                        path: path.clone(),
                        source,
                    },
                    None => PipelineError::Read {
                        path: path.clone(),
                        source,
                    },
                }),
            },
            Target::External(external) => {
                let name = external.display_name();
                let at = included_at.map(Loc::location).unwrap_or_default();
                let text = self
                    .src
                    .fetch(external)
                    .map_err(|e| PipelineError::External {
                        at: at.clone(),
                        include: format!("{} `{name}`", external.kind()),
                        tried: e.tried,
                        hint: e.hint,
                    })?;
                if let Some(expected) = integrity {
                    let actual = sha256_integrity(&text);
                    if actual != expected {
                        return Err(PipelineError::External {
                            at,
                            include: format!("remote `{name}`"),
                            tried: format!("checking its integrity: it is {actual}"),
                            hint: format!(
                                "the file changed since `integrity: {expected}` was written; check it and update the hash"
                            ),
                        });
                    }
                }
                Ok((name, text))
            }
        }
    }

    fn load_file(
        &mut self,
        target: &Target,
        origin: &Origin,
        included_at: Option<&Loc>,
        inputs: Option<&Node>,
        integrity: Option<&str>,
    ) -> Result<Map, PipelineError> {
        let (name, text) = self.read(target, included_at, integrity)?;
        self.files.push(name.clone());
        let mut documents = yaml::load_within(&text, &name, &mut self.budget)?;
        let (header, mut body) = match documents.len() {
            1 => (None, documents.remove(0)),
            2 if documents[0]
                .as_map()
                .is_some_and(|m| m.get("spec").is_some()) =>
            {
                let body = documents.remove(1);
                (Some(documents.remove(0)), body)
            }
            _ => {
                return Err(PipelineError::invalid(
                    &documents[1].loc,
                    "a CI file holds one YAML document (two only with a `spec:` header first)"
                        .to_owned(),
                ));
            }
        };
        let at = included_at.cloned().unwrap_or_else(|| body.loc.clone());
        crate::inputs::apply(header.as_ref(), inputs, &mut body, &at, &|k| self.lookup(k))?;
        let Value::Map(mut map) = body.value else {
            return Err(PipelineError::invalid(
                &body.loc,
                format!("the CI file must be a hash, not {}", body.type_name()),
            ));
        };
        // A file of another project includes its `local` files from that project.
        let own_origin = match target {
            Target::Local(_) => origin.clone(),
            Target::External(e) => Origin::External(e.clone()),
        };
        let Some(include) = map.remove("include") else {
            return Ok(map);
        };
        self.chain.push(name);
        let mut merged = Map::default();
        for entry in self.entries(&include)? {
            if !self.rules_allow(&entry)? {
                continue;
            }
            let targets = self.resolve_target(&entry, &own_origin)?;
            for target in targets {
                let shown = match &target {
                    Target::Local(p) => p.clone(),
                    Target::External(e) => e.display_name(),
                };
                if self.chain.contains(&shown) {
                    return Err(PipelineError::invalid(
                        &entry.at,
                        format!("include cycle: `{shown}` includes itself"),
                    ));
                }
                let mut key = shown.clone();
                if let Some(inputs) = entry.inputs {
                    key.push('\0');
                    canonical(inputs, &mut key);
                }
                if !self.seen.insert(key) {
                    // GitLab reads a file included twice (with the same inputs) once.
                    continue;
                }
                self.loads += 1;
                if self.loads > MAX_INCLUDES {
                    return Err(PipelineError::invalid(
                        &entry.at,
                        format!("more than {MAX_INCLUDES} files are included"),
                    ));
                }
                if self.chain.len() >= MAX_INCLUDE_DEPTH {
                    return Err(PipelineError::invalid(
                        &entry.at,
                        format!("includes are nested more than {MAX_INCLUDE_DEPTH} levels deep"),
                    ));
                }
                let included = self.load_file(
                    &target,
                    &own_origin,
                    Some(&entry.at),
                    entry.inputs,
                    entry.integrity.as_deref(),
                )?;
                deep_merge(&mut merged, included);
            }
        }
        self.chain.pop();
        deep_merge(&mut merged, map);
        Ok(merged)
    }

    /// The entries of an `include:` value (a path, a hash, or a list of them).
    fn entries<'n>(&mut self, include: &'n Node) -> Result<Vec<Entry<'n>>, PipelineError> {
        let mut items = Vec::new();
        flatten_seq(include, &mut items);
        let mut out = Vec::new();
        for item in items {
            if let Some(s) = item.as_str() {
                let s = self.expand(s);
                let target = if s.starts_with("http://") || s.starts_with("https://") {
                    Target::External(External::Remote { url: s })
                } else {
                    Target::Local(s)
                };
                out.push(Entry {
                    target,
                    at: item.loc.clone(),
                    rules: None,
                    inputs: None,
                    integrity: None,
                });
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
            let text = |this: &Self, key: &str| -> Result<Option<String>, PipelineError> {
                match map.get(key) {
                    None => Ok(None),
                    Some(node) => match node.as_scalar() {
                        Some(s) if !s.is_empty() => Ok(Some(this.expand(s))),
                        _ => Err(PipelineError::invalid(
                            &node.loc,
                            format!("include:{key} must be a non-empty string"),
                        )),
                    },
                }
            };
            let kinds: Vec<&str> = [
                "local",
                "remote",
                "project",
                "template",
                "component",
                "artifact",
            ]
            .into_iter()
            .filter(|k| map.get(k).is_some())
            .collect();
            let allowed: &[&str] = match kinds.as_slice() {
                ["local"] => &["local"],
                ["remote"] => &["remote", "integrity"],
                ["project"] => &["project", "ref", "file"],
                ["template"] => &["template"],
                ["component"] => &["component"],
                ["artifact"] => {
                    return Err(PipelineError::invalid(
                        &item.loc,
                        "include:artifact is only valid in trigger:include (child pipelines)"
                            .to_owned(),
                    ));
                }
                [] => {
                    return Err(PipelineError::invalid(
                        &item.loc,
                        "include entry has no `local`, `remote`, `project`, `template` or `component` key"
                            .to_owned(),
                    ));
                }
                _ => {
                    return Err(PipelineError::invalid(
                        &item.loc,
                        format!(
                            "an include entry may use one of local, remote, project, template, component; this one uses {}",
                            kinds.join(", ")
                        ),
                    ));
                }
            };
            for key in map.keys() {
                if !allowed.contains(&key.name.as_str())
                    && key.name != "rules"
                    && key.name != "inputs"
                {
                    return Err(PipelineError::invalid(
                        &key.loc,
                        format!("include:{} does not take `{}`", kinds[0], key.name),
                    ));
                }
            }
            let rules = map.get("rules").filter(|n| !n.is_null());
            let inputs = map.get("inputs").filter(|n| !n.is_null());
            let mut push = |target: Target, at: &Loc, integrity: Option<String>| {
                out.push(Entry {
                    target,
                    at: at.clone(),
                    rules,
                    inputs,
                    integrity,
                });
            };
            match kinds[0] {
                "local" => {
                    let path = text(self, "local")?.unwrap_or_default();
                    push(Target::Local(path), &item.loc, None);
                }
                "remote" => {
                    let url = text(self, "remote")?.unwrap_or_default();
                    if !(url.starts_with("https://") || url.starts_with("http://")) {
                        return Err(PipelineError::invalid(
                            &item.loc,
                            format!("include:remote `{url}` must be an http(s) URL"),
                        ));
                    }
                    let integrity = text(self, "integrity")?;
                    push(
                        Target::External(External::Remote { url }),
                        &item.loc,
                        integrity,
                    );
                }
                "project" => {
                    let project = text(self, "project")?.unwrap_or_default();
                    let reference = text(self, "ref")?;
                    let Some(files) = map.get("file") else {
                        return Err(PipelineError::invalid(
                            &item.loc,
                            "include:project needs `file`".to_owned(),
                        ));
                    };
                    let mut file_nodes = Vec::new();
                    flatten_seq(files, &mut file_nodes);
                    for file in file_nodes {
                        let Some(path) = file.as_scalar() else {
                            return Err(PipelineError::invalid(
                                &file.loc,
                                "include:project:file entries must be paths".to_owned(),
                            ));
                        };
                        push(
                            Target::External(External::Project {
                                project: project.trim_matches('/').to_owned(),
                                reference: reference.clone(),
                                file: self.expand(path).trim_start_matches('/').to_owned(),
                            }),
                            &file.loc,
                            None,
                        );
                    }
                }
                "template" => {
                    let name = text(self, "template")?.unwrap_or_default();
                    push(
                        Target::External(External::Template { name }),
                        &item.loc,
                        None,
                    );
                }
                _ => {
                    let address = text(self, "component")?.unwrap_or_default();
                    push(
                        Target::External(External::Component { address }),
                        &item.loc,
                        None,
                    );
                }
            }
        }
        Ok(out)
    }

    /// `include:rules`: the first matching rule decides (`when: never` excludes); no match
    /// excludes; no rules include.
    fn rules_allow(&mut self, entry: &Entry<'_>) -> Result<bool, PipelineError> {
        let Some(rules) = entry.rules else {
            return Ok(true);
        };
        let mut items = Vec::new();
        flatten_seq(rules, &mut items);
        for rule in items {
            let Some(map) = rule.as_map() else {
                return Err(PipelineError::invalid(
                    &rule.loc,
                    format!("an include rule must be a hash, not {}", rule.type_name()),
                ));
            };
            let mut matches = true;
            let mut when_never = false;
            for (key, value) in &map.entries {
                if value.is_null() {
                    continue;
                }
                match key.name.as_str() {
                    "if" => {
                        let source = value.as_scalar().unwrap_or_default();
                        let expr = Expr::parse(source).map_err(|e| PipelineError::Expression {
                            at: value.loc.location(),
                            expression: crate::error::shorten(source),
                            message: e.to_string(),
                        })?;
                        if !expr.evaluate(&|k| self.lookup(k)) {
                            matches = false;
                        }
                    }
                    "exists" | "changes" => {
                        let paths_node =
                            value.as_map().and_then(|m| m.get("paths")).unwrap_or(value);
                        let mut nodes = Vec::new();
                        flatten_seq(paths_node, &mut nodes);
                        let patterns: Vec<String> = nodes
                            .iter()
                            .filter_map(|n| n.as_scalar())
                            .map(|p| self.expand(p))
                            .collect();
                        let hit = if key.name == "exists" {
                            any_glob(&patterns, self.project_files())
                        } else {
                            match self.cx.changed_files {
                                Some(changed) => any_glob(&patterns, changed),
                                None => true,
                            }
                        };
                        if !hit {
                            matches = false;
                        }
                    }
                    "when" => match value.as_scalar() {
                        Some("never") => when_never = true,
                        Some("always") => {}
                        _ => {
                            return Err(PipelineError::invalid(
                                &value.loc,
                                "include:rules:when must be `never` or `always`".to_owned(),
                            ));
                        }
                    },
                    other => {
                        return Err(PipelineError::invalid(
                            &key.loc,
                            format!("include rule contains unknown key `{other}`"),
                        ));
                    }
                }
            }
            if matches {
                return Ok(!when_never);
            }
        }
        Ok(false)
    }

    /// The files an entry stands for: one, or every project file a `local` glob matches.
    fn resolve_target(
        &self,
        entry: &Entry<'_>,
        origin: &Origin,
    ) -> Result<Vec<Target>, PipelineError> {
        let Target::Local(pattern) = &entry.target else {
            return Ok(vec![entry.target.clone()]);
        };
        let pattern = pattern.trim_start_matches("./").trim_start_matches('/');
        if let Origin::External(External::Project {
            project, reference, ..
        }) = origin
        {
            if pattern.contains(['*', '?', '[', '{']) {
                return Err(PipelineError::invalid(
                    &entry.at,
                    format!(
                        "include:local globs in a file of project `{project}` are not supported by runnel exec"
                    ),
                ));
            }
            return Ok(vec![Target::External(External::Project {
                project: project.clone(),
                reference: reference.clone(),
                file: pattern.to_owned(),
            })]);
        }
        if !pattern.contains(['*', '?', '[', '{']) {
            return Ok(vec![Target::Local(pattern.to_owned())]);
        }
        let glob = GlobBuilder::new(pattern)
            .literal_separator(true)
            .build()
            .map_err(|e| {
                PipelineError::invalid(&entry.at, format!("invalid include glob `{pattern}`: {e}"))
            })?
            .compile_matcher();
        let mut matched: Vec<String> = self
            .project_files()
            .iter()
            .map(|f| f.trim_start_matches('/'))
            .filter(|f| (f.ends_with(".yml") || f.ends_with(".yaml")) && glob.is_match(f))
            .map(str::to_owned)
            .collect();
        matched.sort();
        Ok(matched.into_iter().map(Target::Local).collect())
    }
}

/// Lists flattened (nested lists from anchors and `!reference`); anything else is one item.
fn flatten_seq<'a>(node: &'a Node, out: &mut Vec<&'a Node>) {
    match &node.value {
        Value::Seq(items) => {
            for item in items {
                flatten_seq(item, out);
            }
        }
        _ => out.push(node),
    }
}

/// Whether any glob of `patterns` matches any of `files`.
fn any_glob(patterns: &[String], files: &[String]) -> bool {
    patterns.iter().any(|p| {
        let Ok(glob) = GlobBuilder::new(p.trim_start_matches("./").trim_start_matches('/'))
            .literal_separator(true)
            .build()
        else {
            return false;
        };
        let matcher = glob.compile_matcher();
        files
            .iter()
            .any(|f| matcher.is_match(f.trim_start_matches("./").trim_start_matches('/')))
    })
}

/// `sha256-<base64>`, the form of `include:integrity`.
fn sha256_integrity(text: &str) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(text.as_bytes());
    format!(
        "sha256-{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
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
    let mut budget = yaml::Budget::default();
    for (_, node) in &mut root.entries {
        resolve_node(node, &snapshot, &mut Vec::new(), &mut budget)?;
    }
    Ok(())
}

fn resolve_node(
    node: &mut Node,
    snapshot: &Map,
    active: &mut Vec<Vec<String>>,
    budget: &mut yaml::Budget,
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
            let size = yaml::weight(found);
            if size.nodes > budget.nodes || size.bytes > budget.bytes {
                return Err(PipelineError::invalid(
                    &node.loc,
                    format!(
                        "!reference tags expand to more than {} nodes or {} MiB",
                        yaml::MAX_NODES,
                        yaml::MAX_BYTES >> 20
                    ),
                ));
            }
            budget.nodes -= size.nodes;
            budget.bytes -= size.bytes;
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
