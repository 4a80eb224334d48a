use runnel_config::{ConfigFile, EditError, Executor, NewRunner, RawTable, Shell};
use runnel_types::RunnerToken;
use time::macros::datetime;

use crate::{fake_env, load_copy, parse, read_data};

fn docker_runner() -> NewRunner {
    let mut runner = NewRunner::new(
        "new-docker",
        "https://gitlab.example.com",
        RunnerToken::new("glrt-t2_newtokennewtoken"),
        Executor::Docker,
    );
    runner.id = Some(7);
    runner.token_obtained_at = Some(datetime!(2025-06-01 10:00:00 UTC));
    runner.limit = Some(2);
    runner.shell = Some(Shell::Bash);
    let mut docker = RawTable::new();
    docker.insert("image", "alpine:latest");
    docker.insert("privileged", false);
    docker.insert("volumes", vec!["/cache".to_owned()]);
    let mut service = toml::Table::new();
    service.insert("name".into(), "redis:7".into());
    docker.insert(
        "services",
        toml::Value::Array(vec![toml::Value::Table(service)]),
    );
    runner.sections.push(("docker".into(), docker));
    runner
}

#[test]
fn add_runner_keeps_the_file_and_appends_the_official_layout() {
    let original = read_data("commented.toml");
    let (dir, mut file) = load_copy("commented.toml");
    let index = file.add_runner(&docker_runner()).unwrap();
    assert_eq!(index, 3);
    file.save().unwrap();

    let saved = std::fs::read_to_string(dir.path().join("config.toml")).unwrap();
    let appended = saved
        .strip_prefix(&original)
        .expect("the original text is kept verbatim");
    insta::assert_snapshot!(appended);

    let reloaded = ConfigFile::load_with_env(dir.path().join("config.toml"), fake_env).unwrap();
    let runner = &reloaded.config().runners[3];
    assert_eq!(runner.name, "new-docker");
    assert_eq!(runner.id, Some(7));
    assert_eq!(runner.token.expose(), "glrt-t2_newtokennewtoken");
    assert_eq!(
        runner.token_obtained_at,
        Some(datetime!(2025-06-01 10:00:00 UTC))
    );
    assert_eq!(runner.token_expires_at, None);
    let docker = runner.docker.as_ref().unwrap();
    assert_eq!(docker.image.as_deref(), Some("alpine:latest"));
    assert_eq!(docker.services[0].name, "redis:7");
}

#[test]
fn add_runner_to_a_new_file_writes_the_official_header() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    let mut file = ConfigFile::load_with_env(&path, fake_env).unwrap();
    let runner = NewRunner::new(
        "shell-runner",
        "https://gitlab.com/",
        RunnerToken::new("glrt-shelltoken"),
        Executor::Shell,
    );
    file.add_runner(&runner).unwrap();
    file.save().unwrap();
    assert!(file.existed());
    insta::assert_snapshot!(std::fs::read_to_string(&path).unwrap());
    assert_eq!(file.config().concurrent, 1);
    assert_eq!(file.config().session_server.session_timeout, Some(1800));
}

#[test]
fn set_runner_token_changes_only_the_token_lines() {
    let original = read_data("commented.toml");
    let (_dir, mut file) = load_copy("commented.toml");
    let token = RunnerToken::new("glrt-t1_rotatedrotatedrotated");
    let obtained = datetime!(2025-07-01 00:00:00 UTC);
    let expires = datetime!(2025-10-01 00:00:00 UTC);
    file.set_runner_token(0, &token, obtained, Some(expires))
        .unwrap();

    let expected = original
        .replace(
            "token = \"glrt-t1_abcdefghijklmnopqrst\"",
            "token = \"glrt-t1_rotatedrotatedrotated\"",
        )
        .replace(
            "token_obtained_at = 2025-01-02T03:04:05Z",
            "token_obtained_at = 2025-07-01T00:00:00Z",
        )
        .replace(
            "token_expires_at = 0001-01-01T00:00:00Z",
            "token_expires_at = 2025-10-01T00:00:00Z",
        );
    assert_eq!(file.contents(), expected);
    let runner = &file.config().runners[0];
    assert_eq!(runner.token.expose(), "glrt-t1_rotatedrotatedrotated");
    assert_eq!(runner.token_expires_at, Some(expires));
}

