//! Loading: stages, default, extends, !reference, anchors, includes, key forms.

use std::fmt::Write as _;
use std::time::Duration;

use runnel_pipeline::{
    AllowFailure, CacheKey, CachePolicy, Inherit, Job, MemoryFiles, Parallel, SaveWhen, When,
};

use crate::{load_files, load_ok};

/// A readable dump of the fields a test cares about.
fn show(job: &Job) -> String {
    let mut s = String::new();
    writeln!(s, "name: {}", job.name).ok();
    writeln!(s, "stage: {}", job.stage).ok();
    let vars: Vec<String> = job
        .variables
        .iter()
        .map(|v| format!("{}={}", v.key, v.value))
        .collect();
    writeln!(s, "variables: {}", vars.join(", ")).ok();
    if let Some(rules) = &job.rules {
        for r in rules {
            let cond = r.condition.as_ref().map_or("-", |c| c.source.as_str());
            writeln!(s, "rule: if {cond}").ok();
        }
    }
    writeln!(s, "tags: {:?}", job.tags).ok();
    if let Some(image) = &job.image {
        writeln!(s, "image: {}", image.name).ok();
    }
    writeln!(s, "before_script: {:?}", job.before_script).ok();
    writeln!(s, "script: {:?}", job.script).ok();
    writeln!(s, "after_script: {:?}", job.after_script).ok();
    s
}

#[test]
fn extends_ten_levels_deep_is_allowed() {
    let mut yaml = String::from(".t0:\n  script: [deep]\n");
    for i in 1..10 {
        yaml.push_str(&format!(".t{i}:\n  extends: .t{}\n", i - 1));
    }
    yaml.push_str("job:\n  extends: .t9\n");
    assert_eq!(load_ok(&yaml).jobs[0].script, ["deep"]);
}

#[test]
fn default_stages_wrap_pre_and_post() {
    let p = load_ok("a:\n  script: x\n");
    assert_eq!(p.stages, [".pre", "build", "test", "deploy", ".post"]);
    assert_eq!(p.jobs[0].stage, "test");
    let p = load_ok("stages: [one, .post, two]\na:\n  stage: two\n  script: x\n");
    assert_eq!(p.stages, [".pre", "one", "two", ".post"]);
}

#[test]
fn gitlab_documented_extends_example() {
    // The "merge details" example from GitLab's `extends` documentation.
    let p = load_ok(
        r#"
.only-important:
  variables:
    URL: "http://my-url.internal"
    IMPORTANT_VAR: "the details"
  rules:
    - if: $CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH
    - if: $CI_COMMIT_BRANCH == "stable"
  tags:
    - production
  script:
    - echo "Hello world!"

.in-docker:
  variables:
    URL: "http://docker-url.internal"
  tags:
    - docker
  image: alpine

rspec:
  variables:
    GITLAB: "is-awesome"
  extends:
    - .only-important
    - .in-docker
  script:
    - rake rspec
"#,
    );
    assert_eq!(p.jobs.len(), 1, "hidden jobs are templates only");
    insta::assert_snapshot!(show(&p.jobs[0]));
}

#[test]
fn extends_several_levels_and_null_removes() {
    let p = load_ok(
        r#"
.base:
  image: ruby
  variables: {A: "1", B: "2"}
  script: [base]
.middle:
  extends: .base
  variables: {B: "3"}
  after_script: [cleanup]
job:
  extends: .middle
  variables: {C: "4"}
  image: null
"#,
    );
    let job = &p.jobs[0];
    assert!(
        job.image.is_none(),
        "null in the child removes the inherited key"
    );
    insta::assert_snapshot!(show(job));
}

#[test]
fn reference_tags_resolve_after_extends() {
    let p = load_ok(
        r#"
.setup:
  script:
    - echo creating environment
.base:
  before_script:
    - !reference [.setup, script]
    - echo base
  variables:
    GREETING: hi
.vars:
  extends: .base
  variables:
    NAME: world
test:
  variables: !reference [.vars, variables]
  before_script:
    - !reference [.base, before_script]
    - echo more
  script:
    - !reference [.setup, script]
    - echo "$GREETING $NAME"
  after_script: !reference [.setup, script]
"#,
    );
    insta::assert_snapshot!(show(&p.jobs[0]));
}

