//! Attach mode, the official default (`FF_USE_LEGACY_KUBERNETES_EXECUTION_STRATEGY=false`).
//!
//! What runs where, as in the official runner:
//!
//! - the pod gets two emptyDir volumes, `scripts` at `/scripts-<project id>-<job id>` and `logs`
//!   at `/logs-<project id>-<job id>`, mounted in every container (the build and helper
//!   containers' main process is a shell reading commands from the container's stdin); they
//!   reach the pod as the configured volumes do, so `[[pod_spec]]` patches see them;
//! - the `init-permissions` init container (helper image,
//!   `init_permissions_container_security_context`) creates `/logs-…/output.log` and opens it
//!   to every user before the other containers start;
//! - once the pod runs, `detect_shell_script` is saved in the scripts volume and the helper
//!   container runs `gitlab-runner-helper read-logs --path /logs-…/output.log --offset N
//!   --wait-file-timeout 1m0s` over exec: every line of the log file comes back prefixed with
//!   the offset after it, so a broken stream resumes where it stopped;
//! - each stage's script is saved as `/scripts-…/<stage>` (by exec in the container that runs
//!   it, script on stdin), then one command line is written to that container's stdin over
//!   `attach`: it runs the script through the detect-shell script in the background, output
//!   (stdout and stderr) appended to `/logs-…/output.log`, and prints after it a JSON line
//!   `{"command_exit_code": N, "script": "/scripts-…/<stage>"}`, which is how the exit code is
//!   known (the line is not shown in the job log);
//! - cancellation and timeouts signal the process running the stage script and its descendants
//!   (found in `/proc`), `SIGTERM` first, then `SIGKILL`.
//!
//! Differences that users cannot see: the exit line is printed by the wrapper rather than by a
//! trap inside the script (so a script that sets its own `EXIT` trap still reports its code),
//! and the script file is removed once it ended.

use std::time::Duration;

use futures::FutureExt;
use k8s_openapi::api::core::v1::{EmptyDirVolumeSource, Pod, Volume, VolumeMount};
use kube::api::{Api, AttachParams};
use runnel_executor::Shell;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::pod::HELPER_CONTAINER;

/// The scripts volume's name.
pub const SCRIPTS_VOLUME: &str = "scripts";
/// The logs volume's name.
pub const LOGS_VOLUME: &str = "logs";
/// The detect-shell script's file name in the scripts directory.
pub const DETECT_SHELL_SCRIPT: &str = "detect_shell_script";
/// The helper command that streams the log file.
pub const READ_LOGS_COMMAND: &str = "gitlab-runner-helper";
/// How long `read-logs` waits for the log file to appear.
const WAIT_FILE_TIMEOUT: &str = "1m0s";
/// `read-logs` exits with this code when the log file was removed.
const LOG_FILE_GONE_EXIT_CODE: i32 = 100;
/// A `read-logs` line longer than this (it splits at 64 KiB) is passed on as it is.
const MAX_LINE: usize = 256 * 1024;
/// Log chunks buffered between the stream and the stage reading it.
const CHANNEL_CAPACITY: usize = 256;
/// Attempts to (re)start the log stream in a row without receiving anything.
const MAX_STREAM_FAILURES: u32 = 30;

/// Where a job's scripts and log live in its containers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachPaths {
    /// `/scripts-<project id>-<job id>`.
    pub scripts_dir: String,
    /// `/logs-<project id>-<job id>`.
    pub logs_dir: String,
}

impl AttachPaths {
    /// The official directory names for a job.
    pub fn new(project_id: u64, job_id: u64) -> Self {
        Self::with_bases(None, None, project_id, job_id)
    }

    /// The same under `scripts_base_dir` and `logs_base_dir` (trailing `/` and `\` dropped;
    /// empty: `/`), as official.
    pub fn with_bases(
        scripts_base: Option<&str>,
        logs_base: Option<&str>,
        project_id: u64,
        job_id: u64,
    ) -> Self {
        let base = |configured: Option<&str>| {
            configured
                .unwrap_or("")
                .trim_end_matches(['/', '\\'])
                .to_owned()
        };
        AttachPaths {
            scripts_dir: format!("{}/scripts-{project_id}-{job_id}", base(scripts_base)),
            logs_dir: format!("{}/logs-{project_id}-{job_id}", base(logs_base)),
        }
    }

