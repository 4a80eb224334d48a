//! Evaluation: rules, only/except, workflow, parallel, needs and order.

use runnel_pipeline::{Context, evaluate};
use runnel_types::Variable;

use crate::{chain, load_ok, plan, push_context, render};

fn run(yaml: &str, cx: &Context) -> String {
    render(&plan(yaml, cx), cx)
}

const RULES: &str = r#"
variables:
  DEPLOY_TARGET: prod
build:
  stage: build
  script: make
test:
  script: make test
  rules:
    - if: $CI_PIPELINE_SOURCE == "merge_request_event"
      when: manual
    - if: $CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH
      variables:
        FULL: "true"
      allow_failure: true
    - when: never
deploy:
  stage: deploy
  script: make deploy
  when: manual
  rules:
    - if: $CI_COMMIT_TAG =~ /^v\d+/ && $DEPLOY_TARGET == "prod"
      when: on_success
    - if: $CI_COMMIT_BRANCH == "main"
    - if: $FORCE
      when: delayed
      start_in: 10 minutes
nightly:
  stage: deploy
  script: nightly
  rules:
    - if: $CI_PIPELINE_SOURCE == "schedule"
"#;

#[test]
fn rules_on_a_branch_push() {
    insta::assert_snapshot!(run(RULES, &push_context(&[])));
}

#[test]
fn rules_on_a_merge_request() {
    let cx = push_context(&[
        ("CI_PIPELINE_SOURCE", "merge_request_event"),
        ("CI_COMMIT_BRANCH", "feature"),
        ("CI_COMMIT_REF_NAME", "feature"),
    ]);
    insta::assert_snapshot!(run(RULES, &cx));
}

#[test]
fn rules_on_a_tag_with_an_override() {
    let mut cx = push_context(&[
        ("CI_COMMIT_TAG", "v1.0.0"),
        ("CI_COMMIT_BRANCH", ""),
        ("CI_COMMIT_REF_NAME", "v1.0.0"),
    ]);
    cx.predefined.retain(|v| v.key != "CI_COMMIT_BRANCH");
    cx.overrides.push(Variable::new("DEPLOY_TARGET", "staging"));
    cx.overrides.push(Variable::new("FORCE", "1"));
    insta::assert_snapshot!(run(RULES, &cx));
}

#[test]
fn rules_see_job_variables_expanded() {
    let yaml = r#"
variables:
  ENV: prod
job:
  variables:
    TARGET: $ENV-eu
  rules:
    - if: $TARGET == "prod-eu"
  script: x
"#;
    assert_eq!(
        run(yaml, &push_context(&[])),
        "job [test] when=on_success allow_failure=false\n    vars: ENV=prod TARGET=$ENV-eu\n"
    );
}

#[test]
fn rules_changes_and_exists() {
    let yaml = r#"
docs:
  script: x
  rules:
    - changes: ["docs/**/*.md"]
rust:
  script: x
  rules:
    - changes:
        paths: [src/**/*, Cargo.toml]
node:
  script: x
  rules:
    - exists: [package.json]
docker:
  script: x
  rules:
    - exists: ["**/Dockerfile"]
"#;
    let mut cx = push_context(&[]);
    cx.files = vec![
        "Cargo.toml".into(),
        "src/main.rs".into(),
        "images/app/Dockerfile".into(),
    ];
    cx.changed_files = Some(vec!["src/lib/mod.rs".into()]);
    insta::assert_snapshot!(run(yaml, &cx));
    cx.changed_files = Some(vec!["docs/guide/intro.md".into()]);
    let p = plan(yaml, &cx);
    assert_eq!(p.ordered_names(), ["docs", "docker"]);
    cx.changed_files = None;
    let p = plan(yaml, &cx);
    assert_eq!(
        p.ordered_names(),
        ["docs", "rust", "docker"],
        "unknown changes match, as in GitLab"
    );
}

#[test]
fn manual_allow_failure_defaults() {
    let yaml = r#"
plain_manual:
  script: x
  when: manual
rules_manual:
  script: x
  rules:
    - when: manual
explicit:
  script: x
  when: manual
  allow_failure: false
"#;
    insta::assert_snapshot!(run(yaml, &push_context(&[])));
}

