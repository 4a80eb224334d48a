//! From the resolved YAML tree to the typed [`Pipeline`]: stages, `default` (and the deprecated
//! top-level defaults), global variables, `workflow`, and every job with all short forms
//! expanded.
//!
//! Unknown job keys are errors, as in GitLab. Keys GitLab knows but a local run cannot honour
//! (`trigger`, `secrets`, `release`, …) are warnings naming the key and its line, never silently
//! dropped. Rules are parsed here (so a bad expression fails the load) but evaluated in `eval`.

use std::time::Duration;

use crate::error::{PipelineError, Warning};
use crate::expr::{Expr, compile_regex};
use crate::model::{
    AllowFailure, Artifacts, Cache, CacheKey, CachePolicy, Condition, Environment, Image, Inherit,
    Job, Matrix, Need, Parallel, Pipeline, Refs, Retry, Rule, SaveWhen, VarDef, When, Workflow,
};
use crate::resolve::{self, warn};
use crate::source::SourceFiles;
use crate::yaml::{Loc, Map, Node, ScalarKind, Value};

const RESERVED: &[&str] = &[
    "image",
    "services",
    "stages",
    "types",
    "before_script",
    "after_script",
    "variables",
    "cache",
    "include",
    "workflow",
    "default",
    "spec",
];

/// Keys `default:` may hold; a job inherits each one it does not set itself.
const DEFAULT_KEYS: &[&str] = &[
    "after_script",
    "artifacts",
    "before_script",
    "cache",
    "hooks",
    "id_tokens",
    "identity",
    "image",
    "interruptible",
    "retry",
    "services",
    "tags",
    "timeout",
];

const JOB_KEYS: &[&str] = &[
    "after_script",
    "allow_failure",
    "artifacts",
    "before_script",
    "cache",
    "coverage",
    "dast_configuration",
    "dependencies",
    "environment",
    "except",
    "extends",
    "hooks",
    "id_tokens",
    "identity",
    "image",
    "inherit",
    "inputs",
    "interruptible",
    "manual_confirmation",
    "needs",
    "only",
    "pages",
    "parallel",
    "publish",
    "release",
    "resource_group",
    "retry",
    "rules",
    "run",
    "script",
    "secrets",
    "services",
    "stage",
    "start_in",
    "tags",
    "timeout",
    "trigger",
    "type",
    "variables",
    "when",
];

/// Job keys accepted but not honoured by a local run.
const UNSUPPORTED_JOB_KEYS: &[&str] = &[
    "dast_configuration",
    "id_tokens",
    "identity",
    "manual_confirmation",
    "pages",
    "publish",
    "release",
];

/// What a load needs besides the files: the variables that include paths and `include:rules`
/// see (predefined and user variables; later entries win) and the changed files for
/// `include:rules:changes` (`None`: unknown, so every `changes` matches).
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    pub variables: Vec<runnel_types::Variable>,
    pub changed_files: Option<Vec<String>>,
    /// Pipeline inputs for the root file's `spec:inputs` (`NAME`, value as YAML: `3`, `true`,
    /// `[a, b]` or text).
    pub inputs: Vec<(String, String)>,
}

/// Loads `path` (usually `.gitlab-ci.yml`) and everything it includes, with no variables.
pub fn load(src: &dyn SourceFiles, path: &str) -> Result<Pipeline, PipelineError> {
    load_with(src, path, &LoadOptions::default())
}

/// Loads `path` and everything it includes, evaluating include values and `include:rules`
/// with `options`.
pub fn load_with(
    src: &dyn SourceFiles,
    path: &str,
    options: &LoadOptions,
) -> Result<Pipeline, PipelineError> {
    let mut warnings = Vec::new();
    let mut files = Vec::new();
    let cx = resolve::IncludeContext {
        variables: &options.variables,
        changed_files: options.changed_files.as_deref(),
        inputs: &options.inputs,
    };
    let mut root = resolve::read_with_includes(src, path, cx, &mut files, &mut warnings)?;
    resolve::resolve_extends(&mut root)?;
    resolve::resolve_references(&mut root)?;
    let mut cx = Cx {
        warnings,
        job_names: Vec::new(),
        dependency_checks: Vec::new(),
    };
    let mut pipeline = cx.pipeline(&root, files)?;
    // Report in file order (root first, as read), then line and column.
    let rank = |file: &str| pipeline.files.iter().position(|f| f == file);
    let mut warnings = std::mem::take(&mut pipeline.warnings);
    warnings.sort_by_key(|w| (rank(&w.at.file), w.at.line, w.at.column));
    pipeline.warnings = dedup_warnings(warnings);
    Ok(pipeline)
}

/// One warning per place: a key that `default:`, `extends` or an anchor gives to many jobs is
/// reported once, with the number of jobs it concerns.
fn dedup_warnings(warnings: Vec<Warning>) -> Vec<Warning> {
    // The message without its `job `name`: ` prefix.
    fn topic(message: &str) -> &str {
        message
            .strip_prefix("job `")
            .and_then(|rest| rest.split_once("`: "))
            .map_or(message, |(_, topic)| topic)
    }
    let mut out: Vec<(Warning, usize)> = Vec::new();
    for warning in warnings {
        let same = |w: &Warning| w.at == warning.at && topic(&w.message) == topic(&warning.message);
        match out.iter_mut().find(|(w, _)| same(w)) {
            Some((_, count)) => *count += 1,
            None => out.push((warning, 1)),
        }
    }
    out.into_iter()
        .map(|(mut w, count)| {
            if count > 1 {
                w.message
                    .push_str(&format!(" (and {} more jobs)", count - 1));
            }
            w
        })
        .collect()
}

struct Cx {
    warnings: Vec<Warning>,
    /// Every visible top-level job key, for checking `dependencies`.
    job_names: Vec<String>,
    /// (job, dependency, where) to check against stages once every job is known.
    dependency_checks: Vec<(String, String, crate::error::Location)>,
}

fn err<T>(node: &Node, message: String) -> Result<T, PipelineError> {
    Err(PipelineError::invalid(&node.loc, message))
}

