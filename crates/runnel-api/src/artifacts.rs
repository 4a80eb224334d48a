//! Artifact transfers (reference 3.8): streamed multipart upload of an archive file and
//! streamed download to a file or any `AsyncWrite`.
//!
//! Redirects are followed here, explicitly: an upload follows 307/308 to another GitLab host
//! (job token kept unless the hop goes from https to http, body re-sent), a download follows
//! 301/302/303/307/308 to object storage (job token dropped when the redirect leaves the GitLab
//! origin). Building or extracting the
//! archive is not this module's concern.

use std::path::Path;

use futures::StreamExt;
use reqwest::header::{HeaderName, HeaderValue, LOCATION};
use reqwest::{Method, RequestBuilder, StatusCode};
use runnel_types::{ArtifactFormat, JobId, JobToken};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use url::Url;

use crate::client::{Client, Sent, secret_header};
use crate::error::{ApiError, SafeUrl};
use crate::observe::Endpoint;

const JOB_TOKEN: &str = "job-token";
const MAX_REDIRECTS: usize = 10;
/// An upload is redirected to another GitLab host, which needs the job token.
const UPLOAD_REDIRECTS: Redirects = Redirects {
    follow: &[
        StatusCode::TEMPORARY_REDIRECT,
        StatusCode::PERMANENT_REDIRECT,
    ],
    token_to_other_origins: true,
};
/// A download is redirected to object storage, which must not see the job token.
const DOWNLOAD_REDIRECTS: Redirects = Redirects {
    follow: &[
        StatusCode::MOVED_PERMANENTLY,
        StatusCode::FOUND,
        StatusCode::SEE_OTHER,
        StatusCode::TEMPORARY_REDIRECT,
        StatusCode::PERMANENT_REDIRECT,
    ],
    token_to_other_origins: false,
};

/// Which redirects a transfer follows, and where its job token may go.
struct Redirects {
    follow: &'static [StatusCode],
    /// Whether the token goes to another origin too (never from https down to http).
    token_to_other_origins: bool,
}

impl Redirects {
    fn sends_token(&self, first: &Url, current: &Url) -> bool {
        if current.origin() == first.origin() {
            return true;
        }
        let downgrade = first.scheme() == "https" && current.scheme() != "https";
        self.token_to_other_origins && !downgrade
    }
}

/// An artifacts upload (`POST jobs/:id/artifacts`).
#[derive(Clone, Copy, Debug)]
pub struct ArtifactUpload<'a> {
    /// The job.
    pub job_id: JobId,
    /// The job token.
    pub token: &'a JobToken,
    /// The archive to upload (re-read on every attempt).
    pub path: &'a Path,
    /// The artifacts name (`artifacts:name`); empty means `artifacts`.
    pub name: &'a str,
    /// The archive format; `None` means zip, not sent.
    pub format: Option<ArtifactFormat>,
    /// `artifacts:reports` type (`archive`, `junit`, …); empty is not sent.
    pub artifact_type: &'a str,
    /// `artifacts:expire_in`; empty is not sent.
    pub expire_in: &'a str,
}

/// An artifacts download (`GET jobs/:id/artifacts`).
#[derive(Clone, Copy, Debug)]
pub struct ArtifactDownload<'a> {
    /// The job whose artifacts to fetch (a dependency).
    pub job_id: JobId,
    /// That job's token.
    pub token: &'a JobToken,
    /// Ask for a redirect to object storage (`direct_download=true`).
    pub direct_download: bool,
}

