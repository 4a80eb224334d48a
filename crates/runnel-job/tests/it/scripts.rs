//! Snapshots of complete generated stage scripts.

use insta::assert_snapshot;
use runnel_job::{JobStatus, PlanOptions, Shell};
use runnel_types::{Hook, Variable};

use crate::support::{
    after_script_step, job, opts, plan_ok, render, script_step, set_var, stage_script,
};

#[test]
fn simple_job_stages() {
    let plan = plan_ok(&job(), &opts());
    let names: Vec<&str> = plan.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "prepare_script",
            "get_sources",
            "step_script",
            "cleanup_file_variables"
        ]
    );
    assert_snapshot!(
        "simple_prepare_script",
        render(&stage_script(&plan, "prepare_script"))
    );
    assert_snapshot!(
        "simple_get_sources_none",
        render(&stage_script(&plan, "get_sources"))
    );
    assert_snapshot!(
        "simple_step_script",
        render(&stage_script(&plan, "step_script"))
    );
    assert_snapshot!(
        "simple_cleanup",
        render(&stage_script(&plan, "cleanup_file_variables"))
    );
}

#[test]
fn masked_file_and_raw_variables() {
    let mut job = job();
    job.variables.push(Variable {
        masked: true,
        ..Variable::new("SECRET_TOKEN", "s3cr3t value's")
    });
    job.variables.push(Variable {
        file: true,
        ..Variable::new("KUBECONFIG", "apiVersion: v1\nkind: Config\n")
    });
    job.variables.push(Variable {
        raw: true,
        ..Variable::new("RAW", "keep $CI_JOB_ID literal")
    });
    set_var(&mut job, "EXPANDED", "job-$CI_JOB_ID");
    let plan = plan_ok(&job, &opts());
    assert_snapshot!(render(&stage_script(&plan, "step_script")));
    assert_snapshot!(
        "variables_cleanup",
        render(&stage_script(&plan, "cleanup_file_variables"))
    );
}

/// `credential_reject_after_report`: the cleanup stage loses its `git credential reject`,
/// which becomes the stage after the report, with the job's variables (file variables by
/// path, not written again) and `$GITLAB_ENV` before it. Not with the debug trace (the job
/// log shows the command), nor where the cleanup removes the checkout, nor without a temp dir
/// the executor keeps.
#[test]
fn the_credential_reject_can_run_after_the_report_with_the_jobs_variables() {
    let mut job = job();
    job.variables.push(Variable {
        file: true,
        ..Variable::new("KUBECONFIG", "apiVersion: v1\nkind: Config\n")
    });
    set_var(&mut job, "GIT_CONFIG_GLOBAL", "/etc/job.gitconfig");
    let deferring = PlanOptions {
        credential_reject_after_report: true,
        temp_dir_by_executor: true,
        ..opts()
    };
    let plan = plan_ok(&job, &deferring);
    let cleanup = stage_script(&plan, "cleanup_file_variables");
    assert!(!cleanup.contains("credential"), "{}", render(&cleanup));
    let after = plan
        .after_report
        .as_ref()
        .expect("a stage after the report");
    assert_eq!(after.name, "cleanup_git_credentials");
    assert!(after.ignore_errors);
    let script = render(after.script(runnel_job::JobStatus::Success));
    let at = |needle: &str| {
        script
            .find(needle)
            .unwrap_or_else(|| panic!("{needle:?} missing:\n{script}"))
    };
    assert!(at("export GIT_CONFIG_GLOBAL=") < at("git credential reject"));
    assert!(
        at("export GITLAB_ENV=") < at("done < ") && at("done < ") < at("git credential reject")
    );
    assert!(at("export KUBECONFIG=") > 0);
    assert!(
        !script.contains("apiVersion"),
        "file variables are not written again:\n{script}"
    );
    // The last stage of its shell: an inline form (no subshell) when the executor runs those.
    assert!(after.inline().is_none());
    let inlining = PlanOptions {
        inline_housekeeping: true,
        ..deferring.clone()
    };
    let plan = plan_ok(&job, &inlining);
    let inline = plan
        .after_report
        .as_ref()
        .and_then(|stage| stage.inline())
        .expect("an inline form");
    let at = |needle: &str| {
        inline
            .find(needle)
            .unwrap_or_else(|| panic!("{needle:?} missing:\n{inline}"))
    };
    assert!(at("export GIT_CONFIG_GLOBAL=") < at("git credential reject"));
    assert!(at("done < ") < at("git credential reject"));

    let without = plan_ok(&job, &opts());
    assert!(without.after_report.is_none());
    assert!(stage_script(&without, "cleanup_file_variables").contains("git credential reject"));
    let mut traced = job.clone();
    set_var(&mut traced, "CI_DEBUG_TRACE", "true");
    let plan = plan_ok(&traced, &deferring);
    assert!(plan.after_report.is_none());
    assert!(stage_script(&plan, "cleanup_file_variables").contains("git credential reject"));
    let mut cleaning = job.clone();
    set_var(&mut cleaning, "FF_ENABLE_JOB_CLEANUP", "true");
    assert!(plan_ok(&cleaning, &deferring).after_report.is_none());
    let kept_by_scripts = PlanOptions {
        temp_dir_by_executor: false,
        ..deferring.clone()
    };
    assert!(plan_ok(&job, &kept_by_scripts).after_report.is_none());
}

#[test]
fn multi_line_and_empty_commands() {
    let mut job = job();
    job.steps = vec![script_step(&[
        "echo first",
        "",
        "for i in 1 2; do\n  echo $i\ndone",
        "   ",
        "  echo 'trimmed'  ",
    ])];
    let plan = plan_ok(&job, &opts());
    assert_snapshot!(render(&stage_script(&plan, "step_script")));
}

