use std::time::Duration;

use runnel_config::{ConfigFile, Executor, LogLevel, PullPolicy, Shell};
use time::macros::datetime;

use crate::{data, fake_env, load_copy, parse};

#[test]
fn official_test_config_loads_with_its_values() {
    let file =
        ConfigFile::load_with_env(data("commands_testdata_test-config.toml"), fake_env).unwrap();
    let config = file.config();
    assert!(file.existed());
    assert!(file.warnings().is_empty());
    assert_eq!(config.concurrent, 2);
    assert_eq!(config.check_interval(), Duration::from_secs(3));
    assert_eq!(config.log_level, Some(LogLevel::Info));
    let names: Vec<&str> = config.runners.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "test-docker-runner",
            "test-shell-runner-1",
            "test-shell-runner-2"
        ]
    );
    let executors: Vec<Executor> = config.runners.iter().map(|r| r.executor).collect();
    assert_eq!(
        executors,
        [Executor::Docker, Executor::Shell, Executor::Shell]
    );
    let first = &config.runners[0];
    assert_eq!(first.url, "https://gitlab.example.com/");
    assert_eq!(first.token.expose(), "test-token1");
    assert_eq!(first.environment, ["ENV=test"]);
    assert_eq!(config.runners[2].token.expose(), "test-token3");
}

#[test]
fn official_lint_sample_loads_with_defaults_applied() {
    let file =
        ConfigFile::load_with_env(data("commands_testdata_lint_valid.toml"), fake_env).unwrap();
    let config = file.config();
    assert!(file.warnings().is_empty());
    assert_eq!(config.concurrent, 4);
    assert_eq!(config.check_interval, Some(0));
    assert_eq!(
        config.check_interval(),
        Duration::from_secs(3),
        "0 means the default"
    );
    assert_eq!(config.shutdown_timeout(), Duration::from_secs(30));
    assert_eq!(config.connection_max_age(), Duration::from_secs(15 * 60));
    assert_eq!(
        config.session_server.session_timeout(),
        Duration::from_secs(1800)
    );

    let [runner] = config.runners.as_slice() else {
        panic!("expected one runner")
    };
    assert_eq!(runner.name, "my-runner");
    assert_eq!(runner.url, "https://gitlab.com/");
    assert_eq!(runner.token.expose(), "TOKEN");
    assert_eq!(runner.executor, Executor::Docker);
    assert_eq!(runner.id, None);
    assert_eq!(runner.output_limit_bytes(), 4096 * 1024);
    assert_eq!(runner.request_concurrency(), 1);
    assert_eq!(runner.unhealthy_requests_limit(), 3);
    assert_eq!(runner.unhealthy_interval(), Duration::from_secs(3600));
    assert_eq!(runner.job_status_final_update_retry_limit(), 10);
    assert_eq!(runner.artifact_upload_timeout(), Duration::from_secs(3600));
    assert_eq!(
        runner.artifact_response_header_timeout(),
        Duration::from_secs(600)
    );
    let docker = runner.docker.as_ref().unwrap();
    assert_eq!(docker.image.as_deref(), Some("ruby:2.7"));
    assert!(!docker.privileged);
    assert_eq!(docker.pull_policies(), [PullPolicy::Always]);
    assert_eq!(
        docker.wait_for_services_timeout(),
        Some(Duration::from_secs(30))
    );
}

