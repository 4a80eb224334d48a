//! The distributed cache of a job: `[runners.cache]` turned into presigned S3 object URLs.
//!
//! The daemon signs, as the official runner does: it holds the credentials and the clock, so
//! the job only ever sees URLs that expire (job timeout + [`EXPIRY_MARGIN`]). The planner places
//! them ([`runnel_job::RemoteCache`]) and the `cache-extractor`/`cache-archiver` helpers do the
//! transfers. Signing is SigV4 query signing by `rusty-s3`, which is sans-IO: nothing here
//! talks to the network.
//!
//! Object names follow the official rule:
//! `<Path>/runner/<short token>/project/<project id>/<cache key>`, without the
//! `runner/<short token>/` part when `Shared = true`, joined and cleaned like Go's `path.Join`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use jiff::Timestamp;
use runnel_config::{CacheConfig, CacheS3Config};
use runnel_job::{CacheUrls, RemoteCache};
use runnel_types::Secret;
use rusty_s3::actions::{GetObject, HeadObject, PutObject};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

/// `BucketLocation` when none is configured (what the official runner assumes too).
const DEFAULT_REGION: &str = "us-east-1";
/// The AWS endpoint that `ServerAddress` may name explicitly.
const AWS_ADDRESS: &str = "s3.amazonaws.com";
/// S3 refuses presigned URLs valid for longer than a week.
const MAX_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);
/// Added to the job timeout: the cache stages run last, and clocks drift.
const EXPIRY_MARGIN: Duration = Duration::from_secs(3600);

/// A `[runners.cache]` that cannot be used; the job then keeps its caches local.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CacheConfigError {
    /// A storage type Runnel cannot sign for yet.
    #[error(
        "[runners.cache] Type = {0:?} is not supported yet (only \"s3\"); the cache stays local"
    )]
    Unsupported(String),
    /// `Type = "s3"` without its section.
    #[error(
        "[runners.cache] Type = \"s3\" needs a [runners.cache.s3] section; the cache stays local"
    )]
    MissingS3,
    /// A required `[runners.cache.s3]` key is missing or empty.
    #[error("[runners.cache.s3] {0} is missing; the cache stays local")]
    Missing(&'static str),
    /// Instance-profile credentials are not implemented.
    #[error(
        "[runners.cache.s3] AuthenticationType = \"iam\" is not supported yet: set AccessKey and SecretKey; the cache stays local"
    )]
    Iam,
    /// `ServerAddress` (with the other settings) does not make a usable endpoint.
    #[error(
        "[runners.cache.s3] ServerAddress {address:?} is not usable: {reason}; the cache stays local"
    )]
    BadAddress {
        /// The configured address.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// The distributed cache for one job, if `[runners.cache]` configures one.
///
/// `Ok(None)` when no `Type` is set (the layout `register` writes); an error for a
/// configuration that asks for a distributed cache Runnel cannot use.
pub(crate) fn remote_cache(
    config: Option<&CacheConfig>,
    short_token: &str,
    project_id: u64,
    job_timeout: Duration,
    now: SystemTime,
) -> Result<Option<Arc<dyn RemoteCache>>, CacheConfigError> {
    let Some(config) = config else {
        return Ok(None);
    };
    let kind = config.kind.as_deref().map(str::trim).unwrap_or_default();
    match kind {
        "" => return Ok(None),
        "s3" => {}
        other => return Err(CacheConfigError::Unsupported(other.to_owned())),
    }
    let s3 = config.s3.as_ref().ok_or(CacheConfigError::MissingS3)?;
    let prefix = object_prefix(
        config.path.as_deref().unwrap_or_default(),
        config.shared,
        short_token,
        project_id,
    );
    let signed_at = Timestamp::try_from(now).unwrap_or(Timestamp::UNIX_EPOCH);
    let cache = S3Cache {
        bucket: bucket(s3)?,
        credentials: credentials(s3)?,
        prefix,
        signed_at,
        expires_in: (job_timeout + EXPIRY_MARGIN).min(MAX_EXPIRY),
        max_uploaded_archive_size: config.max_uploaded_archive_size,
    };
    Ok(Some(Arc::new(cache)))
}

/// Presigns object URLs in one S3 bucket for one job.
#[derive(Debug)]
struct S3Cache {
    bucket: Bucket,
    credentials: Credentials,
    /// `<Path>/[runner/<short token>/]project/<id>`.
    prefix: String,
    signed_at: Timestamp,
    expires_in: Duration,
    max_uploaded_archive_size: u64,
}

impl RemoteCache for S3Cache {
    fn urls(&self, key: &str) -> Option<CacheUrls> {
        let object = object_name(&self.prefix, key)?;
        let sign = |method: Method| {
            Secret::new(String::from(presign(
                &self.bucket,
                &self.credentials,
                method,
                &object,
                self.expires_in,
                &self.signed_at,
            )))
        };
        Some(CacheUrls {
            get: sign(Method::Get),
            head: sign(Method::Head),
            put: sign(Method::Put),
        })
    }

    fn max_uploaded_archive_size(&self) -> u64 {
        self.max_uploaded_archive_size
    }
}

#[derive(Clone, Copy)]
enum Method {
    Get,
    Head,
    Put,
}

fn presign(
    bucket: &Bucket,
    credentials: &Credentials,
    method: Method,
    object: &str,
    expires_in: Duration,
    at: &Timestamp,
) -> url::Url {
    let credentials = Some(credentials);
    match method {
        Method::Get => GetObject::new(bucket, credentials, object).sign_with_time(expires_in, at),
        Method::Head => HeadObject::new(bucket, credentials, object).sign_with_time(expires_in, at),
        Method::Put => PutObject::new(bucket, credentials, object).sign_with_time(expires_in, at),
    }
}

fn non_empty(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|v| !v.is_empty())
}

