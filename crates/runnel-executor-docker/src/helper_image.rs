//! The helper image: Runnel's own, assembled from this host's files on first use, or a
//! configured `helper_image`, checked before a job relies on it.
//!
//! # Runnel's own helper image
//!
//! With no `[runners.docker] helper_image`, jobs use an image Runnel assembles itself, with no
//! registry and nothing from the build image:
//!
//! ```text
//! FROM scratch
//! /usr/bin/runnel (+ /usr/bin/gitlab-runner-helper -> runnel)   this very binary
//! git, git-remote-http(s), git-submodule, git-lfs (+ its filters    this host's, at its paths
//! in /etc/gitconfig), templates
//! bash (also /bin/sh), coreutils-like tools the stage scripts use this host's
//! every shared library `ldd` lists for those, the dynamic loader  this host's
//! CA bundle, /etc/passwd, /etc/group, /tmp                        this host's / minimal
//! ```
//!
//! so the helper never depends on the build image's C library (glibc, musl or a static
//! busybox image all work). It is tagged `runnel-helper:<version>-<binary digest>` and labelled
//! with the Runnel version and the binary's digest ([`LABEL_VERSION`], [`LABEL_DIGEST`]). It is
//! never pulled: an image under that tag is used only when its labels match, otherwise it is
//! rebuilt (a same-named image of another origin is replaced, with a warning in the job log).
//! The id of the image built or verified is recorded per engine for the life of the process,
//! and containers are created from that id, not the tag. Building takes a few seconds once per
//! Runnel binary and engine; its progress goes into the job log. After building, the binary
//! and git are run in the image once, so a broken assembly fails there with a clear message.
//!
//! # A configured helper image
//!
//! A configured `helper_image` is used as the runner's pull policies say, but a pull needs a
//! fully qualified name ([`is_qualified`]); without one the image must be present locally. An
//! image without the `com.gitlab.gitlab-runner.helper=runnel` label (the official
//! `gitlab-runner-helper`, a plain `alpine/git`) can still clone, but a job that needs Runnel's
//! helper commands (artifacts, caches, dependencies' artifacts) fails at job start with a
//! message naming the fix ([`helper_needs`]).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use bollard::Docker;
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptions, LogsOptions, RemoveContainerOptions, WaitContainerOptions,
};
use futures::StreamExt;
use md5::Digest as _;
use runnel_types::JobSpec;

use crate::DockerError;
use crate::image::{HELPER_RUNNER_COMMAND, append_file, build_image};

/// The repository of Runnel's own helper image.
pub const HELPER_REPOSITORY: &str = "runnel-helper";
/// The label every Runnel helper image carries, with the value `runnel`.
pub const LABEL_HELPER: &str = "com.gitlab.gitlab-runner.helper";
/// The label with the Runnel version that built the image.
pub const LABEL_VERSION: &str = "io.runnel.helper.version";
/// The label with the MD5 digest of the runner binary in the image.
pub const LABEL_DIGEST: &str = "io.runnel.helper.binary-digest";
/// This Runnel's version.
pub const RUNNEL_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Tools the stage scripts may call besides the shell and git; copied when the host has them.
const TOOLS: &[&str] = &[
    "basename",
    "cat",
    "chmod",
    "chown",
    "cp",
    "cut",
    "date",
    "dirname",
    "echo",
    "env",
    "false",
    "find",
    "grep",
    "gzip",
    "head",
    "hostname",
    "id",
    "kill",
    "ln",
    "ls",
    "md5sum",
    "mkdir",
    "mktemp",
    "mv",
    "printf",
    "readlink",
    "rm",
    "rmdir",
    "sed",
    "sha256sum",
    "sleep",
    "sort",
    "stat",
    "tail",
    "tar",
    "tee",
    "test",
    "timeout",
    "touch",
    "tr",
    "true",
    "uname",
    "wc",
    "whoami",
    "xargs",
];

