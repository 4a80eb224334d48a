//! Archives: runnel's cache archiver and extractor against `zip -r` / `unzip` and
//! `tar | zstd -T0` / `zstd -d | tar -x`, on one generated tree, in one run.
//!
//! The tree ([`generate`]) is deterministic: `--archive-files` files holding about
//! `--archive-mb` megabytes, mixed like a `node_modules` plus `target` directory: many small
//! text-like files (about 30 % of the bytes), object-like files of tens to hundreds of KB that
//! mix random, zeroed and repeated blocks (30 %), a few MB-sized ones of the same kind (25 %)
//! and a few incompressible blobs (15 %).
//!
//! Each round runs, one after the other: `runnel cache-archiver` (zip, then
//! `CACHE_COMPRESSION_FORMAT=tarzstd`), `runnel cache-extractor` on both archives, `zip -r -q`,
//! `unzip -q`, `tar -cf - | zstd -T0 -q` and `zstd -d | tar -x`. Runnel's commands run exactly
//! as a job's cache stage runs them (the same binary, flags and environment variables, in the
//! project directory). Every tool reads and writes the same filesystem with a warm page cache
//! (nothing here drops caches: the machine is shared). Levels are each tool's default: runnel
//! deflate 5 (the official fastzip default) and zstd 3, `zip` deflate 6, `zstd` 3.
//!
//! The first round also checks that both of runnel's extractions reproduce the tree (same
//! files, sizes and contents), so a broken archiver fails the scenario instead of looking
//! fast. Peak RSS comes from `VmHWM` in `/proc/<pid>/status`, sampled until the process exits.

use std::hash::Hasher as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::Plan;
use crate::error::BenchError;
use crate::report::Report;

/// How often a measured process's `VmHWM` is read (and its exit checked).
const POLL: Duration = Duration::from_millis(2);

/// What one measured command took.
#[derive(Clone, Copy, Debug)]
struct Timed {
    secs: f64,
    peak_rss_kib: u64,
}

