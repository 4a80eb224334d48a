//! `examples/demo`, the README's first command: it loads, evaluates to the documented jobs, and
//! its scripts work with nothing but bash and coreutils.

use std::path::{Path, PathBuf};
use std::process::Command;

use runnel_pipeline::{Context, MemoryFiles, Pipeline, PlannedJob, evaluate, load};
use runnel_types::Variable;

use crate::{chain, push_context};

fn demo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/demo")
}

fn demo() -> Pipeline {
    let dir = demo_dir();
    let text = std::fs::read_to_string(dir.join(".gitlab-ci.yml"))
        .unwrap_or_else(|e| panic!("read the demo: {e}"));
    let files = MemoryFiles::new()
        .with(".gitlab-ci.yml", &text)
        .with("src/greet.sh", "");
    let pipeline = load(&files, ".gitlab-ci.yml").unwrap_or_else(|e| panic!("{}", chain(&e)));
    assert!(pipeline.warnings.is_empty(), "{:?}", pipeline.warnings);
    pipeline
}

fn order(pipeline: &Pipeline, cx: &Context) -> Vec<String> {
    let plan = evaluate(pipeline, cx).unwrap_or_else(|e| panic!("{}", chain(&e)));
    plan.ordered_names()
        .into_iter()
        .map(str::to_owned)
        .collect()
}

#[test]
fn demo_plans_the_documented_jobs() {
    let pipeline = demo();
    let mut text = String::new();
    let push = push_context(&[]);
    text.push_str(&format!(
        "push to main:\n  {}\n",
        order(&pipeline, &push).join("\n  ")
    ));
    let mut deploy = push_context(&[]);
    deploy.overrides.push(Variable::new("DEPLOY", "yes"));
    text.push_str(&format!(
        "with DEPLOY=yes:\n  {}\n",
        order(&pipeline, &deploy).join("\n  ")
    ));
    let schedule = push_context(&[("CI_PIPELINE_SOURCE", "schedule")]);
    text.push_str(&format!(
        "scheduled:\n  {}\n",
        order(&pipeline, &schedule).join("\n  ")
    ));
    insta::assert_snapshot!(text);
}

/// Runs one job's scripts with bash in `dir`, with its variables, as the shell executor would.
fn run_job(job: &PlannedJob, dir: &Path) -> String {
    let mut script = String::from("set -eo pipefail\n");
    for line in job.job.before_script.iter().chain(&job.job.script) {
        script.push_str(line);
        script.push('\n');
    }
    let mut cmd = Command::new("bash");
    cmd.arg("-c").arg(&script).current_dir(dir);
    for v in &job.variables {
        cmd.env(&v.key, &v.value);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("run bash for {}: {e}", job.name));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{} failed: {}\n{stdout}{}",
        job.name,
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn demo_scripts_run_with_bash_and_coreutils() {
    let pipeline = demo();
    let mut cx = push_context(&[]);
    cx.overrides.push(Variable::new("DEPLOY", "yes"));
    let plan = evaluate(&pipeline, &cx).unwrap_or_else(|e| panic!("{}", chain(&e)));
    let work = std::env::temp_dir().join(format!("runnel-demo-{}", std::process::id()));
    std::fs::create_dir_all(work.join("src")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::copy(demo_dir().join("src/greet.sh"), work.join("src/greet.sh"))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut outputs = Vec::new();
    for &i in &plan.order {
        outputs.push(run_job(&plan.jobs[i], &work));
    }
    // The cache counter grows from one build to the next.
    let again = run_job(plan.job("build").unwrap_or_else(|| panic!("build")), &work);
    std::fs::remove_dir_all(&work).ok();
    let all = outputs.concat();
    assert!(all.contains("build number 1 on this machine"), "{all}");
    assert!(again.contains("build number 2 on this machine"), "{again}");
    for greeting in [
        "Hello from greet 1.0",
        "Bonjour de greet 1.0",
        "Hallo von greet 1.0",
    ] {
        assert!(all.contains(greeting), "{greeting} in {all}");
    }
    assert!(all.contains("Deploying Hello from greet 1.0"), "{all}");
}
