//! Archives written by `create_archive` extract to an identical tree.

use std::io::Cursor;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use runnel_archive::{
    ArchiveError, ArchiveFormat, ArchiveOptions, CompressionLevel, PathSpec, create_archive,
    detect_format, extract, extract_file, select,
};

use crate::{Scratch, set_mode, set_mtime};

const LEVELS: [CompressionLevel; 5] = [
    CompressionLevel::Fastest,
    CompressionLevel::Fast,
    CompressionLevel::Default,
    CompressionLevel::Slow,
    CompressionLevel::Slowest,
];

/// A tree with nested and empty directories, modes, mtimes, symlinks and unicode names.
fn source_tree() -> Scratch {
    let scratch = Scratch::new();
    let p = &scratch.project;
    scratch.file("src/main.rs", "fn main() {}\n");
    scratch.file("src/nested/deeper/data.bin", &"0123456789".repeat(10_000));
    scratch.file("bin/tool", "#!/bin/sh\necho hi\n");
    scratch.file("secret/key", "private");
    scratch.file("ünïcödé/файл 名前.txt", "unicode");
    scratch.file("empty-file", "");
    fs_err::create_dir_all(p.join("empty/dir")).expect("empty dirs");
    std::os::unix::fs::symlink("src/main.rs", p.join("main-link")).expect("symlink");
    std::os::unix::fs::symlink("../bin", p.join("src/bin-link")).expect("dir symlink");
    set_mode(&p.join("bin/tool"), 0o755);
    set_mode(&p.join("secret/key"), 0o600);
    set_mode(&p.join("secret"), 0o700);
    let mut seconds = 1_600_000_000;
    for rel in Scratch::listing(p).iter().rev() {
        seconds += 3;
        set_mtime(&p.join(rel), seconds);
    }
    scratch
}

/// (path, kind, mode, mtime, content or link target) for every path below `root`.
fn describe(root: &Path) -> Vec<(String, char, u32, i64, String)> {
    Scratch::listing(root)
        .into_iter()
        .map(|rel| {
            let path = root.join(&rel);
            let meta = fs_err::symlink_metadata(&path).expect("lstat");
            let (kind, content) = if meta.file_type().is_symlink() {
                (
                    'l',
                    fs_err::read_link(&path)
                        .expect("readlink")
                        .display()
                        .to_string(),
                )
            } else if meta.is_dir() {
                ('d', String::new())
            } else {
                ('f', fs_err::read_to_string(&path).expect("read"))
            };
            let mode = if kind == 'l' {
                0
            } else {
                meta.permissions().mode() & 0o777
            };
            (rel, kind, mode, meta.mtime(), content)
        })
        .collect()
}

fn archive(scratch: &Scratch, format: ArchiveFormat, level: CompressionLevel) -> Vec<u8> {
    let spec = PathSpec {
        paths: vec![".".into()],
        ..PathSpec::default()
    };
    let selection = select(&scratch.project, &spec).expect("select");
    let mut out = Vec::new();
    let summary =
        create_archive(&selection, &ArchiveOptions { format, level }, &mut out).expect("create");
    assert_eq!(summary.bytes_written, out.len() as u64);
    assert_eq!(summary.entries, selection.entries().len());
    assert_eq!(summary.bytes_read, selection.stats().bytes);
    out
}

fn round_trip(format: ArchiveFormat, level: CompressionLevel) {
    let source = source_tree();
    let bytes = archive(&source, format, level);
    assert_eq!(detect_format(&bytes), Some(format));
    let target = Scratch::new();
    let summary = extract(Cursor::new(bytes), format, &target.project).expect("extract");
    assert!(summary.warnings.is_empty(), "{:?}", summary.warnings);
    assert_eq!(
        describe(&target.project),
        describe(&source.project),
        "{format} {level:?}"
    );
}

#[test]
fn zip_round_trips_at_every_level() {
    for level in LEVELS {
        round_trip(ArchiveFormat::Zip, level);
    }
}

#[test]
fn tar_zstd_round_trips_at_every_level() {
    for level in LEVELS {
        round_trip(ArchiveFormat::TarZstd, level);
    }
}

#[test]
fn zip_is_readable_by_a_plain_zip_reader() {
    let source = source_tree();
    let bytes = archive(&source, ArchiveFormat::Zip, CompressionLevel::Fast);
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).expect("valid zip");
    let names: Vec<String> = zip
        .file_names()
        .filter_map(|name| name.ok().map(|n| n.into_owned()))
        .collect();
    assert!(
        names.contains(&"src/nested/deeper/data.bin".to_owned()),
        "{names:?}"
    );
    assert!(names.contains(&"empty/dir/".to_owned()), "{names:?}");
    let mut data = zip.by_name("src/nested/deeper/data.bin").expect("entry");
    assert_eq!(data.compression(), zip::CompressionMethod::Deflated);
    assert_eq!(data.unix_mode().map(|m| m & 0o777), Some(0o644));
    let mut content = String::new();
    std::io::Read::read_to_string(&mut data, &mut content).expect("inflate");
    assert_eq!(content.len(), 100_000);
}

