//! The output limit, the checksum and the size reported in the final update.

use runnel_trace::{JobTrace, Stream, TraceConfig, format};

use crate::{contents, run};

fn limited(limit_bytes: usize) -> TraceConfig {
    TraceConfig {
        limit_bytes,
        ..TraceConfig::default()
    }
}

#[test]
fn the_limit_notice_is_appended_once_and_the_rest_dropped() {
    let log = run(limited(16), &[b"0123456789", b"abcdefghij", b"dropped\n"]);
    insta::assert_debug_snapshot!(log);
}

#[test]
fn the_cut_never_splits_a_character() {
    // The limit of 9 bytes falls in the middle of the second "€" (bytes 7..10).
    let log = run(limited(9), &["abcd€€".as_bytes()]);
    assert_eq!(log, format!("abcd€{}", format::limit_exceeded(9)));
}

#[test]
fn the_log_stays_bounded() {
    let trace = JobTrace::new(limited(1000)).unwrap();
    let mut writer = trace.writer(Stream::SCRIPT_STDOUT);
    for _ in 0..1000 {
        writer.write_bytes(b"a line of output that keeps coming\n");
    }
    assert!(trace.is_truncated());
    assert_eq!(trace.len(), 1000 + format::limit_exceeded(1000).len());
}

#[test]
fn checksum_and_bytesize_of_a_known_log() {
    let trace = JobTrace::new(TraceConfig::default()).unwrap();
    assert_eq!(trace.checksum(), "crc32:00000000");
    trace
        .writer(Stream::SCRIPT_STDOUT)
        .write_bytes(b"123456789");
    // The CRC-32/IEEE check value.
    assert_eq!(trace.checksum(), "crc32:cbf43926");
    assert_eq!(trace.bytesize(), 9);
}

#[test]
fn checksum_covers_the_limit_notice() {
    let trace = JobTrace::new(limited(4)).unwrap();
    trace
        .writer(Stream::SCRIPT_STDOUT)
        .write_bytes(b"123456789");
    let stored = contents(&trace);
    assert_eq!(
        trace.checksum(),
        format!("crc32:{:08x}", crc32fast::hash(&stored))
    );
    assert_eq!(trace.bytesize(), stored.len());
}