fn bucket(s3: &CacheS3Config) -> Result<Bucket, CacheConfigError> {
    let name =
        non_empty(s3.bucket_name.as_deref()).ok_or(CacheConfigError::Missing("BucketName"))?;
    let region = non_empty(s3.bucket_location.as_deref()).unwrap_or(DEFAULT_REGION);
    let address = non_empty(s3.server_address.as_deref());
    let bad = |reason: String| CacheConfigError::BadAddress {
        address: address.unwrap_or_default().to_owned(),
        reason,
    };
    let scheme = if s3.insecure { "http" } else { "https" };
    // AWS itself defaults to virtual-hosted buckets; any other server to path style.
    // On AWS itself, the dual-stack (IPv4 and IPv6, on unless `DualStack = false`) and
    // Transfer Acceleration endpoints are chosen as the official runner's SDK chooses them; a
    // custom `ServerAddress` is used as it is, with both settings ignored, as upstream.
    let dual_stack = s3.dual_stack.unwrap_or(true);
    let (endpoint, default_style) = match address {
        None | Some(AWS_ADDRESS) if s3.accelerate => {
            let host = if dual_stack {
                "s3-accelerate.dualstack.amazonaws.com"
            } else {
                "s3-accelerate.amazonaws.com"
            };
            (format!("{scheme}://{host}"), UrlStyle::VirtualHost)
        }
        None | Some(AWS_ADDRESS) if dual_stack => (
            format!("{scheme}://s3.dualstack.{region}.amazonaws.com"),
            UrlStyle::VirtualHost,
        ),
        None | Some(AWS_ADDRESS) if region == DEFAULT_REGION => {
            (format!("{scheme}://{AWS_ADDRESS}"), UrlStyle::VirtualHost)
        }
        None | Some(AWS_ADDRESS) => (
            format!("{scheme}://s3.{region}.amazonaws.com"),
            UrlStyle::VirtualHost,
        ),
        Some(address) if address.contains("://") => {
            return Err(bad(
                "give host[:port] without a scheme (Insecure = true selects http)".to_owned(),
            ));
        }
        Some(address) => (format!("{scheme}://{address}"), UrlStyle::Path),
    };
    let style = match s3.path_style {
        Some(true) => UrlStyle::Path,
        Some(false) => UrlStyle::VirtualHost,
        None => default_style,
    };
    let endpoint: url::Url = endpoint.parse().map_err(|e| bad(format!("{e}")))?;
    Bucket::new(endpoint, style, name.to_owned(), region.to_owned()).map_err(|e| bad(e.to_string()))
}

