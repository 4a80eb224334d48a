//! Error messages name the file, line and column; one snapshot holds them all.

use runnel_pipeline::MemoryFiles;

use crate::{load_err, load_files_err};

#[test]
fn error_messages() {
    let cases: &[(&str, &str)] = &[
        ("bad yaml", "job:\n  script: [a\n"),
        ("not a hash", "- a\n- b\n"),
        ("unknown job key", "job:\n  script: x\n  scirpt: y\n"),
        ("missing script", "job:\n  stage: test\n"),
        ("unknown stage", "job:\n  stage: nope\n  script: x\n"),
        (
            "bad expression",
            "job:\n  script: x\n  rules:\n    - if: $A == \"x\" &&\n",
        ),
        (
            "bad regex",
            "job:\n  script: x\n  rules:\n    - if: $A =~ /(/\n",
        ),
        ("unknown extends", "job:\n  extends: .nope\n  script: x\n"),
        (
            "extends cycle",
            ".a:\n  extends: .b\n.b:\n  extends: .c\n.c:\n  extends: .a\njob:\n  extends: .a\n  script: x\n",
        ),
        ("self extends", "job:\n  extends: job\n  script: x\n"),
        (
            "unknown reference job",
            "job:\n  script: !reference [.nope, script]\n",
        ),
        (
            "unknown reference key",
            ".a:\n  image: x\njob:\n  script: !reference [.a, script]\n",
        ),
        ("unknown need", "job:\n  script: x\n  needs: [build]\n"),
        (
            "need in a later stage",
            "a:\n  stage: build\n  script: x\n  needs: [b]\nb:\n  stage: deploy\n  script: x\n",
        ),
        (
            "dependency in a later stage",
            "a:\n  stage: build\n  script: x\n  dependencies: [b]\nb:\n  script: x\n",
        ),
        (
            "duplicated needs",
            "a:\n  script: x\nb:\n  script: x\n  needs: [a, a]\n",
        ),
        (
            "invalid base hash",
            ".base: [1]\njob:\n  extends: .base\n  script: x\n",
        ),
        (
            "extends too deep",
            ".t0: {script: x}\n.t1: {extends: .t0}\n.t2: {extends: .t1}\n.t3: {extends: .t2}\n.t4: {extends: .t3}\n.t5: {extends: .t4}\n.t6: {extends: .t5}\n.t7: {extends: .t6}\n.t8: {extends: .t7}\n.t9: {extends: .t8}\n.t10: {extends: .t9}\n.t11: {extends: .t10}\njob: {extends: .t11}\n",
        ),
        (
            "needs cycle",
            "a:\n  script: x\n  needs: [c]\nb:\n  script: x\n  needs: [a]\nc:\n  script: x\n  needs: [b]\n",
        ),
        (
            "unknown dependency",
            "job:\n  script: x\n  dependencies: [build]\n",
        ),
        ("bad when", "job:\n  script: x\n  when: sometimes\n"),
        (
            "bad start_in",
            "job:\n  script: x\n  when: delayed\n  start_in: 2 weeks\n",
        ),
        (
            "delayed without start_in",
            "job:\n  script: x\n  when: delayed\n",
        ),
        (
            "rules with only",
            "job:\n  script: x\n  only: [main]\n  rules:\n    - when: always\n",
        ),
        ("bad parallel", "job:\n  script: x\n  parallel: 500\n"),
        ("bad variables", "variables: [A, B]\njob:\n  script: x\n"),
        ("bad timeout", "job:\n  script: x\n  timeout: whenever\n"),
        ("unknown tag", "job:\n  script: !secret x\n"),
        ("unknown alias", "job:\n  script: *nothing\n"),
        ("missing include", "include: ci/missing.yml\n"),
        (
            "bad cache policy",
            "job:\n  script: x\n  cache:\n    policy: sometimes\n",
        ),
    ];
    let mut out = String::new();
    for (what, yaml) in cases {
        let error = match runnel_pipeline::load(&crate::files(yaml), ".gitlab-ci.yml") {
            Ok(_) => panic!("{what}: load unexpectedly succeeded"),
            Err(e) => crate::chain(&e),
        };
        out.push_str(&format!("{what}:\n  {error}\n"));
    }
    insta::assert_snapshot!(out);
}

