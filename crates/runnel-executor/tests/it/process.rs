//! `process::run`: output streaming, exit statuses, stopping, and cleaning up process groups.

use std::path::Path;
use std::time::Duration;

use runnel_executor::process::{self, KillPolicy, ProcessSpec, StopWhen};
use runnel_executor::{ExecutorError, OutputStream, StageExit};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::support::{Recorder, assert_gone, is_running, read_pid, within};

/// Short waits, so tests that exercise them stay quick.
const QUICK: KillPolicy = KillPolicy {
    grace: Duration::from_millis(200),
    force: Duration::from_secs(10),
    drain: Duration::from_millis(200),
};

fn bash(script: &str) -> ProcessSpec<'_> {
    ProcessSpec {
        program: "bash",
        args: &[],
        cwd: None,
        env: &[],
        stdin: script.as_bytes(),
    }
}

async fn run_with(
    spec: ProcessSpec<'_>,
    cancel: &CancellationToken,
    deadline: Option<Instant>,
) -> (Result<StageExit, ExecutorError>, Recorder) {
    let sink = Recorder::default();
    let stop = StopWhen { cancel, deadline };
    let result = within("process::run", process::run(spec, &sink, stop, &QUICK)).await;
    (result, sink)
}

async fn run_bash(script: &str) -> (StageExit, Recorder) {
    let (result, sink) = run_with(bash(script), &CancellationToken::new(), None).await;
    (result.expect("bash runs"), sink)
}

fn pid_file(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

#[tokio::test]
async fn binary_output_arrives_unchanged() {
    let (exit, sink) = run_bash(r"printf 'a\000b\377\376\r\n\033[0K'").await;

    assert_eq!(exit, StageExit::Exited(0));
    assert_eq!(sink.bytes(OutputStream::Stdout), b"a\0b\xff\xfe\r\n\x1b[0K");
}

#[tokio::test]
async fn stdout_and_stderr_are_both_captured() {
    let (exit, sink) = run_bash("echo to-out; echo to-err >&2; echo more-out").await;

    assert_eq!(exit, StageExit::Exited(0));
    assert_eq!(sink.stdout(), "to-out\nmore-out\n");
    assert_eq!(sink.stderr(), "to-err\n");
}

#[tokio::test]
async fn exit_codes_are_reported() {
    for code in [0, 1, 42] {
        let (exit, _) = run_bash(&format!("exit {code}")).await;
        assert_eq!(exit, StageExit::Exited(code));
        assert_eq!(exit.exit_code(), Some(code));
        assert_eq!(exit.success(), code == 0);
    }
}

#[tokio::test]
async fn death_by_signal_maps_to_128_plus_signal() {
    let (exit, _) = run_bash("kill -KILL $$").await;

    assert_eq!(exit, StageExit::Signaled(9));
    assert_eq!(exit.exit_code(), Some(137));
}

#[tokio::test]
async fn environment_is_inherited_and_extended() {
    let env = [("RUNNEL_TEST_EXTRA".to_owned(), "extra value".to_owned())];
    let spec = ProcessSpec {
        env: &env,
        ..bash(r#"echo "$RUNNEL_TEST_EXTRA"; echo "$PATH""#)
    };
    let (result, sink) = run_with(spec, &CancellationToken::new(), None).await;

    assert_eq!(result.expect("bash runs"), StageExit::Exited(0));
    let path = std::env::var("PATH").expect("PATH is set");
    assert_eq!(sink.stdout(), format!("extra value\n{path}\n"));
}

#[tokio::test]
async fn starts_in_the_working_directory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let spec = ProcessSpec {
        cwd: Some(dir.path()),
        ..bash("pwd -P")
    };
    let (result, sink) = run_with(spec, &CancellationToken::new(), None).await;

    assert_eq!(result.expect("bash runs"), StageExit::Exited(0));
    let expected = dir.path().canonicalize().expect("canonical temp dir");
    assert_eq!(sink.stdout(), format!("{}\n", expected.display()));
}

#[tokio::test]
async fn large_output_is_byte_exact() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("blob");
    let blob = pseudo_random_bytes(10 * 1024 * 1024);
    std::fs::write(&file, &blob).expect("write blob");

    let script = format!("cat '{}'; cat '{}' >&2", file.display(), file.display());
    let (exit, sink) = run_bash(&script).await;

    assert_eq!(exit, StageExit::Exited(0));
    assert!(sink.bytes(OutputStream::Stdout) == blob, "stdout differs");
    assert!(sink.bytes(OutputStream::Stderr) == blob, "stderr differs");
    assert!(sink.chunk_count() > 2, "output arrives in chunks");
}