#[test]
fn only_and_except() {
    let yaml = r#"
default_refs:
  script: x
only_main:
  script: x
  only: [main]
only_regex:
  script: x
  only:
    - /^release-.*$/i
only_tags:
  script: x
  only: [tags]
except_main:
  script: x
  except: [main]
only_mr:
  script: x
  only: [merge_requests]
only_vars:
  script: x
  only:
    refs: [branches]
    variables:
      - $RELEASE == "yes"
except_schedules:
  script: x
  except: [schedules]
"#;
    let main = push_context(&[]);
    assert_eq!(
        plan(yaml, &main).ordered_names(),
        ["default_refs", "only_main", "except_schedules"]
    );
    let release = push_context(&[
        ("CI_COMMIT_BRANCH", "RELEASE-1"),
        ("CI_COMMIT_REF_NAME", "RELEASE-1"),
        ("RELEASE", "yes"),
    ]);
    assert_eq!(
        plan(yaml, &release).ordered_names(),
        [
            "default_refs",
            "only_regex",
            "except_main",
            "only_vars",
            "except_schedules"
        ]
    );
    let mr = push_context(&[("CI_PIPELINE_SOURCE", "merge_request_event")]);
    // `except` alone keeps the implicit `only: [branches, tags]`, which an MR pipeline is not.
    assert_eq!(plan(yaml, &mr).ordered_names(), ["only_main", "only_mr"]);
    let schedule = push_context(&[("CI_PIPELINE_SOURCE", "schedule"), ("CI_COMMIT_TAG", "v1")]);
    assert_eq!(
        plan(yaml, &schedule).ordered_names(),
        ["default_refs", "only_tags", "except_main"]
    );
}

#[test]
fn workflow_rules_gate_the_pipeline_and_add_variables() {
    let yaml = r#"
workflow:
  name: "Pipeline for $CI_COMMIT_BRANCH"
  rules:
    - if: $CI_COMMIT_MESSAGE =~ /-draft$/
      when: never
    - if: $CI_COMMIT_BRANCH == "main"
      variables:
        DEPLOY: "yes"
variables:
  DEPLOY: "no"
job:
  script: x
isolated:
  inherit:
    variables: false
  script: x
"#;
    let cx = push_context(&[]);
    let p = plan(yaml, &cx);
    assert_eq!(p.name.as_deref(), Some("Pipeline for main"));
    insta::assert_snapshot!(render(&p, &cx));
    let draft = push_context(&[("CI_COMMIT_MESSAGE", "wip-draft")]);
    assert!(!plan(yaml, &draft).created);
    let other = push_context(&[("CI_COMMIT_BRANCH", "dev")]);
    assert!(!plan(yaml, &other).created, "no workflow rule matched");
}

#[test]
fn parallel_count_names() {
    let yaml = "test:\n  script: x\n  parallel: 3\nafter:\n  stage: deploy\n  script: y\n  needs: [test]\n";
    insta::assert_snapshot!(run(yaml, &push_context(&[])));
}

#[test]
fn parallel_matrix_names_like_gitlab() {
    // The example GitLab's documentation and MR !39985 use.
    let yaml = r#"
deploystacks:
  stage: deploy
  script:
    - bin/deploy
  parallel:
    matrix:
      - PROVIDER: aws
        STACK:
          - monitoring
          - app1
          - app2
      - PROVIDER: ovh
        STACK: [monitoring, backup, app]
      - PROVIDER: [gcp, vultr]
        STACK: [data, processing]
"#;
    let p = plan(yaml, &push_context(&[]));
    insta::assert_snapshot!(p.ordered_names().join("\n"));
    let job = p.job("deploystacks: [ovh, backup]").expect("ovh backup");
    assert_eq!(job.variable("PROVIDER"), Some("ovh"));
    assert_eq!(job.variable("STACK"), Some("backup"));
    assert_eq!(job.variable("CI_NODE_INDEX"), Some("5"));
    assert_eq!(job.variable("CI_NODE_TOTAL"), Some("10"));
}

#[test]
fn matrix_rules_see_matrix_variables() {
    let yaml = r#"
build:
  script: x
  parallel:
    matrix:
      - OS: [linux, windows]
        ARCH: [amd64, arm64]
  rules:
    - if: $OS == "windows" && $ARCH == "arm64"
      when: never
    - if: $OS == "windows"
      allow_failure: true
    - when: on_success
"#;
    insta::assert_snapshot!(run(yaml, &push_context(&[])));
}

#[test]
fn needs_make_a_dag() {
    let yaml = r#"
stages: [build, test, deploy]
lint:
  stage: .pre
  script: x
build_a:
  stage: build
  script: x
build_b:
  stage: build
  script: x
test_a:
  stage: test
  script: x
  needs: [build_a]
test_b:
  stage: test
  script: x
  needs:
    - job: build_b
      artifacts: false
    - job: missing_but_optional
      optional: true
quick:
  stage: deploy
  script: x
  needs: []
deploy:
  stage: deploy
  script: x
  needs: [test_a, test_b]
report:
  stage: .post
  script: x
"#;
    let cx = push_context(&[]);
    let p = plan(yaml, &cx);
    insta::assert_snapshot!(render(&p, &cx));
    let deploy = p.job("deploy").expect("deploy");
    assert_eq!(deploy.dependencies, ["test_a", "test_b"]);
    let test_b = p.job("test_b").expect("test_b");
    assert!(test_b.dependencies.is_empty(), "artifacts: false");
    let report = p.job("report").expect("report");
    assert_eq!(
        report.after.len(),
        7,
        "stage jobs wait for every earlier stage"
    );
}

