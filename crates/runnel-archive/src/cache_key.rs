//! Cache keys and local cache paths, as the official runner computes them.
//!
//! A key may contain `/` (each part becomes a directory), so it must be cleaned before it is
//! joined to a path: [`sanitize`] decodes `%2F`/`%2E`, turns `\` into `/`, resolves `.` and `..`
//! against a virtual root (so they can never climb out), and trims trailing whitespace from the
//! last segments. The hashed form ([`hashed`], `FF_HASH_CACHE_KEYS`) is lowercase hex and needs
//! no cleaning. This module decides nothing about remote cache URLs.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// File name of a local cache archive inside its key directory.
pub const LOCAL_ARCHIVE_NAME: &str = "cache.zip";

/// A cache key that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheKeyError {
    /// The key is empty; callers substitute [`default_key`] before sanitizing.
    #[error("cache key is empty")]
    Empty,
    /// Nothing is left after cleaning (for example `..`, `/` or only whitespace).
    #[error("cache key {raw:?} could not be sanitized")]
    Unsanitizable {
        /// The key as written.
        raw: String,
    },
}

/// The key used when a job's cache has none: `<job name>/<git ref>`.
pub fn default_key(job_name: &str, git_ref: &str) -> String {
    format!("{job_name}/{git_ref}")
}

/// Cleans a cache key so it is a relative path that stays below the cache directory.
///
/// `some%2F../job\ref/.` becomes `job/ref`; `../x` becomes `x`; `..`, `/` and `" "` are
/// errors. Sanitizing is idempotent.
pub fn sanitize(raw: &str) -> Result<String, CacheKeyError> {
    if raw.is_empty() {
        return Err(CacheKeyError::Empty);
    }
    let decoded = decode(raw);
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    // Trailing whitespace is trimmed from the last segments; a segment that trims to `.` or
    // `..` is resolved like one (review L9: `".. "` used to become `..`).
    let mut climb = 0_usize;
    while let Some(last) = segments.pop() {
        match last.trim_end() {
            "" | "." => {}
            ".." => climb += 1,
            _ if climb > 0 => climb -= 1,
            trimmed => {
                segments.push(trimmed);
                break;
            }
        }
    }
    if segments.is_empty() {
        return Err(CacheKeyError::Unsanitizable {
            raw: raw.to_owned(),
        });
    }
    Ok(segments.join("/"))
}

/// Decodes `%2f`/`%2F` to `/` and `%2e`/`%2E` to `.`, and turns `\` into `/`, in one pass.
fn decode(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(c) = rest.chars().next() {
        let (replacement, consumed) = match rest.get(..3) {
            Some("%2f" | "%2F") => ('/', 3),
            Some("%2e" | "%2E") => ('.', 3),
            _ if c == '\\' => ('/', 1),
            _ => (c, c.len_utf8()),
        };
        out.push(replacement);
        rest = rest.get(consumed..).unwrap_or_default();
    }
    out
}

/// The `FF_HASH_CACHE_KEYS` form of a key: the lowercase hex SHA-256 of the key as written.
pub fn hashed(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Resolves the key a cache is stored under: the job's key or [`default_key`], then
/// [`hashed`] when `hash_keys` is set, otherwise [`sanitize`]d.
pub fn resolve(
    raw: &str,
    job_name: &str,
    git_ref: &str,
    hash_keys: bool,
) -> Result<String, CacheKeyError> {
    let key = if raw.is_empty() {
        default_key(job_name, git_ref)
    } else {
        raw.to_owned()
    };
    if hash_keys {
        Ok(hashed(&key))
    } else {
        sanitize(&key)
    }
}

/// The local cache archive: `<cache_dir>/<project unique dir>/<key>/cache.zip`.
///
/// `key` must come from [`sanitize`], [`hashed`] or [`resolve`], which guarantee it is relative
/// and free of `..`.
/// Only the plain names of `key` are joined, so the path stays below the project's directory
/// whatever `key` holds (review L9).
pub fn local_archive_path(cache_dir: &Path, project_unique_dir: &str, key: &str) -> PathBuf {
    let mut path = cache_dir.join(project_unique_dir);
    for component in Path::new(key).components() {
        if let std::path::Component::Normal(name) = component {
            path.push(name);
        }
    }
    path.join(LOCAL_ARCHIVE_NAME)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitizes_like_the_official_runner() {
        let cases = [
            ("fallback_key", "fallback_key"),
            ("some-job/some-ref", "some-job/some-ref"),
            (".../....", ".../...."),
            ("fallback_key/", "fallback_key"),
            ("fallback_key\\", "fallback_key"),
            ("fallback_key/ / \\  \\", "fallback_key"),
            ("fallback_key / \\o", "fallback_key / /o"),
            ("\t foo bar \t\r", "\t foo bar"),
            ("something %2F something", "something / something"),
            ("some%2f../job/some/ref/.", "job/some/ref"),
            ("%2E%2E%2E", "..."),
            // Review L9: a last segment that trims to `..` is resolved, never kept.
            ("x/p10/.. ", "x"),
            ("a/b/..  /. ", "a"),
            ("%5C", "%5C"),
            ("foo/blipp/../bar", "foo/bar"),
            ("/foo/bar", "foo/bar"),
            ("../foo/bar", "foo/bar"),
            ("foo/bar/../../../.././blerp", "blerp"),
            ("job\\name/git\\ref", "job/name/git/ref"),
            ("..\\foo\\bar", "foo/bar"),
            ("foo/ /bar", "foo/ /bar"),
            ("héllo/wörld", "héllo/wörld"),
        ];
        for (raw, expected) in cases {
            assert_eq!(sanitize(raw).as_deref(), Ok(expected), "{raw:?}");
            assert_eq!(
                sanitize(expected).as_deref(),
                Ok(expected),
                "idempotent {expected:?}"
            );
        }
    }

    #[test]
    fn refuses_keys_that_clean_to_nothing() {
        assert_eq!(sanitize(""), Err(CacheKeyError::Empty));
        for raw in [
            "\\",
            "/",
            " ",
            ".",
            "..",
            "//",
            "../.",
            "foo/bar/../..",
            "%2E%2e",
            " \t\r\n",
            ".. ",
            "p10/.. ",
        ] {
            assert!(
                matches!(sanitize(raw), Err(CacheKeyError::Unsanitizable { .. })),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn resolves_default_and_hashed_keys() {
        assert_eq!(
            resolve("", "build", "main", false).as_deref(),
            Ok("build/main")
        );
        assert_eq!(resolve("../k", "build", "main", false).as_deref(), Ok("k"));
        let hashed_key = resolve("", "build", "main", true).unwrap_or_default();
        assert_eq!(hashed_key, hashed("build/main"));
        assert_eq!(hashed_key.len(), 64);
        assert_eq!(
            hashed("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn local_path_layout() {
        let path = local_archive_path(Path::new("/cache"), "group/project", "build/main");
        assert_eq!(path, Path::new("/cache/group/project/build/main/cache.zip"));
    }
}
