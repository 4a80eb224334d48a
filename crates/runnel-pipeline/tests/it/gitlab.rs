//! What GitLab accepts and how it plans it, from real projects' files (issue 19) and the
//! review's limits (M6): nested lists, rule-level `auto_cancel`, matrix instance names, server
//! variables, nested variable expansion, and documents built to exhaust memory or the stack.

use std::time::Instant;

use runnel_pipeline::{NotCreated, evaluate};

use crate::{load_err, load_ok, plan, push_context};

#[test]
fn nested_lists_flatten_where_gitlab_flattens_them() {
    // gitlab-shell: `cache: [*anchor_that_is_a_list]`; nested needs, services and tags.
    let p = load_ok(
        r#"
.caches: &caches
  - key: gems
    paths: [vendor/]
  - key: node
    paths: [node_modules/]
.deps: &deps [build]
build:
  stage: build
  script: [x]
test:
  cache: [*caches]
  needs: [*deps]
  tags: [[docker], linux]
  services: [[postgres:16]]
  script: [x]
"#,
    );
    let test = p.job("test").expect("test");
    assert_eq!(test.cache.len(), 2);
    assert_eq!(test.needs.as_ref().map(Vec::len), Some(1));
    assert_eq!(test.tags, ["docker", "linux"]);
    assert_eq!(test.services.len(), 1);
}

#[test]
fn workflow_rules_take_auto_cancel_and_variables_take_booleans() {
    // OpenMW: a rule-level `auto_cancel`; booleans are accepted (GitLab stores "true").
    let p = load_ok(
        r#"
variables:
  FLAG: yes
workflow:
  auto_cancel:
    on_new_commit: interruptible
  rules:
    - if: $CI_COMMIT_BRANCH
      auto_cancel:
        on_new_commit: conservative
job:
  variables:
    OTHER: on
  script: [x]
other:
  variables:
    OTHER: on
  script: [x]
"#,
    );
    assert_eq!(p.variables[0].value, "true");
    let warnings: Vec<String> = p.warnings.iter().map(ToString::to_string).collect();
    assert!(
        warnings.iter().all(|w| !w.contains("boolean")),
        "{warnings:?}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("workflow:rules:auto_cancel only matters on a GitLab server")),
        "{warnings:?}"
    );
}

#[test]
fn warnings_from_defaults_are_reported_once() {
    let p = load_ok(
        "default:\n  id_tokens:\n    T: {aud: x}\na:\n  script: [x]\nb:\n  script: [x]\nc:\n  script: [x]\n",
    );
    let warnings: Vec<String> = p.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        [
            ".gitlab-ci.yml:2:3: job `a`: `id_tokens` is not supported locally; ignored (and 2 more jobs)"
        ]
    );
}

#[test]
fn matrix_instance_names_work_in_needs_and_dependencies() {
    // dav1d and NetworkManager name one instance of a matrix job.
    let yaml = r#"
stages: [build, test]
build-win:
  stage: build
  parallel:
    matrix:
      - TARGET: [x86_64-w64-mingw32, i686-w64-mingw32]
  script: [x]
test-win:
  stage: test
  needs: ["build-win: [x86_64-w64-mingw32]"]
  script: [x]
package:
  stage: test
  dependencies: ["build-win: [i686-w64-mingw32]"]
  script: [x]
"#;
    let plan = plan(yaml, &push_context(&[]));
    let test = plan.job("test-win").expect("test-win");
    assert_eq!(test.after, ["build-win: [x86_64-w64-mingw32]"]);
    let package = plan.job("package").expect("package");
    assert_eq!(package.dependencies, ["build-win: [i686-w64-mingw32]"]);
    assert!(
        load_err("a:\n  needs: [\"b: [z]\"]\n  script: [x]\nb:\n  stage: build\n  parallel:\n    matrix:\n      - V: [y]\n  script: [x]\n")
            .contains("needs `b: [z]`, which is not defined")
    );
}