#[test]
fn commented_sample_has_typed_sections() {
    let (_dir, file) = load_copy("commented.toml");
    let config = file.config();
    assert_eq!(config.concurrent, 8);
    assert_eq!(config.check_interval(), Duration::from_secs(5));
    assert_eq!(config.connection_max_age(), Duration::from_secs(30 * 60));
    assert_eq!(
        config.session_server.session_timeout(),
        Duration::from_secs(600)
    );

    let docker_runner = &config.runners[0];
    assert_eq!(docker_runner.id, Some(42));
    assert_eq!(docker_runner.limit, 4);
    assert_eq!(docker_runner.request_concurrency(), 2);
    assert_eq!(
        docker_runner.unhealthy_interval(),
        Duration::from_secs(5410)
    );
    assert_eq!(
        docker_runner.token_obtained_at,
        Some(datetime!(2025-01-02 03:04:05 UTC))
    );
    assert_eq!(
        docker_runner.token_expires_at, None,
        "Go's zero time means never"
    );
    assert_eq!(docker_runner.feature_flag("FF_USE_FASTZIP"), Some(true));
    assert!(docker_runner.custom_build_dir_enabled());

    let cache = docker_runner.cache.as_ref().unwrap();
    assert_eq!(cache.kind.as_deref(), Some("s3"));
    assert!(cache.shared);
    assert_eq!(cache.max_uploaded_archive_size, 1_048_576);
    let s3 = cache.s3.as_ref().unwrap();
    assert_eq!(s3.bucket_name.as_deref(), Some("runners-cache"));
    assert_eq!(
        s3.secret_key.as_ref().map(|s| s.expose()),
        Some("not-a-real-secret")
    );

    let docker = docker_runner.docker.as_ref().unwrap();
    assert!(docker.privileged);
    assert_eq!(
        docker.pull_policies(),
        [PullPolicy::IfNotPresent, PullPolicy::Always]
    );
    assert_eq!(
        docker.wait_for_services_timeout(),
        None,
        "-1 disables waiting"
    );
    assert_eq!(docker.shm_size, 268_435_456);
    assert_eq!(
        docker
            .sysctls
            .get("net.ipv4.ip_forward")
            .map(String::as_str),
        Some("1")
    );
    assert_eq!(docker.services.len(), 1);
    assert_eq!(docker.services[0].name, "postgres:16");
    assert_eq!(docker.services[0].alias.as_deref(), Some("db"));

    let k8s = &config.runners[1];
    assert_eq!(k8s.shell, Some(Shell::Bash));
    let kubernetes = k8s.kubernetes.as_ref().unwrap();
    assert_eq!(
        kubernetes.get("namespace").and_then(|v| v.as_str()),
        Some("ci")
    );
    #[derive(serde::Deserialize)]
    struct Poll {
        poll_timeout: u32,
    }
    assert_eq!(kubernetes.deserialize::<Poll>().unwrap().poll_timeout, 600);

    let custom = &config.runners[2];
    assert_eq!(
        custom.token.expose(),
        "glrt-from-the-environment",
        "token is $VAR-expanded"
    );
    assert_eq!(custom.output_limit_bytes(), 8192 * 1024);
    let custom_config = custom.custom.as_ref().unwrap();
    assert_eq!(custom_config.run_args, ["--verbose"]);
    assert_eq!(custom_config.cleanup_exec_timeout, Some(120));
}