    /// `/logs-…/output.log`.
    pub fn log_file(&self) -> String {
        format!("{}/output.log", self.logs_dir)
    }

    /// `/scripts-…/detect_shell_script`.
    pub fn detect_script(&self) -> String {
        format!("{}/{DETECT_SHELL_SCRIPT}", self.scripts_dir)
    }

    /// `/scripts-…/<stage>` (the stage name limited to `[A-Za-z0-9_-]`).
    pub fn stage_script(&self, stage: &str) -> String {
        let name: String = stage
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("{}/{name}", self.scripts_dir)
    }
}

/// The `scripts` and `logs` emptyDir volumes, which the pod gets after the configured ones
/// (and `repo`), as official.
pub fn volumes() -> Vec<Volume> {
    [SCRIPTS_VOLUME, LOGS_VOLUME]
        .into_iter()
        .map(|name| Volume {
            name: name.to_owned(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        })
        .collect()
}

/// Their mounts, which come first in every container (build, helper, services and the
/// init-permissions container), as official.
pub fn mounts(paths: &AttachPaths) -> Vec<VolumeMount> {
    vec![
        VolumeMount {
            name: SCRIPTS_VOLUME.to_owned(),
            mount_path: paths.scripts_dir.clone(),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: LOGS_VOLUME.to_owned(),
            mount_path: paths.logs_dir.clone(),
            ..VolumeMount::default()
        },
    ]
}

/// The init-permissions container's command: creates the log file every container appends
/// to and opens it to all users (the build and helper images may run as different users;
/// a `chmod` the security context does not allow is not an error), as official.
pub fn init_permissions_command(paths: &AttachPaths) -> Vec<String> {
    let log = paths.log_file();
    vec![
        "sh".to_owned(),
        "-c".to_owned(),
        format!("touch {log} && (chmod 777 {log} || exit 0)"),
    ]
}

/// The detect-shell script: runs the first shell found with the script's arguments.
pub fn detect_shell_script(shell: Shell) -> String {
    let candidates: &[&str] = match shell {
        Shell::Bash => &[
            "/usr/local/bin/bash",
            "/usr/bin/bash",
            "/bin/bash",
            "/usr/local/bin/sh",
            "/usr/bin/sh",
            "/bin/sh",
            "/busybox/sh",
        ],
        Shell::Sh => &["/usr/local/bin/sh", "/usr/bin/sh", "/bin/sh", "/busybox/sh"],
    };
    let mut script = String::new();
    for (index, candidate) in candidates.iter().enumerate() {
        let keyword = if index == 0 { "if" } else { "elif" };
        script.push_str(&format!(
            "{keyword} [ -x {candidate} ]; then\n\texec {candidate} \"$@\"\n"
        ));
    }
    script.push_str("else\n\techo shell not found\n\texit 1\nfi\n");
    script
}

/// The exec command that saves `bytes` bytes read from stdin to `path` (mode 0755 for the
/// detect-shell script, 0600 for stage scripts, which hold the job's variables).
pub fn save_command(path: &str, bytes: usize, executable: bool) -> Vec<String> {
    let mode = if executable { "0755" } else { "0600" };
    let script = format!(
        "umask 0077 && head -c {bytes} > {path}.tmp && chmod {mode} {path}.tmp && mv -f {path}.tmp {path}"
    );
    vec!["sh".to_owned(), "-c".to_owned(), script]
}

/// The line written to the container's stdin to start a stage: the script runs in the
/// background with its output appended to the log file, followed by its exit line.
pub fn stage_line(paths: &AttachPaths, stage: &str, umask_0000: bool) -> String {
    let script = paths.stage_script(stage);
    let umask = if umask_0000 { "umask 0000; " } else { "" };
    format!(
        "sh -c '( ( {umask}{detect} {script}; ec=$?; rm -f {script}; echo; echo \"{{\\\"command_exit_code\\\": $ec, \\\"script\\\": \\\"{script}\\\"}}\" ) 2>&1 | tee -a {log} ) &'\n",
        detect = paths.detect_script(),
        log = paths.log_file(),
    )
}

/// The exec command sending `signal` to the process running `script` (a shell whose last
/// argument it is) and to all its descendants.
pub fn signal_command(script: &str, signal: &str) -> Vec<String> {
    let text = format!(
        r#"targets=""
for d in /proc/[0-9]*; do
	case "$(tr '\0' ' ' < "$d/cmdline" 2>/dev/null)" in
	*" {script} ") targets="$targets ${{d#/proc/}}" ;;
	esac
done
all="$targets"
new="$targets"
rounds=0
while [ -n "$new" ] && [ $rounds -lt 32 ]; do
	rounds=$((rounds + 1))
	next=""
	for d in /proc/[0-9]*; do
		s="$(cat "$d/stat" 2>/dev/null)" || continue
		s="${{s##*) }}"
		set -- $s
		case " $new " in
		*" $2 "*) next="$next ${{d#/proc/}}" ;;
		esac
	done
	all="$all$next"
	new="$next"
done
[ -z "$all" ] || kill -{signal} $all 2>/dev/null
true
"#
    );
    vec!["sh".to_owned(), "-c".to_owned(), text]
}

