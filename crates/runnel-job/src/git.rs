//! The `get_sources` body for `GIT_STRATEGY=clone|fetch`: a git template dir and an extra
//! config (credentials, CA) included by every git call, `git init`, the `origin` remote,
//! `git fetch` with the job's refspecs and depth, checkout of the job's commit, clean, LFS and
//! submodules.
//!
//! The remote URL never carries the job token: the token only reaches git through a credential
//! helper reading `$CI_JOB_TOKEN` (`FF_GIT_URLS_WITHOUT_TOKENS`, on by default here so the
//! token is in no process's arguments) or, with that flag off, a host-wide
//! `url.<with token>.insteadOf`, in the extra config inside the job's temp dir; with
//! `GIT_SUBMODULE_FORCE_HTTPS` the same file maps the instance's SSH URLs to it. With the
//! runner's `clone_url`, the remote is that URL plus `<CI_PROJECT_PATH>.git`, with the job
//! token as `gitlab-ci-token` credentials, as the official runner builds it. Not done: the
//! native `git clone` path (`FF_USE_GIT_NATIVE_CLONE`), bundle URIs.
//!
//! `clean_git_config` (on by default for every executor but shell) removes the git config and
//! hooks left in the checkout before git runs in it (and again in the cleanup stage).
//! `safe_directory_checkout` (on by default for container executors) adds the project dir to
//! the global `safe.directory` list before git runs. At the end of `get_sources` and of the
//! job, `git credential reject` tells any credential helper to forget the job token for the
//! remote's host.

use crate::dirs::join;
use crate::escape::double_quote;
use crate::script::ScriptWriter;
use crate::settings::{GitStrategy, SubmoduleStrategy};
use crate::stages::StageContext;

/// A remote URL split into its credential-free form and the host prefixes git matches on.
struct RemoteUrl {
    /// The URL without user info: what `origin` points to.
    without_credentials: String,
    /// `scheme://host[:port]`, for per-host git config.
    base: String,
    /// The host name alone (no port, no brackets), for SSH-style URLs.
    host_name: String,
    /// Whether the scheme is `http` or `https`.
    is_http: bool,
    /// `scheme://user:token@host[:port]/` when the URL carries credentials.
    credentialed_prefix: Option<String>,
}

impl RemoteUrl {
    /// `scheme://host[:port]` for `git credential reject`, when git can make a credential
    /// request of this remote (http, https or ssh with a host; not a local path).
    fn credential_url(&self) -> Option<&str> {
        let (scheme, host) = self.base.split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        let known = matches!(scheme.as_str(), "http" | "https" | "ssh");
        (known && !host.is_empty() && !self.host_name.is_empty()).then_some(self.base.as_str())
    }

    fn parse(url: &str) -> Self {
        let (scheme, rest) = url.split_once("://").unwrap_or(("https", url));
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (user_info, host) = match authority.rsplit_once('@') {
            Some((user_info, host)) => (Some(user_info), host),
            None => (None, authority),
        };
        let host_name = match host.strip_prefix('[') {
            Some(bracketed) => bracketed.split(']').next().unwrap_or(bracketed),
            None => host.split(':').next().unwrap_or(host),
        };
        Self {
            without_credentials: format!("{scheme}://{host}/{path}"),
            base: format!("{scheme}://{host}"),
            host_name: host_name.to_owned(),
            is_http: scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https"),
            credentialed_prefix: user_info.map(|u| format!("{scheme}://{u}@{host}/")),
        }
    }
}

/// The URL sources are fetched from: the job's `repo_url`, or the runner's `clone_url` joined
/// with the project path (`CI_PROJECT_PATH`) and carrying the job token.
fn remote_url(ctx: &StageContext<'_>) -> String {
    let project_path = ctx
        .job
        .variable("CI_PROJECT_PATH")
        .map_or("", |v| v.value.as_str());
    clone_url_remote(&ctx.opts.clone_url, project_path, ctx.job.token.expose())
        .unwrap_or_else(|| ctx.job.git.repo_url.expose().to_owned())
}

