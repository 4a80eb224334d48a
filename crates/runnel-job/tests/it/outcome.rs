//! Job outcomes → final trace line, state, failure reason and exit code.

use std::fmt::Write as _;
use std::time::Duration;

use insta::assert_snapshot;
use runnel_job::{ExecutorKind, JobOutcome, JobStatus, preparing_executor_message};

#[test]
fn outcome_mapping() {
    let outcomes = [
        JobOutcome::Success,
        JobOutcome::ScriptFailure { exit_code: 1 },
        JobOutcome::ScriptFailure { exit_code: 42 },
        JobOutcome::Timeout {
            after: Duration::from_secs(3600),
        },
        JobOutcome::Timeout {
            after: Duration::from_secs(90),
        },
        JobOutcome::Canceled,
        JobOutcome::SystemFailure {
            message: "failed to start bash: no such file".into(),
        },
        JobOutcome::Interrupted {
            signal: "terminated".into(),
        },
    ];
    let mut out = String::new();
    for executor in [
        ExecutorKind::Shell,
        ExecutorKind::Docker,
        ExecutorKind::Kubernetes,
    ] {
        writeln!(out, "## {}", preparing_executor_message(executor))
            .expect("writing to a String cannot fail");
        for outcome in &outcomes {
            let f = outcome.final_status(executor);
            writeln!(
                out,
                "{:<55} | {} | {:?} | {:?} | error={} | CI_JOB_STATUS={}",
                f.trace_line,
                f.state.as_str(),
                f.failure_reason.map(|r| r.as_str()),
                f.exit_code,
                f.is_error,
                outcome.job_status().as_str()
            )
            .expect("writing to a String cannot fail");
        }
    }
    assert_snapshot!(out);
}

#[test]
fn job_status_names() {
    let names: Vec<&str> = [
        JobStatus::Success,
        JobStatus::Failed,
        JobStatus::Canceled,
        JobStatus::TimedOut,
    ]
    .iter()
    .map(|s| s.as_str())
    .collect();
    assert_eq!(names, ["success", "failed", "canceled", "timedout"]);
}
