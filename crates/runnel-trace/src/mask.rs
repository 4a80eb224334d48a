//! Replaces every occurrence of a masked value with `[MASKED]`, across write boundaries.
//!
//! Overlapping values resolve leftmost-longest, as in the official runner: at the earliest
//! position where any value matches, the longest one wins. Only the shortest tail that
//! could still be the start of a value is held back between writes; the rest is released
//! at once. This stage does not know about URL parameters or token prefixes.

use std::sync::Arc;

use crate::matcher::StreamMatcher;
use crate::pipeline::{Output, Stage};

/// What a masked value, a sensitive URL parameter or a token body becomes.
pub(crate) const MASK: &[u8] = b"[MASKED]";

/// The masking stage of one stream.
pub(crate) struct Masker {
    matcher: Arc<StreamMatcher>,
    /// The live tail of the previous write.
    held: Vec<u8>,
    /// `held` followed by the current write, reused between writes.
    joined: Vec<u8>,
}

impl Masker {
    pub(crate) fn new(matcher: Arc<StreamMatcher>) -> Self {
        Self {
            matcher,
            held: Vec::new(),
            joined: Vec::new(),
        }
    }

    /// Scans `buf` (the stage input itself when `buf_is_input`) and keeps its live tail.
    fn scan(&mut self, buf: &[u8], buf_is_input: bool, at_eof: bool, out: &mut Vec<u8>) -> Output {
        let end = self.matcher.scan(buf, at_eof, out, |_, found, out| {
            out.extend_from_slice(MASK);
            found.end
        });
        self.held.clear();
        self.held
            .extend_from_slice(buf.get(end.hold..).unwrap_or_default());
        end.release(buf, buf_is_input, out)
    }
}

impl Stage for Masker {
    fn write(&mut self, input: &[u8], out: &mut Vec<u8>) -> Output {
        if self.held.is_empty() {
            return self.scan(input, true, false, out);
        }
        let mut joined = std::mem::take(&mut self.joined);
        joined.clear();
        joined.extend_from_slice(&self.held);
        joined.extend_from_slice(input);
        let output = self.scan(&joined, false, false, out);
        self.joined = joined;
        output
    }

    fn flush(&mut self, out: &mut Vec<u8>) {
        if !self.held.is_empty() {
            let held = std::mem::take(&mut self.held);
            self.scan(&held, false, true, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::write_through;

    /// Writes `input` split at every `|`, then flushes.
    fn mask(values: &[&str], input: &str) -> String {
        let mut masker = Masker::new(Arc::new(StreamMatcher::new(values).unwrap()));
        let mut out = Vec::new();
        for part in input.split('|') {
            write_through(&mut masker, part.as_bytes(), &mut out);
        }
        masker.flush(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn masks_values_anywhere() {
        assert_eq!(mask(&["secrets"], "secrets"), "[MASKED]");
        assert_eq!(mask(&["secrets"], "secretssecrets"), "[MASKED][MASKED]");
        assert_eq!(mask(&["secrets"], "ssecrets"), "s[MASKED]");
        assert_eq!(
            mask(&["foo", "bar"], "xfoox ybary ffoo barr ffooo bbarr"),
            "x[MASKED]x y[MASKED]y f[MASKED] [MASKED]r f[MASKED]o b[MASKED]r"
        );
    }

    #[test]
    fn masks_a_value_split_across_two_writes() {
        assert_eq!(mask(&["secrets"], "secret|s"), "[MASKED]");
        assert_eq!(mask(&["secrets"], "s|secrets"), "s[MASKED]");
        assert_eq!(mask(&["secrets"], "a s|ecrets b"), "a [MASKED] b");
    }

    #[test]
    fn masks_a_value_split_across_three_writes() {
        assert_eq!(mask(&["password"], "my pa|ssw|ord!"), "my [MASKED]!");
        assert_eq!(
            mask(
                &["split", "all", "values", "are", "masked"],
                "sp|lit al|l val|ues ar|e |mask|ed"
            ),
            "[MASKED] [MASKED] [MASKED] [MASKED] [MASKED]"
        );
    }

    #[test]
    fn the_longest_overlapping_value_wins() {
        assert_eq!(
            mask(
                &["mask", "prefix_mask"],
                "prefix_mask mask prefix_|mask prefix_ma|sk mas|k"
            ),
            "[MASKED] [MASKED] [MASKED] [MASKED] [MASKED]"
        );
        assert_eq!(
            mask(
                &["this is the end", "en foobar", "en"],
                "overlap: this is the en| foobar"
            ),
            "overlap: this is the [MASKED]"
        );
    }

    #[test]
    fn a_value_longer_than_a_write_is_masked() {
        let value = "_".repeat(16_000);
        let input = format!("large secret: {}|{}", &value[..8_000], &value[8_000..]);
        assert_eq!(mask(&[&value], &input), "large secret: [MASKED]");
        let tiny_writes = "my token: ".to_owned()
            + &"abcdefgh"
                .chars()
                .map(|c| format!("{c}|"))
                .collect::<String>();
        assert_eq!(mask(&["abcdefgh"], &tiny_writes), "my token: [MASKED]");
    }

    #[test]
    fn a_value_at_the_end_is_released_by_flush() {
        let mut masker = Masker::new(Arc::new(
            StreamMatcher::new(&["secret", "secret2"]).unwrap(),
        ));
        let mut out = Vec::new();
        write_through(&mut masker, b"the secret", &mut out);
        // "secret" could still become "secret2": held back, but nothing else is.
        assert_eq!(out, b"the ");
        masker.flush(&mut out);
        assert_eq!(out, b"the [MASKED]");
    }

    #[test]
    fn only_a_possible_prefix_is_held_back() {
        let mut masker = Masker::new(Arc::new(StreamMatcher::new(&["secret"]).unwrap()));
        let mut out = Vec::new();
        write_through(&mut masker, b"hello world", &mut out);
        assert_eq!(out, b"hello world");
        write_through(&mut masker, b"; sec", &mut out);
        assert_eq!(out, b"hello world; ");
        write_through(&mut masker, b"ond", &mut out);
        assert_eq!(out, b"hello world; second");
    }
}
