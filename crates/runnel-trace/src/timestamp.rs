//! Per-line timestamps in the `FF_TIMESTAMPS` format of the official runner.
//!
//! Every line gets the header `YYYY-MM-DDTHH:MM:SS.ffffffZ <id><O|E><flag>`: the UTC time
//! the line started, the stream id as two hex digits, `O` or `E` for stdout or stderr, and
//! `+` when the line continues the previous one (else a space). A partial line is kept
//! back until its newline arrives, so that lines of different streams never interleave
//! mid-line; three things release it early, each ending the emitted line with `\n` and
//! marking the next one `+`: a write containing `\r` but no `\n` (progress bars), a
//! partial line longer than 8 KiB, and a flush. The clock is injectable for tests.

use std::fmt;
use std::sync::Arc;

use time::{OffsetDateTime, UtcOffset};

use crate::pipeline::{Output, Stage};
use crate::{Stream, StreamKind};

/// A partial line longer than this is released without waiting for its newline.
const MAX_PARTIAL_LINE: usize = 8 * 1024;

/// Where timestamps come from.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current time (any offset; it is converted to UTC).
    fn now(&self) -> OffsetDateTime;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// The timestamp stage of one stream.
pub(crate) struct Timestamper {
    clock: Arc<dyn Clock>,
    stream: Stream,
    /// A line without its newline yet, header included.
    partial: Vec<u8>,
    /// Whether the next header continues the previous line.
    continuation: bool,
    /// `YYYY-MM-DDTHH:MM:SS.` of the last header and its unix second, reused while the
    /// second stays the same.
    date: Vec<u8>,
    date_second: Option<i64>,
    /// The header of the lines of the current write, without the continuation flag; empty
    /// until the first line of the write needs it.
    stamp: Vec<u8>,
}

impl Timestamper {
    pub(crate) fn new(clock: Arc<dyn Clock>, stream: Stream) -> Self {
        Self {
            clock,
            stream,
            partial: Vec::new(),
            continuation: false,
            date: Vec::with_capacity(20),
            date_second: None,
            stamp: Vec::with_capacity(40),
        }
    }

    /// Starts a line in `out`: either the kept-back partial line or a fresh header.
    fn start_line(&mut self, out: &mut Vec<u8>) {
        if self.partial.is_empty() {
            self.push_header(out);
        } else {
            out.append(&mut self.partial);
        }
    }

    fn push_header(&mut self, out: &mut Vec<u8>) {
        if self.stamp.is_empty() {
            self.read_clock();
        }
        out.extend_from_slice(&self.stamp);
        out.push(if self.continuation { b'+' } else { b' ' });
        self.continuation = false;
    }

    /// Reads the clock into `stamp`: everything of a header but the continuation flag.
    fn read_clock(&mut self) {
        let now = self.clock.now().to_offset(UtcOffset::UTC);
        if self.date_second != Some(now.unix_timestamp()) {
            self.date_second = Some(now.unix_timestamp());
            self.date.clear();
            format_date(&mut self.date, now);
        }
        let stamp = &mut self.stamp;
        stamp.clear();
        stamp.extend_from_slice(&self.date);
        push_digits(stamp, now.microsecond(), 6);
        stamp.extend_from_slice(b"Z ");
        stamp.extend_from_slice(&hex_byte(self.stream.id));
        stamp.push(match self.stream.kind {
            StreamKind::Stdout => b'O',
            StreamKind::Stderr => b'E',
        });
    }

    /// Emits the current line with `rest` appended, ends it, and marks the next line as
    /// its continuation.
    fn break_line(&mut self, rest: &[u8], out: &mut Vec<u8>) {
        self.start_line(out);
        out.extend_from_slice(rest);
        out.push(b'\n');
        self.continuation = true;
    }
}