/// Where tools are looked for on the host, in order.
const HOST_BIN_DIRS: &[&str] = &["/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"];

/// CA bundles looked for on the host, in order.
const CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// Runnel's own helper image for one runner binary.
#[derive(Clone, Debug)]
pub struct BuiltinHelper {
    binary: PathBuf,
    digest: String,
    tag: String,
}

/// The ids of the helper images built or verified by this process, per (engine, tag).
static VERIFIED: tokio::sync::Mutex<BTreeMap<(String, String), String>> =
    tokio::sync::Mutex::const_new(BTreeMap::new());

impl BuiltinHelper {
    /// The helper image for `binary` (hashes it, so call it off the async threads or once).
    pub fn for_binary(binary: &Path) -> Result<Self, DockerError> {
        let contents = std::fs::read(binary).map_err(|source| DockerError::BuildContext {
            path: binary.to_owned(),
            source,
        })?;
        let digest = hex::encode(md5::Md5::digest(&contents));
        let tag = format!("{HELPER_REPOSITORY}:{RUNNEL_VERSION}-{}", &digest[..12]);
        Ok(BuiltinHelper {
            binary: binary.to_owned(),
            digest,
            tag,
        })
    }

    /// The helper image for the running executable.
    pub fn for_current_exe() -> Result<Self, DockerError> {
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
        Self::for_binary(&exe)
    }

    /// The helper for `binary` (else the running executable), computed once per process and
    /// binary, off the async threads.
    pub async fn cached(binary: Option<&Path>) -> Result<Self, DockerError> {
        type Known = Vec<(Option<PathBuf>, BuiltinHelper)>;
        static KNOWN: std::sync::Mutex<Known> = std::sync::Mutex::new(Vec::new());
        let key = binary.map(Path::to_owned);
        let found = KNOWN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .find(|(known, _)| *known == key)
            .map(|(_, helper)| helper.clone());
        if let Some(helper) = found {
            return Ok(helper);
        }
        let path = key.clone();
        let helper = tokio::task::spawn_blocking(move || match path {
            Some(path) => Self::for_binary(&path),
            None => Self::for_current_exe(),
        })
        .await
        .map_err(|error| DockerError::HelperAssembly {
            message: format!("hashing the runner binary failed: {error}"),
        })??;
        KNOWN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((key, helper.clone()));
        Ok(helper)
    }

