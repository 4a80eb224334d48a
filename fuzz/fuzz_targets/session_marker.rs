//! The shell session's stage-marker parser. Properties, for any output cut into any chunks:
//! output that holds no marker comes out unchanged; output followed by a marker comes out
//! unchanged and the marker's status is returned; never more than a chunk plus the marker and
//! its status is held back.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use runnel_executor::process::{MAX_STATUS, MarkerScanner};

#[derive(Arbitrary, Debug)]
struct Input {
    nonce: u64,
    output: Vec<u8>,
    /// The status bytes after the marker (`None`: the stream ends without a marker).
    status: Option<Vec<u8>>,
    after: Vec<u8>,
    cuts: Vec<u16>,
}

fuzz_target!(|input: Input| {
    let marker = format!("\0RUNNEL-{:016x}", input.nonce).into_bytes();
    // What the stage printed cannot contain the marker: it does not know the nonce.
    if memchr::memmem::find(&input.output, &marker).is_some() {
        return;
    }
    let mut stream = input.output.clone();
    let status = input
        .status
        .as_ref()
        .map(|s| s.iter().copied().filter(|&b| b != 0).collect::<Vec<u8>>());
    if let Some(status) = &status {
        stream.extend_from_slice(&marker);
        stream.extend_from_slice(status);
        stream.push(0);
        stream.extend_from_slice(&input.after);
    }
    let mut scanner = MarkerScanner::default();
    let mut out = Vec::new();
    let mut found = None;
    let mut rest = stream.as_slice();
    let mut cuts = input.cuts.iter();
    let mut largest_chunk = 0;
    while !rest.is_empty() && found.is_none() {
        let at = cuts
            .next()
            .map_or(rest.len(), |c| usize::from(*c) % rest.len() + 1);
        let (chunk, tail) = rest.split_at(at);
        largest_chunk = largest_chunk.max(chunk.len());
        rest = tail;
        scanner.push(chunk);
        match scanner.next(&marker, &mut |b| out.extend_from_slice(b)) {
            Ok(Some(status)) => found = Some(Ok(status)),
            Ok(None) => {}
            Err(error) => found = Some(Err(error)),
        }
        assert!(
            scanner.pending() <= largest_chunk + marker.len() + MAX_STATUS + 1,
            "{} bytes held back",
            scanner.pending()
        );
    }
    match (&status, found) {
        (None, None) => {
            out.extend(scanner.finish());
            assert_eq!(
                out, input.output,
                "output without a marker comes out unchanged"
            );
        }
        (Some(status), Some(Ok(parsed))) => {
            assert!(status.len() <= MAX_STATUS);
            assert_eq!(&parsed, status);
            assert_eq!(
                out, input.output,
                "output before the marker comes out unchanged"
            );
        }
        (Some(status), Some(Err(_))) => {
            assert!(status.len() > MAX_STATUS, "a valid status was refused");
            assert_eq!(out, input.output);
        }
        (expected, got) => panic!("expected status {expected:?}, got {got:?}"),
    }
});
