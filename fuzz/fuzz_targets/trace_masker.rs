//! The trace masker. Property: for any output cut into any chunks, no masked value and no token
//! body appears in the stored trace.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use runnel_trace::{JobTrace, Stream, StreamKind, TraceConfig};
use runnel_types::Secret;

#[derive(Arbitrary, Debug)]
struct Input {
    /// Masked values; GitLab requires at least 8 characters.
    secrets: Vec<Vec<u8>>,
    /// Output pieces; each may contain a secret (by index) after its bytes.
    pieces: Vec<(Vec<u8>, Option<u8>)>,
    /// Where the output is cut into writes.
    cuts: Vec<u16>,
}

/// Masked values are drawn from lowercase letters, digits and a few symbols, so the mask
/// text (`[MASKED]`) can never take part in a match of its own.
fn secret_from(raw: &[u8]) -> Option<String> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-_.:/";
    let text: String = raw
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect();
    (text.len() >= 8).then_some(text)
}

fn token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'=')
}

fuzz_target!(|input: Input| {
    let secrets: Vec<String> = input
        .secrets
        .iter()
        .take(4)
        .filter_map(|s| secret_from(s))
        .collect();
    let mut output = Vec::new();
    for (bytes, secret) in input.pieces.iter().take(64) {
        output.extend_from_slice(bytes);
        if let Some(secret) =
            secret.and_then(|i| secrets.get(usize::from(i) % secrets.len().max(1)))
        {
            output.extend_from_slice(secret.as_bytes());
        }
    }
    let config = TraceConfig {
        masked: secrets.iter().map(|s| Secret::new(s.clone())).collect(),
        ..TraceConfig::default()
    };
    let prefixes = config.token_prefixes.clone();
    let trace = JobTrace::new(config).expect("the masker builds");
    let mut writer = trace.writer(Stream::new(1, StreamKind::Stdout));
    let mut rest = output.as_slice();
    for cut in &input.cuts {
        if rest.is_empty() {
            break;
        }
        let at = usize::from(*cut) % (rest.len() + 1);
        let (chunk, tail) = rest.split_at(at);
        writer.write_bytes(chunk);
        rest = tail;
    }
    writer.write_bytes(rest);
    writer.finish();
    trace.finish();
    let stored = trace
        .read_from(0, usize::MAX)
        .expect("the trace reads back");
    let stored: &[u8] = &stored;
    for secret in &secrets {
        assert!(
            memchr::memmem::find(stored, secret.as_bytes()).is_none(),
            "masked value {secret:?} in the trace {:?}",
            String::from_utf8_lossy(stored)
        );
    }
    for prefix in &prefixes {
        for at in memchr::memmem::find_iter(stored, prefix.as_bytes()) {
            let body = &stored[at + prefix.len()..];
            assert!(
                body.starts_with(b"[MASKED]") || !body.first().is_some_and(|b| token_char(*b)),
                "token body after {prefix:?} in the trace {:?}",
                String::from_utf8_lossy(stored)
            );
        }
    }
});
