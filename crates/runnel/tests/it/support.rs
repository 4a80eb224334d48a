//! Test environment: a temp dir with a config path, a fake GitLab, and a way to run `runnel`.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use runnel_fake_gitlab::{FakeConfig, FakeGitlab};
use tempfile::TempDir;
use tokio::io::AsyncWriteExt;

/// How long any single `runnel` command may take before the test fails.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

pub(crate) struct TestEnv {
    pub(crate) dir: TempDir,
    pub(crate) fake: FakeGitlab,
}

/// What a finished `runnel` command produced.
pub(crate) struct Run {
    pub(crate) status: std::process::ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Run {
    #[track_caller]
    pub(crate) fn assert_success(&self) -> &Self {
        assert!(
            self.status.success(),
            "runnel failed: {}\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }

    #[track_caller]
    pub(crate) fn assert_failure(&self) -> &Self {
        assert!(
            !self.status.success(),
            "runnel should have failed\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// Both output streams together.
    pub(crate) fn output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

impl TestEnv {
    pub(crate) async fn new() -> Self {
        Self::with_config(FakeConfig::default()).await
    }

    pub(crate) async fn with_config(config: FakeConfig) -> Self {
        let fake = FakeGitlab::start(config).await.expect("fake GitLab starts");
        let dir = tempfile::tempdir().expect("temp dir");
        Self { dir, fake }
    }

    pub(crate) fn url(&self) -> &str {
        self.fake.url()
    }

    pub(crate) fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    /// Registers a `glrt-` shell runner named `name` non-interactively; returns its token.
    pub(crate) async fn register_shell_runner(&self, name: &str) -> String {
        let token = self.fake.create_runner_token();
        let args = [
            "register",
            "--non-interactive",
            "--url",
            self.url(),
            "--token",
            &token,
            "--executor",
            "shell",
            "--name",
            name,
        ];
        self.runnel(&args, "").await.assert_success();
        token
    }

    pub(crate) fn config_text(&self) -> String {
        std::fs::read_to_string(self.config_path()).expect("config.toml readable")
    }

    /// Runs `runnel <args>` with `-c <config>` appended, a clean environment, and `stdin`.
    pub(crate) async fn runnel(&self, args: &[&str], stdin: &str) -> Run {
        let mut full: Vec<&str> = args.to_vec();
        let config = self.config_path();
        let config = config.to_str().expect("utf-8 temp path");
        full.extend(["-c", config]);
        run_runnel(&full, stdin, self.dir.path()).await
    }
}

/// Runs the `runnel` binary with only PATH and HOME in its environment.
pub(crate) async fn run_runnel(args: &[&str], stdin: &str, home: &Path) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_runnel"));
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .current_dir(home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().expect("runnel binary starts");
    let mut input = child.stdin.take().expect("stdin piped");
    input
        .write_all(stdin.as_bytes())
        .await
        .expect("stdin written");
    drop(input);
    let output: Output = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
        .await
        .expect("runnel finished in time")
        .expect("runnel output collected");
    Run {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The official sample configs, as project test data.
pub(crate) fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}
