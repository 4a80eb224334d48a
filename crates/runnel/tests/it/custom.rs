//! The custom executor end to end: the `runnel` binary, the fake GitLab and real driver
//! scripts speaking the official protocol (tests/data/custom): one runs the stages on this
//! host, one in a Docker container it creates in prepare_exec, one fails each documented way.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use runnel_fake_gitlab::RemoteStatus;
use serde_json::json;

use crate::run::{Daemon, Setup, final_update, job};

fn driver(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/custom")
        .join(name)
}

/// `[runners.custom]` calling `driver` for every step with `<step> <arg>` first.
fn custom_section(driver: &Path, arg: &str, extra: &str) -> String {
    let d = driver.display();
    format!(
        "  [runners.custom]\n    config_exec = \"{d}\"\n    config_args = [\"config\", \"{arg}\"]\n    prepare_exec = \"{d}\"\n    prepare_args = [\"prepare\", \"{arg}\"]\n    run_exec = \"{d}\"\n    run_args = [\"run\", \"{arg}\"]\n    cleanup_exec = \"{d}\"\n    cleanup_args = [\"cleanup\", \"{arg}\"]\n{extra}"
    )
}

/// A daemon whose runner uses the host driver, with its builds and log under `root`.
async fn host_daemon(root: &Path, concurrent: usize, runner: &str) -> Daemon {
    Daemon::start(Setup {
        concurrent,
        executor: Some("custom"),
        runner: runner.to_owned(),
        tables: custom_section(&driver("host.sh"), &root.display().to_string(), ""),
        ..Setup::default()
    })
    .await
}

fn driver_log(root: &Path) -> String {
    std::fs::read_to_string(root.join("driver.log")).unwrap_or_default()
}

