//! `read-logs` (hidden job helper): streams a log file from an offset, every piece prefixed with
//! the offset after it, for the kubernetes executor's attach mode (the helper container runs it
//! over exec; a broken stream resumes from the last offset it printed).
//!
//! Lines longer than 64 KiB and a last line still being written come out in pieces, each ended
//! with a newline the file does not have (the reader sees it: the piece is longer than the
//! offset moved). Exit statuses: 100 when the file is removed while read (as the official
//! helper), 1 when it does not appear within `--wait-file-timeout` or cannot be read.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use crate::cli::ReadLogsArgs;

/// Longest piece printed at once.
const PIECE: usize = 64 * 1024;
/// How often the file's appearance is checked.
const CHECK_EXISTS_INTERVAL: Duration = Duration::from_secs(1);
/// How long to wait at the end of the file before reading again (the official helper waits
/// 500 ms; every stage's exit line waits for this, so it is shorter here, at the cost of ten
/// `read` calls a second while a stage is quiet).
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// The exit status when the file was removed.
const FILE_GONE: u8 = 100;

/// Runs the command until the file is removed or the output is closed.
pub(crate) async fn run(args: ReadLogsArgs) -> anyhow::Result<ExitCode> {
    let outcome = tokio::task::spawn_blocking(move || read(&args)).await?;
    Ok(outcome)
}

fn read(args: &ReadLogsArgs) -> ExitCode {
    let wait = match parse_go_duration(&args.wait_file_timeout) {
        Some(wait) => wait,
        None => {
            return fail(
                &args.path,
                &format!(
                    "invalid --wait-file-timeout {:?} (a Go duration such as 1m0s)",
                    args.wait_file_timeout
                ),
            );
        }
    };
    let mut file = match open(&args.path, wait) {
        Ok(file) => file,
        Err(message) => return fail(&args.path, &message),
    };
    if let Err(error) = file.seek(SeekFrom::Start(args.offset)) {
        return fail(&args.path, &error.to_string());
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut offset = args.offset;
    let mut pending: Vec<u8> = Vec::with_capacity(PIECE);
    let mut chunk = vec![0u8; PIECE];
    loop {
        let n = match file.read(&mut chunk) {
            Ok(n) => n,
            Err(error) => return fail(&args.path, &error.to_string()),
        };
        let written = if n == 0 {
            let mut result = Ok(());
            if !pending.is_empty() {
                result = emit(&mut out, &mut offset, &pending);
                pending.clear();
            }
            result.and_then(|()| out.flush())
        } else {
            let mut result = Ok(());
            for byte in &chunk[..n] {
                pending.push(*byte);
                if *byte == b'\n' || pending.len() >= PIECE {
                    result = result.and_then(|()| emit(&mut out, &mut offset, &pending));
                    pending.clear();
                }
            }
            result
        };
        if written.is_err() {
            // The reader went away.
            return ExitCode::FAILURE;
        }
        if n == 0 {
            if !args.path.exists() {
                return ExitCode::from(FILE_GONE);
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }
}

fn emit(out: &mut impl Write, offset: &mut u64, piece: &[u8]) -> std::io::Result<()> {
    *offset += piece.len() as u64;
    write!(out, "{offset} ")?;
    out.write_all(piece)?;
    if piece.last() != Some(&b'\n') {
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// Opens the file, waiting for it to appear for at most `wait`.
fn open(path: &Path, wait: Duration) -> Result<File, String> {
    let attempts = wait.as_secs().max(u64::from(wait.subsec_nanos() > 0));
    if attempts == 0 {
        return Err("no attempts to open the log file configured".to_owned());
    }
    for _ in 0..attempts {
        match File::open(path) {
            Ok(file) => return Ok(file),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                std::thread::sleep(CHECK_EXISTS_INTERVAL);
            }
            Err(error) => return Err(error.to_string()),
        }
    }
    Err("timeout waiting for file to be created".to_owned())
}

fn fail(path: &Path, message: &str) -> ExitCode {
    println!("error reading logs from {}: {message}", path.display());
    ExitCode::FAILURE
}

/// A Go `time.Duration` string: `1h2m3.5s`, `500ms`, `90s`.
pub(crate) fn parse_go_duration(text: &str) -> Option<Duration> {
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_end..];
        total += number * seconds;
    }
    (total.is_finite() && total < 1e9).then(|| Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse() {
        assert_eq!(parse_go_duration("1m0s"), Some(Duration::from_secs(60)));
        assert_eq!(parse_go_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_go_duration("10"), None);
        assert_eq!(parse_go_duration(""), None);
        assert_eq!(parse_go_duration("1x"), None);
    }

    #[test]
    fn pieces_carry_the_offset_after_them() {
        let mut out = Vec::new();
        let mut offset = 10;
        emit(&mut out, &mut offset, b"hello\n").unwrap();
        emit(&mut out, &mut offset, b"part").unwrap();
        assert_eq!(out, b"16 hello\n20 part\n");
        assert_eq!(offset, 20);
    }
}
