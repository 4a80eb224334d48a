//! `verify`, `unregister`, `list` and `lint` through the binary.

use runnel_config::ConfigFile;

use crate::support::{TestEnv, fixture};

/// Appends a runner whose token GitLab does not know.
fn add_unknown_runner(env: &TestEnv) {
    let mut text = env.config_text();
    text.push_str(&format!(
        "\n[[runners]]\n  name = \"stale\"\n  url = \"{}\"\n  token = \"glrt-revoked-token-xyz\"\n  executor = \"shell\"\n",
        env.url()
    ));
    std::fs::write(env.config_path(), text).unwrap();
}

#[tokio::test]
async fn verify_accepts_known_runners() {
    let env = TestEnv::new().await;
    env.register_shell_runner("one").await;
    let run = env.runnel(&["verify"], "").await;
    run.assert_success();
    assert!(run.stderr.contains("is valid"), "{}", run.stderr);
}

#[tokio::test]
async fn verify_reports_unknown_runners_and_delete_removes_them() {
    let env = TestEnv::new().await;
    env.register_shell_runner("kept").await;
    add_unknown_runner(&env);

    let run = env.runnel(&["verify"], "").await;
    run.assert_failure();
    assert!(run.stderr.contains("is removed"), "{}", run.stderr);
    assert!(
        !run.output().contains("glrt-revoked-token-xyz"),
        "token leaked: {}",
        run.output()
    );
    assert_eq!(
        ConfigFile::load(env.config_path())
            .unwrap()
            .config()
            .runners
            .len(),
        2,
        "without --delete nothing changes"
    );

    env.runnel(&["verify", "--delete"], "")
        .await
        .assert_success();
    let file = ConfigFile::load(env.config_path()).unwrap();
    let names: Vec<_> = file
        .config()
        .runners
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(names, ["kept"]);
}

#[tokio::test]
async fn unregister_all_runners_removes_them_everywhere() {
    let env = TestEnv::new().await;
    let first = env.register_shell_runner("first").await;
    let second = env.register_shell_runner("second").await;
    env.runnel(&["unregister", "--all-runners"], "")
        .await
        .assert_success();

    assert!(
        ConfigFile::load(env.config_path())
            .unwrap()
            .config()
            .runners
            .is_empty()
    );
    for token in [first, second] {
        let runner = env
            .fake
            .runners()
            .into_iter()
            .find(|r| r.token.expose() == token)
            .unwrap();
        assert!(
            runner.managers.is_empty(),
            "the runner manager is unregistered on GitLab"
        );
    }
}

#[tokio::test]
async fn unregister_by_name_keeps_the_others() {
    let env = TestEnv::new().await;
    env.register_shell_runner("first").await;
    env.register_shell_runner("second").await;
    env.runnel(&["unregister", "--name", "first"], "")
        .await
        .assert_success();
    let file = ConfigFile::load(env.config_path()).unwrap();
    let names: Vec<_> = file
        .config()
        .runners
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(names, ["second"]);

    let run = env.runnel(&["unregister", "--name", "nope"], "").await;
    run.assert_failure();
    assert!(run.stderr.contains("\"nope\""), "{}", run.stderr);
}

#[tokio::test]
async fn unregister_by_url_and_token_removes_a_legacy_runner() {
    let env = TestEnv::new().await;
    env.fake.add_registration_token("registration-token");
    env.runnel(
        &[
            "register",
            "--non-interactive",
            "--url",
            env.url(),
            "--registration-token",
            "registration-token",
            "--executor",
            "shell",
        ],
        "",
    )
    .await
    .assert_success();
    let token = env.fake.runners()[0].token.expose().to_owned();
    env.runnel(&["unregister", "--url", env.url(), "--token", &token], "")
        .await
        .assert_success();
    assert!(
        env.fake.runners().is_empty(),
        "the legacy runner is deleted on GitLab"
    );
    assert!(
        ConfigFile::load(env.config_path())
            .unwrap()
            .config()
            .runners
            .is_empty()
    );
}

