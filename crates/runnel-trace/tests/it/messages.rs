//! Runner messages, section markers and timestamps as they appear in the log.

use std::sync::{Arc, Mutex};

use runnel_trace::{Clock, JobTrace, SectionOptions, Stream, TraceConfig};
use runnel_types::Secret;
use time::OffsetDateTime;
use time::macros::datetime;

use crate::contents;

/// A clock that advances 1.5 ms every time it is read.
#[derive(Debug)]
struct FakeClock(Mutex<OffsetDateTime>);

impl Clock for FakeClock {
    fn now(&self) -> OffsetDateTime {
        let mut now = self.0.lock().unwrap();
        let current = *now;
        *now += time::Duration::microseconds(1500);
        current
    }
}

fn text(trace: &JobTrace) -> String {
    String::from_utf8(contents(trace)).unwrap()
}

fn write_job(trace: &JobTrace) {
    trace.println("Running with runnel 0.1.0");
    trace.section_start(
        "prepare_executor",
        "Preparing the \"shell\" executor",
        1_767_261_600,
        SectionOptions::default(),
    );
    trace.info("Using Shell executor...");
    trace.section_end("prepare_executor", 1_767_261_601);
    trace.section_start(
        "step_script",
        "Executing \"step_script\" stage of the job script",
        1_767_261_602,
        SectionOptions { collapsed: true },
    );
    let mut stdout = trace.writer(Stream::SCRIPT_STDOUT);
    let mut stderr = trace.writer(Stream::SCRIPT_STDERR);
    stdout.write_bytes(b"$ echo $TOKEN\nhunter2\n");
    stderr.write_bytes(b"progress 50%\r");
    stderr.write_bytes(b"progress 100%\n");
    stdout.write_bytes(b"no newline at the end");
    stdout.finish();
    stderr.finish();
    trace.section_end("step_script", 1_767_261_603);
    trace.warning("something odd");
    trace.error("Job failed: exit status 1");
    trace.finish();
}

fn config(timestamps: bool) -> TraceConfig {
    TraceConfig {
        masked: vec![Secret::new("hunter2")],
        timestamps,
        ..TraceConfig::default()
    }
}

#[test]
fn a_job_log() {
    let trace = JobTrace::new(config(false)).unwrap();
    write_job(&trace);
    insta::assert_debug_snapshot!(text(&trace));
}

#[test]
fn a_job_log_with_timestamps() {
    let clock = Arc::new(FakeClock(Mutex::new(datetime!(2026-01-01 10:00:00 UTC))));
    let trace = JobTrace::with_clock(config(true), clock).unwrap();
    write_job(&trace);
    insta::assert_snapshot!(text(&trace).replace('\x1b', "<ESC>").replace('\r', "<CR>"));
}

#[test]
fn timestamps_are_off_by_default() {
    assert!(!TraceConfig::default().timestamps);
}

#[test]
fn runner_messages_are_masked_too() {
    let trace = JobTrace::new(config(false)).unwrap();
    trace.error("could not use hunter2 at https://x/?private_token=abc");
    assert_eq!(
        text(&trace),
        "\x1b[31;1mERROR: could not use [MASKED] at https://x/?private_token=[MASKED]\x1b[0;m\n"
    );
}
