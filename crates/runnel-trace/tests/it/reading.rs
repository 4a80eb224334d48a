//! How the uploader reads the log: offsets, chunk sizes and change notification.

use std::sync::Arc;

use runnel_trace::{JobTrace, MAX_READ_BYTES, Stream, TraceConfig, TraceError};

#[test]
fn reads_work_at_every_offset_up_to_the_end() {
    let trace = JobTrace::new(TraceConfig::default()).unwrap();
    let text = b"0123456789abcdefghij";
    trace.writer(Stream::SCRIPT_STDOUT).write_bytes(text);
    for offset in 0..=text.len() {
        for max in [0, 1, 3, 100] {
            let chunk = trace.read_from(offset, max).unwrap();
            let end = (offset + max).min(text.len());
            assert_eq!(&chunk[..], &text[offset..end], "offset {offset}, max {max}");
        }
    }
    // Restarting from 0 (after a 412) returns the same bytes again.
    assert_eq!(&trace.read_from(0, 100).unwrap()[..], text);
}

#[test]
fn reading_past_the_end_is_an_error() {
    let trace = JobTrace::new(TraceConfig::default()).unwrap();
    trace.writer(Stream::SCRIPT_STDOUT).write_bytes(b"abc");
    let error = trace.read_from(4, 10).unwrap_err();
    assert!(matches!(
        error,
        TraceError::OffsetBeyondEnd { offset: 4, len: 3 }
    ));
    assert_eq!(
        error.to_string(),
        "failed to read the job log from offset 4: it holds 3 bytes"
    );
}

#[test]
fn reads_are_capped_at_one_patch() {
    let trace = JobTrace::new(TraceConfig::default()).unwrap();
    let big = vec![b'x'; MAX_READ_BYTES + 10];
    trace.writer(Stream::SCRIPT_STDOUT).write_bytes(&big);
    assert_eq!(
        trace.read_from(0, usize::MAX).unwrap().len(),
        MAX_READ_BYTES
    );
    assert_eq!(
        trace.read_from(MAX_READ_BYTES, usize::MAX).unwrap().len(),
        10
    );
}

#[tokio::test]
async fn a_write_wakes_a_waiting_reader() {
    let trace = JobTrace::new(TraceConfig::default()).unwrap();
    let reader = tokio::spawn({
        let trace = trace.clone();
        async move {
            trace.changed(0).await;
            trace.read_from(0, MAX_READ_BYTES).unwrap()
        }
    });
    tokio::task::yield_now().await;
    assert!(!reader.is_finished(), "nothing was written yet");
    trace
        .writer(Stream::SCRIPT_STDOUT)
        .write_bytes(b"first bytes");
    assert_eq!(&reader.await.unwrap()[..], b"first bytes");
}

#[tokio::test]
async fn finish_wakes_a_waiting_reader() {
    let trace = JobTrace::new(TraceConfig::default()).unwrap();
    trace.println("done");
    let seen = trace.len();
    let reader = tokio::spawn({
        let trace = trace.clone();
        async move { trace.changed(seen).await }
    });
    tokio::task::yield_now().await;
    assert!(!reader.is_finished());
    trace.finish();
    reader.await.unwrap();
    assert!(trace.is_finished());
}

#[tokio::test]
async fn changed_returns_at_once_when_there_is_unseen_data() {
    let trace = JobTrace::new(TraceConfig::default()).unwrap();
    trace.println("already there");
    trace.changed(0).await;
}

#[test]
fn the_handle_is_shared_across_threads() {
    let trace = Arc::new(JobTrace::new(TraceConfig::default()).unwrap());
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let trace = JobTrace::clone(&trace);
            std::thread::spawn(move || {
                let mut writer =
                    trace.writer(Stream::new(0x0f + i, runnel_trace::StreamKind::Stdout));
                for _ in 0..100 {
                    writer.write_bytes(b"0123456789\n");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(trace.len(), 4 * 100 * 11);
}

#[test]
fn writes_after_finish_are_dropped() {
    let trace = JobTrace::new(TraceConfig::default()).unwrap();
    let mut writer = trace.writer(Stream::SCRIPT_STDOUT);
    writer.write_bytes(b"kept\n");
    trace.finish();
    writer.write_bytes(b"dropped\n");
    trace.println("dropped too");
    assert_eq!(&trace.read_from(0, 100).unwrap()[..], b"kept\n");
}

#[test]
fn handles_can_move_between_tasks() {
    fn shared<T: Send + Sync + Clone>() {}
    fn owned<T: Send>() {}
    shared::<JobTrace>();
    owned::<runnel_trace::TraceWriter>();
}

#[test]
fn a_recovered_log_keeps_its_bytes_and_checksum_unfiltered() {
    // What a journal holds was filtered when it was written: reading it back must not mask,
    // repair or stamp it again.
    let bytes = b"glpat-[MASKED] \xff raw\n";
    let recovered = JobTrace::recovered(bytes).unwrap();
    assert!(recovered.is_finished());
    assert_eq!(&recovered.read_from(0, 100).unwrap()[..], bytes);
    assert_eq!(recovered.bytesize(), bytes.len());
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(bytes);
    assert_eq!(recovered.crc32(), hasher.finalize());
    // Nothing more can be written to it.
    recovered.println("late");
    assert_eq!(recovered.len(), bytes.len());
}