/// The exec command streaming the log file from `offset`.
pub fn read_logs_command(log_file: &str, offset: u64) -> Vec<String> {
    vec![
        READ_LOGS_COMMAND.to_owned(),
        "read-logs".to_owned(),
        "--path".to_owned(),
        log_file.to_owned(),
        "--offset".to_owned(),
        offset.to_string(),
        "--wait-file-timeout".to_owned(),
        WAIT_FILE_TIMEOUT.to_owned(),
    ]
}

/// The exit line a stage's wrapper prints.
#[derive(Debug, Deserialize, PartialEq, Eq)]
pub struct ExitLine {
    /// The script's exit code.
    pub command_exit_code: i32,
    /// The script's path.
    #[serde(default)]
    pub script: Option<String>,
}

/// `line` (a log line, without its offset) as an exit line, if it is one.
pub fn exit_line(line: &[u8]) -> Option<ExitLine> {
    let trimmed = line.strip_suffix(b"\n").unwrap_or(line);
    let trimmed = trimmed.strip_suffix(b"\r").unwrap_or(trimmed);
    if trimmed.first() != Some(&b'{') || trimmed.len() > 4096 {
        return None;
    }
    serde_json::from_slice(trimmed).ok()
}

/// One `read-logs` output line: the offset after it, and the log text.
fn split_offset(line: &[u8]) -> (Option<u64>, &[u8]) {
    let Some(space) = line.iter().position(|b| *b == b' ') else {
        return (None, line);
    };
    match std::str::from_utf8(&line[..space])
        .ok()
        .and_then(|digits| digits.parse::<u64>().ok())
    {
        Some(offset) => (Some(offset), &line[space + 1..]),
        None => (None, line),
    }
}

/// What the log stream delivers.
#[derive(Debug)]
pub enum LogEvent {
    /// Text of the log file (a line with its newline, or the part of one written so far).
    Text(Vec<u8>),
    /// The stream cannot go on.
    Failed(String),
}

/// Parses `read-logs` output into log text, tracking the offset to resume from.
#[derive(Debug)]
pub struct LogParser {
    offset: u64,
    pending: Vec<u8>,
}

impl LogParser {
    /// A parser for a stream started at `offset`.
    pub fn new(offset: u64) -> Self {
        LogParser {
            offset,
            pending: Vec::new(),
        }
    }

    /// The offset to resume from.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Feeds stream bytes; returns the log text they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut rest = bytes;
        while let Some(newline) = rest.iter().position(|b| *b == b'\n') {
            self.pending.extend_from_slice(&rest[..=newline]);
            rest = &rest[newline + 1..];
            let line = std::mem::take(&mut self.pending);
            out.push(self.line(&line));
        }
        self.pending.extend_from_slice(rest);
        if self.pending.len() > MAX_LINE {
            // Not what `read-logs` writes: passed on as it is, the offset unknown.
            out.push(std::mem::take(&mut self.pending));
        }
        out
    }

    fn line(&mut self, line: &[u8]) -> Vec<u8> {
        let (offset, text) = split_offset(line);
        let Some(offset) = offset else {
            return text.to_vec();
        };
        let delta = offset.saturating_sub(self.offset);
        self.offset = offset;
        let mut text = text.to_vec();
        // `read-logs` ends every piece with a newline; one that the file does not have (a line
        // written in parts) makes the text longer than the offset moved.
        if text.len() as u64 > delta && text.last() == Some(&b'\n') {
            text.pop();
        }
        text
    }
}