fn credentials(s3: &CacheS3Config) -> Result<Credentials, CacheConfigError> {
    if non_empty(s3.authentication_type.as_deref()).is_some_and(|t| t.eq_ignore_ascii_case("iam")) {
        return Err(CacheConfigError::Iam);
    }
    let key = non_empty(s3.access_key.as_deref()).ok_or(CacheConfigError::Missing("AccessKey"))?;
    let secret = s3
        .secret_key
        .as_ref()
        .map(Secret::expose)
        .filter(|s| !s.is_empty())
        .ok_or(CacheConfigError::Missing("SecretKey"))?;
    Ok(
        match s3
            .session_token
            .as_ref()
            .map(Secret::expose)
            .filter(|t| !t.is_empty())
        {
            Some(token) => Credentials::new_with_token(key, secret, token),
            None => Credentials::new(key, secret),
        },
    )
}

/// `<Path>/[runner/<short token>/]project/<id>`, cleaned.
fn object_prefix(path: &str, shared: bool, short_token: &str, project_id: u64) -> String {
    let project = project_id.to_string();
    let mut parts = vec![path];
    if !shared {
        parts.extend(["runner", short_token]);
    }
    parts.extend(["project", project.as_str()]);
    clean_join(&parts)
}

/// The object for `key` below `prefix`; `None` if the key would leave the project's space
/// (keys are sanitized before they get here, so this is a second line of defence).
fn object_name(prefix: &str, key: &str) -> Option<String> {
    let name = clean_join(&[prefix, key]);
    name.strip_prefix(prefix)
        .is_some_and(|rest| rest.len() > 1 && rest.starts_with('/'))
        .then_some(name)
}

