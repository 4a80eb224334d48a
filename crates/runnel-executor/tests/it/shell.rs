//! The shell executor, driven through the `Executor` and `Provider` traits.

use std::path::Path;
use std::sync::Arc;

use runnel_executor::{
    AfterReport, EarlyStart, ExecutorError, KillPolicy, PrepareContext, Provider,
    SHELL_EXECUTOR_INFO, Shell, ShellOptions, ShellProvider, StageCommand, StageExit, StageKind,
};
use runnel_types::JobSpec;
use tokio_util::sync::CancellationToken;

use crate::support::{Recorder, within};

/// What `prepare` gets for `job` in `builds_dir` and `cache_dir`, with no temp dir of the
/// executor's and every option off.
fn prepare_context<'a>(
    job: &'a JobSpec,
    builds_dir: &'a Path,
    cache_dir: &'a Path,
) -> PrepareContext<'a> {
    PrepareContext {
        job,
        builds_dir,
        cache_dir,
        debug_services: false,
        project_slot: 0,
        git_fetch: false,
        network_per_build: false,
        predefined_housekeeping_only: false,
        init_process: false,
        temp_dir: None,
    }
}

fn stage(script: &str) -> StageCommand<'_> {
    StageCommand {
        stage: "step_script",
        script,
        inline: None,
        kind: StageKind::Build,
        env: &[],
        deadline: None,
    }
}

/// Creates, prepares (in `root`), runs one stage and cleans up, as the job runner would.
async fn run_job(
    options: ShellOptions,
    root: &Path,
    cmd: StageCommand<'_>,
) -> (Result<StageExit, ExecutorError>, Recorder) {
    let mut executor = prepared_with(options, root).await;
    let sink = Recorder::default();
    let result = within(
        "the stage",
        executor.run(cmd, &sink, CancellationToken::new()),
    )
    .await;
    executor.cleanup().await;
    (result, sink)
}

#[test]
fn info_matches_the_official_shell_executor() {
    insta::assert_debug_snapshot!(SHELL_EXECUTOR_INFO);
}

