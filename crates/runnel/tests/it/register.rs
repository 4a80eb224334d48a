//! `runnel register` against the fake coordinator: both token kinds, interactive and not, and
//! the failure cases.

use std::os::unix::fs::PermissionsExt;

use runnel_config::ConfigFile;
use runnel_fake_gitlab::{FakeConfig, RunnerKind};

use crate::support::TestEnv;

fn is_system_id(text: &str) -> bool {
    let text = text.trim();
    text.len() == 14
        && (text.starts_with("s_") || text.starts_with("r_"))
        && text[2..].chars().all(|c| c.is_ascii_alphanumeric())
}

#[tokio::test]
async fn non_interactive_with_an_authentication_token() {
    let env = TestEnv::with_config(FakeConfig {
        token_lifetime: Some(std::time::Duration::from_secs(30 * 24 * 3600)),
        ..FakeConfig::default()
    })
    .await;
    let token = env.fake.create_runner_token();
    let run = env
        .runnel(
            &[
                "register",
                "--non-interactive",
                "--url",
                env.url(),
                "--token",
                &token,
                "--executor",
                "shell",
                "--name",
                "my-runner",
            ],
            "",
        )
        .await;
    run.assert_success();
    assert!(
        !run.output().contains(&token),
        "the token leaked into the output:\n{}",
        run.output()
    );

    let mode = std::fs::metadata(env.config_path())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "config.toml must be private");
    let file = ConfigFile::load(env.config_path()).unwrap();
    let runner = &file.config().runners[0];
    assert_eq!(runner.name, "my-runner");
    assert_eq!(runner.url, env.url());
    assert_eq!(runner.token.expose(), token);
    assert_eq!(runner.executor.as_str(), "shell");
    assert!(runner.id.is_some_and(|id| id > 0), "id stored");
    assert!(
        runner.token_obtained_at.is_some(),
        "token_obtained_at stored"
    );
    assert!(runner.token_expires_at.is_some(), "token_expires_at stored");

    let system_id = std::fs::read_to_string(env.dir.path().join(".runner_system_id")).unwrap();
    assert!(is_system_id(&system_id), "bad system id {system_id:?}");
    let fake_runner = env
        .fake
        .runners()
        .into_iter()
        .find(|r| r.token.expose() == token)
        .unwrap();
    assert_eq!(fake_runner.managers, vec![system_id.trim().to_owned()]);
}

#[tokio::test]
async fn non_interactive_with_a_legacy_registration_token() {
    let env = TestEnv::new().await;
    env.fake
        .add_registration_token("GR1348941legacy-registration");
    let run = env
        .runnel(
            &[
                "register",
                "--non-interactive",
                "--url",
                env.url(),
                "--registration-token",
                "GR1348941legacy-registration",
                "--executor",
                "shell",
                "--description",
                "legacy",
                "--tag-list",
                "linux, fast",
            ],
            "",
        )
        .await;
    run.assert_success();
    let runners = env.fake.runners();
    assert_eq!(runners.len(), 1);
    let created = &runners[0];
    assert_eq!(created.kind, RunnerKind::Legacy);
    assert_eq!(created.description, "legacy");
    assert_eq!(created.tags, vec!["linux".to_owned(), "fast".to_owned()]);
    assert!(
        !created.run_untagged,
        "tagged runners do not run untagged jobs by default"
    );

    let file = ConfigFile::load(env.config_path()).unwrap();
    let runner = &file.config().runners[0];
    assert_eq!(
        runner.token, created.token,
        "the token GitLab created is stored"
    );
    assert_eq!(runner.id, Some(created.id));
}

