//! Plans: header, variables, directories, timeouts, settings and feature flags.

use std::fmt::Write as _;
use std::time::Duration;

use insta::assert_snapshot;
use runnel_job::{
    ExecutorKind, GitStrategy, JobPlan, PlanError, StageKind, StageWhen, TimeoutKind, plan,
};
use runnel_types::{ImageSpec, Variable};

use crate::support::{after_script_step, job, opts, plan_ok, script_step, set_var};

fn variable_listing(plan: &JobPlan) -> String {
    let mut out = String::new();
    for v in &plan.variables {
        let flags = [("file", v.file), ("masked", v.masked), ("raw", v.raw)]
            .iter()
            .filter(|(_, on)| *on)
            .map(|(name, _)| *name)
            .collect::<Vec<_>>()
            .join(",");
        writeln!(out, "{}={:?} {flags}", v.key, v.value).expect("writing to a String cannot fail");
    }
    out
}

#[test]
fn header_lines() {
    let plan = plan_ok(&job(), &opts());
    assert_snapshot!(plan.header.join("\n"), @r"
    Running with runnel 0.1.0 (deadbeef)
      on my-runner abcdefghi, system ID: s_760931104d8c
    ");
}

#[test]
fn header_lists_non_default_feature_flags() {
    let mut opts = opts();
    opts.feature_flags = vec![
        ("FF_TIMESTAMPS".into(), false),
        ("FF_NETWORK_PER_BUILD".into(), true),
        ("FF_USE_DIRECT_DOWNLOAD".into(), true),
    ];
    let plan = plan_ok(&job(), &opts);
    assert_snapshot!(plan.header.join("\n"), @r"
    Running with runnel 0.1.0 (deadbeef)
      on my-runner abcdefghi, system ID: s_760931104d8c
      feature flags: FF_NETWORK_PER_BUILD:true, FF_TIMESTAMPS:false
    ");
}

#[test]
fn variables_in_official_order() {
    let mut job = job();
    job.image = Some(ImageSpec {
        name: "ruby:3.3".into(),
        ..ImageSpec::default()
    });
    let mut opts = opts();
    opts.environment = vec!["RUNNER_ENV=from-runner".into(), "BROKEN".into()];
    opts.tls_ca = Some("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into());
    set_var(&mut job, "FF_SCRIPT_SECTIONS", "true");
    let plan = plan_ok(&job, &opts);
    assert_eq!(
        plan.warnings,
        ["ignoring runner environment entry \"BROKEN\": expected KEY=VALUE"]
    );
    assert_snapshot!(variable_listing(&plan));
}

#[test]
fn variable_expansion_cases() {
    let mut job = job();
    job.variables = vec![
        Variable::new("A", "alpha"),
        Variable::new("BRACED", "${A}-x"),
        Variable::new("BARE", "$A/y"),
        Variable::new("UNDEFINED", "[$NOPE]"),
        Variable::new("DOLLARS", "price: $$5"),
        Variable {
            raw: true,
            ..Variable::new("RAW", "$A stays")
        },
        Variable::new("PATHLIKE", "/bin"),
        Variable::new("PATHLIKE", "$PATHLIKE:/usr/bin"),
        Variable::new("FROM_RUNNER", "$CI_PROJECT_DIR/sub"),
        Variable::new("A", "last-wins"),
    ];
    let plan = plan_ok(&job, &opts());
    let v = |key: &str| plan.variables.value(key).to_owned();
    assert_eq!(v("BRACED"), "last-wins-x");
    assert_eq!(v("BARE"), "last-wins/y");
    assert_eq!(v("UNDEFINED"), "[]");
    assert_eq!(v("DOLLARS"), "price: $5");
    assert_eq!(v("RAW"), "$A stays");
    assert_eq!(v("PATHLIKE"), "$PATHLIKE:/usr/bin:/usr/bin");
    assert_eq!(
        v("FROM_RUNNER"),
        "/home/runner/builds/abcdefghi/0/test/test-project/sub"
    );
}

#[test]
fn masked_values_and_token_prefixes() {
    let mut job = job();
    job.variables.push(Variable {
        masked: true,
        ..Variable::new("PASSWORD", "pw-$CI_JOB_ID")
    });
    job.variables.push(Variable {
        masked: true,
        ..Variable::new("EMPTY_MASKED", "")
    });
    job.features.token_mask_prefixes = vec!["custom-".into(), "glpat-".into()];
    let plan = plan_ok(&job, &opts());
    let masked: Vec<&str> = plan.masked_values.iter().map(|s| s.expose()).collect();
    // The job credential is masked too: it reaches the helpers' command lines.
    assert_eq!(masked, ["pw-10", job.token.expose()]);
    assert!(
        !format!("{plan:?}").contains("pw-10"),
        "Debug must not leak masked values"
    );
    assert_eq!(
        plan.token_mask_prefixes.first().map(String::as_str),
        Some("glpat-")
    );
    assert!(plan.token_mask_prefixes.iter().any(|p| p == "glrt-"));
    assert_eq!(
        plan.token_mask_prefixes.last().map(String::as_str),
        Some("custom-")
    );

    set_var(&mut job, "FF_MASK_ALL_DEFAULT_TOKENS", "false");
    let plan = plan_ok(&job, &opts());
    assert_eq!(plan.token_mask_prefixes, ["glpat-", "custom-"]);
}

#[test]
fn directories_shell_vs_docker() {
    let mut opts = opts();
    opts.concurrent_project_id = 2;
    let shell = plan_ok(&job(), &opts).dirs;
    opts.executor = ExecutorKind::Docker;
    opts.builds_dir = "/builds".into();
    opts.cache_dir = "/cache".into();
    let docker = plan_ok(&job(), &opts).dirs;
    assert_snapshot!(format!("{shell:#?}\n{docker:#?}"));
}

#[test]
fn directory_fallbacks_and_empty_suffix() {
    let mut job = job();
    job.git.repo_url = "https://gitlab.example.com/".into();
    set_var(&mut job, "GIT_STRATEGY", "empty");
    let dirs = plan_ok(&job, &opts()).dirs;
    assert_eq!(
        dirs.project_dir,
        "/home/runner/builds/abcdefghi/0/project-123-empty"
    );
    assert_eq!(
        dirs.temp_dir,
        "/home/runner/builds/abcdefghi/0/project-123-empty.tmp"
    );
    assert_eq!(dirs.cache_dir, "/home/runner/cache/project-123-empty");
}

#[test]
fn git_clone_path_rules() {
    let mut job = job();
    set_var(
        &mut job,
        "GIT_CLONE_PATH",
        "$CI_BUILDS_DIR/custom/$CI_CONCURRENT_ID/proj",
    );
    let err = plan(&job, &opts()).expect_err("custom_build_dir is off");
    assert!(matches!(err, PlanError::CustomBuildDirDisabled { .. }));
    assert_snapshot!(err.to_string(), @r#"job 10 sets GIT_CLONE_PATH="/home/runner/builds/custom/0/proj", which needs [runners.custom_build_dir] enabled"#);

    let mut opts = opts();
    opts.custom_build_dir = true;
    let plan_dirs = plan_ok(&job, &opts).dirs;
    assert_eq!(plan_dirs.project_dir, "/home/runner/builds/custom/0/proj");

    set_var(&mut job, "GIT_CLONE_PATH", "$CI_BUILDS_DIR/../escape");
    let err = plan(&job, &opts).expect_err("outside the builds dir");
    assert_snapshot!(err.to_string(), @r#"job 10 sets GIT_CLONE_PATH="/home/runner/builds/../escape", which is not within the builds dir "/home/runner/builds""#);
}

#[test]
fn flags_that_would_change_the_job_on_its_executor_refuse_it_by_name() {
    let mut job = job();
    set_var(&mut job, "FF_USE_INIT_WITH_DOCKER_EXECUTOR", "true");
    let mut docker = opts();
    docker.executor = ExecutorKind::Docker;
    let err = plan(&job, &docker).expect_err("no init process yet");
    assert_snapshot!(err.to_string(), @"feature flag FF_USE_INIT_WITH_DOCKER_EXECUTOR=true (an init process as PID 1 of the job's containers) is not supported by Runnel's docker executor yet");
    // The shell executor has no containers: the official runner ignores the flag there too.
    let shell = plan_ok(&job, &opts());
    assert!(
        shell
            .warnings
            .iter()
            .any(|w| w.contains("FF_USE_INIT_WITH_DOCKER_EXECUTOR=true is not acted upon")),
        "{:?}",
        shell.warnings
    );
    // From [runners.feature_flags] as well, and for kubernetes.
    let mut kubernetes = opts();
    kubernetes.executor = ExecutorKind::Kubernetes;
    kubernetes.feature_flags = vec![("FF_KUBERNETES_HONOR_ENTRYPOINT".to_owned(), true)];
    let err = plan(&self::job(), &kubernetes).expect_err("entrypoint not run");
    assert!(
        err.to_string()
            .starts_with("feature flag FF_KUBERNETES_HONOR_ENTRYPOINT=true "),
        "{err}"
    );
    // Off is what Runnel does.
    let mut job = self::job();
    set_var(&mut job, "FF_DISABLE_UMASK_FOR_DOCKER_EXECUTOR", "false");
    plan_ok(&job, &docker);
}

#[test]
fn relative_builds_dir_is_rejected() {
    let mut opts = opts();
    opts.builds_dir = "builds".into();
    let err = plan(&job(), &opts).expect_err("relative builds dir");
    assert_snapshot!(err.to_string(), @r#"builds_dir "builds" must be an absolute path to plan job 10"#);
}

#[test]
fn timeouts_default_and_clamp() {
    let mut job = job();
    job.timeout = None;
    let t = plan_ok(&job, &opts()).timeouts;
    assert_eq!(t.job, Duration::from_secs(7200));
    assert_eq!(t.script, Duration::from_secs(7200));
    assert_eq!(t.after_script, Duration::from_secs(300));

    job.timeout = Some(Duration::from_secs(600));
    set_var(&mut job, "RUNNER_SCRIPT_TIMEOUT", "1h30m");
    set_var(&mut job, "RUNNER_AFTER_SCRIPT_TIMEOUT", "90s");
    let t = plan_ok(&job, &opts()).timeouts;
    assert_eq!(
        t.script,
        Duration::from_secs(600),
        "clamped to the job timeout"
    );
    assert_eq!(t.after_script, Duration::from_secs(90));

    set_var(&mut job, "RUNNER_SCRIPT_TIMEOUT", "500ms");
    set_var(&mut job, "RUNNER_AFTER_SCRIPT_TIMEOUT", "2h");
    let t = plan_ok(&job, &opts()).timeouts;
    assert_eq!(t.script, Duration::from_millis(500));
    assert_eq!(
        t.after_script,
        Duration::from_secs(600),
        "clamped to the job timeout"
    );
}

#[test]
fn prepare_and_get_sources_timeouts_default_to_the_job_timeout_and_clamp_with_warnings() {
    let mut job = job();
    job.timeout = Some(Duration::from_secs(600));
    let plan = plan_ok(&job, &opts());
    assert_eq!(plan.timeouts.prepare, Duration::from_secs(600));
    assert_eq!(plan.timeouts.get_sources, Duration::from_secs(600));
    assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
    assert_eq!(
        plan.stage("prepare_script").map(|s| s.timeout),
        Some(TimeoutKind::Prepare)
    );
    assert_eq!(
        plan.stage("get_sources").map(|s| s.timeout),
        Some(TimeoutKind::GetSources)
    );

    let mut options = opts();
    options.prepare_timeout = Some(Duration::from_secs(90));
    options.get_sources_timeout = Some(Duration::from_secs(30));
    let t = plan_ok(&job, &options).timeouts;
    assert_eq!(t.prepare, Duration::from_secs(90));
    assert_eq!(t.get_sources, Duration::from_secs(30));

    options.prepare_timeout = Some(Duration::ZERO);
    options.get_sources_timeout = Some(Duration::from_secs(3600));
    let plan = plan_ok(&job, &options);
    assert_eq!(plan.timeouts.prepare, Duration::from_secs(600));
    assert_eq!(plan.timeouts.get_sources, Duration::from_secs(600));
    assert_snapshot!(plan.warnings.join("\n"), @r"
    prepare_timeout (0s) must be greater than 0; using job timeout (10m0s)
    get_sources_timeout (1h0m0s) exceeds job timeout (10m0s); using job timeout
    ");
}

#[test]
fn safe_directory_checkout_follows_the_official_executor_defaults() {
    let mut options = opts();
    for (executor, default) in [
        (ExecutorKind::Shell, false),
        (ExecutorKind::Ssh, false),
        (ExecutorKind::Custom, false),
        (ExecutorKind::Docker, true),
        (ExecutorKind::Kubernetes, true),
    ] {
        options.executor = executor;
        options.safe_directory_checkout = None;
        assert_eq!(options.adds_safe_directory(), default, "{executor:?}");
        options.safe_directory_checkout = Some(!default);
        assert_eq!(options.adds_safe_directory(), !default, "{executor:?}");
    }
}

#[test]
fn invalid_settings_produce_warnings_and_defaults() {
    let mut job = job();
    for (key, value) in [
        ("GIT_STRATEGY", "teleport"),
        ("GIT_CHECKOUT", "maybe"),
        ("GIT_SUBMODULE_STRATEGY", "deep"),
        ("GIT_SUBMODULE_DEPTH", "-1"),
        ("GET_SOURCES_ATTEMPTS", "50"),
        ("RESTORE_CACHE_ATTEMPTS", "0"),
        ("ARTIFACT_DOWNLOAD_ATTEMPTS", "three"),
        ("AFTER_SCRIPT_IGNORE_ERRORS", "nope"),
        ("CACHE_REQUEST_TIMEOUT", "-3"),
        ("RUNNER_SCRIPT_TIMEOUT", "10 minutes"),
        ("RUNNER_AFTER_SCRIPT_TIMEOUT", "-5m"),
        ("CACHE_FALLBACK_KEY", "main-protected"),
        ("FF_TIMESTAMPS", "yes please"),
    ] {
        set_var(&mut job, key, value);
    }
    let plan = plan_ok(&job, &opts());
    assert_snapshot!(plan.warnings.join("\n"));
    let s = &plan.settings;
    assert_eq!(s.git_strategy, GitStrategy::Clone);
    assert!(s.git_checkout);
    assert_eq!(s.get_sources_attempts, 10);
    assert_eq!(s.restore_cache_attempts, 1);
    assert_eq!(s.artifact_download_attempts, 1);
    assert!(s.after_script_ignore_errors);
    assert_eq!(s.cache_request_timeout, Duration::from_secs(600));
    assert_eq!(s.cache_fallback_key, None);
    assert!(plan.feature_flags.timestamps());
    assert_eq!(plan.stage("get_sources").map(|s| s.attempts), Some(10));
}

#[test]
fn valid_settings_are_parsed() {
    let mut job = job();
    job.allow_git_fetch = true;
    job.variables.retain(|v| v.key != "GIT_STRATEGY");
    for (key, value) in [
        ("GIT_CLEAN_FLAGS", "-ffdx -e cache/"),
        ("GIT_FETCH_EXTRA_FLAGS", "none"),
        ("GIT_SUBMODULE_PATHS", "a b"),
        ("GIT_SUBMODULE_DEPTH", "1"),
        ("CACHE_REQUEST_TIMEOUT", "2"),
        ("CACHE_FALLBACK_KEY", "main"),
        ("CI_DEBUG_TRACE", "1"),
    ] {
        set_var(&mut job, key, value);
    }
    let plan = plan_ok(&job, &opts());
    assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
    let s = &plan.settings;
    assert_eq!(s.git_strategy, GitStrategy::Fetch);
    assert_eq!(s.git_clean_flags, ["-ffdx", "-e", "cache/"]);
    assert!(s.git_fetch_extra_flags.is_empty());
    assert_eq!(s.git_submodule_paths, ["a", "b"]);
    assert_eq!(s.git_submodule_depth, Some(1));
    assert_eq!(s.cache_request_timeout, Duration::from_secs(120));
    assert_eq!(s.cache_fallback_key.as_deref(), Some("main"));
    assert!(s.debug_trace);
}

#[test]
fn debug_trace_can_be_disabled_by_the_runner() {
    let mut job = job();
    set_var(&mut job, "CI_DEBUG_TRACE", "true");
    let mut opts = opts();
    opts.debug_trace_disabled = true;
    let plan = plan_ok(&job, &opts);
    assert!(!plan.settings.debug_trace);
    assert_eq!(
        plan.warnings,
        ["CI_DEBUG_TRACE usage is disabled on this runner"]
    );
    assert!(
        !plan
            .stages
            .iter()
            .any(|s| s.script(runnel_job::JobStatus::Success).contains("xtrace"))
    );
}

#[test]
fn feature_flag_precedence() {
    let mut job = job();
    let mut opts = opts();
    // default
    assert!(!plan_ok(&job, &opts).feature_flags.script_sections());
    // runner environment beats the default
    opts.environment = vec!["FF_SCRIPT_SECTIONS=true".into()];
    assert!(plan_ok(&job, &opts).feature_flags.script_sections());
    // a job variable beats the runner environment
    set_var(&mut job, "FF_SCRIPT_SECTIONS", "false");
    assert!(!plan_ok(&job, &opts).feature_flags.script_sections());
    // config beats the job variable
    set_var(&mut job, "FF_SCRIPT_SECTIONS", "true");
    opts.feature_flags = vec![("FF_SCRIPT_SECTIONS".into(), false)];
    let plan = plan_ok(&job, &opts);
    assert!(!plan.feature_flags.script_sections());
    // the exported value is the resolved one, and job/runner copies are dropped
    let exported: Vec<&str> = plan
        .variables
        .iter()
        .filter(|v| v.key == "FF_SCRIPT_SECTIONS")
        .map(|v| v.value.as_str())
        .collect();
    assert_eq!(exported, ["false"]);
}

#[test]
fn stage_list_shape() {
    let mut job = job();
    job.steps = vec![
        script_step(&["make"]),
        runnel_types::Step {
            name: "release".into(),
            ..script_step(&["release-cli create --tag $CI_JOB_ID"])
        },
        after_script_step(&["echo done"]),
    ];
    set_var(&mut job, "GET_SOURCES_ATTEMPTS", "3");
    let plan = plan_ok(&job, &opts());
    let mut out = String::new();
    for s in &plan.stages {
        writeln!(
            out,
            "{} | {} | {:?} | {:?} | attempts={} | {:?} | ignore_errors={}",
            s.name, s.description, s.kind, s.when, s.attempts, s.timeout, s.ignore_errors
        )
        .expect("writing to a String cannot fail");
    }
    assert_snapshot!(out);
    let release = plan.stage("step_release").expect("release step");
    assert_eq!(release.kind, StageKind::Build);
    assert_eq!(release.when, StageWhen::OnSuccess);
    assert_eq!(release.timeout, TimeoutKind::Script);
    let body = crate::support::render(release.script(runnel_job::JobStatus::Success));
    assert!(
        body.contains("release-cli create --tag 10"),
        "release lines are expanded"
    );
}

/// The predefined stages of a job that runs no git, no cache or artifact helper and no hook
/// only keep house: container executors may run them in the build container.
#[test]
fn predefined_stages_keep_house_only_without_git_helpers_or_hooks() {
    let housekeeping = |job: &runnel_types::JobSpec, opts: &runnel_job::PlanOptions| {
        plan_ok(job, opts).predefined_housekeeping_only
    };
    let mut none = job();
    none.dependencies.push(runnel_types::Dependency {
        name: "no-artifacts".into(),
        ..runnel_types::Dependency::default()
    });
    assert!(
        housekeeping(&none, &opts()),
        "none, and a dependency without artifacts"
    );
    let mut empty = job();
    set_var(&mut empty, "GIT_STRATEGY", "empty");
    assert!(housekeeping(&empty, &opts()));

    let mut changed = Vec::new();
    for strategy in ["clone", "fetch"] {
        let mut git = job();
        set_var(&mut git, "GIT_STRATEGY", strategy);
        changed.push((strategy, git, opts()));
    }
    let mut cached = job();
    cached.cache.push(runnel_types::CacheSpec {
        key: "k".into(),
        paths: vec!["vendor".into()],
        ..runnel_types::CacheSpec::default()
    });
    changed.push(("cache", cached, opts()));
    let mut artifacts = job();
    artifacts.artifacts.push(runnel_types::ArtifactSpec {
        paths: vec!["out".into()],
        ..runnel_types::ArtifactSpec::default()
    });
    changed.push(("artifacts", artifacts, opts()));
    let mut downloads = job();
    downloads.dependencies.push(runnel_types::Dependency {
        name: "build".into(),
        artifacts_filename: "artifacts.zip".into(),
        artifacts_size: 10,
        ..runnel_types::Dependency::default()
    });
    changed.push(("dependency", downloads, opts()));
    for name in ["pre_get_sources_script", "post_get_sources_script"] {
        let mut hooked = job();
        hooked.hooks.push(runnel_types::Hook {
            name: name.into(),
            script: vec!["echo hook".into()],
        });
        changed.push((name, hooked, opts()));
    }
    let mut runner_pre = opts();
    runner_pre.pre_get_sources_script = "echo runner".into();
    changed.push(("runner pre_get_sources_script", job(), runner_pre));
    let mut runner_post = opts();
    runner_post.post_get_sources_script = "echo runner".into();
    changed.push(("runner post_get_sources_script", job(), runner_post));
    for (what, job, opts) in &changed {
        assert!(!housekeeping(job, opts), "{what}");
    }
}