    /// `runnel-helper:<version>-<digest>`.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The labels the image carries.
    fn labels(&self) -> [(&'static str, &str); 3] {
        [
            (LABEL_HELPER, "runnel"),
            (LABEL_VERSION, RUNNEL_VERSION),
            (LABEL_DIGEST, &self.digest),
        ]
    }

    /// Whether `labels` are this helper's.
    fn is_ours(&self, labels: Option<&HashMap<String, String>>) -> bool {
        let Some(labels) = labels else { return false };
        self.labels()
            .iter()
            .all(|(key, value)| labels.get(*key).map(String::as_str) == Some(*value))
    }

    /// Forgets the id [`Self::ensure`] found on `host`: the image is gone.
    pub async fn forget(&self, host: &str) {
        VERIFIED
            .lock()
            .await
            .remove(&(host.to_owned(), self.tag.clone()));
    }

    /// The id of this helper image on `docker` (whose address is `host`): the one this process
    /// built or verified, else the local image under [`Self::tag`] when its labels match, else
    /// a fresh build. Never pulls. Lines for the job log go to `log`.
    pub async fn ensure(
        &self,
        docker: &Docker,
        host: &str,
        log: &mut Vec<String>,
    ) -> Result<String, DockerError> {
        let key = (host.to_owned(), self.tag.clone());
        let mut verified = VERIFIED.lock().await;
        // Not inspected again: a job whose container cannot be created from it (the image was
        // removed since) makes the executor forget it ([`Self::forget`]) and ask again.
        if let Some(id) = verified.get(&key) {
            return Ok(id.clone());
        }
        match docker.inspect_image(&self.tag).await {
            Ok(inspect) if self.is_ours(inspect.config.as_ref().and_then(|c| c.labels.as_ref())) => {
                if let Some(id) = inspect.id {
                    verified.insert(key, id.clone());
                    return Ok(id);
                }
            }
            Ok(_) => log.push(format!(
                "WARNING: the image {} on this Docker engine was not built by this Runnel (its labels do not match); building Runnel's own helper image under that tag instead",
                self.tag
            )),
            Err(_) => {}
        }
        log.push(format!(
            "Building Runnel's helper image {} from this host's runnel binary, git and their libraries (once per Runnel binary and Docker engine) ...",
            self.tag
        ));
        let started = Instant::now();
        let id = self.build(docker).await?;
        if find_tool("git-lfs").is_none() {
            log.push(
                "WARNING: git-lfs is not installed on this host, so the helper image has none: Git LFS files stay pointers (install git-lfs and restart the runner to fix)"
                    .to_owned(),
            );
        }
        log.push(format!(
            "Built helper image {} ({}) in {:.1}s",
            self.tag,
            short_id(&id),
            started.elapsed().as_secs_f64()
        ));
        verified.insert(key, id.clone());
        Ok(id)
    }

    /// Assembles, builds and checks the image; returns its id.
    pub async fn build(&self, docker: &Docker) -> Result<String, DockerError> {
        let this = self.clone();
        let context = tokio::task::spawn_blocking(move || this.context())
            .await
            .map_err(|error| DockerError::HelperAssembly {
                message: format!("assembling the build context failed: {error}"),
            })??;
        let id = build_image(docker, &self.tag, context).await?;
        check_runs(
            docker,
            &id,
            &self.tag,
            vec![
                "/bin/sh".to_owned(),
                "-c".to_owned(),
                format!("{HELPER_RUNNER_COMMAND} --version && git --version"),
            ],
        )
        .await?;
        Ok(id)
    }

    /// The tar build context: `Dockerfile` and `rootfs/`.
    fn context(&self) -> Result<Vec<u8>, DockerError> {
        let mut rootfs = Rootfs::default();
        rootfs.binary(&self.binary, "/usr/bin/runnel")?;
        rootfs.symlink("/usr/bin/gitlab-runner-helper", "runnel");
        let bash = find_tool("bash").ok_or_else(|| DockerError::HelperAssembly {
            message:
                "bash is not installed on this host (looked in /usr/local/bin, /usr/bin, /bin)"
                    .to_owned(),
        })?;
        rootfs.binary(&bash, "/bin/bash")?;
        rootfs.symlink("/bin/sh", "bash");
        rootfs.symlink("/usr/bin/bash", "/bin/bash");
        rootfs.symlink("/usr/bin/sh", "/bin/bash");
        for tool in TOOLS {
            if let Some(path) = find_tool(tool) {
                rootfs.binary(&path, &format!("/usr/bin/{tool}"))?;
            }
        }
        rootfs.git()?;
        let mut env = vec![
            "PATH=/usr/local/bin:/usr/bin:/bin".to_owned(),
            "HOME=/root".to_owned(),
        ];
        if let Some(lfs) = find_tool("git-lfs") {
            rootfs.binary(&lfs, "/usr/bin/git-lfs")?;
            // What `git lfs install --system` writes: the filters that fetch LFS content, in
            // the system config wherever this git was built to look for it.
            env.push("GIT_CONFIG_SYSTEM=/etc/gitconfig".to_owned());
            rootfs.text(
                "/etc/gitconfig",
                "[filter \"lfs\"]\n\tclean = git-lfs clean -- %f\n\tsmudge = git-lfs smudge -- %f\n\tprocess = git-lfs filter-process\n\trequired = true\n",
            );
        }
        if let Some(bundle) = CA_BUNDLES.iter().find(|path| Path::new(path).is_file()) {
            rootfs.file_from_host(Path::new(bundle), bundle, 0o644)?;
            env.push(format!("SSL_CERT_FILE={bundle}"));
        }
        rootfs.text(
            "/etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        );
        rootfs.text("/etc/group", "root:x:0:\nnogroup:x:65534:\n");
        rootfs.text(
            "/etc/nsswitch.conf",
            "passwd: files\ngroup: files\nhosts: files dns\n",
        );
        rootfs.dir("/tmp", 0o1777);
        rootfs.dir("/root", 0o700);
        let library_path = rootfs.library_dirs().join(":");
        if !library_path.is_empty() {
            env.push(format!("LD_LIBRARY_PATH={library_path}"));
        }
        let labels: Vec<String> = self
            .labels()
            .iter()
            .map(|(key, value)| format!("{key}={value:?}"))
            .collect();
        let env: Vec<String> = env.iter().map(|entry| quote_env(entry)).collect();
        let dockerfile = format!(
            "FROM scratch\nCOPY rootfs/ /\nENV {}\nLABEL {}\nENTRYPOINT []\nCMD [\"/bin/sh\"]\n",
            env.join(" "),
            labels.join(" ")
        );
        rootfs
            .into_tar(&dockerfile)
            .map_err(|source| DockerError::BuildContext {
                path: "(the helper image build context)".into(),
                source,
            })
    }
}

/// `KEY=value` quoted for a Dockerfile `ENV` line.
fn quote_env(entry: &str) -> String {
    match entry.split_once('=') {
        Some((key, value)) => format!("{key}={value:?}"),
        None => entry.to_owned(),
    }
}

fn short_id(id: &str) -> &str {
    let id = id.strip_prefix("sha256:").unwrap_or(id);
    &id[..id.len().min(12)]
}

/// `name` on the host: the first executable in [`HOST_BIN_DIRS`].
fn find_tool(name: &str) -> Option<PathBuf> {
    HOST_BIN_DIRS
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|path| path.is_file())
}

/// What goes into the image, by path inside it.
#[derive(Default)]
struct Rootfs {
    entries: BTreeMap<String, Entry>,
}

enum Entry {
    File { contents: Vec<u8>, mode: u32 },
    Symlink(String),
    Dir(u32),
}

impl Rootfs {
    /// A binary from the host at `inside`, with every library it needs at the host's paths.
    fn binary(&mut self, host: &Path, inside: &str) -> Result<(), DockerError> {
        self.file_from_host(host, inside, 0o755)?;
        for library in libraries(host)? {
            if !self.entries.contains_key(&library) {
                self.file_from_host(Path::new(&library), &library, 0o755)?;
            }
        }
        Ok(())
    }