/// A running log stream: `read-logs` in the helper container, restarted from the last offset
/// when it breaks.
pub struct LogStream {
    /// The log text, in order.
    pub events: mpsc::Receiver<LogEvent>,
    stop: CancellationToken,
}

impl std::fmt::Debug for LogStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStream").finish_non_exhaustive()
    }
}

impl Drop for LogStream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl LogStream {
    /// Starts streaming `log_file` of pod `pod` through its helper container. Sessions that
    /// cannot reach the API server (at `server`) are tried again for `outage_limit`
    /// (`poll_timeout`) before the stream fails.
    pub fn start(
        pods: Api<Pod>,
        pod: String,
        log_file: String,
        server: String,
        outage_limit: Duration,
    ) -> Self {
        let (sender, events) = mpsc::channel(CHANNEL_CAPACITY);
        let stop = CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = stream(&pods, &pod, &log_file, &sender, (&server, outage_limit)) => {}
                () = token.cancelled() => {}
            }
        });
        LogStream { events, stop }
    }
}

async fn stream(
    pods: &Api<Pod>,
    pod: &str,
    log_file: &str,
    sender: &mpsc::Sender<LogEvent>,
    (server, outage_limit): (&str, Duration),
) {
    let mut parser = LogParser::new(0);
    let mut failures = 0u32;
    let mut unreachable_since: Option<tokio::time::Instant> = None;
    loop {
        if failures > 0 {
            let backoff = Duration::from_millis(250 * u64::from(failures.min(20)));
            tokio::time::sleep(backoff).await;
        }
        let (received, outcome) = stream_once(pods, pod, log_file, &mut parser, sender).await;
        if sender.is_closed() {
            return;
        }
        if !matches!(outcome, Err(StreamEnd::Unreachable(_))) {
            unreachable_since = None;
        }
        if received {
            failures = 0;
        }
        let message = match outcome {
            Err(StreamEnd::Unreachable(message)) => {
                // Not counted as a failure of the stream: the API server is away.
                let since = *unreachable_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() >= outage_limit {
                    let sent = sender
                        .send(LogEvent::Failed(format!(
                            "the Kubernetes API server {server} has been unreachable for more than {}s (poll_timeout): {message}",
                            outage_limit.as_secs()
                        )))
                        .await;
                    if sent.is_err() {
                        tracing::debug!(pod, "the log stream's reader is gone");
                    }
                    return;
                }
                tracing::debug!(pod, %message, "the API server is unreachable; the job's log stream waits for it");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Ok(()) => "read-logs ended".to_owned(),
            Err(StreamEnd::Fatal(message)) => {
                if sender.send(LogEvent::Failed(message)).await.is_err() {
                    tracing::debug!(pod, "the log stream's reader is gone");
                }
                return;
            }
            Err(StreamEnd::Retry(message)) => message,
        };
        failures += 1;
        tracing::debug!(pod, %message, failures, "the job's log stream broke; resuming");
        if failures >= MAX_STREAM_FAILURES {
            let sent = sender
                .send(LogEvent::Failed(format!(
                    "reading the job's log with `{READ_LOGS_COMMAND} read-logs` in the helper container failed {failures} times in a row: {message}"
                )))
                .await;
            if sent.is_err() {
                tracing::debug!(pod, "the log stream's reader is gone");
            }
            return;
        }
    }
}

enum StreamEnd {
    /// The session could not be opened: the API server was not reached.
    Unreachable(String),
    Retry(String),
    Fatal(String),
}

/// One `read-logs` session; whether it delivered anything, and how it ended.
async fn stream_once(
    pods: &Api<Pod>,
    pod: &str,
    log_file: &str,
    parser: &mut LogParser,
    sender: &mpsc::Sender<LogEvent>,
) -> (bool, Result<(), StreamEnd>) {
    let params = AttachParams::default()
        .container(HELPER_CONTAINER)
        .stdin(false)
        .stdout(true)
        .stderr(true);
    let command = read_logs_command(log_file, parser.offset());
    let mut process = match pods.exec(pod, command, &params).await {
        Ok(process) => process,
        Err(error) if crate::executor::transient(&error) => {
            return (
                false,
                Err(StreamEnd::Unreachable(crate::executor::error_chain(&error))),
            );
        }
        Err(error) => return (false, Err(StreamEnd::Retry(error.to_string()))),
    };
    let (Some(mut stdout), Some(mut stderr), Some(status)) =
        (process.stdout(), process.stderr(), process.take_status())
    else {
        return (
            false,
            Err(StreamEnd::Retry("no output channels".to_owned())),
        );
    };
    let mut status = std::pin::pin!(status.fuse());
    let mut received = false;
    let mut out_buf = vec![0u8; 16 * 1024];
    let mut err_buf = vec![0u8; 4 * 1024];
    let mut errors = Vec::new();
    let (mut out_open, mut err_open) = (true, true);
    let mut exit = None;
    while out_open || err_open || exit.is_none() {
        tokio::select! {
            read = stdout.read(&mut out_buf), if out_open => match read {
                Ok(0) | Err(_) => out_open = false,
                Ok(n) => {
                    received = true;
                    for text in parser.feed(&out_buf[..n]) {
                        if sender.send(LogEvent::Text(text)).await.is_err() {
                            process.abort();
                            return (received, Ok(()));
                        }
                    }
                }
            },
            read = stderr.read(&mut err_buf), if err_open => match read {
                Ok(0) | Err(_) => err_open = false,
                Ok(n) => {
                    let room = 4096usize.saturating_sub(errors.len());
                    errors.extend_from_slice(&err_buf[..n.min(room)]);
                }
            },
            received_status = &mut status, if exit.is_none() => {
                exit = Some(received_status);
                // Output after the status is not waited for long.
                if out_open || err_open {
                    let mut rest = vec![0u8; 16 * 1024];
                    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(200), stdout.read(&mut rest)).await {
                        if n == 0 { break; }
                        for text in parser.feed(&rest[..n]) {
                            if sender.send(LogEvent::Text(text)).await.is_err() {
                                break;
                            }
                        }
                    }
                    break;
                }
            },
        }
    }
    let errors = String::from_utf8_lossy(&errors).trim().to_owned();
    let code = exit
        .flatten()
        .and_then(|status| crate::executor::exec_exit_code(&status));
    let outcome = match code {
        Some(0) => Ok(()),
        Some(LOG_FILE_GONE_EXIT_CODE) => Err(StreamEnd::Fatal(format!(
            "the job's log file {log_file} was removed from the pod, cannot continue"
        ))),
        Some(code @ (126 | 127)) => Err(StreamEnd::Fatal(format!(
            "the helper image cannot run `{READ_LOGS_COMMAND} read-logs` (exit code {code}{}): attach mode (the default) needs a helper image with the runner helper in its PATH, such as the one `runnel docker build-helper-image` builds; or set FF_USE_LEGACY_KUBERNETES_EXECUTION_STRATEGY=true to run stages by exec",
            if errors.is_empty() {
                String::new()
            } else {
                format!(": {errors}")
            }
        ))),
        Some(code) => Err(StreamEnd::Retry(format!(
            "read-logs exited with code {code}: {errors}"
        ))),
        None => Err(StreamEnd::Retry(format!(
            "the exec session ended without a status {errors}"
        ))),
    };
    (received, outcome)
}

