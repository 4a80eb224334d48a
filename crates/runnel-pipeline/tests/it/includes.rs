//! Includes of every kind (through `SourceFiles::fetch`), `include:rules`, `include:inputs` with
//! `spec:inputs`, de-duplication, and the errors that name the include.

use runnel_pipeline::{External, LoadOptions, MemoryFiles, load, load_with};
use runnel_types::Variable;

use crate::{chain, load_files, load_files_err};

const TEMPLATES: &str = ".build:\n  stage: build\n  script: [make]\n";

fn project(file: &str, reference: Option<&str>) -> External {
    External::Project {
        project: "group/shared".to_owned(),
        reference: reference.map(str::to_owned),
        file: file.to_owned(),
    }
}

#[test]
fn every_include_kind_is_read_and_merged() {
    let files = MemoryFiles::new()
        .with(
            ".gitlab-ci.yml",
            r#"
include:
  - https://example.test/remote.yml
  - project: group/shared
    ref: v1
    file: [ci/base.yml]
  - template: Jobs/Build.gitlab-ci.yml
  - component: $CI_SERVER_FQDN/group/components/lint@1.2
    inputs:
      stage: test
build:
  extends: .build
from-template:
  extends: .template
"#,
        )
        .with_external(
            External::Remote {
                url: "https://example.test/remote.yml".to_owned(),
            },
            "remote-job:\n  script: [echo remote]\n",
        )
        // A `local` include inside a project's file comes from that project.
        .with_external(
            project("ci/base.yml", Some("v1")),
            "include:\n  - local: ci/templates.yml\n",
        )
        .with_external(project("ci/templates.yml", Some("v1")), TEMPLATES)
        .with_external(
            External::Template {
                name: "Jobs/Build.gitlab-ci.yml".to_owned(),
            },
            ".template:\n  script: [echo template]\n",
        )
        .with_external(
            External::Component {
                address: "gitlab.example.com/group/components/lint@1.2".to_owned(),
            },
            "spec:\n  inputs:\n    stage:\n      default: build\n---\nlint:\n  stage: $[[ inputs.stage ]]\n  script: [lint]\n",
        );
    let options = LoadOptions {
        variables: vec![Variable::new("CI_SERVER_FQDN", "gitlab.example.com")],
        changed_files: None,
        inputs: Vec::new(),
    };
    let pipeline =
        load_with(&files, ".gitlab-ci.yml", &options).unwrap_or_else(|e| panic!("{}", chain(&e)));
    let names: Vec<(&str, &str)> = pipeline
        .jobs
        .iter()
        .map(|j| (j.name.as_str(), j.stage.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("remote-job", "test"),
            ("lint", "test"),
            ("build", "build"),
            ("from-template", "test")
        ]
    );
    assert_eq!(
        pipeline.files,
        [
            ".gitlab-ci.yml",
            "https://example.test/remote.yml",
            "group/shared@v1:ci/base.yml",
            "group/shared@v1:ci/templates.yml",
            "template:Jobs/Build.gitlab-ci.yml",
            "component:gitlab.example.com/group/components/lint@1.2",
        ]
    );
    assert!(pipeline.warnings.is_empty(), "{:?}", pipeline.warnings);
}

#[test]
fn an_include_that_cannot_be_read_is_one_error_naming_it() {
    // The job extends a template of the missing file: the error is about the include, not
    // about `extends`.
    let files = MemoryFiles::new().with(
        ".gitlab-ci.yml",
        "include:\n  - project: group/shared\n    file: /templates/ci.yml\njob:\n  extends: .fdo.container-build@fedora\n",
    );
    assert_eq!(
        load_files_err(&files),
        ".gitlab-ci.yml:3:11: cannot include project `group/shared@HEAD:templates/ci.yml`: tried the files given to MemoryFiles; add it with MemoryFiles::with_external"
    );
}

#[test]
fn include_rules_and_variables_choose_files() {
    let files = MemoryFiles::new()
        .with(
            ".gitlab-ci.yml",
            r#"
include:
  - local: ci/$CI_COMMIT_BRANCH.yml
  - local: ci/docs.yml
    rules:
      - exists: [docs/**/*.md]
  - local: ci/never.yml
    rules:
      - if: $CI_COMMIT_BRANCH == "main"
        when: never
      - when: always
  - local: ci/tag.yml
    rules:
      - if: $CI_COMMIT_TAG
"#,
        )
        .with("ci/main.yml", "main-job:\n  script: [x]\n")
        .with("ci/docs.yml", "docs-job:\n  script: [x]\n")
        .with("docs/guide/index.md", "# docs\n")
        .with("ci/never.yml", "never-job:\n  script: [x]\n")
        .with("ci/tag.yml", "tag-job:\n  script: [x]\n");
    let options = LoadOptions {
        variables: vec![Variable::new("CI_COMMIT_BRANCH", "main")],
        changed_files: None,
        inputs: Vec::new(),
    };
    let pipeline =
        load_with(&files, ".gitlab-ci.yml", &options).unwrap_or_else(|e| panic!("{}", chain(&e)));
    let names: Vec<&str> = pipeline.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names, ["main-job", "docs-job"]);
}

