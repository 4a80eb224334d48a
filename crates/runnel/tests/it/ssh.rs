//! The SSH executor end to end: the `runnel` binary, the fake GitLab and a real OpenSSH server
//! (`/usr/sbin/sshd` from Debian's openssh-server) started per test on 127.0.0.1 with host and
//! client keys generated here.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use runnel_fake_gitlab::RemoteStatus;
use serde_json::json;
use tempfile::TempDir;

use crate::run::{Daemon, Setup, final_update, job};

/// The local user the password test logs in as (created on first use, password random).
const PASSWORD_USER: &str = "runnel-ssh-test";

/// A private sshd on a free loopback port.
struct Sshd {
    dir: TempDir,
    port: u16,
    child: std::process::Child,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        if self.child.kill().is_ok() && self.child.wait().is_err() {
            eprintln!("sshd {} was not reaped", self.child.id());
        }
    }
}

fn keygen(path: &Path) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "runnel-test", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen runs (apt-get install openssh-client)");
    assert!(status.success());
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Sshd {
    async fn start() -> Self {
        assert!(
            Path::new("/usr/sbin/sshd").exists(),
            "the SSH tests need sshd: apt-get install openssh-server"
        );
        // sshd's privilege separation directory.
        std::fs::create_dir_all("/run/sshd").unwrap();
        let dir = tempfile::tempdir().unwrap();
        keygen(&dir.path().join("host_key"));
        keygen(&dir.path().join("client_key"));
        std::fs::copy(
            dir.path().join("client_key.pub"),
            dir.path().join("authorized_keys"),
        )
        .unwrap();
        let port = free_port();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nUsePAM no\n\
             PermitRootLogin yes\nPasswordAuthentication yes\nKbdInteractiveAuthentication no\n\
             AllowUsers root {PASSWORD_USER}\nLogLevel ERROR\n",
            d = dir.path().display()
        );
        std::fs::write(dir.path().join("sshd_config"), config).unwrap();
        let log = std::fs::File::create(dir.path().join("sshd.log")).unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(dir.path().join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let sshd = Sshd { dir, port, child };
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return sshd;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "sshd did not listen: {}",
            std::fs::read_to_string(sshd.dir.path().join("sshd.log")).unwrap_or_default()
        );
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A known_hosts file naming this server with `key_file`'s public key.
    fn known_hosts(&self, key_file: &str) -> PathBuf {
        let public = std::fs::read_to_string(self.path(key_file)).unwrap();
        let mut fields = public.split_whitespace();
        let line = format!(
            "[127.0.0.1]:{} {} {}\n",
            self.port,
            fields.next().unwrap(),
            fields.next().unwrap()
        );
        let file = self.path(&format!("known_hosts_{key_file}"));
        std::fs::write(&file, line).unwrap();
        file
    }

    /// `[runners.ssh]` for root with the client key, checking the real host key.
    fn section(&self, extra: &str) -> String {
        format!(
            "  [runners.ssh]\n    host = \"127.0.0.1\"\n    port = \"{}\"\n    user = \"root\"\n    identity_file = \"{}\"\n    known_hosts_file = \"{}\"\n{extra}",
            self.port,
            self.path("client_key").display(),
            self.known_hosts("host_key.pub").display(),
        )
    }
}

async fn ssh_daemon(concurrent: usize, runner: &str, ssh: String) -> Daemon {
    Daemon::start(Setup {
        concurrent,
        executor: Some("ssh"),
        runner: runner.to_owned(),
        tables: ssh,
        ..Setup::default()
    })
    .await
}

fn gone(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
        stat.rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z'))
    })
}