#[test]
fn dependencies_default_to_earlier_stages() {
    let yaml = r#"
a:
  stage: build
  script: x
b:
  stage: build
  script: x
c:
  stage: test
  script: x
d:
  stage: deploy
  script: x
  dependencies: [a]
e:
  stage: deploy
  script: x
  dependencies: []
"#;
    let p = plan(yaml, &push_context(&[]));
    assert_eq!(p.job("c").expect("c").dependencies, ["a", "b"]);
    assert_eq!(p.job("d").expect("d").dependencies, ["a"]);
    assert!(p.job("e").expect("e").dependencies.is_empty());
    assert_eq!(p.job("e").expect("e").after, ["a", "b", "c"]);
}

#[test]
fn needs_on_a_job_rules_removed_is_an_error() {
    let yaml = r#"
build:
  stage: build
  script: x
  rules:
    - if: $NEVER
test:
  script: x
  needs: [build]
"#;
    let pipeline = load_ok(yaml);
    let e = evaluate(&pipeline, &push_context(&[])).expect_err("must fail");
    insta::assert_snapshot!(chain(&e));
}

#[test]
fn needs_cycle_through_rules_needs_is_an_evaluation_error() {
    // Job-level cycles are refused at load (see the errors snapshot); one made by `rules:needs`
    // only shows once rules are evaluated.
    let yaml = r#"
a:
  script: x
  needs: [b]
b:
  script: x
  rules:
    - needs: [a]
"#;
    let pipeline = load_ok(yaml);
    let e = evaluate(&pipeline, &push_context(&[])).expect_err("must fail");
    assert_eq!(
        chain(&e),
        "evaluate pipeline: `needs` form a cycle among: a, b"
    );
}

#[test]
fn listing_and_not_created_reasons() {
    let cx = push_context(&[]);
    let p = plan(RULES, &cx);
    insta::assert_snapshot!(p.listing());
    let only_pre = plan("lint:\n  stage: .pre\n  script: x\n", &cx);
    assert_eq!(
        only_pre.listing(),
        "no pipeline: only .pre and .post jobs would run\n"
    );
    let none = plan("a:\n  script: x\n  rules:\n    - if: $NO\n", &cx);
    assert_eq!(none.listing(), "no pipeline: no job matches its rules\n");
}

#[test]
fn raw_variables_are_marked() {
    let yaml = "variables:\n  R:\n    value: $X\n    expand: false\njob:\n  script: x\n";
    let p = plan(yaml, &push_context(&[]));
    let job = p.job("job").expect("job");
    let r = job.variables.iter().find(|v| v.key == "R").expect("R");
    assert!(r.raw && r.public);
}

#[test]
fn optional_need_on_an_excluded_job_is_dropped() {
    let yaml = r#"
build:
  stage: build
  script: x
  rules:
    - if: $NEVER
test:
  script: x
  needs:
    - job: build
      optional: true
"#;
    let cx = push_context(&[]);
    assert_eq!(
        run(yaml, &cx),
        "test [test] when=on_success allow_failure=false needs=[]\n"
    );
}