/// `clone_url` + `/<project path>.git` with `gitlab-ci-token:<token>` credentials (any in
/// `clone_url` itself are replaced); `None` when either part is empty.
fn clone_url_remote(clone_url: &str, project_path: &str, token: &str) -> Option<String> {
    let clone_url = clone_url.trim();
    let project_path = project_path.trim_matches('/');
    if clone_url.is_empty() || project_path.is_empty() {
        return None;
    }
    let (scheme, rest) = clone_url.split_once("://").unwrap_or(("https", clone_url));
    let (authority, base_path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let base_path = base_path.trim_matches('/');
    let path = if base_path.is_empty() {
        format!("{project_path}.git")
    } else {
        format!("{base_path}/{project_path}.git")
    };
    Some(format!("{scheme}://gitlab-ci-token:{token}@{host}/{path}"))
}

/// `git credential reject` for the remote's host and `gitlab-ci-token`, best effort (a failure
/// or a missing git changes nothing), so that a credential helper the job or the host set up
/// (`credential.helper=store`) forgets the job token it may have stored.
/// Returns whether it wrote one (not for a remote git makes no credential request of).
pub(crate) fn write_credential_reject(w: &mut ScriptWriter, ctx: &StageContext<'_>) -> bool {
    let remote = RemoteUrl::parse(&remote_url(ctx));
    let Some(url) = remote.credential_url() else {
        return false;
    };
    // The request goes in as a here-document: no process of its own (a `printf |` pipeline
    // forks one more per job). Its lines are literal, so a URL with a line break (none can
    // come out of the parser, but it would add attributes) is not sent.
    if url.contains(['\n', '\r']) || url == CREDENTIAL_REQUEST_END {
        return false;
    }
    let reject = w.command_line("git", &["credential", "reject"]);
    w.plain(&format!(
        "{reject} >/dev/null 2>&1 <<'{CREDENTIAL_REQUEST_END}' || true\nurl={url}\nusername=gitlab-ci-token\n{CREDENTIAL_REQUEST_END}"
    ));
    true
}

/// The delimiter of the `git credential reject` request's here-document.
const CREDENTIAL_REQUEST_END: &str = "RUNNEL_CREDENTIAL_REQUEST";

pub(crate) struct GitSources<'a, 'b> {
    ctx: &'a StageContext<'b>,
    remote: RemoteUrl,
    ext_config: String,
}

impl<'a, 'b> GitSources<'a, 'b> {
    pub(crate) fn new(ctx: &'a StageContext<'b>) -> Self {
        Self {
            ctx,
            remote: RemoteUrl::parse(&remote_url(ctx)),
            ext_config: ctx.ext_git_config(),
        }
    }

    pub(crate) fn write(&self, w: &mut ScriptWriter) {
        w.line("export GIT_TERMINAL_PROMPT=0");
        w.line("export GCM_INTERACTIVE=Never");
        self.write_repository(w);
        self.write_checkout(w);
        self.write_submodules(w);
    }

    fn project_dir(&self) -> &str {
        &self.ctx.dirs.project_dir
    }

    fn git_config(&self, w: &mut ScriptWriter, file: &str, key: &str, value: &str) {
        w.command("git", &["config", "-f", file, "--replace-all", key, value]);
    }

    fn write_repository(&self, w: &mut ScriptWriter) {
        let settings = self.ctx.settings;
        let depth = self.ctx.job.git.depth;
        if depth > 0 {
            w.notice(&format!(
                "Fetching changes with git depth set to {depth}..."
            ));
        } else {
            w.notice("Fetching changes...");
        }
        let flags = self.ctx.flags;
        if settings.git_strategy == GitStrategy::Clone {
            w.rm_dir(self.project_dir(), flags.set_permissions_before_cleanup());
        } else {
            self.remove_stale_locks(w);
        }
        if self.ctx.cleans_git_config() {
            self.remove_git_configs(w);
        }
        if self.ctx.opts.adds_safe_directory() {
            self.write_safe_directory(w);
        }
        self.write_ext_config(w);
        let template = self.write_template(w);
        let mut init = vec!["init", self.project_dir(), "--template", template.as_str()];
        if self.ctx.job.git.repo_object_format == "sha256" {
            init.extend(["--object-format", "sha256"]);
        }
        w.command("git", &init);
        w.cd(self.project_dir());
        let remote = self.remote.without_credentials.as_str();
        let add = w.command_line("git", &["remote", "add", "origin", remote]);
        w.open(&format!("if {add} >/dev/null 2>&1; then"));
        w.notice("Created fresh repository.");
        w.else_branch();
        w.command("git", &["remote", "set-url", "origin", remote]);
        w.close("fi");
        self.write_fetch(w, depth);
    }

    /// `safe_directory_checkout`: the project dir joins the global `safe.directory` list (once:
    /// a host whose jobs all add it does not grow its git config by a line per job), so git
    /// works in a checkout owned by another user.
    fn write_safe_directory(&self, w: &mut ScriptWriter) {
        let dir = self.project_dir();
        let known = w.command_line(
            "git",
            &[
                "config",
                "--global",
                "--fixed-value",
                "--get",
                "safe.directory",
                dir,
            ],
        );
        w.open(&format!("if ! {known} >/dev/null 2>&1; then"));
        w.command(
            "git",
            &["config", "--global", "--add", "safe.directory", dir],
        );
        w.close("fi");
    }

    pub(crate) fn remove_stale_locks(&self, w: &mut ScriptWriter) {
        let git_dir = join(self.project_dir(), ".git");
        for file in [
            "index.lock",
            "shallow.lock",
            "HEAD.lock",
            "hooks/post-checkout",
            "config.lock",
        ] {
            w.rm_file(&join(&git_dir, file));
        }
        let refs = join(&git_dir, "refs");
        w.open_plain(&format!("if [ -d {} ]; then", double_quote(&refs)));
        w.plain(&format!(
            "find {} -name {} -type f -exec rm -f {{}} +",
            double_quote(&refs),
            double_quote("*.lock")
        ));
        w.close("fi");
    }

    /// `clean_git_config`: the config and hooks of the checkout, of its submodules and of the
    /// git template dir go before git runs, so nothing a previous job planted there
    /// (`core.fsmonitor`, `core.hooksPath`, `core.sshCommand`, hooks) runs in this one. The
    /// template and `git init` write a fresh config.
    pub(crate) fn remove_git_configs(&self, w: &mut ScriptWriter) {
        let set_permissions = self.ctx.flags.set_permissions_before_cleanup();
        let git_dir = join(self.project_dir(), ".git");
        for dir in [self.template_dir(), git_dir.clone()] {
            w.rm_file(&join(&dir, "config"));
            w.rm_dir(&join(&dir, "hooks"), set_permissions);
        }
        if self.ctx.settings.git_submodule_strategy == SubmoduleStrategy::None {
            return;
        }
        let modules = double_quote(&join(&git_dir, "modules"));
        w.open_plain(&format!("if [ -d {modules} ]; then"));
        w.plain(&format!(
            "find {modules} -name config -type f -exec rm -f {{}} +"
        ));
        w.plain(&format!(
            "find {modules} -name hooks -type d -prune -exec rm -r -f {{}} +"
        ));
        w.close("fi");
    }

    fn template_dir(&self) -> String {
        join(&self.ctx.dirs.temp_dir, "git-template")
    }

    fn write_ext_config(&self, w: &mut ScriptWriter) {
        let ext = self.ext_config.as_str();
        w.temp_dir(&self.ctx.dirs.temp_dir);
        w.rm_file(ext);
        w.command("touch", &[ext]);
        let base = &self.remote.base;
        if self.ctx.flags.git_urls_without_tokens() {
            let helper =
                "!f(){ if [ \"$1\" = \"get\" ]; then echo \"password=${CI_JOB_TOKEN}\"; fi; }; f";
            self.git_config(w, ext, &format!("credential.{base}.helper"), helper);
            self.git_config(
                w,
                ext,
                &format!("credential.{base}.username"),
                "gitlab-ci-token",
            );
        } else if let Some(prefix) = &self.remote.credentialed_prefix {
            // Host-wide, so submodules on the same instance authenticate too.
            let key = format!("url.{prefix}.insteadOf");
            self.git_config(w, ext, &key, &format!("{base}/"));
        }
        self.write_force_https(w, ext);
        // Git trusts the GitLab host as the runner does: the CA chain, and the client
        // certificate when there is one (the file variables' paths).
        if self
            .ctx
            .opts
            .tls_ca
            .as_ref()
            .is_some_and(|ca| !ca.is_empty())
        {
            let ca = join(&self.ctx.dirs.temp_dir, "CI_SERVER_TLS_CA_FILE");
            self.git_config(w, ext, &format!("http.{base}.sslCAInfo"), &ca);
        }
        if crate::plan::tls_identity(self.ctx.opts).is_some() {
            for (variable, key) in [
                ("CI_SERVER_TLS_CERT_FILE", "sslCert"),
                ("CI_SERVER_TLS_KEY_FILE", "sslKey"),
            ] {
                let path = join(&self.ctx.dirs.temp_dir, variable);
                self.git_config(w, ext, &format!("http.{base}.{key}"), &path);
            }
        }
    }

    /// `GIT_SUBMODULE_FORCE_HTTPS`: SSH-style URLs of this instance (`git@host:`,
    /// `ssh://git@host[:port]`) are rewritten to its HTTP(S) base, with the job token unless
    /// `FF_GIT_URLS_WITHOUT_TOKENS` leaves authentication to the credential helper. The SSH host
    /// and port come from `CI_SERVER_SHELL_SSH_HOST`/`_PORT` (else `CI_SERVER_HOST`, else the
    /// repository host).
    fn write_force_https(&self, w: &mut ScriptWriter, ext: &str) {
        if !self.ctx.settings.git_submodule_force_https || !self.remote.is_http {
            return;
        }
        let variables = self.ctx.variables;
        let host = [
            variables.value("CI_SERVER_SHELL_SSH_HOST"),
            variables.value("CI_SERVER_HOST"),
            self.remote.host_name.as_str(),
        ]
        .into_iter()
        .find(|host| !host.is_empty())
        .unwrap_or_default();
        let port = variables.value("CI_SERVER_SHELL_SSH_PORT");
        let replacement = match &self.remote.credentialed_prefix {
            Some(prefix) if !self.ctx.flags.git_urls_without_tokens() => prefix.clone(),
            _ => format!("{}/", self.remote.base),
        };
        let key = format!("url.{replacement}.insteadOf");
        let originals = if port.is_empty() || port == "22" {
            vec![format!("git@{host}:"), format!("ssh://git@{host}/")]
        } else {
            vec![format!("ssh://git@{host}:{port}/")]
        };
        for original in originals {
            // `--add`: the key may already map the HTTP(S) base.
            w.command("git", &["config", "-f", ext, "--add", &key, &original]);
        }
    }

    fn write_template(&self, w: &mut ScriptWriter) -> String {
        let template = self.template_dir();
        let config = join(&template, "config");
        w.mkdir(&template);
        self.git_config(w, &config, "init.defaultBranch", "none");
        self.git_config(w, &config, "fetch.recurseSubmodules", "false");
        self.git_config(w, &config, "credential.interactive", "never");
        self.git_config(w, &config, "gc.autoDetach", "false");
        self.git_config(w, &config, "include.path", &self.ext_config);
        template
    }

    fn include_arg(&self) -> String {
        format!("include.path={}", self.ext_config)
    }

    fn write_fetch(&self, w: &mut ScriptWriter, depth: u32) {
        let include = self.include_arg();
        let mut args: Vec<String> = [
            "-c",
            include.as_str(),
            "fetch",
            "origin",
            "--no-recurse-submodules",
        ]
        .map(str::to_owned)
        .to_vec();
        args.extend(self.ctx.job.git.refspecs.iter().cloned());
        let extra = &self.ctx.settings.git_fetch_extra_flags;
        if depth > 0 {
            args.extend(["--depth".to_owned(), depth.to_string()]);
            args.extend(extra.iter().cloned());
            w.command("git", &as_strs(&args));
            return;
        }
        let shallow = join(self.project_dir(), ".git/shallow");
        let mut unshallow = args.clone();
        unshallow.push("--unshallow".to_owned());
        unshallow.extend(extra.iter().cloned());
        args.extend(extra.iter().cloned());
        w.open(&format!("if [ -f {} ]; then", double_quote(&shallow)));
        w.command("git", &as_strs(&unshallow));
        w.else_branch();
        w.command("git", &as_strs(&args));
        w.close("fi");
    }

    fn write_checkout(&self, w: &mut ScriptWriter) {
        let settings = self.ctx.settings;
        if !settings.git_checkout {
            w.notice("Skipping Git checkout");
            return;
        }
        let git = &self.ctx.job.git;
        let short_sha = git.sha.get(..8).unwrap_or(&git.sha);
        w.notice(&format!(
            "Checking out {short_sha} as detached HEAD (ref is {})...",
            git.ref_name
        ));
        w.line("export GIT_LFS_SKIP_SMUDGE=1");
        w.command(
            "git",
            &[
                "-c",
                "submodule.recurse=false",
                "checkout",
                "-f",
                "-q",
                &git.sha,
            ],
        );
        if !settings.git_clean_flags.is_empty() {
            let mut clean = vec!["clean"];
            clean.extend(settings.git_clean_flags.iter().map(String::as_str));
            w.command("git", &clean);
        }
        if !settings.git_lfs_skip_smudge {
            w.line("unset GIT_LFS_SKIP_SMUDGE");
            self.write_lfs_pull(w, &["lfs", "pull"]);
        }
    }

    fn write_lfs_pull(&self, w: &mut ScriptWriter, pull: &[&str]) {
        let probe = w.command_line("git", &["lfs", "version"]);
        w.open(&format!("if {probe} >/dev/null 2>&1; then"));
        let include = self.include_arg();
        let mut args = vec!["-c", include.as_str()];
        args.extend(pull);
        w.command("git", &args);
        w.empty_line();
        w.close("fi");
    }

    fn write_submodules(&self, w: &mut ScriptWriter) {
        let settings = self.ctx.settings;
        let recursive = match settings.git_submodule_strategy {
            SubmoduleStrategy::None => {
                w.notice("Skipping Git submodules setup");
                return;
            }
            SubmoduleStrategy::Normal => false,
            SubmoduleStrategy::Recursive => true,
        };
        if recursive {
            w.notice("Updating/initializing submodules recursively...");
        } else {
            w.notice("Updating/initializing submodules...");
        }
        let paths: Vec<&str> = settings
            .git_submodule_paths
            .iter()
            .map(String::as_str)
            .collect();
        let with_paths = |base: &[&'static str]| {
            let mut args: Vec<&str> = base.to_vec();
            if !paths.is_empty() {
                args.push("--");
                args.extend(&paths);
            }
            args
        };
        w.command("git", &with_paths(&["submodule", "init"]));
        let sync: &[&str] = if recursive {
            &["submodule", "sync", "--recursive"]
        } else {
            &["submodule", "sync"]
        };
        w.command("git", &with_paths(sync));
        let foreach: &[&str] = if recursive {
            &["submodule", "foreach", "--recursive"]
        } else {
            &["submodule", "foreach"]
        };
        if !settings.git_clean_flags.is_empty() {
            let mut clean = foreach.to_vec();
            clean.extend(["git", "clean"]);
            clean.extend(settings.git_clean_flags.iter().map(String::as_str));
            w.command("git", &clean);
        }
        let mut reset = foreach.to_vec();
        reset.extend(["git", "reset", "--hard"]);
        w.command("git", &reset);

        let include = self.include_arg();
        let depth = settings
            .git_submodule_depth
            .unwrap_or(self.ctx.job.git.depth)
            .to_string();
        let mut update = vec!["-c", include.as_str(), "submodule", "update", "--init"];
        if recursive {
            update.push("--recursive");
        }
        if depth != "0" {
            update.extend(["--depth", depth.as_str()]);
        }
        update.extend(
            settings
                .git_submodule_update_flags
                .iter()
                .map(String::as_str),
        );
        if !paths.is_empty() {
            update.push("--");
            update.extend(&paths);
        }
        w.command("git", &update);
        if !settings.git_lfs_skip_smudge {
            let mut pull = foreach.to_vec();
            pull.extend(["git", "lfs", "pull"]);
            self.write_lfs_pull(w, &pull);
        }
    }
}

fn as_strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

#[cfg(test)]
mod tests {
    use super::{RemoteUrl, clone_url_remote};

    #[test]
    fn clone_url_replaces_the_host_and_keeps_the_project_path() {
        assert_eq!(
            clone_url_remote("http://10.0.0.5:8080", "group/project", "tok").as_deref(),
            Some("http://gitlab-ci-token:tok@10.0.0.5:8080/group/project.git")
        );
        assert_eq!(
            clone_url_remote("https://user:pw@git.internal/mirror/", "/g/sub/p/", "tok").as_deref(),
            Some("https://gitlab-ci-token:tok@git.internal/mirror/g/sub/p.git")
        );
        assert_eq!(clone_url_remote("", "g/p", "tok"), None);
        assert_eq!(clone_url_remote("http://h", "", "tok"), None);
    }

    #[test]
    fn remote_urls_split_into_their_parts() {
        let url = RemoteUrl::parse("https://gitlab-ci-token:tok@gitlab.example.com:8443/g/p.git");
        assert_eq!(
            url.without_credentials,
            "https://gitlab.example.com:8443/g/p.git"
        );
        assert_eq!(url.base, "https://gitlab.example.com:8443");
        assert_eq!(url.host_name, "gitlab.example.com");
        assert!(url.is_http);
        assert_eq!(
            url.credentialed_prefix.as_deref(),
            Some("https://gitlab-ci-token:tok@gitlab.example.com:8443/")
        );

        let ipv6 = RemoteUrl::parse("http://[::1]:8080/g/p.git");
        assert_eq!(ipv6.host_name, "::1");
        assert_eq!(ipv6.credentialed_prefix, None);

        let ssh = RemoteUrl::parse("ssh://git@gitlab.example.com/g/p.git");
        assert!(!ssh.is_http);
    }

    #[test]
    fn credentials_are_rejected_for_network_remotes_only() {
        let https = RemoteUrl::parse("https://gitlab-ci-token:tok@gitlab.example.com:8443/g/p.git");
        assert_eq!(
            https.credential_url(),
            Some("https://gitlab.example.com:8443")
        );
        let ssh = RemoteUrl::parse("ssh://git@gitlab.example.com/g/p.git");
        assert_eq!(ssh.credential_url(), Some("ssh://gitlab.example.com"));
        // A local path or another scheme is nothing git asks credentials for.
        assert_eq!(RemoteUrl::parse("/srv/git/p.git").credential_url(), None);
        assert_eq!(
            RemoteUrl::parse("file:///srv/git/p.git").credential_url(),
            None
        );
    }
}
