//! Fetching the includes that live outside the project (`remote`, `project`, `template`,
//! `component`) for `runnel-pipeline`, which reads them through [`SourceFiles::fetch`], and
//! keeping them under `.runnel/includes/` so later runs (and `--offline` ones) work without the
//! network.
//!
//! - `remote`: a plain HTTP(S) GET, never with credentials.
//! - `project`: the GitLab instance of the `origin` remote, through its repository files API
//!   (`/api/v4/projects/:path/repository/files/:file/raw?ref=`), with `GITLAB_TOKEN`
//!   (`PRIVATE-TOKEN`) or `CI_JOB_TOKEN` (`JOB-TOKEN`) when set. Tokens only go to that host.
//! - `template`: that instance's template API (`/api/v4/templates/gitlab_ci_ymls/:name`), then
//!   GitLab's own repository on gitlab.com (`lib/gitlab/ci/templates/`), where templates in
//!   folders (`Jobs/Build.gitlab-ci.yml`) live.
//! - `component`: `<host>/<project>/<name>@<version>` from that project's
//!   `templates/<name>.yml` or `templates/<name>/template.yml` at `<version>` (`~latest`: the
//!   latest release).
//!
//! Each fetched file is cached as `<kind>-<slug>-<hash>.yml` with a `.json` beside it naming its
//! source, ref and URL. Online, a fetch that fails falls back to the cached copy (with a
//! warning); `--offline` reads only the cache. When nothing works the error says what was tried
//! and how to make the file available.

use std::path::{Path, PathBuf};
use std::time::Duration;

use runnel_pipeline::{External, FetchError, SourceFiles};
use sha2::Digest as _;

/// Included files larger than this are refused (GitLab's own limit is of the same order).
const MAX_INCLUDE_BYTES: usize = 4 << 20;
/// Local CI files larger than this are not read.
const MAX_LOCAL_BYTES: u64 = 32 << 20;
/// One request may take this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How `runnel exec` reaches the files of other projects.
#[derive(Clone, Debug, Default)]
pub struct IncludeSettings {
    /// The web URL of the GitLab instance of the `origin` remote.
    pub server_url: Option<String>,
    /// Read includes from `.runnel/includes/` only.
    pub offline: bool,
    /// `GITLAB_TOKEN`: a personal, project or group access token (sent as `PRIVATE-TOKEN`).
    pub gitlab_token: Option<String>,
    /// `CI_JOB_TOKEN`, when `runnel exec` itself runs in a CI job (sent as `JOB-TOKEN`).
    pub job_token: Option<String>,
}

/// The project's files plus external includes.
pub(crate) struct Files {
    pub(crate) root: PathBuf,
    pub(crate) settings: IncludeSettings,
    pub(crate) handle: tokio::runtime::Handle,
    pub(crate) client: Option<Clients>,
}

/// Requests without credentials follow redirects anywhere; requests with a token follow them
/// only on the same host, so the token never reaches another one.
pub(crate) struct Clients {
    open: reqwest::Client,
    authenticated: reqwest::Client,
}

impl Files {
    pub(crate) fn new(root: PathBuf, settings: IncludeSettings) -> Self {
        let builder = || {
            reqwest::Client::builder()
                .user_agent(concat!("runnel-exec/", env!("CARGO_PKG_VERSION")))
                .timeout(REQUEST_TIMEOUT)
        };
        let same_host = reqwest::redirect::Policy::custom(|attempt| {
            let host = attempt.url().host_str().map(str::to_owned);
            let first = attempt.previous().first().and_then(|u| u.host_str());
            if attempt.previous().len() > 5 {
                attempt.error("too many redirects")
            } else if host.as_deref() != first {
                attempt.stop()
            } else {
                attempt.follow()
            }
        });
        let client = match (
            builder()
                .redirect(reqwest::redirect::Policy::limited(5))
                .build(),
            builder().redirect(same_host).build(),
        ) {
            (Ok(open), Ok(authenticated)) => Some(Clients {
                open,
                authenticated,
            }),
            _ => None,
        };
        Self {
            root,
            settings,
            handle: tokio::runtime::Handle::current(),
            client,
        }
    }

    fn cache_dir(&self) -> PathBuf {
        self.root.join(".runnel").join("includes")
    }
}