#[test]
fn banner_names_the_shell() {
    let banners: Vec<String> = [Shell::Bash, Shell::Sh]
        .into_iter()
        .map(|shell| {
            let options = ShellOptions {
                shell,
                ..ShellOptions::default()
            };
            let executor = ShellProvider::new(options)
                .and_then(|provider| provider.create())
                .expect("create executor");
            format!("{}: {}", executor.name(), executor.banner())
        })
        .collect();
    insta::assert_snapshot!(banners.join("\n"), @r"
    shell: Using Shell (bash) executor...
    shell: Using Shell (sh) executor...
    ");
}

#[test]
fn shell_names_parse() {
    assert_eq!("bash".parse::<Shell>().ok(), Some(Shell::Bash));
    assert_eq!("sh".parse::<Shell>().ok(), Some(Shell::Sh));
    let error = "pwsh".parse::<Shell>().expect_err("pwsh is not supported");
    insta::assert_snapshot!(error, @"unsupported shell `pwsh` (supported: bash, sh)");
}

#[tokio::test]
async fn prepare_creates_directories_and_stages_start_in_the_builds_dir() {
    let root = tempfile::tempdir().expect("temp dir");
    let script = "pwd -P; shopt -q login_shell && echo login-shell";

    let (result, sink) = run_job(ShellOptions::default(), root.path(), stage(script)).await;

    assert_eq!(result.expect("stage runs"), StageExit::Exited(0));
    let builds = root
        .path()
        .join("builds")
        .canonicalize()
        .expect("builds dir exists");
    assert!(root.path().join("cache").is_dir(), "cache dir exists");
    assert_eq!(
        sink.stdout(),
        format!("{}\nlogin-shell\n", builds.display())
    );
}

#[tokio::test]
async fn sh_runs_the_script_with_sh() {
    let root = tempfile::tempdir().expect("temp dir");
    let options = ShellOptions {
        shell: Shell::Sh,
        ..ShellOptions::default()
    };

    let (result, sink) = run_job(options, root.path(), stage("cat /proc/$$/comm; exit 7")).await;

    assert_eq!(result.expect("stage runs"), StageExit::Exited(7));
    assert_eq!(sink.stdout(), "sh\n");
}

#[tokio::test]
async fn stage_env_and_runner_env_reach_the_script() {
    let root = tempfile::tempdir().expect("temp dir");
    let env = [("RUNNEL_STAGE_VAR".to_owned(), "from the stage".to_owned())];
    let cmd = StageCommand {
        env: &env,
        ..stage(r#"echo "$RUNNEL_STAGE_VAR"; echo "$CARGO_MANIFEST_DIR""#)
    };

    let (result, sink) = run_job(ShellOptions::default(), root.path(), cmd).await;

    assert_eq!(result.expect("stage runs"), StageExit::Exited(0));
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    assert_eq!(sink.stdout(), format!("from the stage\n{manifest_dir}\n"));
}

#[tokio::test]
async fn a_stage_that_cannot_start_names_the_shell() {
    let root = tempfile::tempdir().expect("temp dir");
    let provider = ShellProvider::new(ShellOptions::default()).expect("valid options");
    let mut executor = provider.create().expect("create executor");
    let job = JobSpec::default();
    let missing = root.path().join("missing");
    let ctx = prepare_context(&job, &missing, &missing);
    executor.prepare(&ctx).await.expect("prepare");
    std::fs::remove_dir(&missing).expect("remove the builds dir again");

    let sink = Recorder::default();
    let error = executor
        .run(stage("true"), &sink, CancellationToken::new())
        .await
        .expect_err("cannot start in a missing directory");

    assert!(
        matches!(&error, ExecutorError::Spawn { program, cwd: Some(cwd), .. }
            if program == "bash" && *cwd == missing),
        "{error:?}"
    );
}

#[tokio::test]
async fn prepare_reports_a_directory_it_cannot_create() {
    let root = tempfile::tempdir().expect("temp dir");
    let file = root.path().join("file");
    std::fs::write(&file, "").expect("write a file");
    let builds_dir = file.join("builds");
    let job = JobSpec::default();
    let ctx = prepare_context(&job, &builds_dir, root.path());
    let mut executor = ShellProvider::new(ShellOptions::default())
        .and_then(|provider| provider.create())
        .expect("create executor");

    let error = executor
        .prepare(&ctx)
        .await
        .expect_err("a file is in the way");

    assert!(
        matches!(&error, ExecutorError::CreateDir { purpose: "builds", path, .. } if *path == builds_dir),
        "{error:?}"
    );
    insta::assert_snapshot!(error, @"failed to create the builds directory");
}

#[tokio::test]
async fn a_cache_directory_that_cannot_be_created_does_not_fail_prepare() {
    let root = tempfile::tempdir().expect("temp dir");
    let file = root.path().join("file");
    std::fs::write(&file, "").expect("write a file");
    let job = JobSpec::default();
    let builds_dir = root.path().join("builds");
    let cache_dir = file.join("cache");
    let ctx = prepare_context(&job, &builds_dir, &cache_dir);
    let mut executor = ShellProvider::new(ShellOptions::default())
        .and_then(|provider| provider.create())
        .expect("create executor");
    executor.prepare(&ctx).await.expect("caches are optional");
    assert!(builds_dir.is_dir());
}

#[tokio::test]
async fn cancelling_a_stage_reports_cancelled() {
    let root = tempfile::tempdir().expect("temp dir");
    let provider = ShellProvider::new(ShellOptions {
        kill: KillPolicy {
            grace: std::time::Duration::from_millis(200),
            ..KillPolicy::default()
        },
        ..ShellOptions::default()
    })
    .expect("valid options");
    let mut executor = provider.create().expect("create executor");
    let job = JobSpec::default();
    let (builds_dir, cache_dir) = (root.path().join("builds"), root.path().join("cache"));
    let ctx = prepare_context(&job, &builds_dir, &cache_dir);
    executor.prepare(&ctx).await.expect("prepare");
    let sink = Recorder::default();
    let cancel = CancellationToken::new();

    let canceller = async {
        within("the stage to start", async {
            while sink.stdout().is_empty() {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
        .await;
        cancel.cancel();
    };
    let (result, ()) = tokio::join!(
        within(
            "the stage",
            executor.run(stage("echo up; sleep 1000"), &sink, cancel.clone())
        ),
        canceller
    );

    assert_eq!(result.expect("stage runs"), StageExit::Cancelled);
}

#[tokio::test]
async fn jobs_can_be_spawned_onto_the_runtime() {
    let root = tempfile::tempdir().expect("temp dir");
    let provider: Arc<dyn Provider> =
        Arc::new(ShellProvider::new(ShellOptions::default()).expect("valid options"));

    let job = tokio::spawn({
        let provider = Arc::clone(&provider);
        let root = root.path().to_path_buf();
        async move {
            let (result, sink) = run_job_boxed(provider.as_ref(), &root).await;
            (result, sink.stdout())
        }
    });

    let (result, stdout) = within("the spawned job", job).await.expect("job task");
    assert_eq!(result.expect("stage runs"), StageExit::Exited(0));
    assert_eq!(stdout, "spawned\n");
}

async fn run_job_boxed(
    provider: &dyn Provider,
    root: &Path,
) -> (Result<StageExit, ExecutorError>, Recorder) {
    let mut executor = provider.create().expect("create executor");
    let job = JobSpec::default();
    let dir = root.join("builds");
    let ctx = prepare_context(&job, &dir, &dir);
    executor.prepare(&ctx).await.expect("prepare");
    let sink = Recorder::default();
    let result = executor
        .run(stage("echo spawned"), &sink, CancellationToken::new())
        .await;
    executor.cleanup().await;
    (result, sink)
}

#[tokio::test]
async fn a_configured_user_runs_scripts_through_su() {
    let options = ShellOptions {
        user: Some("nobody".to_owned()),
        ..ShellOptions::default()
    };
    if !nix::unistd::geteuid().is_root() {
        let error = ShellProvider::new(options).expect_err("switching users needs root");
        assert!(
            matches!(error, ExecutorError::UserRequiresRoot { .. }),
            "{error:?}"
        );
        return;
    }
    let root = tempfile::tempdir().expect("temp dir");

    let (result, sink) = run_job(options, root.path(), stage("id -un")).await;

    assert_eq!(result.expect("stage runs"), StageExit::Exited(0));
    assert_eq!(sink.stdout(), "nobody\n");
}

/// A prepared shell executor in `root`, as the job runner holds it between stages.
async fn prepared(root: &Path, kill: KillPolicy) -> Box<dyn runnel_executor::Executor> {
    let options = ShellOptions {
        kill,
        ..ShellOptions::default()
    };
    prepared_with(options, root).await
}

/// A shell executor with `options`, prepared in `root`.
async fn prepared_with(options: ShellOptions, root: &Path) -> Box<dyn runnel_executor::Executor> {
    let provider = ShellProvider::new(options).expect("valid options");
    let mut executor = provider.create().expect("create executor");
    let job = JobSpec::default();
    let (builds_dir, cache_dir) = (root.join("builds"), root.join("cache"));
    let ctx = prepare_context(&job, &builds_dir, &cache_dir);
    executor.prepare(&ctx).await.expect("prepare");
    executor
}

/// Runs one stage of `executor` and returns its exit and output.
async fn run_stage(
    executor: &mut dyn runnel_executor::Executor,
    cmd: StageCommand<'_>,
) -> (StageExit, Recorder) {
    let sink = Recorder::default();
    let result = within(
        "the stage",
        executor.run(cmd, &sink, CancellationToken::new()),
    )
    .await;
    (result.expect("stage runs"), sink)
}

#[tokio::test]
async fn the_stages_of_a_job_share_one_shell_but_not_its_state() {
    let root = tempfile::tempdir().expect("temp dir");
    let mut executor = prepared(root.path(), KillPolicy::default()).await;

    let first =
        "echo $$; cd /; STAGE_VAR=set; export EXPORTED=set; trap 'echo trapped' EXIT; exit 3";
    let (exit, sink) = run_stage(executor.as_mut(), stage(first)).await;
    assert_eq!(
        exit,
        StageExit::Exited(3),
        "a stage's exit ends only the stage"
    );
    let lines = sink.stdout();
    let mut lines = lines.lines();
    let shell = lines.next().expect("the shell's pid").to_owned();
    assert_eq!(
        lines.next(),
        Some("trapped"),
        "the stage's EXIT trap ran at its end"
    );

    let second = "echo $$; pwd -P; echo \"${STAGE_VAR:-unset} ${EXPORTED:-unset}\"; shopt -q login_shell && echo login";
    let (exit, sink) = run_stage(executor.as_mut(), stage(second)).await;
    executor.cleanup().await;

    assert_eq!(exit, StageExit::Exited(0));
    let builds = root
        .path()
        .join("builds")
        .canonicalize()
        .expect("builds dir");
    assert_eq!(
        sink.stdout(),
        format!("{shell}\n{}\nunset unset\nlogin\n", builds.display()),
        "same shell process, fresh directory, variables and traps"
    );
}

/// The session's own function that prints the stage markers is defined once in its shell, but
/// a stage's subshell does not have it: a stage listing its functions sees what a shell of its
/// own would.
#[tokio::test]
async fn a_stage_does_not_see_the_sessions_own_function() {
    let root = tempfile::tempdir().expect("temp dir");
    let mut executor = prepared(root.path(), KillPolicy::default()).await;
    for _ in 0..2 {
        let (exit, sink) = run_stage(
            executor.as_mut(),
            stage("declare -F | grep -c runnel || true; set | grep -c __runnel || true"),
        )
        .await;
        assert_eq!(exit, StageExit::Exited(0));
        assert_eq!(sink.stdout(), "0\n0\n");
    }
    executor.cleanup().await;
}

#[tokio::test]
async fn output_is_split_exactly_at_the_stage_boundary() {
    let root = tempfile::tempdir().expect("temp dir");
    let mut executor = prepared(root.path(), KillPolicy::default()).await;

    // No trailing newline, a NUL and a marker-like prefix in the output, on both streams.
    let first = r"printf 'out\000RUNNEL-'; printf 'err' >&2; printf '%s' $$ >&2";
    let (exit, first_sink) = run_stage(executor.as_mut(), stage(first)).await;
    let (exit2, second_sink) = run_stage(
        executor.as_mut(),
        stage("printf next; printf next-err >&2; false"),
    )
    .await;
    executor.cleanup().await;

    assert_eq!(exit, StageExit::Exited(0));
    assert_eq!(
        first_sink.bytes(runnel_executor::OutputStream::Stdout),
        b"out\0RUNNEL-"
    );
    assert!(
        first_sink.stderr().starts_with("err"),
        "{}",
        first_sink.stderr()
    );
    assert_eq!(exit2, StageExit::Exited(1));
    assert_eq!(second_sink.stdout(), "next");
    assert_eq!(second_sink.stderr(), "next-err");
}

#[tokio::test]
async fn a_stopped_stage_ends_the_session_and_the_next_stage_starts_a_new_shell() {
    let root = tempfile::tempdir().expect("temp dir");
    let kill = KillPolicy {
        grace: std::time::Duration::from_millis(200),
        ..KillPolicy::default()
    };
    let mut executor = prepared(root.path(), kill).await;
    let pid_file = root.path().join("background.pid");

    let first = format!("sleep 1000 & echo $! > {}; echo $$", pid_file.display());
    let (exit, sink) = run_stage(executor.as_mut(), stage(&first)).await;
    assert_eq!(exit, StageExit::Exited(0));
    let first_shell = sink.stdout();
    let background = crate::support::read_pid(&pid_file).await;
    assert!(
        crate::support::is_running(background),
        "a background process lives on until the session ends"
    );

    let timed_out = StageCommand {
        deadline: Some(tokio::time::Instant::now() + std::time::Duration::from_millis(300)),
        ..stage("echo $$; sleep 1000")
    };
    let (exit, sink) = run_stage(executor.as_mut(), timed_out).await;
    assert_eq!(exit, StageExit::TimedOut);
    assert_eq!(sink.stdout(), first_shell);
    crate::support::assert_gone(background).await;

    let (exit, sink) = run_stage(executor.as_mut(), stage("echo $$")).await;
    executor.cleanup().await;
    assert_eq!(exit, StageExit::Exited(0));
    assert_ne!(sink.stdout(), first_shell, "a new shell after the stop");
}

/// The credential reject's stage after the report, with `script` (and its `inline` form).
fn after_report(script: String, inline: Option<String>) -> AfterReport {
    AfterReport {
        stage: "cleanup_git_credentials".to_owned(),
        script,
        inline,
        env: Vec::new(),
        timeout: std::time::Duration::from_secs(60),
    }
}

/// Hands `deferred` to the executor, then runs what its deferred cleanup hands back; whether
/// the job's processes were all seen gone.
async fn run_deferred(executor: &mut dyn runnel_executor::Executor, deferred: AfterReport) -> bool {
    assert!(
        executor.defer(deferred).is_none(),
        "the shell executor takes it"
    );
    let later = within("the cleanup", executor.cleanup_deferred())
        .await
        .expect("handed back");
    within("the deferred cleanup", later).await
}

/// A stage the executor takes with `defer` runs only in the work `cleanup_deferred` hands
/// back (after the job runner reported the final state), in the job's own shell, with its
/// output dropped; the session ends after it and what the job left running goes with it.
#[tokio::test]
async fn a_deferred_stage_runs_in_the_jobs_shell_after_the_report_then_the_session_ends() {
    let root = tempfile::tempdir().expect("temp dir");
    let mut executor = prepared(root.path(), KillPolicy::default()).await;
    let pid_file = root.path().join("left.pid");
    let left = format!("sleep 1000 & echo $! > {}; echo $$", pid_file.display());
    let (exit, sink) = run_stage(executor.as_mut(), stage(&left)).await;
    assert_eq!(exit, StageExit::Exited(0));
    let shell = sink.stdout();
    let background = crate::support::read_pid(&pid_file).await;

    let marker = root.path().join("after-report");
    let deferred = after_report(
        format!(
            "#!/usr/bin/env bash\necho \"shell=$$ parent=$PPID\" > {}\necho dropped; echo dropped >&2\n",
            marker.display()
        ),
        None,
    );
    assert!(
        executor.defer(deferred).is_none(),
        "the shell executor takes it"
    );
    let later = within("the cleanup", executor.cleanup_deferred())
        .await
        .expect("the session's end is handed back");
    assert!(!marker.exists(), "nothing ran before the report");
    assert!(
        crate::support::is_running(background),
        "the session lives until the report is out"
    );

    assert!(within("the deferred cleanup", later).await, "contained");
    let ran = std::fs::read_to_string(&marker).expect("the deferred stage ran");
    // `$$` in a subshell is the session shell's pid.
    assert!(ran.starts_with(&format!("shell={}", shell.trim())), "{ran}");
    crate::support::assert_gone(background).await;
}

/// A deferred stage with an inline form runs that, in the job's shell itself (no subshell to
/// fork: it is the last stage the shell runs), not the full script.
#[tokio::test]
async fn a_deferred_stage_runs_its_inline_form_in_the_shell_itself() {
    let root = tempfile::tempdir().expect("temp dir");
    let mut executor = prepared(root.path(), KillPolicy::default()).await;
    let (exit, sink) = run_stage(executor.as_mut(), stage("echo $$")).await;
    assert_eq!(exit, StageExit::Exited(0));
    let shell = sink.stdout().trim().to_owned();

    let marker = root.path().join("after-report");
    let deferred = after_report(
        format!("#!/usr/bin/env bash\necho script > {}\n", marker.display()),
        Some(format!(
            "{{ export DEFERRED=yes\n}} && {{ echo \"inline $BASHPID $DEFERRED\" > {}\n}}\n",
            marker.display()
        )),
    );
    assert!(run_deferred(executor.as_mut(), deferred).await, "contained");
    let ran = std::fs::read_to_string(&marker).expect("the deferred stage ran");
    assert_eq!(ran, format!("inline {shell} yes\n"), "in the shell itself");
}

/// A session that ended (a stopped stage ends it) does not stop the deferred stage: it runs
/// in a new shell.
#[tokio::test]
async fn a_deferred_stage_runs_in_a_new_shell_when_the_session_ended() {
    let root = tempfile::tempdir().expect("temp dir");
    let mut executor = prepared(root.path(), KillPolicy::default()).await;
    let (exit, _) = run_stage(executor.as_mut(), stage("kill -KILL $$; sleep 5")).await;
    assert_eq!(exit, StageExit::Signaled(9));

    let marker = root.path().join("after-report");
    let deferred = after_report(
        format!("#!/usr/bin/env bash\ntouch {}\n", marker.display()),
        None,
    );
    run_deferred(executor.as_mut(), deferred).await;
    assert!(marker.exists(), "the deferred stage ran in a new shell");
}

#[tokio::test]
async fn a_shell_killed_by_its_stage_reports_the_signal_and_is_replaced() {
    let root = tempfile::tempdir().expect("temp dir");
    let mut executor = prepared(root.path(), KillPolicy::default()).await;

    let (exit, _) = run_stage(
        executor.as_mut(),
        stage("echo dying; kill -KILL $$; sleep 5"),
    )
    .await;
    assert_eq!(exit, StageExit::Signaled(9));

    let (exit, sink) = run_stage(executor.as_mut(), stage("echo alive")).await;
    assert_eq!(exit, StageExit::Exited(0));
    assert_eq!(sink.stdout(), "alive\n");

    let pid_file = root.path().join("left.pid");
    let left = format!("sleep 1000 & echo $! > {}", pid_file.display());
    let (exit, _) = run_stage(executor.as_mut(), stage(&left)).await;
    assert_eq!(exit, StageExit::Exited(0));
    let background = crate::support::read_pid(&pid_file).await;
    executor.cleanup().await;
    crate::support::assert_gone(background).await;
}

/// The script reaches the shell as a private in-memory file of the runner's, not on stdin
/// (which bash would read one byte per system call) and not in any file on a disk.
#[tokio::test]
async fn stage_scripts_come_from_private_in_memory_files() {
    let root = tempfile::tempdir().expect("temp dir");
    let mut executor = prepared(root.path(), KillPolicy::default()).await;
    // `BASH_SOURCE` names the file the shell is reading.
    let script = "echo \"$BASH_SOURCE\"; stat -L -c %a \"$BASH_SOURCE\"; readlink \"$BASH_SOURCE\"; \
                  read -t 0.2 line && echo \"stdin: $line\"; echo done";
    let (exit, sink) = run_stage(executor.as_mut(), stage(script)).await;
    assert_eq!(exit, StageExit::Exited(0), "{}", sink.stderr());
    let out = sink.stdout();
    let mut lines = out.lines();
    let source = lines.next().expect("script path");
    assert!(
        source.starts_with(&format!("/proc/{}/fd/", std::process::id())),
        "one of the runner's descriptors: {out}"
    );
    assert_eq!(lines.next(), Some("600"), "the script file is private");
    let target = lines.next().expect("link target");
    assert!(
        target.starts_with("/memfd:runnel-stage"),
        "in memory: {out}"
    );
    assert_eq!(lines.next(), Some("done"), "stdin is /dev/null: {out}");
    executor.cleanup().await;
}

/// Records the process groups an executor reports.
#[derive(Default)]
struct Groups(std::sync::Mutex<Vec<u32>>);

impl runnel_executor::OutputSink for Groups {
    fn write(&self, stream: runnel_executor::OutputStream, bytes: &[u8]) {
        panic!(
            "nothing may be written before the job is acknowledged: {stream} {:?}",
            String::from_utf8_lossy(bytes)
        );
    }

    fn process_group_started(&self, pid: u32) {
        self.0.lock().expect("groups lock").push(pid);
    }
}

impl Groups {
    fn pids(&self) -> Vec<u32> {
        self.0.lock().expect("groups lock").clone()
    }
}

/// Issue #18: the login shell started while the job's acknowledgement is in flight (in a
/// builds directory it makes) is the one the first stage runs in, from the builds directory,
/// as a shell started by that stage would be; its process group is reported at once.
#[tokio::test]
async fn a_shell_started_early_serves_the_stages() {
    let root = tempfile::tempdir().expect("temp dir");
    let provider = ShellProvider::new(ShellOptions::default()).expect("valid options");
    let mut executor = provider.create().expect("create executor");
    let builds_dir = root.path().join("builds");
    let env = [("RUNNEL_EARLY".to_owned(), "yes".to_owned())];
    let groups = Groups::default();
    let early = EarlyStart {
        builds_dir: &builds_dir,
        env: &env,
    };
    assert!(within("the early start", executor.start_early(&early, &groups)).await);
    assert!(builds_dir.is_dir(), "the builds directory is made first");
    let pids = groups.pids();
    assert_eq!(pids.len(), 1, "one process group: {pids:?}");
    assert!(crate::support::is_running(pids[0].cast_signed()));

    let job = JobSpec::default();
    let cache_dir = root.path().join("cache");
    let ctx = prepare_context(&job, &builds_dir, &cache_dir);
    executor.prepare(&ctx).await.expect("prepare");
    let cmd = StageCommand {
        env: &env,
        ..stage("echo $$; pwd -P; echo $RUNNEL_EARLY; shopt -q login_shell && echo login")
    };
    let (exit, sink) = run_stage(executor.as_mut(), cmd).await;
    executor.cleanup().await;
    assert_eq!(exit, StageExit::Exited(0));
    let builds = builds_dir.canonicalize().expect("builds dir");
    assert_eq!(
        sink.stdout(),
        format!("{}\n{}\nyes\nlogin\n", pids[0], builds.display())
    );
    crate::support::assert_gone(pids[0].cast_signed()).await;
    assert!(executor.contained());
}

/// A job GitLab refuses after the shell was started early: cleanup (without prepare) stops
/// the shell and everything it started, and knows nothing is left.
#[tokio::test]
async fn cleanup_stops_a_shell_started_early() {
    let root = tempfile::tempdir().expect("temp dir");
    // The profile starts a background process: it must go too.
    std::fs::write(
        root.path().join(".bash_profile"),
        "sleep 300 & echo $! > \"$HOME/sleeper\"\n",
    )
    .expect("profile");
    let provider = ShellProvider::new(ShellOptions::default()).expect("valid options");
    let mut executor = provider.create().expect("create executor");
    let builds_dir = root.path().join("builds");
    let groups = Groups::default();
    // The login shell finds the profile through its HOME.
    let env = [("HOME".to_owned(), root.path().display().to_string())];
    let early = EarlyStart {
        builds_dir: &builds_dir,
        env: &env,
    };
    assert!(within("the early start", executor.start_early(&early, &groups)).await);
    let shell = groups.pids()[0].cast_signed();
    let sleeper = crate::support::read_pid(&root.path().join("sleeper")).await;
    within("cleanup", executor.cleanup()).await;
    crate::support::assert_gone(shell).await;
    crate::support::assert_gone(sleeper).await;
    assert!(executor.contained(), "the whole tree was seen gone");
}

/// A shell started early in another directory than the one `prepare` is given is not used:
/// the first stage starts its own in the right one.
#[tokio::test]
async fn a_shell_started_early_elsewhere_is_replaced() {
    let root = tempfile::tempdir().expect("temp dir");
    let provider = ShellProvider::new(ShellOptions::default()).expect("valid options");
    let mut executor = provider.create().expect("create executor");
    let elsewhere = root.path().join("elsewhere");
    let groups = Groups::default();
    let early = EarlyStart {
        builds_dir: &elsewhere,
        env: &[],
    };
    assert!(within("the early start", executor.start_early(&early, &groups)).await);
    let early_shell = groups.pids()[0];

    let job = JobSpec::default();
    let (builds_dir, cache_dir) = (root.path().join("builds"), root.path().join("cache"));
    let ctx = prepare_context(&job, &builds_dir, &cache_dir);
    executor.prepare(&ctx).await.expect("prepare");
    crate::support::assert_gone(early_shell.cast_signed()).await;
    let (exit, sink) = run_stage(executor.as_mut(), stage("echo $$; pwd -P")).await;
    executor.cleanup().await;
    assert_eq!(exit, StageExit::Exited(0));
    let builds = builds_dir.canonicalize().expect("builds dir");
    let stdout = sink.stdout();
    let (shell, dir) = stdout.split_once('\n').expect("two lines");
    assert_ne!(shell, early_shell.to_string(), "a new shell");
    assert_eq!(dir, format!("{}\n", builds.display()));
}

/// The login shells (`bash`) of this test process whose working directory is `dir`.
fn shells_in(dir: &Path) -> Vec<i32> {
    let own = std::process::id().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let parent = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1));
            stat.contains("(bash)")
                && parent == Some(own.as_str())
                && std::fs::read_link(format!("/proc/{pid}/cwd"))
                    .ok()
                    .as_deref()
                    == Some(dir)
        })
        .collect()
}

/// Whether `pid` is blocked in `read(0, …)` with no child: a session's shell between stages.
fn reads_its_input(pid: i32) -> bool {
    let syscall = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_else(|_| "unknown".to_owned());
    syscall.starts_with("0 0x0 ") && children.trim().is_empty()
}

/// Seconds since `pid` started.
fn age(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let (_, rest) = stat.rsplit_once(')').expect("stat line");
    let ticks: f64 = rest
        .split_whitespace()
        .nth(19)
        .and_then(|t| t.parse().ok())
        .expect("start time");
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .expect("uptime")
        .split_whitespace()
        .next()
        .and_then(|u| u.parse().ok())
        .expect("uptime seconds");
    // Linux reports start times in USER_HZ, 100 on every architecture Runnel builds for.
    uptime - ticks / 100.0
}

/// Waits until exactly one shell waits in `dir`, past its profile (blocked reading its
/// input), and returns it. A slow profile (pyenv's takes half a second on a busy machine)
/// would otherwise still run when the test's next job comes.
async fn waiting_shell(dir: &Path) -> i32 {
    for _ in 0..1200 {
        if let [pid] = shells_in(dir)[..]
            && reads_its_input(pid)
        {
            return pid;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("no shell waits in {}: {:?}", dir.display(), shells_in(dir));
}

/// One job of `provider` in `builds_dir` with `env`: the early start, one stage printing the
/// shell's pid, its environment variable and whether it is a login shell, and cleanup.
async fn early_job(provider: &ShellProvider, builds_dir: &Path, tag: &str) -> (u32, String) {
    let mut executor = provider.create().expect("create executor");
    let env = [("RUNNEL_TEST_TAG".to_owned(), tag.to_owned())];
    let groups = Groups::default();
    let early = EarlyStart {
        builds_dir,
        env: &env,
    };
    assert!(within("the early start", executor.start_early(&early, &groups)).await);
    let cmd = StageCommand {
        env: &env,
        ..stage("echo $$ $RUNNEL_TEST_TAG; shopt -q login_shell && echo login; pwd -P")
    };
    let (exit, sink) = run_stage(executor.as_mut(), cmd).await;
    executor.cleanup().await;
    assert_eq!(exit, StageExit::Exited(0));
    assert!(executor.contained());
    (groups.pids()[0], sink.stdout())
}

/// Issue #18: once a job took its login shell, the next job's is started in the same builds
/// directory while the runner waits, without any job's environment; the next job gets that
/// shell, already past its profile, with its own environment exported in it, and the one
/// after it finds a new one waiting again.
#[tokio::test]
async fn the_next_jobs_login_shell_is_started_ahead_and_gets_that_jobs_environment() {
    let root = tempfile::tempdir().expect("temp dir");
    let builds_dir = root.path().join("builds");
    let builds = || builds_dir.canonicalize().expect("builds dir");
    let provider = ShellProvider::new(ShellOptions::default()).expect("valid options");
    let (first, out) = early_job(&provider, &builds_dir, "one").await;
    assert_eq!(out, format!("{first} one\nlogin\n{}\n", builds().display()));

    let waiting = waiting_shell(&builds()).await;
    assert_ne!(waiting.cast_unsigned(), first);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let waited = age(waiting);
    assert!(
        waited >= 0.25,
        "it started before the job came: {waited} s ago"
    );
    let (second, out) = early_job(&provider, &builds_dir, "two").await;
    assert_eq!(
        second,
        waiting.cast_unsigned(),
        "the waiting shell runs the job"
    );
    assert_eq!(
        out,
        format!("{second} two\nlogin\n{}\n", builds().display())
    );
    crate::support::assert_gone(waiting).await;

    let next = waiting_shell(&builds()).await;
    assert!(![first, second].contains(&next.cast_unsigned()));
    drop(provider);
    crate::support::assert_gone(next).await;
}

/// A shell waiting in another builds directory is not used: the job starts its own where it
/// runs, and the waiting one goes (at once when it was ready, else with the provider).
#[tokio::test]
async fn a_shell_waiting_elsewhere_is_not_used() {
    let root = tempfile::tempdir().expect("temp dir");
    let (here, there) = (root.path().join("here"), root.path().join("there"));
    let provider = ShellProvider::new(ShellOptions::default()).expect("valid options");
    early_job(&provider, &here, "one").await;
    let waiting = waiting_shell(&here.canonicalize().expect("dir")).await;
    let (shell, out) = early_job(&provider, &there, "two").await;
    assert_ne!(shell, waiting.cast_unsigned());
    assert!(out.starts_with(&format!("{shell} two\nlogin\n")), "{out}");
    drop(provider);
    crate::support::assert_gone(waiting).await;
}