    /// A host file (symlinks followed) at `inside`.
    fn file_from_host(&mut self, host: &Path, inside: &str, mode: u32) -> Result<(), DockerError> {
        let contents = std::fs::read(host).map_err(|source| DockerError::BuildContext {
            path: host.to_owned(),
            source,
        })?;
        self.entries
            .insert(inside.to_owned(), Entry::File { contents, mode });
        Ok(())
    }

    fn text(&mut self, inside: &str, text: &str) {
        self.entries.insert(
            inside.to_owned(),
            Entry::File {
                contents: text.as_bytes().to_vec(),
                mode: 0o644,
            },
        );
    }

    fn symlink(&mut self, inside: &str, target: &str) {
        self.entries
            .entry(inside.to_owned())
            .or_insert_with(|| Entry::Symlink(target.to_owned()));
    }

    fn dir(&mut self, inside: &str, mode: u32) {
        self.entries.insert(inside.to_owned(), Entry::Dir(mode));
    }

    /// The host's git at its own path (and `/usr/bin/git`), the HTTP transport from its
    /// exec path, and its templates.
    fn git(&mut self) -> Result<(), DockerError> {
        let git = find_tool("git").ok_or_else(|| DockerError::HelperAssembly {
            message: "git is not installed on this host; the helper image needs it to get sources (apt-get install git)".to_owned(),
        })?;
        let inside = git.to_string_lossy().into_owned();
        self.binary(&git, &inside)?;
        self.symlink("/usr/bin/git", &inside);
        let exec_path = Command::new(&git)
            .arg("--exec-path")
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
            .filter(|path| path.starts_with('/'))
            .ok_or_else(|| DockerError::HelperAssembly {
                message: format!("`{} --exec-path` failed", git.display()),
            })?;
        let exec_dir = Path::new(&exec_path);
        let remote_http = exec_dir.join("git-remote-http");
        if !remote_http.is_file() {
            return Err(DockerError::HelperAssembly {
                message: format!(
                    "{} is missing: this host's git cannot clone over HTTP",
                    remote_http.display()
                ),
            });
        }
        self.binary(&remote_http, &format!("{exec_path}/git-remote-http"))?;
        for alias in ["git-remote-https", "git-remote-ftp", "git-remote-ftps"] {
            self.symlink(&format!("{exec_path}/{alias}"), "git-remote-http");
        }
        self.symlink(&format!("{exec_path}/git"), &inside);
        // `git submodule` is still a shell script over the builtin `submodule--helper`.
        for script in ["git-submodule", "git-sh-setup", "git-sh-i18n"] {
            let path = exec_dir.join(script);
            if path.is_file() {
                self.file_from_host(&path, &format!("{exec_path}/{script}"), 0o755)?;
            }
        }
        let envsubst = exec_dir.join("git-sh-i18n--envsubst");
        if envsubst.is_file() {
            self.binary(&envsubst, &format!("{exec_path}/git-sh-i18n--envsubst"))?;
        }
        // <prefix>/libexec/git-core or <prefix>/lib/git-core → <prefix>/share/git-core/templates.
        if let Some(prefix) = exec_dir.parent().and_then(Path::parent) {
            let templates = prefix.join("share/git-core/templates");
            self.tree(&templates)?;
        }
        Ok(())
    }

