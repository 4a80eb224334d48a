//! The job helper commands the cache and artifact stages call (reference 1.4 and 4.5):
//! `artifacts-uploader`, `artifacts-downloader`, `cache-archiver` and `cache-extractor`.
//!
//! They run inside a job, in the project directory, and everything they print goes to the job
//! log: progress in the official wording, problems as `WARNING:`/`ERROR:` lines. A failure
//! exits with status 1; the stage script decides whether that fails the job (artifacts) or
//! only warns (cache). Credentials come from flags or, as the planner arranges, from
//! `CI_JOB_TOKEN`/`CI_SERVER_URL`/`CI_JOB_ID` in the environment; a token is only ever shown
//! in its short form.
//!
//! With a distributed cache the cache helpers also transfer the archive through presigned
//! URLs ([`super::cache_remote`]); the local archive stays the working copy, and any trouble
//! with the remote object is a warning, never a failed job.
//!
//! Not here: GCS/Azure `--gocloud-url` transfers, artifact metadata generation, and the
//! `zipzstd` format.

use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context as _;
use runnel_api::{ArtifactDownload, ArtifactUpload, Client};
use runnel_archive::{ArchiveFormat, ArchiveOptions, CompressionLevel, PathSpec, Selection};
use runnel_types::{ArtifactFormat, JobId, JobToken};

use super::cache_remote::{Download, RemoteObject};
use super::{Context, client_for, redact_url};
use crate::cli::{
    ArtifactsDownloaderArgs, ArtifactsUploaderArgs, CacheArchiverArgs, CacheExtractorArgs,
    FileArchiverArgs, JobCredentialArgs, LogLevel,
};

const YELLOW: &str = "\x1b[0;33m";
const RED: &str = "\x1b[31;1m";
const RESET: &str = "\x1b[0;m";

/// `artifacts-uploader`: archive the selected paths and upload them for the job.
pub(crate) async fn upload_artifacts(
    args: ArtifactsUploaderArgs,
    context: &Context,
) -> anyhow::Result<ExitCode> {
    quiet_logs(context);
    finish(upload(args).await)
}

/// `artifacts-downloader`: download a job's artifacts archive and extract it here.
pub(crate) async fn download_artifacts(
    args: ArtifactsDownloaderArgs,
    context: &Context,
) -> anyhow::Result<ExitCode> {
    quiet_logs(context);
    finish(download(args).await)
}