#[test]
fn script_sections_wrap_multi_line_commands() {
    let mut job = job();
    job.features.trace_sections = true;
    set_var(&mut job, "FF_SCRIPT_SECTIONS", "true");
    job.steps = vec![script_step(&["echo one", "if true; then\n  echo two\nfi"])];
    let plan = plan_ok(&job, &opts());
    assert_snapshot!(render(&stage_script(&plan, "step_script")));
}

#[test]
fn pre_and_post_build_scripts() {
    let mut opts = opts();
    opts.pre_build_script = "echo pre\necho pre2".into();
    opts.post_build_script = "echo post".into();
    let plan = plan_ok(&job(), &opts);
    assert_snapshot!(render(&stage_script(&plan, "step_script")));
}

#[test]
fn after_script_sees_the_job_status() {
    let mut job = job();
    job.steps
        .push(after_script_step(&["echo cleanup $CI_JOB_STATUS"]));
    let plan = plan_ok(&job, &opts());
    let stage = plan.stage("after_script").expect("after_script is planned");
    assert!(stage.ignore_errors);
    assert_snapshot!(render(stage.script(JobStatus::Failed)));
    for status in [JobStatus::Success, JobStatus::Canceled, JobStatus::TimedOut] {
        let script = stage.script(status);
        let wanted = format!("export CI_JOB_STATUS={}", status.as_str());
        assert!(render(script).contains(&wanted), "{wanted} missing");
        assert!(!render(script).contains("export CI_JOB_STATUS=running"));
    }
}

#[test]
fn after_script_errors_can_fail_the_job() {
    let mut job = job();
    job.steps.push(after_script_step(&["false"]));
    set_var(&mut job, "AFTER_SCRIPT_IGNORE_ERRORS", "false");
    let plan = plan_ok(&job, &opts());
    assert!(!plan.stage("after_script").expect("planned").ignore_errors);
}

#[test]
fn sh_shell_and_script_flags() {
    let mut opts = opts();
    opts.shell = Shell::Sh;
    let mut job = job();
    job.steps = vec![script_step(&["echo $HOME"])];
    for flag in [
        "FF_ENABLE_BASH_EXIT_CODE_CHECK",
        "FF_USE_LEGACY_BASH_EVAL",
        "CI_DEBUG_TRACE",
    ] {
        set_var(&mut job, flag, "true");
    }
    let plan = plan_ok(&job, &opts);
    assert_snapshot!(render(&stage_script(&plan, "step_script")));
}

#[test]
fn posixly_correct_escapes() {
    let mut job = job();
    job.steps = vec![script_step(&["echo \"$HOME\" 'x'"])];
    set_var(&mut job, "FF_POSIXLY_CORRECT_ESCAPES", "true");
    let plan = plan_ok(&job, &opts());
    let script = stage_script(&plan, "step_script");
    assert!(
        !script.contains("eval $'"),
        "POSIX quoting must not use $'…'"
    );
    assert_snapshot!(script.replace('\x1b', "␛"));
}

#[test]
fn git_strategy_empty() {
    let mut job = job();
    set_var(&mut job, "GIT_STRATEGY", "empty");
    let plan = plan_ok(&job, &opts());
    assert_snapshot!(render(&stage_script(&plan, "get_sources")));
}

#[test]
fn git_strategy_clone_with_hooks_and_submodules() {
    let mut job = job();
    set_var(&mut job, "GIT_STRATEGY", "clone");
    set_var(&mut job, "GIT_SUBMODULE_STRATEGY", "recursive");
    job.hooks.push(Hook {
        name: "pre_get_sources_script".into(),
        script: vec!["echo job pre hook".into()],
    });
    let mut opts = opts();
    opts.pre_get_sources_script = "echo runner pre".into();
    opts.post_get_sources_script = "echo runner post".into();
    let plan = plan_ok(&job, &opts);
    assert_snapshot!(render(&stage_script(&plan, "get_sources")));
}

#[test]
fn git_strategy_fetch_full_depth() {
    let mut job = job();
    job.allow_git_fetch = true;
    job.git.depth = 0;
    job.variables.retain(|v| v.key != "GIT_STRATEGY");
    set_var(&mut job, "GIT_CLEAN_FLAGS", "none");
    set_var(&mut job, "FF_GIT_URLS_WITHOUT_TOKENS", "true");
    let plan = plan_ok(&job, &opts());
    let script = render(&stage_script(&plan, "get_sources"));
    assert!(!script.contains("git clean"));
    assert!(
        !script.contains("glcbt-jobtoken123"),
        "token must stay out of the script"
    );
    assert_snapshot!(script);
}

#[test]
fn prepare_without_hostname() {
    let mut opts = opts();
    opts.hostname = String::new();
    let plan = plan_ok(&job(), &opts);
    let script = render(&stage_script(&plan, "prepare_script"));
    assert!(
        script.contains("echo \"Running on $(hostname)...\"\n"),
        "{script}"
    );
}

#[test]
fn prepare_names_a_known_script_host_without_a_process() {
    let mut opts = opts();
    opts.script_host = Some("build-01.example".into());
    let script = render(&stage_script(&plan_ok(&job(), &opts), "prepare_script"));
    assert!(
        script.contains("echo \"Running on build-01.example via runner-host...\"\n"),
        "{script}"
    );
    // A name the shell could read as code falls back to asking the host.
    opts.script_host = Some("evil$(reboot)".into());
    let script = render(&stage_script(&plan_ok(&job(), &opts), "prepare_script"));
    assert!(
        script.contains("echo \"Running on $(hostname) via runner-host...\"\n"),
        "{script}"
    );
}