fn pseudo_random_bytes(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect()
}

#[tokio::test]
async fn script_larger_than_a_pipe_buffer_is_fed_through_stdin() {
    let lines = 20_000;
    let mut script: String = (1..=lines).map(|i| format!("echo line {i}\n")).collect();
    script.push_str("echo end\n");
    assert!(script.len() > 256 * 1024);

    let (exit, sink) = run_bash(&script).await;

    assert_eq!(exit, StageExit::Exited(0));
    let stdout = sink.stdout();
    assert_eq!(stdout.lines().count(), lines + 1);
    assert!(stdout.starts_with("line 1\nline 2\n"));
    assert!(stdout.ends_with("line 20000\nend\n"));
}

#[tokio::test]
async fn script_exiting_before_reading_all_stdin_is_fine() {
    let mut script = String::from("echo first\nexit 3\n");
    script.push_str(&"echo never\n".repeat(50_000));

    let (exit, sink) = run_bash(&script).await;

    assert_eq!(exit, StageExit::Exited(3));
    assert_eq!(sink.stdout(), "first\n");
}

#[tokio::test]
async fn spawn_error_names_the_program() {
    let spec = ProcessSpec {
        program: "runnel-no-such-shell",
        ..bash("true")
    };
    let (result, sink) = run_with(spec, &CancellationToken::new(), None).await;

    let error = result.expect_err("the program does not exist");
    assert!(matches!(error, ExecutorError::Spawn { .. }), "{error:?}");
    insta::assert_snapshot!(error, @"failed to start `runnel-no-such-shell`");
    assert_eq!(sink.chunk_count(), 0);
}

#[tokio::test]
async fn cancellation_kills_the_whole_tree() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (leader, child, stubborn) = (
        pid_file(dir.path(), "leader"),
        pid_file(dir.path(), "child"),
        pid_file(dir.path(), "stubborn"),
    );
    let script = format!(
        "echo $$ > {leader}\n\
         sleep 1000 & echo $! > {child}.tmp; mv {child}.tmp {child}\n\
         (trap '' TERM; exec sleep 1001) & echo $! > {stubborn}.tmp\n\
         echo started\n\
         mv {stubborn}.tmp {stubborn}\n\
         wait\n"
    );
    let cancel = CancellationToken::new();

    let canceller = async {
        let pids = (
            read_pid(Path::new(&leader)).await,
            read_pid(Path::new(&child)).await,
            read_pid(Path::new(&stubborn)).await,
        );
        cancel.cancel();
        pids
    };
    let ((result, sink), (leader, child, stubborn)) =
        tokio::join!(run_with(bash(&script), &cancel, None), canceller);

    assert_eq!(result.expect("bash runs"), StageExit::Cancelled);
    assert_eq!(sink.stdout(), "started\n");
    for pid in [leader, child, stubborn] {
        assert_gone(pid).await;
    }
}

#[tokio::test]
async fn a_script_ignoring_sigterm_is_killed_after_the_grace_period() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (leader, child) = (
        pid_file(dir.path(), "leader"),
        pid_file(dir.path(), "child"),
    );
    let script = format!(
        "trap '' TERM\n\
         echo $$ > {leader}\n\
         sleep 1000 & echo $! > {child}.tmp; mv {child}.tmp {child}\n\
         wait\n\
         echo survived\n"
    );
    let cancel = CancellationToken::new();

    let canceller = async {
        let pids = (
            read_pid(Path::new(&leader)).await,
            read_pid(Path::new(&child)).await,
        );
        cancel.cancel();
        pids
    };
    let ((result, sink), (leader, child)) =
        tokio::join!(run_with(bash(&script), &cancel, None), canceller);

    assert_eq!(result.expect("bash runs"), StageExit::Cancelled);
    assert_eq!(sink.stdout(), "", "the script must not have run on");
    assert_gone(leader).await;
    assert_gone(child).await;
}

