//! Real projects' CI files (`tests/real-world/`, see its README for their origin): `--list` for
//! each, as a push to the project's default branch on its own GitLab instance. A file whose
//! includes live outside the project stops with the one error that names the include (the
//! fixtures hold no other project's files), which is snapshotted too.

use std::path::{Path, PathBuf};

use runnel_exec::render_list;
use runnel_pipeline::{
    Context, External, FetchError, LoadOptions, LocalRun, MemoryFiles, SourceFiles, evaluate,
    load_with,
};

use crate::corpus::walk;

fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(&format!(": {inner}"));
        source = inner.source();
    }
    text
}

/// A project's files, and the other projects' files under `tests/real-world/_external/`
/// (`project/<path>@<ref>/<file>`, `template/<name>`, `component/<address>.yml`,
/// `remote/<url without scheme>`), copied from their public mirrors like the projects' own.
struct Fixture {
    files: MemoryFiles,
    external: PathBuf,
}

impl SourceFiles for Fixture {
    fn read(&self, path: &str) -> std::io::Result<String> {
        self.files.read(path)
    }

    fn list(&self) -> Vec<String> {
        self.files.list()
    }

    fn fetch(&self, include: &External) -> Result<String, FetchError> {
        let relative = match include {
            External::Project {
                project,
                reference,
                file,
            } => format!(
                "project/{project}@{}/{file}",
                reference.as_deref().unwrap_or("HEAD")
            ),
            External::Template { name } => format!("template/{name}"),
            External::Component { address } => format!("component/{address}.yml"),
            External::Remote { url } => format!(
                "remote/{}",
                url.split_once("://").map_or(url.as_str(), |(_, rest)| rest)
            ),
        };
        std::fs::read_to_string(self.external.join(&relative)).map_err(|_| FetchError {
            tried: format!("tests/real-world/_external/{relative}"),
            hint: "that project's files are not part of the fixtures".to_owned(),
        })
    }
}

/// `--list` of one project directory, or its error.
fn list(dir: &Path) -> String {
    let mut paths = Vec::new();
    walk(dir, dir, &mut paths);
    let mut files = MemoryFiles::new();
    for path in paths.iter().filter(|p| *p != "ORIGIN") {
        let text =
            std::fs::read_to_string(dir.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        files.insert(path, &text);
    }
    let origin = std::fs::read_to_string(dir.join("ORIGIN")).unwrap();
    let mut lines = origin.lines();
    let url = lines.next().unwrap_or_default();
    let branch = lines.next().unwrap_or("main");
    let (scheme, rest) = url.split_once("://").unwrap();
    let (host, project_path) = rest.split_once('/').unwrap();
    let run = LocalRun {
        branch: Some(branch.to_owned()),
        sha: "0123456789abcdef0123456789abcdef01234567".to_owned(),
        message: "Update the CI".to_owned(),
        author: "Runnel Test <test@example.com>".to_owned(),
        default_branch: branch.to_owned(),
        project_path: project_path.to_owned(),
        server_url: format!("{scheme}://{host}"),
        pipeline_id: 1,
        ..LocalRun::default()
    };
    let cx = Context {
        predefined: run.predefined_variables(),
        files: paths.clone(),
        ..Context::default()
    };
    let options = LoadOptions {
        variables: cx.predefined.clone(),
        changed_files: None,
        inputs: Vec::new(),
    };
    let fixture = Fixture {
        files,
        external: dir.parent().unwrap().join("_external"),
    };
    let pipeline = match load_with(&fixture, ".gitlab-ci.yml", &options) {
        Ok(pipeline) => pipeline,
        Err(error) => return format!("error: {}\n", chain(&error)),
    };
    match evaluate(&pipeline, &cx) {
        Ok(plan) => render_list(&plan, &pipeline.warnings, &[], false),
        Err(error) => format!("error: {}\n", chain(&error)),
    }
}

#[test]
fn real_world_pipelines_list_like_gitlab() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/real-world");
    let mut projects: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir() && e.file_name() != "_external")
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    projects.sort();
    assert!(projects.len() >= 15, "{projects:?}");
    for project in projects {
        let text = list(&root.join(&project));
        insta::assert_snapshot!(format!("real_world__{project}"), text);
    }
}