#[test]
fn reference_to_rules_is_flattened() {
    let p = load_ok(
        r#"
.rules:
  rules:
    - if: $A
    - if: $B
job:
  rules:
    - !reference [.rules, rules]
    - if: $C
  script: x
"#,
    );
    let rules = p.jobs[0].rules.as_ref().expect("rules");
    let conds: Vec<&str> = rules
        .iter()
        .map(|r| r.condition.as_ref().map_or("", |c| c.source.as_str()))
        .collect();
    assert_eq!(conds, ["$A", "$B", "$C"]);
}

#[test]
fn anchors_and_merge_keys() {
    let p = load_ok(
        r#"
.defaults: &defaults
  image: ruby:3.3
  variables: &vars
    A: "1"
  script: [default]
.more: &more
  tags: [docker]
  script: [more]
test1:
  <<: [*defaults, *more]
  variables:
    <<: *vars
    B: "2"
test2:
  script: [first]
  <<: *defaults
"#,
    );
    insta::assert_snapshot!(format!("{}---\n{}", show(&p.jobs[0]), show(&p.jobs[1])));
}

#[test]
fn default_is_inherited_unless_set_or_disinherited() {
    let p = load_ok(
        r#"
default:
  image: ruby:3.3
  before_script: [bundle install]
  tags: [shared]
  retry: 2
  timeout: 1h 30m
  interruptible: true
variables:
  GLOBAL: g
  OTHER: o
a:
  script: x
b:
  image: alpine
  script: x
c:
  inherit:
    default: [tags]
    variables: [GLOBAL]
  script: x
d:
  inherit:
    default: false
    variables: false
  script: x
"#,
    );
    let a = p.job("a").expect("a");
    assert_eq!(a.image.as_ref().map(|i| i.name.as_str()), Some("ruby:3.3"));
    assert_eq!(a.before_script, ["bundle install"]);
    assert_eq!(a.retry.as_ref().map(|r| r.max), Some(2));
    assert_eq!(a.timeout, Some(Duration::from_secs(5400)));
    assert!(a.interruptible);
    let b = p.job("b").expect("b");
    assert_eq!(b.image.as_ref().map(|i| i.name.as_str()), Some("alpine"));
    let c = p.job("c").expect("c");
    assert!(c.image.is_none());
    assert_eq!(c.tags, ["shared"]);
    assert_eq!(c.inherit_variables, Inherit::Only(vec!["GLOBAL".into()]));
    let d = p.job("d").expect("d");
    assert!(d.tags.is_empty() && d.before_script.is_empty());
    assert_eq!(d.inherit_variables, Inherit::None);
}

#[test]
fn deprecated_top_level_defaults_apply() {
    let p = load_ok("image: alpine\nbefore_script: [setup]\njob:\n  script: x\n");
    let job = &p.jobs[0];
    assert_eq!(job.image.as_ref().map(|i| i.name.as_str()), Some("alpine"));
    assert_eq!(job.before_script, ["setup"]);
}

