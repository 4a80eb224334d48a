//! Leftmost-longest multi-pattern search over a byte stream that arrives in pieces.
//!
//! [`StreamMatcher::scan`] finds every match in a buffer that is *final*: one that no
//! later bytes can change. A match is final when it starts before the first position
//! whose suffix is still a proper prefix of some pattern; everything from that position
//! on is the "live tail" the caller must hold back and prepend to the next write. The
//! live tail is never longer than the longest pattern minus one byte, so the bytes held
//! back are the fewest that could still turn into a match.
//!
//! The bulk search uses the `aho-corasick` crate: its SIMD Teddy searcher when it applies,
//! else an automaton. The live tail is computed with a small trie with failure links, fed
//! only the last `max_len - 1` bytes of each write, so its cost does not grow with the
//! write size.
//!
//! This module knows nothing about what replaces a match; callers decide.

use std::ops::Range;

use aho_corasick::{AhoCorasick, AhoCorasickKind, BuildError, Input, MatchKind, Span, packed};

use crate::pipeline::Output;

/// Up to this many pattern bytes the searcher is a DFA (fastest to search). Building a DFA
/// can take seconds for long self-similar values, so beyond it a contiguous NFA is used.
const DFA_MAX_PATTERN_BYTES: usize = 4 * 1024;

/// A compiled set of patterns searched with leftmost-longest semantics across writes.
pub(crate) struct StreamMatcher {
    searcher: Searcher,
    live: PrefixTrie,
    max_len: usize,
}

impl StreamMatcher {
    /// Compiles `patterns`. Empty patterns are ignored; callers should not pass an empty set.
    pub(crate) fn new<P: AsRef<[u8]>>(patterns: &[P]) -> Result<Self, BuildError> {
        let patterns: Vec<&[u8]> = patterns
            .iter()
            .map(AsRef::as_ref)
            .filter(|p| !p.is_empty())
            .collect();
        let searcher = Searcher::new(&patterns)?;
        let max_len = patterns.iter().map(|p| p.len()).max().unwrap_or(0);
        Ok(Self {
            searcher,
            live: PrefixTrie::new(&patterns),
            max_len,
        })
    }

    /// Scans `buf`, copying the unmatched bytes before each final match to `out` and
    /// handing the match to `on_match`, which writes its replacement to `out` and returns
    /// where scanning resumes (at least the match end).
    ///
    /// With `at_eof` no more bytes will come, so nothing is held back.
    pub(crate) fn scan(
        &self,
        buf: &[u8],
        at_eof: bool,
        out: &mut Vec<u8>,
        mut on_match: impl FnMut(&[u8], Range<usize>, &mut Vec<u8>) -> usize,
    ) -> ScanEnd {
        let hold_start = |from: usize| {
            if at_eof {
                buf.len()
            } else {
                self.live_tail_start(buf, from)
            }
        };
        let mut pos = 0;
        let mut tail = hold_start(0);
        while pos < tail {
            let Some(found) = self.searcher.find(buf, pos) else {
                break;
            };
            if found.start >= tail {
                break;
            }
            out.extend_from_slice(&buf[pos..found.start]);
            let end = found.end;
            pos = on_match(buf, found, out).max(end);
            if pos > tail {
                tail = hold_start(pos);
            }
        }
        ScanEnd {
            unmatched: pos,
            hold: pos.max(tail),
        }
    }

    /// The first position at or after `from` whose suffix of `buf` could still grow into
    /// a match, or `buf.len()` when there is none.
    fn live_tail_start(&self, buf: &[u8], from: usize) -> usize {
        let window_start = buf.len().saturating_sub(self.max_len.saturating_sub(1));
        let window = buf.get(from.max(window_start)..).unwrap_or_default();
        buf.len() - self.live.longest_live_suffix(window)
    }
}

/// Where [`StreamMatcher::scan`] stopped: `buf[unmatched..hold]` contains no match and is
/// still to be released, `buf[hold..]` must be held back until more bytes arrive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ScanEnd {
    pub(crate) unmatched: usize,
    pub(crate) hold: usize,
}