impl SourceFiles for Files {
    fn read(&self, path: &str) -> std::io::Result<String> {
        let relative = path.trim_start_matches('/');
        if relative.split('/').any(|part| part == "..") {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a local include may not leave the project (`..`)",
            ));
        }
        let path = self.root.join(relative);
        // Bounded before reading: the loader refuses more than this in all anyway.
        let size = std::fs::metadata(&path)?.len();
        if size > MAX_LOCAL_BYTES {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "the file is {size} bytes; CI files larger than {} MiB are refused",
                    MAX_LOCAL_BYTES >> 20
                ),
            ));
        }
        std::fs::read_to_string(path)
    }

    fn list(&self) -> Vec<String> {
        walkdir::WalkDir::new(&self.root)
            .into_iter()
            .filter_entry(|e| {
                let name = e.file_name().to_string_lossy();
                e.depth() == 0 || (name != ".git" && name != ".runnel")
            })
            .flatten()
            .filter(|e| e.file_type().is_file())
            .filter_map(|e| {
                let relative = e.path().strip_prefix(&self.root).ok()?;
                Some(relative.to_string_lossy().replace('\\', "/"))
            })
            .collect()
    }

    fn fetch(&self, include: &External) -> Result<String, FetchError> {
        let cache = CacheEntry::new(&self.cache_dir(), include);
        if self.settings.offline {
            return cache.read().ok_or_else(|| FetchError {
                tried: format!(
                    "the cache only (--offline): {} is not there",
                    cache.text.display()
                ),
                hint: "run once without --offline to fetch it".to_owned(),
            });
        }
        let Some(client) = &self.client else {
            return Err(FetchError {
                tried: "nothing: no HTTP client could be built".to_owned(),
                hint: "check the TLS setup of this machine".to_owned(),
            });
        };
        let requests = self.requests(include);
        let mut tried = Vec::new();
        let mut denied = false;
        for request in &requests {
            let result = self.handle.block_on(get(client, request, &self.settings));
            match result {
                Ok(text) => {
                    cache.write(include, &request.url, &text);
                    return Ok(text);
                }
                Err(Failure { message, denied: d }) => {
                    denied |= d;
                    tried.push(format!("{} ({message})", request.url));
                }
            }
        }
        if let Some(text) = cache.read() {
            tracing::warn!(
                include = %include.display_name(),
                cache = %cache.text.display(),
                "cannot fetch the include; using the cached copy"
            );
            return Ok(text);
        }
        if requests.is_empty() {
            tried.push(
                "nothing: the project's `origin` remote does not name a GitLab instance".to_owned(),
            );
        }
        Err(FetchError {
            tried: tried.join(", "),
            hint: self.hint(include, denied, &cache),
        })
    }
}

/// One GET to try.
struct Request {
    url: String,
    /// Whether the instance's token may be sent (the `origin` host only).
    authenticated: bool,
    /// The answer is the template API's JSON (`{"content": …}`).
    template_json: bool,
    /// The answer is the releases API's JSON; the file is fetched at the first tag.
    release_then: Option<String>,
}

struct Failure {
    message: String,
    /// 401/403/404 from the instance: a token may help.
    denied: bool,
}

/// `a/b c` → `a%2Fb%20c`: one path segment of the GitLab API.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn files_url(base: &str, project: &str, file: &str, reference: Option<&str>) -> String {
    let mut url = format!(
        "{base}/api/v4/projects/{}/repository/files/{}/raw",
        encode(project),
        encode(file.trim_start_matches('/'))
    );
    if let Some(reference) = reference {
        url.push_str(&format!("?ref={}", encode(reference)));
    }
    url
}

impl Files {
    /// The base URL of `host` (`host[:port]`): the origin's own scheme when it is the origin.
    fn base_for_host(&self, host: &str) -> (String, bool) {
        if let Some(server) = &self.settings.server_url
            && let Some((_, origin_host)) = server.split_once("://")
            && origin_host.trim_end_matches('/') == host
        {
            return (server.trim_end_matches('/').to_owned(), true);
        }
        (format!("https://{host}"), false)
    }