/// Joins the non-empty `parts` with `/` and cleans the result like Go's `path.Join`: empty
/// and `.` segments dropped, `..` resolved (never above the root), a leading `/` kept.
fn clean_join(parts: &[&str]) -> String {
    let joined = parts
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("/");
    let rooted = joined.starts_with('/');
    let mut segments: Vec<&str> = Vec::new();
    for segment in joined.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                if segments.last().is_some_and(|s| *s != "..") {
                    segments.pop();
                } else if !rooted {
                    segments.push("..");
                }
            }
            other => segments.push(other),
        }
    }
    let body = segments.join("/");
    if rooted { format!("/{body}") } else { body }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3_config(address: Option<&str>) -> CacheS3Config {
        CacheS3Config {
            server_address: address.map(str::to_owned),
            access_key: Some("AKIAIOSFODNN7EXAMPLE".into()),
            secret_key: Some(Secret::new("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")),
            session_token: None,
            bucket_name: Some("runner-cache".into()),
            bucket_location: None,
            insecure: true,
            authentication_type: None,
            server_side_encryption: None,
            server_side_encryption_key_id: None,
            dual_stack: None,
            path_style: None,
            accelerate: false,
            role_arn: None,
            upload_role_arn: None,
        }
    }

    fn cache_config(s3: CacheS3Config, path: &str, shared: bool) -> CacheConfig {
        CacheConfig {
            kind: Some("s3".into()),
            path: Some(path.into()),
            shared,
            max_uploaded_archive_size: 42,
            s3: Some(s3),
            gcs: None,
            azure: None,
        }
    }

    /// 2013-05-24T00:00:00Z, the date of the AWS documentation examples.
    fn aws_example_time() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_369_353_600)
    }

    fn remote(config: &CacheConfig) -> Arc<dyn RemoteCache> {
        remote_cache(
            Some(config),
            "abcd1234",
            77,
            Duration::from_secs(3600),
            aws_example_time(),
        )
        .expect("valid config")
        .expect("a remote cache")
    }

    #[test]
    fn object_names_follow_the_official_layout() {
        assert_eq!(
            object_prefix("", false, "abcd1234", 77),
            "runner/abcd1234/project/77"
        );
        assert_eq!(object_prefix("", true, "abcd1234", 77), "project/77");
        assert_eq!(
            object_prefix("ci/cache/", false, "abcd1234", 77),
            "ci/cache/runner/abcd1234/project/77"
        );
        assert_eq!(object_prefix("/a/./b/../c", true, "x", 1), "/a/c/project/1");
        assert_eq!(
            object_name("project/77", "deps/main").as_deref(),
            Some("project/77/deps/main")
        );
        assert_eq!(object_name("project/77", "../../other"), None);
        assert_eq!(object_name("project/77", ""), None);
    }

    #[test]
    fn signing_matches_the_aws_documentation_example() {
        // The presigned GET example of the AWS SigV4 documentation ("Authenticating Requests:
        // Using Query Parameters"), signed through this module's bucket and credentials code.
        let config = CacheS3Config {
            server_address: None,
            insecure: false,
            bucket_name: Some("examplebucket".into()),
            dual_stack: Some(false),
            ..s3_config(None)
        };
        let url = presign(
            &bucket(&config).unwrap(),
            &credentials(&config).unwrap(),
            Method::Get,
            "test.txt",
            Duration::from_secs(86400),
            &Timestamp::try_from(aws_example_time()).unwrap(),
        );
        assert_eq!(
            url.as_str(),
            "https://examplebucket.s3.amazonaws.com/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
        );
    }

    #[test]
    fn aws_endpoints_follow_dual_stack_and_acceleration() {
        let url = |address: Option<&str>, region: Option<&str>, dual: Option<bool>, fast: bool| {
            let s3 = CacheS3Config {
                insecure: false,
                bucket_location: region.map(str::to_owned),
                dual_stack: dual,
                accelerate: fast,
                ..s3_config(address)
            };
            let url = remote(&cache_config(s3, "", true)).urls("k").unwrap().get;
            let url = url.expose();
            url[..url.find('?').unwrap()].to_owned()
        };
        // Dual-stack is on unless turned off, as in the official runner.
        assert_eq!(
            url(None, None, None, false),
            "https://runner-cache.s3.dualstack.us-east-1.amazonaws.com/project/77/k"
        );
        assert_eq!(
            url(
                Some("s3.amazonaws.com"),
                Some("eu-west-1"),
                Some(true),
                false
            ),
            "https://runner-cache.s3.dualstack.eu-west-1.amazonaws.com/project/77/k"
        );
        assert_eq!(
            url(None, Some("eu-west-1"), Some(false), false),
            "https://runner-cache.s3.eu-west-1.amazonaws.com/project/77/k"
        );
        assert_eq!(
            url(None, None, Some(false), false),
            "https://runner-cache.s3.amazonaws.com/project/77/k"
        );
        assert_eq!(
            url(None, Some("eu-west-1"), None, true),
            "https://runner-cache.s3-accelerate.dualstack.amazonaws.com/project/77/k"
        );
        assert_eq!(
            url(None, None, Some(false), true),
            "https://runner-cache.s3-accelerate.amazonaws.com/project/77/k"
        );
        // A server of its own is used as it is.
        assert_eq!(
            url(Some("minio.example:9000"), None, None, true),
            "https://minio.example:9000/runner-cache/project/77/k"
        );
    }

    #[test]
    fn a_custom_server_gets_path_style_urls_for_each_method() {
        let cache = remote(&cache_config(s3_config(Some("127.0.0.1:9000")), "", false));
        let urls = cache.urls("deps-main").unwrap();
        for url in [&urls.get, &urls.head, &urls.put] {
            assert!(
                url.expose().starts_with(
                    "http://127.0.0.1:9000/runner-cache/runner/abcd1234/project/77/deps-main?X-Amz-Algorithm=AWS4-HMAC-SHA256&"
                ),
                "{}",
                url.expose()
            );
            // Job timeout + margin.
            assert!(
                url.expose().contains("&X-Amz-Expires=7200&"),
                "{}",
                url.expose()
            );
        }
        // One signature per method.
        assert_ne!(urls.get, urls.put);
        assert_ne!(urls.get, urls.head);
        assert_eq!(cache.max_uploaded_archive_size(), 42);
        // Plan options are debug-printed; the secret key must not be.
        assert!(!format!("{cache:?}").contains("wJalr"), "{cache:?}");
        let shared = remote(&cache_config(
            s3_config(Some("127.0.0.1:9000")),
            "pre",
            true,
        ));
        assert!(
            shared
                .urls("k")
                .unwrap()
                .get
                .expose()
                .starts_with("http://127.0.0.1:9000/runner-cache/pre/project/77/k?")
        );
    }

    #[test]
    fn session_tokens_and_path_style_settings_are_honoured() {
        let s3 = CacheS3Config {
            session_token: Some(Secret::new("session-token")),
            path_style: Some(false),
            ..s3_config(Some("minio.example:9000"))
        };
        let url = remote(&cache_config(s3, "", true)).urls("k").unwrap().get;
        assert!(
            url.expose()
                .starts_with("http://runner-cache.minio.example:9000/project/77/k?"),
            "{}",
            url.expose()
        );
        assert!(url.expose().contains("X-Amz-Security-Token=session-token"));
    }

    #[test]
    fn unusable_configurations_are_named() {
        let check = |config: CacheConfig| {
            remote_cache(Some(&config), "t", 1, Duration::ZERO, aws_example_time()).err()
        };
        let none = CacheConfig {
            kind: None,
            ..cache_config(s3_config(None), "", false)
        };
        assert!(
            remote_cache(Some(&none), "t", 1, Duration::ZERO, aws_example_time())
                .unwrap()
                .is_none()
        );
        let gcs = CacheConfig {
            kind: Some("gcs".into()),
            ..cache_config(s3_config(None), "", false)
        };
        assert_eq!(
            check(gcs),
            Some(CacheConfigError::Unsupported("gcs".into()))
        );
        let no_section = CacheConfig {
            s3: None,
            ..cache_config(s3_config(None), "", false)
        };
        assert_eq!(check(no_section), Some(CacheConfigError::MissingS3));
        let no_bucket = CacheS3Config {
            bucket_name: None,
            ..s3_config(None)
        };
        assert_eq!(
            check(cache_config(no_bucket, "", false)),
            Some(CacheConfigError::Missing("BucketName"))
        );
        let iam = CacheS3Config {
            authentication_type: Some("iam".into()),
            ..s3_config(None)
        };
        assert_eq!(
            check(cache_config(iam, "", false)),
            Some(CacheConfigError::Iam)
        );
        let scheme = s3_config(Some("http://minio:9000"));
        let error = check(cache_config(scheme, "", false)).unwrap();
        assert!(error.to_string().contains("without a scheme"), "{error}");
        let no_secret = CacheS3Config {
            secret_key: None,
            ..s3_config(None)
        };
        let error = check(cache_config(no_secret, "", false)).unwrap();
        assert_eq!(error, CacheConfigError::Missing("SecretKey"));
        assert!(!format!("{error:?}").contains("wJalr"));
    }
}
