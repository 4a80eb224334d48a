//! The one error type of the client, [`ApiError`], and the display-safe URL it carries.
//!
//! Every variant names the operation and its object (the endpoint's method and URL, a file
//! path, a job id). URLs are shown through [`SafeUrl`], which drops credentials and the query
//! string (object-storage redirects carry signatures there); tokens never appear at all. This
//! module does not decide what an error means for the caller: outcome enums in the endpoint
//! modules do that.

use std::fmt;
use std::path::PathBuf;

use reqwest::{Method, StatusCode};
use runnel_types::JobId;
use url::Url;

/// An error from the GitLab API client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The configured GitLab URL could not be parsed.
    #[error("invalid GitLab URL `{url}`")]
    InvalidUrl {
        /// The URL as configured, without credentials.
        url: String,
        /// Why it did not parse.
        #[source]
        source: url::ParseError,
    },

    /// The configured GitLab URL is not `http` or `https`.
    #[error("unsupported scheme `{scheme}` in GitLab URL `{url}` (expected http or https)")]
    UnsupportedScheme {
        /// The URL as configured, without credentials.
        url: String,
        /// The offending scheme.
        scheme: String,
    },

    /// A TLS file (`tls-ca-file`, `tls-cert-file`, `tls-key-file`) could not be read.
    #[error("failed to read {what} `{}`", path.display())]
    ReadTlsFile {
        /// Which setting the file came from.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A TLS file was read but holds no usable certificate or key.
    #[error("failed to load {what} `{}`", path.display())]
    InvalidTlsFile {
        /// Which setting the file came from.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it was rejected.
        #[source]
        source: reqwest::Error,
    },

    /// Only one of `tls-cert-file` and `tls-key-file` was given.
    #[error("`tls-cert-file` and `tls-key-file` must be set together (only `{}` is set)", path.display())]
    IncompleteTlsIdentity {
        /// The one file that was given.
        path: PathBuf,
    },

    /// The HTTP client could not be built.
    #[error("failed to build the HTTP client for `{url}`")]
    BuildClient {
        /// The GitLab URL.
        url: SafeUrl,
        /// Why.
        #[source]
        source: reqwest::Error,
    },

    /// A token or other value cannot be sent as an HTTP header (it holds control characters).
    #[error("invalid value for header `{header}` in request to {method} {url}")]
    InvalidHeader {
        /// The request method.
        method: Method,
        /// The request URL.
        url: SafeUrl,
        /// The header name.
        header: &'static str,
    },

    /// The request could not be sent or its response not received.
    #[error("request to {method} {url} failed after {}", Attempts(*attempts))]
    Transport {
        /// The request method.
        method: Method,
        /// The request URL.
        url: SafeUrl,
        /// How many times the request was sent.
        attempts: u32,
        /// The transport error (without its URL).
        #[source]
        source: reqwest::Error,
    },

    /// The server answered with a status the endpoint does not expect.
    #[error("request to {method} {url} failed with {status} after {}", Attempts(*attempts))]
    Status {
        /// The request method.
        method: Method,
        /// The request URL.
        url: SafeUrl,
        /// The status received.
        status: StatusCode,
        /// How many times the request was sent.
        attempts: u32,
    },

    /// A JSON response came with another content type.
    #[error("response to {method} {url} is not JSON (Content-Type `{content_type}`)")]
    NotJson {
        /// The request method.
        method: Method,
        /// The request URL.
        url: SafeUrl,
        /// The content type received (empty when absent).
        content_type: String,
    },

    /// The response body could not be read.
    #[error("failed to read the response to {method} {url}")]
    ReadBody {
        /// The request method.
        method: Method,
        /// The request URL.
        url: SafeUrl,
        /// Why.
        #[source]
        source: reqwest::Error,
    },

    /// The response body is longer than any answer of the API can be (review L6).
    #[error("the response to {method} {url} is larger than {limit} bytes")]
    BodyTooLarge {
        /// The request method.
        method: Method,
        /// The request URL.
        url: SafeUrl,
        /// The most read.
        limit: usize,
    },

    /// The response body is not the JSON the endpoint returns.
    #[error("failed to decode the response to {method} {url} at `{path}`")]
    Decode {
        /// The request method.
        method: Method,
        /// The request URL.
        url: SafeUrl,
        /// Where in the document decoding failed (`.` for the root).
        path: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },

    /// A job payload could not be decoded.
    #[error("failed to decode job {} at `{path}`", job_label(*job_id))]
    DecodeJob {
        /// The job id, when the payload shows one.
        job_id: Option<JobId>,
        /// Where in the document decoding failed (`.` for the root).
        path: String,
        /// Line of a syntax error (0 when the JSON was well-formed).
        line: usize,
        /// Column of a syntax error (0 when the JSON was well-formed).
        column: usize,
        /// Why.
        #[source]
        source: serde_json::Error,
    },

    /// A token expiry date is not RFC 3339.
    #[error("invalid token expiry `{value}` in the response to {method} {url}")]
    InvalidExpiry {
        /// The request method.
        method: Method,
        /// The request URL.
        url: SafeUrl,
        /// The value received.
        value: String,
        /// Why.
        #[source]
        source: time::error::Parse,
    },

    /// A trace patch exceeds the 1 MiB GitLab accepts in one request.
    #[error("trace patch for job {job_id} is {len} bytes, more than the {limit} bytes allowed")]
    TracePatchTooLarge {
        /// The job.
        job_id: JobId,
        /// The patch size.
        len: usize,
        /// The limit.
        limit: usize,
    },

    /// A redirect had no usable `Location`.
    #[error("redirect from {method} {url} has no valid Location")]
    InvalidRedirect {
        /// The request method.
        method: Method,
        /// The URL that redirected.
        url: SafeUrl,
    },

    /// Too many redirects were followed.
    #[error("too many redirects for {method} {url}")]
    TooManyRedirects {
        /// The request method.
        method: Method,
        /// The first URL.
        url: SafeUrl,
    },

    /// An artifact file to upload could not be opened.
    #[error("failed to open artifacts file `{}` for job {job_id}", path.display())]
    OpenArtifacts {
        /// The job.
        job_id: JobId,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// Downloaded artifacts could not be written.
    #[error("failed to write artifacts of job {job_id} to {target}")]
    WriteArtifacts {
        /// The job.
        job_id: JobId,
        /// Where they were going (a path, or `the output stream`).
        target: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl ApiError {
    /// Whether GitLab answered 403 Forbidden (an unknown or revoked token).
    pub fn is_forbidden(&self) -> bool {
        self.status() == Some(StatusCode::FORBIDDEN)
    }

    /// The HTTP status GitLab answered with, when the request got that far.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether the error comes from building the client or a request rather than from the
    /// server or the network (the official `clientError`): such a runner is unhealthy.
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            Self::InvalidUrl { .. }
                | Self::UnsupportedScheme { .. }
                | Self::ReadTlsFile { .. }
                | Self::InvalidTlsFile { .. }
                | Self::IncompleteTlsIdentity { .. }
                | Self::BuildClient { .. }
                | Self::InvalidHeader { .. }
        )
    }
}

fn job_label(job_id: Option<JobId>) -> String {
    job_id.map_or_else(|| "(unknown id)".to_owned(), |id| id.to_string())
}

/// "1 attempt" / "5 attempts".
struct Attempts(u32);

impl fmt::Display for Attempts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let noun = if self.0 == 1 { "attempt" } else { "attempts" };
        write!(f, "{} {noun}", self.0)
    }
}