/// `cache-archiver`: write the selected paths to the local cache archive, then upload it to
/// the distributed cache if there is one.
pub(crate) async fn archive_cache(
    args: &CacheArchiverArgs,
    context: &Context,
) -> anyhow::Result<ExitCode> {
    quiet_logs(context);
    let file = match cache_file(args.file.as_deref()) {
        Ok(file) => file,
        Err(error) => return finish(Err(error)),
    };
    let archived = match archive(args, file) {
        Ok(archived) => archived,
        Err(error) => return finish(Err(error)),
    };
    // An up-to-date archive is still offered for upload: the object may be missing or differ
    // (the upload skips an object with the same content).
    match non_empty(args.url.as_deref()) {
        Some(url) => Ok(upload_cache(args, file, url).await),
        None if archived == Archived::UpToDate => Ok(ExitCode::SUCCESS),
        None => {
            say(
                "No URL provided, cache will not be uploaded to shared cache server. Cache will be stored only locally.",
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `cache-extractor`: download the distributed cache object if there is one, then extract
/// the local cache archive here.
pub(crate) async fn extract_cache(
    args: &CacheExtractorArgs,
    context: &Context,
) -> anyhow::Result<ExitCode> {
    quiet_logs(context);
    let file = match cache_file(args.file.as_deref()) {
        Ok(file) => file,
        Err(error) => return finish(Err(error)),
    };
    match non_empty(args.url.as_deref()) {
        Some(url) => download_cache(args, file, url).await,
        None => say(
            "No URL provided, cache will not be downloaded from shared cache server. Instead a local version of cache will be extracted.",
        ),
    }
    if !file.exists() {
        warn(&format!("{}: cache file does not exist", file.display()));
        return Ok(ExitCode::FAILURE);
    }
    finish(extract(file))
}

fn non_empty(value: Option<&str>) -> Option<&str> {
    value.filter(|v| !v.trim().is_empty())
}

/// The file name the official helpers show for a cache archive (no extension).
fn archive_label(file: &Path) -> String {
    file.file_stem()
        .map_or_else(|| "cache".to_owned(), |s| s.to_string_lossy().into_owned())
}

/// Brings the remote object into the local archive; every problem is a warning, after which
/// the local archive (if any) is used.
async fn download_cache(args: &CacheExtractorArgs, file: &Path, url: &str) {
    let remote = match RemoteObject::new(url, args.head_url.as_deref(), args.timeout) {
        Ok(remote) => remote,
        Err(error) => {
            warn(&format!("{error:#}"));
            return;
        }
    };
    say(&format!(
        "Downloading {} from {}",
        archive_label(file),
        remote.address()
    ));
    let fallback = if file.exists() {
        "; using the local cache archive"
    } else {
        ""
    };
    match remote.download(file).await {
        Ok(Download::Downloaded) => {}
        Ok(Download::UpToDate) => say(&format!(
            "{} is up to date",
            file.file_name().unwrap_or_default().to_string_lossy()
        )),
        Ok(Download::Missing) => warn(&format!(
            "Cache file does not exist on the shared cache server (404 Not Found){fallback}"
        )),
        Err(error) => warn(&format!(
            "Failed to download the cache: {error:#}{fallback}"
        )),
    }
}

/// Uploads the local archive; a failure warns and exits 1 (the stage then says "Failed to
/// create cache"), but never fails the job.
async fn upload_cache(args: &CacheArchiverArgs, file: &Path, url: &str) -> ExitCode {
    let size = match std::fs::metadata(file) {
        Ok(metadata) => metadata.len(),
        Err(error) => {
            warn(&format!("{}: {error}", file.display()));
            return ExitCode::FAILURE;
        }
    };
    let limit = args.max_uploaded_archive_size;
    if limit != 0 && size > limit {
        warn(&format!(
            "Cache archive size ({size}) is too big (Limit is set to {limit}). Cache will be stored only locally."
        ));
        return ExitCode::SUCCESS;
    }
    let remote = match RemoteObject::new(url, args.check_url.as_deref(), args.timeout) {
        Ok(remote) => remote,
        Err(error) => {
            warn(&format!("{error:#}"));
            return ExitCode::FAILURE;
        }
    };
    let name = file.file_name().unwrap_or_default().to_string_lossy();
    if remote.holds(file).await {
        say(&format!(
            "{name} is already on the shared cache server at {} (same ETag); not uploading it again",
            remote.address()
        ));
        return ExitCode::SUCCESS;
    }
    say(&format!("Uploading {name} to {}", remote.address()));
    match remote.upload(file).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            warn(&format!("Failed to upload the cache: {error:#}"));
            ExitCode::FAILURE
        }
    }
}

/// Daemon-style logs would land in the job log; keep only what the user asked for.
fn quiet_logs(context: &Context) {
    if !context.level_from_cli {
        context.levels.set(LogLevel::Error);
    }
}

/// Prints a failure as the job log's `ERROR:` line (the chain once) and maps it to exit 1.
fn finish(result: anyhow::Result<()>) -> anyhow::Result<ExitCode> {
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(error) => {
            say(&format!("{RED}ERROR: {error:#}{RESET}"));
            Ok(ExitCode::FAILURE)
        }
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    // A closed stdout leaves nobody to tell.
    writeln!(out, "{line}").ok();
    out.flush().ok();
}

fn warn(line: &str) {
    say(&format!("{YELLOW}WARNING: {line}{RESET}"));
}

/// The credentials of one job, checked.
struct JobAccess {
    client: Client,
    id: JobId,
    token: JobToken,
}

impl JobAccess {
    fn new(args: &JobCredentialArgs) -> anyhow::Result<Self> {
        let url = args
            .url
            .as_deref()
            .filter(|u| !u.is_empty())
            .context("missing GitLab URL (--url or CI_SERVER_URL)")?;
        let token = args
            .token
            .as_deref()
            .filter(|t| !t.is_empty())
            .context("missing job token (--token or CI_JOB_TOKEN)")?;
        let id = args.id.context("missing job id (--id or CI_JOB_ID)")?;
        let client = client_for(
            url,
            args.tls_ca_file.clone(),
            args.tls_cert_file.clone(),
            args.tls_key_file.clone(),
            // As the official helpers: the default config directory's `certs/<host>` files.
            Some(&runnel_config::default_config_path()),
        )?;
        tracing::debug!(url = %redact_url(url), id, "job helper credentials");
        Ok(Self {
            client,
            id: JobId(id),
            token: JobToken::new(token),
        })
    }

    /// `id=… responseStatus=… token=…` as the official helpers print it (short token only).
    fn fields(&self, status: &str) -> String {
        format!(
            "id={} responseStatus={status} token={}",
            self.id.0,
            self.token.short()
        )
    }
}

fn project_dir() -> anyhow::Result<PathBuf> {
    std::env::current_dir().context("failed to read the current directory")
}

fn staging_dir(configured: Option<&Path>) -> PathBuf {
    configured
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(std::env::temp_dir, Path::to_owned)
}

fn compression_level(name: &str) -> CompressionLevel {
    name.parse().unwrap_or_else(|error| {
        warn(&format!("{error}; using the default level"));
        CompressionLevel::Default
    })
}

/// Selects the files to archive, printing the official per-pattern counts and every warning.
/// With a single pattern (and no `untracked`) the whole selection is that pattern's, so the
/// tree is walked once; otherwise each pattern is counted on its own first.
fn select_files(dir: &Path, files: &FileArchiverArgs) -> anyhow::Result<Selection> {
    let patterns: Vec<&String> = files
        .paths
        .iter()
        .filter(|p| !p.trim().is_empty())
        .collect();
    let single = patterns.len() == 1 && !files.untracked;
    for pattern in patterns.iter().filter(|_| !single) {
        let only_this = PathSpec {
            paths: vec![(*pattern).clone()],
            exclude: files.excludes.clone(),
            untracked: false,
        };
        let found = runnel_archive::select(dir, &only_this)
            .map(|s| s.entries().len())
            .unwrap_or_default();
        if found > 0 {
            say(&format!(
                "{pattern}: found {found} matching artifact files and directories"
            ));
        }
    }
    let spec = PathSpec {
        paths: files.paths.clone(),
        exclude: files.excludes.clone(),
        untracked: files.untracked,
    };
    let selection = runnel_archive::select(dir, &spec)
        .with_context(|| format!("failed to select files in {}", dir.display()))?;
    if let Some(pattern) = patterns.first().filter(|_| single) {
        let found = selection.entries().len();
        if found > 0 {
            say(&format!(
                "{pattern}: found {found} matching artifact files and directories"
            ));
        }
    }
    for warning in selection.warnings() {
        warn(&warning.to_string());
    }
    for (pattern, count) in selection.excluded() {
        say(&format!(
            "{pattern}: excluded {count} files and directories"
        ));
    }
    if files.untracked {
        say(&format!(
            "untracked: found {} files and directories in total",
            selection.entries().len()
        ));
    }
    if files.verbose {
        for entry in selection.entries() {
            say(&entry.path);
        }
    }
    Ok(selection)
}

/// Writes `selection` to a new temporary file in `dir`.
async fn write_archive(
    selection: Selection,
    options: ArchiveOptions,
    dir: PathBuf,
) -> anyhow::Result<tempfile::NamedTempFile> {
    tokio::task::spawn_blocking(move || {
        let temp = tempfile::Builder::new()
            .prefix("runnel-archive-")
            .tempfile_in(&dir)
            .with_context(|| format!("failed to create a temporary file in {}", dir.display()))?;
        let summary =
            runnel_archive::create_archive(&selection, &options, BufWriter::new(temp.as_file()))?;
        for skipped in &summary.skipped {
            warn(&format!(
                "{skipped}: not a regular file, left out of the {} archive",
                options.format
            ));
        }
        Ok(temp)
    })
    .await
    .context("the archive writer stopped unexpectedly")?
}

async fn upload(args: ArtifactsUploaderArgs) -> anyhow::Result<()> {
    let access = JobAccess::new(&args.credentials)?;
    let (format, wire_format) = match args.artifact_format.trim() {
        "" => (ArchiveFormat::Zip, None),
        "zipzstd" => anyhow::bail!("artifact format zipzstd is not supported; use zip or tarzstd"),
        other => {
            let format: ArchiveFormat = other.parse()?;
            let wire = match format {
                ArchiveFormat::Zip => ArtifactFormat::Zip,
                ArchiveFormat::Gzip => ArtifactFormat::Gzip,
                ArchiveFormat::Raw => ArtifactFormat::Raw,
                ArchiveFormat::TarZstd => ArtifactFormat::TarZstd,
            };
            (format, Some(wire))
        }
    };
    let dir = project_dir()?;
    let selection = select_files(&dir, &args.files)?;
    if selection.entries().is_empty() {
        say(&format!("{RED}ERROR: No files to upload{RESET}"));
        return Ok(());
    }
    let options = ArchiveOptions {
        format,
        level: compression_level(&args.compression_level),
    };
    let staging = staging_dir(args.archiver_staging_dir.as_deref());
    let archive = write_archive(selection, options, staging).await?;
    let name = Path::new(&args.name).file_name().map_or_else(
        || "artifacts".to_owned(),
        |n| n.to_string_lossy().into_owned(),
    );
    let kind = if args.artifact_type.is_empty() {
        "archive"
    } else {
        args.artifact_type.as_str()
    };
    let upload = ArtifactUpload {
        job_id: access.id,
        token: &access.token,
        path: archive.path(),
        name: &name,
        format: wire_format,
        artifact_type: &args.artifact_type,
        expire_in: &args.expire_in,
    };
    let prefix = format!("Uploading artifacts as \"{kind}\" to coordinator...");
    match access.client.upload_artifacts(&upload).await {
        Ok(()) => {
            say(&format!(
                "{prefix} 201 Created  {}",
                access.fields("201 Created")
            ));
            Ok(())
        }
        Err(error) => {
            let status = error
                .status()
                .map_or_else(|| "failed".to_owned(), |s| s.to_string());
            say(&format!(
                "{YELLOW}{prefix} {status}  {}{RESET}",
                access.fields(&status)
            ));
            Err(anyhow::Error::new(error).context(format!(
                "failed to upload the artifacts of job {}",
                access.id.0
            )))
        }
    }
}

async fn download(args: ArtifactsDownloaderArgs) -> anyhow::Result<()> {
    let access = JobAccess::new(&args.credentials)?;
    let pause = runnel_job::parse_go_duration(&args.retry_time).unwrap_or(Duration::from_secs(1));
    let staging = staging_dir(args.archiver_staging_dir.as_deref());
    let temp = tempfile::Builder::new()
        .prefix("runnel-artifacts-")
        .suffix(".zip")
        .tempfile_in(&staging)
        .with_context(|| format!("failed to create a temporary file in {}", staging.display()))?;
    let attempts = args.retry.saturating_add(1);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let download = ArtifactDownload {
            job_id: access.id,
            token: &access.token,
            direct_download: args.direct_download && attempt == 1,
        };
        match access
            .client
            .download_artifacts_to_file(&download, temp.path())
            .await
        {
            Ok(_) => {
                say(&format!(
                    "Downloading artifacts from coordinator... ok  {}",
                    access.fields("200 OK")
                ));
                break;
            }
            Err(error) => {
                let status = error.status();
                let final_status = matches!(status.map(|s| s.as_u16()), Some(401 | 403 | 404));
                let what = match status.map(|s| s.as_u16()) {
                    Some(404) => "not found".to_owned(),
                    Some(403 | 401) => "forbidden".to_owned(),
                    Some(other) => other.to_string(),
                    None => "error".to_owned(),
                };
                say(&format!(
                    "{YELLOW}Downloading artifacts from coordinator... {what}  {}{RESET}",
                    access.fields(&status.map_or_else(|| "none".to_owned(), |s| s.to_string()))
                ));
                if final_status || attempt >= attempts {
                    return Err(anyhow::Error::new(error).context(format!(
                        "failed to download the artifacts of job {}",
                        access.id.0
                    )));
                }
                warn(&format!("Retrying... ({attempt} of {})", attempts - 1));
                tokio::time::sleep(pause).await;
            }
        }
    }
    let dir = project_dir()?;
    let archive = temp.path().to_owned();
    let summary = tokio::task::spawn_blocking(move || runnel_archive::extract_file(&archive, &dir))
        .await
        .context("the extractor stopped unexpectedly")?
        .with_context(|| format!("failed to extract the artifacts of job {}", access.id.0))?;
    for warning in &summary.warnings {
        warn(&warning.to_string());
    }
    if summary.warnings_dropped > 0 {
        warn(&format!(
            "{} more entries were skipped",
            summary.warnings_dropped
        ));
    }
    Ok(())
}

fn cache_file(file: Option<&Path>) -> anyhow::Result<&Path> {
    file.filter(|f| !f.as_os_str().is_empty())
        .context("missing the cache file (--file)")
}

/// What [`archive`] did to the local archive.
#[derive(Debug, PartialEq, Eq)]
enum Archived {
    /// It already held the selection.
    UpToDate,
    /// It was (re)written.
    Written,
}

/// Writes the local archive unless it is up to date.
fn archive(args: &CacheArchiverArgs, file: &Path) -> anyhow::Result<Archived> {
    let format = match args.compression_format.trim() {
        "" | "zip" => ArchiveFormat::Zip,
        "tarzstd" => ArchiveFormat::TarZstd,
        other => {
            warn(&format!(
                "unsupported cache compression format {other:?}; using zip"
            ));
            ArchiveFormat::Zip
        }
    };
    let dir = project_dir()?;
    let selection = select_files(&dir, &args.files)?;
    if up_to_date(file, &selection) {
        say("Archive is up to date!");
        return Ok(Archived::UpToDate);
    }
    let parent = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    create_cache_dirs(parent)
        .with_context(|| format!("failed to create the cache directory {}", parent.display()))?;
    let temp = tempfile::Builder::new()
        .prefix(".cache-")
        .tempfile_in(parent)
        .with_context(|| format!("failed to create a temporary file in {}", parent.display()))?;
    let options = ArchiveOptions {
        format,
        level: compression_level(&args.compression_level),
    };
    let summary =
        runnel_archive::create_archive(&selection, &options, BufWriter::new(temp.as_file()))
            .with_context(|| format!("failed to write the cache archive {}", file.display()))?;
    for skipped in &summary.skipped {
        warn(&format!("{skipped}: left out of the cache archive"));
    }
    temp.persist(file)
        .map_err(|error| error.error)
        .with_context(|| format!("failed to save the cache archive {}", file.display()))?;
    Ok(Archived::Written)
}

/// Creates the cache directories leading to an archive, 0755 whatever the umask: the docker
/// helper container runs with `umask 0000` so the build container's user can write what it
/// clones and extracts into the builds directory, and the cache tree (often a host
/// `cache_dir`) must not become world-writable with it (review L11). The archive itself is a
/// 0600 temporary file renamed into place.
pub(crate) fn create_cache_dirs(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
}

/// Whether the zip at `file` already holds exactly `selection`, none of it newer than the
/// archive (same-second changes count as newer). Anything unreadable means "rebuild".
fn up_to_date(file: &Path, selection: &Selection) -> bool {
    let Ok(metadata) = std::fs::metadata(file) else {
        return false;
    };
    let Some(archived) = metadata
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_secs()).ok())
    else {
        return false;
    };
    if selection.entries().iter().any(|e| e.mtime >= archived) {
        return false;
    }
    let Ok(reader) = std::fs::File::open(file) else {
        return false;
    };
    let Ok(zip) = zip::ZipArchive::new(std::io::BufReader::new(reader)) else {
        return false;
    };
    let Ok(names) = zip.file_names().collect::<Result<Vec<_>, _>>() else {
        return false;
    };
    let mut names: Vec<&str> = names.iter().map(|n| n.trim_end_matches('/')).collect();
    names.sort_unstable();
    let mut selected: Vec<&str> = selection
        .entries()
        .iter()
        .map(|e| e.path.as_str())
        .collect();
    selected.sort_unstable();
    names == selected
}