/// The samples of one round, in seconds unless named otherwise.
#[derive(Debug, Default)]
struct Round {
    samples: Vec<(&'static str, f64)>,
}

impl Round {
    fn push(&mut self, name: &'static str, value: f64) {
        self.samples.push((name, value));
    }
}

pub(super) async fn run(plan: &Plan, report: &mut Report) -> Result<(), BenchError> {
    let plan = plan.clone();
    let rounds = tokio::task::spawn_blocking(move || measure(&plan))
        .await
        .map_err(|error| BenchError::Missing(format!("archive measurement stopped: {error}")))??;
    for round in rounds {
        for (name, value) in round.samples {
            report.record(name, value);
        }
    }
    Ok(())
}

fn measure(plan: &Plan) -> Result<Vec<Round>, BenchError> {
    for tool in ["zip", "unzip", "tar", "zstd"] {
        check_tool(tool)?;
    }
    let dir = super::scenario_dir()?;
    let work = dir.path();
    let started = Instant::now();
    let tree = generate(
        &work.join("tree"),
        u64::from(plan.archive_mb) * 1_000_000,
        plan.archive_files,
    )?;
    tracing::info!(
        files = tree.files,
        bytes = tree.bytes,
        secs = started.elapsed().as_secs_f64(),
        "archive tree generated"
    );
    #[allow(clippy::cast_precision_loss)]
    let tree_mb = tree.bytes as f64 / 1e6;
    let runnel = plan.runnel.as_path();
    let mut rounds = Vec::new();
    for round_index in 0..plan.repetitions {
        let mut round = Round::default();
        round.push("archive_tree_mb", tree_mb);
        let verify = round_index == 0;

        // runnel, zip.
        let zip = work.join("runnel.zip");
        let create = timed(
            archiver(runnel, &zip, "zip").current_dir(work),
            work,
            "runnel cache-archiver (zip)",
        )?;
        let extract_dir = fresh_dir(&work.join("out"))?;
        let extract = timed(
            extractor(runnel, &zip).current_dir(&extract_dir),
            work,
            "runnel cache-extractor (zip)",
        )?;
        if verify {
            verify_copy(&tree, &extract_dir.join("tree"), "runnel's zip")?;
        }
        round.push("archive_runnel_zip_create_s", create.secs);
        round.push("archive_runnel_zip_extract_s", extract.secs);
        round.push("archive_runnel_zip_create_mb_per_s", tree_mb / create.secs);
        round.push(
            "archive_runnel_zip_extract_mb_per_s",
            tree_mb / extract.secs,
        );
        round.push("archive_runnel_zip_mb", file_mb(&zip)?);
        round.push("archive_runnel_zip_create_peak_rss_mib", mib(create));
        round.push("archive_runnel_zip_extract_peak_rss_mib", mib(extract));
        let (runnel_zip_create, runnel_zip_extract) = (create.secs, extract.secs);
        remove(&zip)?;

        // runnel, tar.zst.
        let tzst = work.join("runnel.tar.zst");
        let create = timed(
            archiver(runnel, &tzst, "tarzstd").current_dir(work),
            work,
            "runnel cache-archiver (tarzstd)",
        )?;
        let extract_dir = fresh_dir(&work.join("out"))?;
        let extract = timed(
            extractor(runnel, &tzst).current_dir(&extract_dir),
            work,
            "runnel cache-extractor (tarzstd)",
        )?;
        if verify {
            verify_copy(&tree, &extract_dir.join("tree"), "runnel's tar.zst")?;
        }
        round.push("archive_runnel_tarzst_create_s", create.secs);
        round.push("archive_runnel_tarzst_extract_s", extract.secs);
        round.push(
            "archive_runnel_tarzst_create_mb_per_s",
            tree_mb / create.secs,
        );
        round.push(
            "archive_runnel_tarzst_extract_mb_per_s",
            tree_mb / extract.secs,
        );
        round.push("archive_runnel_tarzst_mb", file_mb(&tzst)?);
        round.push("archive_runnel_tarzst_create_peak_rss_mib", mib(create));
        round.push("archive_runnel_tarzst_extract_peak_rss_mib", mib(extract));
        let (runnel_tzst_create, runnel_tzst_extract) = (create.secs, extract.secs);
        remove(&tzst)?;

        // zip -r / unzip.
        let peer_zip = work.join("peer.zip");
        let create = timed(
            Command::new("zip")
                .args(["-r", "-q"])
                .arg(&peer_zip)
                .arg("tree")
                .current_dir(work),
            work,
            "zip -r",
        )?;
        let extract_dir = fresh_dir(&work.join("out"))?;
        let extract = timed(
            Command::new("unzip")
                .arg("-q")
                .arg(&peer_zip)
                .arg("-d")
                .arg(&extract_dir),
            work,
            "unzip",
        )?;
        round.push("archive_zip_r_create_s", create.secs);
        round.push("archive_unzip_extract_s", extract.secs);
        round.push("archive_zip_r_mb", file_mb(&peer_zip)?);
        round.push(
            "archive_zip_create_speedup",
            create.secs / runnel_zip_create,
        );
        round.push(
            "archive_zip_extract_speedup",
            extract.secs / runnel_zip_extract,
        );
        remove(&peer_zip)?;

        // tar | zstd -T0 / zstd -d | tar -x.
        let peer_tzst = work.join("peer.tar.zst");
        let create = timed(
            Command::new("sh")
                .arg("-c")
                .arg("tar -cf - tree | zstd -T0 -q -o \"$1\"")
                .arg("sh")
                .arg(&peer_tzst)
                .current_dir(work),
            work,
            "tar | zstd -T0",
        )?;
        let extract_dir = fresh_dir(&work.join("out"))?;
        let extract = timed(
            Command::new("sh")
                .arg("-c")
                .arg("zstd -d -q -c \"$1\" | tar -xf -")
                .arg("sh")
                .arg(&peer_tzst)
                .current_dir(&extract_dir),
            work,
            "zstd -d | tar -x",
        )?;
        round.push("archive_tar_zstd_create_s", create.secs);
        round.push("archive_zstd_tar_extract_s", extract.secs);
        round.push("archive_tar_zstd_mb", file_mb(&peer_tzst)?);
        round.push(
            "archive_tarzst_create_vs_peer",
            runnel_tzst_create / create.secs,
        );
        round.push(
            "archive_tarzst_extract_vs_peer",
            runnel_tzst_extract / extract.secs,
        );
        remove(&peer_tzst)?;
        fresh_dir(&work.join("out"))?;
        tracing::info!(round = round_index + 1, "archive round done");
        rounds.push(round);
    }
    Ok(rounds)
}

/// `runnel cache-archiver --file <file> --path tree` as the cache stage runs it.
fn archiver(runnel: &Path, file: &Path, format: &str) -> Command {
    let mut command = Command::new(runnel);
    command
        .arg("cache-archiver")
        .arg("--file")
        .arg(file)
        .args(["--path", "tree"])
        .env("CACHE_COMPRESSION_FORMAT", format)
        .env_remove("CACHE_COMPRESSION_LEVEL");
    command
}

/// `runnel cache-extractor --file <file>`, extracting into its working directory.
fn extractor(runnel: &Path, file: &Path) -> Command {
    let mut command = Command::new(runnel);
    command.arg("cache-extractor").arg("--file").arg(file);
    command
}

/// Fails clearly when a peer tool is not installed.
fn check_tool(tool: &str) -> Result<(), BenchError> {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()));
    if found {
        Ok(())
    } else {
        Err(BenchError::Tool {
            command: tool.to_owned(),
            problem: "is not installed (the archive scenario compares with zip, unzip, tar and \
                      zstd)"
                .to_owned(),
        })
    }
}