/// A URL that is safe to show: no user info, no query, no fragment.
#[derive(Clone, PartialEq, Eq)]
pub struct SafeUrl(String);

impl SafeUrl {
    /// Strips credentials, query and fragment from `url`.
    pub fn new(url: &Url) -> Self {
        let mut safe = url.clone();
        // Both only fail for URLs that cannot carry credentials in the first place, so
        // there is nothing to strip then.
        safe.set_username("").ok();
        safe.set_password(None).ok();
        safe.set_query(None);
        safe.set_fragment(None);
        Self(safe.into())
    }

    /// The URL text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SafeUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SafeUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// Removes a `user:password@` part from a URL that did not parse.
pub(crate) fn redact_userinfo(raw: &str) -> String {
    let Some(scheme_end) = raw.find("://").map(|i| i + 3) else {
        return raw.to_owned();
    };
    let (head, rest) = raw.split_at(scheme_end);
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rfind('@') {
        Some(at) => format!("{head}{}{tail}", &authority[at + 1..]),
        None => raw.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_url_drops_credentials_and_query() {
        let url = Url::parse("https://user:pw@host:8443/a/b?X-Amz-Signature=abc#frag").unwrap();
        assert_eq!(SafeUrl::new(&url).as_str(), "https://host:8443/a/b");
    }

    #[test]
    fn redacts_userinfo_of_unparsed_urls() {
        assert_eq!(redact_userinfo("http://u:p@ho st/x@y"), "http://ho st/x@y");
        assert_eq!(redact_userinfo("no scheme@all"), "no scheme@all");
        assert_eq!(redact_userinfo("http://host"), "http://host");
    }

    #[test]
    fn attempts_are_pluralised() {
        assert_eq!(Attempts(1).to_string(), "1 attempt");
        assert_eq!(Attempts(5).to_string(), "5 attempts");
    }
}