#[tokio::test]
async fn interactive_with_an_authentication_token() {
    let env = TestEnv::new().await;
    let token = env.fake.create_runner_token();
    let answers = format!("{}\n{token}\nasked-name\nshell\n", env.url());
    let run = env.runnel(&["register"], &answers).await;
    run.assert_success();
    assert!(
        run.stdout.contains("Enter the GitLab instance URL"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("Enter an executor"), "{}", run.stdout);
    let file = ConfigFile::load(env.config_path()).unwrap();
    assert_eq!(file.config().runners[0].name, "asked-name");
    assert_eq!(file.config().runners[0].token.expose(), token);
}

#[tokio::test]
async fn interactive_with_a_registration_token_asks_for_tags() {
    let env = TestEnv::new().await;
    env.fake.add_registration_token("legacy-registration-token");
    let answers = format!(
        "{}\nlegacy-registration-token\ndesc\nci,docker\nnote\ndocker\nalpine:3\n",
        env.url()
    );
    let run = env.runnel(&["register"], &answers).await;
    run.assert_success();
    assert!(
        run.stdout.contains("Enter tags for the runner"),
        "{}",
        run.stdout
    );
    let created = &env.fake.runners()[0];
    assert_eq!(created.tags, vec!["ci".to_owned(), "docker".to_owned()]);
    assert_eq!(created.maintenance_note, "note");
    let file = ConfigFile::load(env.config_path()).unwrap();
    let runner = &file.config().runners[0];
    let docker = runner.docker.as_ref().expect("docker section written");
    assert_eq!(docker.image.as_deref(), Some("alpine:3"));
    assert!(
        docker.volumes.iter().any(|v| v == "/cache"),
        "cache volume added: {:?}",
        docker.volumes
    );
}

#[tokio::test]
async fn server_side_settings_are_refused_with_an_authentication_token() {
    let env = TestEnv::new().await;
    let token = env.fake.create_runner_token();
    let run = env
        .runnel(
            &[
                "register",
                "--non-interactive",
                "--url",
                env.url(),
                "--token",
                &token,
                "--executor",
                "shell",
                "--tag-list",
                "a,b",
            ],
            "",
        )
        .await;
    run.assert_failure();
    assert!(run.stderr.contains("--tag-list"), "{}", run.stderr);
    assert!(!env.config_path().exists(), "nothing saved");
}

#[tokio::test]
async fn a_wrong_token_is_reported_and_nothing_is_saved() {
    let env = TestEnv::new().await;
    let run = env
        .runnel(
            &[
                "register",
                "--non-interactive",
                "--url",
                env.url(),
                "--token",
                "glrt-not-a-real-token",
                "--executor",
                "shell",
            ],
            "",
        )
        .await;
    run.assert_failure();
    assert!(run.stderr.contains("403"), "{}", run.stderr);
    assert!(
        !run.output().contains("glrt-not-a-real-token"),
        "token leaked: {}",
        run.output()
    );
    assert!(!env.config_path().exists());
}

#[tokio::test]
async fn an_unreachable_server_is_named() {
    let env = TestEnv::new().await;
    let run = env
        .runnel(
            &[
                "register",
                "--non-interactive",
                "--url",
                "http://127.0.0.1:9/",
                "--token",
                "glrt-abc",
                "--executor",
                "shell",
            ],
            "",
        )
        .await;
    run.assert_failure();
    assert!(run.stderr.contains("127.0.0.1:9"), "{}", run.stderr);
}

#[tokio::test]
async fn a_missing_required_value_names_the_flag() {
    let env = TestEnv::new().await;
    let token = env.fake.create_runner_token();
    let run = env
        .runnel(
            &[
                "register",
                "--non-interactive",
                "--url",
                env.url(),
                "--token",
                &token,
            ],
            "",
        )
        .await;
    run.assert_failure();
    assert!(run.stderr.contains("--executor"), "{}", run.stderr);
}

/// Makes a directory immutable (even for root) until dropped.
struct Immutable(std::path::PathBuf);

impl Immutable {
    fn new(dir: &std::path::Path) -> Self {
        let status = std::process::Command::new("chattr")
            .arg("+i")
            .arg(dir)
            .status()
            .expect("chattr runs");
        assert!(status.success(), "chattr +i failed");
        Self(dir.to_path_buf())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        // Best effort: a failure here leaves a temp dir that cannot be deleted, nothing worse.
        std::process::Command::new("chattr")
            .arg("-i")
            .arg(&self.0)
            .status()
            .ok();
    }
}

#[tokio::test]
async fn an_unwritable_config_dir_unregisters_again() {
    let env = TestEnv::new().await;
    let token = env.fake.create_runner_token();
    let dir = env.dir.path().join("locked");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join(".runner_system_id"), "s_0123456789ab").unwrap();
    let config = dir.join("config.toml");
    let _lock = Immutable::new(&dir);
    let run = crate::support::run_runnel(
        &[
            "register",
            "--non-interactive",
            "--url",
            env.url(),
            "--token",
            &token,
            "--executor",
            "shell",
            "-c",
            config.to_str().unwrap(),
        ],
        "",
        env.dir.path(),
    )
    .await;
    run.assert_failure();
    assert!(
        run.stderr.contains("locked"),
        "the directory is named: {}",
        run.stderr
    );
    let runner = env
        .fake
        .runners()
        .into_iter()
        .find(|r| r.token.expose() == token)
        .unwrap();
    assert!(
        runner.managers.is_empty(),
        "the runner manager was unregistered again: {:?}",
        runner.managers
    );
    assert!(!config.exists());
}

