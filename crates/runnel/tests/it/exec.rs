//! `runnel exec`: real pipelines from a temporary git repository, run by the real binary with
//! its in-process coordinator, the daemon and the shell or docker executor.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

/// How long one `runnel exec` may take.
const EXEC_TIMEOUT: Duration = Duration::from_secs(240);

struct Exec {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// A line of the plain reporter (`name   | text`) as `[name] text`, with the reporter's status
/// lines reduced to their words (`[build] passed`, `[broken] failed, exit code 1`,
/// `[flaky] failed (allowed to fail), exit code 3`, `[later] skipped`, `[slow] canceled`).
fn normalize(line: &str) -> Option<String> {
    let (name, text) = line.split_once(" | ")?;
    let name = name.trim_end();
    let exit_code = |text: &str| {
        text.split_once("(exit code ")
            .and_then(|(_, rest)| rest.split_once(')'))
            .map(|(code, _)| code.to_owned())
    };
    let status = if text.starts_with("▶ job started") {
        "started".to_owned()
    } else if text.starts_with("✔ job passed") {
        "passed".to_owned()
    } else if text.starts_with("⚠ job failed (allowed)") {
        match exit_code(text) {
            Some(code) => format!("failed (allowed to fail), exit code {code}"),
            None => "failed (allowed to fail)".to_owned(),
        }
    } else if text.starts_with("✘ job failed") {
        match exit_code(text) {
            Some(code) => format!("failed, exit code {code}"),
            None => "failed".to_owned(),
        }
    } else if text.starts_with("⊘ job skipped") || text.starts_with("⊘ skipped") {
        "skipped".to_owned()
    } else if text.starts_with("■ job canceled") {
        "canceled".to_owned()
    } else {
        text.to_owned()
    };
    Some(format!("[{name}] {status}"))
}

impl Exec {
    /// Stdout's job lines, normalized by [`normalize`].
    fn lines(&self) -> Vec<String> {
        self.stdout.lines().filter_map(normalize).collect()
    }

    fn output(&self) -> String {
        format!("{}\n--- stderr ---\n{}", self.stdout, self.stderr)
    }

    #[track_caller]
    fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, Some(code), "exit code\n{}", self.output());
        self
    }

    /// A job's final status line (`[job] failed, exit code 1`).
    #[track_caller]
    fn assert_status(&self, prefix: &str) -> &Self {
        assert!(
            self.lines().iter().any(|l| l == prefix),
            "no status line {prefix:?} in\n{}",
            self.output()
        );
        self
    }

    #[track_caller]
    fn assert_line(&self, line: &str) -> &Self {
        assert!(
            self.lines().iter().any(|l| l == line),
            "no line {line:?} in\n{}",
            self.output()
        );
        self
    }

    /// The position of the first line equal to `line`.
    #[track_caller]
    fn position(&self, line: &str) -> usize {
        self.lines()
            .iter()
            .position(|l| l == line)
            .unwrap_or_else(|| panic!("no line {line:?} in\n{}", self.output()))
    }
}

fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args([
            "-c",
            "user.name=Test Author",
            "-c",
            "user.email=author@example.com",
        ])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .stdin(Stdio::null())
        .output()
        .expect("git runs");
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A git repository on branch `main` with `files` committed.
fn repo(files: &[(&str, &str)]) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    git(dir.path(), &["init", "-q", "-b", "main"]);
    for (path, text) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    git(dir.path(), &["add", "-A"]);
    git(
        dir.path(),
        &["commit", "-q", "-m", "Initial commit\n\nWith a body"],
    );
    dir
}