#[test]
fn node_total_is_one_without_parallel_and_workflow_names_expand() {
    let plan = plan(
        "workflow:\n  name: \"$CI_COMMIT_BRANCH build $MISSING\"\njob:\n  script: [x]\n",
        &push_context(&[]),
    );
    assert_eq!(plan.name.as_deref(), Some("main build "));
    let job = plan.job("job").expect("job");
    assert_eq!(job.variable("CI_NODE_TOTAL"), Some("1"));
    assert_eq!(job.variable("CI_NODE_INDEX"), None);
}

#[test]
fn variable_cycles_stop_the_pipeline_like_gitlab() {
    let p =
        load_ok("variables:\n  A: $B\n  B: ${C}x\njob:\n  variables:\n    C: $A\n  script: [x]\n");
    let error = evaluate(&p, &push_context(&[])).unwrap_err().to_string();
    assert_eq!(
        error,
        r#"evaluate pipeline: job `job`: circular variable reference detected: ["A", "B", "C"]"#
    );
}

#[test]
fn a_file_without_jobs_says_so() {
    let p = load_ok(".template:\n  script: [x]\nvariables:\n  A: b\n");
    let plan = evaluate(&p, &push_context(&[])).unwrap();
    assert_eq!(plan.not_created, Some(NotCreated::Empty));
    assert!(
        plan.listing().contains("defines no jobs"),
        "{}",
        plan.listing()
    );
}

#[test]
fn long_string_alias_bombs_are_refused_fast() {
    // The review's M6 case: a 100 KB string, aliased 100 times in a list, aliased 100 times
    // (1 MB of text that would expand to 1 GB).
    let mut text = format!("a: &a \"{}\"\nb: &b [", "x".repeat(100_000));
    text.push_str(&vec!["*a"; 100].join(", "));
    text.push_str("]\nc: [");
    text.push_str(&vec!["*b"; 100].join(", "));
    text.push_str("]\njob:\n  script: [x]\n");
    let started = Instant::now();
    let error = load_err(&text);
    assert!(
        error.contains("aliases expand to more than 32 MiB"),
        "{error}"
    );
    // Refused after building at most the budget, not the gigabyte (seconds would mean the
    // limit no longer counts bytes; this is a bound on work, not a timing assertion).
    let _ = started;
}

#[test]
fn aliases_cannot_nest_past_the_depth_limit() {
    let mut text = String::from("a0: &a0 [x]\n");
    for i in 1..300 {
        text.push_str(&format!("a{i}: &a{i} [[*a{}]]\n", i - 1));
    }
    let error = load_err(&text);
    assert!(error.contains("levels deep (through aliases)"), "{error}");
}

#[test]
fn matrix_size_is_checked_before_expansion() {
    // Six variables of 40 values: 4 * 10^9 combinations, refused without building them.
    let values: Vec<String> = (0..40).map(|i| i.to_string()).collect();
    let values = values.join(", ");
    let vars: Vec<String> = (0..6)
        .map(|v| format!("        V{v}: [{values}]"))
        .collect();
    let text = format!(
        "job:\n  script: [x]\n  parallel:\n    matrix:\n      -\n{}\n",
        vars.join("\n")
    );
    let error = load_err(&text);
    assert!(
        error.contains("parallel:matrix would create 4096000000 jobs; at most 200 are allowed"),
        "{error}"
    );
}

#[test]
fn deeply_nested_rule_expressions_are_refused_not_a_crash() {
    for expression in [
        format!("{}$A{}", "(".repeat(200_000), ")".repeat(200_000)),
        format!("{}$A", "!".repeat(200_000)),
        vec!["$A"; 5_000].join(" && "),
    ] {
        let error = load_err(&format!(
            "job:\n  script: [x]\n  rules:\n    - if: '{expression}'\n"
        ));
        assert!(
            error.contains("nested more than 50 levels") || error.contains("more than 1000 tokens"),
            "{}",
            &error[..error.len().min(300)]
        );
        assert!(
            error.len() < 400,
            "the error quotes the expression shortened"
        );
    }
}
