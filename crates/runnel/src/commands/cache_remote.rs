//! The distributed-cache transfers of `cache-extractor` and `cache-archiver`: one cache
//! object, reached through the presigned URLs the daemon signed (reference 1.4).
//!
//! A presigned URL is a secret (its query grants access), so nothing here ever prints one:
//! messages show [`clean_url`] (no query, no userinfo) and every `reqwest` error loses its URL.
//!
//! Unchanged archives are not transferred twice. S3 gives a single-part upload the MD5 of its
//! content as `ETag`, so the extractor skips the download when the object's `ETag` is the MD5
//! of the local archive (asking with `If-None-Match`), and the archiver skips the upload when
//! the `HEAD` of the object shows that `ETag`. A server whose `ETag`s are not MD5s (SSE-KMS,
//! multipart copies) never matches, so the transfer happens: the rule can only cost a
//! transfer, never keep a stale object.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use md5::Digest as _;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use tokio::io::AsyncWriteExt as _;

/// Tries per transfer (the official `--retry 2`: one try and two retries).
const ATTEMPTS: u32 = 3;
/// Pause between tries (the official `--retry-time 1s`).
const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// How long connecting to the storage server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// One cache object on the storage server.
pub(crate) struct RemoteObject {
    client: reqwest::Client,
    /// The presigned GET (extractor) or PUT (archiver) URL. Secret.
    url: String,
    /// The presigned HEAD URL, if the daemon sent one. Secret.
    head_url: Option<String>,
}

/// How a download ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Download {
    /// The server has no such object (404).
    Missing,
    /// The local archive already has the object's content.
    UpToDate,
    /// The object replaced the local archive.
    Downloaded,
}

/// A failed try, and whether another may succeed.
struct Failure {
    error: anyhow::Error,
    retry: bool,
}

impl Failure {
    fn retry(error: anyhow::Error) -> Self {
        Self { error, retry: true }
    }

    fn fatal(error: anyhow::Error) -> Self {
        Self {
            error,
            retry: false,
        }
    }
}

impl RemoteObject {
    /// `timeout_minutes` bounds each request, as the helpers' `--timeout`.
    pub(crate) fn new(
        url: &str,
        head_url: Option<&str>,
        timeout_minutes: u64,
    ) -> anyhow::Result<Self> {
        let parsed = url::Url::parse(url)
            .map_err(|error| anyhow::anyhow!("the cache URL is not a valid URL: {error}"))?;
        anyhow::ensure!(
            matches!(parsed.scheme(), "http" | "https"),
            "the cache URL {} is not an http(s) URL",
            clean_url(url)
        );
        let builder = || {
            reqwest::Client::builder()
                .user_agent(concat!("runnel/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(CONNECT_TIMEOUT)
                .timeout(Duration::from_secs(timeout_minutes.max(1) * 60))
                // Presigned URLs are for one host; never hand one to another.
                .redirect(reqwest::redirect::Policy::none())
        };
        let client = match builder().build() {
            Ok(client) => client,
            // No usable CA store (a minimal image): plain HTTP still works.
            Err(_) if parsed.scheme() == "http" => {
                builder().tls_certs_only(Vec::new()).build().map_err(|e| {
                    anyhow::anyhow!("cannot set up an HTTP client: {}", e.without_url())
                })?
            }
            Err(error) => anyhow::bail!("cannot set up an HTTP client: {}", error.without_url()),
        };
        Ok(Self {
            client,
            url: url.to_owned(),
            head_url: head_url.filter(|u| !u.is_empty()).map(str::to_owned),
        })
    }

    /// The object's address for messages: no signature.
    pub(crate) fn address(&self) -> String {
        clean_url(&self.url)
    }

    /// Downloads the object to `archive` (through a temporary file next to it), unless
    /// `archive` already holds the same content.
    pub(crate) async fn download(&self, archive: &Path) -> anyhow::Result<Download> {
        let local = md5_hex(archive).await.ok().flatten();
        retrying(|| self.try_download(archive, local.as_deref())).await
    }

    async fn try_download(&self, archive: &Path, local: Option<&str>) -> Result<Download, Failure> {
        let mut request = self.client.get(&self.url);
        if let Some(md5) = local {
            request = request.header(IF_NONE_MATCH, format!("\"{md5}\""));
        }
        let response = request.send().await.map_err(|e| self.transport("GET", e))?;
        match response.status() {
            StatusCode::NOT_FOUND => return Ok(Download::Missing),
            StatusCode::NOT_MODIFIED => return Ok(Download::UpToDate),
            status if !status.is_success() => return Err(self.status("GET", status)),
            _ => {}
        }
        if local.is_some() && etag(response.headers()).as_deref() == local {
            return Ok(Download::UpToDate);
        }
        let parent = parent_dir(archive);
        super::helpers::create_cache_dirs(&parent)
            .with_context(|| format!("failed to create the cache directory {}", parent.display()))
            .map_err(Failure::fatal)?;
        let temp = tempfile::Builder::new()
            .prefix(".cache-download-")
            .tempfile_in(&parent)
            .with_context(|| format!("failed to create a temporary file in {}", parent.display()))
            .map_err(Failure::fatal)?;
        let write_error = |e: std::io::Error| {
            Failure::fatal(anyhow::Error::new(e).context(format!(
                "failed to write the downloaded cache next to {}",
                archive.display()
            )))
        };
        let file = temp.as_file().try_clone().map_err(write_error)?;
        let mut out = tokio::io::BufWriter::new(tokio::fs::File::from_std(file));
        let mut response = response;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.transport("GET", e))?
        {
            out.write_all(&chunk).await.map_err(write_error)?;
        }
        out.flush().await.map_err(write_error)?;
        temp.persist(archive).map_err(|e| write_error(e.error))?;
        Ok(Download::Downloaded)
    }

    /// Whether the object already has `archive`'s content (its `HEAD` shows the archive's MD5
    /// as `ETag`); any doubt is "no".
    pub(crate) async fn holds(&self, archive: &Path) -> bool {
        let Some(head) = &self.head_url else {
            return false;
        };
        let Ok(Some(md5)) = md5_hex(archive).await else {
            return false;
        };
        self.remote_etag(head).await.as_deref() == Some(md5.as_str())
    }

    /// Uploads `archive` with a streamed PUT.
    pub(crate) async fn upload(&self, archive: &Path) -> anyhow::Result<()> {
        let size = fs_err::tokio::metadata(archive).await?.len();
        let md5 = md5_hex(archive)
            .await?
            .with_context(|| format!("{} disappeared", archive.display()))?;
        let content_md5 = hex::decode(&md5)
            .map(|raw| base64::engine::general_purpose::STANDARD.encode(raw))
            .context("MD5 digest")?;
        retrying(|| self.try_upload(archive, size, &content_md5)).await
    }

    async fn try_upload(
        &self,
        archive: &Path,
        size: u64,
        content_md5: &str,
    ) -> Result<(), Failure> {
        let file = fs_err::tokio::File::open(archive)
            .await
            .map_err(|e| Failure::fatal(anyhow::Error::new(e)))?;
        let body =
            reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file.into_parts().0));
        let response = self
            .client
            .put(&self.url)
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, size)
            .header("Content-MD5", content_md5)
            .body(body)
            .send()
            .await
            .map_err(|e| self.transport("PUT", e))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(self.status("PUT", status))
        }
    }

    /// The object's `ETag` (unquoted, lowercase), if a HEAD gets one; errors count as "none".
    async fn remote_etag(&self, head_url: &str) -> Option<String> {
        let response = self.client.head(head_url).send().await.ok()?;
        response
            .status()
            .is_success()
            .then(|| etag(response.headers()))
            .flatten()
    }

    fn transport(&self, method: &str, error: reqwest::Error) -> Failure {
        let error = error.without_url();
        Failure::retry(anyhow::anyhow!(
            "{method} {} failed: {}",
            self.address(),
            error_chain(&error)
        ))
    }

    /// 5xx may pass; anything else (403 for a bad signature, 400, …) will not.
    fn status(&self, method: &str, status: StatusCode) -> Failure {
        let error = anyhow::anyhow!("{method} {}: {status}", self.address());
        if status.is_server_error() {
            Failure::retry(error)
        } else {
            Failure::fatal(error)
        }
    }
}

