//! Integration tests of `runnel-pipeline`: YAML in, pipeline / plan / `JobSpec` out.

mod demo;
mod errors;
mod eval;
mod gitlab;
mod includes;
mod load;
mod schema;
mod spec;

use std::fmt::Write as _;

use runnel_pipeline::{
    AllowFailure, Context, MemoryFiles, Pipeline, Plan, PlannedJob, evaluate, load,
};
use runnel_types::Variable;

pub(crate) fn files(main: &str) -> MemoryFiles {
    MemoryFiles::new().with(".gitlab-ci.yml", main)
}

pub(crate) fn load_ok(main: &str) -> Pipeline {
    load_files(&files(main))
}

pub(crate) fn load_files(files: &MemoryFiles) -> Pipeline {
    match load(files, ".gitlab-ci.yml") {
        Ok(p) => p,
        Err(e) => panic!("load failed: {}", chain(&e)),
    }
}

pub(crate) fn load_err(main: &str) -> String {
    load_files_err(&files(main))
}

pub(crate) fn load_files_err(files: &MemoryFiles) -> String {
    match load(files, ".gitlab-ci.yml") {
        Ok(_) => panic!("load unexpectedly succeeded"),
        Err(e) => chain(&e),
    }
}

pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        write!(s, ": {inner}").ok();
        source = inner.source();
    }
    s
}

/// A branch push pipeline on `main` with `extra` predefined variables.
pub(crate) fn push_context(extra: &[(&str, &str)]) -> Context {
    let mut predefined = vec![
        Variable::new("CI_PIPELINE_SOURCE", "push"),
        Variable::new("CI_COMMIT_BRANCH", "main"),
        Variable::new("CI_COMMIT_REF_NAME", "main"),
        Variable::new("CI_DEFAULT_BRANCH", "main"),
    ];
    for (k, v) in extra {
        predefined.retain(|p| p.key != *k);
        predefined.push(Variable::new(*k, *v));
    }
    Context {
        predefined,
        ..Context::default()
    }
}

pub(crate) fn plan(main: &str, cx: &Context) -> Plan {
    let pipeline = load_ok(main);
    match evaluate(&pipeline, cx) {
        Ok(p) => p,
        Err(e) => panic!("evaluate failed: {}", chain(&e)),
    }
}

fn allow(a: &AllowFailure) -> String {
    match a {
        AllowFailure::No => "false".to_owned(),
        AllowFailure::Yes => "true".to_owned(),
        AllowFailure::ExitCodes(c) => format!("exit_codes {c:?}"),
    }
}

/// One line per job in DAG order: name, stage, when, allow_failure, needs/after, and the
/// variables that do not come from the context.
pub(crate) fn render(plan: &Plan, cx: &Context) -> String {
    let mut out = String::new();
    if !plan.created {
        return "(no pipeline: workflow:rules)\n".to_owned();
    }
    for &i in &plan.order {
        let j = &plan.jobs[i];
        write!(
            out,
            "{} [{}] when={} allow_failure={}",
            j.name,
            j.stage,
            j.when.as_str(),
            allow(&j.allow_failure)
        )
        .ok();
        if let Some(s) = &j.start_in {
            write!(out, " start_in={s}").ok();
        }
        if let Some(needs) = &j.needs {
            let n: Vec<String> = needs
                .iter()
                .map(|n| {
                    if n.artifacts {
                        n.job.clone()
                    } else {
                        format!("{} (no artifacts)", n.job)
                    }
                })
                .collect();
            write!(out, " needs=[{}]", n.join(", ")).ok();
        }
        out.push('\n');
        let vars = own_vars(j, cx);
        if !vars.is_empty() {
            writeln!(out, "    vars: {}", vars.join(" ")).ok();
        }
    }
    out
}

pub(crate) fn own_vars(j: &PlannedJob, cx: &Context) -> Vec<String> {
    let mut seen: Vec<(String, String)> = Vec::new();
    for v in &j.variables {
        // `CI_NODE_TOTAL=1` is on every job without `parallel` (tested in eval.rs).
        let default_node_total = v.key == "CI_NODE_TOTAL" && v.value == "1";
        if cx.predefined.contains(v)
            || v.key == "CI_JOB_NAME"
            || v.key == "CI_JOB_STAGE"
            || default_node_total
        {
            continue;
        }
        seen.retain(|(k, _)| *k != v.key);
        seen.push((v.key.clone(), v.value.clone()));
    }
    seen.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}