#[tokio::test]
async fn the_deadline_stops_the_process() {
    let deadline = Instant::now() + Duration::from_millis(300);

    let (result, _) = run_with(
        bash("sleep 1000"),
        &CancellationToken::new(),
        Some(deadline),
    )
    .await;

    assert_eq!(result.expect("bash runs"), StageExit::TimedOut);
}

#[tokio::test]
async fn dropping_the_future_kills_the_group() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (leader, child) = (
        pid_file(dir.path(), "leader"),
        pid_file(dir.path(), "child"),
    );
    let script = format!(
        "trap '' TERM\n\
         echo $$ > {leader}\n\
         sleep 1000 & echo $! > {child}.tmp; mv {child}.tmp {child}\n\
         wait\n"
    );
    let sink = Recorder::default();
    let cancel = CancellationToken::new();
    let stop = StopWhen {
        cancel: &cancel,
        deadline: None,
    };

    let pids = within("the script to start", async {
        tokio::select! {
            result = process::run(bash(&script), &sink, stop, &QUICK) => {
                panic!("the script ended on its own: {result:?}")
            }
            pids = async {
                (read_pid(Path::new(&leader)).await, read_pid(Path::new(&child)).await)
            } => pids,
        }
    })
    .await;

    assert_gone(pids.0).await;
    assert_gone(pids.1).await;
}

#[tokio::test]
async fn a_panicking_task_leaves_no_processes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let child = pid_file(dir.path(), "child");
    let script = format!("sleep 1000 & echo $! > {child}.tmp; mv {child}.tmp {child}; wait");

    let task = tokio::spawn({
        let child = child.clone();
        async move {
            let sink = Recorder::default();
            let cancel = CancellationToken::new();
            let stop = StopWhen {
                cancel: &cancel,
                deadline: None,
            };
            tokio::select! {
                _ = process::run(bash(&script), &sink, stop, &QUICK) => {}
                _ = read_pid(Path::new(&child)) => panic!("the job task panics"),
            }
        }
    });

    let joined = within("the task", task).await;
    assert!(joined.is_err_and(|error| error.is_panic()));
    assert_gone(read_pid(Path::new(&child)).await).await;
}

#[tokio::test]
async fn a_background_process_holding_stdout_does_not_hang_the_stage() {
    let dir = tempfile::tempdir().expect("temp dir");
    let child = pid_file(dir.path(), "child");
    let script = format!("sleep 1000 & echo $! > {child}; echo done");

    let (exit, sink) = run_bash(&script).await;

    assert_eq!(exit, StageExit::Exited(0));
    assert_eq!(sink.stdout(), "done\n");
    assert_gone(read_pid(Path::new(&child)).await).await;
}

#[tokio::test]
async fn a_process_that_left_the_group_only_delays_the_stage_by_the_drain_window() {
    let dir = tempfile::tempdir().expect("temp dir");
    let escaped = pid_file(dir.path(), "escaped");
    // The pid file is written only after `setsid`, so the stage cannot end before the escape.
    let script = format!(
        "setsid sh -c 'echo $$ > {escaped}.tmp; mv {escaped}.tmp {escaped}; exec sleep 1000' &\n\
         while [ ! -e {escaped} ]; do sleep 0.01; done\n\
         echo done\n"
    );

    let (exit, sink) = run_bash(&script).await;
    let escaped = read_pid(Path::new(&escaped)).await;
    // Out of the group's reach by design; clean up after the test.
    let still_running = is_running(escaped);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(escaped),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the escaped process");

    assert_eq!(exit, StageExit::Exited(0));
    assert_eq!(sink.stdout(), "done\n");
    assert!(still_running, "setsid moved the process out of the group");
}