impl Client {
    /// Uploads an artifacts archive; expects 201. 403 (forbidden) and 413 (too large) come back
    /// as [`ApiError::Status`] without retries.
    pub async fn upload_artifacts(&self, upload: &ArtifactUpload<'_>) -> Result<(), ApiError> {
        let mut url = self.endpoint_url(&format!("jobs/{}/artifacts", upload.job_id));
        {
            let mut query = url.query_pairs_mut();
            if !upload.expire_in.is_empty() {
                query.append_pair("expire_in", upload.expire_in);
            }
            if let Some(format) = upload.format {
                query.append_pair("artifact_format", format.as_str());
            }
            if !upload.artifact_type.is_empty() {
                query.append_pair("artifact_type", upload.artifact_type);
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        let token = secret_header(&Method::POST, &url, JOB_TOKEN, upload.token.expose())?;
        let file_name = upload_file_name(upload.name, upload.format);
        let sent = self
            .send_following(
                Endpoint::UploadArtifacts,
                Method::POST,
                url,
                &UPLOAD_REDIRECTS,
                &token,
                |builder| Ok(builder.multipart(upload_form(upload, &file_name)?)),
            )
            .await?;
        if sent.status() == StatusCode::CREATED {
            Ok(())
        } else {
            Err(sent.unexpected())
        }
    }

    /// Downloads artifacts into `out`, returning the number of bytes written. 401, 403 and
    /// 404 come back as [`ApiError::Status`] without retries. Once the body streams, a failure
    /// is not retried here (bytes may already be written): the caller restarts the download.
    pub async fn download_artifacts<W: AsyncWrite + Unpin>(
        &self,
        download: &ArtifactDownload<'_>,
        out: &mut W,
    ) -> Result<u64, ApiError> {
        self.download_into(download, out, "the output stream").await
    }

    /// Downloads artifacts into a new file at `path` (removed again on failure), returning
    /// the number of bytes written.
    pub async fn download_artifacts_to_file(
        &self,
        download: &ArtifactDownload<'_>,
        path: &Path,
    ) -> Result<u64, ApiError> {
        let target = format!("`{}`", path.display());
        let write_error = |source| ApiError::WriteArtifacts {
            job_id: download.job_id,
            target: target.clone(),
            source,
        };
        let mut file = tokio::fs::File::create(path).await.map_err(write_error)?;
        let result = self.download_into(download, &mut file, &target).await;
        if result.is_err() {
            drop(file);
            if let Err(error) = tokio::fs::remove_file(path).await {
                tracing::debug!(path = %path.display(), %error, "cannot remove partial download");
            }
        }
        result
    }

    async fn download_into<W: AsyncWrite + Unpin>(
        &self,
        download: &ArtifactDownload<'_>,
        out: &mut W,
        target: &str,
    ) -> Result<u64, ApiError> {
        let mut url = self.endpoint_url(&format!("jobs/{}/artifacts", download.job_id));
        if download.direct_download {
            url.query_pairs_mut().append_pair("direct_download", "true");
        }
        let token = secret_header(&Method::GET, &url, JOB_TOKEN, download.token.expose())?;
        let sent = self
            .send_following(
                Endpoint::DownloadArtifacts,
                Method::GET,
                url,
                &DOWNLOAD_REDIRECTS,
                &token,
                Ok,
            )
            .await?;
        if sent.status() != StatusCode::OK {
            return Err(sent.unexpected());
        }
        let write_error = |source| ApiError::WriteArtifacts {
            job_id: download.job_id,
            target: target.to_owned(),
            source,
        };
        let Sent {
            response,
            method,
            url,
            ..
        } = sent;
        let mut body = response.bytes_stream();
        let mut written = 0;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|source| ApiError::ReadBody {
                method: method.clone(),
                url: url.clone(),
                source: source.without_url(),
            })?;
            out.write_all(&chunk).await.map_err(write_error)?;
            written += chunk.len() as u64;
        }
        out.flush().await.map_err(write_error)?;
        Ok(written)
    }

