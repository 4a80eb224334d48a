//! Whether and how the `runnel` binary is linked with `symbol-order.txt`: shared by the build
//! script (`build.rs`) and the binary's unit tests.
//!
//! The file lists the functions an idle daemon runs once it has given its memory back
//! (`src/memory.rs`), one symbol name a line, as `scripts/symbol-order.sh` found them. rust-lld
//! places those functions first, in that order, so the code an idle daemon maps again after a
//! trim is a few contiguous pages rather than one 64 KiB fault-around block here and there in
//! 25 MB of code (docs/performance.md, "Session 7: idle memory").

use std::path::Path;

/// The ordering file, relative to the package directory.
pub(crate) const FILE: &str = "symbol-order.txt";

/// Set to `off` to link a release build without the order (for A/B measurements).
pub(crate) const SWITCH: &str = "RUNNEL_SYMBOL_ORDER";

/// More entries than this is not a list of what an idle daemon runs.
const MAX_ENTRIES: usize = 20_000;

/// The target whose default linker is rust-lld (Rust 1.90 and later), the one linker here
/// known to take `--symbol-ordering-file`.
const LLD_TARGET: &str = "x86_64-unknown-linux-gnu";

/// What the build script is told about the build (cargo's environment).
#[derive(Debug, Default)]
pub(crate) struct Build<'a> {
    /// `PROFILE`: `release` for the release profile and the profiles inheriting it.
    pub(crate) profile: &'a str,
    /// `TARGET`.
    pub(crate) target: &'a str,
    /// `RUSTC_LINKER`: set when a linker is configured for the target.
    pub(crate) linker: Option<&'a str>,
    /// `CARGO_ENCODED_RUSTFLAGS`: the flags, separated by 0x1f.
    pub(crate) rustflags: &'a str,
    /// [`SWITCH`].
    pub(crate) switch: Option<&'a str>,
}

/// The linker arguments for the `runnel` binary: the ordering file, with stale entries
/// (functions renamed, inlined or removed since the file was made) ignored without a warning,
/// for a release build linked by rust-lld; none for any other build. An unknown [`SWITCH`]
/// value, a malformed file or a path that is not UTF-8 is an error.
pub(crate) fn link_args(build: &Build<'_>, file: &Path) -> Result<Vec<String>, String> {
    let enabled = match build.switch {
        None | Some("" | "on") => true,
        Some("off") => false,
        Some(other) => return Err(format!("{SWITCH}={other}: expected `on` or `off`")),
    };
    // Another linker (`-C linker`, `-C link-arg=-fuse-ld=…`, linker features or flavors) may
    // not know the option, and GNU ld does not.
    let other_linker = build.linker.is_some()
        || build.rustflags.split('\x1f').any(|flag| {
            flag.contains("linker")
                || flag.contains("link-self-contained")
                || flag.contains("fuse-ld")
        });
    if !enabled || build.profile != "release" || build.target != LLD_TARGET || other_linker {
        return Ok(Vec::new());
    }
    let path = file
        .to_str()
        .ok_or_else(|| format!("{} is not a UTF-8 path", file.display()))?;
    // `-Xlinker` rather than `-Wl,`, which would split a path at its commas.
    Ok(vec![
        "-Xlinker".to_owned(),
        format!("--symbol-ordering-file={path}"),
        "-Xlinker".to_owned(),
        "--no-warn-symbol-ordering".to_owned(),
    ])
}