#[tokio::test]
async fn registering_into_an_official_config_keeps_it_byte_for_byte() {
    let env = TestEnv::new().await;
    let original = std::fs::read_to_string(crate::support::fixture("test-config.toml")).unwrap();
    std::fs::write(env.config_path(), &original).unwrap();
    env.register_shell_runner("added").await;
    let text = env.config_text();
    assert!(
        text.starts_with(&original),
        "the existing file must be kept as is:\n{text}"
    );
    let file = ConfigFile::load(env.config_path()).unwrap();
    assert_eq!(file.config().runners.len(), 4);
    assert_eq!(file.config().runners[3].name, "added");
}

#[tokio::test]
async fn custom_flags_fill_the_custom_section() {
    let env = TestEnv::new().await;
    let token = env.fake.create_runner_token();
    let run = env
        .runnel(
            &[
                "register",
                "--non-interactive",
                "--url",
                env.url(),
                "--token",
                &token,
                "--executor",
                "custom",
                "--builds-dir",
                "/builds",
                "--custom-config-exec",
                "/opt/driver/config.sh",
                "--custom-config-args",
                "a",
                "--custom-config-args",
                "b",
                "--custom-config-exec-timeout",
                "30",
                "--custom-prepare-exec",
                "/opt/driver/prepare.sh",
                "--custom-prepare-exec-timeout",
                "40",
                "--custom-run-exec",
                "/opt/driver/run.sh",
                "--custom-run-args=--verbose",
                "--custom-cleanup-exec",
                "/opt/driver/cleanup.sh",
                "--custom-cleanup-args",
                "now",
                "--custom-cleanup-exec-timeout",
                "50",
                "--custom-graceful-kill-timeout",
                "5",
                "--custom-force-kill-timeout",
                "6",
            ],
            "",
        )
        .await;
    run.assert_success();
    let file = ConfigFile::load(env.config_path()).unwrap();
    let custom = file.config().runners[0]
        .custom
        .clone()
        .expect("[runners.custom]");
    assert_eq!(custom.config_exec.as_deref(), Some("/opt/driver/config.sh"));
    assert_eq!(custom.config_args, ["a", "b"]);
    assert_eq!(custom.config_exec_timeout, Some(30));
    assert_eq!(
        custom.prepare_exec.as_deref(),
        Some("/opt/driver/prepare.sh")
    );
    assert_eq!(custom.prepare_exec_timeout, Some(40));
    assert_eq!(custom.run_exec.as_deref(), Some("/opt/driver/run.sh"));
    assert_eq!(custom.run_args, ["--verbose"]);
    assert_eq!(
        custom.cleanup_exec.as_deref(),
        Some("/opt/driver/cleanup.sh")
    );
    assert_eq!(custom.cleanup_args, ["now"]);
    assert_eq!(custom.cleanup_exec_timeout, Some(50));
    assert_eq!(custom.graceful_kill_timeout, Some(5));
    assert_eq!(custom.force_kill_timeout, Some(6));
}

#[tokio::test]
async fn interactive_ssh_registration_asks_the_official_questions() {
    let env = TestEnv::new().await;
    let token = env.fake.create_runner_token();
    // URL, token, name, executor, then host, port, user, password, identity file.
    let answers = format!(
        "{}\n{token}\nssh-runner\nssh\nbuild.example.com\n2222\ndeploy\n\n/keys/id_ed25519\n",
        env.url()
    );
    let run = env
        .runnel(
            &[
                "register",
                "--ssh-known-hosts-file",
                "/etc/runnel/known_hosts",
            ],
            &answers,
        )
        .await;
    run.assert_success();
    for question in [
        "Enter the SSH server address (for example, my.server.com):",
        "Enter the SSH server port (for example, 22):",
        "Enter the SSH user (for example, root):",
        "Enter the SSH password (for example, docker.io):",
        "Enter the path to the SSH identity file (for example, /home/user/.ssh/id_rsa):",
    ] {
        assert!(
            run.stdout.contains(question),
            "{question} not asked:\n{}",
            run.stdout
        );
    }
    let file = ConfigFile::load(env.config_path()).unwrap();
    let ssh = file.config().runners[0].ssh.clone().expect("[runners.ssh]");
    assert_eq!(ssh.host.as_deref(), Some("build.example.com"));
    assert_eq!(ssh.port.as_deref(), Some("2222"));
    assert_eq!(ssh.user.as_deref(), Some("deploy"));
    assert!(ssh.password.is_none());
    assert_eq!(ssh.identity_file.as_deref(), Some("/keys/id_ed25519"));
    assert_eq!(
        ssh.known_hosts_file.as_deref(),
        Some("/etc/runnel/known_hosts")
    );
    assert_eq!(ssh.disable_strict_host_key_checking, None);
}
