//! Integration tests of `runnel-trace` through its public API: what ends up in the job
//! log for given writes, and how the uploader reads it.

mod filtering;
mod limits;
mod messages;
mod reading;
mod streaming;

use runnel_trace::{JobTrace, MAX_READ_BYTES, Stream, TraceConfig};
use runnel_types::Secret;

/// A config that masks `values`, with everything else at its default.
pub(crate) fn masking(values: &[&str]) -> TraceConfig {
    TraceConfig {
        masked: values.iter().map(|v| Secret::new(*v)).collect(),
        ..TraceConfig::default()
    }
}

/// The whole stored log.
pub(crate) fn contents(trace: &JobTrace) -> Vec<u8> {
    let mut log = Vec::new();
    loop {
        let chunk = trace.read_from(log.len(), MAX_READ_BYTES).unwrap();
        if chunk.is_empty() {
            return log;
        }
        log.extend_from_slice(&chunk);
    }
}

/// Writes each part to the script's stdout, finishes, and returns the log as text.
pub(crate) fn run(config: TraceConfig, parts: &[&[u8]]) -> String {
    let trace = JobTrace::new(config).unwrap();
    let mut writer = trace.writer(Stream::SCRIPT_STDOUT);
    for part in parts {
        writer.write_bytes(part);
    }
    writer.finish();
    trace.finish();
    String::from_utf8(contents(&trace)).expect("the log is valid UTF-8")
}
