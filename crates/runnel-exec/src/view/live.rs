//! The live terminal view: a block pinned under the output, redrawn eight times a second,
//! with each job's state, stage and elapsed time and the last lines of the running ones.
//!
//! Full job logs (colours and section headers kept) are printed above the block *when a job
//! finishes*, each as one uninterrupted piece under a header line. Streaming them as they come
//! would interleave the lines of concurrent jobs, which is what the plain view is for; here the
//! block already shows what each running job is doing, and the scrollback ends up holding every
//! log whole, in the order the jobs finished. A run that is interrupted prints the logs of the
//! jobs that had not finished, so nothing is lost.
//!
//! What the block shows is [`render_frame`], a pure function of the state, the terminal size
//! and a clock reading; the reporter only moves the cursor and writes frames. The cursor is
//! hidden while the block is shown and restored by [`Reporter::finish`] and on drop (a panic
//! unwinding, or the caller returning early after Ctrl-C).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use console::{Style, Term};

use super::{
    LineBuffer, PipelineState, clean_line, fit, format_duration, pad, paint, render_summary,
    status_look,
};
use crate::event::{Event, JobStatus, Reporter};

/// How often the block is redrawn without events (for elapsed times and spinners).
const REDRAW_EVERY: Duration = Duration::from_millis(125);
/// Log output redraws the block at most this often (the ticker catches up in between).
const OUTPUT_REDRAW_MIN: Duration = Duration::from_millis(50);
/// Spinner frames of running jobs, one per 100 ms.
const SPINNER: [&str; 10] = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];
const HIDE_CURSOR: &str = "\x1b[?25l";
const SHOW_CURSOR: &str = "\x1b[?25h";