    fn requests(&self, include: &External) -> Vec<Request> {
        let server = self
            .settings
            .server_url
            .as_deref()
            .map(|s| s.trim_end_matches('/').to_owned());
        let plain = |url: String, authenticated: bool| Request {
            url,
            authenticated,
            template_json: false,
            release_then: None,
        };
        match include {
            External::Remote { url } => vec![plain(url.clone(), false)],
            External::Project {
                project,
                reference,
                file,
            } => server
                .iter()
                .map(|base| plain(files_url(base, project, file, reference.as_deref()), true))
                .collect(),
            External::Template { name } => {
                let mut out = Vec::new();
                let key = name.trim_end_matches(".gitlab-ci.yml");
                if let Some(base) = &server
                    && !key.contains('/')
                {
                    out.push(Request {
                        url: format!("{base}/api/v4/templates/gitlab_ci_ymls/{}", encode(key)),
                        authenticated: true,
                        template_json: true,
                        release_then: None,
                    });
                }
                out.push(plain(
                    files_url(
                        "https://gitlab.com",
                        "gitlab-org/gitlab",
                        &format!("lib/gitlab/ci/templates/{name}"),
                        Some("master"),
                    ),
                    server.as_deref() == Some("https://gitlab.com"),
                ));
                out
            }
            External::Component { address } => {
                let Some((path, version)) = address.rsplit_once('@') else {
                    return Vec::new();
                };
                let mut parts: Vec<&str> = path.split('/').collect();
                if parts.len() < 3 {
                    return Vec::new();
                }
                let host = parts.remove(0);
                let Some(name) = parts.pop() else {
                    return Vec::new();
                };
                let project = parts.join("/");
                let (base, authenticated) = self.base_for_host(host);
                let files = [
                    format!("templates/{name}.yml"),
                    format!("templates/{name}/template.yml"),
                ];
                if version == "~latest" {
                    return vec![Request {
                        url: format!(
                            "{base}/api/v4/projects/{}/releases?per_page=1&order_by=released_at&sort=desc",
                            encode(&project)
                        ),
                        authenticated,
                        template_json: false,
                        release_then: Some(format!("{base}\n{project}\n{}", files.join("\n"))),
                    }];
                }
                files
                    .iter()
                    .map(|file| {
                        plain(
                            files_url(&base, &project, file, Some(version)),
                            authenticated,
                        )
                    })
                    .collect()
            }
        }
    }

    fn hint(&self, include: &External, denied: bool, cache: &CacheEntry) -> String {
        let place = format!(
            "or put the file at {} to use it as it is",
            cache.text.display()
        );
        match include {
            External::Remote { .. } => {
                format!("check the URL and the network, {place}")
            }
            _ if denied && self.settings.gitlab_token.is_none() => format!(
                "if the project is private, set GITLAB_TOKEN to an access token with the read_api scope; {place}"
            ),
            _ if self.settings.server_url.is_none() => {
                format!("add an `origin` remote pointing at the project's GitLab instance, {place}")
            }
            _ => format!("check the project path, file and ref, and the network, {place}"),
        }
    }
}

async fn get(
    client: &Clients,
    request: &Request,
    settings: &IncludeSettings,
) -> Result<String, Failure> {
    let body = get_body(client, &request.url, request.authenticated, settings).await?;
    if request.template_json {
        #[derive(serde::Deserialize)]
        struct Template {
            content: String,
        }
        return serde_json::from_str::<Template>(&body)
            .map(|t| t.content)
            .map_err(|e| Failure {
                message: format!("not a template answer: {e}"),
                denied: false,
            });
    }
    if let Some(plan) = &request.release_then {
        #[derive(serde::Deserialize)]
        struct Release {
            tag_name: String,
        }
        let releases: Vec<Release> = serde_json::from_str(&body).map_err(|e| Failure {
            message: format!("not a releases answer: {e}"),
            denied: false,
        })?;
        let Some(latest) = releases.first() else {
            return Err(Failure {
                message: "the project has no release for ~latest".to_owned(),
                denied: false,
            });
        };
        let mut lines = plan.lines();
        let (Some(base), Some(project)) = (lines.next(), lines.next()) else {
            return Err(Failure {
                message: "internal: no component plan".to_owned(),
                denied: false,
            });
        };
        let mut last = None;
        for file in lines {
            let url = files_url(base, project, file, Some(&latest.tag_name));
            match get_body(client, &url, request.authenticated, settings).await {
                Ok(text) => return Ok(text),
                Err(e) => last = Some(e),
            }
        }
        return Err(last.unwrap_or(Failure {
            message: "no template file".to_owned(),
            denied: false,
        }));
    }
    Ok(body)
}

