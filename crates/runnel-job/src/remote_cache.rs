//! The distributed cache as the planner sees it: a source of presigned object URLs per
//! resolved cache key ([`RemoteCache`]), filled in by the daemon.
//!
//! The planner never signs anything (no clock, no credentials here): it asks the daemon's
//! [`RemoteCache`] for the URLs of each key it plans a cache helper for, hands them to the
//! helper through its environment ([`CACHE_URL_ENV`], [`CACHE_HEAD_URL_ENV`]) rather than its
//! arguments, and masks their signed query in the trace.

use runnel_types::Secret;

/// Environment variable that carries the object URL to a cache helper: the presigned `GET`
/// for `cache-extractor`, the presigned `PUT` for `cache-archiver`.
pub const CACHE_URL_ENV: &str = "RUNNEL_CACHE_URL";

/// Environment variable that carries the presigned `HEAD` URL of the same object.
pub const CACHE_HEAD_URL_ENV: &str = "RUNNEL_CACHE_HEAD_URL";

/// The presigned URLs of one cache object. Each is a [`Secret`]: its query is a signature
/// that grants access to the object until it expires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheUrls {
    /// Downloads the object.
    pub get: Secret,
    /// Reads the object's metadata (its `ETag`) without the body.
    pub head: Secret,
    /// Uploads the object.
    pub put: Secret,
}

impl CacheUrls {
    /// The signed part (query) of each URL, for the trace masker.
    pub fn signed_queries(&self) -> impl Iterator<Item = Secret> + '_ {
        [&self.get, &self.head, &self.put]
            .into_iter()
            .filter_map(|url| url.expose().split_once('?'))
            .map(|(_, query)| query)
            .filter(|query| !query.is_empty())
            .map(Secret::new)
    }
}

/// A distributed cache (`[runners.cache]` with a supported `Type`) for one job.
pub trait RemoteCache: std::fmt::Debug + Send + Sync {
    /// The URLs of the object for the resolved cache `key`; `None` when the key cannot be
    /// stored remotely (the helpers then use the local archive only).
    fn urls(&self, key: &str) -> Option<CacheUrls>;

    /// `MaxUploadedArchiveSize`: archives larger than this many bytes stay local; 0 = no cap.
    fn max_uploaded_archive_size(&self) -> u64;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_query_of_each_url_is_a_masking_secret() {
        let urls = CacheUrls {
            get: Secret::new("http://s3/b/k?X-Amz-Signature=aaa"),
            head: Secret::new("http://s3/b/k"),
            put: Secret::new("http://s3/b/k?X-Amz-Signature=ccc"),
        };
        let queries: Vec<String> = urls
            .signed_queries()
            .map(|s| s.expose().to_owned())
            .collect();
        assert_eq!(queries, ["X-Amz-Signature=aaa", "X-Amz-Signature=ccc"]);
    }
}