#[tokio::test]
async fn output_is_streamed_before_the_process_exits() {
    let dir = tempfile::tempdir().expect("temp dir");
    let gate = dir.path().join("gate");
    let script = format!(
        "printf partial\nwhile [ ! -e '{}' ]; do sleep 0.01; done\necho ' rest'\n",
        gate.display()
    );
    let sink = Recorder::default();
    let cancel = CancellationToken::new();
    let stop = StopWhen {
        cancel: &cancel,
        deadline: None,
    };

    let opener = async {
        within("the partial line", async {
            while sink.stdout() != "partial" {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        std::fs::write(&gate, "").expect("open the gate");
    };
    let (result, ()) = tokio::join!(
        within(
            "process::run",
            process::run(bash(&script), &sink, stop, &QUICK)
        ),
        opener
    );

    assert_eq!(result.expect("bash runs"), StageExit::Exited(0));
    assert_eq!(sink.stdout(), "partial rest\n");
}

/// Review H2 (`review-repro/nonce_job3.sh`, `nonce_job2.sh`): a stage read the rest of the
/// session shell's input through `/proc/$$/fd/0`, learned the stage-end marker and forged it
/// with an endless status (the runner then held and rescanned everything that followed), or
/// just ate the trailer (the stage then never ended). Now the shell has read the whole trailer
/// before the stage starts: there is nothing to steal, the marker-like output is passed on as
/// output, the stage ends with its own status and the session goes on.
#[tokio::test]
async fn a_stage_cannot_learn_or_forge_the_stage_end_marker() {
    use runnel_executor::process::{ScriptDelivery, Session};
    for delivery in [ScriptDelivery::Stdin, ScriptDelivery::Memory] {
        let sink = Recorder::default();
        let mut session = Session::start(&bash(""), delivery, &sink).expect("session starts");
        let cancel = CancellationToken::new();
        let stop = StopWhen {
            cancel: &cancel,
            deadline: None,
        };
        let attack = r#"stolen=$( (timeout 1 dd if=/proc/$$/fd/0 bs=1 count=300 2>/dev/null || true) | tr -d '\0')
nonce=$(printf '%s' "$stolen" | grep -o 'RUNNEL-[0-9a-f]*' | head -1)
echo "learned marker nonce: [$nonce]"
{ printf '\0%s:' "$nonce"; head -c 2000000 /dev/zero | tr '\0' 'A'; }
echo $$ >&2
exit 7"#;
        let exit = within(
            "the attacking stage",
            session.run(attack, &sink, stop, &QUICK),
        )
        .await
        .expect("stage runs");
        assert_eq!(
            exit,
            StageExit::Exited(7),
            "{delivery:?}: the stage's own status"
        );
        let mut expected = b"learned marker nonce: []\n\0:".to_vec();
        expected.extend(std::iter::repeat_n(b'A', 2_000_000));
        let out = sink.bytes(OutputStream::Stdout);
        assert!(
            out == expected,
            "{delivery:?}: {} bytes of output instead of {}",
            out.len(),
            expected.len()
        );
        let shell = sink.stderr();

        let next = Recorder::default();
        let exit = within(
            "the next stage",
            session.run("echo $$ >&2", &next, stop, &QUICK),
        )
        .await
        .expect("next stage runs");
        session.close().await;
        assert_eq!(exit, StageExit::Exited(0));
        assert_eq!(
            next.stderr(),
            shell,
            "{delivery:?}: the same session goes on"
        );
    }
}

/// `Session::run_inline`: housekeeping runs in the session's shell itself (no process of its
/// own), its output and status come back as a stage's do, a failure gives the failed
/// command's status and skips the rest, and the stages after it run as before, in both
/// deliveries.
#[tokio::test]
async fn housekeeping_runs_in_the_session_shell_itself() {
    use runnel_executor::process::{ScriptDelivery, Session};
    for delivery in [ScriptDelivery::Stdin, ScriptDelivery::Memory] {
        let sink = Recorder::default();
        let mut session = Session::start(&bash(""), delivery, &sink).expect("session starts");
        let cancel = CancellationToken::new();
        let stop = StopWhen {
            cancel: &cancel,
            deadline: None,
        };
        let inline = Recorder::default();
        let exit = within(
            "the housekeeping",
            session.run_inline(
                "{ echo \"shell $$ in $BASHPID\"\n} && { echo to stderr >&2\n}\n",
                &inline,
                stop,
                &QUICK,
            ),
        )
        .await
        .expect("housekeeping runs");
        assert_eq!(exit, StageExit::Exited(0), "{delivery:?}");
        let out = inline.stdout();
        let (own, current) = out
            .trim_end()
            .strip_prefix("shell ")
            .and_then(|rest| rest.split_once(" in "))
            .expect("the pids");
        assert_eq!(own, current, "{delivery:?}: no subshell ran it");
        assert_eq!(
            own,
            session.pid().to_string(),
            "{delivery:?}: the shell itself"
        );
        assert_eq!(inline.stderr(), "to stderr\n");

        let failed = Recorder::default();
        let exit = within(
            "failing housekeeping",
            session.run_inline(
                "{ echo first\n} && { (exit 3)\n} && { echo never\n}\n",
                &failed,
                stop,
                &QUICK,
            ),
        )
        .await
        .expect("housekeeping runs");
        assert_eq!(
            exit,
            StageExit::Exited(3),
            "{delivery:?}: the failure's status"
        );
        assert_eq!(
            failed.stdout(),
            "first\n",
            "{delivery:?}: the rest is skipped"
        );

        let next = Recorder::default();
        let exit = within(
            "the next stage",
            session.run("echo \"next $$\"; exit 4", &next, stop, &QUICK),
        )
        .await
        .expect("next stage runs");
        session.close().await;
        assert_eq!(exit, StageExit::Exited(4));
        assert_eq!(next.stdout(), format!("next {own}\n"), "{delivery:?}");
    }
}

/// With [`ScriptDelivery::Memory`] a stage's script is in no file on any filesystem: the
/// shell sources an anonymous in-memory file of the runner's (so nothing of it is left to
/// remove after a crash), a new one for each stage.
#[tokio::test]
async fn stage_scripts_are_sourced_from_a_new_in_memory_file_each() {
    use runnel_executor::process::{ScriptDelivery, Session};
    let sink = Recorder::default();
    let mut session =
        Session::start(&bash(""), ScriptDelivery::Memory, &sink).expect("session starts");
    let cancel = CancellationToken::new();
    let mut seen = Vec::new();
    for _ in 0..2 {
        let out = Recorder::default();
        let stop = StopWhen {
            cancel: &cancel,
            deadline: None,
        };
        let exit = within(
            "the stage",
            session.run(
                "echo \"$BASH_SOURCE|$(readlink \"$BASH_SOURCE\")|$(stat -L -c %i \"$BASH_SOURCE\")\"",
                &out,
                stop,
                &QUICK,
            ),
        )
        .await
        .expect("stage runs");
        assert_eq!(exit, StageExit::Exited(0));
        let line = out.stdout();
        let fields: Vec<&str> = line.trim().split('|').collect();
        let [source, target, inode] = fields[..] else {
            panic!("three fields: {line}");
        };
        let prefix = format!("/proc/{}/fd/", std::process::id());
        assert!(source.starts_with(&prefix), "{line}");
        assert!(target.starts_with("/memfd:runnel-stage"), "{line}");
        seen.push(inode.to_owned());
    }
    session.close().await;
    assert_ne!(seen[0], seen[1], "a new file for each stage");
}

/// Review M5 (`scratch/p8`): a job started `setsid nohup … &`, which outlived the job and read
/// the next job's secrets. The session shell is the subreaper of what its stages start, so
/// processes that left the process group (setsid, a double fork) die with the session too.
#[tokio::test]
async fn processes_that_left_the_group_die_with_the_session() {
    use runnel_executor::process::{ScriptDelivery, Session};
    let dir = tempfile::tempdir().expect("temp dir");
    let sink = Recorder::default();
    let mut session =
        Session::start(&bash(""), ScriptDelivery::Memory, &sink).expect("session starts");
    let cancel = CancellationToken::new();
    let stop = StopWhen {
        cancel: &cancel,
        deadline: None,
    };
    let setsid_pid = dir.path().join("setsid.pid");
    let daemon_pid = dir.path().join("daemon.pid");
    let script = format!(
        "setsid nohup sleep 1000 >/dev/null 2>&1 & echo $! > {}\n\
         (setsid sh -c 'sleep 1000 & echo $! > {}' >/dev/null 2>&1 &)\n\
         sleep 0.2; echo $$",
        setsid_pid.display(),
        daemon_pid.display()
    );
    let exit = within("the stage", session.run(&script, &sink, stop, &QUICK))
        .await
        .expect("stage runs");
    assert_eq!(exit, StageExit::Exited(0));
    let escaped = [read_pid(&setsid_pid).await, read_pid(&daemon_pid).await];
    let parents: Vec<String> = escaped
        .iter()
        .map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    for pid in escaped {
        assert!(is_running(pid), "{pid} runs until the session ends");
    }
    let shell = sink.stdout();
    assert_eq!(
        parents,
        [shell.trim(), shell.trim()],
        "the session shell is the subreaper of what left its group"
    );
    session.close().await;
    for pid in escaped {
        assert_gone(pid).await;
    }
}