#[test]
fn changes_patterns_expand_variables_and_only_changes() {
    let yaml = r#"
variables:
  DIR: services/api
api:
  script: x
  rules:
    - changes: ["$DIR/**/*"]
legacy:
  script: x
  only:
    changes: [legacy/*]
"#;
    let mut cx = push_context(&[]);
    cx.changed_files = Some(vec!["services/api/src/main.go".into()]);
    assert_eq!(plan(yaml, &cx).ordered_names(), ["api"]);
    cx.changed_files = Some(vec!["legacy/x.c".into()]);
    assert_eq!(plan(yaml, &cx).ordered_names(), ["legacy"]);
}

#[test]
fn variable_expansion() {
    let vars = [("A", "1"), ("B", "two")];
    let lookup = |k: &str| {
        vars.iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| (*v).to_owned())
    };
    let cases = [
        ("$A", "1"),
        ("${B}-x", "two-x"),
        ("$A$B", "1two"),
        ("$$A", "$A"),
        ("$MISSING.", "."),
        ("cost: 5$", "cost: 5$"),
        ("${UNCLOSED", "${UNCLOSED"),
    ];
    for (text, want) in cases {
        assert_eq!(runnel_pipeline::expand(text, &lookup), want, "{text}");
    }
}

/// A large generated pipeline: every job instance is planned, and the DAG order puts each job
/// after everything it waits for.
#[test]
fn large_pipeline_orders_every_instance() {
    let mut yaml = String::from(
        ".base:\n  image: alpine\n  before_script: [setup]\n  rules:\n    - if: $SKIP_ALL\n      when: never\n    - when: on_success\n",
    );
    for i in 0..200 {
        let stage = ["build", "test", "deploy"][i % 3];
        yaml.push_str(&format!(
            "job{i}:\n  extends: .base\n  stage: {stage}\n  script: [echo {i}]\n  parallel: 3\n"
        ));
        if stage == "deploy" {
            yaml.push_str(&format!("  needs: [job{}]\n", i - 1));
        }
    }
    let p = plan(&yaml, &push_context(&[]));
    assert_eq!(p.jobs.len(), 600);
    let position: std::collections::HashMap<&str, usize> = p
        .ordered_names()
        .into_iter()
        .enumerate()
        .map(|(i, n)| (n, i))
        .collect();
    for job in &p.jobs {
        for before in &job.after {
            assert!(
                position[before.as_str()] < position[job.name.as_str()],
                "{} after {before}",
                job.name
            );
        }
    }
    let deploy = p.job("job2 1/3").expect("job2 1/3");
    assert_eq!(deploy.after, ["job1 1/3", "job1 2/3", "job1 3/3"]);
}

#[test]
fn needs_parallel_matrix_selects_instances() {
    let yaml = r#"
build:
  stage: build
  script: x
  parallel:
    matrix:
      - PROVIDER: [aws, gcp]
        STACK: [app1, app2]
test:
  script: x
  parallel:
    matrix:
      - PROVIDER: [aws, gcp]
        STACK: [app1, app2]
  needs:
    - job: build
      parallel:
        matrix:
          - PROVIDER: ['$[[ matrix.PROVIDER ]]']
            STACK: ['$[[ matrix.STACK ]]']
deploy:
  stage: deploy
  script: x
  needs:
    - job: build
      parallel:
        matrix:
          - PROVIDER: gcp
            STACK: [app1, app2]
"#;
    let p = plan(yaml, &push_context(&[]));
    let test = p.job("test: [gcp, app1]").expect("test gcp app1");
    assert_eq!(test.after, ["build: [gcp, app1]"]);
    let deploy = p.job("deploy").expect("deploy");
    assert_eq!(deploy.after, ["build: [gcp, app1]", "build: [gcp, app2]"]);
}

#[test]
fn oversized_matrix_is_refused() {
    let yaml = "job:\n  script: x\n  parallel:\n    matrix:\n      - A: [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15]\n        B: [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15]\n";
    assert_eq!(
        crate::load_err(yaml),
        ".gitlab-ci.yml:4:5: parallel:matrix would create 225 jobs; at most 200 are allowed"
    );
}

#[test]
fn excluded_jobs_say_why() {
    let yaml = r#"
.template:
  script: x
build:
  stage: build
  script: x
  rules:
    - if: $CI_COMMIT_TAG
    - if: $CI_PIPELINE_SOURCE == "schedule"
one_rule:
  script: x
  rules:
    - if: $NOPE
ruled_never:
  script: x
  rules:
    - changes: [docs/**/*]
      when: never
    - when: on_success
job_never:
  script: x
  when: never
  rules:
    - if: $CI_COMMIT_BRANCH == "main"
plain_never:
  script: x
  when: never
only_tags:
  script: x
  only: [tags, /^release-/]
except_main:
  script: x
  except:
    refs: [main]
    variables: [$CI_COMMIT_BRANCH]
matrix:
  script: x
  parallel:
    matrix:
      - OS: [linux, windows]
  rules:
    - if: $OS == "windows"
      when: never
    - when: always
"#;
    let mut cx = push_context(&[]);
    cx.changed_files = Some(vec!["docs/a/b.md".into()]);
    let p = plan(yaml, &cx);
    let text: Vec<String> = p
        .excluded
        .iter()
        .map(|e| {
            format!(
                "{} [{}]: {}",
                e.name,
                e.stage.as_deref().unwrap_or("-"),
                e.reason
            )
        })
        .collect();
    insta::assert_snapshot!(text.join("\n"));
    assert_eq!(p.ordered_names(), ["matrix: [linux]"]);

    // When rules leave no job, the plan still says why each one is out.
    let none = plan("a:\n  script: x\n  rules:\n    - if: $NO\n", &cx);
    assert!(!none.created);
    assert_eq!(none.excluded.len(), 1);
    assert_eq!(none.excluded[0].reason, "rules: the rule does not match");
}
