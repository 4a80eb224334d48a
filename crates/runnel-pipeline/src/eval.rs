//! Evaluation: given the variables of a pipeline run (predefined ones and user overrides), the
//! changed files and the project's files, decide which jobs run, with which `when`,
//! `allow_failure` and variables, and in which order.
//!
//! Order of work, as GitLab does it: `workflow:rules` (no match means no pipeline), then each job
//! is expanded by `parallel` (so rules see `CI_NODE_INDEX` and matrix variables), then `rules` (or
//! `only`/`except`) pick the first matching rule, then `needs` and `dependencies` are resolved
//! against the jobs that made it, then a DAG order is computed in which a job without `needs`
//! waits for every job of earlier stages.
//!
//! Variable precedence, lowest first: predefined, global `variables` (subject to `inherit`),
//! `workflow:rules:variables`, job `variables`, matrix values and `CI_NODE_*`, the matching
//! rule's `variables`, user overrides. This module runs nothing and reads nothing.

use std::collections::{BTreeSet, HashMap};

use globset::{GlobBuilder, GlobMatcher};
use runnel_types::Variable;

use crate::error::PipelineError;
use crate::expr::compile_regex;
use crate::model::{
    AllowFailure, Condition, Job, Matrix, Parallel, Pipeline, Refs, Rule, VarDef, When,
};

/// What a pipeline run is evaluated against.
#[derive(Clone, Debug, Default)]
pub struct Context {
    /// Predefined variables (`CI_COMMIT_BRANCH`, `CI_PIPELINE_SOURCE`, …): the lowest layer.
    pub predefined: Vec<Variable>,
    /// User-supplied variables (project/CLI): they override everything in the YAML.
    pub overrides: Vec<Variable>,
    /// Files changed by the push; `None` when unknown (then every `changes` matches, as GitLab
    /// does for pipelines without a push diff, such as new branches, tags and schedules).
    pub changed_files: Option<Vec<String>>,
    /// Every file of the project (for `rules:exists`), relative to its root.
    pub files: Vec<String>,
}

/// A job of the evaluated pipeline (one instance of a `parallel` job).
#[derive(Clone, Debug)]
pub struct PlannedJob {
    /// The instance name (`test 1/3`, `deploy: [aws, app]`, or the job name).
    pub name: String,
    /// The configured job this instance comes from.
    pub job: Job,
    pub stage: String,
    pub stage_index: usize,
    pub when: When,
    pub start_in: Option<String>,
    pub allow_failure: AllowFailure,
    /// Every variable of the job, in precedence order (later wins).
    pub variables: Vec<Variable>,
    /// `None` without `needs` (stage order); otherwise the needed instances.
    pub needs: Option<Vec<PlannedNeed>>,
    /// Instances whose artifacts this job downloads.
    pub dependencies: Vec<String>,
    /// Instances that must finish before this one starts.
    pub after: Vec<String>,
}

impl PlannedJob {
    /// The last variable named `key`.
    pub fn variable(&self, key: &str) -> Option<&str> {
        self.variables
            .iter()
            .rev()
            .find(|v| v.key == key)
            .map(|v| v.value.as_str())
    }
}

/// One resolved `needs` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedNeed {
    pub job: String,
    pub artifacts: bool,
}

/// Why GitLab would not create the pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotCreated {
    /// The file defines no (visible) job at all.
    Empty,
    /// No `workflow:rules` entry matched, or the matching one said `when: never`.
    Workflow,
    /// Rules left no job at all.
    NoJobs,
    /// Only `.pre`/`.post` jobs are left, and GitLab needs at least one other.
    OnlyPrePost,
}

impl NotCreated {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Empty => "the CI file defines no jobs (only hidden `.templates` or nothing)",
            Self::Workflow => "workflow:rules do not create this pipeline",
            Self::NoJobs => "no job matches its rules",
            Self::OnlyPrePost => "only .pre and .post jobs would run",
        }
    }
}

/// A job of the CI file that is not in the plan, and why (for `runnel exec --list`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Excluded {
    /// The instance name (`test 1/3`, `deploy: [aws]`), or the key of a hidden job.
    pub name: String,
    /// Its stage; `None` for hidden jobs, which are templates and belong to no stage.
    pub stage: Option<String>,
    /// Why it was left out, for a person: `rules: no rule matches`, `when: never`, …
    pub reason: String,
}

