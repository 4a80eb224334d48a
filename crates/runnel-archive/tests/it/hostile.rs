//! Hostile archives built by hand: nothing may be written outside the project directory.
//!
//! Every archive is built twice (zip and tar+zstd) with `[OUT]` in names and targets replaced
//! by the absolute path of a sibling directory that must stay empty.

use std::io::{Cursor, Write};

use runnel_archive::{ArchiveFormat, ExtractSummary, extract, extract_file};
use zip::write::SimpleFileOptions;

use crate::Scratch;

#[derive(Clone, Copy)]
enum Item {
    File(&'static str, &'static str),
    Dir(&'static str),
    Link(&'static str, &'static str),
}

fn hostile_zip(items: &[Item], outside: &str) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default();
    for item in items {
        match *item {
            Item::File(name, content) => {
                zip.start_file(name.replace("[OUT]", outside), options)
                    .expect("start");
                zip.write_all(content.as_bytes()).expect("write");
            }
            Item::Dir(name) => zip
                .add_directory(name.replace("[OUT]", outside), options)
                .expect("dir"),
            Item::Link(name, target) => zip
                .add_symlink(
                    name.replace("[OUT]", outside),
                    target.replace("[OUT]", outside),
                    options,
                )
                .expect("link"),
        }
    }
    zip.finish().expect("finish").into_inner()
}

fn hostile_tar_zstd(items: &[Item], outside: &str) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for item in items {
        let mut header = tar::Header::new_gnu();
        let (name, kind, content) = match *item {
            Item::File(name, content) => (name, tar::EntryType::Regular, content),
            Item::Dir(name) => (name, tar::EntryType::Directory, ""),
            Item::Link(name, target) => {
                header
                    .set_link_name(target.replace("[OUT]", outside))
                    .expect("link name");
                (name, tar::EntryType::Symlink, "")
            }
        };
        // Write the name bytes directly: `set_path` refuses `..`, a hostile tool does not.
        let name = name.replace("[OUT]", outside);
        let raw = &mut header.as_old_mut().name;
        raw.fill(0);
        raw.get_mut(..name.len())
            .expect("short name")
            .copy_from_slice(name.as_bytes());
        header.set_entry_type(kind);
        header.set_mode(0o644);
        header.set_size(content.len() as u64);
        header.set_cksum();
        tar.append(&header, content.as_bytes()).expect("append");
    }
    let tar = tar.into_inner().expect("tar");
    zstd::encode_all(Cursor::new(tar), 3).expect("zstd")
}

fn render(scratch: &Scratch, summary: &ExtractSummary) -> String {
    let mut out = String::new();
    for warning in &summary.warnings {
        out.push_str(&format!("  warning: {warning}\n"));
    }
    for path in Scratch::listing(&scratch.project) {
        out.push_str(&format!("  {path}\n"));
    }
    out.replace(&scratch.outside.display().to_string(), "[OUT]")
        .replace(&scratch.project.display().to_string(), "[PROJECT]")
}

/// Extracts `items` in both formats, checks the outside directory stayed empty and renders the
/// warnings and resulting tree; both formats must agree.
fn attack(items: &[Item]) -> String {
    let mut results = Vec::new();
    for format in [ArchiveFormat::Zip, ArchiveFormat::TarZstd] {
        let scratch = Scratch::new();
        let outside = scratch.outside.display().to_string();
        let bytes = match format {
            ArchiveFormat::Zip => hostile_zip(items, &outside),
            _ => hostile_tar_zstd(items, &outside),
        };
        if format == ArchiveFormat::Zip {
            // From a file, a zip is decompressed by the parallel writers: the same rules hold.
            let from_file = Scratch::new();
            let outside = from_file.outside.display().to_string();
            let archive = from_file.outside.with_extension("zip");
            std::fs::write(&archive, hostile_zip(items, &outside)).expect("write archive");
            let summary = extract_file(&archive, &from_file.project).expect("extract file");
            assert_eq!(
                Scratch::listing(&from_file.outside),
                Vec::<String>::new(),
                "a zip file wrote outside the project"
            );
            results.push(render(&from_file, &summary));
        }
        let summary = extract(Cursor::new(bytes), format, &scratch.project).expect("extract");
        assert_eq!(
            Scratch::listing(&scratch.outside),
            Vec::<String>::new(),
            "{format} wrote outside the project"
        );
        results.push(render(&scratch, &summary));
    }
    let [zip_file, zip, tar] = results.as_slice() else {
        unreachable!()
    };
    assert_eq!(zip_file, zip, "zip from a file and from memory disagree");
    assert_eq!(zip, tar, "zip and tar+zstd disagree");
    zip.clone()
}