    /// A small host directory tree (regular files only), at the same path.
    fn tree(&mut self, dir: &Path) -> Result<(), DockerError> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Ok(());
        };
        self.dir(&dir.to_string_lossy(), 0o755);
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                self.tree(&path)?;
            } else if kind.is_file() {
                let mode = if is_executable(&path) { 0o755 } else { 0o644 };
                self.file_from_host(&path, &path.to_string_lossy(), mode)?;
            }
        }
        Ok(())
    }

    /// The directories holding shared libraries, for `LD_LIBRARY_PATH`.
    fn library_dirs(&self) -> Vec<String> {
        let mut dirs: Vec<String> = self
            .entries
            .keys()
            .filter(|path| path.contains(".so"))
            .filter_map(|path| Path::new(path).parent())
            .map(|dir| dir.to_string_lossy().into_owned())
            .collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }

    fn into_tar(self, dockerfile: &str) -> std::io::Result<Vec<u8>> {
        let mut builder = tar::Builder::new(Vec::new());
        append_file(&mut builder, "Dockerfile", dockerfile.as_bytes(), 0o644)?;
        for (path, entry) in self.entries {
            let name = format!("rootfs{path}");
            match entry {
                Entry::File { contents, mode } => {
                    append_file(&mut builder, &name, &contents, mode)?;
                }
                Entry::Symlink(target) => {
                    let mut header = tar::Header::new_gnu();
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_size(0);
                    header.set_mode(0o777);
                    header.set_mtime(0);
                    builder.append_link(&mut header, &name, &target)?;
                }
                Entry::Dir(mode) => {
                    let mut header = tar::Header::new_gnu();
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_size(0);
                    header.set_mode(mode);
                    header.set_mtime(0);
                    builder.append_data(&mut header, &name, std::io::empty())?;
                }
            }
        }
        builder.into_inner()
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|meta| meta.permissions().mode() & 0o111 != 0)
}