#[test]
fn errors_in_included_files_name_that_file() {
    let files = MemoryFiles::new()
        .with(".gitlab-ci.yml", "include: ci/jobs.yml\n")
        .with(
            "ci/jobs.yml",
            "ok:\n  script: x\nbroken:\n  script: x\n  needs: [nothing]\n",
        );
    assert_eq!(
        load_files_err(&files),
        "ci/jobs.yml:5:11: job `broken` needs `nothing`, which is not defined"
    );
    let cyclic = MemoryFiles::new()
        .with(".gitlab-ci.yml", "include: ci/a.yml\n")
        .with("ci/a.yml", "include: ci/b.yml\n")
        .with("ci/b.yml", "include: ci/a.yml\n");
    assert_eq!(
        load_files_err(&cyclic),
        "ci/b.yml:1:10: include cycle: `ci/a.yml` includes itself"
    );
}

#[test]
fn a_missing_root_file_is_a_read_error() {
    let e = runnel_pipeline::load(&MemoryFiles::new(), ".gitlab-ci.yml").expect_err("missing");
    assert_eq!(
        crate::chain(&e),
        "read CI file .gitlab-ci.yml: no such file"
    );
}

#[test]
fn several_documents_need_a_spec_header() {
    let with_spec = crate::files(
        "spec:\n  inputs:\n    env:\n      default: dev\n---\njob:\n  script: echo $[[ inputs.env ]]\n",
    );
    let p = crate::load_files(&with_spec);
    assert_eq!(p.jobs.len(), 1);
    assert_eq!(p.jobs[0].script, ["echo dev"]);
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    assert_eq!(
        load_err("spec:\n  inputs:\n    env:\n---\njob:\n  script: x\n"),
        ".gitlab-ci.yml:5:1: `env` input: required value has not been provided"
    );
    assert_eq!(
        load_err("a:\n  script: x\n---\nb:\n  script: y\n"),
        ".gitlab-ci.yml:4:1: a CI file holds one YAML document (two only with a `spec:` header first)"
    );
}

#[test]
fn reference_cycles_and_bad_tags_are_refused() {
    // .a references itself through its own script: resolution must stop, not recurse forever.
    let e = load_err(
        ".a:\n  script:\n    - !reference [.a, script]\njob:\n  script: !reference [.a, script]\n",
    );
    assert_eq!(
        e,
        ".gitlab-ci.yml:3:7: !reference [.a, script] is part of a circular chain"
    );
    assert_eq!(
        load_err("a: !reference [b]\nb: !reference [a]\n"),
        ".gitlab-ci.yml:1:4: !reference [b] is part of a circular chain"
    );
    assert_eq!(
        load_err("a: !reference\n"),
        "parse YAML at .gitlab-ci.yml:1:4: !reference \"\" is not valid; use !reference [job, key, …]"
    );
}

/// A tiny deterministic generator, so the garbage below is the same on every run.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, bound: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) as usize) % bound
    }
}

#[test]
fn garbage_expressions_never_panic() {
    let pieces = [
        "$A", "$", "${B}", "${", "\"x\"", "'y'", "\"", "null", "/a.*/", "/", "/i", "==", "!=",
        "=~", "!~", "&&", "||", "!", "(", ")", " ", "é", "nul",
    ];
    let mut rng = Lcg(7);
    for _ in 0..3000 {
        let len = rng.next(8);
        let text: String = (0..len).map(|_| pieces[rng.next(pieces.len())]).collect();
        if let Ok(expr) = runnel_pipeline::Expr::parse(&text) {
            expr.evaluate(&|k| (k == "A").then(|| "a".to_owned()));
        }
    }
}

#[test]
fn mangled_ci_files_never_panic() {
    let base = "stages: [a, b]\nvariables: {X: \"1\"}\n.t: &t\n  script: [x]\njob:\n  <<: *t\n  stage: a\n  extends: .t\n  rules:\n    - if: $X == \"1\"\n  needs: [other]\n  parallel:\n    matrix:\n      - A: [1, 2]\nother:\n  stage: a\n  script: !reference [.t, script]\n";
    let bytes: Vec<char> = base.chars().collect();
    let noise = [
        '\n', ' ', ':', '-', '[', ']', '{', '}', '&', '*', '!', '"', '\'', '<', '$',
    ];
    let mut rng = Lcg(11);
    for _ in 0..400 {
        let mut text = bytes.clone();
        for _ in 0..1 + rng.next(4) {
            let at = rng.next(text.len());
            match rng.next(3) {
                0 => {
                    text.remove(at);
                }
                1 => text.insert(at, noise[rng.next(noise.len())]),
                _ => text[at] = noise[rng.next(noise.len())],
            }
        }
        let text: String = text.into_iter().collect();
        if let Ok(p) = runnel_pipeline::load(&crate::files(&text), ".gitlab-ci.yml")
            && let Ok(plan) = runnel_pipeline::evaluate(&p, &crate::push_context(&[]))
        {
            assert_eq!(plan.order.len(), plan.jobs.len(), "{text}");
        }
    }
}
