//! `install`, `uninstall`, `start`, `stop`, `restart` and `status` through the binary.
//!
//! Every test runs `runnel` with `RUNNEL_SERVICE_ROOT` pointing at a temp dir (so nothing real is
//! touched), an assumed uid (`RUNNEL_SERVICE_UID`), and a `PATH` holding only fake manager tools
//! that record their arguments and keep a pretend running/stopped state.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tempfile::TempDir;

use crate::support::Run;

const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// A fake manager tool: logs `tool args…`, and answers status queries from a state file that
/// `start`/`stop`-like calls update. `FAKE_FAIL` names one `tool args…` line that must fail.
/// Shell builtins only, so `PATH` can hold nothing but the fakes.
const FAKE_TOOL: &str = r#"#!/bin/sh
tool=${0##*/}
line="$tool $*"
echo "$line" >>"$FAKE_DIR/calls.log"
if [ "$line" = "$FAKE_FAIL" ]; then
	echo "Failed: $line was refused" >&2
	exit 1
fi
state=stopped
[ -f "$FAKE_DIR/state" ] && read -r state <"$FAKE_DIR/state"
set_state() {
	echo "$1" >"$FAKE_DIR/state"
}
case "$line" in
	*" is-active "*)
		if [ "$state" = running ]; then echo active; exit 0; fi
		echo inactive; exit 3 ;;
	*" status")
		[ "$state" = running ] && exit 0
		exit 3 ;;
	"launchctl list "*)
		if [ "$state" = running ]; then printf '{\n\t"PID" = 4242;\n};\n'; fi
		exit 0 ;;
	"launchctl kill SIGQUIT "*|*" stop"|*" stop "*|*" disable --now "*|"launchctl unload "*)
		set_state stopped ;;
	*" start"|*" start "*|*" restart"|*" restart "*|"launchctl load "*)
		set_state running ;;
esac
exit 0
"#;

struct ServiceEnv {
    dir: TempDir,
    uid: u32,
    manager: Option<&'static str>,
    fail: Option<String>,
    /// Also put the real `/usr/bin:/bin` on PATH (after the fakes), for tests that run scripts.
    system_path: bool,
}

impl ServiceEnv {
    /// A root dir with the marker of `marker` (e.g. `run/systemd/system`), fake tools, a home
    /// and a config file.
    fn new(marker: &str, uid: u32) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let env = Self {
            dir,
            uid,
            manager: None,
            fail: None,
            system_path: false,
        };
        if !marker.is_empty() {
            std::fs::create_dir_all(env.root().join(marker)).unwrap();
        }
        std::fs::create_dir_all(env.bin()).unwrap();
        std::fs::create_dir_all(env.fake_dir()).unwrap();
        std::fs::create_dir_all(env.home()).unwrap();
        std::fs::write(env.config(), "concurrent = 1\n").unwrap();
        env
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn bin(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    fn fake_dir(&self) -> PathBuf {
        self.dir.path().join("fake")
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    fn with_tools(self, tools: &[&str]) -> Self {
        for tool in tools {
            let path = self.bin().join(tool);
            std::fs::write(&path, FAKE_TOOL).unwrap();
            make_executable(&path);
        }
        self
    }

    fn path(&self) -> std::ffi::OsString {
        let mut path = self.bin().into_os_string();
        if self.system_path {
            path.push(":/usr/bin:/bin");
        }
        path
    }

    /// The calls the fakes saw, and forgets them.
    fn take_calls(&self) -> Vec<String> {
        let path = self.fake_dir().join("calls.log");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        std::fs::remove_file(&path).ok();
        text.lines().map(|line| self.scrub(line)).collect()
    }

    fn scrub(&self, text: &str) -> String {
        text.replace(self.root().to_str().unwrap(), "[ROOT]")
            .replace(self.dir.path().to_str().unwrap(), "[TMP]")
            .replace(env!("CARGO_BIN_EXE_runnel"), "[RUNNEL]")
    }

    async fn runnel(&self, args: &[&str]) -> Run {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_runnel"));
        command
            .args(args)
            .env_clear()
            .env("PATH", self.path())
            .env("HOME", self.home())
            .env("RUNNEL_SERVICE_ROOT", self.root())
            .env("RUNNEL_SERVICE_UID", self.uid.to_string())
            .env("FAKE_DIR", self.fake_dir())
            .env("FAKE_FAIL", self.fail.as_deref().unwrap_or(""))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(manager) = self.manager {
            command.env("RUNNEL_SERVICE_MANAGER", manager);
        }
        let output = tokio::time::timeout(COMMAND_TIMEOUT, command.output())
            .await
            .expect("runnel finished in time")
            .expect("runnel runs");
        Run {
            status: output.status,
            stdout: self.scrub(&String::from_utf8_lossy(&output.stdout)),
            stderr: self.scrub(&String::from_utf8_lossy(&output.stderr)),
        }
    }

    /// `install` with explicit paths, plus `extra` flags.
    async fn install(&self, extra: &[&str]) -> Run {
        let config = self.config();
        let home = self.home();
        let mut args = vec![
            "install",
            "-c",
            config.to_str().unwrap(),
            "-d",
            home.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        self.runnel(&args).await
    }

    fn read(&self, relative: &str) -> String {
        self.scrub(
            &std::fs::read_to_string(self.root().join(relative)).expect("definition written"),
        )
    }

    /// Every file under the root, relative.
    fn files(&self) -> Vec<String> {
        let mut out = Vec::new();
        walk(&self.root(), &self.root(), &mut out);
        out.sort();
        out
    }
}

fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            walk(base, &path, out);
        } else {
            out.push(path.strip_prefix(base).unwrap().display().to_string());
        }
    }
}