/// The shared libraries `ldd` lists for `binary` (absolute paths, the loader included); none
/// for a static binary or a script.
fn libraries(binary: &Path) -> Result<Vec<String>, DockerError> {
    let output =
        Command::new("ldd")
            .arg(binary)
            .output()
            .map_err(|error| DockerError::HelperAssembly {
                message: format!("`ldd` could not run ({error}); it lists the libraries to copy"),
            })?;
    // `ldd` fails for static binaries and scripts: they need no library.
    if !output.status.success() {
        return Ok(Vec::new());
    }
    parse_ldd(&String::from_utf8_lossy(&output.stdout)).map_err(|library| {
        DockerError::HelperAssembly {
            message: format!(
                "{} needs {library}, which `ldd` cannot find",
                binary.display()
            ),
        }
    })
}

/// The library paths of `ldd` output; `Err(name)` for a library that was not found.
fn parse_ldd(text: &str) -> Result<Vec<String>, String> {
    let mut paths = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let path = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    return Err(name.trim().to_owned());
                }
                rest.split(' ').next().unwrap_or("")
            }
            None => line.split(' ').next().unwrap_or(""),
        };
        if path.starts_with('/') {
            paths.push(path.to_owned());
        }
    }
    Ok(paths)
}

/// Runs `cmd` in a throw-away container of `image` (id); fails with
/// [`DockerError::HelperNotRunnable`] naming `shown` unless it exits 0.
pub(crate) async fn check_runs(
    docker: &Docker,
    image: &str,
    shown: &str,
    cmd: Vec<String>,
) -> Result<String, DockerError> {
    let name = format!("runnel-helper-check-{:08x}", rand::random::<u32>());
    let command = cmd.join(" ");
    let created = docker
        .create_container(
            Some(CreateContainerOptions {
                name: Some(name.clone()),
                ..CreateContainerOptions::default()
            }),
            ContainerCreateBody {
                image: Some(image.to_owned()),
                cmd: Some(cmd),
                entrypoint: Some(Vec::new()),
                labels: Some(HashMap::from([(
                    format!("{}.helper-check", crate::naming::LABEL_PREFIX),
                    "true".to_owned(),
                )])),
                network_disabled: Some(true),
                ..ContainerCreateBody::default()
            },
        )
        .await
        .map_err(|source| DockerError::api("create container", name.clone(), source))?;
    let result = async {
        if let Err(error) = docker.start_container(&created.id, None).await {
            return Err(format!("could not start: {error}"));
        }
        let code = match docker
            .wait_container(
                &created.id,
                Some(WaitContainerOptions {
                    condition: "not-running".to_owned(),
                }),
            )
            .next()
            .await
        {
            Some(Ok(response)) => response.status_code,
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
            Some(Err(error)) => return Err(format!("could not be waited for: {error}")),
            None => -1,
        };
        let mut logs = docker.logs(
            &created.id,
            Some(LogsOptions {
                stdout: true,
                stderr: true,
                tail: "20".to_owned(),
                ..LogsOptions::default()
            }),
        );
        let mut output = String::new();
        while let Some(Ok(chunk)) = logs.next().await {
            if output.len() < 4096 {
                output.push_str(&String::from_utf8_lossy(chunk.as_ref()));
            }
        }
        let output = output.trim().to_owned();
        if code == 0 {
            Ok(output)
        } else {
            Err(format!("exited with code {code}: {output}"))
        }
    }
    .await;
    if let Err(error) = docker
        .remove_container(
            &created.id,
            Some(RemoveContainerOptions {
                force: true,
                v: true,
                link: false,
            }),
        )
        .await
    {
        tracing::warn!(container = %name, %error, "failed to remove the helper check container");
    }
    result.map_err(|outcome| DockerError::HelperNotRunnable {
        image: shown.to_owned(),
        command,
        outcome,
    })
}

