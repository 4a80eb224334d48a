//! Archive extraction. Property: nothing is written outside the project directory, and no
//! symlink left in it resolves (through any chain of links) to a place outside it.
#![no_main]

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{Cursor, Write};
use std::path::{Component, Path, PathBuf};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use runnel_archive::{ArchiveFormat, extract, extract_file};

#[derive(Arbitrary, Debug)]
struct Entry {
    name: Vec<u8>,
    kind: Kind,
}

#[derive(Arbitrary, Debug)]
enum Kind {
    File(Vec<u8>),
    Dir,
    Link(Vec<u8>),
}

/// Path components the fuzzer combines into entry names and link targets.
const WORDS: &[&str] = &[
    "a", "b", "..", ".", "c", "", "x", "/", "outside", "project", "a/..",
];

fn path_from(raw: &[u8]) -> String {
    raw.iter()
        .take(8)
        .map(|b| WORDS[usize::from(*b) % WORDS.len()])
        .collect::<Vec<_>>()
        .join("/")
}

fn build_zip(entries: &[Entry]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for entry in entries.iter().take(16) {
        let name = path_from(&entry.name);
        let _ = match &entry.kind {
            Kind::File(data) => zip
                .start_file(name, options)
                .and_then(|()| zip.write_all(data).map_err(Into::into)),
            Kind::Dir => zip.add_directory(name, options),
            Kind::Link(target) => zip.add_symlink(name, path_from(target), options),
        };
    }
    zip.finish().map(Cursor::into_inner).unwrap_or_default()
}

/// Where `path` leads once every symlink on the way is followed (missing parts are taken as
/// plain names); `None` for link loops.
fn resolve(path: &Path) -> Option<PathBuf> {
    let mut current = PathBuf::from("/");
    let mut queue = VecDeque::new();
    push_components(path, &mut current, &mut queue);
    let mut hops = 0;
    while let Some(name) = queue.pop_front() {
        if name == ".." {
            current.pop();
            continue;
        }
        let next = current.join(&name);
        match std::fs::symlink_metadata(&next) {
            Ok(meta) if meta.file_type().is_symlink() => {
                hops += 1;
                if hops > 40 {
                    return None;
                }
                let target = std::fs::read_link(&next).ok()?;
                let mut spliced = VecDeque::new();
                push_components(&target, &mut current, &mut spliced);
                spliced.extend(queue);
                queue = spliced;
            }
            _ => current = next,
        }
    }
    Some(current)
}

fn push_components(path: &Path, current: &mut PathBuf, queue: &mut VecDeque<OsString>) {
    for component in path.components() {
        match component {
            Component::RootDir => *current = PathBuf::from("/"),
            Component::Normal(name) => queue.push_back(name.to_owned()),
            Component::ParentDir => queue.push_back("..".into()),
            Component::CurDir | Component::Prefix(_) => {}
        }
    }
}

fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        found.push(path.clone());
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            walk(&path, found);
        }
    }
}

// The first byte picks the mode: even, the rest is an archive read as the format it starts
// like (zip, tar+zstd, gzip); odd, the rest describes zip entries (so the fuzzer reaches the
// path and link rules quickly).
fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    let top = tempfile::tempdir().expect("temp dir");
    let top_path = std::fs::canonicalize(top.path()).expect("canonical temp dir");
    let outside = top_path.join("outside");
    let project = top_path.join("project");
    std::fs::create_dir(&outside).expect("outside dir");
    std::fs::write(outside.join("secret"), b"keep").expect("outside file");
    std::fs::create_dir(&project).expect("project dir");

    let bytes = if mode % 2 == 0 {
        rest.to_vec()
    } else {
        let entries: Vec<Entry> = arbitrary::Unstructured::new(rest)
            .arbitrary()
            .unwrap_or_default();
        build_zip(&entries)
    };
    let archive = top_path.join("archive");
    std::fs::write(&archive, &bytes).expect("archive file");
    let _ = extract_file(&archive, &project);
    // The same bytes through the streaming reader, as the artifacts downloader does.
    if let Some(format) = runnel_archive::detect_format(&bytes) {
        if format != ArchiveFormat::Zip || bytes.len() < 1 << 16 {
            let _ = extract(Cursor::new(&bytes), format, &project);
        }
    }

    let mut found = Vec::new();
    walk(&top_path, &mut found);
    for path in &found {
        let expected = path == &archive
            || path == &outside
            || path == &outside.join("secret")
            || path.starts_with(&project);
        assert!(
            expected,
            "extraction wrote {path:?} outside the project dir"
        );
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
            if let Some(to) = resolve(path) {
                assert!(
                    to.starts_with(&project),
                    "link {path:?} leads to {to:?}, outside the project dir"
                );
            }
        }
    }
    assert_eq!(
        std::fs::read(outside.join("secret")).ok().as_deref(),
        Some(&b"keep"[..])
    );
});