/// Runs `command` to completion, with its output in a log file under `work`; returns the wall
/// time and the peak RSS of the process it started.
fn timed(command: &mut Command, work: &Path, what: &str) -> Result<Timed, BenchError> {
    let log = work.join("command.log");
    let io = |doing| {
        let log = log.clone();
        move |source| BenchError::Io {
            doing,
            path: log,
            source,
        }
    };
    let out = std::fs::File::create(&log).map_err(io("create command log"))?;
    let err = out.try_clone().map_err(io("create command log"))?;
    command
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .env_remove("RUST_LOG");
    let start = Instant::now();
    let mut child = command.spawn().map_err(|source| BenchError::Tool {
        command: what.to_owned(),
        problem: format!("cannot start: {source}"),
    })?;
    let status_path = PathBuf::from(format!("/proc/{}/status", child.id()));
    let mut peak_rss_kib = 0;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(error) => {
                return Err(BenchError::Tool {
                    command: what.to_owned(),
                    problem: format!("cannot wait for it: {error}"),
                });
            }
        }
        // A process that exits between the check and the read has no VmHWM any more.
        if let Some(kib) = std::fs::read_to_string(&status_path)
            .ok()
            .as_deref()
            .and_then(parse_vm_hwm)
        {
            peak_rss_kib = peak_rss_kib.max(kib);
        }
        std::thread::sleep(POLL);
    };
    let secs = start.elapsed().as_secs_f64();
    if !status.success() {
        let output = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: String = output
            .lines()
            .rev()
            .take(10)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        return Err(BenchError::Tool {
            command: what.to_owned(),
            problem: format!("exited {status}; output:\n{tail}"),
        });
    }
    tracing::debug!(what, secs, peak_rss_kib, "timed");
    Ok(Timed { secs, peak_rss_kib })
}

/// `VmHWM` (peak resident set) in KiB from a `/proc/<pid>/status` text.
fn parse_vm_hwm(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

#[allow(clippy::cast_precision_loss)]
fn mib(timed: Timed) -> f64 {
    timed.peak_rss_kib as f64 / 1024.0
}

#[allow(clippy::cast_precision_loss)]
fn file_mb(path: &Path) -> Result<f64, BenchError> {
    let meta = std::fs::metadata(path).map_err(|source| BenchError::Io {
        doing: "read the size of",
        path: path.to_owned(),
        source,
    })?;
    Ok(meta.len() as f64 / 1e6)
}

fn remove(path: &Path) -> Result<(), BenchError> {
    std::fs::remove_file(path).map_err(|source| BenchError::Io {
        doing: "remove",
        path: path.to_owned(),
        source,
    })
}

/// Removes `path` with everything below it and creates it empty.
fn fresh_dir(path: &Path) -> Result<PathBuf, BenchError> {
    match std::fs::remove_dir_all(path) {
        Err(source) if source.kind() != std::io::ErrorKind::NotFound => {
            return Err(BenchError::Io {
                doing: "remove",
                path: path.to_owned(),
                source,
            });
        }
        _ => {}
    }
    std::fs::create_dir_all(path).map_err(|source| BenchError::Io {
        doing: "create",
        path: path.to_owned(),
        source,
    })?;
    Ok(path.to_owned())
}

// ---------------------------------------------------------------------------------------------
// The generated tree

/// What [`generate`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TreeStats {
    files: u64,
    bytes: u64,
    /// Order-independent digest of every file's relative path and contents.
    digest: u64,
}

/// The kinds of generated files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Source-like text, a few KB.
    Text,
    /// Object-file-like: random, zeroed and repeated 256-byte blocks; tens to hundreds of KB.
    Object,
    /// The same mix, several MB.
    Large,
    /// Random bytes (already compressed data), tens of MB.
    Blob,
}