/// The block for `state` on a terminal of `width` × `height` at `now`: every line ends in
/// `\n` and is at most `width - 1` columns wide (so the terminal never wraps it), and the
/// block never has more than `height - 1` lines (so it can always be redrawn in place).
///
/// When every job fits, each gets a line and running jobs share the spare lines for their last
/// log lines (up to three each); otherwise running and failed jobs keep their lines and the
/// others are counted on one line.
pub fn render_frame(
    state: &PipelineState,
    width: usize,
    height: usize,
    now: Instant,
    colour: bool,
) -> String {
    if state.jobs.is_empty() {
        return String::new();
    }
    let width = width.saturating_sub(1).max(20);
    let budget = height.saturating_sub(2).max(3);
    let since_start = state
        .started
        .map(|s| now.saturating_duration_since(s))
        .unwrap_or_default();
    let spinner = SPINNER[(since_start.as_millis() / 100) as usize % SPINNER.len()];

    let all: Vec<usize> = (0..state.jobs.len()).collect();
    let (shown, collapsed): (Vec<usize>, Vec<usize>) = if all.len() <= budget {
        (all, Vec::new())
    } else {
        all.into_iter()
            .partition(|&i| matches!(state.jobs[i].status, JobStatus::Running | JobStatus::Failed))
    };
    let mut rows_left = budget - usize::from(!collapsed.is_empty());
    // Too many to show even so: running jobs first, one line counts the rest.
    let (shown, hidden_running) = if shown.len() > rows_left {
        let keep = rows_left.saturating_sub(1);
        let running = |i: &usize| state.jobs[*i].status == JobStatus::Running;
        let mut pick: Vec<usize> = shown
            .iter()
            .copied()
            .filter(running)
            .chain(shown.iter().copied().filter(|i| !running(i)))
            .take(keep)
            .collect();
        pick.sort_unstable();
        let hidden = shown.len() - pick.len();
        (pick, hidden)
    } else {
        (shown, 0)
    };
    rows_left = rows_left.saturating_sub(shown.len() + usize::from(hidden_running > 0));
    let running_shown = shown
        .iter()
        .filter(|&&i| state.jobs[i].status == JobStatus::Running)
        .count();
    let tail_each = rows_left
        .checked_div(running_shown)
        .unwrap_or(0)
        .min(super::TAIL_LINES);

    let name_width = shown
        .iter()
        .map(|&i| console::measure_text_width(&state.jobs[i].name))
        .max()
        .unwrap_or(0)
        .min(32);
    let stage_width = shown
        .iter()
        .map(|&i| console::measure_text_width(&state.jobs[i].stage))
        .max()
        .unwrap_or(0)
        .min(16);
    let dim = Style::new().dim();

    let mut out = String::new();
    for &i in &shown {
        let job = &state.jobs[i];
        let (icon, word, style) = status_look(&job.status);
        let icon = if job.status == JobStatus::Running {
            spinner
        } else {
            icon
        };
        let info = match job.status {
            JobStatus::Pending => "waiting".to_owned(),
            JobStatus::Running => job.elapsed(now).map(format_duration).unwrap_or_default(),
            JobStatus::Skipped => match &job.skip_reason {
                Some(why) => format!("{word}: {why}"),
                None => word.to_owned(),
            },
            _ => {
                let mut info = job.elapsed(now).map(format_duration).unwrap_or_default();
                if let Some(code) = job.result.as_ref().and_then(|r| r.exit_code) {
                    write!(info, "  {word}, exit code {code}").ok();
                } else {
                    write!(info, "  {word}").ok();
                }
                info
            }
        };
        let plain = format!(
            "{icon} {}  {}  {}",
            pad(&fit(&printable(&job.name), name_width), name_width),
            pad(&fit(&printable(&job.stage), stage_width), stage_width),
            printable(&info),
        );
        let plain = fit(&plain, width);
        // Colour the icon; dim what will not (or not yet) run.
        let line = if colour {
            let rest: String = plain.chars().skip(icon.chars().count()).collect();
            let quiet = matches!(job.status, JobStatus::Pending | JobStatus::Skipped);
            let rest = if quiet {
                paint(true, &dim, &rest)
            } else {
                rest
            };
            format!("{}{rest}", paint(true, &style, icon))
        } else {
            plain
        };
        out.push_str(line.trim_end());
        out.push('\n');
        if job.status == JobStatus::Running && tail_each > 0 {
            let mut lines: Vec<String> = job.tail.iter().cloned().collect();
            if let Some(partial) = job.partial_line() {
                lines.push(partial);
            }
            let skip = lines.len().saturating_sub(tail_each);
            for line in &lines[skip..] {
                let text = fit(&format!("    │ {}", printable(line)), width);
                out.push_str(&paint(colour, &dim, text.trim_end()));
                out.push('\n');
            }
        }
    }
    if hidden_running > 0 {
        let text = fit(
            &format!("  … and {hidden_running} more running or failed"),
            width,
        );
        out.push_str(&paint(colour, &dim, &text));
        out.push('\n');
    }
    let counts = state.counts();
    if !collapsed.is_empty() {
        let mut parts = Vec::new();
        for (n, status) in [
            (counts.passed, JobStatus::Success),
            (counts.allowed, JobStatus::FailedAllowed),
            (counts.canceled, JobStatus::Canceled),
            (counts.pending, JobStatus::Pending),
            (counts.skipped, JobStatus::Skipped),
        ] {
            if n > 0 {
                let (icon, word, style) = status_look(&status);
                let word = if status == JobStatus::Pending {
                    "waiting"
                } else {
                    word
                };
                parts.push(paint(colour, &style, &format!("{icon} {n} {word}")));
            }
        }
        out.push_str(&fit(&parts.join("  "), width));
        out.push('\n');
    }
    let to_run = state
        .jobs
        .iter()
        .filter(|j| j.skip_reason.is_none())
        .count();
    let done = state
        .jobs
        .iter()
        .filter(|j| j.skip_reason.is_none() && j.status.is_final())
        .count();
    let failed = if counts.failed > 0 {
        paint(
            colour,
            &Style::new().red().bold(),
            &format!(" · {} failed", counts.failed),
        )
    } else {
        String::new()
    };
    let footer = format!(
        "{done}/{to_run} jobs done · {} running{failed} · {}",
        counts.running,
        format_duration(since_start)
    );
    out.push_str(&fit(&paint(colour, &Style::new().bold(), &footer), width));
    out.push('\n');
    out
}