/// `None` for an absent or null key.
fn present<'a>(map: &'a Map, key: &str) -> Option<&'a Node> {
    map.get(key).filter(|n| !n.is_null())
}

impl Cx {
    fn warn(&mut self, loc: &Loc, message: String) {
        warn(&mut self.warnings, loc, message);
    }

    fn pipeline(&mut self, root: &Map, files: Vec<String>) -> Result<Pipeline, PipelineError> {
        let stages = self.stages(root)?;
        let variables = match present(root, "variables") {
            Some(node) => self.variables(node, "variables")?,
            None => Vec::new(),
        };
        let workflow = match present(root, "workflow") {
            Some(node) => self.workflow(node)?,
            None => Workflow::default(),
        };
        if let Some((key, _)) = root.get_entry("spec") {
            return Err(PipelineError::invalid(
                &key.loc,
                "`spec` must be in a header document of its own, followed by `---`".to_owned(),
            ));
        }

        // `default:`, completed by the deprecated top-level forms.
        let mut defaults = match present(root, "default") {
            Some(node) => match node.as_map() {
                Some(map) => {
                    for key in map.keys() {
                        if !DEFAULT_KEYS.contains(&key.name.as_str()) {
                            return Err(PipelineError::invalid(
                                &key.loc,
                                format!("default config contains unknown key `{}`", key.name),
                            ));
                        }
                    }
                    map.clone()
                }
                None => {
                    return err(
                        node,
                        format!("default must be a hash, not {}", node.type_name()),
                    );
                }
            },
            None => Map::default(),
        };
        for key in [
            "image",
            "services",
            "cache",
            "before_script",
            "after_script",
        ] {
            if let Some((k, v)) = root.get_entry(key)
                && defaults.get(key).is_none()
            {
                defaults.insert(k.clone(), v.clone());
            }
        }

        self.job_names = root
            .keys()
            .filter(|k| !RESERVED.contains(&k.name.as_str()) && !k.name.starts_with('.'))
            .map(|k| k.name.clone())
            .collect();
        let mut jobs = Vec::new();
        for (key, node) in &root.entries {
            if RESERVED.contains(&key.name.as_str()) || key.name.starts_with('.') {
                continue;
            }
            let Some(map) = node.as_map() else {
                return Err(PipelineError::invalid(
                    &key.loc,
                    format!(
                        "job `{}` must be a hash, not {}",
                        key.name,
                        node.type_name()
                    ),
                ));
            };
            if let Some(job) = self.job(&key.name, key, map, &defaults, &stages)? {
                jobs.push(job);
            }
        }
        // Names a need or a dependency may use: job names and the instance names of `parallel`
        // jobs (`build: [linux, amd64]`, `test 2/3`), each with the index of its job.
        let mut owner: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        for (index, job) in jobs.iter().enumerate() {
            owner.insert(job.name.clone(), index);
            if job.parallel.is_some() {
                for name in crate::eval::instance_names(job) {
                    owner.entry(name).or_insert(index);
                }
            }
        }
        let stage_index = |name: &str| {
            owner
                .get(name)
                .and_then(|&i| stages.iter().position(|s| *s == jobs[i].stage))
        };
        for job in &jobs {
            let all_needs = job.needs.iter().flatten().chain(
                job.rules
                    .iter()
                    .flatten()
                    .flat_map(|r| r.needs.iter().flatten()),
            );
            let mut seen: Vec<&str> = Vec::new();
            for need in job.needs.iter().flatten() {
                if seen.contains(&need.job.as_str()) {
                    return Err(PipelineError::Invalid {
                        at: need.at.clone(),
                        message: format!(
                            "job `{}` has the following needs duplicated: {}",
                            job.name, need.job
                        ),
                    });
                }
                seen.push(&need.job);
            }
            let own_stage = stage_index(&job.name);
            for need in all_needs {
                if stage_index(&need.job) > own_stage {
                    return Err(PipelineError::Invalid {
                        at: need.at.clone(),
                        message: format!(
                            "job `{}`: need `{}` is not defined in current or prior stages",
                            job.name, need.job
                        ),
                    });
                }
                if !need.optional && !owner.contains_key(&need.job) {
                    return Err(PipelineError::Invalid {
                        at: need.at.clone(),
                        message: format!(
                            "job `{}` needs `{}`, which is not defined",
                            job.name, need.job
                        ),
                    });
                }
            }
        }
        for (job, dep, at) in &self.dependency_checks {
            if !owner.contains_key(dep) && !self.job_names.contains(dep) {
                return Err(PipelineError::Invalid {
                    at: at.clone(),
                    message: format!("job `{job}` depends on `{dep}`, which is not defined"),
                });
            }
            if stage_index(dep) > stage_index(job) {
                return Err(PipelineError::Invalid {
                    at: at.clone(),
                    message: format!(
                        "job `{job}`: dependency `{dep}` is not defined in current or prior stages"
                    ),
                });
            }
        }
        check_needs_cycles(&jobs)?;
        Ok(Pipeline {
            stages,
            variables,
            workflow,
            jobs,
            hidden: root
                .keys()
                .filter(|k| k.name.starts_with('.'))
                .map(|k| k.name.clone())
                .collect(),
            warnings: std::mem::take(&mut self.warnings),
            files,
        })
    }

    fn stages(&mut self, root: &Map) -> Result<Vec<String>, PipelineError> {
        let node = present(root, "stages").or_else(|| present(root, "types"));
        let mut stages = match node {
            Some(node) => self.strings(node, "stages")?,
            None => vec!["build".to_owned(), "test".to_owned(), "deploy".to_owned()],
        };
        stages.retain(|s| s != ".pre" && s != ".post");
        stages.insert(0, ".pre".to_owned());
        stages.push(".post".to_owned());
        Ok(stages)
    }