async fn exec(dir: &Path, args: &[&str]) -> Exec {
    let home = tempfile::tempdir().unwrap();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_runnel"));
    command
        .arg("exec")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(host) = std::env::var_os("DOCKER_HOST") {
        command.env("DOCKER_HOST", host);
    }
    let output = tokio::time::timeout(EXEC_TIMEOUT, command.output())
        .await
        .expect("runnel exec finished in time")
        .expect("runnel exec runs");
    Exec {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

const PIPELINE: &str = r#"stages: [build, test, deploy]
variables:
  GREETING: hello
build:
  stage: build
  script:
    - echo "built from $(cat input.txt) and $(cat untracked.txt)" > out.txt
    - echo "secret is $SECRET and $FILE_SECRET"
    - mkdir -p vendor && echo "run-$CI_PIPELINE_ID" >> vendor/cache.txt
    - echo "cache has $(tr '\n' ' ' < vendor/cache.txt)"
    - echo "sha $CI_COMMIT_SHA head $(git rev-parse HEAD)"
  artifacts:
    paths: [out.txt]
  cache:
    key: deps
    paths: [vendor/]
test:
  stage: test
  needs: [build]
  script:
    - cat out.txt
    - echo "branch $CI_COMMIT_BRANCH title $CI_COMMIT_TITLE greeting $GREETING"
lint:
  stage: test
  script:
    - echo lint-ran
deploy:
  stage: deploy
  rules:
    - if: $CI_COMMIT_BRANCH == "production"
  script:
    - echo should-not-run
"#;

#[tokio::test]
async fn pipeline_runs_in_order_with_artifacts_caches_masking_and_the_working_tree() {
    let dir = repo(&[(".gitlab-ci.yml", PIPELINE), ("input.txt", "committed\n")]);
    // Uncommitted and untracked changes are what the jobs see.
    std::fs::write(dir.path().join("input.txt"), "uncommitted\n").unwrap();
    std::fs::write(dir.path().join("untracked.txt"), "untracked\n").unwrap();
    std::fs::write(
        dir.path().join("secrets.env"),
        "FILE_SECRET=file-secret-value-42\n",
    )
    .unwrap();
    let status_before = git(
        dir.path(),
        &["status", "--porcelain", "--untracked-files=all"],
    );
    let head_before = git(dir.path(), &["rev-parse", "HEAD"]);
    let secrets = dir.path().join("secrets.env");
    let secrets = secrets.to_str().unwrap();
    let args = [
        "--executor",
        "shell",
        "--plain",
        "--secret",
        "SECRET=hunter2-very-secret",
        "--secrets-file",
        secrets,
    ];

    let first = exec(dir.path(), &args).await;
    first
        .assert_code(0)
        .assert_line("[test] built from uncommitted and untracked")
        .assert_line("[test] branch main title Initial commit greeting hello")
        .assert_line("[build] secret is [MASKED] and [MASKED]")
        .assert_line("[build] cache has run-1 ")
        .assert_line("[lint] lint-ran")
        .assert_line("[deploy] skipped");
    assert!(!first.output().contains("hunter2"), "{}", first.output());
    assert!(!first.output().contains("file-secret-value-42"));
    assert!(!first.output().contains("should-not-run"));
    let build_done = first
        .lines()
        .iter()
        .position(|l| l == "[build] passed")
        .expect("build passed");
    assert!(
        build_done < first.position("[test] started"),
        "needs order\n{}",
        first.output()
    );
    assert!(
        build_done < first.position("[lint] started"),
        "stage order\n{}",
        first.output()
    );
    let lines = first.lines();
    let sha_line = lines
        .iter()
        .find(|l| l.starts_with("[build] sha "))
        .expect("sha line");
    let words: Vec<&str> = sha_line.split_whitespace().collect();
    assert_eq!(
        words[2], words[4],
        "CI_COMMIT_SHA is the checked-out snapshot"
    );

    // The full log is saved, masked.
    let log = std::fs::read_to_string(dir.path().join(".runnel/logs/1/build.log")).unwrap();
    assert!(log.contains("secret is [MASKED] and [MASKED]"), "{log}");
    assert!(!log.contains("hunter2") && !log.contains("file-secret-value-42"));
    assert!(dir.path().join(".runnel/artifacts/1/build").is_dir());

    // The user's repository is untouched.
    assert_eq!(
        git(
            dir.path(),
            &["status", "--porcelain", "--untracked-files=all"]
        ),
        status_before
    );
    assert_eq!(git(dir.path(), &["rev-parse", "HEAD"]), head_before);

    // The cache persists to the next run.
    let second = exec(dir.path(), &args).await;
    second
        .assert_code(0)
        .assert_line("[build] cache has run-1 run-2 ");
}

#[tokio::test]
async fn failures_skip_later_stages_while_always_and_allowed_failures_behave() {
    let pipeline = r#"stages: [one, two, three]
flaky:
  stage: one
  script: [echo flaky, exit 3]
  allow_failure:
    exit_codes: [3]
broken:
  stage: one
  script: [echo about-to-fail, exit 1]
later:
  stage: two
  script: [echo should-not-run]
cleanup:
  stage: three
  when: always
  script: [echo cleanup-ran]
on_fail:
  stage: three
  when: on_failure
  script: [echo on-failure-ran]
retried:
  stage: one
  retry: 1
  script:
    - echo attempt >> $CI_BUILDS_DIR/attempts-$CI_PIPELINE_ID
    - cat $CI_BUILDS_DIR/attempts-$CI_PIPELINE_ID
    - test $(wc -l < $CI_BUILDS_DIR/attempts-$CI_PIPELINE_ID) -ge 2
"#;
    let dir = repo(&[(".gitlab-ci.yml", pipeline)]);
    let run = exec(dir.path(), &["--executor", "shell", "--plain"]).await;
    run.assert_code(1)
        .assert_status("[flaky] failed (allowed to fail), exit code 3")
        .assert_status("[broken] failed, exit code 1")
        .assert_status("[retried] passed")
        .assert_status("[later] skipped")
        .assert_line("[cleanup] cleanup-ran")
        .assert_line("[on_fail] on-failure-ran")
        .assert_line("[retried] attempt");
    assert!(
        run.stdout.contains("Job failed; retrying (attempt 2 of 2)"),
        "{}",
        run.output()
    );
    assert!(!run.stdout.contains("should-not-run"), "{}", run.output());
    assert!(run.lines().iter().any(|l| l == "[retried] passed"));
    assert!(run.stdout.contains("Pipeline failed"), "{}", run.output());
}

/// Review L3: `build a` and `build-a` shared `logs/1/build-a.log` and one artifact store, so
/// a consumer of `build a` silently got `build-a`'s artifacts.
#[tokio::test]
async fn jobs_whose_names_share_a_slug_keep_their_own_logs_and_artifacts() {
    let pipeline = r#"stages: [build, test]
"build a":
  stage: build
  script: [echo "from build a" > out.txt, echo log-of-build-space-a]
  artifacts:
    paths: [out.txt]
build-a:
  stage: build
  script: [echo "from build-a (other job)" > out.txt, echo log-of-build-dash-a]
  artifacts:
    paths: [out.txt]
consumer:
  stage: test
  dependencies: ["build a"]
  script: [cat out.txt]
"#;
    let dir = repo(&[(".gitlab-ci.yml", pipeline)]);
    let run = exec(dir.path(), &["--executor", "shell", "--plain"]).await;
    run.assert_code(0).assert_line("[consumer] from build a");
    assert!(
        !run.stdout.contains("[consumer] from build-a"),
        "{}",
        run.output()
    );
    let logs = dir.path().join(".runnel/logs/1");
    let first = std::fs::read_to_string(logs.join("build-a.log")).unwrap();
    let second = std::fs::read_to_string(logs.join("build-a-2.log")).unwrap();
    let (space, dash) = if first.contains("log-of-build-space-a") {
        (first, second)
    } else {
        (second, first)
    };
    assert!(
        space.contains("log-of-build-space-a") && !space.contains("log-of-build-dash-a"),
        "{space}"
    );
    assert!(
        dash.contains("log-of-build-dash-a") && !dash.contains("log-of-build-space-a"),
        "{dash}"
    );
    assert!(run.stdout.contains("build-a-2.log"), "{}", run.output());
}

/// Review L11: with the disk full, the job log was cut mid-line with only a daemon warning,
/// and the summary still pointed to it as the job's log. `/dev/full` stands in for the disk.
#[tokio::test]
async fn a_log_that_cannot_be_written_is_reported_incomplete() {
    let pipeline = "stages: [build]\nbuild:\n  stage: build\n  script: [echo hello]\n";
    let dir = repo(&[(".gitlab-ci.yml", pipeline)]);
    let logs = dir.path().join(".runnel/logs/1");
    std::fs::create_dir_all(&logs).unwrap();
    std::os::unix::fs::symlink("/dev/full", logs.join("build.log")).unwrap();
    let run = exec(dir.path(), &["--executor", "shell", "--plain"]).await;
    run.assert_line("[build] hello");
    let incomplete = run
        .stdout
        .lines()
        .filter(|l| l.contains("build.log (INCOMPLETE: No space left on device"))
        .count();
    assert!(
        incomplete >= 2,
        "the job line and the summary say so\n{}",
        run.output()
    );
}

#[tokio::test]
async fn job_selection_listing_and_bad_input() {
    let dir = repo(&[(".gitlab-ci.yml", PIPELINE), ("input.txt", "committed\n")]);
    std::fs::write(dir.path().join("untracked.txt"), "u\n").unwrap();
    let run = exec(
        dir.path(),
        &[
            "--executor",
            "shell",
            "--plain",
            "test",
            "--needs",
            "--secret",
            "SECRET=s3cr3t-value",
        ],
    )
    .await;
    run.assert_code(0)
        .assert_line("[test] built from committed and u")
        .assert_line("[lint] skipped");
    assert!(!run.stdout.contains("lint-ran"));

    let listed = exec(dir.path(), &["--list"]).await;
    listed.assert_code(0);
    assert!(
        listed
            .stdout
            .contains("\nstage test\n  test   on_success  needs: build\n"),
        "{}",
        listed.output()
    );
    assert!(
        listed
            .stdout
            .contains("Will not run:\n  deploy  deploy  rules: the rule does not match\n"),
        "{}",
        listed.output()
    );

    exec(dir.path(), &["nope"]).await.assert_code(2);
    let bad = exec(dir.path(), &["--variable", "no equals sign"]).await;
    bad.assert_code(2);
    std::fs::write(
        dir.path().join("broken.yml"),
        "job:\n  script: [x]\n  when: sometimes\n",
    )
    .unwrap();
    let invalid = exec(dir.path(), &["--file", "broken.yml"]).await;
    invalid.assert_code(2);
    assert!(
        invalid.stderr.contains("broken.yml:"),
        "{}",
        invalid.output()
    );
}

/// Removes the docker objects of the runner `runnel exec` used in `dir`, returning the names
/// of containers that were still there.
fn sweep_docker(dir: &Path) -> Vec<String> {
    let Ok(token) = std::fs::read_to_string(dir.join(".runnel/runner-token")) else {
        return Vec::new();
    };
    let short = runnel_types::short_token(&format!("{}-docker", token.trim()));
    let label = format!("label=com.gitlab.gitlab-runner.runner.id={short}");
    let docker = |args: &[&str]| {
        let output = Command::new("docker").args(args).output().unwrap();
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let containers = docker(&["ps", "-a", "-q", "--filter", &label]);
    for (list, remove) in [
        (&["ps", "-a", "-q"][..], &["rm", "-f"][..]),
        (&["network", "ls", "-q"][..], &["network", "rm"][..]),
        (&["volume", "ls", "-q"][..], &["volume", "rm", "-f"][..]),
    ] {
        for name in docker(&[list, &["--filter", &label]].concat()) {
            docker(&[remove, &[name.as_str()]].concat());
        }
    }
    containers
}

#[tokio::test]
async fn docker_pipeline_passes_artifacts_between_containers() {
    // No --helper-image: the helper Runnel builds itself, in a static busybox job image.
    crate::docker::ensure_image();
    let image = crate::docker::IMAGE;
    let pipeline = format!(
        r#"image: {image}
stages: [build, test]
build:
  stage: build
  script:
    - echo "in docker $(cat input.txt)" > out.txt
    - echo "dir ${{CI_PROJECT_DIR%%/local/*}}"
  artifacts:
    paths: [out.txt]
test:
  stage: test
  script:
    - cat out.txt
"#
    );
    let dir = repo(&[(".gitlab-ci.yml", &pipeline), ("input.txt", "committed\n")]);
    std::fs::write(dir.path().join("input.txt"), "changed\n").unwrap();
    let run = exec(dir.path(), &["--executor", "docker", "--plain"]).await;
    let left = sweep_docker(dir.path());
    run.assert_code(0)
        .assert_line("[build] dir /builds")
        .assert_line("[test] in docker changed");
    assert_eq!(left, Vec::<String>::new(), "containers left behind");
}

/// Whether `pid` is a live (not zombie) process.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(") ")?.1.chars().next()?;
            Some(state != 'Z' && state != 'X')
        })
        .unwrap_or(false)
}

