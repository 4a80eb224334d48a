//! Masks the body of GitLab tokens recognised by their prefix: `glpat-abc123` becomes
//! `glpat-[MASKED]`.
//!
//! The prefix is kept; the body is the run of token characters (`A-Z a-z 0-9 - . _ =`)
//! right after it, and one `[MASKED]` replaces the whole run, however many writes it spans.
//! A prefix followed by no token character is left alone. Which prefixes apply is decided
//! by [`crate::TraceConfig`]; this stage only applies them.

use std::sync::Arc;

use crate::mask::MASK;
use crate::matcher::StreamMatcher;
use crate::pipeline::{Output, Stage};

/// The token-prefix stage of one stream.
pub(crate) struct TokenSanitizer {
    matcher: Arc<StreamMatcher>,
    /// A token body that reached the end of the last write, and whether it was non-empty.
    in_body: Option<bool>,
    held: Vec<u8>,
    joined: Vec<u8>,
}

impl TokenSanitizer {
    pub(crate) fn new(matcher: Arc<StreamMatcher>) -> Self {
        Self {
            matcher,
            in_body: None,
            held: Vec::new(),
            joined: Vec::new(),
        }
    }

    /// Scans `buf` (the stage input itself when `buf_is_input`) and keeps its live tail.
    fn scan(&mut self, buf: &[u8], buf_is_input: bool, at_eof: bool, out: &mut Vec<u8>) -> Output {
        let in_body = &mut self.in_body;
        let end = self.matcher.scan(buf, at_eof, out, |buf, prefix, out| {
            out.extend_from_slice(&buf[prefix.clone()]);
            let body = body_len(&buf[prefix.end..]);
            let end = prefix.end + body;
            if end == buf.len() && !at_eof {
                *in_body = Some(body > 0);
            } else if body > 0 {
                out.extend_from_slice(MASK);
            }
            end
        });
        self.held.clear();
        self.held
            .extend_from_slice(buf.get(end.hold..).unwrap_or_default());
        end.release(buf, buf_is_input, out)
    }

    /// Consumes the rest of a token body that continues from the previous write and
    /// returns the remaining input.
    fn continue_body<'a>(&mut self, input: &'a [u8], out: &mut Vec<u8>) -> &'a [u8] {
        let Some(masked) = self.in_body else {
            return input;
        };
        let body = body_len(input);
        if body == input.len() {
            self.in_body = Some(masked || body > 0);
            return &[];
        }
        self.in_body = None;
        if masked || body > 0 {
            out.extend_from_slice(MASK);
        }
        &input[body..]
    }
}

impl Stage for TokenSanitizer {
    fn write(&mut self, input: &[u8], out: &mut Vec<u8>) -> Output {
        let written_before = out.len();
        let rest = self.continue_body(input, out);
        if rest.is_empty() {
            return Output::Written;
        }
        if self.held.is_empty() {
            let untouched = rest.len() == input.len() && out.len() == written_before;
            return self.scan(rest, untouched, false, out);
        }
        let mut joined = std::mem::take(&mut self.joined);
        joined.clear();
        joined.extend_from_slice(&self.held);
        joined.extend_from_slice(rest);
        let output = self.scan(&joined, false, false, out);
        self.joined = joined;
        output
    }

    fn flush(&mut self, out: &mut Vec<u8>) {
        if self.in_body.take() == Some(true) {
            out.extend_from_slice(MASK);
        }
        if !self.held.is_empty() {
            let held = std::mem::take(&mut self.held);
            self.scan(&held, false, true, out);
        }
    }
}

/// The length of the run of token characters at the start of `bytes`.
fn body_len(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .position(|&b| !is_token_byte(b))
        .unwrap_or(bytes.len())
}

fn is_token_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'=')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::default_token_prefixes;
    use crate::pipeline::write_through;

    fn sanitize(prefixes: &[String], input: &str) -> String {
        let matcher = Arc::new(StreamMatcher::new(prefixes).unwrap());
        let mut stage = TokenSanitizer::new(matcher);
        let mut out = Vec::new();
        for part in input.split('|') {
            write_through(&mut stage, part.as_bytes(), &mut out);
        }
        stage.flush(&mut out);
        String::from_utf8(out).unwrap()
    }

    fn check(input: &str, expected: &str) {
        assert_eq!(
            sanitize(&default_token_prefixes(true), input),
            expected,
            "{input:?}"
        );
    }

    #[test]
    fn keeps_the_prefix_and_masks_the_body() {
        check("token glpat-abc_DEF-12.3= end", "token glpat-[MASKED] end");
        check("glrt-t1_abcdef", "glrt-[MASKED]");
        check("glrtr-abcdef\n", "glrtr-[MASKED]\n");
        check(
            "cookie _gitlab_session=abc123;",
            "cookie _gitlab_session=[MASKED];",
        );
        check("two glpat-a glptt-b", "two glpat-[MASKED] glptt-[MASKED]");
    }

    #[test]
    fn a_prefix_without_a_body_is_left_alone() {
        check("glpat- alone", "glpat- alone");
        check("glpat-", "glpat-");
        check("gl gl- glpa", "gl gl- glpa");
    }

    #[test]
    fn tokens_split_across_writes_are_masked() {
        check("a gl|pat-abc|def b", "a glpat-[MASKED] b");
        check("a glpat-|abcdef", "a glpat-[MASKED]");
        check("a g|l|p|a|t|-|a|b", "a glpat-[MASKED]");
        check("a glpat-abc|", "a glpat-[MASKED]");
        check("a glpat-abc| b", "a glpat-[MASKED] b");
        check("a glpat-|| b", "a glpat- b");
    }

    #[test]
    fn only_glpat_without_the_default_token_flag() {
        let prefixes = default_token_prefixes(false);
        assert_eq!(
            sanitize(&prefixes, "glpat-a glrt-b"),
            "glpat-[MASKED] glrt-b"
        );
    }

    #[test]
    fn job_prefixes_are_masked_too() {
        let mut prefixes = default_token_prefixes(true);
        prefixes.push("custom_".to_owned());
        assert_eq!(sanitize(&prefixes, "x custom_abc y"), "x custom_[MASKED] y");
    }
}
