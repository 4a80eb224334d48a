//! Reporters, the summary and the live frame, fed a scripted run.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use runnel_exec::view::{PipelineState, render_frame, render_summary};
use runnel_exec::{
    Event, JobResult, JobStatus, LiveReporter, PipelineJob, PlainReporter, Reporter,
};

use crate::{Shared, visible};

const START: &str = "section_start:1767261600:step_script\r\x1b[0K\x1b[0K\x1b[36;1mExecuting \"step_script\" stage of the job script\x1b[0;m\n";
const END: &str = "section_end:1767261601:step_script\r\x1b[0K";

fn job(name: &str, stage: &str, skipped: Option<&str>) -> PipelineJob {
    PipelineJob {
        name: name.to_owned(),
        stage: stage.to_owned(),
        skipped: skipped.map(str::to_owned),
    }
}

fn started() -> Event {
    Event::PipelineStarted {
        stages: [".pre", "build", "test", "deploy", ".post"]
            .map(str::to_owned)
            .to_vec(),
        jobs: vec![
            job("build", "build", None),
            job("test 1/2", "test", None),
            job("test 2/2", "test", None),
            job("lint", "test", None),
            job(
                "deploy",
                "deploy",
                Some("when: manual (run it with --manual)"),
            ),
            job("nightly", "deploy", Some("rules: the rule does not match")),
        ],
    }
}

fn start(name: &str) -> Event {
    Event::JobStarted {
        name: name.to_owned(),
    }
}

fn out(name: &str, bytes: &[u8]) -> Event {
    Event::JobOutput {
        name: name.to_owned(),
        bytes: bytes.to_vec(),
    }
}

fn done(name: &str, status: JobStatus, millis: u64, exit_code: Option<i32>) -> Event {
    let failure_reason = exit_code.map(|_| "script_failure".to_owned());
    Event::JobFinished {
        name: name.to_owned(),
        result: JobResult {
            status,
            duration: Duration::from_millis(millis),
            exit_code,
            failure_reason,
            log_file: Some(PathBuf::from(format!(
                ".runnel/logs/1/{}.log",
                name.replace([' ', '/'], "-")
            ))),
            log_error: None,
        },
    }
}

/// A run of six jobs: one build, two parallel tests and an allowed-to-fail lint running at
/// once with their output interleaved and split mid-line and mid-UTF-8, two jobs skipped by
/// the plan, one test failing.
fn script() -> Vec<Event> {
    let build_log = format!(
        "{START}\x1b[32;1m$ make\x1b[0;m\ncompiling wörld\nDownloading 10%\rDownloading 100%\n{END}"
    );
    let (b1, b2) = build_log
        .as_bytes()
        .split_at(build_log.find('ö').unwrap_or(0) + 1);
    vec![
        started(),
        start("build"),
        out("build", b1),
        out("build", b2),
        done("build", JobStatus::Success, 1500, None),
        start("test 1/2"),
        start("test 2/2"),
        start("lint"),
        out("test 1/2", b"$ cargo test --part 1\nrunning 12 te"),
        out(
            "test 2/2",
            "$ cargo test --part 2\nrunning 9 tests ✔".as_bytes(),
        ),
        out("lint", b"$ clippy\nwarning: unused variable\n"),
        out("test 1/2", b"sts\ntest result: ok. 12 passed\n"),
        done("lint", JobStatus::FailedAllowed, 2100, Some(3)),
        out(
            "test 2/2",
            b"\n\x1b[31;1mtest result: FAILED. 8 passed; 1 failed\x1b[0;m\n",
        ),
        done("test 1/2", JobStatus::Success, 4200, None),
        done("test 2/2", JobStatus::Failed, 4800, Some(1)),
        Event::PipelineFinished {
            success: false,
            duration: Duration::from_millis(6400),
        },
    ]
}

fn plain(events: &[Event], ansi: bool, finish: bool) -> String {
    let mut reporter = PlainReporter::new(Vec::new(), ansi);
    for e in events {
        reporter.event(e);
    }
    if finish {
        reporter.finish();
    }
    String::from_utf8(reporter.into_inner()).unwrap_or_else(|e| panic!("not UTF-8: {e}"))
}

#[test]
fn plain_output_prefixes_each_line_with_its_job() {
    let text = plain(&script(), false, true);
    insta::assert_snapshot!(text);
    assert!(!text.contains('\x1b'), "no escapes without ansi");
    assert!(!text.contains("section_"), "section markers are not shown");
}