    /// Sends a request and follows redirects as `redirects` says; every hop gets retries of
    /// its own.
    async fn send_following(
        &self,
        endpoint: Endpoint,
        method: Method,
        url: Url,
        redirects: &Redirects,
        token: &(HeaderName, HeaderValue),
        prepare: impl Fn(RequestBuilder) -> Result<RequestBuilder, ApiError>,
    ) -> Result<Sent, ApiError> {
        let first = url.clone();
        let mut url = url;
        for _ in 0..=MAX_REDIRECTS {
            let with_token = redirects.sends_token(&first, &url);
            let sent = self
                .send(endpoint, method.clone(), &url, |builder| {
                    let builder = if with_token {
                        builder.header(token.0.clone(), token.1.clone())
                    } else {
                        builder
                    };
                    prepare(builder)
                })
                .await?;
            if !redirects.follow.contains(&sent.status()) {
                return Ok(sent);
            }
            url = redirect_target(&sent, &url)?;
            tracing::debug!(
                endpoint = endpoint.as_str(),
                status = sent.status().as_u16(),
                to = %SafeUrl::new(&url),
                "following redirect"
            );
        }
        Err(ApiError::TooManyRedirects {
            method,
            url: SafeUrl::new(&first),
        })
    }
}

fn redirect_target(sent: &Sent, from: &Url) -> Result<Url, ApiError> {
    let invalid = || ApiError::InvalidRedirect {
        method: sent.method.clone(),
        url: sent.url.clone(),
    };
    let location = sent.header(LOCATION.as_str()).ok_or_else(invalid)?;
    let target = from.join(location).map_err(|_| invalid())?;
    if matches!(target.scheme(), "http" | "https") {
        Ok(target)
    } else {
        Err(invalid())
    }
}

/// The multipart form: one `file` part streamed from the archive, of unknown length.
fn upload_form(
    upload: &ArtifactUpload<'_>,
    file_name: &str,
) -> Result<reqwest::multipart::Form, ApiError> {
    let file = std::fs::File::open(upload.path).map_err(|source| ApiError::OpenArtifacts {
        job_id: upload.job_id,
        path: upload.path.to_owned(),
        source,
    })?;
    let stream = tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file));
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    let part = reqwest::multipart::Part::stream(reqwest::Body::wrap_stream(stream))
        .file_name(file_name.to_owned())
        .headers(headers);
    Ok(reqwest::multipart::Form::new().part("file", part))
}

/// `<name>.zip`, `<name>.gz`, `<name>.tar.zst` or the bare name, as the official uploader
/// names the part.
fn upload_file_name(name: &str, format: Option<ArtifactFormat>) -> String {
    let base = Path::new(name)
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty())
        .unwrap_or("artifacts");
    match format.unwrap_or(ArtifactFormat::Zip) {
        ArtifactFormat::Zip | ArtifactFormat::ZipZstd => format!("{base}.zip"),
        ArtifactFormat::Gzip => format!("{base}.gz"),
        ArtifactFormat::TarZstd => format!("{base}.tar.zst"),
        ArtifactFormat::Raw => base.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_tokens_follow_redirects_only_where_allowed() {
        let url = |u: &str| Url::parse(u).unwrap();
        let gitlab = url("https://gitlab.example.com/api/v4/jobs/1/artifacts");
        let same = url("https://gitlab.example.com/other");
        let other = url("https://geo.example.com/api/v4/jobs/1/artifacts");
        let plain = url("http://geo.example.com/api/v4/jobs/1/artifacts");
        assert!(UPLOAD_REDIRECTS.sends_token(&gitlab, &same));
        assert!(UPLOAD_REDIRECTS.sends_token(&gitlab, &other));
        assert!(
            !UPLOAD_REDIRECTS.sends_token(&gitlab, &plain),
            "no https downgrade"
        );
        assert!(DOWNLOAD_REDIRECTS.sends_token(&gitlab, &same));
        assert!(!DOWNLOAD_REDIRECTS.sends_token(&gitlab, &other));
    }

    #[test]
    fn upload_file_names_follow_the_format() {
        assert_eq!(upload_file_name("", None), "artifacts.zip");
        assert_eq!(
            upload_file_name("dir/report", Some(ArtifactFormat::Gzip)),
            "report.gz"
        );
        assert_eq!(
            upload_file_name("x", Some(ArtifactFormat::TarZstd)),
            "x.tar.zst"
        );
        assert_eq!(
            upload_file_name("x", Some(ArtifactFormat::ZipZstd)),
            "x.zip"
        );
        assert_eq!(
            upload_file_name("junit.xml", Some(ArtifactFormat::Raw)),
            "junit.xml"
        );
    }
}