impl Kind {
    fn extension(self) -> &'static str {
        match self {
            Self::Text => "js",
            Self::Object => "o",
            Self::Large => "rlib",
            Self::Blob => "bin",
        }
    }
}

/// SplitMix64: small, fast and deterministic; statistical quality is beside the point here.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// Writes the tree below `root` (created; must not exist): `files` files of about `bytes`
/// bytes in all, 100 to a directory.
fn generate(root: &Path, bytes: u64, files: u32) -> Result<TreeStats, BenchError> {
    let files = u64::from(files.max(4));
    let blobs = (files / 10_000).max(1);
    let large = (files / 1000).max(1);
    let objects = (files / 20).max(1);
    let texts = files - blobs - large - objects;
    let mut kinds: Vec<(Kind, u64)> = [
        (Kind::Blob, blobs, bytes * 15 / 100),
        (Kind::Large, large, bytes * 25 / 100),
        (Kind::Object, objects, bytes * 30 / 100),
        (Kind::Text, texts, bytes * 30 / 100),
    ]
    .into_iter()
    .flat_map(|(kind, count, total)| {
        std::iter::repeat_n(
            (kind, total / count.max(1)),
            usize::try_from(count).unwrap_or(0),
        )
    })
    .collect();
    let mut rng = Rng(0x005E_ED0F_A2C4_1FE5);
    // Fisher–Yates, so every directory gets a mix.
    for i in (1..kinds.len()).rev() {
        let j = usize::try_from(rng.below(i as u64 + 1)).unwrap_or(0);
        kinds.swap(i, j);
    }
    let vocabulary = vocabulary(&mut rng);
    let mut stats = TreeStats {
        files: 0,
        bytes: 0,
        digest: 0,
    };
    let mut buf = Vec::new();
    for (index, (kind, average)) in kinds.into_iter().enumerate() {
        let dir = root.join(format!("d{:03}/s{:02}", index / 1000, (index / 100) % 10));
        if index % 100 == 0 {
            std::fs::create_dir_all(&dir).map_err(|source| BenchError::Io {
                doing: "create",
                path: dir.clone(),
                source,
            })?;
        }
        // Sizes spread from a quarter to 1.75 times the class average.
        let size = average / 4 + rng.below(average.saturating_mul(3) / 2 + 1);
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        buf.clear();
        match kind {
            Kind::Text => text(&mut rng, &vocabulary, size, &mut buf),
            Kind::Object | Kind::Large => object(&mut rng, size, &mut buf),
            Kind::Blob => {
                buf.resize(size, 0);
                rng.fill(&mut buf);
            }
        }
        let name = format!("f{index:05}.{}", kind.extension());
        let path = dir.join(&name);
        std::fs::write(&path, &buf).map_err(|source| BenchError::Io {
            doing: "write",
            path: path.clone(),
            source,
        })?;
        let relative = format!("d{:03}/s{:02}/{name}", index / 1000, (index / 100) % 10);
        stats.files += 1;
        stats.bytes += buf.len() as u64;
        stats.digest = stats.digest.wrapping_add(digest(&relative, &buf));
    }
    Ok(stats)
}

/// 512 made-up words of 2 to 11 letters, some repeated often (as identifiers are in code).
fn vocabulary(rng: &mut Rng) -> Vec<Vec<u8>> {
    (0..512)
        .map(|_| {
            let len = 2 + rng.below(10);
            (0..len).map(|_| b'a' + (rng.below(26) as u8)).collect()
        })
        .collect()
}

/// Source-like lines: indentation, skewed word choice, punctuation.
fn text(rng: &mut Rng, vocabulary: &[Vec<u8>], size: usize, out: &mut Vec<u8>) {
    const PUNCT: &[&[u8]] = &[
        b" = ", b"(", b"); ", b".", b", ", b" { ", b" }", b" + ", b": ",
    ];
    while out.len() < size {
        let indent = rng.below(4) as usize * 2;
        out.extend(std::iter::repeat_n(b' ', indent));
        let words = 2 + rng.below(8);
        for _ in 0..words {
            // The product of two uniform picks favours small indices (common words).
            let r = rng.next();
            let index = ((r & 0x1FF) * ((r >> 9) & 0x1FF)) >> 9;
            out.extend_from_slice(&vocabulary[usize::try_from(index).unwrap_or(0)]);
            let p = rng.next();
            out.extend_from_slice(PUNCT[usize::try_from(p % 16).unwrap_or(0) % PUNCT.len()]);
        }
        out.push(b'\n');
    }
    out.truncate(size);
}