#[test]
fn plain_output_keeps_colours_when_asked() {
    let text = plain(&script(), true, true);
    // The job's own colour survives, and every line resets after itself so a colour never
    // bleeds into the next job's prefix.
    assert!(
        text.contains("\x1b[32;1m$ make\x1b[0;m\x1b[0m\n"),
        "{}",
        visible(&text)
    );
    for line in text.lines().filter(|l| l.contains(" |")) {
        assert!(line.ends_with("\x1b[0m"), "{}", visible(line));
    }
    assert_eq!(
        console::strip_ansi_codes(&text),
        plain(&script(), false, true),
        "the same text, only coloured"
    );
}

#[test]
fn plain_output_of_an_interrupted_run_flushes_and_summarises() {
    let events = [
        started(),
        start("build"),
        out("build", b"first line\nhalf a li"),
    ];
    insta::assert_snapshot!(plain(&events, false, true));
    assert!(
        !plain(&events, false, false).contains("half a li"),
        "an unfinished line waits for its newline"
    );
}

fn state_at(events: &[Event], t0: Instant, step: Duration) -> PipelineState {
    let mut state = PipelineState::default();
    for (i, e) in events.iter().enumerate() {
        state.apply(e, t0 + step * u32::try_from(i).unwrap_or(0));
    }
    state
}

#[test]
fn summary_table() {
    let t0 = Instant::now();
    let state = state_at(&script(), t0, Duration::from_millis(100));
    let text = render_summary(&state, false);
    insta::assert_snapshot!(text);
    let coloured = render_summary(&state, true);
    assert!(coloured.contains("\x1b["), "{}", visible(&coloured));
    assert_eq!(console::strip_ansi_codes(&coloured), text);
}

#[test]
fn summary_of_a_passed_pipeline() {
    let events = [
        Event::PipelineStarted {
            stages: vec!["test".to_owned()],
            jobs: vec![job("only", "test", None)],
        },
        start("only"),
        done("only", JobStatus::Success, 61_000, None),
        Event::PipelineFinished {
            success: true,
            duration: Duration::from_millis(62_500),
        },
    ];
    let state = state_at(&events, Instant::now(), Duration::from_millis(10));
    insta::assert_snapshot!(render_summary(&state, false));
}

/// Frames at three moments of the scripted run, on a roomy terminal.
#[test]
fn live_frames_follow_the_run() {
    let t0 = Instant::now();
    let step = Duration::from_millis(250);
    let events = script();
    let mut frames = String::new();
    for upto in [2, 12, 15] {
        let state = state_at(&events[..upto], t0, step);
        let now = t0 + step * u32::try_from(upto).unwrap_or(0);
        frames.push_str(&format!("--- after {upto} events\n"));
        frames.push_str(&render_frame(&state, 100, 40, now, false));
    }
    insta::assert_snapshot!(frames);
}

#[test]
fn live_frame_fits_small_terminals() {
    let t0 = Instant::now();
    let step = Duration::from_millis(250);
    let events = script();
    let mut events = events[..12].to_vec();
    // Tabs and control characters would make the terminal's width differ from the measured one.
    events.push(out("lint", b"\tindented\twith\ttabs\x07 and a bell\n"));
    let state = state_at(&events, t0, step);
    let now = t0 + Duration::from_secs(3);
    for (width, height) in [(100, 40), (40, 40), (100, 8), (30, 5), (0, 0)] {
        let frame = render_frame(&state, width, height, now, true);
        let lines: Vec<&str> = frame.lines().collect();
        assert!(
            lines.len() <= height.saturating_sub(1).max(4),
            "{width}x{height}: {} lines\n{}",
            lines.len(),
            visible(&frame)
        );
        for line in &lines {
            assert!(!line.contains(['\t', '\x07']), "{}", visible(line));
            assert!(
                console::measure_text_width(line) < width.max(21),
                "{width}x{height}: too wide: {}",
                visible(line)
            );
        }
    }
    // Few rows: the running jobs stay visible, the rest is counted.
    insta::assert_snapshot!(render_frame(&state, 60, 8, now, false));
}

