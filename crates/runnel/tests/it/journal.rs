//! The job journal end to end: outages longer than the retry budget, a daemon killed with
//! SIGKILL mid-job, resets and 502 storms, a full disk. Every test checks the log GitLab ends up
//! with byte for byte against what the job printed (nothing lost, nothing twice) and that the
//! job reaches a final state the fake accepts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use runnel_fake_gitlab::{Endpoint, EndpointFilter, FakeGitlab, JobView, RemoteStatus};

use crate::run::{Daemon, Setup, final_update, job};

/// The lines `count` numbered lines printed by [`numbered_lines`], as the job printed them.
fn expected_lines(prefix: &str, count: usize) -> String {
    (1..=count).map(|i| format!("{prefix}-{i}\n")).collect()
}

/// A script line printing `count` numbered lines, `pause` seconds apart.
fn numbered_lines(prefix: &str, count: usize, pause: &str) -> String {
    format!("for i in $(seq 1 {count}); do echo {prefix}-$i; sleep {pause}; done")
}

/// Asserts that the job's lines arrived exactly once each, in order, with nothing between them.
#[track_caller]
fn assert_lines_once(view: &JobView, prefix: &str, count: usize, log: &str) {
    let trace = view.trace_text();
    let expected = expected_lines(prefix, count);
    assert!(
        trace.contains(&expected),
        "every line arrived, in order:\n{trace}\nrunnel log:\n{log}"
    );
    let mentions = trace.matches(&format!("{prefix}-1\n")).count();
    assert_eq!(mentions, 1, "nothing arrived twice:\n{trace}");
    let printed = trace
        .lines()
        .filter(|l| l.starts_with(&format!("{prefix}-")))
        .count();
    assert_eq!(printed, count, "no line twice or extra:\n{trace}");
}

fn journal_dir(daemon: &Daemon) -> PathBuf {
    daemon.dir.path().join("runnel-journal")
}