/// Runs `attempt` up to [`ATTEMPTS`] times while its failures may pass.
async fn retrying<T, F, Fut>(mut attempt: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    let mut tries = 0;
    loop {
        tries += 1;
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(failure) if failure.retry && tries < ATTEMPTS => {
                tracing::debug!(error = %failure.error, tries, "cache transfer failed; retrying");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            Err(failure) => return Err(failure.error),
        }
    }
}

fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn parent_dir(file: &Path) -> PathBuf {
    file.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_owned)
}

/// An `ETag` header without quotes or weak marker, lowercase.
fn etag(headers: &reqwest::header::HeaderMap) -> Option<String> {
    let value = headers.get(ETAG)?.to_str().ok()?.trim();
    let value = value.strip_prefix("W/").unwrap_or(value);
    Some(value.trim_matches('"').to_ascii_lowercase())
}

/// The MD5 of `file` as lowercase hex; `None` if it does not exist.
async fn md5_hex(file: &Path) -> anyhow::Result<Option<String>> {
    let file = file.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut reader = match std::fs::File::open(&file) {
            Ok(reader) => reader,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => {
                return Err(
                    anyhow::Error::new(error).context(format!("cannot read {}", file.display()))
                );
            }
        };
        let mut hasher = md5::Md5::new();
        let mut buffer = vec![0_u8; 256 * 1024];
        loop {
            let read = std::io::Read::read(&mut reader, &mut buffer)
                .with_context(|| format!("cannot read {}", file.display()))?;
            if read == 0 {
                break;
            }
            hasher.update(&buffer[..read]);
        }
        Ok(Some(hex::encode(hasher.finalize())))
    })
    .await
    .context("the checksum task stopped unexpectedly")?
}

/// `url` fit for a message: scheme, host, port and path only (no signature, no userinfo).
pub(crate) fn clean_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            parsed.set_query(None);
            parsed.set_fragment(None);
            parsed.set_username("").ok();
            parsed.set_password(None).ok();
            parsed.to_string()
        }
        // Unparseable: show no part that could carry a signature.
        Err(_) => url
            .split(['?', '#'])
            .next()
            .unwrap_or_default()
            .rsplit('@')
            .next()
            .unwrap_or_default()
            .to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_never_show_the_signature() {
        assert_eq!(
            clean_url("http://user:pw@s3:9000/b/runner/x/project/1/k?X-Amz-Signature=abc#f"),
            "http://s3:9000/b/runner/x/project/1/k"
        );
        assert_eq!(clean_url("not a url?X-Amz-Signature=abc"), "not a url");
    }

    #[test]
    fn etags_are_compared_without_quotes_or_weak_markers() {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(ETAG, "W/\"ABCdef\"".parse().unwrap());
        assert_eq!(etag(&headers).as_deref(), Some("abcdef"));
    }

    #[tokio::test]
    async fn md5_of_a_file_and_of_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a");
        fs_err::write(&file, "hello").unwrap();
        assert_eq!(
            md5_hex(&file).await.unwrap().as_deref(),
            Some("5d41402abc4b2a76b9719d911017c592")
        );
        assert_eq!(md5_hex(&dir.path().join("missing")).await.unwrap(), None);
    }
}
