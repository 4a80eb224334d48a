//! The pipeline corpus (`crates/runnel-pipeline/tests/corpus`): every file is loaded and
//! evaluated, and its `--list` text plus the details of each planned job are snapshotted, so a
//! change in how any supported key is read or evaluated shows up as a reviewed diff.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use runnel_exec::render_list;
use runnel_pipeline::{
    Artifacts, Cache, CacheKey, CachePolicy, Context, Image, MemoryFiles, PlannedJob, SaveWhen,
    evaluate, load,
};
use runnel_types::Variable;

use crate::list::push_context;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../runnel-pipeline/tests/corpus")
}

/// Every file under `dir`, relative to it, `/`-separated.
pub(crate) fn walk(dir: &Path, root: &Path, files: &mut Vec<String>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| {
            e.unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
                .path()
        })
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            walk(&path, root, files);
        } else if let Ok(rel) = path.strip_prefix(root) {
            files.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
}

/// Splits on spaces, where `\ ` is a space inside a word.
fn words(text: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = text.trim().chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out
                .last_mut()
                .into_iter()
                .for_each(|w| w.extend(chars.next())),
            ' ' => out.push(String::new()),
            c => out.last_mut().into_iter().for_each(|w| w.push(c)),
        }
    }
    out.retain(|w| !w.is_empty());
    out
}

/// The evaluation context a corpus file asks for in its header comments.
fn context(text: &str, all_files: &[String]) -> Context {
    let mut cx = push_context();
    cx.files = all_files.to_vec();
    for line in text.lines().take_while(|l| l.starts_with('#')) {
        let line = line.trim_start_matches('#').trim();
        if let Some(vars) = line.strip_prefix("variables:") {
            for word in words(vars) {
                let (key, value) = word.split_once('=').unwrap_or((&word, ""));
                cx.predefined.retain(|v| v.key != key);
                if !value.is_empty() {
                    cx.predefined.push(Variable::new(key, value));
                }
            }
        } else if let Some(changed) = line.strip_prefix("changed:") {
            cx.changed_files = Some(words(changed));
        } else if let Some(files) = line.strip_prefix("files:") {
            cx.files.extend(words(files));
        }
    }
    cx
}

fn image(i: &Image) -> String {
    let mut s = i.name.clone();
    let mut extra = Vec::new();
    if let Some(e) = &i.entrypoint {
        extra.push(format!("entrypoint={e:?}"));
    }
    if let Some(c) = &i.command {
        extra.push(format!("command={c:?}"));
    }
    if let Some(a) = &i.alias {
        extra.push(format!("alias={a}"));
    }
    if !i.pull_policy.is_empty() {
        extra.push(format!("pull_policy={:?}", i.pull_policy));
    }
    if let Some(p) = &i.docker_platform {
        extra.push(format!("platform={p}"));
    }
    if let Some(u) = &i.docker_user {
        extra.push(format!("user={u}"));
    }
    for v in &i.variables {
        extra.push(format!("{}={}", v.key, v.value));
    }
    if !extra.is_empty() {
        write!(s, " ({})", extra.join(", ")).ok();
    }
    s
}

fn save_when(w: SaveWhen) -> &'static str {
    match w {
        SaveWhen::OnSuccess => "on_success",
        SaveWhen::OnFailure => "on_failure",
        SaveWhen::Always => "always",
    }
}

fn artifacts(a: &Artifacts) -> String {
    let mut parts = vec![format!("paths={:?}", a.paths)];
    if !a.exclude.is_empty() {
        parts.push(format!("exclude={:?}", a.exclude));
    }
    if a.untracked {
        parts.push("untracked".to_owned());
    }
    parts.push(format!("when={}", save_when(a.when)));
    for (key, value) in [
        ("name", &a.name),
        ("expire_in", &a.expire_in),
        ("expose_as", &a.expose_as),
    ] {
        if let Some(v) = value {
            parts.push(format!("{key}={v}"));
        }
    }
    for (kind, paths) in &a.reports {
        parts.push(format!("reports:{kind}={paths:?}"));
    }
    parts.join(" ")
}