    fn job(
        &mut self,
        name: &str,
        key: &crate::yaml::Key,
        raw: &Map,
        defaults: &Map,
        stages: &[String],
    ) -> Result<Option<Job>, PipelineError> {
        let unknown: Vec<&crate::yaml::Key> = raw
            .keys()
            .filter(|k| !JOB_KEYS.contains(&k.name.as_str()))
            .collect();
        if let Some(first) = unknown.first() {
            let names: Vec<&str> = unknown.iter().map(|k| k.name.as_str()).collect();
            return Err(PipelineError::invalid(
                &first.loc,
                format!("job `{name}` contains unknown keys: {}", names.join(", ")),
            ));
        }
        let (inherit_default, inherit_variables) = match present(raw, "inherit") {
            Some(node) => self.inherit(node)?,
            None => (Inherit::All, Inherit::All),
        };
        let mut map = raw.clone();
        for (k, v) in &defaults.entries {
            if map.get(&k.name).is_none() && inherit_default.allows(&k.name) {
                map.insert(k.clone(), v.clone());
            }
        }
        let map = &map;
        for (k, _) in &map.entries {
            if UNSUPPORTED_JOB_KEYS.contains(&k.name.as_str()) {
                self.warn(
                    &k.loc,
                    format!(
                        "job `{name}`: `{}` is not supported locally; ignored",
                        k.name
                    ),
                );
            }
        }
        if let Some(trigger) = map.get("trigger") {
            self.warn(
                &trigger.loc,
                format!("job `{name}`: trigger jobs (downstream pipelines) are not supported locally; job skipped"),
            );
            return Ok(None);
        }
        if let Some(inputs) = map.get("inputs") {
            return err(
                inputs,
                format!(
                    "job `{name}`: job `inputs` (`$[[ job.inputs.* ]]`) are not supported by runnel exec"
                ),
            );
        }
        if let Some(run) = map.get("run") {
            self.warn(
                &run.loc,
                format!("job `{name}`: `run` (CI steps) is not supported locally; job skipped"),
            );
            return Ok(None);
        }
        let script = match present(map, "script") {
            Some(node) => self.script(node, "script")?,
            None => Vec::new(),
        };
        if script.is_empty() {
            return Err(PipelineError::invalid(
                &key.loc,
                format!("job `{name}` config should implement the script: or trigger: keyword"),
            ));
        }
        let stage_node = present(map, "stage").or_else(|| present(map, "type"));
        let stage = match stage_node {
            Some(node) => self.string(node, "stage")?,
            None => "test".to_owned(),
        };
        if !stages.contains(&stage) {
            let at = stage_node.map_or(&key.loc, |n| &n.loc);
            return Err(PipelineError::invalid(
                at,
                format!(
                    "job `{name}`: chosen stage `{stage}` does not exist; available stages are {}",
                    stages.join(", ")
                ),
            ));
        }
        let rules = match present(map, "rules") {
            Some(node) => Some(self.rules(node)?),
            None => None,
        };
        let only = match present(map, "only") {
            Some(node) => Some(self.refs(node, "only")?),
            None => None,
        };
        let except = match present(map, "except") {
            Some(node) => Some(self.refs(node, "except")?),
            None => None,
        };
        if rules.is_some() && (only.is_some() || except.is_some()) {
            return Err(PipelineError::invalid(
                &key.loc,
                format!("job `{name}`: `only`/`except` may not be used with `rules`"),
            ));
        }
        let when = match present(map, "when") {
            Some(node) => Some(self.when(node)?),
            None => None,
        };
        let start_in = match present(map, "start_in") {
            Some(node) => Some(self.start_in(node)?),
            None => None,
        };
        if when == Some(When::Delayed) && start_in.is_none() {
            return Err(PipelineError::invalid(
                &key.loc,
                format!("job `{name}`: `when: delayed` needs `start_in`"),
            ));
        }
        let job = Job {
            name: name.to_owned(),
            at: key.loc.location(),
            stage,
            image: present(map, "image")
                .map(|n| self.image(n, false))
                .transpose()?,
            services: match present(map, "services") {
                Some(node) => self.services(node)?,
                None => Vec::new(),
            },
            before_script: match present(map, "before_script") {
                Some(node) => self.script(node, "before_script")?,
                None => Vec::new(),
            },
            script,
            hooks: match present(map, "hooks") {
                Some(node) => self.hooks(node)?,
                None => Vec::new(),
            },
            after_script: match present(map, "after_script") {
                Some(node) => self.script(node, "after_script")?,
                None => Vec::new(),
            },
            variables: match present(map, "variables") {
                Some(node) => self.variables(node, "variables")?,
                None => Vec::new(),
            },
            inherit_variables,
            rules,
            only,
            except,
            when,
            start_in,
            allow_failure: present(map, "allow_failure")
                .map(|n| self.allow_failure(n, true))
                .transpose()?,
            needs: present(map, "needs").map(|n| self.needs(n)).transpose()?,
            dependencies: present(map, "dependencies")
                .map(|n| self.dependencies(name, n))
                .transpose()?,
            artifacts: present(map, "artifacts")
                .map(|n| self.artifacts(n))
                .transpose()?,
            cache: match present(map, "cache") {
                Some(node) => self.caches(node)?,
                None => Vec::new(),
            },
            parallel: present(map, "parallel")
                .map(|n| self.parallel(n))
                .transpose()?,
            timeout: present(map, "timeout")
                .map(|n| {
                    let text = self.string(n, "timeout")?;
                    parse_duration(&text).ok_or_else(|| {
                        PipelineError::invalid(&n.loc, format!("invalid timeout `{text}`"))
                    })
                })
                .transpose()?,
            retry: present(map, "retry").map(|n| self.retry(n)).transpose()?,
            tags: match present(map, "tags") {
                Some(node) => self.strings(node, "tags")?,
                None => Vec::new(),
            },
            interruptible: present(map, "interruptible")
                .map(|n| self.bool(n, "interruptible"))
                .transpose()?
                .unwrap_or(false),
            coverage: present(map, "coverage")
                .map(|n| self.string(n, "coverage"))
                .transpose()?,
            environment: present(map, "environment")
                .map(|n| self.environment(n))
                .transpose()?,
            resource_group: present(map, "resource_group")
                .map(|n| self.string(n, "resource_group"))
                .transpose()?,
            secrets: match present(map, "secrets") {
                Some(node) => self.secrets(name, node)?,
                None => Vec::new(),
            },
        };
        Ok(Some(job))
    }

