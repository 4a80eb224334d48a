//! Integration tests: `runnel-bench --quick` end to end against the real `runnel` binary.
//!
//! They check that every declared metric is produced and that no scenario failed; they never
//! look at the measured values, which depend on the machine.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use runnel_bench::METRICS;
use runnel_bench::report::is_python_peer_metric;
use serde_json::Value;

/// Fails a hung run; a quick run takes about a minute (the docker scenario may first build its
/// images).
const RUN_TIMEOUT: Duration = Duration::from_secs(600);

/// Builds `runnel` and the Rust peer (`runnel-bench-peer`, found by `runnel-bench` next to
/// itself) into the target dir this test binary came from (a no-op when they are fresh) and
/// returns runnel's path: cargo gives a test only its own package's binaries.
fn runnel_binary() -> PathBuf {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_runnel-bench"));
    let profile_dir = bench.parent().expect("bench binary has a directory");
    let target_dir = profile_dir.parent().expect("profile dir has a parent");
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev",
        Some(other) => other,
    };
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--quiet",
            "-p",
            "runnel",
            "--bin",
            "runnel",
            "-p",
            "runnel-bench-peer",
            "--bin",
            "runnel-bench-peer",
            "--profile",
            profile,
        ])
        .env("CARGO_TARGET_DIR", target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building runnel failed: {status}");
    profile_dir.join("runnel")
}

fn run_quick(runnel: &Path, json: &Path, plots: &Path) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_runnel-bench"))
        .arg("--quick")
        .arg("--peers")
        .arg("--runnel")
        .arg(runnel)
        .arg("--json")
        .arg(json)
        .arg("--plots")
        .arg(plots)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("runnel-bench starts");
    let deadline = std::time::Instant::now() + RUN_TIMEOUT;
    loop {
        if child.try_wait().expect("wait works").is_some() {
            break;
        }
        if std::time::Instant::now() > deadline {
            child.kill().expect("kill hung bench");
            panic!("runnel-bench --quick did not finish within {RUN_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    child.wait_with_output().expect("output collected")
}

#[test]
fn quick_run_reports_every_metric() {
    let runnel = runnel_binary();
    let dir = tempfile::tempdir().expect("temp dir");
    let json_path = dir.path().join("perf.json");
    let plots = dir.path().join("img");
    let output = run_quick(&runnel, &json_path, &plots);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "runnel-bench --quick failed ({})\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );

    let text = std::fs::read_to_string(&json_path).expect("JSON report written");
    let report: Value = serde_json::from_str(&text).expect("report is JSON");
    assert_eq!(report["errors"], Value::Array(Vec::new()), "{text}");
    assert_eq!(report["meta"]["quick"], true);
    let metrics = report["metrics"].as_object().expect("metrics object");
    // The Python peer is measured only where gitlab-python-runner is installed.
    let required = || {
        METRICS
            .iter()
            .filter(|def| !is_python_peer_metric(def.name) || metrics.contains_key(def.name))
    };
    let missing: Vec<&str> = required()
        .map(|def| def.name)
        .filter(|name| !metrics.contains_key(*name))
        .collect();
    assert!(missing.is_empty(), "metrics missing: {missing:?}\n{text}");
    assert!(
        report["meta"]["peers"]["rust_peer"]
            .as_str()
            .is_some_and(|p| p.ends_with("runnel-bench-peer")),
        "{text}"
    );
    // Ratios are peer / runnel of positive numbers.
    for def in required().filter(|def| def.unit == "ratio") {
        let samples = metrics[def.name]["samples"].as_array().expect("samples");
        assert!(
            samples
                .iter()
                .all(|v| v.as_f64().is_some_and(|r| r > 0.0 && r.is_finite())),
            "{}: {samples:?}",
            def.name
        );
    }
    // The quick run draws every plot as a real PNG.
    for name in [
        "pickup_latency.png",
        "throughput_concurrency.png",
        "rss_running_jobs.png",
    ] {
        let png = std::fs::read(plots.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{name} is not a PNG");
        assert!(png.len() > 10_000, "{name} is suspiciously small");
    }
    assert!(
        !report["series"]["scale_runner_rss_kib"]
            .as_array()
            .expect("RSS curve")
            .is_empty()
    );
    for def in required() {
        let metric = &metrics[def.name];
        for key in ["min", "median", "max"] {
            assert!(
                metric[key].is_f64(),
                "{}.{key} is not a number: {metric}",
                def.name
            );
        }
        assert!(
            metric["samples"].as_array().is_some_and(|s| !s.is_empty()),
            "{} has no samples",
            def.name
        );
        assert_eq!(metric["unit"], def.unit);
        // The table shows the same metric.
        assert!(
            stdout.contains(def.name),
            "table lacks {}:\n{stdout}",
            def.name
        );
    }
}

#[test]
fn performance_doc_explains_every_metric() {
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/performance.md");
    let text = std::fs::read_to_string(&doc).expect("docs/performance.md exists");
    let undocumented: Vec<&str> = METRICS
        .iter()
        .map(|def| def.name)
        .filter(|name| !text.contains(&format!("`{name}`")))
        .collect();
    assert!(
        undocumented.is_empty(),
        "docs/performance.md does not explain: {undocumented:?}"
    );
}