/// Object-file-like bytes: 256-byte blocks, 40 % random, 30 % zero, 30 % copies of a few
/// recurring blocks.
fn object(rng: &mut Rng, size: usize, out: &mut Vec<u8>) {
    let mut recurring = [[0_u8; 256]; 8];
    for block in &mut recurring {
        rng.fill(block);
    }
    let mut block = [0_u8; 256];
    while out.len() < size {
        match rng.below(10) {
            0..=3 => {
                rng.fill(&mut block);
                out.extend_from_slice(&block);
            }
            4..=6 => out.extend_from_slice(&[0; 256]),
            _ => out.extend_from_slice(&recurring[usize::try_from(rng.below(8)).unwrap_or(0)]),
        }
    }
    out.truncate(size);
}

fn digest(relative: &str, contents: &[u8]) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    hasher.write(relative.as_bytes());
    hasher.write(contents);
    hasher.finish()
}

/// Checks that `copy` holds the same regular files with the same contents as the tree.
fn verify_copy(tree: &TreeStats, copy: &Path, what: &str) -> Result<(), BenchError> {
    let mut found = TreeStats {
        files: 0,
        bytes: 0,
        digest: 0,
    };
    let mut stack = vec![PathBuf::new()];
    while let Some(relative) = stack.pop() {
        let dir = copy.join(&relative);
        let entries = std::fs::read_dir(&dir).map_err(|source| BenchError::Io {
            doing: "list",
            path: dir.clone(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| BenchError::Io {
                doing: "list",
                path: dir.clone(),
                source,
            })?;
            let name = relative.join(entry.file_name());
            let path = entry.path();
            if path.is_dir() {
                stack.push(name);
                continue;
            }
            let contents = std::fs::read(&path).map_err(|source| BenchError::Io {
                doing: "read",
                path: path.clone(),
                source,
            })?;
            found.files += 1;
            found.bytes += contents.len() as u64;
            found.digest = found
                .digest
                .wrapping_add(digest(&name.to_string_lossy(), &contents));
        }
    }
    if found == *tree {
        Ok(())
    } else {
        Err(BenchError::Missing(format!(
            "{what} did not reproduce the tree: expected {} files, {} bytes, digest {:016x}; \
             extracted {} files, {} bytes, digest {:016x} in {}",
            tree.files,
            tree.bytes,
            tree.digest,
            found.files,
            found.bytes,
            found.digest,
            copy.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tree_is_deterministic_and_close_to_the_requested_size() {
        let a = tempfile::tempdir().expect("temp dir");
        let b = tempfile::tempdir().expect("temp dir");
        let first = generate(&a.path().join("tree"), 2_000_000, 300).expect("generated");
        let second = generate(&b.path().join("tree"), 2_000_000, 300).expect("generated");
        assert_eq!(first, second);
        assert_eq!(first.files, 300);
        assert!(
            (1_500_000..2_500_000).contains(&first.bytes),
            "{} bytes",
            first.bytes
        );
        verify_copy(&first, &b.path().join("tree"), "the second tree").expect("same tree");
        let changed = std::fs::read_dir(a.path().join("tree/d000/s00"))
            .expect("dir")
            .next()
            .expect("a file")
            .expect("entry")
            .path();
        std::fs::write(&changed, "changed").expect("write");
        assert!(verify_copy(&first, &a.path().join("tree"), "a changed tree").is_err());
    }

    #[test]
    fn generated_contents_have_their_shape() {
        let mut rng = Rng(1);
        let vocabulary = vocabulary(&mut rng);
        let mut out = Vec::new();
        text(&mut rng, &vocabulary, 100_000, &mut out);
        assert_eq!(out.len(), 100_000);
        assert!(out.iter().all(|b| b.is_ascii()));
        let mut object_bytes = Vec::new();
        object(&mut rng, 100_000, &mut object_bytes);
        let zeros = object_bytes.iter().filter(|&&b| b == 0).count();
        assert!(zeros > 20_000, "{zeros} zero bytes");
    }

    #[test]
    fn reads_the_peak_rss() {
        let status = "Name:\trunnel\nVmPeak:\t  10000 kB\nVmHWM:\t    4321 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(4321));
        assert_eq!(parse_vm_hwm("Name:\tzombie\n"), None);
    }
}
