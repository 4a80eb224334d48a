//! `runnel exec --list`.

use runnel_exec::render_list;
use runnel_pipeline::{Context, MemoryFiles, Plan, Warning, evaluate, load};
use runnel_types::Variable;

use crate::visible;

pub(crate) fn push_context() -> Context {
    Context {
        predefined: vec![
            Variable::new("CI_PIPELINE_SOURCE", "push"),
            Variable::new("CI_COMMIT_BRANCH", "main"),
            Variable::new("CI_COMMIT_REF_NAME", "main"),
            Variable::new("CI_DEFAULT_BRANCH", "main"),
        ],
        ..Context::default()
    }
}

fn plan(yaml: &str) -> (Plan, Vec<Warning>) {
    let files = MemoryFiles::new().with(".gitlab-ci.yml", yaml);
    let pipeline = load(&files, ".gitlab-ci.yml").unwrap_or_else(|e| panic!("load: {e}"));
    let plan = evaluate(&pipeline, &push_context()).unwrap_or_else(|e| panic!("evaluate: {e}"));
    (plan, pipeline.warnings)
}

const PIPELINE: &str = r#"
workflow:
  name: "Release train"
stages: [build, test, deploy]
.rust:
  image: rust
compile:
  extends: .rust
  stage: build
  script: cargo build
lint:
  stage: .pre
  script: cargo fmt --check
  allow_failure:
    exit_codes: [1, 3]
unit:
  stage: test
  script: cargo test
  parallel: 2
  needs:
    - job: compile
      artifacts: false
e2e:
  stage: test
  script: ./e2e $BROWSER
  parallel:
    matrix:
      - BROWSER: [chrome, firefox]
  dependencies: [compile]
smoke:
  stage: test
  script: ./smoke
  needs: []
  allow_failure: true
docs:
  stage: test
  script: make docs
  rules:
    - changes: [docs/**/*]
      when: never
    - if: $CI_COMMIT_TAG
deploy:
  stage: deploy
  script: ./deploy
  when: manual
later:
  stage: deploy
  script: ./later
  when: delayed
  start_in: 5 minutes
cleanup:
  stage: .post
  script: ./cleanup
  when: always
downstream:
  stage: deploy
  trigger: group/other
"#;

#[test]
fn list_shows_stages_jobs_and_why_others_do_not_run() {
    let (plan, warnings) = plan(PIPELINE);
    let skipped = [
        (
            "deploy".to_owned(),
            "when: manual (run it with --manual)".to_owned(),
        ),
        ("later".to_owned(), "not selected".to_owned()),
    ];
    let text = render_list(&plan, &warnings, &skipped, false);
    insta::assert_snapshot!(text);
    let coloured = render_list(&plan, &warnings, &skipped, true);
    assert!(coloured.contains("\x1b["), "{}", visible(&coloured));
    assert_eq!(console::strip_ansi_codes(&coloured), text);
}

#[test]
fn list_of_a_pipeline_that_is_not_created() {
    let (plan, warnings) =
        plan("workflow:\n  rules:\n    - if: $CI_COMMIT_TAG\njob:\n  script: x\n");
    assert_eq!(
        render_list(&plan, &warnings, &[], false),
        "Pipeline: not created (workflow:rules do not create this pipeline)\n"
    );
    let (none, warnings) = self::plan("job:\n  script: x\n  rules:\n    - if: $NOPE\n");
    insta::assert_snapshot!(render_list(&none, &warnings, &[], false));
}
