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

#[tokio::test]
async fn a_pwsh_runner_is_refused_at_start_and_never_asks_for_jobs() {
    let daemon = Daemon::start(Setup {
        runner: "  shell = \"pwsh\"\n".to_owned(),
        ..Setup::default()
    })
    .await;
    let mut waited = Duration::ZERO;
    while !daemon
        .log()
        .contains("shell \\\"pwsh\\\" is not supported by Runnel")
        && !daemon
            .log()
            .contains("shell \"pwsh\" is not supported by Runnel")
    {
        assert!(
            waited < Duration::from_secs(60),
            "no warning; log:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += Duration::from_millis(100);
    }
    // Several check intervals (1 s) pass: a polled runner would have asked by then.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        bodies(&daemon, Endpoint::RequestJob).is_empty(),
        "a pwsh runner must not ask for jobs; log:\n{}",
        daemon.log()
    );
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
        runner: "  prepare_timeout = \"1m\"\n  clean_git_config = true\n  get_sources_timeout = \"1m\"\n"
            .to_owned(),
        ..Setup::default()
    })
    .await;
    let mut waited = Duration::ZERO;
    loop {
        let log = daemon.log();
        if let Some(line) = log
            .lines()
            .find(|l| l.contains("config.toml keys parsed but not acted upon by Runnel yet"))
        {
            assert!(
                line.contains("prepare_timeout, get_sources_timeout"),
                "{log}"
            );
            // Acted upon (#13): not in the warning.
            assert!(!line.contains("clean_git_config"), "{log}");
            break;
        }
        assert!(waited < Duration::from_secs(60), "no warning; log:\n{log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += Duration::from_millis(100);
    }
}

/// `name -> sorted label names` of every `gitlab_runner_*` series in an exposition
/// (histogram `_bucket`/`_sum`/`_count` folded into their family, `le` left out).
fn series(exposition: &str) -> std::collections::BTreeMap<String, String> {
    let mut found = std::collections::BTreeMap::new();
    for line in exposition
        .lines()
        .filter(|l| l.starts_with("gitlab_runner_"))
    {
        let (name, labels) = match line.split_once('{') {
            Some((name, rest)) => (name, rest.split_once('}').map_or("", |(l, _)| l)),
            None => (line.split_whitespace().next().unwrap_or_default(), ""),
        };
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .filter(|base| base.ends_with("_seconds"))
            .unwrap_or(name);
        let mut names: Vec<&str> = labels
            .split("\",")
            .filter_map(|pair| pair.split_once('=').map(|(k, _)| k.trim()))
            .filter(|k| !k.is_empty() && *k != "le")
            .collect();
        names.sort_unstable();
        found.insert(family.to_owned(), names.join(","));
    }
    found
}

#[tokio::test]
async fn metric_names_and_label_sets_are_the_official_ones_idle_and_busy() {
    let official: std::collections::BTreeMap<String, String> =
        std::fs::read_to_string(crate::support::fixture("official-metrics.txt"))
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| match l.split_once(' ') {
                Some((name, labels)) => (name.to_owned(), labels.to_owned()),
                None => (l.to_owned(), String::new()),
            })
            .collect();
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
    let check = |exposition: &str| {
        for (name, labels) in series(exposition) {
            let expected = official
                .get(&name)
                .unwrap_or_else(|| panic!("{name} is not an official series"));
            assert_eq!(&labels, expected, "label set of {name}");
        }
    };
    check(&scrape().await);
    let ok = daemon.fake.enqueue(job("ok").script(["true"]));
    let failed = daemon.fake.enqueue(job("failed").script(["exit 3"]));
    daemon.finished(ok).await;
    daemon.finished(failed).await;
    let busy = scrape().await;
    check(&busy);
    let seen = series(&busy);
    // Errors and retries only appear once one happened.
    let conditional = [
        "gitlab_runner_errors_total",
        "gitlab_runner_api_request_retries_total",
    ];
    for name in official
        .keys()
        .filter(|n| !conditional.contains(&n.as_str()))
    {
        assert!(
            seen.contains_key(name),
            "{name} missing from a busy runner:\n{busy}"
        );
    }
}