#[test]
fn set_runner_token_adds_missing_timestamps_with_the_same_indent() {
    let mut file =
        parse("[[runners]]\n  name = \"a\"\n  token = \"old\" # keep me\n  executor = \"shell\"\n")
            .unwrap();
    file.set_runner_token(
        0,
        &RunnerToken::new("new"),
        datetime!(2025-01-01 0:00 UTC),
        None,
    )
    .unwrap();
    insta::assert_snapshot!(file.contents(), @r#"
    [[runners]]
      name = "a"
      token = "new" # keep me
      executor = "shell"
      token_obtained_at = 2025-01-01T00:00:00Z
      token_expires_at = 0001-01-01T00:00:00Z
    "#);
}

#[test]
fn remove_runner_drops_only_that_entry() {
    let (_dir, mut file) = load_copy("commands_testdata_test-config.toml");
    file.remove_runner(1).unwrap();
    let names: Vec<&str> = file
        .config()
        .runners
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(names, ["test-docker-runner", "test-shell-runner-2"]);
    assert!(!file.contents().contains("test-shell-runner-1"));
    assert!(
        file.contents()
            .starts_with("concurrent = 2\ncheck_interval = 3\n")
    );
}

#[test]
fn edits_of_missing_runners_are_refused() {
    let (_dir, mut file) = load_copy("commands_testdata_lint_valid.toml");
    let before = file.contents().to_owned();
    let error = file.remove_runner(5).unwrap_err();
    assert!(matches!(error, EditError::NoSuchRunner { index: 5, .. }));
    assert!(
        error.to_string().starts_with("no runner at index 5 in "),
        "{error}"
    );
    let error = file
        .set_runner_token(
            1,
            &RunnerToken::new("x"),
            datetime!(2025-01-01 0:00 UTC),
            None,
        )
        .unwrap_err();
    assert!(matches!(error, EditError::NoSuchRunner { index: 1, .. }));
    assert_eq!(file.contents(), before);
}

#[test]
fn an_edit_that_would_break_the_file_is_refused() {
    let (_dir, mut file) = load_copy("commands_testdata_lint_valid.toml");
    let before = file.contents().to_owned();
    let mut runner = NewRunner::new(
        "bad",
        "https://gitlab.example.com",
        RunnerToken::new("glrt-x"),
        Executor::Shell,
    );
    runner.settings.insert("request_concurrency", "many");
    let error = file.add_runner(&runner).unwrap_err();
    assert!(matches!(error, EditError::Invalid { .. }));
    assert_eq!(file.contents(), before);
    assert_eq!(file.config().runners.len(), 1);
}

#[test]
fn edits_keep_crlf_line_endings() {
    let mut file =
        parse("concurrent = 1\r\n\r\n[[runners]]\r\n  token = \"a\"\r\n  executor = \"shell\"\r\n")
            .unwrap();
    file.set_runner_token(
        0,
        &RunnerToken::new("b"),
        datetime!(2025-01-01 0:00 UTC),
        None,
    )
    .unwrap();
    assert!(
        file.contents()
            .starts_with("concurrent = 1\r\n\r\n[[runners]]\r\n  token = \"b\"\r\n")
    );
    assert!(
        !file.contents().replace("\r\n", "").contains('\n'),
        "every line ends in CRLF"
    );
}

#[test]
fn removing_the_last_runner_removes_its_sections_too() {
    let (_dir, mut file) = load_copy("commands_testdata_lint_valid.toml");
    file.remove_runner(0).unwrap();
    assert!(file.config().runners.is_empty());
    assert_eq!(file.contents(), "concurrent = 4\ncheck_interval = 0\n");
}