/// Waits (bounded) for `needle` in the driver log: cleanup runs after the final update.
async fn logged(root: &Path, needle: &str) -> String {
    for _ in 0..200 {
        let log = driver_log(root);
        if log.contains(needle) {
            return log;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("driver log lacks {needle:?}:\n{}", driver_log(root));
}

#[tokio::test]
async fn a_host_driver_runs_every_protocol_step() {
    let root = tempfile::tempdir().unwrap();
    let daemon = host_daemon(root.path(), 1, "").await;
    let id = daemon.fake.enqueue(
        job("custom-ok")
            .variable("PLAIN", "plain-value")
            .file_variable("MY_FILE", "file-content-42")
            .script([
                "echo \"plain=$PLAIN id=$CI_JOB_ID builds=$CI_BUILDS_DIR\"",
                "cat \"$MY_FILE\"; echo",
                "test -d \"$CI_PROJECT_DIR\" && echo project-dir-ok",
                "export A=one",
                "echo \"A=$A\"",
            ])
            .after_script(["echo \"after status=$CI_JOB_STATUS\""]),
    );
    let trace = daemon.succeeded(id).await;
    let root_dir = root.path().display();
    for needle in [
        "Preparing the \"custom\" executor",
        "config_exec stderr reaches the job log\n",
        "Using Custom executor with driver test-host v1.2.3...\n",
        &format!("prepare job={id} tmpdir=cwd codes=1/2 job_env=job-env-value response=ok\n"),
        "via driver-host...",
        "WARNING: Starting with version 17.0 the 'build_script' stage will be replaced with 'step_script'",
        &format!("plain=plain-value id={id} builds={root_dir}/builds\n"),
        "file-content-42\n",
        "project-dir-ok\n",
        "A=one\n",
        "after status=success\n",
        "Job succeeded",
    ] {
        assert!(trace.contains(needle), "{needle:?} missing from:\n{trace}");
    }
    let log = logged(root.path(), &format!("cleanup {id}")).await;
    let steps: Vec<&str> = log
        .lines()
        .map(|line| {
            line.split(' ')
                .nth(2)
                .unwrap_or(line.split(' ').next().unwrap_or(""))
        })
        .collect();
    // Each stage went to run_exec once, by its official name, as a 0700 script file.
    assert_eq!(
        log.lines().next(),
        Some(format!("prepare {id}").as_str()),
        "{log}"
    );
    for stage in [
        "prepare_script",
        "get_sources",
        "build_script",
        "after_script",
    ] {
        assert!(
            log.contains(&format!("run {id} {stage} 700\n")),
            "{stage} not run: {log}"
        );
    }
    assert!(!log.contains("step_script"), "{log}");
    assert_eq!(steps.last(), Some(&"cleanup"), "cleanup comes last: {log}");
}

#[tokio::test]
async fn build_failures_keep_their_exit_code_and_run_after_script() {
    let root = tempfile::tempdir().unwrap();
    let daemon = host_daemon(root.path(), 1, "").await;
    let id = daemon.fake.enqueue(
        job("custom-fail")
            .script(["echo before", "exit 3", "echo after"])
            .after_script(["echo \"status=$CI_JOB_STATUS\""]),
    );
    let view = daemon.finished(id).await;
    let trace = view.trace_text();
    assert_eq!(view.status, RemoteStatus::Failed, "{trace}");
    let last = final_update(&view);
    assert_eq!(last.failure_reason.as_deref(), Some("script_failure"));
    assert_eq!(last.exit_code, Some(3), "BUILD_EXIT_CODE_FILE is honoured");
    assert!(trace.contains("before\n"), "{trace}");
    assert!(!trace.contains("\nafter\n"), "errexit: {trace}");
    assert!(trace.contains("status=failed\n"), "{trace}");
    assert!(
        trace.contains("ERROR: Job failed: exit status 3"),
        "{trace}"
    );
    logged(root.path(), &format!("cleanup {id}")).await;
}

#[tokio::test]
async fn masking_big_traces_and_artifacts_work_through_the_driver() {
    let root = tempfile::tempdir().unwrap();
    let daemon = host_daemon(root.path(), 1, "  output_limit = 20000").await;
    let secret = "s3cr3t-value-0123456789";
    let id = daemon.fake.enqueue(
        job("custom-data")
            .masked_variable("MY_SECRET", secret)
            .script([
                "echo \"plain: $MY_SECRET\"",
                "printf 's3cr3t-va'; sleep 0.3; printf 'lue-0123456789 done\\n'",
                "seq 1 300000",
                "mkdir -p out && echo hello > out/a.txt",
            ])
            .extra(
                "artifacts",
                json!([{ "paths": ["out/"], "when": "on_success",
                         "artifact_type": "archive", "artifact_format": "zip" }]),
            ),
    );
    let view = daemon.finished(id).await;
    let trace = view.trace_text();
    assert_eq!(view.status, RemoteStatus::Success, "{trace}");
    assert!(!trace.contains(secret), "secret leaked: {trace}");
    assert!(trace.contains("plain: [MASKED]\n"), "{trace}");
    assert!(trace.contains("[MASKED] done\n"), "{trace}");
    let expected: String = (1..=300_000).map(|n| format!("{n}\n")).collect();
    let echo = "\x1b[32;1m$ seq 1 300000\x1b[0;m\n";
    let start = trace.find(echo).expect("command echoed") + echo.len();
    assert!(
        trace[start..].starts_with(&expected),
        "the output arrived intact"
    );
    assert!(
        trace.contains("Uploading artifacts for successful job"),
        "{}",
        &trace[trace.len().saturating_sub(3000)..]
    );
    assert_eq!(view.artifacts.len(), 1, "one archive uploaded");
}

#[tokio::test]
async fn a_cancel_stops_run_exec_runs_after_script_and_cleanup() {
    let root = tempfile::tempdir().unwrap();
    let daemon = host_daemon(root.path(), 1, "").await;
    let id = daemon.fake.enqueue(
        job("custom-cancel")
            .script(["echo started", "sleep 60", "echo not-reached"])
            .after_script(["echo \"after-cancel status=$CI_JOB_STATUS\""]),
    );
    daemon.printed(id, "started\n").await;
    daemon.fake.cancel_job(id).unwrap();
    let view = daemon.finished(id).await;
    let trace = view.trace_text();
    assert_eq!(view.status, RemoteStatus::Canceled, "{trace}");
    assert!(trace.contains("after-cancel status=canceled"), "{trace}");
    assert!(!trace.contains("not-reached\n"), "{trace}");
    logged(root.path(), &format!("cleanup {id}")).await;
}

#[tokio::test]
async fn two_jobs_run_at_once_through_the_driver() {
    let root = tempfile::tempdir().unwrap();
    let daemon = host_daemon(root.path(), 2, "  limit = 2").await;
    let marks = root.path().display().to_string();
    let wait_for = |me: &str, other: &str| {
        [
            format!("touch {marks}/{me}"),
            format!("for i in $(seq 300); do [ -f {marks}/{other} ] && break; sleep 0.1; done"),
            format!("test -f {marks}/{other} && echo overlapped-{me}"),
        ]
    };
    let a = daemon
        .fake
        .enqueue(job("custom-a").script(wait_for("a", "b")));
    let b = daemon
        .fake
        .enqueue(job("custom-b").script(wait_for("b", "a")));
    for (id, me) in [(a, "a"), (b, "b")] {
        let trace = daemon.succeeded(id).await;
        assert!(trace.contains(&format!("overlapped-{me}\n")), "{trace}");
    }
}

#[tokio::test]
async fn driver_failures_end_with_the_documented_reasons() {
    let root = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(Setup {
        concurrent: 6,
        executor: Some("custom"),
        runner: "  limit = 6".to_owned(),
        tables: custom_section(
            &driver("failing.sh"),
            &root.path().display().to_string(),
            "    prepare_exec_timeout = 2\n    graceful_kill_timeout = 1\n    force_kill_timeout = 5\n",
        ),
        ..Setup::default()
    })
    .await;
    let enqueue = |mode: &str| {
        daemon.fake.enqueue(
            job(&format!("fail-{mode}"))
                .variable("FAIL", mode)
                // Only the hanging driver needs the job timeout; the others get room for a
                // loaded machine, so they end by their own failure, not by the timeout.
                .timeout(if mode == "hang" { 4 } else { 120 })
                .script(["echo script-ran"]),
        )
    };
    let cases = [
        (
            "system",
            "runner_system_failure",
            "run_exec failed: exit status 2",
        ),
        (
            "unknown",
            "runner_system_failure",
            "unknown Custom executor executable exit code 7",
        ),
        (
            "prepare-system",
            "runner_system_failure",
            "prepare_exec failed: exit status 2",
        ),
        (
            "prepare-timeout",
            "runner_system_failure",
            "prepare_exec did not finish within its timeout of 2s",
        ),
        (
            "bad-json",
            "runner_system_failure",
            "error while parsing JSON output of config_exec",
        ),
        (
            "hang",
            "job_execution_timeout",
            "execution took longer than",
        ),
    ];
    let ids: Vec<u64> = cases.iter().map(|(mode, ..)| enqueue(mode)).collect();
    for ((mode, reason, message), id) in cases.iter().zip(&ids) {
        let view = daemon.finished(*id).await;
        let trace = view.trace_text();
        assert_eq!(view.status, RemoteStatus::Failed, "{mode}: {trace}");
        assert_eq!(
            final_update(&view).failure_reason.as_deref(),
            Some(*reason),
            "{mode}: {trace}"
        );
        assert!(
            trace.contains(message),
            "{mode}: {message:?} missing:\n{trace}"
        );
        assert!(!trace.contains("script-ran\n"), "{mode}: {trace}");
        if *reason == "runner_system_failure" {
            assert!(
                trace.contains("ERROR: Job failed (system failure): "),
                "{mode}: {trace}"
            );
        }
    }
    let view = daemon.finished(ids[0]).await;
    assert!(
        view.trace_text().contains("the machine went away\n"),
        "driver stderr is logged"
    );
    let view = daemon.finished(ids[2]).await;
    assert!(view.trace_text().contains("no machine available\n"));
    // cleanup_exec ran for every job, also after the timeout and the failed preparations.
    for id in &ids {
        logged(root.path(), &format!("cleanup {id}\n")).await;
    }
    // The driver that ignored SIGTERM was killed.
    let pid: i32 = std::fs::read_to_string(root.path().join("hang.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s
                .rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))),
        "the hanging driver survived"
    );
}

