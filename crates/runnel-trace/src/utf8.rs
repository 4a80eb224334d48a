//! Makes a byte stream valid UTF-8: every byte that is not part of a valid sequence
//! becomes U+FFFD, as the official runner's replacement encoder does.
//!
//! A character split across writes is kept whole: an incomplete sequence at the end of a
//! write waits (at most 3 bytes) for the next one. Binary output is never an error. This
//! stage does not interpret the text in any other way.

use crate::pipeline::{Output, Stage};

const REPLACEMENT: &[u8] = "\u{FFFD}".as_bytes();

/// The UTF-8 repair stage of one stream.
#[derive(Default)]
pub(crate) struct Utf8Sanitizer {
    /// The start of a character that the previous write cut off (at most 3 bytes).
    pending: Vec<u8>,
}

impl Stage for Utf8Sanitizer {
    fn write(&mut self, input: &[u8], out: &mut Vec<u8>) -> Output {
        if self.pending.is_empty() && std::str::from_utf8(input).is_ok() {
            return Output::Unchanged;
        }
        let input = self.complete_pending(input, out);
        self.decode(input, out);
        Output::Written
    }

    fn flush(&mut self, out: &mut Vec<u8>) {
        for _ in self.pending.drain(..) {
            out.extend_from_slice(REPLACEMENT);
        }
    }
}

impl Utf8Sanitizer {
    /// Finishes the character left over from the previous write with the first bytes of
    /// `input` and returns the input that remains.
    fn complete_pending<'a>(&mut self, input: &'a [u8], out: &mut Vec<u8>) -> &'a [u8] {
        if self.pending.is_empty() {
            return input;
        }
        let held = self.pending.len();
        let taken = input.len().min(4 - held);
        let mut joined = [0u8; 4];
        joined[..held].copy_from_slice(&self.pending);
        joined[held..held + taken].copy_from_slice(&input[..taken]);
        let joined = &joined[..held + taken];
        self.pending.clear();
        let consumed = match std::str::from_utf8(joined) {
            Ok(_) => {
                out.extend_from_slice(joined);
                joined.len()
            }
            // The character completed; whatever follows is decoded with the rest.
            Err(error) if error.valid_up_to() > 0 => {
                out.extend_from_slice(&joined[..error.valid_up_to()]);
                error.valid_up_to()
            }
            Err(error) => match error.error_len() {
                // Still incomplete: the write was shorter than the rest of the character.
                None => {
                    self.pending.extend_from_slice(joined);
                    joined.len()
                }
                Some(invalid) => {
                    push_replacements(out, invalid);
                    invalid
                }
            },
        };
        // The pending bytes were a valid start, so whatever was consumed covers them all.
        input
            .get(consumed.saturating_sub(held)..)
            .unwrap_or_default()
    }

    fn decode(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        loop {
            match std::str::from_utf8(input) {
                Ok(_) => {
                    out.extend_from_slice(input);
                    return;
                }
                Err(error) => {
                    let (valid, rest) = input.split_at(error.valid_up_to());
                    out.extend_from_slice(valid);
                    match error.error_len() {
                        None => {
                            self.pending.extend_from_slice(rest);
                            return;
                        }
                        Some(invalid) => {
                            push_replacements(out, invalid);
                            input = rest.get(invalid..).unwrap_or_default();
                        }
                    }
                }
            }
        }
    }
}

/// One U+FFFD per invalid byte, like Go's replacement encoder.
fn push_replacements(out: &mut Vec<u8>, count: usize) {
    for _ in 0..count {
        out.extend_from_slice(REPLACEMENT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::write_through;

    fn repair(parts: &[&[u8]]) -> String {
        let mut stage = Utf8Sanitizer::default();
        let mut out = Vec::new();
        for part in parts {
            write_through(&mut stage, part, &mut out);
        }
        stage.flush(&mut out);
        String::from_utf8(out).expect("output is valid UTF-8")
    }

    #[test]
    fn valid_text_passes_through() {
        assert_eq!(
            repair(&[b"plain ascii\n", "ünïcødé ✓ 🦀".as_bytes()]),
            "plain ascii\nünïcødé ✓ 🦀"
        );
    }

    #[test]
    fn a_character_split_across_writes_is_not_corrupted() {
        let crab = "🦀".as_bytes();
        assert_eq!(repair(&[b"a", &crab[..1], &crab[1..], b"b"]), "a🦀b");
        assert_eq!(repair(&[&crab[..2], &crab[2..3], &crab[3..]]), "🦀");
        assert_eq!(
            repair(&[&crab[..1], &crab[1..2], &crab[2..3], &crab[3..]]),
            "🦀"
        );
        let e_acute = "é".as_bytes();
        assert_eq!(
            repair(&[b"caf", &e_acute[..1], &[e_acute[1], b'!']]),
            "café!"
        );
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        assert_eq!(repair(&[b"a\xffb"]), "a\u{FFFD}b");
        assert_eq!(repair(&[b"\xe2\x82A"]), "\u{FFFD}\u{FFFD}A");
        // A split start followed by a byte that cannot continue it.
        assert_eq!(repair(&[b"\xe2", b"\x82A"]), "\u{FFFD}\u{FFFD}A");
        assert_eq!(repair(&[b"\xe2", b"A"]), "\u{FFFD}A");
        // A cut-off character at the very end.
        assert_eq!(repair(&[b"x\xf0\x9f\xa6"]), "x\u{FFFD}\u{FFFD}\u{FFFD}");
    }

    #[test]
    fn binary_garbage_never_fails() {
        let garbage: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
        for size in [1, 2, 3, 7, 64, 4096] {
            let parts: Vec<&[u8]> = garbage.chunks(size).collect();
            let whole = repair(&[&garbage]);
            assert_eq!(repair(&parts), whole, "chunk size {size}");
        }
    }
}