/// `text` with tabs as spaces and no other control characters, so its measured width is the
/// width a terminal gives it.
fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\t' => out.push_str("    "),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// Where the terminal's size comes from.
#[derive(Debug)]
enum Size {
    Term(Term),
    Fixed(usize, usize),
}

impl Size {
    fn get(&self) -> (usize, usize) {
        match self {
            Self::Term(term) => {
                let (rows, cols) = term.size();
                (usize::from(cols), usize::from(rows))
            }
            Self::Fixed(w, h) => (*w, *h),
        }
    }
}

struct Inner {
    out: Box<dyn Write + Send>,
    size: Size,
    colour: bool,
    state: PipelineState,
    /// The log bytes of each job that has not finished yet.
    logs: HashMap<String, Vec<u8>>,
    /// Lines of the block currently on screen, under the cursor's line.
    drawn: usize,
    cursor_hidden: bool,
    /// When the block was last drawn.
    last_draw: Option<Instant>,
    /// The summary was printed; nothing is drawn any more.
    done: bool,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("size", &self.size)
            .field("colour", &self.colour)
            .field("drawn", &self.drawn)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Inner {
    /// Cursor movements that erase the block.
    fn erase(&self) -> String {
        if self.drawn == 0 {
            String::new()
        } else {
            format!("\x1b[{}A\r\x1b[J", self.drawn)
        }
    }

    /// Erases the block, writes `above` (which then scrolls with the output), and draws the
    /// block again, all in one write so the terminal never shows a half-drawn state.
    fn draw(&mut self, above: &str, now: Instant) {
        if self.done {
            return;
        }
        let (width, height) = self.size.get();
        let frame = render_frame(&self.state, width, height, now, self.colour);
        let mut buf = String::new();
        if !self.cursor_hidden {
            buf.push_str(HIDE_CURSOR);
            self.cursor_hidden = true;
        }
        buf.push_str(&self.erase());
        buf.push_str(above);
        buf.push_str(&frame);
        self.drawn = frame.matches('\n').count();
        self.last_draw = Some(now);
        self.out.write_all(buf.as_bytes()).ok();
        self.out.flush().ok();
    }

    /// A job's whole log, cleaned, under a header line saying how it ended.
    fn log_block(&self, name: &str, bytes: &[u8], interrupted: bool) -> String {
        let (width, _) = self.size.get();
        let mut out = String::new();
        let job = self.state.job(name);
        let status = job.map_or(JobStatus::Running, |j| j.status.clone());
        let (icon, word, style) = status_look(&status);
        let stage = job.map(|j| j.stage.as_str()).unwrap_or_default();
        let mut title = if interrupted {
            format!("── {name} ({stage}) interrupted")
        } else {
            format!("── {icon} {name} ({stage}) {word}")
        };
        if !interrupted && let Some(result) = job.and_then(|j| j.result.as_ref()) {
            write!(title, " in {}", format_duration(result.duration)).ok();
            if let Some(code) = result.exit_code {
                write!(title, " (exit code {code})").ok();
            }
        }
        title.push(' ');
        let fill = width
            .saturating_sub(1)
            .saturating_sub(console::measure_text_width(&title))
            .min(80);
        title.push_str(&"─".repeat(fill));
        out.push_str(&paint(self.colour, &style.bold(), &title));
        out.push('\n');
        out.push_str(&self.log_lines(bytes));
        out
    }

    /// Log bytes as cleaned lines, each ending in a colour reset and `\n`.
    fn log_lines(&self, bytes: &[u8]) -> String {
        let mut out = String::new();
        let reset = if self.colour { "\x1b[0m" } else { "" };
        let mut lines = LineBuffer::default();
        let mut push = |raw: &str| {
            if let Some(line) = clean_line(raw, self.colour) {
                out.push_str(&line);
                out.push_str(reset);
                out.push('\n');
            }
        };
        lines.push(bytes, &mut push);
        lines.flush(&mut push);
        out
    }

    fn event(&mut self, event: &Event, now: Instant) {
        if self.done {
            return;
        }
        self.state.apply(event, now);
        match event {
            Event::JobOutput { name, bytes } => {
                if self.state.job(name).is_some_and(|j| j.status.is_final()) {
                    // Late bytes of a job whose log was already printed: print them now, under
                    // it, rather than holding them until the end.
                    let text = self.log_lines(bytes);
                    self.draw(&text, now);
                    return;
                }
                self.logs
                    .entry(name.clone())
                    .or_default()
                    .extend_from_slice(bytes);
                let recent = self
                    .last_draw
                    .is_some_and(|t| now.saturating_duration_since(t) < OUTPUT_REDRAW_MIN);
                if !recent {
                    self.draw("", now);
                }
            }
            Event::JobFinished { name, .. } => {
                let ran = self.state.job(name).is_some_and(|j| j.started.is_some());
                let bytes = self.logs.remove(name).unwrap_or_default();
                let above = if ran || !bytes.is_empty() {
                    self.log_block(name, &bytes, false)
                } else {
                    String::new()
                };
                self.draw(&above, now);
            }
            Event::PipelineFinished { .. } => self.close(),
            Event::PipelineStarted { .. } | Event::JobStarted { .. } => self.draw("", now),
        }
    }

    /// Prints what is left (logs of unfinished jobs, the summary) and restores the cursor.
    fn close(&mut self) {
        if self.done {
            return;
        }
        let mut above = String::new();
        let mut names: Vec<String> = self.logs.keys().cloned().collect();
        names.sort_by_key(|n| self.state.jobs.iter().position(|j| j.name == *n));
        for name in names {
            if let Some(bytes) = self.logs.remove(&name) {
                above.push_str(&self.log_block(&name, &bytes, true));
            }
        }
        let mut buf = self.erase();
        buf.push_str(&above);
        if self.state.started.is_some() {
            buf.push('\n');
            buf.push_str(&render_summary(&self.state, self.colour));
        }
        if self.cursor_hidden {
            buf.push_str(SHOW_CURSOR);
            self.cursor_hidden = false;
        }
        self.drawn = 0;
        self.done = true;
        self.out.write_all(buf.as_bytes()).ok();
        self.out.flush().ok();
    }
}

/// The live view for a terminal (see the module documentation).
#[derive(Debug)]
pub struct LiveReporter {
    inner: Arc<Mutex<Inner>>,
    stop: Option<mpsc::Sender<()>>,
    ticker: Option<JoinHandle<()>>,
}

impl LiveReporter {
    /// A live view on standard output, sized to the terminal; `colour` keeps the jobs' colours
    /// and colours the block.
    pub fn stdout(colour: bool) -> Self {
        let term = Term::stdout();
        Self::start(Box::new(term.clone()), Size::Term(term), colour)
    }

