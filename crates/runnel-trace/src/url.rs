//! Masks the values of sensitive URL query parameters, e.g.
//! `?private_token=abc&x=1` becomes `?private_token=[MASKED]&x=1`.
//!
//! A parameter is a key right after `?` or `&`, compared without regard to ASCII case,
//! followed by `=`. Its value runs until `?`, `&`, whitespace or a control character and
//! is replaced by one `[MASKED]`, even when empty or split across writes. Keys are passed
//! through as they arrive, so nothing is ever held back. This is not a URL parser:
//! `rss_token=x` without a preceding `?` or `&` is left alone, as in the official runner.

use crate::mask::MASK;
use crate::pipeline::{Output, Stage};

/// Query parameters whose values are masked.
const SENSITIVE_KEYS: [&str; 6] = [
    "private_token",
    "authenticity_token",
    "rss_token",
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
];

/// The longest key in [`SENSITIVE_KEYS`]; longer keys are not collected.
const MAX_KEY_LEN: usize = 20;

#[derive(Default)]
enum State {
    /// Looking for `?` or `&`.
    #[default]
    Scan,
    /// Collecting a key after `?` or `&`.
    Key { buf: [u8; MAX_KEY_LEN], len: usize },
    /// Dropping the value of a sensitive parameter.
    Value,
}

/// The URL-parameter stage of one stream.
#[derive(Default)]
pub(crate) struct UrlSanitizer {
    state: State,
}

impl Stage for UrlSanitizer {
    fn write(&mut self, input: &[u8], out: &mut Vec<u8>) -> Output {
        // `input[released..pos]` is passed through unchanged once we know it is not a value.
        let written_before = out.len();
        let mut released = 0;
        let mut pos = 0;
        while pos < input.len() {
            match &mut self.state {
                State::Scan => match memchr::memchr2(b'?', b'&', &input[pos..]) {
                    Some(offset) => {
                        pos += offset + 1;
                        self.state = new_key();
                    }
                    None => pos = input.len(),
                },
                State::Key { buf, len } => {
                    let byte = input[pos];
                    pos += 1;
                    match byte {
                        b'=' => {
                            if is_sensitive(&buf[..*len]) {
                                out.extend_from_slice(&input[released..pos]);
                                released = pos;
                                self.state = State::Value;
                            } else {
                                self.state = State::Scan;
                            }
                        }
                        b'?' | b'&' => self.state = new_key(),
                        _ if *len == MAX_KEY_LEN => self.state = State::Scan,
                        _ => {
                            buf[*len] = byte;
                            *len += 1;
                        }
                    }
                }
                State::Value => match value_len(&input[pos..]) {
                    Some(value) => {
                        pos += value;
                        released = pos;
                        out.extend_from_slice(MASK);
                        self.state = State::Scan;
                    }
                    None => {
                        pos = input.len();
                        released = pos;
                    }
                },
            }
        }
        if released == 0 && out.len() == written_before {
            return Output::Unchanged;
        }
        out.extend_from_slice(&input[released..]);
        Output::Written
    }

    fn flush(&mut self, out: &mut Vec<u8>) {
        if matches!(self.state, State::Value) {
            out.extend_from_slice(MASK);
        }
        self.state = State::Scan;
    }
}

fn new_key() -> State {
    State::Key {
        buf: [0; MAX_KEY_LEN],
        len: 0,
    }
}

fn is_sensitive(key: &[u8]) -> bool {
    SENSITIVE_KEYS
        .iter()
        .any(|known| known.as_bytes().eq_ignore_ascii_case(key))
}

/// The length of the parameter value at the start of `bytes`, or `None` when it runs to
/// the end (and may continue in the next write).
fn value_len(bytes: &[u8]) -> Option<usize> {
    let mut pos = 0;
    while let Some(&byte) = bytes.get(pos) {
        if byte.is_ascii() {
            if matches!(byte, b'?' | b'&') || byte.is_ascii_whitespace() || byte.is_ascii_control()
            {
                return Some(pos);
            }
            pos += 1;
            continue;
        }
        let width = char_width(byte);
        let ends_value = bytes
            .get(pos..pos + width)
            .and_then(|c| std::str::from_utf8(c).ok())
            .and_then(|c| c.chars().next())
            .is_some_and(|c| c.is_whitespace() || c.is_control());
        if ends_value {
            return Some(pos);
        }
        pos += 1;
    }
    None
}

