//! Shared fixtures: a job shaped like the official test payload and shell-executor options.

use std::time::Duration;

use runnel_job::{ExecutorKind, JobPlan, PlanOptions, plan};
use runnel_types::{GitInfo, JobId, JobInfo, JobSpec, JobToken, Secret, Step, Variable, When};

pub(crate) fn job() -> JobSpec {
    JobSpec {
        id: JobId(10),
        token: JobToken::new("glcbt-jobtoken123"),
        allow_git_fetch: false,
        info: JobInfo {
            name: "test-job".into(),
            stage: "test".into(),
            project_id: 123,
            project_name: "test-project".into(),
            ..JobInfo::default()
        },
        git: GitInfo {
            repo_url: Secret::new(
                "https://gitlab-ci-token:glcbt-jobtoken123@gitlab.example.com/test/test-project.git",
            ),
            ref_name: "main".into(),
            sha: "69b18e5ed3610cf646119c3e38f462c64ec462b7".into(),
            before_sha: "1ea27a9695f80d7816d9e8ce025d9b2df83d0dd7".into(),
            refspecs: vec![
                "+refs/heads/*:refs/origin/heads/*".into(),
                "+refs/tags/*:refs/tags/*".into(),
            ],
            depth: 20,
            ..GitInfo::default()
        },
        timeout: Some(Duration::from_secs(3600)),
        variables: vec![
            Variable::new("CI_JOB_ID", "10"),
            Variable::new("GIT_STRATEGY", "none"),
        ],
        steps: vec![script_step(&["date", "ls -la"])],
        ..JobSpec::default()
    }
}

pub(crate) fn script_step(lines: &[&str]) -> Step {
    Step {
        name: "script".into(),
        script: lines.iter().map(|l| (*l).to_owned()).collect(),
        timeout: Some(Duration::from_secs(3600)),
        when: When::OnSuccess,
        allow_failure: false,
    }
}

pub(crate) fn after_script_step(lines: &[&str]) -> Step {
    Step {
        name: "after_script".into(),
        when: When::Always,
        ..script_step(lines)
    }
}

pub(crate) fn opts() -> PlanOptions {
    PlanOptions {
        runner_name: "my-runner".into(),
        short_token: "abcdefghi".into(),
        system_id: "s_760931104d8c".into(),
        version: "0.1.0".into(),
        revision: "deadbeef".into(),
        executor: ExecutorKind::Shell,
        builds_dir: "/home/runner/builds".into(),
        cache_dir: "/home/runner/cache".into(),
        hostname: "runner-host".into(),
        script_host: None,
        runner_command: "/usr/bin/runnel".into(),
        os_arch: "linux/amd64".into(),
        ..PlanOptions::default()
    }
}

pub(crate) fn plan_ok(job: &JobSpec, opts: &PlanOptions) -> JobPlan {
    match plan(job, opts) {
        Ok(plan) => plan,
        Err(error) => panic!("planning failed: {error}"),
    }
}

pub(crate) fn set_var(job: &mut JobSpec, key: &str, value: &str) {
    job.variables.push(Variable::new(key, value));
}

/// Runs `script` with bash from `dir` and returns (exit code, stdout, stderr).
pub(crate) fn run_bash(script: &str, dir: &std::path::Path) -> (i32, String, String) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("bash")
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bash must be installed to run these tests");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(script.as_bytes())
        .expect("write script to bash");
    let output = child.wait_with_output().expect("wait for bash");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Renders a generated script for a snapshot: the script itself, then its `eval` body decoded
/// from ANSI-C quoting so reviewers can read it (ESC shown as `␛`).
pub(crate) fn render(script: &str) -> String {
    let body = script
        .find("eval $'")
        .map(|start| decode_ansi_c(&script[start + "eval $'".len()..]))
        .unwrap_or_else(|| "<no ANSI-C quoted body>".to_owned());
    format!("{script}\n--- decoded eval body ---\n{body}").replace('\x1b', "␛")
}

/// Decodes `$'…'` content up to the closing quote.
fn decode_ansi_c(quoted: &str) -> String {
    let mut out = Vec::new();
    let bytes = quoted.as_bytes();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'\'' => break,
            b'\\' => {
                let next = bytes.get(i + 1).copied().unwrap_or(b'\\');
                i += 2;
                match next {
                    b'n' => out.push(b'\n'),
                    b't' => out.push(b'\t'),
                    b'r' => out.push(b'\r'),
                    b'a' => out.push(0x07),
                    b'b' => out.push(0x08),
                    b'v' => out.push(0x0b),
                    b'f' => out.push(0x0c),
                    b'x' => {
                        let hex = quoted.get(i..i + 2).unwrap_or("00");
                        out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                        i += 2;
                    }
                    other => out.push(other),
                }
                continue;
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The script of stage `name` for a successful job so far.
pub(crate) fn stage_script(plan: &JobPlan, name: &str) -> String {
    let stage = plan
        .stage(name)
        .unwrap_or_else(|| panic!("the plan has no stage {name}"));
    stage.script(runnel_job::JobStatus::Success).to_owned()
}
