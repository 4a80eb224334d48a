//! Property-style tests with a fixed seed: how the output is split into writes must never
//! change what ends up in the log.

use aho_corasick::{AhoCorasick, MatchKind};
use runnel_trace::{JobTrace, Stream, TraceConfig};
use runnel_types::Secret;

use crate::contents;

/// SplitMix64: a tiny deterministic generator, so the test data never changes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

/// Splits `input` into writes of random sizes, mostly small, sometimes large.
fn random_writes<'a>(rng: &mut Rng, input: &'a [u8]) -> Vec<&'a [u8]> {
    let mut parts = Vec::new();
    let mut rest = input;
    while !rest.is_empty() {
        let size = match rng.below(4) {
            0 => 1 + rng.below(4),
            1 => 1 + rng.below(64),
            2 => 1 + rng.below(4096),
            _ => 1 + rng.below(64 * 1024),
        };
        let (part, tail) = rest.split_at(size.min(rest.len()));
        parts.push(part);
        rest = tail;
    }
    parts
}

fn log_of(config: TraceConfig, parts: &[&[u8]]) -> Vec<u8> {
    let trace = JobTrace::new(config).unwrap();
    let mut writer = trace.writer(Stream::SCRIPT_STDOUT);
    for part in parts {
        writer.write_bytes(part);
    }
    writer.finish();
    trace.finish();
    contents(&trace)
}

#[test]
fn ten_megabytes_in_random_writes_are_masked_like_one_pass() {
    const SIZE: usize = 10 * 1024 * 1024;
    let secrets = [
        "abcabd",
        "bca",
        "cab",
        "dddd",
        "hgfedcbahgfedcba",
        &"ef".repeat(40),
    ];
    let words: &[&[u8]] = &[
        b"a", b"b", b"c", b"d", b"e", b"f", b"g", b"h", b" ", b"\n", b"ab", b"abca", b"efef",
        b"hgfe", b"ddd",
    ];
    let mut rng = Rng(0x5eed);
    let mut input = Vec::with_capacity(SIZE + 128);
    while input.len() < SIZE {
        if rng.below(200) == 0 {
            input.extend_from_slice(rng.pick(&secrets).as_bytes());
        } else {
            input.extend_from_slice(rng.pick(words));
        }
    }
    let reference = AhoCorasick::builder()
        .match_kind(MatchKind::LeftmostLongest)
        .build(secrets)
        .unwrap()
        .replace_all_bytes(&input, &["[MASKED]"; 6]);
    let config = TraceConfig {
        masked: secrets.iter().map(|s| Secret::new(*s)).collect(),
        limit_bytes: 64 * 1024 * 1024,
        ..TraceConfig::default()
    };

    let log = log_of(config, &random_writes(&mut rng, &input));

    assert!(log != input, "some secrets were masked");
    assert!(
        log == reference,
        "the streamed log differs from one-pass masking"
    );
}

#[test]
fn every_filter_gives_the_same_log_however_the_output_is_split() {
    const SIZE: usize = 512 * 1024;
    let words: &[&[u8]] = &[
        b"x",
        b"y",
        b" ",
        b"\n",
        b"\r",
        b"=",
        b"?",
        b"&",
        b"-",
        b"_",
        b"private_token=",
        b"?X-Amz-Signature=",
        b"&rss_token",
        b"glpat-",
        b"glrt",
        b"r-",
        b"gl",
        b"s3cr3t",
        b"s3c",
        "é".as_bytes(),
        "🦀".as_bytes(),
        b"\xf0\x9f",
        b"\xff",
        b"\xc3",
    ];
    let mut rng = Rng(42);
    let mut input = Vec::with_capacity(SIZE + 32);
    while input.len() < SIZE {
        input.extend_from_slice(rng.pick(words));
    }
    let config = || TraceConfig {
        masked: vec![
            Secret::new("s3cr3t"),
            Secret::new("s3cr3ts3cr3t"),
            Secret::new("t s3"),
        ],
        limit_bytes: 64 * 1024 * 1024,
        ..TraceConfig::default()
    };

    let whole = log_of(config(), &[&input]);
    for _ in 0..3 {
        let split = log_of(config(), &random_writes(&mut rng, &input));
        assert!(split == whole, "a split changed the log");
    }
    let bytewise: Vec<&[u8]> = input.chunks(1).collect();
    assert!(
        log_of(config(), &bytewise) == whole,
        "byte-sized writes changed the log"
    );
    assert!(std::str::from_utf8(&whole).is_ok());
}