    // ---- scalar and list helpers ----

    fn string(&mut self, node: &Node, what: &str) -> Result<String, PipelineError> {
        match &node.value {
            Value::Scalar { text, kind } if *kind != ScalarKind::Null => Ok(text.clone()),
            _ => err(
                node,
                format!("{what} must be a string, not {}", node.type_name()),
            ),
        }
    }

    fn bool(&mut self, node: &Node, what: &str) -> Result<bool, PipelineError> {
        node.as_bool().map_or_else(
            || {
                err(
                    node,
                    format!("{what} must be a boolean, not {}", node.type_name()),
                )
            },
            Ok,
        )
    }

    /// A string or a list of strings; nested lists (from anchors or `!reference`) are
    /// flattened, as GitLab does.
    fn strings(&mut self, node: &Node, what: &str) -> Result<Vec<String>, PipelineError> {
        let mut flat = Vec::new();
        flatten(node, &mut flat);
        flat.into_iter().map(|i| self.string(i, what)).collect()
    }

    /// A script: a string, or a list of strings and nested lists (flattened).
    fn script(&mut self, node: &Node, what: &str) -> Result<Vec<String>, PipelineError> {
        fn walk(
            node: &Node,
            what: &str,
            depth: usize,
            out: &mut Vec<String>,
        ) -> Result<(), PipelineError> {
            match &node.value {
                Value::Seq(items) if depth < 10 => {
                    for item in items {
                        walk(item, what, depth + 1, out)?;
                    }
                    Ok(())
                }
                Value::Scalar { text, kind } if *kind != ScalarKind::Null => {
                    out.push(text.clone());
                    Ok(())
                }
                _ => err(
                    node,
                    format!(
                        "{what} must be a string or a nested list of strings, not {}",
                        node.type_name()
                    ),
                ),
            }
        }
        let mut out = Vec::new();
        walk(node, what, 0, &mut out)?;
        Ok(out)
    }

    fn variables(&mut self, node: &Node, what: &str) -> Result<Vec<VarDef>, PipelineError> {
        let Some(map) = node.as_map() else {
            return err(
                node,
                format!(
                    "{what} must be a hash of names and values, not {}",
                    node.type_name()
                ),
            );
        };
        let mut out = Vec::new();
        for (key, value) in &map.entries {
            let var = match &value.value {
                Value::Scalar { .. } => VarDef::new(key.name.clone(), scalar_value(value)),
                Value::Map(spec) => {
                    let mut var = VarDef::new(key.name.clone(), String::new());
                    for (k, v) in &spec.entries {
                        match k.name.as_str() {
                            "value" => {
                                var.value = match &v.value {
                                    Value::Scalar { .. } => scalar_value(v),
                                    _ => self.string(v, "variable value")?,
                                }
                            }
                            "description" => {
                                var.description = Some(self.string(v, "variable description")?)
                            }
                            "expand" => var.expand = self.bool(v, "variable expand")?,
                            "options" => {}
                            other => {
                                return Err(PipelineError::invalid(
                                    &k.loc,
                                    format!("variable `{}` has unknown key `{other}`", key.name),
                                ));
                            }
                        }
                    }
                    var
                }
                _ => {
                    return err(
                        value,
                        format!(
                            "variable `{}` must be a string or a hash, not {}",
                            key.name,
                            value.type_name()
                        ),
                    );
                }
            };
            out.retain(|v: &VarDef| v.key != var.key);
            out.push(var);
        }
        Ok(out)
    }

    /// `start_in`: a duration of at most one week, as GitLab requires.
    fn start_in(&mut self, node: &Node) -> Result<String, PipelineError> {
        let text = self.string(node, "start_in")?;
        match parse_duration(&text) {
            Some(d) if d <= Duration::from_secs(7 * 86_400) => Ok(text),
            Some(_) => err(node, format!("start_in `{text}` is longer than one week")),
            None => err(node, format!("start_in `{text}` is not a duration")),
        }
    }

    fn hooks(&mut self, node: &Node) -> Result<Vec<(String, Vec<String>)>, PipelineError> {
        let Some(map) = node.as_map() else {
            return err(
                node,
                format!("hooks must be a hash, not {}", node.type_name()),
            );
        };
        let mut out = Vec::new();
        for (k, v) in &map.entries {
            if k.name != "pre_get_sources_script" {
                return Err(PipelineError::invalid(
                    &k.loc,
                    format!("hooks contains unknown key `{}`", k.name),
                ));
            }
            out.push((
                k.name.clone(),
                self.script(v, "hooks:pre_get_sources_script")?,
            ));
        }
        Ok(out)
    }

    fn dependencies(&mut self, job: &str, node: &Node) -> Result<Vec<String>, PipelineError> {
        let mut items = Vec::new();
        flatten(node, &mut items);
        let mut out = Vec::new();
        for item in items {
            let dep = self.string(item, "dependencies")?;
            self.dependency_checks
                .push((job.to_owned(), dep.clone(), item.loc.location()));
            out.push(dep);
        }
        Ok(out)
    }

    /// `secrets:` names and their `file:` flags; a warning says how to provide them.
    fn secrets(&mut self, job: &str, node: &Node) -> Result<Vec<(String, bool)>, PipelineError> {
        let Some(map) = node.as_map() else {
            return err(
                node,
                format!("secrets must be a hash, not {}", node.type_name()),
            );
        };
        let mut out = Vec::new();
        for (key, value) in &map.entries {
            let file = value
                .as_map()
                .and_then(|m| m.get("file"))
                .and_then(Node::as_bool)
                .unwrap_or(true);
            out.push((key.name.clone(), file));
        }
        let names: Vec<&str> = out.iter().map(|(n, _)| n.as_str()).collect();
        self.warn(
            &node.loc,
            format!(
                "job `{job}`: `secrets` ({}) are not fetched locally; pass each with --secret NAME=VALUE or the job does not run",
                names.join(", ")
            ),
        );
        Ok(out)
    }

    fn when(&mut self, node: &Node) -> Result<When, PipelineError> {
        let text = self.string(node, "when")?;
        When::parse(&text).map_or_else(
            || err(node, format!("unknown `when` value `{text}`; expected on_success, on_failure, always, manual, delayed or never")),
            Ok,
        )
    }