async fn wait_gone(pid: i32) -> bool {
    for _ in 0..100 {
        if gone(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

fn read_pid(path: &Path) -> i32 {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn key_login_runs_the_job_suite_on_the_ssh_host() {
    let sshd = Sshd::start().await;
    let daemon = ssh_daemon(6, "  limit = 6", sshd.section("")).await;
    let secret = "s3cr3t-value-0123456789";
    let marks = sshd.dir.path().display().to_string();
    let ok = daemon.fake.enqueue(
        job("ssh-ok")
            .variable("PLAIN", "plain-value")
            .file_variable("MY_FILE", "file-content-42")
            .script([
                "echo \"plain=$PLAIN id=$CI_JOB_ID shell=$0 login=$(shopt -q login_shell && echo yes)\"",
                "cat \"$MY_FILE\"; echo",
                "test -d \"$CI_PROJECT_DIR\" && echo project-dir-ok",
                "export A=one",
                "echo \"A=$A\" >&2",
            ])
            .after_script(["echo \"after status=$CI_JOB_STATUS\""]),
    );
    let failing = daemon.fake.enqueue(
        job("ssh-fail")
            .script(["echo before", "exit 3", "echo after"])
            .after_script(["echo \"status=$CI_JOB_STATUS\""]),
    );
    let masked =
        daemon.fake.enqueue(
            job("ssh-mask")
                .masked_variable("MY_SECRET", secret)
                .script([
                    "echo \"plain: $MY_SECRET\"",
                    "printf 's3cr3t-va'; sleep 0.3; printf 'lue-0123456789 done\\n'",
                ]),
        );
    let big = daemon.fake.enqueue(job("ssh-big").script(["seq 1 300000"]));
    let overlap = |me: &str, other: &str| {
        [
            format!("touch {marks}/{me}"),
            format!("for i in $(seq 300); do [ -f {marks}/{other} ] && break; sleep 0.1; done"),
            format!("test -f {marks}/{other} && echo overlapped-{me}"),
        ]
    };
    let a = daemon.fake.enqueue(job("ssh-a").script(overlap("a", "b")));
    let b = daemon.fake.enqueue(job("ssh-b").script(overlap("b", "a")));

    let trace = daemon.succeeded(ok).await;
    for needle in [
        "Preparing the \"ssh\" executor",
        "Using SSH executor...\n",
        " via ",
        &format!("plain=plain-value id={ok} shell=bash login=yes\n"),
        "file-content-42\n",
        "project-dir-ok\n",
        "A=one\n",
        "after status=success\n",
        "Job succeeded",
    ] {
        assert!(trace.contains(needle), "{needle:?} missing from:\n{trace}");
    }
    assert!(!trace.contains("RUNNEL_PGID"), "{trace}");

    let view = daemon.finished(failing).await;
    let trace = view.trace_text();
    let last = final_update(&view);
    assert_eq!(
        last.failure_reason.as_deref(),
        Some("script_failure"),
        "{trace}"
    );
    assert_eq!(last.exit_code, Some(3));
    assert!(
        trace.contains("before\n") && !trace.contains("\nafter\n"),
        "{trace}"
    );
    assert!(trace.contains("status=failed\n"), "{trace}");
    assert!(
        trace.contains("ERROR: Job failed: exit status 3"),
        "{trace}"
    );

    let view = daemon.finished(masked).await;
    let trace = view.trace_text();
    assert!(!trace.contains(secret), "secret leaked: {trace}");
    assert!(
        trace.contains("plain: [MASKED]\n") && trace.contains("[MASKED] done\n"),
        "{trace}"
    );

    let view = daemon.finished(big).await;
    let trace = view.trace_text();
    let expected: String = (1..=300_000).map(|n| format!("{n}\n")).collect();
    let echo = "\x1b[32;1m$ seq 1 300000\x1b[0;m\n";
    let start = trace.find(echo).expect("command echoed") + echo.len();
    assert!(
        trace[start..].starts_with(&expected),
        "the output arrived intact"
    );

    for (id, me) in [(a, "a"), (b, "b")] {
        let trace = daemon.succeeded(id).await;
        assert!(trace.contains(&format!("overlapped-{me}\n")), "{trace}");
    }
}

#[tokio::test]
async fn cancel_timeout_and_leftover_processes_stop_on_the_ssh_host() {
    let sshd = Sshd::start().await;
    let daemon = ssh_daemon(3, "  limit = 3", sshd.section("")).await;
    let p = |name: &str| sshd.path(name).display().to_string();
    let leaves = daemon.fake.enqueue(job("ssh-leaves").script([
        format!("sleep 300 >/dev/null 2>&1 & echo $! > {}", p("left.pid")),
        "echo left-something-behind".to_owned(),
    ]));
    let cancel = daemon.fake.enqueue(
        job("ssh-cancel")
            .script([
                format!("sleep 300 & echo $! > {}", p("cancel.pid")),
                "echo started; sleep 60; echo not-reached".to_owned(),
            ])
            .after_script(["echo \"after-cancel status=$CI_JOB_STATUS\""]),
    );
    let slow = daemon.fake.enqueue(
        job("ssh-slow")
            .timeout(15)
            .script([
                format!("sleep 300 & echo $! > {}", p("slow.pid")),
                "sleep 120".to_owned(),
            ])
            .after_script(["echo after-timeout"]),
    );

    let view = daemon.finished(leaves).await;
    assert_eq!(view.status, RemoteStatus::Success, "{}", view.trace_text());
    assert!(
        wait_gone(read_pid(&sshd.path("left.pid"))).await,
        "a background process outlived its stage"
    );

    daemon.printed(cancel, "started\n").await;
    daemon.fake.cancel_job(cancel).unwrap();
    let view = daemon.finished(cancel).await;
    let trace = view.trace_text();
    assert_eq!(view.status, RemoteStatus::Canceled, "{trace}");
    assert!(trace.contains("after-cancel status=canceled"), "{trace}");
    assert!(!trace.contains("not-reached\n"), "{trace}");
    assert!(
        wait_gone(read_pid(&sshd.path("cancel.pid"))).await,
        "cancel left processes"
    );

    let view = daemon.finished(slow).await;
    let trace = view.trace_text();
    assert_eq!(
        final_update(&view).failure_reason.as_deref(),
        Some("job_execution_timeout"),
        "{trace}"
    );
    assert!(trace.contains("after-timeout\n"), "{trace}");
    assert!(
        wait_gone(read_pid(&sshd.path("slow.pid"))).await,
        "timeout left processes"
    );
}

#[tokio::test]
async fn artifacts_need_the_runner_binary_on_the_ssh_host() {
    let sshd = Sshd::start().await;
    let daemon = ssh_daemon(1, "", sshd.section("")).await;
    let id = daemon.fake.enqueue(
        job("ssh-artifacts")
            .script(["mkdir -p out && echo hello > out/a.txt"])
            .extra(
                "artifacts",
                json!([{ "paths": ["out/"], "when": "on_success",
                         "artifact_type": "archive", "artifact_format": "zip" }]),
            ),
    );
    let view = daemon.finished(id).await;
    let trace = view.trace_text();
    // Without the runner binary on the host the artifacts cannot be uploaded: unlike the
    // official runner (a warning and success), the job fails, since its result is incomplete.
    assert_eq!(view.status, RemoteStatus::Failed, "{trace}");
    assert!(
        trace.contains("Missing runnel: artifacts cannot be uploaded.")
            && trace.contains("ssh: install runnel on the host"),
        "{trace}"
    );
    assert!(view.artifacts.is_empty());
}

/// Makes sure the password test user exists and gives it a fresh random password.
fn password_user() -> String {
    let exists = Command::new("id").arg(PASSWORD_USER).output().unwrap();
    if !exists.status.success() {
        let status = Command::new("useradd")
            .args(["-m", "-s", "/bin/bash", PASSWORD_USER])
            .status()
            .unwrap();
        assert!(status.success(), "useradd {PASSWORD_USER}");
    }
    let mut bytes = [0u8; 24];
    use std::io::Read as _;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .unwrap();
    let password: String = bytes.iter().map(|b| char::from(b'a' + b % 26)).collect();
    let mut chpasswd = Command::new("chpasswd")
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    chpasswd
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{PASSWORD_USER}:{password}\n").as_bytes())
        .unwrap();
    assert!(chpasswd.wait().unwrap().success(), "chpasswd");
    // Debian's skeleton .bash_logout ends login shells with status 1 when clear_console is
    // missing, which fails every stage (the official runner's documented pitfall too).
    if let Err(error) = std::fs::remove_file(format!("/home/{PASSWORD_USER}/.bash_logout")) {
        assert_eq!(error.kind(), std::io::ErrorKind::NotFound, "{error}");
    }
    password
}

#[tokio::test]
async fn password_login_and_host_key_checks() {
    let sshd = Sshd::start().await;
    let password = password_user();
    let section = format!(
        "  [runners.ssh]\n    host = \"127.0.0.1\"\n    port = \"{}\"\n    user = \"{PASSWORD_USER}\"\n    password = \"{password}\"\n    known_hosts_file = \"{}\"\n",
        sshd.port,
        sshd.known_hosts("host_key.pub").display(),
    );
    let daemon = ssh_daemon(1, "", section).await;
    // The builds dir lives in the daemon's private temp dir: let the test user in.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(daemon.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for sub in ["builds", "cache"] {
        let dir = daemon.dir.path().join(sub);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let id = daemon
        .fake
        .enqueue(job("ssh-password").script(["echo \"user=$(id -un)\""]));
    let trace = daemon.succeeded(id).await;
    assert!(
        trace.contains(&format!("user={PASSWORD_USER}\n")),
        "{trace}"
    );
    assert!(!trace.contains(&password), "{trace}");
    drop(daemon);
    // Nobody logs in with that password again.
    let locked = Command::new("passwd")
        .args(["-l", PASSWORD_USER])
        .output()
        .unwrap();
    assert!(locked.status.success(), "passwd -l {PASSWORD_USER}");

    // A known_hosts file with another key for this host: a clear system failure.
    keygen(&sshd.path("other_key"));
    let wrong = format!(
        "  [runners.ssh]\n    host = \"127.0.0.1\"\n    port = \"{}\"\n    user = \"root\"\n    identity_file = \"{}\"\n    known_hosts_file = \"{}\"\n",
        sshd.port,
        sshd.path("client_key").display(),
        sshd.known_hosts("other_key.pub").display(),
    );
    let daemon = ssh_daemon(1, "", wrong.clone()).await;
    let id = daemon
        .fake
        .enqueue(job("ssh-wrong-key").script(["echo must-not-run"]));
    let view = daemon.finished(id).await;
    let trace = view.trace_text();
    assert_eq!(
        final_update(&view).failure_reason.as_deref(),
        Some("runner_system_failure"),
        "{trace}"
    );
    assert!(
        trace.contains("ERROR: Job failed (system failure): "),
        "{trace}"
    );
    assert!(trace.contains("host key verification failed"), "{trace}");
    assert!(
        trace.contains("does not match the key for it on line 1"),
        "{trace}"
    );
    assert!(!trace.contains("must-not-run\n"), "{trace}");
    drop(daemon);

    // The same file with checking disabled: the job runs.
    let lax = format!("{wrong}    disable_strict_host_key_checking = true\n");
    let daemon = ssh_daemon(1, "", lax).await;
    let id = daemon
        .fake
        .enqueue(job("ssh-lax").script(["echo ran-anyway"]));
    let view = daemon.finished(id).await;
    assert_eq!(view.status, RemoteStatus::Success, "{}", view.trace_text());
    assert!(view.trace_text().contains("ran-anyway\n"));
}

#[tokio::test]
async fn an_unknown_or_unreachable_host_fails_the_job_clearly() {
    let sshd = Sshd::start().await;
    std::fs::write(sshd.path("empty_known_hosts"), "").unwrap();
    let unknown = format!(
        "  [runners.ssh]\n    host = \"127.0.0.1\"\n    port = \"{}\"\n    user = \"root\"\n    identity_file = \"{}\"\n    known_hosts_file = \"{}\"\n",
        sshd.port,
        sshd.path("client_key").display(),
        sshd.path("empty_known_hosts").display(),
    );
    let daemon = ssh_daemon(1, "", unknown).await;
    let id = daemon
        .fake
        .enqueue(job("ssh-unknown").script(["echo must-not-run"]));
    let view = daemon.finished(id).await;
    let trace = view.trace_text();
    assert_eq!(
        final_update(&view).failure_reason.as_deref(),
        Some("runner_system_failure"),
        "{trace}"
    );
    assert!(trace.contains("host key verification failed"), "{trace}");
    assert!(trace.contains("is not in"), "{trace}");
    drop(daemon);

    let closed = free_port();
    let unreachable = format!(
        "  [runners.ssh]\n    host = \"127.0.0.1\"\n    port = \"{closed}\"\n    user = \"root\"\n    identity_file = \"{}\"\n    disable_strict_host_key_checking = true\n",
        sshd.path("client_key").display(),
    );
    let daemon = ssh_daemon(1, "", unreachable).await;
    let id = daemon
        .fake
        .enqueue(job("ssh-unreachable").script(["echo must-not-run"]));
    let view = daemon.finished(id).await;
    let trace = view.trace_text();
    assert_eq!(
        final_update(&view).failure_reason.as_deref(),
        Some("runner_system_failure"),
        "{trace}"
    );
    assert!(
        trace.contains(&format!(
            "cannot connect to [127.0.0.1]:{closed} (tried 3 times)"
        )),
        "{trace}"
    );
}
