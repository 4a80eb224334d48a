//! The loader against GitLab's published CI schema: `tests/fixtures/kitchen-sink.yml` uses every
//! keyword of `tests/fixtures/gitlab-ci-schema-keywords.json` (the schema's property names) and
//! must load; the keywords runnel exec refuses fail with a message that names them.

use runnel_pipeline::{External, LoadOptions, MemoryFiles, evaluate, load_with};

use crate::{chain, load_files_err, push_context};

const KEYWORDS: &str = include_str!("../fixtures/gitlab-ci-schema-keywords.json");
const KITCHEN_SINK: &str = include_str!("../fixtures/kitchen-sink.yml");

/// Keywords of the schema that runnel exec refuses, loudly (tested below).
const REFUSED: &[(&str, &str)] = &[("job", "inputs"), ("spec_input", "rules")];

fn sections() -> Vec<(String, Vec<String>)> {
    // The fixture is flat: `"section": ["key", …]` per line.
    let mut out = Vec::new();
    for line in KEYWORDS.lines() {
        let line = line.trim().trim_end_matches(',');
        let Some((name, list)) = line.split_once(": [") else {
            continue;
        };
        let keys = list
            .trim_end_matches(']')
            .split(", ")
            .map(|k| k.trim_matches('"').to_owned())
            .collect();
        out.push((name.trim_matches('"').to_owned(), keys));
    }
    out
}

fn integrity(text: &str) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    format!(
        "sha256-{}",
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(text.as_bytes()))
    )
}

fn kitchen_sink() -> MemoryFiles {
    let remote = "remote-job:\n  script: [echo remote]\n";
    MemoryFiles::new()
        .with(
            ".gitlab-ci.yml",
            &KITCHEN_SINK.replace("INTEGRITY", &integrity(remote)),
        )
        .with("ci/local.yml", ".test-base:\n  script: [cargo test]\n")
        .with_external(
            External::Project {
                project: "group/shared".into(),
                reference: Some("v1".into()),
                file: "ci/project.yml".into(),
            },
            "spec:\n  inputs:\n    level:\n      type: number\n---\nshared-$[[ inputs.level ]]:\n  script: [echo shared]\n",
        )
        .with_external(
            External::Template {
                name: "Jobs/Build.gitlab-ci.yml".into(),
            },
            ".auto-build:\n  script: [build]\n",
        )
        .with_external(
            External::Component {
                address: "gitlab.example.com/group/components/lint@1.0".into(),
            },
            "component-lint:\n  script: [lint]\n",
        )
        .with_external(
            External::Remote {
                url: "https://example.test/remote.yml".into(),
            },
            remote,
        )
}

#[test]
fn the_kitchen_sink_names_every_schema_keyword() {
    let sections = sections();
    assert!(sections.len() > 30, "fixture sections: {}", sections.len());
    let mut missing = Vec::new();
    for (section, keys) in &sections {
        for key in keys {
            let named = KITCHEN_SINK.lines().any(|line| {
                let line = line.trim_start().trim_start_matches("- ");
                line.starts_with(&format!("{key}:"))
            });
            if !named && !REFUSED.contains(&(section.as_str(), key.as_str())) {
                missing.push(format!("{section}.{key}"));
            }
        }
    }
    assert!(missing.is_empty(), "not in kitchen-sink.yml: {missing:?}");
}

#[test]
fn every_schema_keyword_loads() {
    let mut cx = push_context(&[]);
    cx.files = vec!["Cargo.toml".to_owned(), "ci/local.yml".to_owned()];
    let options = LoadOptions {
        variables: cx.predefined.clone(),
        changed_files: None,
        inputs: Vec::new(),
    };
    let pipeline = load_with(&kitchen_sink(), ".gitlab-ci.yml", &options)
        .unwrap_or_else(|e| panic!("{}", chain(&e)));
    let names: Vec<&str> = pipeline.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "shared-2",
            "component-lint",
            "remote-job",
            "pages",
            "build",
            "test",
            "stop-review",
            "release"
        ]
    );
    // Server-only keywords are warnings with their line, never silently dropped.
    let warnings: Vec<String> = pipeline.warnings.iter().map(ToString::to_string).collect();
    for expected in [
        "workflow:auto_cancel",
        "are not fetched locally; pass each with --secret NAME=VALUE",
        "trigger jobs (downstream pipelines) are not supported locally",
        "`run` (CI steps) is not supported locally",
    ] {
        assert!(
            warnings.iter().any(|w| w.contains(expected)),
            "no warning {expected:?} in {warnings:#?}"
        );
    }
    let plan = evaluate(&pipeline, &cx).unwrap_or_else(|e| panic!("{}", chain(&e)));
    assert_eq!(plan.name.as_deref(), Some("Pipeline release on main"));
}

#[test]
fn refused_keywords_name_themselves() {
    let job_inputs = load_files_err(&MemoryFiles::new().with(
        ".gitlab-ci.yml",
        "job:\n  inputs:\n    x:\n      default: 1\n  script: [x]\n",
    ));
    assert!(job_inputs.contains("job `inputs`"), "{job_inputs}");
    let input_rules = load_files_err(&MemoryFiles::new().with(
        ".gitlab-ci.yml",
        "spec:\n  inputs:\n    x:\n      rules:\n        - if: $A\n---\njob:\n  script: [x]\n",
    ));
    assert!(
        input_rules.contains("spec:inputs:rules are not supported"),
        "{input_rules}"
    );
}