#[test]
fn live_reporter_prints_each_log_whole_and_restores_the_cursor() {
    let screen = Shared::default();
    let mut reporter = LiveReporter::with_writer(screen.clone(), 80, 24, false);
    let mut events = script();
    // Bytes that arrive after their job finished still show, after its log.
    events.insert(5, out("build", b"late line\n"));
    for e in events {
        reporter.event(&e);
    }
    reporter.finish();
    let text = screen.text();
    let hide = text
        .find("\x1b[?25l")
        .unwrap_or_else(|| panic!("cursor hidden"));
    let show = text
        .rfind("\x1b[?25h")
        .unwrap_or_else(|| panic!("cursor shown"));
    assert!(hide < show);
    // What stays in the scrollback: each log under its header in finishing order, then the
    // summary. Erase sequences and redrawn blocks are gone once the terminal applies them, so
    // look at the text after the last erase of each block.
    let logs_start = text
        .find("── ✔ build (build) passed in 1.5s")
        .unwrap_or_else(|| panic!("{}", visible(&text)));
    let lint = text
        .find("── ⚠ lint (test) failed (allowed) in 2.1s")
        .unwrap_or_else(|| panic!("{}", visible(&text)));
    let t1 = text
        .find("── ✔ test 1/2 (test) passed in 4.2s")
        .unwrap_or_else(|| panic!("{}", visible(&text)));
    let t2 = text
        .find("── ✘ test 2/2 (test) failed in 4.8s (exit code 1)")
        .unwrap_or_else(|| panic!("{}", visible(&text)));
    assert!(logs_start < lint && lint < t1 && t1 < t2);
    let test1 = &text[t1..t2];
    assert!(
        test1.contains("$ cargo test --part 1\nrunning 12 tests\ntest result: ok. 12 passed\n"),
        "the log is whole: {}",
        visible(test1)
    );
    let build = &text[logs_start..lint];
    assert!(build.contains("Executing \"step_script\" stage of the job script\n"));
    assert!(build.contains("compiling wörld\nDownloading 100%\n"));
    assert!(build.contains("late line\n"), "{}", visible(build));
    assert!(!text.contains("interrupted"));
    assert!(!text.contains("section_"));
    let summary = text
        .rfind("job       stage")
        .unwrap_or_else(|| panic!("summary: {}", visible(&text)));
    assert!(summary > t2 && summary < show);
    assert!(text[summary..].contains("✘ Pipeline failed in 6.4s"));
}

#[test]
fn live_reporter_dropped_mid_run_prints_unfinished_logs() {
    let screen = Shared::default();
    {
        let mut reporter = LiveReporter::with_writer(screen.clone(), 80, 24, true);
        for e in &script()[..9] {
            reporter.event(e);
        }
        // Dropped without finish: as when the caller bails out after Ctrl-C or a panic.
    }
    let text = screen.text();
    assert!(
        text.ends_with("\x1b[?25h"),
        "cursor restored last: {}",
        visible(&text)
    );
    let plain = console::strip_ansi_codes(&text);
    assert!(plain.contains("── test 1/2 (test) interrupted"), "{plain}");
    assert!(plain.contains("$ cargo test --part 1\nrunning 12 te\n"));
    assert!(plain.contains("■ Pipeline did not finish"));
}

#[test]
fn live_frame_collapses_many_jobs_and_keeps_running_ones() {
    let t0 = Instant::now();
    let names: Vec<String> = (1..=20).map(|i| format!("job {i}/20")).collect();
    let mut events = vec![Event::PipelineStarted {
        stages: vec!["test".to_owned()],
        jobs: names.iter().map(|n| job(n, "test", None)).collect(),
    }];
    for (i, name) in names.iter().enumerate().take(9) {
        events.push(start(name));
        events.push(out(name, format!("working on part {i}\n").as_bytes()));
        match i {
            0..=4 => events.push(done(name, JobStatus::Success, 1000, None)),
            5 => events.push(done(name, JobStatus::Failed, 1200, Some(2))),
            _ => {}
        }
    }
    let state = state_at(&events, t0, Duration::from_millis(100));
    let now = t0 + Duration::from_secs(5);
    let frame = render_frame(&state, 80, 10, now, false);
    assert!(frame.lines().count() <= 9, "{frame}");
    insta::assert_snapshot!(frame);
    // Even fewer rows than running jobs: the overflow is counted, never drawn off screen.
    let tiny = render_frame(&state, 80, 5, now, false);
    assert!(tiny.lines().count() <= 4, "{tiny}");
    insta::assert_snapshot!(tiny);
}

#[test]
fn live_reporter_restores_the_cursor_when_a_panic_unwinds() {
    let screen = Shared::default();
    let writer = screen.clone();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let mut reporter = LiveReporter::with_writer(writer, 80, 24, false);
        for e in &script()[..3] {
            reporter.event(e);
        }
        panic!("the caller panics mid-run");
    }));
    assert!(result.is_err());
    let text = screen.text();
    assert!(text.contains("\x1b[?25l"), "the cursor was hidden");
    assert!(
        text.ends_with("\x1b[?25h"),
        "and is shown again: {}",
        visible(&text)
    );
}
