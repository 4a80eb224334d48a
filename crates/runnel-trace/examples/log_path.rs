//! The masked log path without the network: `MB` megabytes of output, every line holding a
//! masked value, written through a job trace in 64 KiB pipe-sized writes, while the copy the
//! job journal makes (1 MiB reads appended to a file) follows. Prints MB/s; run it under
//! `valgrind --tool=callgrind` for instruction counts that do not depend on the machine's load.
//!
//! `cargo run --release -p runnel-trace --example log_path -- [MB] [journal-file]`

use std::io::Write as _;
use std::time::Instant;

use runnel_trace::{JobTrace, MAX_READ_BYTES, Stream, TraceConfig};
use runnel_types::Secret;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let megabytes: usize = args.next().map_or(Ok(64), |a| a.parse())?;
    let journal_path = args.next().map_or_else(
        || std::env::temp_dir().join("runnel-log-path.log"),
        Into::into,
    );
    let secret = "bench-secret-value-0123456789";
    let trace = JobTrace::new(TraceConfig {
        masked: vec![Secret::new(secret)],
        limit_bytes: megabytes * 1024 * 1024 + 1024 * 1024,
        ..TraceConfig::default()
    })?;
    let line = format!("{:0>60} {secret} and some more text on the line\n", 0);
    let mut chunk = Vec::with_capacity(64 * 1024);
    while chunk.len() + line.len() <= 64 * 1024 {
        chunk.extend_from_slice(line.as_bytes());
    }
    let total = megabytes * 1024 * 1024;
    let mut journal = std::fs::File::create(&journal_path)?;
    let mut journaled = 0usize;
    let started = Instant::now();
    let mut writer = trace.writer(Stream::SCRIPT_STDOUT);
    let mut written = 0usize;
    while written < total {
        writer.write_bytes(&chunk);
        written += chunk.len();
        // The journal follower's share: what is new, in reads of at most 1 MiB.
        loop {
            let bytes = trace.read_from(journaled, MAX_READ_BYTES)?;
            if bytes.is_empty() {
                break;
            }
            journal.write_all(&bytes)?;
            journaled += bytes.len();
        }
    }
    writer.finish();
    trace.finish();
    let elapsed = started.elapsed();
    let stored = trace.len();
    println!(
        "{} MB in, {} bytes stored and journaled ({journaled}), {:.1} MB/s",
        megabytes,
        stored,
        written as f64 / 1e6 / elapsed.as_secs_f64()
    );
    std::fs::remove_file(&journal_path).ok();
    Ok(())
}