impl ScanEnd {
    /// Releases the unmatched rest of `buf` to `out`, or reports that `buf`, when it is the
    /// stage's whole input, passes through untouched.
    pub(crate) fn release(self, buf: &[u8], buf_is_input: bool, out: &mut Vec<u8>) -> Output {
        if buf_is_input && self.unmatched == 0 && self.hold == buf.len() {
            return Output::Unchanged;
        }
        out.extend_from_slice(&buf[self.unmatched..self.hold]);
        Output::Written
    }
}

/// The bulk search: SIMD Teddy when the CPU and pattern set allow it (up to 64 patterns),
/// else an Aho-Corasick automaton. Both use leftmost-longest semantics.
enum Searcher {
    Packed(packed::Searcher),
    Automaton(AhoCorasick),
}

impl Searcher {
    fn new(patterns: &[&[u8]]) -> Result<Self, BuildError> {
        let packed = packed::Config::new()
            .match_kind(packed::MatchKind::LeftmostLongest)
            .builder()
            .extend(patterns)
            .build();
        if let Some(packed) = packed {
            return Ok(Self::Packed(packed));
        }
        let total_len: usize = patterns.iter().map(|p| p.len()).sum();
        let kind = if total_len <= DFA_MAX_PATTERN_BYTES {
            AhoCorasickKind::DFA
        } else {
            AhoCorasickKind::ContiguousNFA
        };
        let automaton = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .kind(Some(kind))
            .build(patterns)?;
        Ok(Self::Automaton(automaton))
    }

    /// The leftmost-longest match in `buf` that starts at or after `from`.
    fn find(&self, buf: &[u8], from: usize) -> Option<Range<usize>> {
        let span = Span {
            start: from,
            end: buf.len(),
        };
        let found = match self {
            Self::Packed(searcher) => searcher.find_in(buf, span),
            Self::Automaton(automaton) => automaton.find(Input::new(buf).span(span)),
        };
        found.map(|m| m.range())
    }
}

const ROOT: usize = 0;

/// A trie of the patterns with Aho-Corasick failure links, used only to find the longest
/// suffix of a short window that is a proper prefix of some pattern.
struct PrefixTrie {
    nodes: Vec<TrieNode>,
}

struct TrieNode {
    /// Children sorted by byte.
    children: Vec<(u8, usize)>,
    fail: usize,
    depth: usize,
}

impl TrieNode {
    fn new(depth: usize) -> Self {
        Self {
            children: Vec::new(),
            fail: ROOT,
            depth,
        }
    }

    fn child(&self, byte: u8) -> Option<usize> {
        self.children
            .binary_search_by_key(&byte, |&(b, _)| b)
            .ok()
            .map(|i| self.children[i].1)
    }
}

impl PrefixTrie {
    fn new(patterns: &[&[u8]]) -> Self {
        let mut trie = Self {
            nodes: vec![TrieNode::new(0)],
        };
        for pattern in patterns {
            trie.insert(pattern);
        }
        trie.link_failures();
        trie
    }

    fn insert(&mut self, pattern: &[u8]) {
        let mut node = ROOT;
        for &byte in pattern {
            node = match self.nodes[node]
                .children
                .binary_search_by_key(&byte, |&(b, _)| b)
            {
                Ok(i) => self.nodes[node].children[i].1,
                Err(i) => {
                    let next = self.nodes.len();
                    let depth = self.nodes[node].depth + 1;
                    self.nodes.push(TrieNode::new(depth));
                    self.nodes[node].children.insert(i, (byte, next));
                    next
                }
            };
        }
    }