    fn allow_failure(
        &mut self,
        node: &Node,
        exit_codes: bool,
    ) -> Result<AllowFailure, PipelineError> {
        if let Some(b) = node.as_bool() {
            return Ok(if b {
                AllowFailure::Yes
            } else {
                AllowFailure::No
            });
        }
        if exit_codes
            && let Some(map) = node.as_map()
            && let Some(codes) = map.get("exit_codes")
        {
            let items: Vec<&Node> = match &codes.value {
                Value::Seq(items) => items.iter().collect(),
                _ => vec![codes],
            };
            let mut out = Vec::new();
            for item in items {
                let code = item.as_int().and_then(|c| i32::try_from(c).ok());
                match code {
                    Some(c) => out.push(c),
                    None => {
                        return err(item, "allow_failure:exit_codes must be integers".to_owned());
                    }
                }
            }
            return Ok(AllowFailure::ExitCodes(out));
        }
        err(
            node,
            format!(
                "allow_failure must be a boolean or `exit_codes`, not {}",
                node.type_name()
            ),
        )
    }

    fn condition(&mut self, node: &Node) -> Result<Condition, PipelineError> {
        let source = self.string(node, "if")?;
        let expr = Expr::parse(&source).map_err(|e| PipelineError::Expression {
            at: node.loc.location(),
            expression: crate::error::shorten(&source),
            message: e.to_string(),
        })?;
        Ok(Condition {
            source,
            at: node.loc.location(),
            expr,
        })
    }

    fn paths_or_map(&mut self, node: &Node, what: &str) -> Result<Vec<String>, PipelineError> {
        if let Some(map) = node.as_map() {
            for (k, _) in &map.entries {
                if k.name != "paths" {
                    self.warn(
                        &k.loc,
                        format!("{what}:{} is not supported locally; ignored", k.name),
                    );
                }
            }
            return match present(map, "paths") {
                Some(paths) => self.strings(paths, what),
                None => err(node, format!("{what} needs `paths`")),
            };
        }
        self.strings(node, what)
    }

    fn rules(&mut self, node: &Node) -> Result<Vec<Rule>, PipelineError> {
        self.rules_of(node, false)
    }

    /// `rules` of a job, or of `workflow` (which may also hold `auto_cancel`).
    fn rules_of(&mut self, node: &Node, workflow: bool) -> Result<Vec<Rule>, PipelineError> {
        let mut flat = Vec::new();
        flatten(node, &mut flat);
        let mut out = Vec::new();
        for item in flat {
            let Some(map) = item.as_map() else {
                return err(
                    item,
                    format!("a rule must be a hash, not {}", item.type_name()),
                );
            };
            let mut rule = Rule::default();
            for (k, v) in &map.entries {
                if v.is_null() {
                    continue;
                }
                match k.name.as_str() {
                    "if" => rule.condition = Some(self.condition(v)?),
                    "changes" => rule.changes = Some(self.paths_or_map(v, "rules:changes")?),
                    "exists" => rule.exists = Some(self.paths_or_map(v, "rules:exists")?),
                    "when" => rule.when = Some(self.when(v)?),
                    "start_in" => rule.start_in = Some(self.start_in(v)?),
                    "allow_failure" => rule.allow_failure = Some(self.allow_failure(v, false)?),
                    "variables" => rule.variables = self.variables(v, "rules:variables")?,
                    "needs" => rule.needs = Some(self.needs(v)?),
                    "interruptible" if !workflow => {
                        self.warn(
                            &k.loc,
                            "rules:interruptible only matters on a GitLab server (auto-cancel); ignored locally".to_owned(),
                        );
                    }
                    "auto_cancel" if workflow => {
                        self.warn(
                            &k.loc,
                            "workflow:rules:auto_cancel only matters on a GitLab server; ignored locally".to_owned(),
                        );
                    }
                    other => {
                        return Err(PipelineError::invalid(
                            &k.loc,
                            format!("rule contains unknown key `{other}`"),
                        ));
                    }
                }
            }
            out.push(rule);
        }
        Ok(out)
    }

    fn workflow(&mut self, node: &Node) -> Result<Workflow, PipelineError> {
        let Some(map) = node.as_map() else {
            return err(
                node,
                format!("workflow must be a hash, not {}", node.type_name()),
            );
        };
        let mut wf = Workflow::default();
        for (k, v) in &map.entries {
            match k.name.as_str() {
                "name" => wf.name = Some(self.string(v, "workflow:name")?),
                "rules" => wf.rules = Some(self.rules_of(v, true)?),
                other => self.warn(
                    &k.loc,
                    format!("workflow:{other} is not supported locally; ignored"),
                ),
            }
        }
        Ok(wf)
    }

    fn refs(&mut self, node: &Node, what: &str) -> Result<Refs, PipelineError> {
        let mut refs = Refs {
            at: node.loc.location(),
            ..Refs::default()
        };
        let Some(map) = node.as_map() else {
            refs.refs = self.strings(node, what)?;
            self.check_refs(node, &refs.refs)?;
            return Ok(refs);
        };
        for (k, v) in &map.entries {
            match k.name.as_str() {
                "refs" => {
                    refs.refs = self.strings(v, what)?;
                    self.check_refs(v, &refs.refs)?;
                }
                "variables" => {
                    let items: Vec<&Node> = match &v.value {
                        Value::Seq(items) => items.iter().collect(),
                        _ => vec![v],
                    };
                    for item in items {
                        refs.variables.push(self.condition(item)?);
                    }
                }
                "changes" => refs.changes = Some(self.paths_or_map(v, &format!("{what}:changes"))?),
                other => self.warn(
                    &k.loc,
                    format!("{what}:{other} is not supported locally; ignored"),
                ),
            }
        }
        Ok(refs)
    }

    fn check_refs(&mut self, node: &Node, refs: &[String]) -> Result<(), PipelineError> {
        for r in refs {
            if r.starts_with('/') && r.len() > 1 {
                compile_regex(r).map_err(|message| PipelineError::invalid(&node.loc, message))?;
            }
        }
        Ok(())
    }

