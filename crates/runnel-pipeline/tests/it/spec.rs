//! Planned job → `JobSpec`.

use runnel_pipeline::{SpecOptions, to_job_spec};

use crate::{plan, push_context};

#[test]
fn job_spec_is_shaped_like_the_coordinators() {
    let yaml = r#"
variables:
  GLOBAL: g
default:
  image: rust:1.95
  before_script: [rustc --version]
  after_script: [echo done]
build:
  stage: build
  script: [cargo build]
  artifacts:
    paths: [target/release/app]
test:
  services:
    - name: postgres:16
      alias: db
  variables:
    RAW:
      value: $KEEP
      expand: false
  script: [cargo test]
  timeout: 30m
  artifacts:
    when: always
    expire_in: 1 day
    reports:
      junit: junit.xml
  cache:
    key:
      files: [Cargo.lock]
      prefix: $CI_JOB_NAME
    paths: [target/]
    policy: pull
"#;
    let cx = push_context(&[]);
    let p = plan(yaml, &cx);
    let test = p.job("test").expect("test");
    let options = SpecOptions {
        files_key: &|files| Some(format!("hash-of-{}", files.join("+"))),
    };
    let spec = to_job_spec(test, &options);
    insta::assert_debug_snapshot!((
        &spec.info,
        &spec.steps,
        &spec.image,
        &spec.services,
        &spec.artifacts,
        &spec.cache,
        &spec.dependencies,
        &spec.timeout
    ));
    let vars: Vec<String> = spec
        .variables
        .iter()
        .map(|v| format!("{}={} raw={}", v.key, v.value, v.raw))
        .collect();
    insta::assert_snapshot!(vars.join("\n"));
    let build = to_job_spec(p.job("build").expect("build"), &SpecOptions::default());
    assert_eq!(build.artifacts.len(), 1);
    assert_eq!(build.artifacts[0].artifact_type, "archive");
    assert_eq!(build.steps[0].script, ["rustc --version", "cargo build"]);
}

/// The production planner accepts what `to_job_spec` makes: the scripts, the after_script and
/// the YAML variables reach the stage scripts it would feed to the shell.
#[test]
fn the_production_planner_runs_the_spec() {
    let yaml = r#"
variables:
  GREETING: hello
test:
  before_script: [echo before]
  script: [echo "$GREETING from $CI_JOB_NAME"]
  after_script: [echo after]
"#;
    let p = plan(yaml, &push_context(&[]));
    let spec = to_job_spec(p.job("test").expect("test"), &SpecOptions::default());
    let opts = runnel_job::PlanOptions {
        builds_dir: "/builds".into(),
        cache_dir: "/cache".into(),
        ..runnel_job::PlanOptions::default()
    };
    let job_plan = runnel_job::plan(&spec, &opts).expect("plan");
    let step = job_plan.stage("step_script").expect("step_script stage");
    let script = step.script(runnel_job::JobStatus::Success);
    let before = script
        .find("echo before")
        .expect("before_script in step_script");
    let main = script
        .find("from $CI_JOB_NAME")
        .expect("script in step_script");
    assert!(before < main, "before_script runs first");
    let after = job_plan.stage("after_script").expect("after_script stage");
    assert!(
        after
            .script(runnel_job::JobStatus::Success)
            .contains("echo after")
    );
    let greeting = job_plan.variables.get("GREETING").map(|v| v.value.clone());
    assert_eq!(greeting.as_deref(), Some("hello"));
}

#[test]
fn hooks_and_environment_reach_the_spec() {
    let yaml = r#"
variables:
  REGION: eu
deploy:
  script: [deploy]
  hooks:
    pre_get_sources_script: [echo hook]
  environment:
    name: review/$CI_COMMIT_REF_NAME-$REGION
    url: https://$REGION.example.invalid
"#;
    let p = plan(yaml, &push_context(&[]));
    let spec = to_job_spec(p.job("deploy").expect("deploy"), &SpecOptions::default());
    assert_eq!(spec.hooks.len(), 1);
    assert_eq!(spec.hooks[0].name, "pre_get_sources_script");
    assert_eq!(spec.hooks[0].script, ["echo hook"]);
    let get = |k: &str| spec.variable(k).map(|v| v.value.as_str());
    assert_eq!(get("CI_ENVIRONMENT_NAME"), Some("review/main-eu"));
    assert_eq!(
        get("CI_ENVIRONMENT_URL"),
        Some("https://eu.example.invalid")
    );
    assert_eq!(get("CI_ENVIRONMENT_ACTION"), Some("start"));
}