/// The evaluated pipeline.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// False when GitLab would not create the pipeline (then `jobs` is empty, and
    /// `not_created` says why).
    pub created: bool,
    pub not_created: Option<NotCreated>,
    pub name: Option<String>,
    pub stages: Vec<String>,
    /// Jobs in stage order, then file order.
    pub jobs: Vec<PlannedJob>,
    /// Indices into `jobs` in an order that respects `after` (a topological order).
    pub order: Vec<usize>,
    /// Jobs that `rules`, `only`/`except` or `when: never` left out, in stage then file order,
    /// followed by the hidden (`.name`) jobs. Kept when the pipeline is not created because no
    /// job is left, so a person can see why.
    pub excluded: Vec<Excluded>,
}

impl Plan {
    pub fn job(&self, name: &str) -> Option<&PlannedJob> {
        self.jobs.iter().find(|j| j.name == name)
    }

    /// A table of the jobs in stage order (what `runnel exec --list` shows): name, stage,
    /// when, allow_failure and needs.
    pub fn listing(&self) -> String {
        use std::fmt::Write as _;
        if let Some(reason) = self.not_created {
            return format!("no pipeline: {}\n", reason.as_str());
        }
        let rows: Vec<[String; 5]> = self
            .jobs
            .iter()
            .map(|j| {
                [
                    j.name.clone(),
                    j.stage.clone(),
                    match (&j.start_in, j.when) {
                        (Some(s), When::Delayed) => format!("delayed ({s})"),
                        (_, w) => w.as_str().to_owned(),
                    },
                    match &j.allow_failure {
                        AllowFailure::No => "false".to_owned(),
                        AllowFailure::Yes => "true".to_owned(),
                        AllowFailure::ExitCodes(c) => {
                            let c: Vec<String> = c.iter().map(ToString::to_string).collect();
                            format!("exit codes {}", c.join(","))
                        }
                    },
                    match &j.needs {
                        None => String::new(),
                        Some(n) => {
                            let n: Vec<&str> = n.iter().map(|n| n.job.as_str()).collect();
                            format!("[{}]", n.join(", "))
                        }
                    },
                ]
            })
            .collect();
        let header = ["name", "stage", "when", "allow_failure", "needs"];
        let mut widths = header.map(|h| h.chars().count());
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let line = |out: &mut String, cells: [&str; 5]| {
            let mut text = String::new();
            for (i, cell) in cells.iter().enumerate() {
                if i + 1 == cells.len() {
                    text.push_str(cell);
                } else {
                    write!(text, "{cell:<width$}  ", width = widths[i]).ok();
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        };
        line(&mut out, header);
        for row in &rows {
            line(&mut out, [&row[0], &row[1], &row[2], &row[3], &row[4]]);
        }
        out
    }

    /// Job names in DAG order.
    pub fn ordered_names(&self) -> Vec<&str> {
        self.order
            .iter()
            .map(|&i| self.jobs[i].name.as_str())
            .collect()
    }
}

/// Variables as a lookup table, with `$VAR` expansion.
struct Scope {
    values: HashMap<String, (String, bool)>,
}

impl Scope {
    fn new(layers: &[&[Variable]]) -> Self {
        let mut values = HashMap::new();
        for layer in layers {
            for v in layer.iter() {
                values.insert(v.key.clone(), (v.value.clone(), v.raw));
            }
        }
        Self { values }
    }

    fn get(&self, key: &str) -> Option<String> {
        let (value, raw) = self.values.get(key)?;
        Some(if *raw {
            value.clone()
        } else {
            expand(value, &|k| {
                self.values.get(k).map(|(v, raw)| {
                    if *raw {
                        v.clone()
                    } else {
                        expand(v, &|_| None)
                    }
                })
            })
        })
    }
}

/// Expands `$VAR` and `${VAR}` (unknown ones become empty); `$$` is a literal `$`.
pub fn expand(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
            continue;
        }
        let (name, tail) = if let Some(inner) = after.strip_prefix('{') {
            match inner.find('}') {
                Some(end) => (&inner[..end], &inner[end + 1..]),
                None => ("", after),
            }
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        if name.is_empty() {
            out.push('$');
            rest = after;
            continue;
        }
        out.push_str(&lookup(name).unwrap_or_default());
        rest = tail;
    }
    out.push_str(rest);
    out
}

fn to_variables(defs: &[VarDef]) -> Vec<Variable> {
    defs.iter()
        .map(|d| {
            let mut v = Variable::new(d.key.clone(), d.value.clone());
            v.raw = !d.expand;
            v
        })
        .collect()
}

fn glob(pattern: &str) -> Option<GlobMatcher> {
    GlobBuilder::new(pattern.trim_start_matches("./").trim_start_matches('/'))
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .ok()
        .map(|g| g.compile_matcher())
}

/// Whether any of `patterns` (expanded with `scope`) matches any of `files`. A pattern that is a
/// directory-less plain path also matches exactly.
fn any_match(patterns: &[String], files: &[String], scope: &Scope) -> bool {
    patterns.iter().any(|p| {
        let p = expand(p, &|k| scope.get(k));
        let Some(matcher) = glob(&p) else {
            return false;
        };
        files
            .iter()
            .any(|f| matcher.is_match(f.trim_start_matches("./").trim_start_matches('/')))
    })
}

fn condition_holds(c: &Condition, scope: &Scope) -> bool {
    c.expr.evaluate(&|k| scope.get(k))
}

fn rule_matches(rule: &Rule, scope: &Scope, cx: &Context) -> bool {
    if let Some(c) = &rule.condition
        && !condition_holds(c, scope)
    {
        return false;
    }
    if let Some(changes) = &rule.changes
        && let Some(changed) = &cx.changed_files
        && !any_match(changes, changed, scope)
    {
        return false;
    }
    if let Some(exists) = &rule.exists
        && !any_match(exists, &cx.files, scope)
    {
        return false;
    }
    true
}

fn ref_matches(pattern: &str, scope: &Scope) -> bool {
    let source = scope.get("CI_PIPELINE_SOURCE").unwrap_or_default();
    let tag = scope.get("CI_COMMIT_TAG").filter(|t| !t.is_empty());
    let is_mr = source == "merge_request_event";
    let keyword_source = match pattern {
        "branches" => return tag.is_none() && !is_mr,
        "tags" => return tag.is_some(),
        "merge_requests" => "merge_request_event",
        "api" => "api",
        "chat" => "chat",
        "external" => "external",
        "external_pull_requests" => "external_pull_request_event",
        "pipelines" => {
            return source == "pipeline" || source == "parent_pipeline";
        }
        "pushes" => "push",
        "schedules" => "schedule",
        "triggers" => "trigger",
        "web" => "web",
        _ => "",
    };
    if !keyword_source.is_empty() {
        return source == keyword_source;
    }
    let ref_name = tag
        .or_else(|| scope.get("CI_COMMIT_REF_NAME"))
        .or_else(|| scope.get("CI_COMMIT_BRANCH"))
        .unwrap_or_default();
    let pattern = pattern.split('@').next().unwrap_or(pattern);
    if pattern.starts_with('/') && pattern.len() > 1 {
        return compile_regex(pattern).is_ok_and(|r| r.is_match(&ref_name));
    }
    pattern == ref_name
}

/// `only`/`except` keys: every present key must have a matching entry.
fn refs_match(refs: &Refs, scope: &Scope, cx: &Context) -> bool {
    let refs_ok = refs.refs.is_empty() || refs.refs.iter().any(|r| ref_matches(r, scope));
    let vars_ok =
        refs.variables.is_empty() || refs.variables.iter().any(|c| condition_holds(c, scope));
    let changes_ok = match (&refs.changes, &cx.changed_files) {
        (Some(changes), Some(changed)) => any_match(changes, changed, scope),
        _ => true,
    };
    refs_ok && vars_ok && changes_ok
}

/// One parallel instance before rules: name and its extra variables.
fn instances(job: &Job) -> Vec<(String, Vec<VarDef>)> {
    match &job.parallel {
        // GitLab sets `CI_NODE_TOTAL` to 1 for every job; `CI_NODE_INDEX` only with `parallel`.
        None => vec![(job.name.clone(), vec![VarDef::new("CI_NODE_TOTAL", "1")])],
        Some(Parallel::Count(n)) => (1..=*n)
            .map(|i| {
                (
                    format!("{} {i}/{n}", job.name),
                    vec![
                        VarDef::new("CI_NODE_INDEX", i.to_string()),
                        VarDef::new("CI_NODE_TOTAL", n.to_string()),
                    ],
                )
            })
            .collect(),
        Some(Parallel::Matrix(entries)) => {
            let combos = matrix_combinations(entries);
            let total = combos.len();
            combos
                .into_iter()
                .enumerate()
                .map(|(i, combo)| {
                    let name = matrix_name(&job.name, &combo);
                    let mut vars: Vec<VarDef> = combo
                        .iter()
                        .map(|(k, v)| VarDef::new(k.clone(), v.clone()))
                        .collect();
                    vars.push(VarDef::new("CI_NODE_INDEX", (i + 1).to_string()));
                    vars.push(VarDef::new("CI_NODE_TOTAL", total.to_string()));
                    (name, vars)
                })
                .collect()
        }
    }
}

/// The instance names of a job (`test 1/3`, `build: [linux, amd64]`; the job's own name
/// without `parallel`).
pub(crate) fn instance_names(job: &Job) -> Vec<String> {
    instances(job).into_iter().map(|(name, _)| name).collect()
}

/// Every combination of a `parallel:matrix`, in GitLab's order: entries in order, and within
/// an entry the first variable varies slowest.
pub(crate) fn matrix_combinations(entries: &Matrix) -> Vec<Vec<(String, String)>> {
    let mut combos: Vec<Vec<(String, String)>> = Vec::new();
    for entry in entries {
        let mut partial: Vec<Vec<(String, String)>> = vec![Vec::new()];
        for (key, values) in entry {
            let mut next = Vec::new();
            for prefix in &partial {
                for value in values {
                    let mut p = prefix.clone();
                    p.push((key.clone(), value.clone()));
                    next.push(p);
                }
            }
            partial = next;
        }
        combos.extend(partial);
    }
    combos
}

/// `name: [value1, value2]`, as GitLab names matrix jobs.
fn matrix_name(base: &str, combo: &[(String, String)]) -> String {
    let values: Vec<&str> = combo.iter().map(|(_, v)| v.as_str()).collect();
    format!("{base}: [{}]", values.join(", "))
}

/// Replaces `$[[ matrix.NAME ]]` with the needing instance's value of `NAME`.
fn matrix_expression(value: &str, job: &PlannedJob) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("$[[") {
        let Some(len) = rest[start..].find("]]") else {
            break;
        };
        out.push_str(&rest[..start]);
        let inner = rest[start + 3..start + len].trim();
        match inner.strip_prefix("matrix.") {
            Some(name) => out.push_str(job.variable(name.trim()).unwrap_or_default()),
            None => out.push_str(&rest[start..start + len + 2]),
        }
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    out
}

/// Evaluates `pipeline` for one run.
pub fn evaluate(pipeline: &Pipeline, cx: &Context) -> Result<Plan, PipelineError> {
    let globals = to_variables(&pipeline.variables);
    if pipeline.jobs.is_empty() {
        return Ok(Plan {
            created: false,
            not_created: Some(NotCreated::Empty),
            name: pipeline.workflow.name.clone(),
            stages: pipeline.stages.clone(),
            excluded: hidden_jobs(pipeline).collect(),
            ..Plan::default()
        });
    }
    let mut workflow_vars = Vec::new();
    if let Some(rules) = &pipeline.workflow.rules {
        let scope = Scope::new(&[&cx.predefined, &globals, &cx.overrides]);
        let matched = rules.iter().find(|r| rule_matches(r, &scope, cx));
        match matched {
            Some(rule) if rule.when != Some(When::Never) => {
                workflow_vars = to_variables(&rule.variables);
            }
            _ => {
                return Ok(Plan {
                    created: false,
                    not_created: Some(NotCreated::Workflow),
                    name: workflow_name(pipeline, cx, &globals, &[]),
                    stages: pipeline.stages.clone(),
                    ..Plan::default()
                });
            }
        }
    }

    let mut planned: Vec<(PlannedJob, Option<Vec<crate::model::Need>>, usize)> = Vec::new();
    let mut excluded: Vec<(usize, usize, Excluded)> = Vec::new();
    for (file_index, job) in pipeline.jobs.iter().enumerate() {
        let stage_index = pipeline
            .stages
            .iter()
            .position(|s| *s == job.stage)
            .unwrap_or(0);
        let inherited: Vec<Variable> = globals
            .iter()
            .chain(workflow_vars.iter())
            .filter(|v| job.inherit_variables.allows(&v.key))
            .cloned()
            .collect();
        let job_vars = to_variables(&job.variables);
        for (name, extra) in instances(job) {
            let mut exclude = |name: String, reason: String| {
                excluded.push((
                    stage_index,
                    file_index,
                    Excluded {
                        name,
                        stage: Some(job.stage.clone()),
                        reason,
                    },
                ));
            };
            let extra = to_variables(&extra);
            let scope = Scope::new(&[&cx.predefined, &inherited, &job_vars, &extra, &cx.overrides]);
            let (when, start_in, allow_failure, rule_vars, needs) = match &job.rules {
                Some(rules) => {
                    let Some((index, rule)) = rules
                        .iter()
                        .enumerate()
                        .find(|(_, r)| rule_matches(r, &scope, cx))
                    else {
                        exclude(name, no_rule_matches(rules.len()));
                        continue;
                    };
                    let when = rule.when.or(job.when).unwrap_or_default();
                    if when == When::Never {
                        let reason = match rule.when {
                            Some(_) => {
                                format!("rules: {} says `when: never`", describe_rule(index, rule))
                            }
                            None => format!(
                                "`when: never` (rules: {} matches)",
                                describe_rule(index, rule)
                            ),
                        };
                        exclude(name, reason);
                        continue;
                    }
                    let allow = rule
                        .allow_failure
                        .clone()
                        .or_else(|| job.allow_failure.clone())
                        .unwrap_or(AllowFailure::No);
                    (
                        when,
                        rule.start_in.clone().or_else(|| job.start_in.clone()),
                        allow,
                        to_variables(&rule.variables),
                        rule.needs.clone().or_else(|| job.needs.clone()),
                    )
                }
                None => {
                    let only = job.only.clone().unwrap_or_else(|| Refs {
                        refs: vec!["branches".to_owned(), "tags".to_owned()],
                        ..Refs::default()
                    });
                    if !refs_match(&only, &scope, cx) {
                        let reason = match &job.only {
                            Some(only) => format!("only: {} does not match", describe_refs(only)),
                            None => "only: branches, tags (the default) does not match".to_owned(),
                        };
                        exclude(name, reason);
                        continue;
                    }
                    if let Some(except) = &job.except
                        && refs_match(except, &scope, cx)
                    {
                        exclude(name, format!("except: {} matches", describe_refs(except)));
                        continue;
                    }
                    let when = job.when.unwrap_or_default();
                    if when == When::Never {
                        exclude(name, "`when: never`".to_owned());
                        continue;
                    }
                    let allow = job
                        .allow_failure
                        .clone()
                        .unwrap_or(if when == When::Manual {
                            AllowFailure::Yes
                        } else {
                            AllowFailure::No
                        });
                    (
                        when,
                        job.start_in.clone(),
                        allow,
                        Vec::new(),
                        job.needs.clone(),
                    )
                }
            };
            let mut variables = cx.predefined.clone();
            variables.push(Variable::new("CI_JOB_NAME", name.clone()));
            variables.push(Variable::new("CI_JOB_STAGE", job.stage.clone()));
            if let Some(env) = &job.environment {
                let full = Scope::new(&[
                    &cx.predefined,
                    &inherited,
                    &job_vars,
                    &extra,
                    &rule_vars,
                    &cx.overrides,
                ]);
                let lookup = |k: &str| full.get(k);
                variables.push(Variable::new(
                    "CI_ENVIRONMENT_NAME",
                    expand(&env.name, &lookup),
                ));
                if let Some(url) = &env.url {
                    variables.push(Variable::new("CI_ENVIRONMENT_URL", expand(url, &lookup)));
                }
                variables.push(Variable::new(
                    "CI_ENVIRONMENT_ACTION",
                    env.action.clone().unwrap_or_else(|| "start".to_owned()),
                ));
            }
            for layer in [&inherited, &job_vars, &extra, &rule_vars, &cx.overrides] {
                variables.extend(layer.iter().cloned());
            }
            // GitLab refuses to create a pipeline whose job variables reference each other in
            // a cycle.
            crate::vars::check_variable_cycles(&variables).map_err(|message| {
                PipelineError::Evaluate {
                    message: format!("job `{name}`: {message}"),
                }
            })?;
            planned.push((
                PlannedJob {
                    name,
                    job: job.clone(),
                    stage: job.stage.clone(),
                    stage_index,
                    when,
                    start_in,
                    allow_failure,
                    variables,
                    needs: None,
                    dependencies: Vec::new(),
                    after: Vec::new(),
                },
                needs,
                file_index,
            ));
        }
    }
    planned.sort_by_key(|(j, _, file_index)| (j.stage_index, *file_index));
    excluded.sort_by_key(|(stage, file, _)| (*stage, *file));
    let excluded: Vec<Excluded> = excluded
        .into_iter()
        .map(|(_, _, e)| e)
        .chain(hidden_jobs(pipeline))
        .collect();
    let name = workflow_name(pipeline, cx, &globals, &workflow_vars);

    // Instances of each configured job that made it into the pipeline.
    let mut by_base: HashMap<String, Vec<String>> = HashMap::new();
    for (j, _, _) in &planned {
        by_base
            .entry(j.job.name.clone())
            .or_default()
            .push(j.name.clone());
    }
    let stage_of: HashMap<String, usize> = planned
        .iter()
        .map(|(j, _, _)| (j.name.clone(), j.stage_index))
        .collect();
    let names_in_order: Vec<String> = planned.iter().map(|(j, _, _)| j.name.clone()).collect();
    let resolve = |base: &str| -> Option<Vec<String>> {
        by_base
            .get(base)
            .cloned()
            .or_else(|| stage_of.contains_key(base).then(|| vec![base.to_owned()]))
    };

    // `planned` is sorted by stage, so the jobs of earlier stages are a prefix of it.
    let stage_starts: HashMap<usize, usize> = planned
        .iter()
        .enumerate()
        .rev()
        .map(|(i, (j, _, _))| (j.stage_index, i))
        .collect();
    let mut jobs = Vec::with_capacity(planned.len());
    for (mut j, needs, _) in planned {
        let prefix = stage_starts.get(&j.stage_index).copied().unwrap_or(0);
        let earlier: Vec<String> = names_in_order[..prefix].to_vec();
        match needs {
            Some(needs) => {
                let mut resolved = Vec::new();
                for need in &needs {
                    let instances = match &need.matrix {
                        None => resolve(&need.job),
                        Some(entries) => {
                            let wanted: Vec<String> = matrix_combinations(entries)
                                .into_iter()
                                .map(|combo| {
                                    let combo: Vec<(String, String)> = combo
                                        .into_iter()
                                        .map(|(k, v)| {
                                            let v = matrix_expression(&v, &j);
                                            (k, v)
                                        })
                                        .collect();
                                    matrix_name(&need.job, &combo)
                                })
                                .collect();
                            let found: Vec<String> = resolve(&need.job)
                                .unwrap_or_default()
                                .into_iter()
                                .filter(|n| wanted.contains(n))
                                .collect();
                            (!found.is_empty()).then_some(found)
                        }
                    };
                    match instances {
                        Some(instances) => {
                            resolved.extend(instances.into_iter().map(|job| PlannedNeed {
                                job,
                                artifacts: need.artifacts,
                            }))
                        }
                        None if need.optional => {}
                        None => {
                            return Err(PipelineError::Evaluate {
                                message: format!(
                                    "job `{}` needs `{}`, but `{}` is not in the pipeline (its rules left it out); mark the need `optional: true` or fix the rules",
                                    j.name, need.job, need.job
                                ),
                            });
                        }
                    }
                }
                j.after = resolved.iter().map(|n| n.job.clone()).collect();
                j.dependencies = match &j.job.dependencies {
                    Some(deps) => deps.iter().filter_map(|d| resolve(d)).flatten().collect(),
                    None => resolved
                        .iter()
                        .filter(|n| n.artifacts)
                        .map(|n| n.job.clone())
                        .collect(),
                };
                j.needs = Some(resolved);
            }
            None => {
                j.dependencies = match &j.job.dependencies {
                    Some(deps) => deps
                        .iter()
                        .filter_map(|d| resolve(d))
                        .flatten()
                        .filter(|n| earlier.contains(n))
                        .collect(),
                    None => earlier.clone(),
                };
                j.after = earlier;
            }
        }
        jobs.push(j);
    }
    let not_created = if jobs.is_empty() {
        Some(NotCreated::NoJobs)
    } else if jobs.iter().all(|j| j.stage == ".pre" || j.stage == ".post") {
        Some(NotCreated::OnlyPrePost)
    } else {
        None
    };
    if not_created.is_some() {
        return Ok(Plan {
            created: false,
            not_created,
            name,
            stages: pipeline.stages.clone(),
            excluded,
            ..Plan::default()
        });
    }
    let order = topo_order(&jobs)?;
    Ok(Plan {
        created: true,
        not_created: None,
        name,
        stages: pipeline.stages.clone(),
        jobs,
        order,
        excluded,
    })
}

/// The hidden (`.name`) jobs, as exclusions.
fn hidden_jobs(pipeline: &Pipeline) -> impl Iterator<Item = Excluded> + '_ {
    pipeline.hidden.iter().map(|name| Excluded {
        name: name.clone(),
        stage: None,
        reason: "hidden job (its name starts with `.`): a template that never runs".to_owned(),
    })
}