    fn inherit(&mut self, node: &Node) -> Result<(Inherit, Inherit), PipelineError> {
        let Some(map) = node.as_map() else {
            return err(node, "inherit must be a hash".to_owned());
        };
        let read = |cx: &mut Self, key: &str| -> Result<Inherit, PipelineError> {
            Ok(match present(map, key) {
                None => Inherit::All,
                Some(v) => match v.as_bool() {
                    Some(true) => Inherit::All,
                    Some(false) => Inherit::None,
                    None => Inherit::Only(cx.strings(v, &format!("inherit:{key}"))?),
                },
            })
        };
        Ok((read(self, "default")?, read(self, "variables")?))
    }

    fn image(&mut self, node: &Node, service: bool) -> Result<Image, PipelineError> {
        let what = if service { "service" } else { "image" };
        if let Some(name) = node.as_scalar() {
            return Ok(Image {
                name: name.to_owned(),
                ..Image::default()
            });
        }
        let Some(map) = node.as_map() else {
            return err(
                node,
                format!("{what} must be a name or a hash, not {}", node.type_name()),
            );
        };
        let mut image = Image::default();
        for (k, v) in &map.entries {
            if v.is_null() {
                continue;
            }
            match k.name.as_str() {
                "name" => image.name = self.string(v, what)?,
                "entrypoint" => image.entrypoint = Some(self.strings(v, "entrypoint")?),
                "command" if service => image.command = Some(self.strings(v, "command")?),
                "alias" if service => image.alias = Some(self.string(v, "alias")?),
                "variables" if service => {
                    image.variables = self.variables(v, "service variables")?
                }
                "pull_policy" => image.pull_policy = self.strings(v, "pull_policy")?,
                "docker" | "kubernetes" if v.as_map().is_some() => {
                    let executor = k.name.clone();
                    for (ok, ov) in &v.as_map().map(|m| m.entries.clone()).unwrap_or_default() {
                        let value = self.string(ov, &format!("{what}:{executor}:{}", ok.name))?;
                        match (executor.as_str(), ok.name.as_str()) {
                            ("docker", "platform") => image.docker_platform = Some(value),
                            ("docker", "user") => image.docker_user = Some(value),
                            ("kubernetes", "user") => image.kubernetes_user = Some(value),
                            _ => self.warn(
                                &ok.loc,
                                format!(
                                    "{what}:{executor}:{} is not supported locally; ignored",
                                    ok.name
                                ),
                            ),
                        }
                    }
                }
                "ports" => {
                    self.warn(
                        &k.loc,
                        format!("{what}:{} is not supported locally; ignored", k.name),
                    );
                }
                other => {
                    return Err(PipelineError::invalid(
                        &k.loc,
                        format!("{what} contains unknown key `{other}`"),
                    ));
                }
            }
        }
        if image.name.is_empty() {
            return err(node, format!("{what} needs a `name`"));
        }
        Ok(image)
    }

    fn services(&mut self, node: &Node) -> Result<Vec<Image>, PipelineError> {
        match &node.value {
            Value::Seq(_) => {
                let mut flat = Vec::new();
                flatten(node, &mut flat);
                flat.into_iter().map(|i| self.image(i, true)).collect()
            }
            _ => err(
                node,
                format!("services must be a list, not {}", node.type_name()),
            ),
        }
    }

    fn needs(&mut self, node: &Node) -> Result<Vec<Need>, PipelineError> {
        let mut items = Vec::new();
        flatten(node, &mut items);
        let mut out = Vec::new();
        for item in items {
            if let Some(job) = item.as_scalar() {
                out.push(Need {
                    job: job.to_owned(),
                    artifacts: true,
                    optional: false,
                    matrix: None,
                    at: item.loc.location(),
                });
                continue;
            }
            let Some(map) = item.as_map() else {
                return err(
                    item,
                    format!(
                        "a need must be a job name or a hash, not {}",
                        item.type_name()
                    ),
                );
            };
            if map.get("pipeline").is_some() || map.get("project").is_some() {
                self.warn(
                    &item.loc,
                    "cross-pipeline and cross-project needs are not supported locally; ignored"
                        .to_owned(),
                );
                continue;
            }
            let Some(job) = present(map, "job") else {
                return err(item, "a need needs a `job`".to_owned());
            };
            let mut need = Need {
                job: self.string(job, "needs:job")?,
                artifacts: true,
                optional: false,
                matrix: None,
                at: job.loc.location(),
            };
            for (k, v) in &map.entries {
                match k.name.as_str() {
                    "job" => {}
                    "artifacts" => need.artifacts = self.bool(v, "needs:artifacts")?,
                    "optional" => need.optional = self.bool(v, "needs:optional")?,
                    "parallel" => need.matrix = Some(self.matrix(v)?),
                    other => {
                        return Err(PipelineError::invalid(
                            &k.loc,
                            format!("need contains unknown key `{other}`"),
                        ));
                    }
                }
            }
            out.push(need);
        }
        Ok(out)
    }

    fn save_when(&mut self, node: &Node, what: &str) -> Result<SaveWhen, PipelineError> {
        let text = self.string(node, what)?;
        SaveWhen::parse(&text).map_or_else(
            || {
                err(
                    node,
                    format!("unknown {what} `{text}`; expected on_success, on_failure or always"),
                )
            },
            Ok,
        )
    }