fn cache(c: &Cache) -> String {
    let key = match &c.key {
        CacheKey::Literal(k) => k.clone(),
        CacheKey::Files { files, prefix } => format!("files {files:?} prefix {prefix:?}"),
    };
    let policy = match c.policy {
        CachePolicy::PullPush => "pull-push",
        CachePolicy::Pull => "pull",
        CachePolicy::Push => "push",
    };
    let mut s = format!(
        "key={key} paths={:?} policy={policy} when={}",
        c.paths,
        save_when(c.when)
    );
    if c.untracked {
        s.push_str(" untracked");
    }
    if !c.fallback_keys.is_empty() {
        write!(s, " fallback_keys={:?}", c.fallback_keys).ok();
    }
    s
}

/// The variables a job gets from the YAML (not the context), last value of each key.
fn own_variables(j: &PlannedJob, cx: &Context) -> Vec<String> {
    let mut seen: Vec<(String, String)> = Vec::new();
    for v in &j.variables {
        if cx.predefined.contains(v) || v.key == "CI_JOB_NAME" || v.key == "CI_JOB_STAGE" {
            continue;
        }
        seen.retain(|(k, _)| *k != v.key);
        let raw = if v.raw { " (raw)" } else { "" };
        seen.push((v.key.clone(), format!("{}{raw}", v.value)));
    }
    seen.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

fn details(jobs: &[PlannedJob], cx: &Context) -> String {
    let mut out = String::new();
    for j in jobs {
        let c = &j.job;
        writeln!(out, "{}", j.name).ok();
        let mut field = |key: &str, value: String| {
            writeln!(out, "  {key}: {value}").ok();
        };
        if let Some(i) = &c.image {
            field("image", image(i));
        }
        for s in &c.services {
            field("service", image(s));
        }
        for (key, lines) in [
            ("before_script", &c.before_script),
            ("script", &c.script),
            ("after_script", &c.after_script),
        ] {
            if !lines.is_empty() {
                field(key, format!("{lines:?}"));
            }
        }
        let vars = own_variables(j, cx);
        if !vars.is_empty() {
            field("variables", vars.join(" "));
        }
        if let Some(a) = &c.artifacts {
            field("artifacts", artifacts(a));
        }
        for k in &c.cache {
            field("cache", cache(k));
        }
        if !j.dependencies.is_empty() {
            field("artifacts from", j.dependencies.join(", "));
        }
        if let Some(t) = c.timeout {
            field("timeout", format!("{}s", t.as_secs()));
        }
        if let Some(r) = &c.retry {
            field(
                "retry",
                format!(
                    "max={} when={:?} exit_codes={:?}",
                    r.max, r.when, r.exit_codes
                ),
            );
        }
        if !c.tags.is_empty() {
            field("tags", c.tags.join(", "));
        }
        if c.interruptible {
            field("interruptible", "true".to_owned());
        }
        if let Some(e) = &c.environment {
            field("environment", format!("{} {:?}", e.name, e.url));
        }
    }
    out
}

#[test]
fn corpus_lists_and_plans() {
    let dir = corpus_dir();
    let mut all = Vec::new();
    walk(&dir, &dir, &mut all);
    let mut files = MemoryFiles::new();
    for f in &all {
        let text = std::fs::read_to_string(dir.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        files.insert(f, &text);
    }
    let roots: Vec<&String> = all
        .iter()
        .filter(|f| !f.contains('/') && f.ends_with(".yml"))
        .collect();
    assert!(roots.len() >= 10, "corpus files found: {roots:?}");
    for root in roots {
        let text = std::fs::read_to_string(dir.join(root)).unwrap_or_else(|e| panic!("{e}"));
        let cx = context(&text, &all);
        let pipeline = load(&files, root).unwrap_or_else(|e| panic!("{root}: load: {e}"));
        let plan = evaluate(&pipeline, &cx).unwrap_or_else(|e| panic!("{root}: evaluate: {e}"));
        let mut out = render_list(&plan, &pipeline.warnings, &[], false);
        out.push_str("\n--- planned jobs, in DAG order\n");
        let ordered: Vec<PlannedJob> = plan.order.iter().map(|&i| plan.jobs[i].clone()).collect();
        out.push_str(&details(&ordered, &cx));
        let name = root.trim_end_matches(".yml");
        insta::assert_snapshot!(format!("corpus__{name}"), out);
    }
}