/// The job files in the journal directory.
fn journal_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with("job-"))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until the journal holds no job (it is cleared just after GitLab accepted the job).
async fn journal_emptied(dir: &Path) -> bool {
    for _ in 0..100 {
        if journal_files(dir).is_empty() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Whether `pid` is still a live process (a zombie is not).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

async fn read_pid(path: &Path) -> i32 {
    for _ in 0..200 {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Ok(pid) = text.trim().parse()
        {
            return pid;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} was not written", path.display());
}

async fn wait_dead(pid: i32) -> bool {
    for _ in 0..600 {
        if !alive(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn a_daemon_killed_mid_job_fails_the_job_and_kills_its_processes_on_restart() {
    let mut daemon = Daemon::start(Setup::default()).await;
    let pids = daemon.dir.path().join("pids");
    std::fs::create_dir(&pids).unwrap();
    let escaped = pids.join("escaped");
    let background = pids.join("background");
    let script = [
        numbered_lines("before", 20, "0"),
        // One process leaves the job's process group and session, one stays in it.
        format!(
            "setsid sh -c 'echo $$ > {}; exec sleep 600' < /dev/null > /dev/null 2>&1 &",
            escaped.display()
        ),
        format!("sleep 600 & echo $! > {}", background.display()),
        "echo ready".to_owned(),
        "wait".to_owned(),
    ];
    let id = daemon.fake.enqueue(job("killed").script(script));
    daemon.printed(id, "ready\n").await;
    let escaped = read_pid(&escaped).await;
    let background = read_pid(&background).await;
    // The journal has the log the job had.
    let dir = journal_dir(&daemon);
    let log_file = dir.join(
        journal_files(&dir)
            .into_iter()
            .find(|n| n.ends_with(".log"))
            .expect("a job log in the journal"),
    );
    let mut journaled = String::new();
    for _ in 0..100 {
        journaled = std::fs::read_to_string(&log_file).unwrap_or_default();
        if journaled.contains("ready\n") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        journaled.contains(&expected_lines("before", 20)),
        "{journaled}"
    );

    daemon.signal(Signal::SIGKILL);
    daemon.wait_exit().await;
    assert!(
        alive(escaped),
        "the escaped process outlives a SIGKILLed runner"
    );
    assert_eq!(
        daemon.fake.job(id).unwrap().status,
        RemoteStatus::Running,
        "GitLab still thinks the job runs"
    );

    daemon.spawn(&["run"]);
    let view = daemon.finished(id).await;
    assert_eq!(view.status, RemoteStatus::Failed, "log:\n{}", daemon.log());
    let last = final_update(&view);
    assert_eq!(
        last.failure_reason.as_deref(),
        Some("runner_system_failure")
    );
    assert_lines_once(&view, "before", 20, &daemon.log());
    let trace = view.trace_text();
    assert!(
        trace.contains("ready\n"),
        "the log the job had is kept:\n{trace}"
    );
    assert!(
        trace.contains("the runner was restarted while this job was running"),
        "{trace}"
    );
    assert!(
        trace.starts_with(&journaled),
        "the journaled log, then the line:\n{trace}"
    );
    assert!(wait_dead(escaped).await, "the escaped process was killed");
    assert!(
        wait_dead(background).await,
        "the job's own processes were killed"
    );
    assert!(journal_emptied(&dir).await, "{:?}", journal_files(&dir));

    // The restarted daemon runs new jobs as usual.
    let next = daemon.fake.enqueue(job("next").script(["echo next"]));
    assert_eq!(daemon.finished(next).await.status, RemoteStatus::Success);
    daemon.signal(Signal::SIGQUIT);
    assert!(daemon.wait_exit().await.success(), "{}", daemon.log());
}

#[tokio::test]
async fn an_outage_longer_than_the_retry_budget_loses_no_byte_and_delivers_the_final_state() {
    let daemon = Daemon::start(Setup {
        runner: "  job_status_final_update_retry_limit = 1\n".to_owned(),
        ..Setup::default()
    })
    .await;
    let id = daemon.fake.enqueue(
        job("outage").script([numbered_lines("line", 40, "0.05"), "seq 1 3000".to_owned()]),
    );
    daemon.printed(id, "line-3\n").await;
    // GitLab is unreachable (connections dropped) until the test says otherwise.
    daemon.fake.drop_connections_for(Duration::from_secs(3600));
    // The job ends during the outage and its final update is abandoned after the budget.
    let dir = journal_dir(&daemon);
    let mut gave_up = false;
    for _ in 0..600 {
        if daemon.log().contains("the job journal keeps it") {
            gave_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gave_up, "the final update was abandoned:\n{}", daemon.log());
    assert_eq!(daemon.fake.job(id).unwrap().status, RemoteStatus::Running);
    assert_eq!(journal_files(&dir).len(), 2, "{:?}", journal_files(&dir));
    daemon.fake.clear_faults();
    let view = daemon.finished(id).await;
    assert_eq!(view.status, RemoteStatus::Success, "log:\n{}", daemon.log());
    assert_lines_once(&view, "line", 40, &daemon.log());
    let numbers: String = (1..=3000).map(|i| format!("{i}\n")).collect();
    assert!(
        view.trace_text().contains(&numbers),
        "the output after the outage arrived"
    );
    assert!(journal_emptied(&dir).await, "{:?}", journal_files(&dir));
}

#[tokio::test]
async fn run_single_exits_non_zero_naming_an_undelivered_job_and_the_next_start_delivers_it() {
    let fake = FakeGitlab::start(runnel_fake_gitlab::FakeConfig {
        long_poll: Duration::from_secs(2),
        trace_update_interval_secs: 1,
        ..runnel_fake_gitlab::FakeConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token = fake.create_runner_token();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "concurrent = 1\ncheck_interval = 1\n\n[[runners]]\n  name = \"single\"\n  url = \"{}\"\n  token = \"{token}\"\n  executor = \"shell\"\n  builds_dir = \"{}\"\n  job_status_final_update_retry_limit = 1\n  [runners.feature_flags]\n    FF_TIMESTAMPS = false\n",
            fake.url(),
            dir.path().join("builds").display()
        ),
    )
    .unwrap();
    let id = fake.enqueue(job("single").script([numbered_lines("line", 30, "0.1")]));
    let config = config.to_str().unwrap().to_owned();
    let args = [
        "run-single",
        "--runner",
        "single",
        "--max-builds",
        "1",
        "-c",
        &config,
    ];
    let first = {
        let run = crate::support::run_runnel(&args, "", dir.path());
        let outage = async {
            fake.wait_for_job_state(
                id,
                |v: &JobView| v.trace_text().contains("line-2\n"),
                Duration::from_secs(60),
            )
            .await
            .unwrap();
            fake.fail_for(EndpointFilter::Any, Duration::from_secs(3600), 503);
        };
        let (run, ()) = tokio::join!(run, outage);
        run
    };
    first.assert_failure();
    assert!(
        first.stderr.contains(&format!("job {id}"))
            && first.stderr.contains("could not be delivered"),
        "says which job:\n{}",
        first.stderr
    );
    assert_eq!(fake.job(id).unwrap().status, RemoteStatus::Running);

    fake.clear_faults();
    let args = [
        "run-single",
        "--runner",
        "single",
        "--wait-timeout",
        "1",
        "-c",
        &config,
    ];
    let second = crate::support::run_runnel(&args, "", dir.path()).await;
    second.assert_success();
    let view = fake.job(id).unwrap();
    assert_eq!(view.status, RemoteStatus::Success, "{}", second.stderr);
    assert_lines_once(&view, "line", 30, &second.stderr);
    assert!(journal_files(&dir.path().join("runnel-journal")).is_empty());
}

#[tokio::test]
async fn resets_after_gitlab_applied_a_patch_and_502_storms_duplicate_and_lose_nothing() {
    let daemon = Daemon::start(Setup::default()).await;
    let id = daemon
        .fake
        .enqueue(job("chaos").script([numbered_lines("line", 40, "0.1")]));
    daemon.printed(id, "line-2\n").await;
    // GitLab appends the chunk but the answer never arrives: the retry must not append it again.
    daemon
        .fake
        .lose_answers_next(EndpointFilter::Only(Endpoint::PatchTrace), 3);
    daemon.printed(id, "line-15\n").await;
    daemon
        .fake
        .fail_next(EndpointFilter::Only(Endpoint::PatchTrace), 12, 502);
    daemon.printed(id, "line-30\n").await;
    // The final state is applied but its answer lost; then a storm on every endpoint.
    daemon
        .fake
        .lose_answers_next(EndpointFilter::Only(Endpoint::UpdateJob), 1);
    daemon
        .fake
        .fail_for(EndpointFilter::Any, Duration::from_secs(2), 502);
    let view = daemon.finished(id).await;
    assert_eq!(view.status, RemoteStatus::Success, "log:\n{}", daemon.log());
    assert_lines_once(&view, "line", 40, &daemon.log());
    let answers: Vec<u16> = view.patches.iter().map(|p| p.status).collect();
    assert!(
        answers.contains(&416),
        "a lost answer was resolved by a 416: {answers:?}"
    );
}

#[tokio::test]
async fn a_full_disk_while_journaling_fails_the_job_clearly_and_the_daemon_lives() {
    let mut daemon = Daemon::start(Setup {
        env: vec![(
            "RUNNEL_TEST_JOURNAL_DISK_BYTES".to_owned(),
            "20000".to_owned(),
        )],
        ..Setup::default()
    })
    .await;
    let id = daemon.fake.enqueue(
        job("full").script(["for i in $(seq 1 2000); do echo filling-the-disk-$i; done; sleep 30"]),
    );
    let view = daemon.finished(id).await;
    assert_eq!(view.status, RemoteStatus::Failed, "log:\n{}", daemon.log());
    assert_eq!(
        final_update(&view).failure_reason.as_deref(),
        Some("runner_system_failure")
    );
    let trace = view.trace_text();
    assert!(
        trace.contains("the job journal could not be written")
            && trace.contains("No space left on device"),
        "{trace}"
    );
    // The daemon goes on running jobs.
    let next = daemon
        .fake
        .enqueue(job("after").script(["echo still here"]));
    let view = daemon.finished(next).await;
    assert_eq!(view.status, RemoteStatus::Success, "log:\n{}", daemon.log());
    daemon.signal(Signal::SIGQUIT);
    assert!(daemon.wait_exit().await.success(), "{}", daemon.log());
    assert!(journal_files(&journal_dir(&daemon)).is_empty());
}

#[tokio::test]
async fn a_second_daemon_on_the_same_journal_is_refused_at_start() {
    let mut daemon = Daemon::start(Setup::default()).await;
    let id = daemon.fake.enqueue(job("first").script(["echo first"]));
    daemon.finished(id).await;
    let config = daemon.config_path();
    let run = crate::support::run_runnel(
        &["run", "-c", config.to_str().unwrap()],
        "",
        daemon.dir.path(),
    )
    .await;
    run.assert_failure();
    assert!(
        run.stderr.contains("in use by another runnel process"),
        "{}",
        run.stderr
    );
    daemon.signal(Signal::SIGQUIT);
    daemon.wait_exit().await;
}