#[test]
fn unknown_keys_are_warnings_with_lines() {
    let text = crate::read_data("commented.toml");
    let file = parse(&text).unwrap();
    let rendered: Vec<String> = file.warnings().iter().map(ToString::to_string).collect();
    insta::assert_snapshot!(rendered.join("\n"), @r"
    config.toml:7:1: future_global_knob: unknown key (kept)
    config.toml:26:3: runners[0].executr: unknown key (kept)
    ");
}

#[test]
fn a_missing_file_is_an_empty_config() {
    let dir = tempfile::tempdir().unwrap();
    let file = ConfigFile::load_with_env(dir.path().join("config.toml"), fake_env).unwrap();
    assert!(!file.existed());
    assert!(file.config().runners.is_empty());
    assert_eq!(file.config().concurrent, 0);
    assert_eq!(file.contents(), "");
}

#[test]
fn url_and_token_are_expanded_like_os_expand_env() {
    let text = r#"
[[runners]]
  name = "x"
  url = "https://${GITLAB_HOST}/"
  token = "$CUSTOM_RUNNER_TOKEN"
  executor = "shell"
"#;
    let file = parse(text).unwrap();
    let runner = &file.config().runners[0];
    assert_eq!(runner.url, "https://gitlab.internal/");
    assert_eq!(runner.token.expose(), "glrt-from-the-environment");
    assert!(
        file.contents().contains("$CUSTOM_RUNNER_TOKEN"),
        "the file keeps the reference"
    );
}

#[test]
fn debug_output_never_shows_secrets() {
    let (_dir, file) = load_copy("commented.toml");
    let debug = format!("{:?}", file.config());
    for secret in [
        "not-a-real-secret",
        "k8s-secret",
        "abcdefghijklmnopqrst",
        "from-the-environment",
    ] {
        assert!(!debug.contains(secret), "{secret} leaked into Debug output");
    }
}

#[test]
fn pull_policy_may_be_a_single_string() {
    let text = r#"
[[runners]]
  executor = "docker"
  [runners.docker]
    pull_policy = "never"
"#;
    let file = parse(text).unwrap();
    let docker = file.config().runners[0].docker.as_ref().unwrap();
    assert_eq!(docker.pull_policies(), [PullPolicy::Never]);
}

#[test]
fn debug_of_the_file_never_shows_its_text() {
    let (_dir, file) = load_copy("commented.toml");
    let debug = format!("{file:?}");
    assert!(debug.contains("docker-main"));
    assert!(!debug.contains("abcdefghijklmnopqrst"), "the token leaked");
    assert!(!debug.contains("not-a-real-secret"), "the S3 secret leaked");
}

#[test]
fn empty_strings_mean_unset_like_the_official_runner() {
    let file = parse("[[runners]]\n  executor = \"shell\"\n  shell = \"\"\n  builds_dir = \"\"\n")
        .unwrap();
    let runner = &file.config().runners[0];
    assert_eq!(runner.shell, None);
    assert_eq!(runner.builds_dir, None);
}

#[test]
fn unknown_keys_in_nested_sections_are_located() {
    let text = "[[runners]]\n  executor = \"docker\"\n  [runners.docker]\n    imag = \"x\"\n    \
                [[runners.docker.services]]\n      name = \"redis\"\n      aliass = \"r\"\n";
    let file = parse(text).unwrap();
    let rendered: Vec<String> = file.warnings().iter().map(ToString::to_string).collect();
    assert_eq!(
        rendered,
        [
            "config.toml:4:5: runners[0].docker.imag: unknown key (kept)",
            "config.toml:7:7: runners[0].docker.services[0].aliass: unknown key (kept)",
        ]
    );
}

#[test]
fn runners_can_be_found_by_name() {
    let file =
        ConfigFile::load_with_env(data("commands_testdata_test-config.toml"), fake_env).unwrap();
    assert_eq!(file.config().runner_index("test-shell-runner-2"), Some(2));
    assert_eq!(file.config().runner_index("nope"), None);
}

/// Every complete config.toml example of the official documentation (a `[[runners]]` entry
/// with a `url`, kept under `tests/data/official-docs/`, named after the page and the block's
/// position) loads without refusal: a valid official configuration is never rejected. (Blocks
/// that are not TOML at all, doc fragments with `...` elisions, are not kept.)
#[test]
fn every_official_documentation_example_loads() {
    let dir = data("official-docs");
    let mut failures = Vec::new();
    let mut count = 0;
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        count += 1;
        if let Err(error) = ConfigFile::load_with_env(&path, fake_env) {
            failures.push(format!("{}: {error}", path.display()));
        }
    }
    assert!(count >= 60, "the official examples are all there ({count})");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn keys_parsed_but_not_acted_upon_are_named() {
    let file = parse(
        "[[runners]]\n  url = \"https://gitlab.example.com\"\n  token = \"t\"\n  executor = \"shell\"\n  get_sources_timeout = \"5m\"\n  prepare_timeout = \"5m\"\n  safe_directory_checkout = true\n  proxy_exec = false\n  slot_cgroup_template = \"x/${slot}\"\n  step_runner_image = \"x\"\n  [runners.monitoring]\n  [runners.artifact]\n    upload_timeout = \"1h\"\n    response_header_timeout = \"10m\"\n",
    )
    .unwrap();
    let runner = &file.config().runners[0];
    // Acted upon (the timeouts, safe.directory), or equal to what Runnel does (proxy_exec
    // off, no slot cgroups, the default artifact limits): neither warned about nor refused.
    assert_eq!(
        runner.ignored_keys(),
        ["step_runner_image", "[runners.monitoring]"]
    );
    assert!(
        runner.refused_keys().is_empty(),
        "{:?}",
        runner.refused_keys()
    );
}

#[test]
fn keys_that_would_change_jobs_are_refused_by_name() {
    let file = parse(
        "[[runners]]\n  url = \"https://gitlab.example.com\"\n  token = \"t\"\n  executor = \"shell\"\n  proxy_exec = true\n  use_slot_cgroups = true\n  [runners.referees]\n    [runners.referees.metrics]\n      prometheus_address = \"http://localhost:9090\"\n  [runners.artifact]\n    upload_timeout = \"30m\"\n    response_header_timeout = \"10m\"\n",
    )
    .unwrap();
    assert_eq!(
        file.config().runners[0].refused_keys(),
        [
            "proxy_exec = true (running job commands through the helper binary) is not supported by Runnel",
            "use_slot_cgroups = true (a cgroup per job slot) is not supported by Runnel",
            "[runners.referees] (metrics referee artifacts) is not supported by Runnel",
            "[runners.artifact] upload_timeout = \"30m0s\" is not supported by Runnel (artifact uploads use the default 1h0m0s)",
        ]
    );
    assert!(file.config().runners[0].ignored_keys().is_empty());
}

#[test]
fn cache_settings_runnel_cannot_honour_are_refused_by_name() {
    let runner = |cache: &str| {
        let file = parse(&format!(
            "[[runners]]\n  url = \"https://gitlab.example.com\"\n  token = \"t\"\n  executor = \"shell\"\n  [runners.cache]\n{cache}"
        ))
        .unwrap();
        file.config().runners[0].refused_keys()
    };
    assert_eq!(
        runner("    Type = \"gcs\"\n    [runners.cache.gcs]\n      BucketName = \"b\"\n"),
        [
            "[runners.cache] Type = \"gcs\" (a distributed cache on Google Cloud Storage) is not supported by Runnel yet (only \"s3\")"
        ]
    );
    assert_eq!(
        runner("    Type = \"azure\"\n"),
        [
            "[runners.cache] Type = \"azure\" (a distributed cache on Azure Blob Storage) is not supported by Runnel yet (only \"s3\")"
        ]
    );
    assert_eq!(
        runner(
            "    Type = \"s3\"\n    [runners.cache.s3]\n      BucketName = \"b\"\n      AuthenticationType = \"iam\"\n      ServerSideEncryption = \"KMS\"\n      ServerSideEncryptionKeyID = \"alias/k\"\n      RoleARN = \"arn:aws:iam::1:role/r\"\n      UploadRoleARN = \"arn:aws:iam::1:role/u\"\n"
        ),
        [
            "[runners.cache.s3] AuthenticationType = \"iam\" (instance-profile credentials) is not supported by Runnel yet: set AccessKey and SecretKey",
            "[runners.cache.s3] ServerSideEncryption (server-side encryption of cache objects) is not supported by Runnel yet",
            "[runners.cache.s3] ServerSideEncryptionKeyID (server-side encryption of cache objects) is not supported by Runnel yet",
            "[runners.cache.s3] RoleARN (assuming an IAM role for cache transfers) is not supported by Runnel yet",
            "[runners.cache.s3] UploadRoleARN (assuming an IAM role for cache transfers) is not supported by Runnel yet",
        ]
    );
    // What Runnel does: access keys, dual-stack and acceleration on AWS, empty values; and
    // what the official runner itself only warns about (an unknown type) stays a job warning.
    assert!(
        runner(
            "    Type = \"s3\"\n    [runners.cache.s3]\n      BucketName = \"b\"\n      AuthenticationType = \"access-key\"\n      AccessKey = \"a\"\n      SecretKey = \"s\"\n      ServerSideEncryption = \"\"\n      DualStack = false\n      Accelerate = true\n"
        )
        .is_empty()
    );
    assert!(runner("    Type = \"s4\"\n").is_empty());
    // Sections of a type not selected are not used, so not refused.
    assert!(runner("    [runners.cache.s3]\n      RoleARN = \"r\"\n").is_empty());
}

#[test]
fn docker_keys_the_executor_does_not_act_on_are_named() {
    let file = parse(
        "[[runners]]\n  url = \"https://gitlab.example.com\"\n  token = \"t\"\n  executor = \"docker\"\n  [runners.docker]\n    image = \"alpine\"\n    gpus = \"all\"\n    mac_address = \"92:d0:c6:0a:29:33\"\n    helper_image_flavor = \"ubuntu\"\n    [runners.docker.services_devices]\n      \"postgres\" = [\"/dev/null:/dev/null\"]\n",
    )
    .unwrap();
    // Harmless to ignore on Linux with Runnel's own helper image.
    assert_eq!(
        file.config().runners[0].ignored_keys(),
        ["[runners.docker] helper_image_flavor"]
    );
    // Acted upon by the docker executor: neither warned about nor refused.
    assert!(file.config().runners[0].refused_keys().is_empty());
}