/// `workflow:name` with the pipeline's variables expanded, as GitLab shows it.
fn workflow_name(
    pipeline: &Pipeline,
    cx: &Context,
    globals: &[Variable],
    workflow_vars: &[Variable],
) -> Option<String> {
    let name = pipeline.workflow.name.as_ref()?;
    let scope = Scope::new(&[&cx.predefined, globals, workflow_vars, &cx.overrides]);
    Some(expand(name, &|k| scope.get(k)))
}

/// `rules: no rule matches` (with the count when there are several).
fn no_rule_matches(count: usize) -> String {
    match count {
        0 => "rules: the list is empty".to_owned(),
        1 => "rules: the rule does not match".to_owned(),
        n => format!("rules: none of the {n} rules matches"),
    }
}

/// `rule 2 (if: $CI_COMMIT_TAG)`: a rule as a person finds it in the file.
fn describe_rule(index: usize, rule: &Rule) -> String {
    let what = if let Some(c) = &rule.condition {
        format!("if: {}", c.source)
    } else if rule.changes.is_some() {
        "changes".to_owned()
    } else if rule.exists.is_some() {
        "exists".to_owned()
    } else {
        "without conditions".to_owned()
    };
    format!("rule {} ({what})", index + 1)
}

/// `[main, /^release-/], variables` : the keys of an `only`/`except`.
fn describe_refs(refs: &Refs) -> String {
    let mut parts = Vec::new();
    if !refs.refs.is_empty() {
        parts.push(format!("[{}]", refs.refs.join(", ")));
    }
    if !refs.variables.is_empty() {
        let vars: Vec<&str> = refs.variables.iter().map(|c| c.source.as_str()).collect();
        parts.push(format!("variables [{}]", vars.join(", ")));
    }
    if refs.changes.is_some() {
        parts.push("changes".to_owned());
    }
    if parts.is_empty() {
        "(empty)".to_owned()
    } else {
        parts.join(" + ")
    }
}

