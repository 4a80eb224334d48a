//! Masked values, URL parameters, token prefixes and UTF-8 repair, end to end.

use runnel_trace::{JobTrace, Stream, TraceConfig, default_token_prefixes};

use crate::{contents, masking, run};

#[test]
fn a_secret_split_across_two_writes_is_masked() {
    let log = run(masking(&["s3cr3t-value"]), &[b"token=s3cr3t", b"-value\n"]);
    assert_eq!(log, "token=[MASKED]\n");
}

#[test]
fn a_secret_split_across_three_writes_is_masked() {
    let log = run(
        masking(&["s3cr3t-value"]),
        &[b"a s3c", b"r3t-va", b"lue b\n"],
    );
    assert_eq!(log, "a [MASKED] b\n");
}

#[test]
fn the_longest_of_overlapping_secrets_wins() {
    let log = run(
        masking(&["abc", "abcdef", "cdefgh"]),
        &[b"abcdefgh | abcd", b"efx | abcx\n"],
    );
    assert_eq!(log, "[MASKED]gh | [MASKED]x | [MASKED]x\n");
}

#[test]
fn a_secret_at_the_very_end_is_released_by_finish() {
    let trace = JobTrace::new(masking(&["secret", "secret-longer"])).unwrap();
    let mut writer = trace.writer(Stream::SCRIPT_STDOUT);
    writer.write_bytes(b"value: secret");
    // "secret" may still become "secret-longer", so it is held back; the rest is not.
    assert_eq!(contents(&trace), b"value: ");
    drop(writer);
    assert_eq!(contents(&trace), b"value: [MASKED]");
}

#[test]
fn a_secret_longer_than_every_write_is_masked() {
    let secret = "0123456789".repeat(50);
    let parts: Vec<&[u8]> = secret.as_bytes().chunks(7).collect();
    let mut all = vec![b"before ".as_slice()];
    all.extend(parts);
    all.push(b" after");
    assert_eq!(run(masking(&[&secret]), &all), "before [MASKED] after");
}

#[test]
fn output_without_a_possible_secret_start_is_released_at_once() {
    let trace = JobTrace::new(masking(&["secret"])).unwrap();
    let mut writer = trace.writer(Stream::SCRIPT_STDOUT);
    writer.write_bytes(b"Fetching 42 packages...");
    assert_eq!(contents(&trace), b"Fetching 42 packages...");
}

#[test]
fn stdout_and_stderr_do_not_corrupt_each_other() {
    let trace = JobTrace::new(masking(&["password"])).unwrap();
    let mut stdout = trace.writer(Stream::SCRIPT_STDOUT);
    let mut stderr = trace.writer(Stream::SCRIPT_STDERR);
    stdout.write_bytes(b"pass");
    stderr.write_bytes(b"warning\n");
    stdout.write_bytes(b"word\n");
    stdout.finish();
    stderr.finish();
    trace.finish();
    assert_eq!(contents(&trace), b"warning\n[MASKED]\n");
}

#[test]
fn token_prefixes_keep_the_prefix_and_mask_the_body() {
    let log = run(
        TraceConfig::default(),
        &[
            b"PAT glpat-Abc_123 runner glrt-t1_xyz ",
            b"trigger glptt-",
            b"0123abcd done\n",
        ],
    );
    assert_eq!(
        log,
        "PAT glpat-[MASKED] runner glrt-[MASKED] trigger glptt-[MASKED] done\n"
    );
}

#[test]
fn glpat_is_masked_even_without_configured_prefixes() {
    let config = TraceConfig {
        token_prefixes: Vec::new(),
        ..TraceConfig::default()
    };
    assert_eq!(
        run(config, &[b"glpat-abc glrt-abc\n"]),
        "glpat-[MASKED] glrt-abc\n"
    );
}

#[test]
fn job_token_prefixes_are_masked() {
    let mut token_prefixes = default_token_prefixes(false);
    token_prefixes.push("mytok_".to_owned());
    let config = TraceConfig {
        token_prefixes,
        ..TraceConfig::default()
    };
    assert_eq!(
        run(config, &[b"mytok_abc glrt-abc\n"]),
        "mytok_[MASKED] glrt-abc\n"
    );
}

#[test]
fn sensitive_url_parameters_are_masked() {
    let log = run(
        TraceConfig::default(),
        &[
            b"GET https://gitlab.example.com/api/v4/projects?private_tok",
            b"en=abcdef&per_page=20\n",
            b"PUT https://s3.example.com/b/o?X-Amz-Credential=AKIA%2F20260101&X-Amz-Signature=deadbeef HTTP/1.1\n",
        ],
    );
    assert_eq!(
        log,
        "GET https://gitlab.example.com/api/v4/projects?private_token=[MASKED]&per_page=20\n\
         PUT https://s3.example.com/b/o?X-Amz-Credential=[MASKED]&X-Amz-Signature=[MASKED] HTTP/1.1\n"
    );
}

#[test]
fn a_masked_value_inside_a_url_is_masked_whole() {
    let log = run(
        masking(&["p?ss&word=1"]),
        &[b"https://x/?a=p?ss&word=1 ok\n"],
    );
    assert_eq!(log, "https://x/?a=[MASKED] ok\n");
}

#[test]
fn a_character_split_across_writes_is_kept() {
    let text = "héllo wörld ✓ 🦀\n".as_bytes();
    let parts: Vec<&[u8]> = text.chunks(1).collect();
    assert_eq!(run(TraceConfig::default(), &parts), "héllo wörld ✓ 🦀\n");
}

#[test]
fn binary_garbage_becomes_replacement_characters() {
    let log = run(
        TraceConfig::default(),
        &[b"bin: \xff\xfe\x00\xc3", b"(end)\n"],
    );
    assert_eq!(log, "bin: \u{FFFD}\u{FFFD}\0\u{FFFD}(end)\n");
}
