//! Provisioning from the command line: every official runner-config flag (and its env var)
//! is written into config.toml by `register`, `--template-config` fills the rest, and
//! `run-single` builds a working runner of any supported executor from flags alone.

use std::time::Duration;

use runnel_fake_gitlab::{Endpoint, FakeConfig, FakeGitlab};
use serde_json::Value;

use crate::support::{TestEnv, run_runnel};

#[tokio::test]
async fn register_writes_helm_style_flags_env_vars_and_the_template() {
    let env = TestEnv::new().await;
    let token = env.fake.create_runner_token();
    let template = env.dir.path().join("config.template.toml");
    std::fs::write(
        &template,
        "[[runners]]\n  name = \"from-template\"\n  output_limit = 8192\n  [runners.docker]\n    memory = \"512m\"\n    tmpfs = { \"/tmp\" = \"rw\" }\n  [runners.cache]\n    Type = \"gcs\"\n    Shared = true\n  [runners.feature_flags]\n    FF_USE_FASTZIP = true\n",
    )
    .unwrap();
    let args = [
        "register",
        "--non-interactive",
        "--url",
        env.url(),
        "--token",
        &token,
        "--executor",
        "docker",
        "--docker-image",
        "alpine:3.20",
        "--docker-memory",
        "1g",
        "--docker-cpus",
        "2",
        "--docker-tlsverify",
        "--docker-cap-add",
        "NET_ADMIN",
        "--docker-cap-add",
        "SYS_TIME",
        "--cache-type",
        "s3",
        "--cache-s3-server-address",
        "s3.example.com",
        "--cache-s3-bucket-name",
        "runners",
        "--feature-flags",
        "FF_TIMESTAMPS:false",
        "--debug-trace-disabled",
        "--template-config",
        template.to_str().unwrap(),
    ];
    // Env vars as provisioning tools set them.
    let mut full: Vec<&str> = args.to_vec();
    let config = env.config_path();
    full.extend(["-c", config.to_str().unwrap()]);
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_runnel"))
        .args(&full)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", env.dir.path())
        .env("CACHE_S3_ACCESS_KEY", "AKIAEXAMPLE")
        .env("RUNNER_PREPARE_TIMEOUT", "10m")
        .env("DOCKER_SHM_SIZE", "300000")
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let text = env.config_text();
    let parsed: toml::Table = toml::from_str(&text).unwrap();
    let runner = &parsed["runners"][0];
    // The name comes from the flags/defaults, never the template.
    assert_ne!(runner["name"].as_str(), Some("from-template"), "{text}");
    assert_eq!(runner["output_limit"].as_integer(), Some(8192), "{text}");
    assert_eq!(
        runner["debug_trace_disabled"].as_bool(),
        Some(true),
        "{text}"
    );
    assert_eq!(runner["prepare_timeout"].as_str(), Some("10m"), "{text}");
    let docker = &runner["docker"];
    assert_eq!(docker["image"].as_str(), Some("alpine:3.20"), "{text}");
    assert_eq!(
        docker["memory"].as_str(),
        Some("1g"),
        "flag wins over template: {text}"
    );
    assert_eq!(docker["cpus"].as_str(), Some("2"), "{text}");
    assert_eq!(docker["tls_verify"].as_bool(), Some(true), "{text}");
    assert_eq!(docker["shm_size"].as_integer(), Some(300_000), "{text}");
    assert_eq!(docker["tmpfs"]["/tmp"].as_str(), Some("rw"), "{text}");
    let caps: Vec<&str> = docker["cap_add"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(toml::Value::as_str)
        .collect();
    assert_eq!(caps, ["NET_ADMIN", "SYS_TIME"], "{text}");
    let cache = &runner["cache"];
    assert_eq!(
        cache["Type"].as_str(),
        Some("s3"),
        "flag wins over template: {text}"
    );
    assert_eq!(
        cache["Shared"].as_bool(),
        Some(true),
        "template fills: {text}"
    );
    assert_eq!(
        cache["s3"]["ServerAddress"].as_str(),
        Some("s3.example.com"),
        "{text}"
    );
    assert_eq!(
        cache["s3"]["BucketName"].as_str(),
        Some("runners"),
        "{text}"
    );
    assert_eq!(
        cache["s3"]["AccessKey"].as_str(),
        Some("AKIAEXAMPLE"),
        "{text}"
    );
    let flags = &runner["feature_flags"];
    assert_eq!(flags["FF_TIMESTAMPS"].as_bool(), Some(false), "{text}");
    assert_eq!(flags["FF_USE_FASTZIP"].as_bool(), Some(true), "{text}");
    // What was written loads without refusal.
    env.runnel(&["verify"], "").await.assert_success();
}

#[tokio::test]
async fn a_bad_flag_value_is_refused_naming_the_flag() {
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
                "--docker-shm-size",
                "big",
            ],
            "",
        )
        .await;
    run.assert_failure();
    assert!(
        run.output()
            .contains("--docker-shm-size: \"big\" is not an integer"),
        "{}",
        run.output()
    );
}

#[tokio::test]
async fn run_single_with_docker_flags_alone_asks_for_jobs() {
    let fake = FakeGitlab::start(FakeConfig {
        long_poll: Duration::from_secs(1),
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token = fake.create_runner_token();
    let run = run_runnel(
        &[
            "run-single",
            "--url",
            fake.url(),
            "--token",
            &token,
            "--executor",
            "docker",
            "--docker-image",
            "alpine:3.20",
            "--docker-memory",
            "256m",
            "--wait-timeout",
            "2",
            "-c",
            dir.path().join("config.toml").to_str().unwrap(),
        ],
        "",
        dir.path(),
    )
    .await;
    run.assert_success();
    let requests: Vec<Value> = fake
        .requests()
        .into_iter()
        .filter(|r| r.endpoint == Some(Endpoint::RequestJob))
        .filter_map(|r| serde_json::from_slice(&r.body).ok())
        .collect();
    assert!(
        !requests.is_empty(),
        "a docker runner from flags polls: {}",
        run.output()
    );
    assert_eq!(requests[0]["info"]["executor"], "docker");
}