/// Kahn's algorithm; ties go to the earliest job in stage/file order.
fn topo_order(jobs: &[PlannedJob]) -> Result<Vec<usize>, PipelineError> {
    let index: HashMap<&str, usize> = jobs
        .iter()
        .enumerate()
        .map(|(i, j)| (j.name.as_str(), i))
        .collect();
    let mut indegree = vec![0usize; jobs.len()];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); jobs.len()];
    for (i, j) in jobs.iter().enumerate() {
        for a in &j.after {
            if let Some(&p) = index.get(a.as_str()) {
                indegree[i] += 1;
                dependents[p].push(i);
            }
        }
    }
    let mut ready: BTreeSet<usize> = (0..jobs.len()).filter(|&i| indegree[i] == 0).collect();
    let mut order = Vec::with_capacity(jobs.len());
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &d in &dependents[i] {
            indegree[d] -= 1;
            if indegree[d] == 0 {
                ready.insert(d);
            }
        }
    }
    if order.len() < jobs.len() {
        let stuck: Vec<&str> = (0..jobs.len())
            .filter(|i| indegree[*i] > 0)
            .map(|i| jobs[i].name.as_str())
            .collect();
        return Err(PipelineError::Evaluate {
            message: format!("`needs` form a cycle among: {}", stuck.join(", ")),
        });
    }
    Ok(order)
}