/// Whether an image name says which registry it comes from (`registry.example.com/x`,
/// `localhost:5000/x`, `localhost/x`), so a pull cannot silently go to Docker Hub.
pub fn is_qualified(image: &str) -> bool {
    image.split_once('/').is_some_and(|(first, _)| {
        first.contains('.') || first.contains(':') || first == "localhost"
    })
}

/// What a job needs Runnel's helper commands for: `artifacts`, `caches`, `dependencies'
/// artifacts` (empty when it needs only a shell and git).
pub fn helper_needs(job: &JobSpec) -> Vec<&'static str> {
    let mut needs = Vec::new();
    if !job.artifacts.is_empty() {
        needs.push("artifacts");
    }
    if !job.cache.is_empty() {
        needs.push("caches");
    }
    if job
        .dependencies
        .iter()
        .any(|dependency| !dependency.artifacts_filename.is_empty())
    {
        needs.push("dependencies' artifacts");
    }
    needs
}

/// What a provider learnt about configured helper images that it does not pull for every job:
/// name → (image id, whether it is a Runnel helper), so later jobs do not inspect it again.
/// An entry is forgotten when a container cannot be created from its image.
#[derive(Debug, Default)]
pub(crate) struct KnownHelpers(std::sync::Mutex<HashMap<String, (String, bool)>>);

impl KnownHelpers {
    fn get(&self, name: &str) -> Option<(String, bool)> {
        self.lock().get(name).cloned()
    }