impl Stage for Timestamper {
    fn write(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Output {
        // The lines of one write arrived together: they share one reading of the clock
        // (read on the first header; a chatty job prints hundreds of lines per write).
        self.stamp.clear();
        while let Some(newline) = memchr::memchr(b'\n', input) {
            let (line, rest) = input.split_at(newline + 1);
            self.start_line(out);
            out.extend_from_slice(line);
            input = rest;
        }
        if input.is_empty() {
            return Output::Written;
        }
        if memchr::memchr(b'\r', input).is_some()
            || self.partial.len() + input.len() > MAX_PARTIAL_LINE
        {
            self.break_line(input, out);
            return Output::Written;
        }
        if self.partial.is_empty() {
            let mut partial = std::mem::take(&mut self.partial);
            self.push_header(&mut partial);
            self.partial = partial;
        }
        self.partial.extend_from_slice(input);
        Output::Written
    }

    fn flush(&mut self, out: &mut Vec<u8>) {
        if !self.partial.is_empty() {
            self.break_line(&[], out);
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS.`
fn format_date(out: &mut Vec<u8>, now: OffsetDateTime) {
    push_digits(out, now.year().unsigned_abs(), 4);
    out.push(b'-');
    push_digits(out, u8::from(now.month()).into(), 2);
    out.push(b'-');
    push_digits(out, now.day().into(), 2);
    out.push(b'T');
    push_digits(out, now.hour().into(), 2);
    out.push(b':');
    push_digits(out, now.minute().into(), 2);
    out.push(b':');
    push_digits(out, now.second().into(), 2);
    out.push(b'.');
}

fn push_digits(out: &mut Vec<u8>, mut value: u32, width: usize) {
    let mut digits = [b'0'; 10];
    for digit in digits[..width].iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
    out.extend_from_slice(&digits[..width]);
}

fn hex_byte(byte: u8) -> [u8; 2] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    [HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 0x0f)]]
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use time::macros::datetime;

    use super::*;
    use crate::pipeline::write_through;

    /// A clock that advances one millisecond every time it is read.
    #[derive(Debug)]
    struct TickingClock(Mutex<OffsetDateTime>);

    impl Clock for TickingClock {
        fn now(&self) -> OffsetDateTime {
            let mut now = self.0.lock().unwrap();
            let current = *now;
            *now += time::Duration::milliseconds(1);
            current
        }
    }

    fn stamp(stream: Stream, parts: &[&str]) -> String {
        stamp_from(datetime!(2026-01-01 10:00:00.123456 UTC), stream, parts)
    }

    fn stamp_from(start: OffsetDateTime, stream: Stream, parts: &[&str]) -> String {
        let clock = Arc::new(TickingClock(Mutex::new(start)));
        let mut stage = Timestamper::new(clock, stream);
        let mut out = Vec::new();
        for part in parts {
            write_through(&mut stage, part.as_bytes(), &mut out);
        }
        stage.flush(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn every_line_gets_a_header() {
        insta::assert_snapshot!(stamp(
            Stream::SCRIPT_STDOUT,
            &["one\ntwo\n", "thr", "ee\nfour"]
        ));
    }

    #[test]
    fn carriage_returns_release_the_line_and_mark_a_continuation() {
        let out = stamp(
            Stream::new(0x0f, StreamKind::Stderr),
            &["10%\r", "50%\r", "done\n"],
        );
        assert_eq!(
            out,
            "2026-01-01T10:00:00.123456Z 0fE 10%\r\n\
             2026-01-01T10:00:00.124456Z 0fE+50%\r\n\
             2026-01-01T10:00:00.125456Z 0fE+done\n"
        );
    }

    #[test]
    fn a_long_partial_line_is_released() {
        let long = "x".repeat(MAX_PARTIAL_LINE + 1);
        let out = stamp(Stream::RUNNER, &[&long, "y\n"]);
        let expected =
            format!("2026-01-01T10:00:00.123456Z 00O {long}\n2026-01-01T10:00:00.124456Z 00O+y\n");
        assert_eq!(out, expected);
    }

    #[test]
    fn the_date_follows_the_clock_across_seconds() {
        let start = datetime!(2026-12-31 23:59:59.9995 +01:00);
        let out = stamp_from(start, Stream::RUNNER, &["a\n", "b\n"]);
        assert_eq!(
            out,
            "2026-12-31T22:59:59.999500Z 00O a\n2026-12-31T23:00:00.000500Z 00O b\n"
        );
    }

    #[test]
    fn the_lines_of_one_write_share_one_reading_of_the_clock() {
        // The ticking clock advances on every read: one reading per write, not per line.
        let out = stamp(Stream::SCRIPT_STDOUT, &["a\nb\nc\n", "d\n"]);
        assert_eq!(
            out,
            "2026-01-01T10:00:00.123456Z 01O a\n\
             2026-01-01T10:00:00.123456Z 01O b\n\
             2026-01-01T10:00:00.123456Z 01O c\n\
             2026-01-01T10:00:00.124456Z 01O d\n"
        );
    }
}