    /// A live view writing to `out` as if it were a `width` × `height` terminal.
    pub fn with_writer(
        out: impl Write + Send + 'static,
        width: usize,
        height: usize,
        colour: bool,
    ) -> Self {
        Self::start(Box::new(out), Size::Fixed(width, height), colour)
    }

    fn start(out: Box<dyn Write + Send>, size: Size, colour: bool) -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            out,
            size,
            colour,
            state: PipelineState::default(),
            logs: HashMap::new(),
            drawn: 0,
            cursor_hidden: false,
            last_draw: None,
            done: false,
        }));
        let (stop, stopped) = mpsc::channel::<()>();
        let ticking = Arc::clone(&inner);
        let ticker = std::thread::Builder::new()
            .name("runnel-live-view".to_owned())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(REDRAW_EVERY) {
                    let mut inner = ticking.lock().unwrap_or_else(PoisonError::into_inner);
                    if inner.drawn > 0 {
                        inner.draw("", Instant::now());
                    }
                }
            })
            .ok();
        Self {
            inner,
            stop: Some(stop),
            ticker,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Reporter for LiveReporter {
    fn event(&mut self, event: &Event) {
        self.lock().event(event, Instant::now());
    }

    fn finish(&mut self) {
        // Stop redrawing first, so the last thing written is the summary.
        self.stop.take();
        if let Some(ticker) = self.ticker.take() {
            ticker.join().ok();
        }
        self.lock().close();
    }
}

impl Drop for LiveReporter {
    fn drop(&mut self) {
        self.finish();
    }
}