    fn insert(&self, name: &str, id: &str, is_runnel: bool) {
        self.lock()
            .insert(name.to_owned(), (id.to_owned(), is_runnel));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, bool)>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Forgets what [`resolve`] knew about the helper image `configured` (empty: Runnel's own for
/// `binary`) on `host`: a container could not be created from it.
pub(crate) async fn forget(
    host: &str,
    configured: &str,
    binary: Option<&Path>,
    known: &KnownHelpers,
) {
    if configured.is_empty() {
        if let Ok(helper) = BuiltinHelper::cached(binary).await {
            helper.forget(host).await;
        }
    } else {
        known.lock().remove(configured);
    }
}

/// The id and the name (for `allowed_privileged_images`) of the helper image a job uses:
/// Runnel's own ([`BuiltinHelper`] for `binary`, else
/// the running executable) when `configured` is empty, else the configured one, got by
/// `policies` (a pull only for a fully qualified name) and refused when it is not a Runnel
/// helper but `job` needs one. Lines for the job log go to `log`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn resolve(
    docker: &Docker,
    host: &str,
    configured: &str,
    binary: Option<&Path>,
    policies: &[runnel_config::PullPolicy],
    job: &JobSpec,
    known: &KnownHelpers,
    log: &mut Vec<String>,
) -> Result<(String, String), DockerError> {
    if configured.is_empty() {
        let helper = BuiltinHelper::cached(binary).await?;
        let id = helper.ensure(docker, host, log).await?;
        return Ok((id, helper.tag().to_owned()));
    }
    // With `always` every job pulls (or, for a name that may not be pulled, says why not).
    let pulled_every_job = policies.contains(&runnel_config::PullPolicy::Always);
    let (id, is_runnel) = match known.get(configured).filter(|_| !pulled_every_job) {
        Some(found) => found,
        None => {
            let inspect = inspect_configured(docker, configured, policies, job, log).await?;
            let is_runnel =
                is_runnel_helper(inspect.config.as_ref().and_then(|c| c.labels.as_ref()));
            let id = inspect.id.unwrap_or_else(|| configured.to_owned());
            if !pulled_every_job {
                known.insert(configured, &id, is_runnel);
            }
            (id, is_runnel)
        }
    };
    let needs = helper_needs(job);
    if !needs.is_empty() && !is_runnel {
        return Err(DockerError::NotARunnelHelper {
            image: configured.to_owned(),
            needs: needs.join(", "),
        });
    }
    Ok((id, configured.to_owned()))
}

/// Gets (by `policies`, a pull only for a fully qualified name) and inspects the configured
/// helper image.
async fn inspect_configured(
    docker: &Docker,
    configured: &str,
    policies: &[runnel_config::PullPolicy],
    job: &JobSpec,
    log: &mut Vec<String>,
) -> Result<bollard::models::ImageInspect, DockerError> {
    let inspect = if is_qualified(configured) {
        let id = crate::image::ensure_image(
            docker,
            configured,
            policies,
            crate::auth::credentials_for(configured, job),
            "",
            log,
        )
        .await?;
        docker
            .inspect_image(&id)
            .await
            .map_err(|source| DockerError::api("inspect helper image", configured, source))?
    } else {
        // Never pulled: a plain name would be looked up on Docker Hub.
        let inspect = docker.inspect_image(configured).await.map_err(|_| {
            DockerError::UnqualifiedHelperPull {
                image: configured.to_owned(),
            }
        })?;
        if policies.contains(&runnel_config::PullPolicy::Always) {
            log.push(format!(
                "WARNING: helper_image {configured} is not pulled despite pull policy \"always\": its name does not say which registry it comes from; using the local image"
            ));
        }
        inspect
    };
    Ok(inspect)
}

/// Whether image labels mark a Runnel helper.
pub(crate) fn is_runnel_helper(labels: Option<&HashMap<String, String>>) -> bool {
    labels
        .and_then(|labels| labels.get(LABEL_HELPER))
        .is_some_and(|value| value == "runnel")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_the_library_paths_and_the_loader() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(text),
            Ok(vec![
                "/lib/x86_64-linux-gnu/libz.so.1".to_owned(),
                "/lib/x86_64-linux-gnu/libc.so.6".to_owned(),
                "/lib64/ld-linux-x86-64.so.2".to_owned(),
            ])
        );
        assert_eq!(
            parse_ldd("\tlibgone.so.2 => not found\n"),
            Err("libgone.so.2".to_owned())
        );
        assert_eq!(parse_ldd("\tstatically linked\n"), Ok(Vec::new()));
    }

    #[test]
    fn only_qualified_names_may_be_pulled() {
        for qualified in [
            "registry.example.com/group/helper:1",
            "localhost:5000/helper",
            "localhost/helper:1",
            "registry.gitlab.com/gitlab-org/gitlab-runner/gitlab-runner-helper:x86_64-v17.0.0",
        ] {
            assert!(is_qualified(qualified), "{qualified}");
        }
        for unqualified in [
            "runnel-helper:latest",
            "gitlab/gitlab-runner-helper:x86_64-latest",
            "alpine",
        ] {
            assert!(!is_qualified(unqualified), "{unqualified}");
        }
    }

    #[test]
    fn the_tag_names_the_version_and_the_binary() {
        let dir = tempfile::tempdir().expect("temp dir");
        let binary = dir.path().join("runnel");
        std::fs::write(&binary, b"binary one").expect("write");
        let one = BuiltinHelper::for_binary(&binary).expect("helper");
        std::fs::write(&binary, b"binary two").expect("write");
        let two = BuiltinHelper::for_binary(&binary).expect("helper");
        assert!(
            one.tag()
                .starts_with(&format!("runnel-helper:{RUNNEL_VERSION}-"))
        );
        assert_ne!(one.tag(), two.tag());
        let mut labels: HashMap<String, String> = one
            .labels()
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        assert!(one.is_ours(Some(&labels)));
        assert!(!two.is_ours(Some(&labels)));
        labels.remove(LABEL_VERSION);
        assert!(!one.is_ours(Some(&labels)));
        assert!(!one.is_ours(None));
    }

    #[test]
    fn a_job_needs_the_helper_for_artifacts_and_caches_only() {
        let mut job = JobSpec::default();
        assert!(helper_needs(&job).is_empty());
        job.artifacts.push(runnel_types::ArtifactSpec::default());
        job.cache.push(runnel_types::CacheSpec::default());
        assert_eq!(helper_needs(&job), ["artifacts", "caches"]);
    }
}