async fn get_body(
    client: &Clients,
    url: &str,
    authenticated: bool,
    settings: &IncludeSettings,
) -> Result<String, Failure> {
    let mut builder = if authenticated {
        client.authenticated.get(url)
    } else {
        client.open.get(url)
    };
    if authenticated {
        if let Some(token) = &settings.gitlab_token {
            builder = builder.header("PRIVATE-TOKEN", token);
        } else if let Some(token) = &settings.job_token {
            builder = builder.header("JOB-TOKEN", token);
        }
    }
    let mut response = builder.send().await.map_err(|e| Failure {
        message: without_url(e),
        denied: false,
    })?;
    let status = response.status();
    if status.is_redirection() {
        return Err(Failure {
            message: format!(
                "HTTP {}: a redirect to another host, not followed with credentials",
                status.as_u16()
            ),
            denied: false,
        });
    }
    if !status.is_success() {
        return Err(Failure {
            message: format!("HTTP {}", status.as_u16()),
            denied: matches!(status.as_u16(), 401 | 403 | 404),
        });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| Failure {
        message: without_url(e),
        denied: false,
    })? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_INCLUDE_BYTES {
            return Err(Failure {
                message: format!("larger than {} MiB", MAX_INCLUDE_BYTES >> 20),
                denied: false,
            });
        }
    }
    String::from_utf8(body).map_err(|_| Failure {
        message: "not UTF-8 text".to_owned(),
        denied: false,
    })
}

/// A transport error without the URL (which is printed beside it).
fn without_url(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut message = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(inner) = source {
        message.push_str(&format!(": {inner}"));
        source = inner.source();
    }
    message
}

/// Where one include is cached.
struct CacheEntry {
    text: PathBuf,
    meta: PathBuf,
}

impl CacheEntry {
    fn new(dir: &Path, include: &External) -> Self {
        let name = include.display_name();
        let digest = sha2::Sha256::digest(format!("{}\n{name}", include.kind()).as_bytes());
        let hash: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
        let mut slug = runnel_pipeline::slug(&name);
        slug.truncate(40);
        let stem = format!("{}-{}-{hash}", include.kind(), slug.trim_end_matches('-'));
        Self {
            text: dir.join(format!("{stem}.yml")),
            meta: dir.join(format!("{stem}.json")),
        }
    }

    fn read(&self) -> Option<String> {
        std::fs::read_to_string(&self.text).ok()
    }

    /// Best effort: a cache that cannot be written only costs a later offline run.
    fn write(&self, include: &External, url: &str, text: &str) {
        let Some(dir) = self.text.parent() else {
            return;
        };
        if let Err(error) = write_files(dir, self, include, url, text) {
            tracing::warn!(%error, path = %self.text.display(), "cannot cache the include");
        }
    }
}

fn write_files(
    dir: &Path,
    entry: &CacheEntry,
    include: &External,
    url: &str,
    text: &str,
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    // `.runnel/` ignores itself, so the user's `git status` stays clean.
    if let Some(state) = dir.parent() {
        let ignore = state.join(".gitignore");
        if !ignore.exists() {
            std::fs::write(&ignore, "*\n")?;
        }
    }
    let reference = match include {
        External::Project { reference, .. } => reference.clone(),
        External::Component { address } => address.rsplit_once('@').map(|(_, v)| v.to_owned()),
        _ => None,
    };
    let meta = serde_json::json!({
        "kind": include.kind(),
        "source": include.display_name(),
        "ref": reference,
        "url": url,
        "fetched_at": jiff_like_now(),
    });
    write_private(&entry.text, text.as_bytes())?;
    write_private(&entry.meta, format!("{meta:#}\n").as_bytes())
}

/// Seconds since the epoch (enough to tell how old a cached copy is).
fn jiff_like_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Files of private projects stay private: 0600, replaced atomically.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    match std::fs::remove_file(&tmp) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
        _ => {}
    }
    let mut file = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_paths_are_encoded() {
        assert_eq!(
            files_url("https://h", "g/sub/p", "/ci/a b.yml", Some("v1/x")),
            "https://h/api/v4/projects/g%2Fsub%2Fp/repository/files/ci%2Fa%20b.yml/raw?ref=v1%2Fx"
        );
    }

    #[test]
    fn cache_names_are_stable_and_readable() {
        let entry = CacheEntry::new(
            Path::new("/c"),
            &External::Project {
                project: "group/shared".into(),
                reference: Some("v1".into()),
                file: "ci/base.yml".into(),
            },
        );
        let name = entry
            .text
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(
            name.starts_with("project-group-shared-v1-ci-base-yml-"),
            "{name}"
        );
        assert!(name.ends_with(".yml"));
    }
}