    fn artifacts(&mut self, node: &Node) -> Result<Artifacts, PipelineError> {
        let Some(map) = node.as_map() else {
            return err(
                node,
                format!("artifacts must be a hash, not {}", node.type_name()),
            );
        };
        let mut a = Artifacts::default();
        for (k, v) in &map.entries {
            if v.is_null() {
                continue;
            }
            match k.name.as_str() {
                "name" => a.name = Some(self.string(v, "artifacts:name")?),
                "paths" => a.paths = self.strings(v, "artifacts:paths")?,
                "exclude" => a.exclude = self.strings(v, "artifacts:exclude")?,
                "untracked" => a.untracked = self.bool(v, "artifacts:untracked")?,
                "when" => a.when = self.save_when(v, "artifacts:when")?,
                "expire_in" => a.expire_in = Some(self.string(v, "artifacts:expire_in")?),
                "expose_as" => a.expose_as = Some(self.string(v, "artifacts:expose_as")?),
                "public" | "access" => {}
                "reports" => {
                    let Some(reports) = v.as_map() else {
                        return err(v, "artifacts:reports must be a hash".to_owned());
                    };
                    for (rk, rv) in &reports.entries {
                        let paths = match &rv.value {
                            Value::Map(m) => match present(m, "path") {
                                Some(p) => self.strings(p, "report path")?,
                                None => Vec::new(),
                            },
                            _ => self.strings(rv, "report paths")?,
                        };
                        a.reports.push((rk.name.clone(), paths));
                    }
                }
                other => {
                    return Err(PipelineError::invalid(
                        &k.loc,
                        format!("artifacts contains unknown key `{other}`"),
                    ));
                }
            }
        }
        Ok(a)
    }

    /// One cache or a list of them; nested lists (`cache: [*list_anchor]`) are flattened.
    fn caches(&mut self, node: &Node) -> Result<Vec<Cache>, PipelineError> {
        let mut flat = Vec::new();
        flatten(node, &mut flat);
        flat.into_iter().map(|i| self.cache(i)).collect()
    }

    fn cache(&mut self, node: &Node) -> Result<Cache, PipelineError> {
        let Some(map) = node.as_map() else {
            return err(
                node,
                format!("cache must be a hash, not {}", node.type_name()),
            );
        };
        let mut c = Cache::default();
        for (k, v) in &map.entries {
            if v.is_null() {
                continue;
            }
            match k.name.as_str() {
                "key" => {
                    c.key = match v.as_map() {
                        Some(km) => {
                            // `files_commits` keys on the files' last commit, which is what
                            // `files` is computed from here too.
                            let Some(files) =
                                present(km, "files").or_else(|| present(km, "files_commits"))
                            else {
                                return err(
                                    v,
                                    "cache:key needs `files` or `files_commits`".to_owned(),
                                );
                            };
                            CacheKey::Files {
                                files: self.strings(files, "cache:key:files")?,
                                prefix: present(km, "prefix")
                                    .map(|p| self.string(p, "cache:key:prefix"))
                                    .transpose()?,
                            }
                        }
                        None => CacheKey::Literal(self.string(v, "cache:key")?),
                    }
                }
                "paths" => c.paths = self.strings(v, "cache:paths")?,
                "policy" => {
                    let text = self.string(v, "cache:policy")?;
                    c.policy = match text.as_str() {
                        "pull-push" => CachePolicy::PullPush,
                        "pull" => CachePolicy::Pull,
                        "push" => CachePolicy::Push,
                        _ if text.contains('$') => {
                            self.warn(&v.loc, format!("cache:policy `{text}` is expanded at run time; pull-push assumed"));
                            CachePolicy::PullPush
                        }
                        _ => {
                            return err(
                                v,
                                format!(
                                    "unknown cache:policy `{text}`; expected pull-push, pull or push"
                                ),
                            );
                        }
                    }
                }
                "when" => c.when = self.save_when(v, "cache:when")?,
                "untracked" => c.untracked = self.bool(v, "cache:untracked")?,
                "fallback_keys" => c.fallback_keys = self.strings(v, "cache:fallback_keys")?,
                "unprotect" => {}
                other => {
                    return Err(PipelineError::invalid(
                        &k.loc,
                        format!("cache contains unknown key `{other}`"),
                    ));
                }
            }
        }
        Ok(c)
    }

    fn parallel(&mut self, node: &Node) -> Result<Parallel, PipelineError> {
        if let Some(n) = node.as_int() {
            return match u32::try_from(n) {
                Ok(n) if (1..=200).contains(&n) => Ok(Parallel::Count(n)),
                _ => err(node, format!("parallel must be between 1 and 200, not {n}")),
            };
        }
        let entries = self.matrix(node)?;
        Ok(Parallel::Matrix(entries))
    }

    /// `{matrix: [{VAR: value or [values]}, …]}`.
    fn matrix(&mut self, node: &Node) -> Result<Matrix, PipelineError> {
        let Some(matrix) = node.as_map().and_then(|m| m.get("matrix")) else {
            return err(
                node,
                "parallel must be a number or a hash with `matrix`".to_owned(),
            );
        };
        let mut flat = Vec::new();
        flatten(matrix, &mut flat);
        let mut out = Vec::new();
        for item in flat {
            let Some(map) = item.as_map() else {
                return err(
                    item,
                    "each parallel:matrix entry must be a hash of variables".to_owned(),
                );
            };
            let mut entry = Vec::new();
            for (k, v) in &map.entries {
                entry.push((k.name.clone(), self.strings(v, "parallel:matrix value")?));
            }
            out.push(entry);
        }
        // Counted before anything is expanded: a few variables of many values multiply.
        let total = out
            .iter()
            .fold(0usize, |sum, entry: &Vec<(String, Vec<String>)>| {
                let product = entry
                    .iter()
                    .fold(1usize, |p, (_, values)| p.saturating_mul(values.len()));
                sum.saturating_add(product)
            });
        if total > 200 {
            let shown = if total == usize::MAX {
                "more than 2^64".to_owned()
            } else {
                total.to_string()
            };
            return err(
                node,
                format!("parallel:matrix would create {shown} jobs; at most 200 are allowed"),
            );
        }
        Ok(out)
    }