/// The symbol names of the ordering file's text: one a line, `#` comments and blank lines
/// skipped (as lld reads it). Errors name the line: a line that is not one symbol name (a
/// merge conflict marker, a demangled name), a duplicate, too many entries.
pub(crate) fn entries(text: &str) -> Result<Vec<&str>, String> {
    let mut names = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let number = index + 1;
        let valid = line
            .chars()
            .next()
            .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
            && line
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '$'));
        if !valid {
            return Err(format!("line {number}: `{line}` is not a symbol name"));
        }
        if !seen.insert(line) {
            return Err(format!("line {number}: `{line}` is listed twice"));
        }
        names.push(line);
        if names.len() > MAX_ENTRIES {
            return Err(format!("more than {MAX_ENTRIES} entries"));
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::{Build, FILE, entries, link_args};

    fn release() -> Build<'static> {
        Build {
            profile: "release",
            target: "x86_64-unknown-linux-gnu",
            ..Build::default()
        }
    }

    /// The committed file is what lld and the build script accept, and it lists the code that
    /// runs after the trim: the trim's own function and the runtime's idle loop.
    #[test]
    fn the_committed_order_file_is_well_formed_and_lists_the_idle_path() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(FILE);
        let text = std::fs::read_to_string(&path).expect("symbol-order.txt is readable");
        let names = entries(&text).expect("symbol-order.txt is well formed");
        assert!(names.len() > 100, "{} entries", names.len());
        for name in &names {
            assert!(
                name.starts_with("_ZN") || !name.contains('$'),
                "{name}: a Rust symbol in legacy mangling, or a C one"
            );
        }
        for expected in ["6runnel6memory15advise_dontneed", "5tokio7runtime4park"] {
            assert!(
                names.iter().any(|name| name.contains(expected)),
                "an entry for {expected}"
            );
        }
    }

    #[test]
    fn a_release_build_on_x86_64_linux_links_with_the_order() {
        let file = Path::new("/src/crates/runnel/symbol-order.txt");
        assert_eq!(
            link_args(&release(), file).expect("args"),
            [
                "-Xlinker",
                "--symbol-ordering-file=/src/crates/runnel/symbol-order.txt",
                "-Xlinker",
                "--no-warn-symbol-ordering"
            ]
        );
        let on = Build {
            switch: Some("on"),
            rustflags: "-C\x1fstrip=none",
            ..release()
        };
        assert_eq!(link_args(&on, file).expect("args").len(), 4);
    }

    #[test]
    fn other_builds_link_without_it() {
        let file = Path::new("/src/symbol-order.txt");
        let builds = [
            Build {
                profile: "debug",
                ..release()
            },
            Build {
                target: "aarch64-unknown-linux-gnu",
                ..release()
            },
            Build {
                target: "x86_64-unknown-linux-musl",
                ..release()
            },
            Build {
                linker: Some("/usr/bin/clang"),
                ..release()
            },
            Build {
                rustflags: "-C\x1flink-arg=-fuse-ld=bfd",
                ..release()
            },
            Build {
                rustflags: "-Clinker-features=-lld",
                ..release()
            },
            Build {
                switch: Some("off"),
                ..release()
            },
        ];
        for build in builds {
            assert_eq!(
                link_args(&build, file).expect("args"),
                Vec::<String>::new(),
                "{build:?}"
            );
        }
        let typo = Build {
            switch: Some("of"),
            ..release()
        };
        let error = link_args(&typo, file).expect_err("an unknown switch value");
        assert!(error.contains("RUNNEL_SYMBOL_ORDER=of"), "{error}");
    }

    #[test]
    fn malformed_files_are_refused_by_line() {
        assert_eq!(
            entries("# comment\n\n_ZN3foo3bar17h0123456789abcdefE\n  main  \n").expect("valid"),
            ["_ZN3foo3bar17h0123456789abcdefE", "main"]
        );
        for (text, message) in [
            (
                "main\n<<<<<<< HEAD\n",
                "line 2: `<<<<<<< HEAD` is not a symbol name",
            ),
            (
                "runnel::memory::trim\n",
                "line 1: `runnel::memory::trim` is not a symbol name",
            ),
            ("main\nmain\n", "line 2: `main` is listed twice"),
            ("9lives\n", "line 1: `9lives` is not a symbol name"),
        ] {
            assert_eq!(entries(text).expect_err(text), message);
        }
    }
}