fn make_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn systemd_round_trip_leaves_nothing_behind() {
    let env = ServiceEnv::new("run/systemd/system", 0).with_tools(&["systemctl"]);
    let before = env.files();

    env.install(&["--user", "gitlab-runner"])
        .await
        .assert_success();
    let unit = "etc/systemd/system/runnel.service";
    insta::assert_snapshot!("systemd_unit", env.read(unit));
    assert_eq!(mode(&env.root().join(unit)), 0o644);
    assert_eq!(
        env.take_calls(),
        ["systemctl daemon-reload", "systemctl enable runnel.service"]
    );

    // Installed but not started: status says so and exits 1.
    let status = env.runnel(&["status"]).await;
    assert_eq!(status.status.code(), Some(1), "{}", status.output());
    assert_eq!(status.stderr.trim(), "runnel: Service has stopped");

    env.runnel(&["start"]).await.assert_success();
    let status = env.runnel(&["status"]).await;
    status.assert_success();
    assert_eq!(status.stdout, "runnel: Service is running\n");
    env.runnel(&["restart"]).await.assert_success();
    env.runnel(&["stop"]).await.assert_success();
    assert_eq!(env.runnel(&["status"]).await.status.code(), Some(1));
    assert_eq!(
        env.take_calls(),
        [
            "systemctl is-active runnel.service",
            "systemctl start runnel.service",
            "systemctl is-active runnel.service",
            "systemctl restart runnel.service",
            "systemctl stop runnel.service",
            "systemctl is-active runnel.service",
        ]
    );

    env.runnel(&["start"]).await.assert_success();
    env.take_calls();
    env.runnel(&["uninstall"]).await.assert_success();
    assert_eq!(
        env.take_calls(),
        [
            "systemctl disable --now runnel.service",
            "systemctl daemon-reload"
        ]
    );
    assert_eq!(env.files(), before, "uninstall leaves nothing behind");

    // Gone for good: every command now says it is not installed, status exits 1.
    let status = env.runnel(&["status"]).await;
    assert_eq!(status.status.code(), Some(1));
    assert!(
        status
            .stderr
            .contains("service \"runnel\": it is not installed"),
        "{}",
        status.stderr
    );
    assert!(env.take_calls().is_empty());
}

#[tokio::test]
async fn systemd_install_with_init_user_and_custom_name() {
    let env = ServiceEnv::new("run/systemd/system", 0).with_tools(&["systemctl"]);
    env.install(&[
        "--init-user",
        "nobody",
        "-n",
        "ci-runner",
        "--stop-timeout",
        "600",
    ])
    .await
    .assert_success();
    insta::assert_snapshot!(
        "systemd_unit_init_user",
        env.read("etc/systemd/system/ci-runner.service")
    );
    assert_eq!(
        env.take_calls(),
        [
            "systemctl daemon-reload",
            "systemctl enable ci-runner.service"
        ]
    );
    let installed = env
        .install(&["--init-user", "nobody", "-n", "ci-runner2"])
        .await;
    installed.assert_success();
    assert!(
        installed.stderr.contains("runnel start -n ci-runner2"),
        "install says how to start the service: {}",
        installed.stderr
    );
    env.take_calls();
    // A second install refuses to overwrite.
    let again = env
        .install(&["--init-user", "nobody", "-n", "ci-runner"])
        .await;
    again.assert_failure();
    assert!(
        again.stderr.contains("already installed"),
        "{}",
        again.stderr
    );
}

