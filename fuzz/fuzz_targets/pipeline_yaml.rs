//! `.gitlab-ci.yml` loading (includes, extends, !reference, anchors) and evaluation (rules,
//! workflow, only/except, parallel/matrix, needs), then conversion of each job to a JobSpec:
//! any text gives a plan or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use runnel_pipeline::{Context, Expr, MemoryFiles, SpecOptions, evaluate, load, to_job_spec};
use runnel_types::Variable;

/// NUL separates the files of one input: the root file, then these (for `include: local`).
const INCLUDED: &[&str] = &["a.yml", "b.yml", "ci/c.yml"];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.split('\0');
    let root = parts.next().unwrap_or_default();
    let mut files = MemoryFiles::new().with(".gitlab-ci.yml", root);
    for (name, part) in INCLUDED.iter().zip(parts) {
        files.insert(name, part);
    }
    let lookup = |name: &str| match name {
        "CI_COMMIT_BRANCH" => Some("main".to_owned()),
        "CI_PIPELINE_SOURCE" => Some("push".to_owned()),
        "A" => Some("a".to_owned()),
        _ => None,
    };
    // The first line on its own as a `rules:if` expression.
    if let Ok(expr) = Expr::parse(root.lines().next().unwrap_or_default()) {
        let _ = expr.evaluate(&lookup);
    }
    let Ok(pipeline) = load(&files, ".gitlab-ci.yml") else {
        return;
    };
    let cx = Context {
        predefined: vec![
            Variable::new("CI_COMMIT_BRANCH", "main"),
            Variable::new("CI_PIPELINE_SOURCE", "push"),
            Variable::new("CI_DEFAULT_BRANCH", "main"),
        ],
        overrides: vec![Variable::new("A", "a")],
        changed_files: Some(vec!["a.yml".to_owned(), "src/x.rs".to_owned()]),
        files: vec![
            "a.yml".to_owned(),
            "src/x.rs".to_owned(),
            "README.md".to_owned(),
        ],
    };
    if let Ok(plan) = evaluate(&pipeline, &cx) {
        for job in &plan.jobs {
            let _ = to_job_spec(job, &SpecOptions::default());
        }
    }
});