#[tokio::test]
async fn ctrl_c_cancels_running_and_pending_jobs_and_leaves_no_process() {
    let pipeline = "stages: [one, two]\nslow:\n  stage: one\n  script:\n    - echo $$ > $CI_BUILDS_DIR/script.pid\n    - sleep 300\nlater:\n  stage: two\n  script: [echo should-not-run]\n";
    let dir = repo(&[(".gitlab-ci.yml", pipeline)]);
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_runnel"))
        .args(["exec", "--executor", "shell", "--plain", "-C"])
        .arg(dir.path())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid_file = dir.path().join(".runnel/builds/script.pid");
    let script_pid = tokio::time::timeout(EXEC_TIMEOUT, async {
        loop {
            if let Some(pid) = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|text| text.trim().parse::<i32>().ok())
            {
                return pid;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the job's script started");
    assert!(alive(script_pid));
    let runnel = nix::unistd::Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap());
    nix::sys::signal::kill(runnel, nix::sys::signal::Signal::SIGINT).unwrap();
    let output = tokio::time::timeout(EXEC_TIMEOUT, child.wait_with_output())
        .await
        .expect("runnel exec stopped after Ctrl-C")
        .unwrap();
    let run = Exec {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    run.assert_code(1)
        .assert_status("[slow] canceled")
        .assert_status("[later] canceled");
    assert!(!run.stdout.contains("should-not-run"), "{}", run.output());
    assert!(!alive(script_pid), "the job's shell survived Ctrl-C");
}

/// Copies `from` into `to`, recursively (the demo project, without any `.runnel/` state).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_name() == ".runnel" {
            continue;
        }
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[tokio::test]
async fn the_readme_demo_runs_its_matrix_artifacts_cache_and_rules() {
    let dir = tempfile::tempdir().unwrap();
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/demo");
    copy_tree(&demo, dir.path());

    let first = exec(dir.path(), &["--plain"]).await;
    first
        .assert_code(0)
        .assert_status("[build] passed")
        .assert_status("[test: [en]] passed")
        .assert_status("[test: [fr]] passed")
        .assert_status("[test: [de]] passed")
        .assert_line("[test: [fr]] Bonjour de greet 1.0")
        .assert_line("[build] Building greet 1.0 (build number 1 on this machine)")
        .assert_line("[deploy] skipped")
        .assert_line("[nightly-report] skipped");

    // The cache survives between runs; a variable brings the rules-gated job in.
    let second = exec(dir.path(), &["--plain", "--variable", "DEPLOY=yes"]).await;
    second
        .assert_code(0)
        .assert_line("[build] Building greet 1.0 (build number 2 on this machine)")
        .assert_status("[deploy] passed")
        .assert_line("[deploy] Deploying Hello from greet 1.0");
}

/// The README's first command runs the demo inside a fresh clone of Runnel: a clean work tree
/// whose top level is the repository, with the project one directory below it. HEAD's tree is
/// the whole repository's, so the jobs get a snapshot commit of the project directory (and
/// rules:changes paths relative to it), and the run says so.
#[tokio::test]
async fn the_readme_demo_runs_in_a_clean_clone_of_its_repository() {
    let clone = tempfile::tempdir().unwrap();
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/demo");
    let project = clone.path().join("examples").join("demo");
    copy_tree(&demo, &project);
    std::fs::write(
        clone.path().join("README.md"),
        "the repository's own files\n",
    )
    .unwrap();
    git(clone.path(), &["init", "-q", "-b", "main"]);
    git(clone.path(), &["add", "-A"]);
    git(clone.path(), &["commit", "-q", "-m", "A clone"]);

    let run = exec(&project, &["--plain"]).await;
    run.assert_code(0)
        .assert_status("[build] passed")
        .assert_status("[lint] passed")
        .assert_status("[test: [fr]] passed")
        .assert_line("[test: [fr]] Bonjour de greet 1.0");
    assert!(
        run.stderr.contains("a directory inside its repository"),
        "the snapshot is announced: {}",
        run.output()
    );
}

const SEMANTICS: &str = r#"stages: [prepare, test, deploy]
variables:
  NESTED: "[$COMBINED]"
  GREETING: hello
  RAW:
    value: "$GREETING stays"
    expand: false
canonical:
  stage: prepare
  rules:
    - if: $CI_SERVER_HOST == "gitlab.example.com" && $CI_PROJECT_URL == "https://gitlab.example.com/group/proj"
  script:
    - echo "nested $NESTED raw $RAW"
    - echo "nodes total=$CI_NODE_TOTAL index=${CI_NODE_INDEX:-unset}"
    - echo "sha $CI_COMMIT_SHA"
    - echo "deploy $DEPLOY token $TOKEN"
    - echo "registry $CI_REGISTRY_IMAGE api $CI_API_V4_URL"
prep:
  stage: prepare
  when: manual
  script: [echo prep-ran]
test:
  stage: test
  needs: [prep]
  script: [echo test-ran]
deploy:
  stage: deploy
  script: [echo deploy-ran]
"#;

#[tokio::test]
async fn exec_follows_gitlab_semantics_for_variables_sources_and_manual_needs() {
    let dir = repo(&[(".gitlab-ci.yml", SEMANTICS)]);
    // COMBINED is defined after NESTED references it: expansion is order independent.
    std::fs::write(
        dir.path().join(".gitlab-ci.yml"),
        SEMANTICS.replace(
            "  GREETING: hello\n",
            "  GREETING: hello\n  COMBINED: \"$GREETING-$TARGET\"\n  TARGET: world\n",
        ),
    )
    .unwrap();
    git(dir.path(), &["commit", "-qam", "combined"]);
    git(
        dir.path(),
        &[
            "remote",
            "add",
            "origin",
            "https://gitlab.example.com/group/proj.git",
        ],
    );
    let head = git(dir.path(), &["rev-parse", "HEAD"]).trim().to_owned();
    let run = exec(
        dir.path(),
        &[
            "--executor",
            "shell",
            "--plain",
            "--variable",
            "DEPLOY=yes",
            "--secret",
            "TOKEN=glpat-0123456789abcdef",
        ],
    )
    .await;
    run.assert_code(0)
        .assert_line("[canonical] nested [hello-world] raw $GREETING stays")
        .assert_line("[canonical] nodes total=1 index=unset")
        .assert_line(&format!("[canonical] sha {head}"))
        .assert_line("[canonical] deploy yes token [MASKED]")
        .assert_line(
            "[canonical] registry registry.gitlab.example.com/group/proj api https://gitlab.example.com/api/v4",
        )
        .assert_status("[prep] skipped")
        .assert_status("[test] skipped")
        // A later stage waits for the waiting job, as in GitLab.
        .assert_status("[deploy] skipped");
    assert!(!run.stdout.contains("test-ran"), "{}", run.output());
    assert!(
        run.stdout
            .contains("deploy    | ⊘ skipped: waits for manual job `prep`"),
        "{}",
        run.output()
    );
    assert!(
        !run.stderr.contains("snapshot commit"),
        "a clean tree runs HEAD: {}",
        run.output()
    );

    let listed = exec(dir.path(), &["--list"]).await;
    listed.assert_code(0);
    assert!(
        listed
            .stdout
            .contains("waits for manual job `prep` (play it with --manual)"),
        "{}",
        listed.output()
    );

    // `--manual` plays it, and the job that needs it runs.
    let played = exec(dir.path(), &["--executor", "shell", "--plain", "--manual"]).await;
    played
        .assert_code(0)
        .assert_line("[prep] prep-ran")
        .assert_line("[test] test-ran")
        .assert_line("[deploy] deploy-ran");

    // A dirty tree runs a snapshot commit and says so.
    std::fs::write(dir.path().join("new.txt"), "x\n").unwrap();
    let dirty = exec(dir.path(), &["--executor", "shell", "--plain", "canonical"]).await;
    dirty.assert_code(0);
    assert!(
        dirty.stderr.contains("jobs run a snapshot commit of it"),
        "{}",
        dirty.output()
    );
    assert!(
        !dirty.stdout.contains(&format!("sha {head}")),
        "{}",
        dirty.output()
    );

    // GitLab refuses to mask short values; so does --secret.
    let short = exec(dir.path(), &["--list", "--secret", "PIN=1234"]).await;
    short.assert_code(2);
    assert!(
        short.stderr.contains("--secret PIN") && short.stderr.contains("shorter than 8"),
        "{}",
        short.output()
    );
}

#[tokio::test]
async fn offline_runs_name_the_include_they_lack() {
    let dir = repo(&[(
        ".gitlab-ci.yml",
        "include:\n  - project: group/templates\n    ref: v2\n    file: ci/build.yml\nbuild:\n  extends: .build\n",
    )]);
    let run = exec(dir.path(), &["--list", "--offline"]).await;
    run.assert_code(2);
    assert!(
        run.stderr.contains(
            ".gitlab-ci.yml:4:11: cannot include project `group/templates@v2:ci/build.yml`: tried the cache only (--offline)"
        ),
        "{}",
        run.output()
    );
    assert!(
        run.stderr.contains("run once without --offline"),
        "{}",
        run.output()
    );
    assert!(!run.stderr.contains("extends"), "{}", run.output());
}

#[tokio::test]
async fn secrets_are_passed_by_the_user_or_the_job_does_not_run() {
    let pipeline = r#"deploy:
  secrets:
    DB_PASSWORD:
      vault: production/db/password@ops
    API_KEY:
      vault: production/api/key@ops
      file: false
  script:
    - echo "file $(cat "$DB_PASSWORD") key $API_KEY"
    - test -f "$DB_PASSWORD"
"#;
    let dir = repo(&[(".gitlab-ci.yml", pipeline)]);
    let refused = exec(dir.path(), &["--executor", "shell", "--plain"]).await;
    refused.assert_code(1);
    assert!(
        refused
            .stderr
            .contains("`deploy` needs DB_PASSWORD, API_KEY; pass each with --secret NAME=VALUE"),
        "{}",
        refused.output()
    );
    let run = exec(
        dir.path(),
        &[
            "--executor",
            "shell",
            "--plain",
            "--secret",
            "DB_PASSWORD=correct-horse-battery",
            "--secret",
            "API_KEY=abcdefgh12345678",
        ],
    )
    .await;
    run.assert_code(0)
        .assert_line("[deploy] file [MASKED] key [MASKED]");
}
