//! Glob semantics of `select`.

use runnel_archive::{EntryKind, PathSpec, Selection, Warning, select};

use crate::Scratch;

fn spec(paths: &[&str], exclude: &[&str]) -> PathSpec {
    PathSpec {
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        exclude: exclude.iter().map(|p| (*p).to_owned()).collect(),
        untracked: false,
    }
}

/// One line per entry and warning, with the project directory replaced.
fn render(scratch: &Scratch, selection: &Selection) -> String {
    let mut out = String::new();
    for entry in selection.entries() {
        let kind = match entry.kind {
            EntryKind::File { size } => format!("file {size}"),
            EntryKind::Dir => "dir".to_owned(),
            EntryKind::Symlink => "link".to_owned(),
        };
        out.push_str(&format!("{kind:8} {}\n", entry.path));
    }
    for warning in selection.warnings() {
        out.push_str(&format!("warning: {warning}\n"));
    }
    for (pattern, count) in selection.excluded() {
        out.push_str(&format!("excluded {count} by {pattern}\n"));
    }
    out.replace(&scratch.project.display().to_string(), "[PROJECT]")
}

fn tree() -> Scratch {
    let scratch = Scratch::new();
    scratch.file("README.md", "readme");
    scratch.file("build/app", "binary");
    scratch.file("build/lib/libx.so", "lib");
    scratch.file("build/lib/libx.a", "archive");
    scratch.file("build/lib/deep/libz.so", "z");
    scratch.file("build/.hidden.so", "hidden");
    scratch.file("logs/a.log", "a");
    scratch.file("logs/b.txt", "b");
    fs_err::create_dir_all(scratch.project.join("empty")).expect("empty dir");
    scratch
}

fn check(paths: &[&str], exclude: &[&str]) -> String {
    let scratch = tree();
    let selection = select(&scratch.project, &spec(paths, exclude)).expect("select");
    render(&scratch, &selection)
}

#[test]
fn directory_includes_everything_below() {
    insta::assert_snapshot!(check(&["build"], &[]), @r"
    dir      build
    file 6   build/.hidden.so
    file 6   build/app
    dir      build/lib
    dir      build/lib/deep
    file 1   build/lib/deep/libz.so
    file 7   build/lib/libx.a
    file 3   build/lib/libx.so
    ");
}

#[test]
fn double_star_spans_directories_and_single_star_does_not() {
    insta::assert_snapshot!(check(&["build/**/*.so"], &[]), @r"
    file 6   build/.hidden.so
    file 1   build/lib/deep/libz.so
    file 3   build/lib/libx.so
    ");
    insta::assert_snapshot!(check(&["build/*.so", "*/lib/lib?.a"], &[]), @r"
    file 6   build/.hidden.so
    file 7   build/lib/libx.a
    ");
}

#[test]
fn character_classes_and_alternatives() {
    insta::assert_snapshot!(check(&["logs/[a-a].*", "{README.md,empty}"], &[]), @r"
    file 6   README.md
    dir      empty
    file 1   logs/a.log
    ");
}

#[test]
fn exclude_applies_to_every_candidate() {
    insta::assert_snapshot!(check(&["build", "logs"], &["build/lib/**", "**/*.txt"]), @r"
    dir      build
    file 6   build/.hidden.so
    file 6   build/app
    dir      build/lib
    dir      logs
    file 1   logs/a.log
    excluded 1 by **/*.txt
    excluded 4 by build/lib/**
    ");
}

#[test]
fn no_match_warns_with_the_official_message() {
    insta::assert_snapshot!(check(&["missing/**", "nope.txt"], &[]), @r"
    warning: missing/**: no matching files. Ensure that the artifact path is relative to the working directory ([PROJECT])
    warning: nope.txt: no matching files. Ensure that the artifact path is relative to the working directory ([PROJECT])
    ");
}

#[test]
fn paths_outside_the_project_are_refused() {
    let scratch = tree();
    scratch.file("../outside/secret", "secret");
    let inside_absolute = scratch.project.join("logs").display().to_string();
    let outside_absolute = scratch.outside.display().to_string();
    let paths = [
        "../outside/secret",
        "build/../../outside",
        &outside_absolute,
        &inside_absolute,
    ];
    let selection = select(&scratch.project, &spec(&paths, &[])).expect("select");
    let rendered = render(&scratch, &selection).replace(&outside_absolute, "[OUTSIDE]");
    insta::assert_snapshot!(rendered, @r"
    dir      logs
    file 1   logs/a.log
    file 1   logs/b.txt
    warning: ../outside/secret: artifact path is not a subpath of project directory
    warning: build/../../outside: artifact path is not a subpath of project directory
    warning: [OUTSIDE]: artifact path is not a subpath of project directory
    ");
}

#[test]
fn symlinks_are_selected_as_links_and_not_followed() {
    let scratch = tree();
    scratch.file("../outside/secret", "secret");
    std::os::unix::fs::symlink(&scratch.outside, scratch.project.join("out")).expect("symlink");
    std::os::unix::fs::symlink("build", scratch.project.join("build-link")).expect("symlink");
    let selection = select(
        &scratch.project,
        &spec(&["out", "build-link", "out/**"], &[]),
    )
    .expect("select");
    insta::assert_snapshot!(render(&scratch, &selection), @r"
    link     build-link
    link     out
    warning: out/**: no matching files. Ensure that the artifact path is relative to the working directory ([PROJECT])
    ");
}

#[test]
fn stats_count_files_dirs_links_and_bytes() {
    let scratch = tree();
    std::os::unix::fs::symlink("README.md", scratch.project.join("link")).expect("symlink");
    let selection = select(&scratch.project, &spec(&["."], &[])).expect("select");
    let stats = selection.stats();
    assert_eq!((stats.files, stats.dirs, stats.symlinks), (8, 5, 1));
    assert_eq!(stats.bytes, 6 + 6 + 3 + 7 + 1 + 6 + 1 + 1);
}

#[test]
fn duplicate_patterns_select_each_path_once() {
    insta::assert_snapshot!(check(&["logs", "logs/*", "./logs/a.log"], &[]), @r"
    dir      logs
    file 1   logs/a.log
    file 1   logs/b.txt
    ");
}

fn git(dir: &std::path::Path, args: &[&str]) {
    let status = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .expect("git runs");
    assert!(status.status.success(), "git {args:?}: {status:?}");
}

#[test]
fn untracked_adds_what_git_reports() {
    let scratch = tree();
    git(&scratch.project, &["init", "-q"]);
    scratch.file(".gitignore", "*.log\n");
    git(&scratch.project, &["add", "README.md", "build"]);
    let selection = select(
        &scratch.project,
        &PathSpec {
            untracked: true,
            ..PathSpec::default()
        },
    )
    .expect("select");
    insta::assert_snapshot!(render(&scratch, &selection), @r"
    file 6   .gitignore
    file 1   logs/b.txt
    ");
}

#[test]
fn untracked_outside_a_repository_warns() {
    let scratch = tree();
    let selection = select(
        &scratch.project,
        &PathSpec {
            untracked: true,
            ..PathSpec::default()
        },
    )
    .expect("select");
    assert!(selection.entries().is_empty());
    let [Warning::UntrackedUnavailable { reason }] = selection.warnings() else {
        panic!("unexpected warnings: {:?}", selection.warnings());
    };
    assert!(reason.contains("git ls-files failed"), "{reason}");
}

#[test]
fn missing_project_dir_is_an_error() {
    let scratch = Scratch::new();
    let error = select(&scratch.project.join("nope"), &PathSpec::default()).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("failed to resolve project directory"),
        "{error}"
    );
}