/// A `FROM scratch` image with the host's static busybox (the tag is this file's own).
const IMAGE: &str = "runnel-custom-ssh-busybox:1";

fn ensure_image() {
    let exists = Command::new("docker")
        .args(["image", "inspect", IMAGE])
        .output()
        .expect("the docker CLI runs (this test needs Docker)")
        .status
        .success();
    if exists {
        return;
    }
    let context = tempfile::tempdir().unwrap();
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("this test needs a static busybox: apt-get install busybox-static");
    std::fs::copy(busybox, context.path().join("busybox")).unwrap();
    std::fs::write(
        context.path().join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox --install -s /bin && /bin/busybox mkdir -p /tmp && /bin/busybox chmod 1777 /tmp\"]\n",
    )
    .unwrap();
    let built = Command::new("docker")
        .args(["build", "-q", "-t", IMAGE])
        .arg(context.path())
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "building {IMAGE} failed: {}",
        String::from_utf8_lossy(&built.stderr)
    );
}

#[tokio::test]
async fn a_docker_driver_runs_the_stages_in_a_container_it_creates() {
    ensure_image();
    let daemon = Daemon::start(Setup {
        executor: Some("custom"),
        tables: custom_section(&driver("docker.sh"), IMAGE, ""),
        ..Setup::default()
    })
    .await;
    let id = daemon.fake.enqueue(
        job("in-container")
            .variable("PLAIN", "plain-value")
            .script([
                "echo \"sh=$(readlink /bin/sh) dir=$CI_PROJECT_DIR plain=$PLAIN\"",
                "echo \"host=$(hostname)\"",
            ]),
    );
    let failing = daemon
        .fake
        .enqueue(job("in-container-fail").script(["echo inside", "exit 5"]));
    let trace = daemon.succeeded(id).await;
    assert!(
        trace.contains("Using Custom executor with driver test-docker v1..."),
        "{trace}"
    );
    assert!(trace.contains("sh=/bin/busybox dir=/builds/"), "{trace}");
    assert!(trace.contains("plain=plain-value\n"), "{trace}");
    let view = daemon.finished(failing).await;
    let trace = view.trace_text();
    assert_eq!(
        final_update(&view).failure_reason.as_deref(),
        Some("script_failure"),
        "{trace}"
    );
    assert!(trace.contains("inside\n"), "{trace}");
    // cleanup_exec removed both containers.
    let token = runnel_types::short_token(&daemon.token);
    for job_id in [id, failing] {
        let name = format!("runnel-custom-ssh-test-{token}-{job_id}");
        let mut gone = false;
        for _ in 0..100 {
            let out = Command::new("docker")
                .args(["ps", "-aq", "--filter", &format!("name={name}")])
                .output()
                .unwrap();
            if out.stdout.is_empty() {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(gone, "container {name} was not removed");
    }
}

#[tokio::test]
async fn a_shell_runnel_cannot_generate_is_refused_and_never_polled() {
    let root = tempfile::tempdir().unwrap();
    let daemon = host_daemon(root.path(), 1, "  shell = \"pwsh\"").await;
    daemon
        .fake
        .enqueue(job("custom-pwsh").script(["echo must-not-run"]));
    let log = daemon.wait_log("is not supported by Runnel").await;
    assert!(log.contains("pwsh"), "{log}");
    // Several check intervals (1 s) pass: a polled runner would have asked by then.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        daemon
            .fake
            .requests()
            .iter()
            .all(|r| r.endpoint != Some(runnel_fake_gitlab::Endpoint::RequestJob)),
        "a pwsh runner must not ask for jobs; log:\n{}",
        daemon.log()
    );
    assert_eq!(driver_log(root.path()), "", "no driver step ran");
}