    fn retry(&mut self, node: &Node) -> Result<Retry, PipelineError> {
        if let Some(n) = node.as_int() {
            return match u32::try_from(n) {
                Ok(max) if max <= 2 => Ok(Retry {
                    max,
                    ..Retry::default()
                }),
                _ => err(node, format!("retry must be 0, 1 or 2, not {n}")),
            };
        }
        let Some(map) = node.as_map() else {
            return err(node, "retry must be a number or a hash".to_owned());
        };
        let mut r = Retry::default();
        for (k, v) in &map.entries {
            match k.name.as_str() {
                "max" => {
                    r.max = v
                        .as_int()
                        .and_then(|n| u32::try_from(n).ok())
                        .filter(|n| *n <= 2)
                        .map_or_else(|| err(v, "retry:max must be 0, 1 or 2".to_owned()), Ok)?;
                }
                "when" => r.when = self.strings(v, "retry:when")?,
                "exit_codes" => {
                    let items: Vec<&Node> = match &v.value {
                        Value::Seq(items) => items.iter().collect(),
                        _ => vec![v],
                    };
                    for item in items {
                        match item.as_int().and_then(|c| i32::try_from(c).ok()) {
                            Some(c) => r.exit_codes.push(c),
                            None => {
                                return err(item, "retry:exit_codes must be integers".to_owned());
                            }
                        }
                    }
                }
                other => {
                    return Err(PipelineError::invalid(
                        &k.loc,
                        format!("retry contains unknown key `{other}`"),
                    ));
                }
            }
        }
        Ok(r)
    }

    fn environment(&mut self, node: &Node) -> Result<Environment, PipelineError> {
        if let Some(name) = node.as_scalar() {
            return Ok(Environment {
                name: name.to_owned(),
                ..Environment::default()
            });
        }
        let Some(map) = node.as_map() else {
            return err(node, "environment must be a name or a hash".to_owned());
        };
        Ok(Environment {
            name: present(map, "name")
                .map(|n| self.string(n, "environment:name"))
                .transpose()?
                .unwrap_or_default(),
            url: present(map, "url")
                .map(|n| self.string(n, "environment:url"))
                .transpose()?,
            action: present(map, "action")
                .map(|n| self.string(n, "environment:action"))
                .transpose()?,
        })
    }
}

/// Refuses a `needs` graph (job-level `needs`) with a cycle, naming the cycle.
fn check_needs_cycles(jobs: &[Job]) -> Result<(), PipelineError> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    fn visit(
        i: usize,
        jobs: &[Job],
        marks: &mut [Mark],
        path: &mut Vec<usize>,
    ) -> Result<(), PipelineError> {
        marks[i] = Mark::Active;
        path.push(i);
        for need in jobs[i].needs.iter().flatten() {
            let Some(j) = jobs.iter().position(|job| job.name == need.job) else {
                continue;
            };
            match marks[j] {
                Mark::Active => {
                    let start = path.iter().position(|&p| p == j).unwrap_or(0);
                    let mut names: Vec<&str> = path[start..]
                        .iter()
                        .map(|&p| jobs[p].name.as_str())
                        .collect();
                    names.push(&jobs[j].name);
                    return Err(PipelineError::Invalid {
                        at: need.at.clone(),
                        message: format!(
                            "circular dependency detected in `needs`: {}",
                            names.join(" -> ")
                        ),
                    });
                }
                Mark::New => visit(j, jobs, marks, path)?,
                Mark::Done => {}
            }
        }
        path.pop();
        marks[i] = Mark::Done;
        Ok(())
    }
    let mut marks = vec![Mark::New; jobs.len()];
    for i in 0..jobs.len() {
        if marks[i] == Mark::New {
            visit(i, jobs, &mut marks, &mut Vec::new())?;
        }
    }
    Ok(())
}

/// A scalar variable value as GitLab stores it (Ruby's `to_s` of what Psych read): booleans
/// become `true`/`false`, integers their decimal form, null the empty string.
fn scalar_value(node: &Node) -> String {
    match &node.value {
        Value::Scalar {
            kind: ScalarKind::Bool(b),
            ..
        } => b.to_string(),
        Value::Scalar {
            kind: ScalarKind::Null,
            ..
        } => String::new(),
        Value::Scalar {
            kind: ScalarKind::Int,
            text,
        } => node
            .as_int()
            .map_or_else(|| text.clone(), |n| n.to_string()),
        Value::Scalar { text, .. } => text.clone(),
        _ => String::new(),
    }
}

/// Flattens nested lists (as `!reference` in `rules` or `matrix` produces them).
fn flatten<'a>(node: &'a Node, out: &mut Vec<&'a Node>) {
    match &node.value {
        Value::Seq(items) => {
            for item in items {
                flatten(item, out);
            }
        }
        _ => out.push(node),
    }
}

/// Parses GitLab durations such as `1h 30m`, `3 hours`, `90 minutes`, `3600`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut total = 0f64;
    let mut number: Option<f64> = None;
    let mut seen = false;
    let lower = text.to_ascii_lowercase().replace(',', " ");
    let mut chars = lower.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c.is_ascii_digit() || c == '.' {
            if let Some(n) = number.take() {
                total += n;
            }
            let mut s = String::new();
            while let Some(&d) = chars.peek() {
                if d.is_ascii_digit() || d == '.' {
                    s.push(d);
                    chars.next();
                } else {
                    break;
                }
            }
            number = Some(s.parse().ok()?);
        } else if c.is_ascii_alphabetic() {
            let mut word = String::new();
            while let Some(&d) = chars.peek() {
                if d.is_ascii_alphabetic() {
                    word.push(d);
                    chars.next();
                } else {
                    break;
                }
            }
            if word == "and" {
                continue;
            }
            let unit = match word.as_str() {
                "s" | "sec" | "secs" | "second" | "seconds" => 1.0,
                "m" | "min" | "mins" | "minute" | "minutes" => 60.0,
                "h" | "hr" | "hrs" | "hour" | "hours" => 3600.0,
                "d" | "day" | "days" => 86400.0,
                "w" | "wk" | "wks" | "week" | "weeks" => 604_800.0,
                "mo" | "mos" | "month" | "months" => 2_592_000.0,
                "y" | "yr" | "yrs" | "year" | "years" => 31_557_600.0,
                _ => return None,
            };
            total += number.take()? * unit;
            seen = true;
        } else {
            return None;
        }
    }
    if let Some(n) = number {
        total += n;
        seen = true;
    }
    if !seen || !total.is_finite() || total <= 0.0 {
        return None;
    }
    // Clamped (review M1): a deadline computed from a huge timeout must not overflow.
    Duration::try_from_secs_f64(total)
        .ok()
        .map(runnel_types::clamp_duration)
}
