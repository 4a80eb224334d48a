//! Drop-in fidelity: what Runnel does not implement fails loudly instead of doing something
//! else, and what it tells GitLab (`info.features`, `debug_trace`, the job credential) is true.

use std::time::Duration;

use runnel_fake_gitlab::{Endpoint, PayloadVariable, RemoteStatus};
use serde_json::{Value, json};

use crate::run::{Daemon, Setup, final_update, job};

/// The request bodies the fake received on `endpoint`, as JSON.
fn bodies(daemon: &Daemon, endpoint: Endpoint) -> Vec<Value> {
    daemon
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.endpoint == Some(endpoint))
        .filter_map(|r| serde_json::from_slice(&r.body).ok())
        .collect()
}

#[tokio::test]
async fn a_job_with_run_steps_is_refused_by_name_and_runs_nothing() {
    let daemon = Daemon::start(Setup::default()).await;
    let marker = daemon.dir.path().join("steps-ran");
    let id = daemon.fake.enqueue(job("steps").extra(
        "run",
        json!([{ "name": "touch", "script": format!("touch {}", marker.display()) }]),
    ));
    let view = daemon.finished(id).await;
    let trace = view.trace_text();
    assert_eq!(view.status, RemoteStatus::Failed, "{trace}");
    assert!(
        trace.contains(
            "this job uses the `run` keyword (CI steps), which Runnel does not support yet"
        ),
        "{trace}"
    );
    let last = final_update(&view);
    assert_eq!(
        last.failure_reason.as_deref(),
        Some("runner_system_failure")
    );
    assert_eq!(last.exit_code, Some(3));
    assert!(
        view.updates.iter().all(|u| u.state != "running"),
        "refused before it is acknowledged"
    );
    assert!(!marker.exists(), "no step may run");
}

#[tokio::test]
async fn jobs_with_secrets_or_inputs_are_refused_by_name() {
    let daemon = Daemon::start(Setup::default()).await;
    let secrets = daemon.fake.enqueue(job("secrets").script(["echo ran"]).extra(
        "secrets",
        json!({ "DATABASE_PASSWORD": { "vault": { "engine": { "name": "kv-v2", "path": "kv" }, "path": "db", "field": "pw" } } }),
    ));
    let inputs = daemon
        .fake
        .enqueue(job("inputs").script(["echo ran"]).extra(
            "inputs",
            json!([{ "key": "environment", "value": { "type": "string", "content": "prod" } }]),
        ));
    let view = daemon.finished(secrets).await;
    let trace = view.trace_text();
    assert_eq!(view.status, RemoteStatus::Failed, "{trace}");
    assert!(
        trace.contains("external secrets (`secrets:DATABASE_PASSWORD` from vault)"),
        "{trace}"
    );
    assert!(!trace.contains("\nran\n"), "{trace}");
    let view = daemon.finished(inputs).await;
    let trace = view.trace_text();
    assert_eq!(view.status, RemoteStatus::Failed, "{trace}");
    assert!(trace.contains("job inputs (environment)"), "{trace}");
    assert!(!trace.contains("\nran\n"), "{trace}");
}

#[tokio::test]
async fn info_advertises_only_what_runnel_honours() {
    let daemon = Daemon::start(Setup::default()).await;
    let id = daemon.fake.enqueue(job("plain").script(["true"]));
    daemon.finished(id).await;
    let requests = bodies(&daemon, Endpoint::RequestJob);
    let features = &requests.first().expect("a job request")["info"]["features"];
    for unsupported in [
        "native_steps_integration",
        "job_inputs",
        "vault_secrets",
        "session",
        "terminal",
    ] {
        assert_eq!(
            features[unsupported],
            json!(false),
            "{unsupported}: {features}"
        );
    }
    for supported in [
        "artifacts",
        "cache",
        "masking",
        "cancel_gracefully",
        "trace_checksum",
    ] {
        assert_eq!(features[supported], json!(true), "{supported}: {features}");
    }
}