/// The length of the UTF-8 sequence a lead byte announces (1 for anything else).
fn char_width(lead: u8) -> usize {
    match lead {
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::write_through;

    /// Writes `input` split at every `|`, then flushes.
    fn sanitize(input: &str) -> String {
        let mut stage = UrlSanitizer::default();
        let mut out = Vec::new();
        for part in input.split('|') {
            write_through(&mut stage, part.as_bytes(), &mut out);
        }
        stage.flush(&mut out);
        String::from_utf8(out).unwrap()
    }

    fn check(input: &str, expected: &str) {
        assert_eq!(sanitize(input), expected, "{input:?}");
    }

    #[test]
    fn masks_sensitive_parameters() {
        check(
            "no escaping http://example.org/?test=foobar",
            "no escaping http://example.org/?test=foobar",
        );
        check(
            "http://e.com/?private_token=deadbeef at the start",
            "http://e.com/?private_token=[MASKED] at the start",
        );
        check(
            "at the end http://e.com/?authenticity_token=deadbeef",
            "at the end http://e.com/?authenticity_token=[MASKED]",
        );
        check(
            "http://e.com/?X-AMZ-sigNATure=deadbeef mixed case",
            "http://e.com/?X-AMZ-sigNATure=[MASKED] mixed case",
        );
        check(
            "http://e.com/?p=1&x-amz-credential=abc&rss_token=x second",
            "http://e.com/?p=1&x-amz-credential=[MASKED]&rss_token=[MASKED] second",
        );
        check(
            "?x-amz-security-token=a\n?private_token=b\x08c",
            "?x-amz-security-token=[MASKED]\n?private_token=[MASKED]\x08c",
        );
        check(
            "empty: ?x-amz-credential=&private_token=gitlab",
            "empty: ?x-amz-credential=[MASKED]&private_token=[MASKED]",
        );
        check(
            "double: ?rss_token=abc&&private_token=b??rss_token=c",
            "double: ?rss_token=[MASKED]&&private_token=[MASKED]??rss_token=[MASKED]",
        );
        check(
            "unicode space: ?rss_token=ab\u{a0}cd",
            "unicode space: ?rss_token=[MASKED]\u{a0}cd",
        );
    }

    #[test]
    fn leaves_other_text_alone() {
        check(
            "rss_token=not-after-a-separator",
            "rss_token=not-after-a-separator",
        );
        check(
            "?this-is-a-really-really-long-key-name=foobar",
            "?this-is-a-really-really-long-key-name=foobar",
        );
        check(
            "?one ?x-amz-credential=abc two=three ?one=two &token =token ?=",
            "?one ?x-amz-credential=[MASKED] two=three ?one=two &token =token ?=",
        );
        check("terminated: ?x-", "terminated: ?x-");
    }

    #[test]
    fn masks_parameters_split_across_writes() {
        check(
            "spl|it http://e.com/?x-amz-cred|ential=abcdefghij|klmnop",
            "split http://e.com/?x-amz-credential=[MASKED]",
        );
        check(
            "split on &: http://e.com/|&|x-amz-cre|dential=abc",
            "split on &: http://e.com/&x-amz-credential=[MASKED]",
        );
        check(
            "split after ?: http://e.com/|?||x-amz-cre|dential=abc| tail",
            "split after ?: http://e.com/?x-amz-credential=[MASKED] tail",
        );
        check(
            "terminated before mask: ?x-amz-credential=|",
            "terminated before mask: ?x-amz-credential=[MASKED]",
        );
    }

    #[test]
    fn a_long_value_is_masked_whole() {
        let input = format!("?x-amz-credential={} still scrubbed", "0".repeat(8 * 1024));
        check(&input, "?x-amz-credential=[MASKED] still scrubbed");
    }
}