    /// Breadth-first, so a node's failure link is set before its children need it.
    fn link_failures(&mut self) {
        let mut queue = std::collections::VecDeque::from([ROOT]);
        while let Some(node) = queue.pop_front() {
            for i in 0..self.nodes[node].children.len() {
                let (byte, child) = self.nodes[node].children[i];
                self.nodes[child].fail = if node == ROOT {
                    ROOT
                } else {
                    self.step(self.nodes[node].fail, byte)
                };
                queue.push_back(child);
            }
        }
    }

    fn step(&self, mut node: usize, byte: u8) -> usize {
        loop {
            if let Some(next) = self.nodes[node].child(byte) {
                return next;
            }
            if node == ROOT {
                return ROOT;
            }
            node = self.nodes[node].fail;
        }
    }

    /// The length of the longest suffix of `window` that some pattern strictly extends.
    fn longest_live_suffix(&self, window: &[u8]) -> usize {
        let mut node = window
            .iter()
            .fold(ROOT, |node, &byte| self.step(node, byte));
        while node != ROOT {
            if !self.nodes[node].children.is_empty() {
                return self.nodes[node].depth;
            }
            node = self.nodes[node].fail;
        }
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(patterns: &[&str], window: &str) -> usize {
        let patterns: Vec<&[u8]> = patterns.iter().map(|p| p.as_bytes()).collect();
        PrefixTrie::new(&patterns).longest_live_suffix(window.as_bytes())
    }

    #[test]
    fn live_suffix_is_the_longest_proper_prefix_of_a_pattern() {
        assert_eq!(live(&["secret"], "xxsec"), 3);
        assert_eq!(live(&["secret"], "xxs"), 1);
        assert_eq!(live(&["secret"], "xxx"), 0);
        // A complete pattern that nothing extends is not live: it can be masked now.
        assert_eq!(live(&["secret"], "xsecret"), 0);
        // A complete pattern that a longer one extends is live.
        assert_eq!(live(&["en", "end"], "the en"), 2);
        // Falls back along failure links: "abab" is not a prefix, "ab" is.
        assert_eq!(live(&["abc"], "abab"), 2);
    }

    fn scan_all(patterns: &[&str], buf: &str, at_eof: bool) -> (String, usize) {
        let matcher = StreamMatcher::new(patterns).unwrap();
        let mut out = Vec::new();
        let end = matcher.scan(buf.as_bytes(), at_eof, &mut out, |_, found, out| {
            out.extend_from_slice(b"[M]");
            found.end
        });
        end.release(buf.as_bytes(), false, &mut out);
        (String::from_utf8(out).unwrap(), end.hold)
    }

    #[test]
    fn scan_releases_everything_before_the_live_tail() {
        assert_eq!(
            scan_all(&["secret"], "a secret b sec", false),
            ("a [M] b ".into(), 11)
        );
        assert_eq!(
            scan_all(&["secret"], "a secret b sec", true),
            ("a [M] b sec".into(), 14)
        );
    }

    #[test]
    fn a_match_that_overlaps_the_live_tail_is_final() {
        // "en foobar" starts before the live tail "foo" (prefix of "foobarbaz") and wins.
        let (out, hold) = scan_all(&["en foobar", "foobarbaz"], "the en foobar", false);
        assert_eq!((out.as_str(), hold), ("the [M]", 13));
    }

    #[test]
    fn more_patterns_than_simd_supports_fall_back_to_the_automaton() {
        let many: Vec<String> = (0..100).map(|i| format!("secret{i:03}")).collect();
        let matcher = StreamMatcher::new(&many).unwrap();
        assert!(matches!(matcher.searcher, Searcher::Automaton(_)));
        let few = StreamMatcher::new(&many[..3]).unwrap();
        let buf = b"a secret000 b secret002 c secret0";
        for matcher in [&matcher, &few] {
            let mut out = Vec::new();
            let end = matcher.scan(buf, false, &mut out, |_, found, out| {
                out.extend_from_slice(b"[M]");
                found.end
            });
            end.release(buf, false, &mut out);
            assert_eq!(
                (out.as_slice(), end.hold),
                (b"a [M] b [M] c ".as_slice(), 26)
            );
        }
    }
}