/// Starts a runner with `shell` set (and the executor's section) and checks that it is refused
/// by name at start for the shell alone, and never asks for a job.
async fn assert_shell_refused(shell: &str, executor: &'static str, tables: &str) {
    let daemon = Daemon::start(Setup {
        runner: format!("  shell = \"{shell}\"\n"),
        executor: Some(executor),
        tables: tables.to_owned(),
        ..Setup::default()
    })
    .await;
    let plain = format!("shell \"{shell}\" is not supported by Runnel");
    let escaped = format!("shell \\\"{shell}\\\" is not supported by Runnel");
    let mut waited = Duration::ZERO;
    loop {
        let log = daemon.log();
        if log.contains(&plain) || log.contains(&escaped) {
            break;
        }
        assert!(
            waited < Duration::from_secs(60),
            "{executor}: no warning; log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += Duration::from_millis(100);
    }
    // Several check intervals (1 s) pass: a polled runner would have asked by then.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = daemon.log();
    assert!(
        log.lines()
            .filter(|l| l.contains("will not request jobs"))
            .all(|l| l.contains("is not supported by Runnel (only bash and sh)")),
        "{executor}: the shell must be the only reason; log:\n{log}"
    );
    assert!(
        bodies(&daemon, Endpoint::RequestJob).is_empty(),
        "{executor}: a {shell} runner must not ask for jobs; log:\n{log}"
    );
}

#[tokio::test]
async fn a_pwsh_runner_is_refused_at_start_and_never_asks_for_jobs() {
    assert_shell_refused("pwsh", "shell", "").await;
}

#[tokio::test]
async fn pwsh_and_powershell_are_refused_for_every_executor() {
    let docker = "  [runners.docker]\n    image = \"alpine\"\n";
    let ssh = "  [runners.ssh]\n    host = \"127.0.0.1\"\n    port = \"9\"\n    user = \"root\"\n";
    let kubernetes = "  [runners.kubernetes]\n    host = \"http://127.0.0.1:9\"\n    bearer_token = \"unused\"\n    namespace = \"default\"\n    image = \"alpine\"\n";
    let custom = "  [runners.custom]\n    run_exec = \"/bin/true\"\n";
    for (executor, tables) in [
        ("docker", docker),
        ("ssh", ssh),
        ("kubernetes", kubernetes),
        ("custom", custom),
    ] {
        assert_shell_refused("pwsh", executor, tables).await;
    }
    assert_shell_refused("powershell", "docker", docker).await;
}

#[test]
fn run_single_refuses_a_shell_it_cannot_run() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_runnel"))
        .args(["run-single", "-c"])
        .arg(dir.path().join("config.toml"))
        .args([
            "--url",
            "http://127.0.0.1:9",
            "--token",
            "glrt-x",
            "--executor",
            "shell",
            "--shell",
            "powershell",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("shell \"powershell\" is not supported by Runnel"),
        "{stderr}"
    );
}

#[tokio::test]
async fn debug_trace_on_patches_follows_ci_debug_trace() {
    let daemon = Daemon::start(Setup::default()).await;
    let debug = daemon.fake.enqueue(
        job("debug")
            .script(["echo traced"])
            .variable("CI_DEBUG_TRACE", "true"),
    );
    daemon.finished(debug).await;
    let plain = daemon.fake.enqueue(job("plain").script(["echo plain"]));
    daemon.finished(plain).await;
    let queries = |id: u64| -> Vec<String> {
        daemon
            .fake
            .requests()
            .into_iter()
            .filter(|r| r.endpoint == Some(Endpoint::PatchTrace))
            .filter(|r| r.path.contains(&format!("/jobs/{id}/")))
            .map(|r| r.query.unwrap_or_default())
            .collect()
    };
    let debug = queries(debug);
    assert!(!debug.is_empty());
    assert!(
        debug.iter().all(|q| q.contains("debug_trace=true")),
        "{debug:?}"
    );
    let plain = queries(plain);
    assert!(!plain.is_empty());
    assert!(
        plain.iter().all(|q| q.contains("debug_trace=false")),
        "{plain:?}"
    );
}

#[tokio::test]
async fn helpers_authenticate_with_the_payload_job_credential() {
    let daemon = Daemon::start(Setup::default()).await;
    // A coordinator may send a CI_JOB_TOKEN variable that is not the job credential; the
    // upload must still use the payload's `token`.
    let id = daemon.fake.enqueue(
        job("upload")
            .script(["echo data > out.txt", "echo \"seen=$CI_JOB_TOKEN\""])
            .raw_variable(PayloadVariable::new("CI_JOB_TOKEN", "not-the-job-credential"))
            .extra("artifacts", json!([{ "paths": ["out.txt"], "artifact_type": "archive", "artifact_format": "zip" }])),
    );
    let view = daemon.finished(id).await;
    let trace = view.trace_text();
    assert_eq!(view.status, RemoteStatus::Success, "{trace}");
    assert!(trace.contains("seen=not-the-job-credential"), "{trace}");
    assert_eq!(view.artifacts.len(), 1, "{trace}");
}

#[tokio::test]
async fn keys_parsed_but_not_acted_upon_are_named_at_start() {
    let daemon = Daemon::start(Setup {
        runner: "  prepare_timeout = \"1m\"\n  clean_git_config = true\n  get_sources_timeout = \"1m\"\n  safe_directory_checkout = true\n  step_runner_image = \"registry.example.com/step-runner:1\"\n  [runners.monitoring]\n"
            .to_owned(),
        ..Setup::default()
    })
    .await;
    let mut waited = Duration::ZERO;
    loop {
        let log = daemon.log();
        if let Some(line) = log
            .lines()
            .find(|l| l.contains("config.toml keys parsed but not acted upon by Runnel"))
        {
            assert!(
                line.contains("step_runner_image, [runners.monitoring]"),
                "{log}"
            );
            // Acted upon: not in the warning.
            for key in [
                "clean_git_config",
                "prepare_timeout",
                "get_sources_timeout",
                "safe_directory_checkout",
            ] {
                assert!(!line.contains(key), "{key}: {log}");
            }
            break;
        }
        assert!(waited < Duration::from_secs(60), "no warning; log:\n{log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += Duration::from_millis(100);
    }
    // Harmless to ignore: the runner still asks for jobs.
    let id = daemon.fake.enqueue(job("runs").script(["echo ran"]));
    let view = daemon.finished(id).await;
    assert_eq!(view.status, RemoteStatus::Success, "{}", view.trace_text());
}

/// A key that would change what jobs do, set to something Runnel cannot honour, stops the
/// runner at start with the key named; it never asks for a job.
async fn assert_key_refused(runner: &str, message: &str) {
    let daemon = Daemon::start(Setup {
        runner: runner.to_owned(),
        ..Setup::default()
    })
    .await;
    let expected = format!("{message}; the runner will not request jobs");
    let escaped = expected.replace('"', "\\\"");
    let mut waited = Duration::ZERO;
    loop {
        let log = daemon.log();
        if log.contains(&expected) || log.contains(&escaped) {
            break;
        }
        assert!(
            waited < Duration::from_secs(60),
            "{runner}: no error; log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += Duration::from_millis(100);
    }
    // Several check intervals (1 s) pass: a polled runner would have asked by then.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = daemon.log();
    assert!(
        bodies(&daemon, Endpoint::RequestJob).is_empty(),
        "{runner}: the runner must not ask for jobs; log:\n{log}"
    );
}

#[tokio::test]
async fn keys_that_would_change_jobs_refuse_the_runner_at_start_by_name() {
    assert_key_refused(
        "  proxy_exec = true\n",
        "proxy_exec = true (running job commands through the helper binary) is not supported by Runnel",
    )
    .await;
    assert_key_refused(
        "  use_slot_cgroups = true\n",
        "use_slot_cgroups = true (a cgroup per job slot) is not supported by Runnel",
    )
    .await;
    assert_key_refused(
        "  [runners.referees]\n    [runners.referees.metrics]\n      prometheus_address = \"http://127.0.0.1:9\"\n",
        "[runners.referees] (metrics referee artifacts) is not supported by Runnel",
    )
    .await;
    assert_key_refused(
        "  [runners.artifact]\n    response_header_timeout = \"1m\"\n",
        "[runners.artifact] response_header_timeout = \"1m0s\" is not supported by Runnel (artifact uploads use the default 10m0s)",
    )
    .await;
    assert_key_refused(
        "  [runners.cache]\n    Type = \"gcs\"\n    [runners.cache.gcs]\n      BucketName = \"runner-cache\"\n",
        "[runners.cache] Type = \"gcs\" (a distributed cache on Google Cloud Storage) is not supported by Runnel yet (only \"s3\")",
    )
    .await;
    assert_key_refused(
        "  [runners.cache]\n    Type = \"s3\"\n    [runners.cache.s3]\n      BucketName = \"runner-cache\"\n      AccessKey = \"a\"\n      SecretKey = \"s\"\n      ServerSideEncryption = \"S3\"\n",
        "[runners.cache.s3] ServerSideEncryption (server-side encryption of cache objects) is not supported by Runnel yet",
    )
    .await;
}

/// `prepare_timeout`: an executor preparation that takes longer (a custom driver's
/// `prepare_exec` that sleeps) fails the job as the official runner words it, with
/// `job_execution_timeout`, and no script runs.
#[tokio::test]
async fn prepare_timeout_fails_a_preparation_that_takes_longer() {
    let root = tempfile::tempdir().unwrap();
    let driver =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/custom/failing.sh");
    let (d, arg) = (driver.display(), root.path().display());
    let tables = format!(
        "  [runners.custom]\n    config_exec = \"{d}\"\n    config_args = [\"config\", \"{arg}\"]\n    prepare_exec = \"{d}\"\n    prepare_args = [\"prepare\", \"{arg}\"]\n    run_exec = \"{d}\"\n    run_args = [\"run\", \"{arg}\"]\n    cleanup_exec = \"{d}\"\n    cleanup_args = [\"cleanup\", \"{arg}\"]\n"
    );
    let daemon = Daemon::start(Setup {
        executor: Some("custom"),
        runner: "  prepare_timeout = \"2s\"\n".to_owned(),
        tables,
        ..Setup::default()
    })
    .await;
    let id = daemon.fake.enqueue(
        job("slow-prepare")
            .variable("FAIL", "prepare-timeout")
            .script(["echo script-ran"]),
    );
    let view = daemon.finished(id).await;
    let trace = view.trace_text();
    assert_eq!(view.status, RemoteStatus::Failed, "{trace}");
    assert!(trace.contains("preparing slowly"), "{trace}");
    assert!(
        trace.contains("ERROR: Job failed: prepare timeout: exceeded timeout of 2s"),
        "{trace}"
    );
    assert!(!trace.contains("script-ran\n"), "{trace}");
    assert_eq!(
        final_update(&view).failure_reason.as_deref(),
        Some("job_execution_timeout")
    );
}

/// The official series list (`tests/data/official-metrics.txt`): exported series as
/// `name -> (type, sorted label names)`, and the names Runnel leaves out.
struct OfficialMetrics {
    exported: std::collections::BTreeMap<String, (String, String)>,
    omitted: Vec<String>,
}

impl OfficialMetrics {
    fn load() -> Self {
        let text =
            std::fs::read_to_string(crate::support::fixture("official-metrics.txt")).unwrap();
        let mut exported = std::collections::BTreeMap::new();
        let mut omitted = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields[0] == "omit" {
                omitted.push(fields[1].to_owned());
            } else {
                let labels = if fields[2] == "-" { "" } else { fields[2] };
                exported.insert(
                    fields[0].to_owned(),
                    (fields[1].to_owned(), labels.to_owned()),
                );
            }
        }
        Self { exported, omitted }
    }

    /// Every `gitlab_runner_*` family in `exposition` is exported by the list, with the listed
    /// type and label names; none is an omitted one. Returns the families seen.
    fn check(&self, exposition: &str) -> std::collections::BTreeMap<String, (String, String)> {
        let seen = families(exposition);
        for (name, (kind, labels)) in &seen {
            assert!(!self.omitted.contains(name), "{name} is listed as left out");
            let (official_kind, official_labels) = self
                .exported
                .get(name)
                .unwrap_or_else(|| panic!("{name} is not an official series"));
            assert_eq!(kind, official_kind, "type of {name}");
            assert_eq!(labels, official_labels, "label names of {name}");
        }
        seen
    }
}

/// `name -> (type, sorted label names)` of every `gitlab_runner_*` family in an exposition
/// (histogram `_bucket`/`_sum`/`_count` folded into their family, `le` left out). Every sample
/// of a family must have the same label names.
fn families(exposition: &str) -> std::collections::BTreeMap<String, (String, String)> {
    let mut types = std::collections::BTreeMap::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                types.insert(name.to_owned(), kind.to_owned());
            }
        }
    }
    let mut found: std::collections::BTreeMap<String, (String, String)> =
        std::collections::BTreeMap::new();
    for line in exposition
        .lines()
        .filter(|l| l.starts_with("gitlab_runner_"))
    {
        let (name, labels) = match line.split_once('{') {
            Some((name, rest)) => (name, rest.rsplit_once('}').map_or("", |(l, _)| l)),
            None => (line.split_whitespace().next().unwrap_or_default(), ""),
        };
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .filter(|base| types.get(*base).is_some_and(|k| k == "histogram"))
            .unwrap_or(name);
        let mut names: Vec<&str> = labels
            .split("\",")
            .filter_map(|pair| pair.split_once('=').map(|(k, _)| k.trim()))
            .filter(|k| !k.is_empty() && *k != "le")
            .collect();
        names.sort_unstable();
        let entry = (
            types.get(family).cloned().unwrap_or_default(),
            names.join(","),
        );
        if let Some(before) = found.get(family) {
            assert_eq!(
                before, &entry,
                "{family}: samples with different label names"
            );
        }
        found.insert(family.to_owned(), entry);
    }
    found
}