#[tokio::test]
async fn systemd_user_service_as_a_normal_user() {
    let env = ServiceEnv::new("run/systemd/system", 1000).with_tools(&["systemctl"]);
    env.install(&["--user-service"]).await.assert_success();
    // Under the user's home (which the test root mirrors), not /etc/systemd/system.
    let unit = env.home().join(".config/systemd/user/runnel.service");
    let relative = unit.strip_prefix("/").unwrap();
    insta::assert_snapshot!("systemd_user_unit", env.read(relative.to_str().unwrap()));
    assert!(
        !env.root()
            .join("etc/systemd/system/runnel.service")
            .exists()
    );
    env.runnel(&["start", "--user-service"])
        .await
        .assert_success();
    env.runnel(&["status", "--user-service"])
        .await
        .assert_success();
    env.runnel(&["uninstall", "--user-service"])
        .await
        .assert_success();
    assert_eq!(
        env.take_calls(),
        [
            "systemctl --user daemon-reload",
            "systemctl --user enable runnel.service",
            "systemctl --user start runnel.service",
            "systemctl --user is-active runnel.service",
            "systemctl --user disable --now runnel.service",
            "systemctl --user daemon-reload",
        ]
    );
    assert!(!env.root().join(relative).exists());
}

#[tokio::test]
async fn system_service_without_root_is_refused_with_a_clear_error() {
    let env = ServiceEnv::new("run/systemd/system", 1000).with_tools(&["systemctl"]);
    let before = env.files();
    let run = env.install(&[]).await;
    assert_eq!(run.status.code(), Some(1));
    insta::assert_snapshot!("privilege_error", run.stderr.trim());
    assert_eq!(env.files(), before, "nothing written");
    assert!(env.take_calls().is_empty(), "no manager command issued");

    let run = env.runnel(&["stop"]).await;
    assert_eq!(run.status.code(), Some(1));
    assert!(
        run.stderr.contains("cannot stop the systemd service"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("needs root privileges"),
        "{}",
        run.stderr
    );

    // --user and --init-user are root-only, like the official runner.
    let run = env.install(&["--user-service", "--user", "ci"]).await;
    run.assert_failure();
    assert!(
        run.stderr
            .contains("--user is only supported when installing as root"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn root_install_needs_a_user_and_not_two() {
    let env = ServiceEnv::new("run/systemd/system", 0).with_tools(&["systemctl"]);
    let run = env.install(&[]).await;
    run.assert_failure();
    assert!(
        run.stderr
            .contains("please specify the user that runs the service"),
        "{}",
        run.stderr
    );
    let run = env.install(&["--user", "a", "--init-user", "b"]).await;
    run.assert_failure();
    assert!(
        run.stderr.contains("only one of --user or --init-user"),
        "{}",
        run.stderr
    );
    assert!(env.take_calls().is_empty());
}

#[tokio::test]
async fn no_service_manager_is_named() {
    let env = ServiceEnv::new("", 0).with_tools(&["systemctl"]);
    let run = env.runnel(&["status"]).await;
    assert_eq!(run.status.code(), Some(1));
    insta::assert_snapshot!("no_manager", run.stderr.trim());
}

#[tokio::test]
async fn missing_manager_tool_is_named() {
    let env = ServiceEnv::new("run/systemd/system", 0);
    let run = env.install(&["--user", "ci"]).await;
    run.assert_failure();
    assert!(
        run.stderr.contains("`systemctl` was not found on PATH"),
        "{}",
        run.stderr
    );
    assert!(env.files().iter().all(|file| !file.ends_with(".service")));
}

#[tokio::test]
async fn failed_enable_rolls_the_install_back() {
    let mut env = ServiceEnv::new("run/systemd/system", 0).with_tools(&["systemctl"]);
    env.fail = Some("systemctl enable runnel.service".into());
    let before = env.files();
    let run = env.install(&["--user", "ci"]).await;
    assert_eq!(run.status.code(), Some(1));
    assert!(
        run.stderr.contains(
            "`systemctl enable runnel.service` failed with exit status: 1: Failed: systemctl enable runnel.service was refused"
        ),
        "{}",
        run.stderr
    );
    assert_eq!(env.files(), before);
}

#[tokio::test]
async fn openrc_round_trip() {
    let env = ServiceEnv::new("run/openrc", 0).with_tools(&["rc-update", "rc-service"]);
    let before = env.files();
    env.install(&["--user", "gitlab-runner"])
        .await
        .assert_success();
    insta::assert_snapshot!("openrc_script", env.read("etc/init.d/runnel"));
    assert_eq!(mode(&env.root().join("etc/init.d/runnel")), 0o755);
    env.runnel(&["start"]).await.assert_success();
    env.runnel(&["status"]).await.assert_success();
    env.runnel(&["stop"]).await.assert_success();
    assert_eq!(env.runnel(&["status"]).await.status.code(), Some(1));
    env.runnel(&["uninstall"]).await.assert_success();
    assert_eq!(
        env.take_calls(),
        [
            "rc-update add runnel default",
            "rc-service runnel start",
            "rc-service runnel status",
            "rc-service runnel stop",
            "rc-service runnel status",
            "rc-service --ifstarted runnel stop",
            "rc-update del runnel default",
        ]
    );
    assert_eq!(env.files(), before);

    let run = env.runnel(&["status", "--user-service"]).await;
    run.assert_failure();
    assert!(
        run.stderr.contains("--user-service needs systemd"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn sysv_round_trip() {
    let env = ServiceEnv::new("etc/init.d", 0).with_tools(&["update-rc.d", "service"]);
    let before = env.files();
    env.install(&["--user", "gitlab-runner"])
        .await
        .assert_success();
    insta::assert_snapshot!("sysv_script", env.read("etc/init.d/runnel"));
    env.runnel(&["start"]).await.assert_success();
    env.runnel(&["status"]).await.assert_success();
    env.runnel(&["restart"]).await.assert_success();
    env.runnel(&["uninstall"]).await.assert_success();
    assert_eq!(
        env.take_calls(),
        [
            "update-rc.d runnel defaults",
            "service runnel start",
            "service runnel status",
            "service runnel restart",
            "service runnel stop",
            "update-rc.d -f runnel remove",
        ]
    );
    assert_eq!(env.files(), before);
}

#[tokio::test]
async fn launchd_agent_round_trip() {
    let mut env = ServiceEnv::new("", 501).with_tools(&["launchctl"]);
    env.manager = Some("launchd");
    env.install(&[]).await.assert_success();
    let plist = env.home().join("Library/LaunchAgents/runnel.plist");
    let plist_relative = plist
        .strip_prefix("/")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    insta::assert_snapshot!("launchd_agent", env.read(&plist_relative));
    assert!(env.take_calls().is_empty(), "install only writes the plist");

    env.runnel(&["start"]).await.assert_success();
    env.runnel(&["status"]).await.assert_success();
    env.runnel(&["stop"]).await.assert_success();
    assert_eq!(env.runnel(&["status"]).await.status.code(), Some(1));
    env.runnel(&["uninstall"]).await.assert_success();
    let plist_in_root =
        format!("[ROOT]{}", plist.display()).replace(env.dir.path().to_str().unwrap(), "[TMP]");
    assert_eq!(
        env.take_calls(),
        [
            format!("launchctl load -w {plist_in_root}"),
            "launchctl list runnel".to_owned(),
            "launchctl list runnel".to_owned(),
            "launchctl kill SIGQUIT gui/501/runnel".to_owned(),
            "launchctl list runnel".to_owned(),
            format!("launchctl unload {plist_in_root}"),
            "launchctl list runnel".to_owned(),
            "launchctl list runnel".to_owned(),
            format!("launchctl unload {plist_in_root}"),
        ]
    );
    assert!(!env.root().join(&plist_relative).exists());
}

#[tokio::test]
async fn syslog_flag_follows_the_official_defaults() {
    // Not under systemd (journal) unless asked; elsewhere by default unless refused.
    let env = ServiceEnv::new("run/systemd/system", 0).with_tools(&["systemctl"]);
    env.install(&["--user", "ci", "--syslog"])
        .await
        .assert_success();
    assert!(
        env.read("etc/systemd/system/runnel.service")
            .contains(" --syslog")
    );

    let env = ServiceEnv::new("etc/init.d", 0).with_tools(&["update-rc.d", "service"]);
    env.install(&["--user", "ci", "--syslog=false"])
        .await
        .assert_success();
    assert!(!env.read("etc/init.d/runnel").contains("--syslog"));
}

/// The pids of `runnel run` processes started with this test's config file.
fn daemon_pids(config: &Path) -> Vec<i32> {
    let needle = format!("--config\0{}\0", config.display());
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse().ok())
        else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            pids.push(pid);
        }
    }
    pids
}

/// Kills whatever a failed SysV test left running: the supervisor's group and the daemons.
struct KillOnDrop {
    pidfile: PathBuf,
    config: PathBuf,
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, kill, killpg};
        use nix::unistd::Pid;
        if let Some(pid) = std::fs::read_to_string(&self.pidfile)
            .ok()
            .and_then(|text| text.trim().parse::<i32>().ok())
        {
            killpg(Pid::from_raw(pid), Signal::SIGKILL).ok();
            kill(Pid::from_raw(pid), Signal::SIGKILL).ok();
        }
        for pid in daemon_pids(&self.config) {
            kill(Pid::from_raw(pid), Signal::SIGKILL).ok();
        }
    }
}

/// Polls `check` every 100 ms; fails the test after a generous timeout.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The generated SysV script for real: it starts the daemon, restarts it when it dies, and stops
/// it with SIGQUIT (the daemon logs a graceful stop) so nothing is left running.
#[tokio::test]
async fn sysv_script_really_supervises_the_daemon() {
    // No `service` tool on PATH: runnel runs the script itself with `sh`.
    let mut env = ServiceEnv::new("etc/init.d", 0).with_tools(&["update-rc.d"]);
    env.system_path = true;
    let _guard = KillOnDrop {
        pidfile: env.root().join("var/run/runnel.pid"),
        config: env.config(),
    };
    env.install(&["--user", "nobody", "--stop-timeout", "60"])
        .await
        .assert_success();
    env.runnel(&["start"]).await.assert_success();
    env.runnel(&["status"]).await.assert_success();
    eventually("the daemon runs", || daemon_pids(&env.config()).len() == 1).await;
    let first = daemon_pids(&env.config())[0];

    // Restarted when it dies.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    eventually("the daemon is restarted", || {
        let pids = daemon_pids(&env.config());
        pids.len() == 1 && pids[0] != first
    })
    .await;

    env.runnel(&["stop"]).await.assert_success();
    assert!(
        daemon_pids(&env.config()).is_empty(),
        "stop waits for the daemon"
    );
    assert_eq!(env.runnel(&["status"]).await.status.code(), Some(1));
    let log = std::fs::read_to_string(env.root().join("var/log/runnel.log")).unwrap();
    assert!(log.contains("graceful"), "stopped with SIGQUIT:\n{log}");

    env.runnel(&["uninstall"]).await.assert_success();
    assert!(!env.root().join("etc/init.d/runnel").exists());
    assert!(!env.root().join("var/run/runnel.pid").exists());
}

#[tokio::test]
async fn install_creates_a_missing_config_only_when_it_can_install() {
    let env = ServiceEnv::new("run/systemd/system", 1000).with_tools(&["systemctl"]);
    let config = env.dir.path().join("new/config.toml");
    let config_arg = config.to_str().unwrap();

    // Refused (a system service needs root): nothing is created, not even the config.
    let run = env.runnel(&["install", "-c", config_arg]).await;
    run.assert_failure();
    assert!(!config.exists());

    env.runnel(&["install", "--user-service", "-c", config_arg])
        .await
        .assert_success();
    assert_eq!(mode(&config), 0o600);
    let unit = env.home().join(".config/systemd/user/runnel.service");
    let unit = env.read(unit.strip_prefix("/").unwrap().to_str().unwrap());
    assert!(unit.contains("--config [TMP]/new/config.toml"), "{unit}");
}