/// Writes `line` to the stdin of `container`'s main process over `attach`.
pub async fn write_to_container(
    pods: &Api<Pod>,
    pod: &str,
    container: &str,
    line: &str,
) -> Result<(), kube::Error> {
    let params = AttachParams::default()
        .container(container)
        .stdin(true)
        .stdout(false)
        .stderr(false);
    let mut process = pods.attach(pod, &params).await?;
    if let Some(mut stdin) = process.stdin() {
        if let Err(error) = stdin.write_all(line.as_bytes()).await {
            tracing::debug!(%error, "writing to the container's stdin failed");
        }
        if let Err(error) = stdin.shutdown().await {
            tracing::debug!(%error, "closing the attach stdin failed");
        }
    }
    // The session ends once the server has the line (v5 closes stdin, v4 the connection); a
    // server that keeps it open has the line all the same.
    match tokio::time::timeout(Duration::from_secs(10), process.join()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::debug!(%error, "the attach session ended with an error"),
        Err(_) => tracing::debug!("the attach session stayed open; leaving it"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_the_official_names() {
        let paths = AttachPaths::new(42, 1001);
        assert_eq!(paths.scripts_dir, "/scripts-42-1001");
        assert_eq!(paths.logs_dir, "/logs-42-1001");
        assert_eq!(paths.log_file(), "/logs-42-1001/output.log");
        assert_eq!(
            paths.stage_script("step_script"),
            "/scripts-42-1001/step_script"
        );
        assert_eq!(paths.stage_script("../x y"), "/scripts-42-1001/___x_y");
        // Official baseDir facts: the configured base, trailing separators dropped.
        let based = AttachPaths::with_bases(Some("/opt/ci//"), Some("/var/tmp"), 42, 1001);
        assert_eq!(based.scripts_dir, "/opt/ci/scripts-42-1001");
        assert_eq!(based.log_file(), "/var/tmp/logs-42-1001/output.log");
        assert_eq!(
            AttachPaths::with_bases(Some(""), Some("/"), 1, 2),
            AttachPaths::new(1, 2)
        );
    }

    #[test]
    fn the_stage_line_tees_output_and_prints_the_exit_line() {
        let paths = AttachPaths::new(1, 2);
        insta::assert_snapshot!(stage_line(&paths, "step_script", false), @r#"sh -c '( ( /scripts-1-2/detect_shell_script /scripts-1-2/step_script; ec=$?; rm -f /scripts-1-2/step_script; echo; echo "{\"command_exit_code\": $ec, \"script\": \"/scripts-1-2/step_script\"}" ) 2>&1 | tee -a /logs-1-2/output.log ) &'"#);
        assert!(stage_line(&paths, "get_sources", true).starts_with("sh -c '( ( umask 0000; "));
    }

    #[test]
    fn exit_lines_are_recognised() {
        assert_eq!(
            exit_line(b"{\"command_exit_code\": 3, \"script\": \"/scripts-1-2/step_script\"}\n"),
            Some(ExitLine {
                command_exit_code: 3,
                script: Some("/scripts-1-2/step_script".to_owned())
            })
        );
        assert_eq!(exit_line(b"{\"other\": 1}\n"), None);
        assert_eq!(exit_line(b"hello\n"), None);
    }

    #[test]
    fn read_logs_output_is_split_and_offsets_tracked() {
        let mut parser = LogParser::new(0);
        let mut text = parser.feed(b"6 hello\n");
        text.extend(parser.feed(b"9 par\n13 "));
        text.extend(parser.feed(b"tly\n"));
        assert_eq!(
            text,
            vec![b"hello\n".to_vec(), b"par".to_vec(), b"tly\n".to_vec()]
        );
        assert_eq!(parser.offset(), 13);
        // Lines without an offset are passed on as they are.
        assert_eq!(
            parser.feed(b"error reading logs\n"),
            vec![b"error reading logs\n".to_vec()]
        );
        // A resumed stream starts at its offset.
        let mut resumed = LogParser::new(12);
        assert_eq!(resumed.feed(b"16 abc\n"), vec![b"abc\n".to_vec()]);
    }

    #[test]
    fn overlong_lines_are_bounded() {
        let mut parser = LogParser::new(0);
        let chunks = parser.feed(&vec![b'x'; MAX_LINE + 10]);
        assert_eq!(chunks.len(), 1);
        assert!(parser.feed(b"").is_empty());
    }

    #[test]
    fn the_detect_shell_script_passes_its_arguments() {
        let script = detect_shell_script(Shell::Sh);
        assert!(
            script.starts_with(
                "if [ -x /usr/local/bin/sh ]; then\n\texec /usr/local/bin/sh \"$@\"\n"
            )
        );
        assert!(script.ends_with("else\n\techo shell not found\n\texit 1\nfi\n"));
    }
}