#[tokio::test]
async fn metric_names_types_and_label_sets_are_the_official_ones_idle_and_busy() {
    let official = OfficialMetrics::load();
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let global: &'static str =
        Box::leak(format!("listen_address = \"127.0.0.1:{port}\"").into_boxed_str());
    let daemon = Daemon::start(Setup {
        global,
        ..Setup::default()
    })
    .await;
    let scrape = || async {
        for _ in 0..100 {
            if let Ok(response) = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await {
                return response.text().await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no /metrics; log:\n{}", daemon.log());
    };
    let require = |seen: &std::collections::BTreeMap<String, (String, String)>,
                   names: &[&str],
                   exposition: &str| {
        for name in names {
            assert!(
                seen.contains_key(*name),
                "{name} missing from:\n{exposition}"
            );
        }
    };
    // Idle, once the first job request has been answered.
    let mut idle = scrape().await;
    for _ in 0..100 {
        if idle.contains("endpoint=\"request_job\"")
            && idle.contains("path=\"/api/v4/jobs/request\"")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        idle = scrape().await;
    }
    let always = [
        "gitlab_runner_version_info",
        "gitlab_runner_concurrent",
        "gitlab_runner_limit",
        "gitlab_runner_jobs",
        "gitlab_runner_jobs_total",
        "gitlab_runner_request_concurrency",
        "gitlab_runner_request_concurrency_exceeded_total",
        "gitlab_runner_request_concurrency_hard_limit",
        "gitlab_runner_request_concurrency_used_limit",
        "gitlab_runner_api_request_statuses_total",
        "gitlab_runner_api_request_duration_seconds",
        "gitlab_runner_api_request_retries_total",
        "gitlab_runner_worker_feeds_total",
        "gitlab_runner_worker_feed_failures_total",
        "gitlab_runner_worker_slots_number",
        "gitlab_runner_worker_slot_operations_total",
        "gitlab_runner_worker_processing_failures_total",
        "gitlab_runner_worker_health_check_failures_total",
        "gitlab_runner_configuration_loaded_total",
        "gitlab_runner_configuration_loading_error_total",
        "gitlab_runner_configuration_saved_total",
        "gitlab_runner_configuration_saving_error_total",
        "gitlab_runner_process_state_info",
        "gitlab_runner_errors_total",
    ];
    let seen = official.check(&idle);
    require(&seen, &always, &idle);
    assert!(
        idle.lines().any(|l| l.starts_with("gitlab_runner_jobs{")
            && l.contains("state=\"idle\"")
            && l.ends_with(" 0")),
        "{idle}"
    );
    assert!(
        idle.contains("gitlab_runner_process_state_info{state=\"running\"} 1"),
        "{idle}"
    );
    assert!(
        idle.contains("gitlab_runner_worker_slots_number 1"),
        "{idle}"
    );
    assert!(
        idle.contains("gitlab_runner_configuration_loaded_total 1"),
        "{idle}"
    );
    assert!(
        idle.contains("method=\"post\""),
        "methods are lower case: {idle}"
    );

    // Busy: a job is running (with the per-stage series asked for).
    let running = daemon.fake.enqueue(
        job("busy")
            .script(["echo started", "sleep 4"])
            .raw_variable(PayloadVariable::new(
                "FF_EXPORT_HIGH_CARDINALITY_METRICS",
                "true",
            )),
    );
    daemon.printed(running, "started\n").await;
    let busy = scrape().await;
    let seen = official.check(&busy);
    require(&seen, &always, &busy);
    require(
        &seen,
        &[
            "gitlab_runner_job_execution_mode_total",
            "gitlab_runner_job_queue_duration_seconds",
            "gitlab_runner_job_queue_size",
            "gitlab_runner_job_queue_depth",
            "gitlab_runner_acceptable_job_queuing_duration_exceeded_total",
            // Stages before the script have ended.
            "gitlab_runner_job_stage_duration_seconds",
        ],
        &busy,
    );
    assert!(
        busy.lines().any(|l| l.starts_with("gitlab_runner_jobs{")
            && l.contains("state=\"running\"")
            && l.contains("stage=\"step_script\"")
            && l.ends_with(" 1")),
        "{busy}"
    );
    assert!(
        busy.contains(
            "gitlab_runner_job_execution_mode_total{executor=\"shell\",mode=\"traditional\"} 1"
        ),
        "{busy}"
    );
    daemon.finished(running).await;

    // After a success and a failure: durations and failures.
    let failed = daemon.fake.enqueue(job("failed").script(["exit 3"]));
    daemon.finished(failed).await;
    let after = scrape().await;
    let seen = official.check(&after);
    require(
        &seen,
        &[
            "gitlab_runner_job_duration_seconds",
            "gitlab_runner_failed_jobs_total",
        ],
        &after,
    );
    assert!(
        after.lines().any(|l| l.starts_with(
            "gitlab_runner_worker_processing_failures_total{failure_type=\"job_failure\""
        ) && l.ends_with(" 1")),
        "{after}"
    );
    assert!(
        !after
            .lines()
            .any(|l| l.starts_with("gitlab_runner_jobs{") && l.contains("state=\"running\"")),
        "no running series once the jobs ended: {after}"
    );
}

/// A feature flag that would change what a docker job sees, which Runnel does not act upon,
/// fails that job at its start with the flag named; no container is made and no script runs.
#[tokio::test]
async fn a_docker_job_with_a_flag_runnel_does_not_act_upon_is_refused_by_name() {
    let daemon = Daemon::start(Setup {
        executor: Some("docker"),
        tables: "  [runners.docker]\n    image = \"runnel-e2e-never-created:1\"\n    pull_policy = [\"never\"]\n".to_owned(),
        ..Setup::default()
    })
    .await;
    let id = daemon.fake.enqueue(
        job("init")
            .variable("FF_USE_INIT_WITH_DOCKER_EXECUTOR", "true")
            .script(["echo not-reached"]),
    );
    let trace = daemon.failed_with(id, "runner_system_failure").await;
    assert!(
        trace.contains(
            "feature flag FF_USE_INIT_WITH_DOCKER_EXECUTOR=true (an init process as PID 1 of the job's containers) is not supported by Runnel's docker executor yet"
        ),
        "{trace}"
    );
    assert!(!trace.contains("not-reached"), "{trace}");
}