#[test]
fn parent_components_are_refused() {
    insta::assert_snapshot!(attack(&[
        Item::File("../evil", "x"),
        Item::File("ok/../../evil", "x"),
        Item::File("fine.txt", "ok"),
    ]), @r"
      warning: ../evil: refused: path contains `..`
      warning: ok/../../evil: refused: path contains `..`
      fine.txt
    ");
}

#[test]
fn absolute_paths_are_refused() {
    insta::assert_snapshot!(attack(&[
        Item::File("[OUT]/evil", "x"),
        Item::Dir("[OUT]/evil-dir/"),
    ]), @r"
      warning: [OUT]/evil: refused: absolute path
      warning: [OUT]/evil-dir/: refused: absolute path
    ");
}

#[test]
fn writing_through_a_planted_symlink_is_refused() {
    insta::assert_snapshot!(attack(&[
        Item::Link("etc", "[OUT]"),
        Item::File("etc/evil", "x"),
        Item::Link("up", ".."),
        Item::File("up/outside/evil", "x"),
        Item::Link("inner", "sub"),
        Item::Dir("sub/"),
        Item::File("inner/evil", "x"),
        Item::Dir("swap/"),
        Item::File("swap/ok", "x"),
        Item::Dir("swap2/"),
        Item::Link("swap2", "sub"),
        Item::File("swap2/evil", "x"),
    ]), @r"
      warning: etc: refused: symlink target `[OUT]` is outside the project directory
      warning: up: refused: symlink target `..` is outside the project directory
      warning: inner/evil: refused: parent `inner` is a symlink
      warning: swap2/evil: refused: parent `swap2` is a symlink
      etc
      etc/evil
      inner
      sub
      swap
      swap/ok
      swap2
      up
      up/outside
      up/outside/evil
    ");
}

#[test]
fn symlinks_pointing_outside_are_refused() {
    insta::assert_snapshot!(attack(&[
        Item::Link("abs", "[OUT]/x"),
        Item::Link("a/b/rel", "../../../x"),
        Item::Link("a/b/sneaky", "c/../../../../x"),
        Item::Link("a/b/inside", "../../fine.txt"),
        Item::File("fine.txt", "ok"),
    ]), @r"
      warning: abs: refused: symlink target `[OUT]/x` is outside the project directory
      warning: a/b/rel: refused: symlink target `../../../x` is outside the project directory
      warning: a/b/sneaky: refused: symlink target `c/../../../../x` has `..` after a name (only leading `..` are allowed)
      a
      a/b
      a/b/inside
      fine.txt
    ");
}

/// Review M3 (`chain.zip`): each link looked inside on its own, but `a -> .` makes `a/..` the
/// project's parent. Targets with `..` after a name are refused, and every link left resolves
/// inside the project.
#[test]
fn chained_symlinks_cannot_climb_out() {
    let items = [
        Item::Link("a", "."),
        Item::Link("esc", "a/.."),
        Item::Link("deep/esc2", "../a/../outside-secret"),
        Item::Link("deep/up", ".."),
        Item::Link("deep/via", "../a/a/deep"),
        Item::Link("deep/up2", "up/deep/up"),
    ];
    insta::assert_snapshot!(attack(&items), @r"
      warning: esc: refused: symlink target `a/..` has `..` after a name (only leading `..` are allowed)
      warning: deep/esc2: refused: symlink target `../a/../outside-secret` has `..` after a name (only leading `..` are allowed)
      a
      deep
      deep/up
      deep/up2
      deep/via
    ");
    let scratch = Scratch::new();
    let outside = scratch.outside.display().to_string();
    extract(
        Cursor::new(hostile_zip(&items, &outside)),
        ArchiveFormat::Zip,
        &scratch.project,
    )
    .expect("extract");
    for link in ["a", "deep/up", "deep/via", "deep/up2"] {
        let resolved = fs_err::canonicalize(scratch.project.join(link)).expect("link resolves");
        assert!(
            resolved.starts_with(&scratch.project),
            "{link} resolves to {}",
            resolved.display()
        );
    }
}

#[test]
fn a_later_entry_replaces_a_symlink_instead_of_writing_through_it() {
    let scratch = Scratch::new();
    std::os::unix::fs::symlink(
        scratch.outside.join("target"),
        scratch.project.join("victim"),
    )
    .expect("pre-existing link");
    let outside = scratch.outside.display().to_string();
    let bytes = hostile_zip(&[Item::File("victim", "mine")], &outside);
    let summary = extract(Cursor::new(bytes), ArchiveFormat::Zip, &scratch.project).expect("zip");
    assert!(summary.warnings.is_empty(), "{:?}", summary.warnings);
    let meta = fs_err::symlink_metadata(scratch.project.join("victim")).expect("lstat");
    assert!(meta.is_file());
    assert!(Scratch::listing(&scratch.outside).is_empty());
}

#[test]
fn duplicate_entries_end_with_the_last_one() {
    // tar keeps every duplicate and replays them in order.
    let scratch = Scratch::new();
    let bytes = hostile_tar_zstd(
        &[
            Item::File("dup", "first"),
            Item::Link("dup", "elsewhere"),
            Item::File("dup", "last"),
            Item::File("dir/x", "1"),
            Item::File("dir", "a file over a non-empty directory"),
        ],
        "",
    );
    let summary =
        extract(Cursor::new(bytes), ArchiveFormat::TarZstd, &scratch.project).expect("tar");
    insta::assert_snapshot!(render(&scratch, &summary), @r"
      warning: dir: failed to remove directory `[PROJECT]/dir`: Directory not empty (os error 39)
      dir
      dir/x
      dup
    ");
    assert!(!scratch.project.join("elsewhere").exists());
    assert_eq!(
        fs_err::read_to_string(scratch.project.join("dup")).expect("read"),
        "last"
    );

    // zip: the central directory names the same path twice; the last one wins.
    let scratch = Scratch::new();
    let mut bytes = hostile_zip(&[Item::File("dup", "first"), Item::File("dvp", "last")], "");
    patch(&mut bytes, b"dvp", b"dup");
    extract(Cursor::new(bytes), ArchiveFormat::Zip, &scratch.project).expect("zip");
    assert_eq!(
        fs_err::read_to_string(scratch.project.join("dup")).expect("read"),
        "last"
    );
    assert_eq!(Scratch::listing(&scratch.project), ["dup"]);
}

fn patch(bytes: &mut [u8], from: &[u8], to: &[u8]) {
    let mut patched = 0;
    let mut start = 0;
    while let Some(offset) = bytes
        .get(start..)
        .and_then(|rest| rest.windows(from.len()).position(|w| w == from))
    {
        let at = start + offset;
        bytes
            .get_mut(at..at + to.len())
            .expect("in range")
            .copy_from_slice(to);
        start = at + to.len();
        patched += 1;
    }
    assert_eq!(patched, 2, "local header and central directory");
}

#[test]
fn an_existing_symlink_to_outside_is_never_traversed() {
    let scratch = Scratch::new();
    std::os::unix::fs::symlink(&scratch.outside, scratch.project.join("etc")).expect("link");
    let outside = scratch.outside.display().to_string();
    for (format, bytes) in [
        (
            ArchiveFormat::Zip,
            hostile_zip(&[Item::File("etc/evil", "x")], &outside),
        ),
        (
            ArchiveFormat::TarZstd,
            hostile_tar_zstd(&[Item::File("etc/evil", "x")], &outside),
        ),
    ] {
        let summary = extract(Cursor::new(bytes), format, &scratch.project).expect("extract");
        assert_eq!(
            render(&scratch, &summary),
            "  warning: etc/evil: refused: parent `etc` is a symlink\n  etc\n",
            "{format}"
        );
    }
    assert!(Scratch::listing(&scratch.outside).is_empty());
}

/// Review L11: every refused entry added a warning, so a hostile archive grew the summary
/// without bound. Past `MAX_WARNINGS` they are only counted.
#[test]
fn refused_entries_beyond_the_warning_limit_are_counted() {
    let names: Vec<String> = (0..runnel_archive::MAX_WARNINGS + 500)
        .map(|i| format!("../evil{i}"))
        .collect();
    let items: Vec<Item> = names
        .iter()
        .map(|name| Item::File(Box::leak(name.clone().into_boxed_str()), "x"))
        .collect();
    let scratch = Scratch::new();
    let outside = scratch.outside.display().to_string();
    let summary = extract(
        Cursor::new(hostile_zip(&items, &outside)),
        ArchiveFormat::Zip,
        &scratch.project,
    )
    .expect("extract");
    assert_eq!(summary.warnings.len(), runnel_archive::MAX_WARNINGS);
    assert_eq!(summary.warnings_dropped, 500);
}

/// Review L11: extraction had no limit on total size or entry count, so a zip bomb filled
/// the builds volume. Past a limit the extraction stops with an error naming it, in every
/// format and through the parallel writers of `extract_file` too.
#[test]
fn archives_beyond_the_size_or_entry_limits_are_stopped() {
    let big = "x".repeat(4096);
    let names: Vec<String> = (0..64).map(|i| format!("bomb/f{i}")).collect();
    let items: Vec<Item> = names
        .iter()
        .map(|name| {
            Item::File(
                Box::leak(name.clone().into_boxed_str()),
                Box::leak(big.clone().into_boxed_str()),
            )
        })
        .collect();
    let bytes_limit = runnel_archive::ExtractLimits {
        max_entries: runnel_archive::MAX_ENTRIES,
        max_bytes: 10 * 4096,
    };
    let entries_limit = runnel_archive::ExtractLimits {
        max_entries: 20,
        max_bytes: u64::MAX,
    };
    for (limits, expected) in [
        (bytes_limit, "expands to more than 40960 bytes"),
        (entries_limit, "holds more than 20 entries"),
    ] {
        for format in [ArchiveFormat::Zip, ArchiveFormat::TarZstd] {
            let scratch = Scratch::new();
            let outside = scratch.outside.display().to_string();
            let archive = match format {
                ArchiveFormat::Zip => hostile_zip(&items, &outside),
                _ => hostile_tar_zstd(&items, &outside),
            };
            let error = runnel_archive::extract_with(
                Cursor::new(archive.clone()),
                format,
                &scratch.project,
                limits,
            )
            .unwrap_err();
            assert!(error.to_string().contains(expected), "{format}: {error}");
            let file = scratch.outside.parent().unwrap().join("archive");
            std::fs::write(&file, &archive).unwrap();
            let fresh = Scratch::new();
            let error =
                runnel_archive::extract_file_with(&file, &fresh.project, limits).unwrap_err();
            assert!(
                error.to_string().contains(expected),
                "{format} file: {error}"
            );
            // Not much more than the limit was written.
            let written: u64 = walk_sizes(&fresh.project);
            assert!(written <= 10 * 4096 + 1024 * 1024, "{written}");
        }
    }
    // The default limits let an ordinary archive through.
    let scratch = Scratch::new();
    let outside = scratch.outside.display().to_string();
    let summary = extract(
        Cursor::new(hostile_zip(&items, &outside)),
        ArchiveFormat::Zip,
        &scratch.project,
    )
    .expect("extract");
    assert_eq!(summary.files, 64);
}

fn walk_sizes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap().filter_map(Result::ok) {
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            walk_sizes(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}