fn extract(file: &Path) -> anyhow::Result<()> {
    let dir = project_dir()?;
    let summary = runnel_archive::extract_file(file, &dir)
        .with_context(|| format!("failed to extract the cache archive {}", file.display()))?;
    for warning in &summary.warnings {
        warn(&warning.to_string());
    }
    if summary.warnings_dropped > 0 {
        warn(&format!(
            "{} more entries were skipped",
            summary.warnings_dropped
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use filetime::FileTime;

    use super::*;

    fn select_all(dir: &Path) -> Selection {
        let spec = PathSpec {
            paths: vec!["vendor/".into()],
            ..PathSpec::default()
        };
        runnel_archive::select(dir, &spec).unwrap()
    }

    fn set_mtime(path: &Path, unix: i64) {
        filetime::set_file_mtime(path, FileTime::from_unix_time(unix, 0)).unwrap();
    }

    /// A project with `vendor/a.txt`, both 2020-01-01, and its zip written now.
    fn project_and_archive() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let project = dir.path().join("project");
        fs_err::create_dir_all(project.join("vendor")).unwrap();
        fs_err::write(project.join("vendor/a.txt"), "a").unwrap();
        set_mtime(&project.join("vendor/a.txt"), 1_577_836_800);
        set_mtime(&project.join("vendor"), 1_577_836_800);
        let archive = dir.path().join("cache.zip");
        let file = fs_err::File::create(&archive).unwrap();
        runnel_archive::create_archive(
            &select_all(&project),
            &ArchiveOptions::default(),
            BufWriter::new(file),
        )
        .unwrap();
        (dir, archive)
    }

    #[test]
    fn an_unchanged_selection_is_up_to_date() {
        let (dir, archive) = project_and_archive();
        let project = dir.path().join("project");
        assert!(up_to_date(&archive, &select_all(&project)));
    }

    #[test]
    fn a_newer_file_makes_the_archive_stale() {
        let (dir, archive) = project_and_archive();
        let project = dir.path().join("project");
        fs_err::write(project.join("vendor/a.txt"), "changed").unwrap();
        assert!(!up_to_date(&archive, &select_all(&project)));
    }

    #[test]
    fn an_added_or_removed_old_file_makes_the_archive_stale() {
        let (dir, archive) = project_and_archive();
        let project = dir.path().join("project");
        // Restored from elsewhere with an old mtime: the mtime check alone would miss it.
        fs_err::write(project.join("vendor/b.txt"), "b").unwrap();
        set_mtime(&project.join("vendor/b.txt"), 1_577_836_800);
        set_mtime(&project.join("vendor"), 1_577_836_800);
        assert!(!up_to_date(&archive, &select_all(&project)));
        fs_err::remove_file(project.join("vendor/b.txt")).unwrap();
        fs_err::remove_file(project.join("vendor/a.txt")).unwrap();
        set_mtime(&project.join("vendor"), 1_577_836_800);
        assert!(!up_to_date(&archive, &select_all(&project)));
    }

    #[test]
    fn a_missing_or_foreign_archive_is_never_up_to_date() {
        let (dir, archive) = project_and_archive();
        let project = dir.path().join("project");
        let selection = select_all(&project);
        assert!(!up_to_date(&dir.path().join("missing.zip"), &selection));
        fs_err::write(&archive, "not a zip").unwrap();
        let now = FileTime::from_system_time(SystemTime::now());
        filetime::set_file_mtime(&archive, now).unwrap();
        assert!(!up_to_date(&archive, &selection));
    }
}