#[test]
fn fastest_level_stores_and_slower_levels_are_not_bigger() {
    let source = source_tree();
    let sizes: Vec<usize> = LEVELS
        .iter()
        .map(|&level| archive(&source, ArchiveFormat::Zip, level).len())
        .collect();
    let stored = sizes.first().copied().unwrap_or_default();
    assert!(stored > 100_000, "fastest stores: {sizes:?}");
    assert!(
        sizes.iter().skip(1).all(|&size| size < stored / 10),
        "{sizes:?}"
    );
}

#[test]
fn output_is_deterministic() {
    let source = source_tree();
    let first = archive(&source, ArchiveFormat::Zip, CompressionLevel::Default);
    let second = archive(&source, ArchiveFormat::Zip, CompressionLevel::Default);
    assert_eq!(first, second);
}

#[test]
fn gzip_writes_one_member_per_file_with_the_path_as_comment() {
    let source = source_tree();
    let spec = PathSpec {
        paths: vec!["src/**".into(), "bin".into()],
        ..PathSpec::default()
    };
    let selection = select(&source.project, &spec).expect("select");
    let mut out = Vec::new();
    let options = ArchiveOptions {
        format: ArchiveFormat::Gzip,
        level: CompressionLevel::Default,
    };
    let summary = create_archive(&selection, &options, &mut out).expect("create");
    assert_eq!(
        summary.skipped,
        ["bin", "src/bin-link", "src/nested", "src/nested/deeper"]
    );

    let mut reader = std::io::BufReader::new(Cursor::new(&out));
    let mut members = Vec::new();
    while !std::io::BufRead::fill_buf(&mut reader)
        .expect("fill")
        .is_empty()
    {
        let mut member = flate2::bufread::GzDecoder::new(&mut reader);
        let header = member.header().expect("header").clone();
        let mut body = Vec::new();
        std::io::Read::read_to_end(&mut member, &mut body).expect("body");
        members.push((
            String::from_utf8_lossy(header.filename().unwrap_or_default()).into_owned(),
            String::from_utf8_lossy(header.comment().unwrap_or_default()).into_owned(),
            body.len(),
        ));
    }
    insta::assert_debug_snapshot!(members, @r#"
    [
        (
            "tool",
            "bin/tool",
            18,
        ),
        (
            "main.rs",
            "src/main.rs",
            13,
        ),
        (
            "data.bin",
            "src/nested/deeper/data.bin",
            100000,
        ),
    ]
    "#);

    let target = Scratch::new();
    let extracted = extract(Cursor::new(out), ArchiveFormat::Gzip, &target.project).expect("gz");
    assert_eq!(extracted.files, 3);
    let main = fs_err::read_to_string(target.project.join("src/main.rs")).expect("extracted");
    assert_eq!(main, "fn main() {}\n");
}

#[test]
fn raw_copies_a_single_file_and_refuses_more() {
    let source = source_tree();
    let one = PathSpec {
        paths: vec!["bin/tool".into()],
        ..PathSpec::default()
    };
    let selection = select(&source.project, &one).expect("select");
    let mut out = Vec::new();
    let options = ArchiveOptions {
        format: ArchiveFormat::Raw,
        level: CompressionLevel::Default,
    };
    create_archive(&selection, &options, &mut out).expect("raw");
    assert_eq!(out, b"#!/bin/sh\necho hi\n");

    let many = PathSpec {
        paths: vec!["src".into()],
        ..PathSpec::default()
    };
    let selection = select(&source.project, &many).expect("select");
    let error = create_archive(&selection, &options, &mut Vec::new()).unwrap_err();
    assert!(
        matches!(error, ArchiveError::RawNeedsOneFile { count: 6 }),
        "{error:?}"
    );
}

#[test]
fn extract_file_detects_the_format_and_overwrites_existing_files() {
    let source = source_tree();
    let target = Scratch::new();
    target.file(
        "src/main.rs",
        "stale content that is longer than the new one",
    );
    std::os::unix::fs::symlink(&target.outside, target.project.join("main-link"))
        .expect("stale link");
    for format in [ArchiveFormat::Zip, ArchiveFormat::TarZstd] {
        let path = target.outside.join(format.file_name("cache"));
        fs_err::write(&path, archive(&source, format, CompressionLevel::Fast)).expect("write");
        let summary = extract_file(&path, &target.project).expect("extract");
        assert!(summary.warnings.is_empty(), "{:?}", summary.warnings);
        fs_err::remove_file(&path).expect("cleanup");
    }
    assert_eq!(describe(&target.project), describe(&source.project));
    assert!(Scratch::listing(&target.outside).is_empty());
}

#[test]
fn unknown_format_is_an_error() {
    let scratch = Scratch::new();
    let path = scratch.outside.join("junk");
    fs_err::write(&path, "not an archive").expect("write");
    let error = extract_file(&path, &scratch.project).unwrap_err();
    let shown = error
        .to_string()
        .replace(&scratch.outside.display().to_string(), "[OUTSIDE]");
    insta::assert_snapshot!(shown, @"failed to recognise the archive format of [OUTSIDE]/junk");
}