#[test]
fn inputs_reach_the_included_file_and_are_checked() {
    let component = "spec:\n  inputs:\n    job-stage:\n      default: test\n    level:\n      type: number\n---\n\"check-$[[ inputs.level ]]\":\n  stage: $[[ inputs.job-stage ]]\n  script:\n    - echo $[[ inputs.level ]]\n";
    let files = MemoryFiles::new()
        .with(
            ".gitlab-ci.yml",
            "include:\n  - local: c.yml\n    inputs:\n      level: 3\n  - local: c.yml\n    inputs:\n      level: 4\n      job-stage: build\n",
        )
        .with("c.yml", component);
    let pipeline = load_files(&files);
    let jobs: Vec<(&str, &str, &str)> = pipeline
        .jobs
        .iter()
        .map(|j| (j.name.as_str(), j.stage.as_str(), j.script[0].as_str()))
        .collect();
    assert_eq!(
        jobs,
        [
            ("check-3", "test", "echo 3"),
            ("check-4", "build", "echo 4")
        ]
    );
    let bad = MemoryFiles::new()
        .with(
            ".gitlab-ci.yml",
            "include:\n  - local: c.yml\n    inputs:\n      level: three\n",
        )
        .with("c.yml", component);
    assert_eq!(
        load_files_err(&bad),
        ".gitlab-ci.yml:2:5: `level` input: provided value is not a number (a string)"
    );
}

#[test]
fn repeated_includes_are_read_once_and_cycles_are_refused() {
    // A diamond 18 levels deep (each level includes the next file twice) is read once per file.
    let mut files = MemoryFiles::new().with(".gitlab-ci.yml", "include: [l0.yml, l0.yml]\n");
    for level in 0..18 {
        files.insert(
            &format!("l{level}.yml"),
            &format!(
                "include:\n  - l{next}.yml\n  - local: l{next}.yml\njob{level}:\n  script: [x]\n",
                next = level + 1
            ),
        );
    }
    files.insert("l18.yml", "last:\n  script: [x]\n");
    let pipeline = load(&files, ".gitlab-ci.yml").unwrap_or_else(|e| panic!("{}", chain(&e)));
    assert_eq!(pipeline.files.len(), 20);
    assert_eq!(pipeline.jobs.len(), 19);

    let cycle = MemoryFiles::new()
        .with(".gitlab-ci.yml", "include: a.yml\n")
        .with("a.yml", "include: b.yml\n")
        .with("b.yml", "include: a.yml\n");
    assert_eq!(
        load_files_err(&cycle),
        "b.yml:1:10: include cycle: `a.yml` includes itself"
    );
}

#[test]
fn remote_integrity_is_checked() {
    let url = "https://example.test/r.yml";
    let text = "r:\n  script: [x]\n";
    let files = |hash: &str| {
        MemoryFiles::new()
            .with(
                ".gitlab-ci.yml",
                &format!("include:\n  - remote: {url}\n    integrity: {hash}\n"),
            )
            .with_external(
                External::Remote {
                    url: url.to_owned(),
                },
                text,
            )
    };
    // sha256 of `text`, base64.
    let good = "sha256-wAnqDDrT3RdtWmS7kRmtgndrmJvDFBKosJHT5EpXmeo=";
    let error = load_files_err(&files(
        "sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    ));
    assert!(error.contains("checking its integrity"), "{error}");
    assert!(error.contains(good), "{error}");
    assert_eq!(load_files(&files(good)).jobs.len(), 1);
}

#[test]
fn pipeline_inputs_fill_the_root_spec() {
    let files = MemoryFiles::new().with(
        ".gitlab-ci.yml",
        "spec:\n  inputs:\n    environment:\n      options: [staging, production]\n    replicas:\n      type: number\n      default: 1\n    regions:\n      type: array\n      default: [eu]\n---\ndeploy:\n  script:\n    - echo $[[ inputs.environment ]] x$[[ inputs.replicas ]]\n  parallel:\n    matrix:\n      - REGION: $[[ inputs.regions ]]\n",
    );
    let with = |inputs: &[(&str, &str)]| {
        let options = LoadOptions {
            inputs: inputs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..LoadOptions::default()
        };
        load_with(&files, ".gitlab-ci.yml", &options).map_err(|e| chain(&e))
    };
    let pipeline = with(&[
        ("environment", "production"),
        ("replicas", "3"),
        ("regions", "[eu, us]"),
    ])
    .unwrap();
    assert_eq!(pipeline.jobs[0].script, ["echo production x3"]);
    assert!(matches!(
        &pipeline.jobs[0].parallel,
        Some(runnel_pipeline::Parallel::Matrix(m)) if m[0][0].1 == ["eu", "us"]
    ));
    assert_eq!(
        with(&[]).unwrap_err(),
        ".gitlab-ci.yml:12:1: `environment` input: required value has not been provided"
    );
    assert!(
        with(&[("environment", "qa")])
            .unwrap_err()
            .contains("not in the list of allowed options (staging, production)")
    );
}