#[test]
fn include_local_forms_and_globs() {
    let files = MemoryFiles::new()
        .with(
            ".gitlab-ci.yml",
            r#"
include:
  - local: /ci/base.yml
  - ci/jobs/*.yml
  - local: ci/nested.yml
variables:
  FROM: main
build:
  script: [main build]
"#,
        )
        .with(
            "ci/base.yml",
            "variables:\n  FROM: base\n  BASE: yes-base\nbuild:\n  stage: build\n  script: [base build]\n",
        )
        .with("ci/jobs/a.yml", "job-a:\n  script: [a]\n")
        .with("ci/jobs/b.yml", "job-b:\n  script: [b]\n")
        .with("ci/jobs/deeper/c.yml", "job-c:\n  script: [c]\n")
        .with("ci/jobs/notes.txt", "not yaml")
        .with("ci/nested.yml", "include: ci/leaf.yml\n")
        .with("ci/leaf.yml", "leaf:\n  script: [leaf]\n");
    let p = load_files(&files);
    let names: Vec<&str> = p.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names, ["build", "job-a", "job-b", "leaf"]);
    let build = p.job("build").expect("build");
    assert_eq!(build.stage, "build", "included keys deep-merge");
    assert_eq!(build.script, ["main build"], "the including file wins");
    let vars: Vec<(&str, &str)> = p
        .variables
        .iter()
        .map(|v| (v.key.as_str(), v.value.as_str()))
        .collect();
    assert_eq!(vars, [("FROM", "main"), ("BASE", "yes-base")]);
    assert_eq!(
        p.files,
        [
            ".gitlab-ci.yml",
            "ci/base.yml",
            "ci/jobs/a.yml",
            "ci/jobs/b.yml",
            "ci/nested.yml",
            "ci/leaf.yml"
        ]
    );
}

#[test]
fn include_string_form_and_recursive_glob() {
    let files = MemoryFiles::new()
        .with(".gitlab-ci.yml", "include: 'ci/**/*.yml'\n")
        .with("ci/a.yml", "a:\n  script: [a]\n")
        .with("ci/x/y/b.yml", "b:\n  script: [b]\n");
    let p = load_files(&files);
    let names: Vec<&str> = p.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
}

#[test]
fn unsupported_things_are_warnings_with_lines() {
    let p = load_ok(
        r#"
downstream:
  trigger: group/other
job:
  script: x
  secrets:
    TOKEN:
      vault: a/b@c
  release:
    tag_name: v1
  needs:
    - pipeline: $PARENT
      job: gen
"#,
    );
    let warnings: Vec<String> = p.warnings.iter().map(ToString::to_string).collect();
    insta::assert_snapshot!(warnings.join("\n"));
    assert_eq!(p.jobs.len(), 1, "trigger jobs are skipped");
}

#[test]
fn scripts_flatten_nested_lists() {
    let p = load_ok(
        r#"
.a: &a [one, two]
job:
  before_script: single
  script:
    - *a
    - [three, [four]]
    - 5
"#,
    );
    let job = &p.jobs[0];
    assert_eq!(job.before_script, ["single"]);
    assert_eq!(job.script, ["one", "two", "three", "four", "5"]);
}

#[test]
fn image_and_service_forms() {
    let p = load_ok(
        r#"
job:
  image:
    name: registry.example/img:1
    entrypoint: [""]
    pull_policy: [always, if-not-present]
    docker:
      platform: linux/arm64
      user: "1000"
  services:
    - postgres:16
    - name: redis:7
      alias: cache,kv
      command: [redis-server, --appendonly, "yes"]
      entrypoint: [/bin/sh, -c]
      variables:
        REDIS_ARGS: --save
      pull_policy: never
  script: x
"#,
    );
    let job = &p.jobs[0];
    insta::assert_debug_snapshot!((&job.image, &job.services));
}

#[test]
fn variable_forms() {
    let p = load_ok(
        r#"
variables:
  PLAIN: text
  NUMBER: 10
  FLOAT: 1.5
  EMPTY: ""
  DESCRIBED:
    value: "v"
    description: "what it is"
  RAW:
    value: "$NOT_EXPANDED"
    expand: false
job:
  script: x
"#,
    );
    insta::assert_debug_snapshot!(p.variables);
}

#[test]
fn job_keyword_forms() {
    let p = load_ok(
        r#"
job:
  script: x
  when: delayed
  start_in: 30 minutes
  allow_failure:
    exit_codes: [137, 255]
  artifacts:
    name: "$CI_JOB_NAME"
    paths: [dist/, "*.log"]
    exclude: ["dist/**/*.map"]
    untracked: true
    when: always
    expire_in: 1 week
    reports:
      junit: report.xml
      dotenv: [build.env]
  cache:
    - key:
        files: [Cargo.lock]
        prefix: rust
      paths: [target/]
      policy: pull
      when: on_failure
      fallback_keys: [main-cache]
    - key: static
      paths: [vendor/]
      untracked: true
  parallel: 3
  retry:
    max: 2
    when: [script_failure]
    exit_codes: 137
  timeout: 3 hours 20 minutes
  tags: [linux, docker]
  interruptible: true
  coverage: '/Coverage: \d+\.\d+/'
  environment:
    name: review/$CI_COMMIT_REF_SLUG
    url: https://example.invalid
  resource_group: prod
  dependencies: []
"#,
    );
    let j = &p.jobs[0];
    assert_eq!(j.when, Some(When::Delayed));
    assert_eq!(j.start_in.as_deref(), Some("30 minutes"));
    assert_eq!(
        j.allow_failure,
        Some(AllowFailure::ExitCodes(vec![137, 255]))
    );
    let a = j.artifacts.as_ref().expect("artifacts");
    assert_eq!(a.when, SaveWhen::Always);
    assert!(a.untracked);
    assert_eq!(
        a.reports,
        [
            ("junit".to_owned(), vec!["report.xml".to_owned()]),
            ("dotenv".to_owned(), vec!["build.env".to_owned()])
        ]
    );
    assert_eq!(
        j.cache[0].key,
        CacheKey::Files {
            files: vec!["Cargo.lock".into()],
            prefix: Some("rust".into())
        }
    );
    assert_eq!(j.cache[0].policy, CachePolicy::Pull);
    assert_eq!(j.cache[0].when, SaveWhen::OnFailure);
    assert_eq!(j.cache[1].key, CacheKey::Literal("static".into()));
    assert_eq!(j.parallel, Some(Parallel::Count(3)));
    let retry = j.retry.as_ref().expect("retry");
    assert_eq!((retry.max, retry.exit_codes.as_slice()), (2, &[137][..]));
    assert_eq!(j.timeout, Some(Duration::from_secs(3 * 3600 + 20 * 60)));
    assert_eq!(j.tags, ["linux", "docker"]);
    assert!(j.interruptible);
    assert_eq!(j.coverage.as_deref(), Some("/Coverage: \\d+\\.\\d+/"));
    let env = j.environment.as_ref().expect("environment");
    assert_eq!(env.name, "review/$CI_COMMIT_REF_SLUG");
    assert_eq!(j.resource_group.as_deref(), Some("prod"));
    assert_eq!(j.dependencies.as_deref(), Some(&[][..]));
}

#[test]
fn durations_parse_like_gitlab() {
    let cases = [
        ("3600", Some(3600)),
        ("1h", Some(3600)),
        ("1h 30m", Some(5400)),
        ("2 hours and 10 minutes", Some(7800)),
        ("1 day", Some(86400)),
        ("90 minutes", Some(5400)),
        ("10m30s", Some(630)),
        ("soon", None),
        ("99999999999999999999999999999 years", None),
        ("", None),
        // Review M1 (`scratch/p3`): clamped to a year, so a deadline from it cannot overflow.
        ("9223372036854775000 seconds", Some(365 * 86400)),
    ];
    for (text, want) in cases {
        let got = runnel_pipeline::parse_duration(text).map(|d| d.as_secs());
        assert_eq!(got, want, "{text}");
    }
}

#[test]
fn template_shapes_from_the_wild() {
    // Shapes GitLab's own templates use: a visible job as an `extends` base, two merge keys in
    // one hash (the later one wins), a plain `if:` folded over two lines, `environment:on_stop`,
    // `only:kubernetes`, and a hidden key holding a script string.
    let p = load_ok(
        r#"
stages: [test, production]
variables:
  ANALYZERS: ""
base:
  stage: test
  rules:
    - when: never
  variables:
    DEPTH: 4
  script: [exit 1]
.analyzer:
  extends: base
  allow_failure: true
  script: [/analyzer run]
scan:
  extends: .analyzer
  rules:
    - if: $ANALYZERS =~ /scan/
      when: never
    - if: $CI_COMMIT_BRANCH &&
          $SCAN_ENABLED == 'true'
      exists: ['**/*.rb']
.first: &first
  stage: production
  when: delayed
  start_in: 5 minutes
  script: [first]
.second: &second
  script: [second]
  environment:
    name: production
    on_stop: stop
rollout:
  <<: *first
  <<: *second
  only:
    refs: [main]
    kubernetes: active
.helpers: &helpers |
  function deploy() { true; }
"#,
    );
    let scan = p.job("scan").expect("scan");
    let rules = scan.rules.as_ref().expect("rules");
    assert_eq!(
        rules[1].condition.as_ref().map(|c| c.source.as_str()),
        Some("$CI_COMMIT_BRANCH && $SCAN_ENABLED == 'true'")
    );
    assert_eq!(scan.script, ["/analyzer run"]);
    assert_eq!(scan.allow_failure, Some(AllowFailure::Yes));
    let rollout = p.job("rollout").expect("rollout");
    assert_eq!(rollout.script, ["second"]);
    assert_eq!(rollout.when, Some(When::Delayed));
    let warnings: Vec<String> = p.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        [".gitlab-ci.yml:39:5: only:kubernetes is not supported locally; ignored"]
    );

    let mut cx = crate::push_context(&[("SCAN_ENABLED", "true")]);
    cx.files = vec!["app/models/user.rb".into()];
    let plan = runnel_pipeline::evaluate(&p, &cx).expect("evaluate");
    assert_eq!(plan.ordered_names(), ["scan", "rollout"]);
}