#[tokio::test]
async fn list_shows_runners_without_their_tokens() {
    let env = TestEnv::new().await;
    let token = env.register_shell_runner("listed").await;
    let run = env.runnel(&["list"], "").await;
    run.assert_success();
    assert!(
        run.stderr.contains("Listing configured runners"),
        "{}",
        run.stderr
    );
    let line = run
        .stderr
        .lines()
        .find(|l| l.starts_with("listed"))
        .expect("a line for the runner");
    assert!(line.contains("Executor=shell"), "{line}");
    assert!(
        line.contains(&format!("Token={}", runnel_types::short_token(&token))),
        "{line}"
    );
    assert!(
        !run.output().contains(&token),
        "full token printed: {}",
        run.output()
    );
}

#[tokio::test]
async fn lint_accepts_the_official_sample() {
    let env = TestEnv::new().await;
    std::fs::copy(fixture("lint-valid.toml"), env.config_path()).unwrap();
    let run = env.runnel(&["lint"], "").await;
    run.assert_success();
    assert!(run.stderr.contains("is valid"), "{}", run.stderr);
}

#[tokio::test]
async fn lint_shows_line_and_column_of_a_syntax_error() {
    let env = TestEnv::new().await;
    std::fs::write(
        env.config_path(),
        "concurrent = 1\n[[runners]]\n  name = \"x\n",
    )
    .unwrap();
    let run = env.runnel(&["lint"], "").await;
    run.assert_failure();
    assert!(run.stderr.contains("config.toml:3:"), "{}", run.stderr);
}

#[tokio::test]
async fn lint_reports_every_problem_and_warns_about_unknown_keys() {
    let env = TestEnv::new().await;
    std::fs::write(
        env.config_path(),
        "concurrent = 1\nunknown_global = true\n[[runners]]\n  name = \"a\"\n  url = \"ftp://x\"\n  token = \"t\"\n  executor = \"dockr\"\n",
    )
    .unwrap();
    let run = env.runnel(&["lint"], "").await;
    run.assert_failure();
    assert!(
        run.stderr.contains("config.toml:7:"),
        "executor line named: {}",
        run.stderr
    );
    assert!(run.stderr.contains("dockr"), "{}", run.stderr);
    assert!(
        run.stderr.contains("config.toml:5:"),
        "url line named: {}",
        run.stderr
    );
    assert!(run.stderr.contains("unknown_global"), "{}", run.stderr);
}

/// Review L12: `lint` called a config valid whose Docker values fail at job start.
#[tokio::test]
async fn lint_checks_docker_sizes_and_cpus() {
    let env = TestEnv::new().await;
    std::fs::write(
        env.config_path(),
        "concurrent = 1\n[[runners]]\n  name = \"d\"\n  url = \"https://gitlab.example.com\"\n  token = \"glrt-x\"\n  executor = \"docker\"\n  [runners.docker]\n    image = \"alpine\"\n    memory = \"99999999999999999999g\"\n",
    )
    .unwrap();
    let run = env.runnel(&["lint"], "").await;
    run.assert_failure();
    assert!(run.stderr.contains("memory"), "{}", run.stderr);
    assert!(run.stderr.contains("is not valid"), "{}", run.stderr);
}

#[tokio::test]
async fn an_unknown_key_is_a_warning_and_survives_a_save() {
    let env = TestEnv::new().await;
    std::fs::write(
        env.config_path(),
        "concurrent = 1\nmy_custom_key = \"kept\"\n",
    )
    .unwrap();
    let run = env.runnel(&["lint"], "").await;
    run.assert_success();
    assert!(run.stderr.contains("my_custom_key"), "{}", run.stderr);
    env.register_shell_runner("after").await;
    assert!(
        env.config_text().contains("my_custom_key = \"kept\""),
        "{}",
        env.config_text()
    );
}

#[tokio::test]
async fn a_broken_config_stops_commands_with_the_position() {
    let env = TestEnv::new().await;
    std::fs::write(env.config_path(), "concurrent = [\n").unwrap();
    let run = env.runnel(&["list"], "").await;
    run.assert_failure();
    assert!(run.stderr.contains("config.toml:"), "{}", run.stderr);
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
}
