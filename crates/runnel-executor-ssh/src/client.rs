//! One SSH connection: host key verification, authentication, and running commands with their
//! output streamed, their exit status collected and their process group stopped on demand.

use std::future::pending;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use runnel_executor::process::StopWhen;
use runnel_executor::{OutputSink, OutputStream, StageExit};
use russh::client::{self, Handle};
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{ChannelMsg, Sig};
use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{SshError, SshOptions};

/// How long one TCP connection attempt may take (a silent host would otherwise hold the job
/// for the system's SYN timeout per attempt).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the SSH handshake may take once the TCP connection is up.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long to keep reading after a stage's shell exited and its group was killed.
const DRAIN: Duration = Duration::from_secs(5);
/// How long to wait for a stopped stage after `SIGKILL` before giving up on it.
const FORCE: Duration = Duration::from_secs(10);
/// The most output kept from a helper command (`pwd`, `kill`).
const CAPTURE_LIMIT: usize = 4096;
/// The prefix of the first line every stage command prints: its process group id.
const PGID_PREFIX: &[u8] = b"RUNNEL_PGID=";

/// Checks the server's host key against known_hosts, remembering why it refused one.
struct Verifier {
    host: String,
    port: u16,
    /// `None`: accept any key.
    known_hosts: Option<PathBuf>,
    address: String,
    refusal: Arc<Mutex<Option<SshError>>>,
}

impl Verifier {
    fn check(&self, key: &PublicKey) -> Result<(), SshError> {
        let Some(file) = &self.known_hosts else {
            return Ok(());
        };
        let describe = || {
            (
                key.algorithm().as_str().to_owned(),
                key.fingerprint(HashAlg::Sha256).to_string(),
            )
        };
        match russh::keys::check_known_hosts_path(&self.host, self.port, key, file) {
            Ok(true) => Ok(()),
            Ok(false) => {
                let (algorithm, fingerprint) = describe();
                Err(SshError::UnknownHostKey {
                    address: self.address.clone(),
                    algorithm,
                    fingerprint,
                    file: file.clone(),
                })
            }
            Err(russh::keys::Error::KeyChanged { line }) => {
                let (algorithm, fingerprint) = describe();
                Err(SshError::HostKeyMismatch {
                    address: self.address.clone(),
                    algorithm,
                    fingerprint,
                    file: file.clone(),
                    line,
                })
            }
            Err(source) => Err(SshError::KnownHosts {
                file: file.clone(),
                source,
            }),
        }
    }
}

impl client::Handler for Verifier {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_public_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let result = match server_public_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => self.check(key),
            PublicKeyOrCertificate::Certificate(certificate) => {
                if self.known_hosts.is_none() {
                    Ok(())
                } else {
                    // Host certificates would need @cert-authority lines; check the key itself.
                    self.check(&PublicKey::from(certificate.public_key().clone()))
                }
            }
        };
        match result {
            Ok(()) => Ok(true),
            Err(error) => {
                *self.refusal.lock().unwrap_or_else(PoisonError::into_inner) = Some(error);
                Ok(false)
            }
        }
    }
}

/// An authenticated connection to the SSH host.
pub(crate) struct Connection {
    handle: Handle<Verifier>,
    address: String,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => sleep_until(deadline).await,
        None => pending().await,
    }
}

fn default_known_hosts() -> Result<PathBuf, SshError> {
    std::env::home_dir()
        .filter(|home| !home.as_os_str().is_empty())
        .map(|home| home.join(".ssh").join("known_hosts"))
        .ok_or(SshError::NoHome)
}

impl Connection {
    /// Connects (retrying the TCP connection as the official executor does), verifies the host
    /// key and authenticates.
    pub(crate) async fn open(
        options: &SshOptions,
        cancel: &CancellationToken,
    ) -> Result<Self, SshError> {
        let address = options.address();
        let known_hosts = if options.accept_any_host_key {
            None
        } else {
            match &options.known_hosts_file {
                Some(file) => Some(file.clone()),
                None => Some(default_known_hosts()?),
            }
        };
        let identity = match &options.identity_file {
            Some(path) => Some(russh::keys::load_secret_key(path, None).map_err(|source| {
                SshError::IdentityFile {
                    path: path.clone(),
                    source,
                }
            })?),
            None => None,
        };
        let stream = Self::tcp(options, &address, cancel).await?;
        let refusal = Arc::new(Mutex::new(None));
        let verifier = Verifier {
            host: options.host.clone(),
            port: options.port,
            known_hosts,
            address: address.clone(),
            refusal: Arc::clone(&refusal),
        };
        let config = Arc::new(client::Config {
            inactivity_timeout: None,
            keepalive_interval: Some(Duration::from_secs(30)),
            keepalive_max: 4,
            nodelay: true,
            ..client::Config::default()
        });
        let handshake = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            client::connect_stream(config, stream, verifier),
        );
        let mut handle = tokio::select! {
            () = cancel.cancelled() => return Err(SshError::Cancelled { address }),
            result = handshake => result.unwrap_or_else(|_| Err(russh::Error::ConnectionTimeout)).map_err(|source| {
                refusal
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take()
                    .unwrap_or(SshError::Protocol {
                        operation: "handshake",
                        address: address.clone(),
                        source,
                    })
            })?,
        };
        let protocol = |operation| {
            let address = address.clone();
            move |source| SshError::Protocol {
                operation,
                address,
                source,
            }
        };
        let mut methods = Vec::new();
        if let Some(key) = identity {
            methods.push("publickey");
            let hash = handle
                .best_supported_rsa_hash()
                .await
                .map_err(protocol("authentication"))?
                .flatten();
            let key = PrivateKeyWithHashAlg::new(Arc::new(key), hash);
            let result = handle
                .authenticate_publickey(options.user.clone(), key)
                .await
                .map_err(protocol("authentication"))?;
            if result.success() {
                return Ok(Connection { handle, address });
            }
        }
        if let Some(password) = &options.password {
            methods.push("password");
            let result = handle
                .authenticate_password(options.user.clone(), password.expose())
                .await
                .map_err(protocol("authentication"))?;
            if result.success() {
                return Ok(Connection { handle, address });
            }
        }
        Err(SshError::Authentication {
            user: options.user.clone(),
            address,
            methods: if methods.is_empty() {
                "nothing: set identity_file or password".to_owned()
            } else {
                methods.join(", ")
            },
        })
    }

    async fn tcp(
        options: &SshOptions,
        address: &str,
        cancel: &CancellationToken,
    ) -> Result<tokio::net::TcpStream, SshError> {
        let attempts = options.connect_attempts.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let connect = tokio::time::timeout(
                CONNECT_TIMEOUT,
                tokio::net::TcpStream::connect((options.host.as_str(), options.port)),
            );
            let result = tokio::select! {
                () = cancel.cancelled() => return Err(SshError::Cancelled { address: address.to_owned() }),
                result = connect => result.unwrap_or_else(|_| Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {CONNECT_TIMEOUT:?}"),
                ))),
            };
            match result {
                Ok(stream) => return Ok(stream),
                Err(source) if attempt >= attempts => {
                    return Err(SshError::Connect {
                        address: address.to_owned(),
                        attempts,
                        source,
                    });
                }
                Err(error) => {
                    debug!(%error, attempt, address, "SSH connection failed, retrying");
                    tokio::select! {
                        () = cancel.cancelled() => return Err(SshError::Cancelled { address: address.to_owned() }),
                        () = sleep(options.retry_interval) => {}
                    }
                }
            }
        }
    }

    fn protocol(&self, operation: &'static str) -> impl FnOnce(russh::Error) -> SshError {
        let address = self.address.clone();
        move |source| SshError::Protocol {
            operation,
            address,
            source,
        }
    }

    /// Runs a short helper command; returns its exit status and the start of its stdout.
    pub(crate) async fn capture(&self, command: &str) -> Result<(Option<u32>, Vec<u8>), SshError> {
        let mut channel = self
            .handle
            .channel_open_session()
            .await
            .map_err(self.protocol("opening a session"))?;
        channel
            .exec(true, command)
            .await
            .map_err(self.protocol("starting a command"))?;
        channel
            .eof()
            .await
            .map_err(self.protocol("sending input"))?;
        let mut stdout = Vec::new();
        let mut status = None;
        while let Some(message) = channel.wait().await {
            match message {
                ChannelMsg::Data { data } => {
                    let room = CAPTURE_LIMIT.saturating_sub(stdout.len());
                    stdout.extend_from_slice(data.get(..room.min(data.len())).unwrap_or_default());
                }
                ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
                ChannelMsg::Close => break,
                _ => {}
            }
        }
        Ok((status, stdout))
    }

    /// Sends `signal` (`TERM`, `KILL`) to a stage's process group; false without its id.
    async fn signal_group(&self, pgid: Option<u32>, signal: &str) -> bool {
        let Some(pgid) = pgid else {
            return false;
        };
        let command = format!("kill -{signal} -- -{pgid} 2>/dev/null; true");
        if let Err(error) = self.capture(&command).await {
            warn!(%error, pgid, signal, "cannot signal a stage's processes on the SSH host");
        }
        true
    }

    /// Runs `command` with `script` on its stdin, streaming its output into `sink`, until it
    /// exits or `stop` fires; then kills what it left in its process group.
    pub(crate) async fn run(
        &self,
        stage: &str,
        command: &str,
        script: &[u8],
        sink: &dyn OutputSink,
        stop: StopWhen<'_>,
        grace: Duration,
    ) -> Result<StageExit, SshError> {
        let channel = self
            .handle
            .channel_open_session()
            .await
            .map_err(self.protocol("opening a session"))?;
        channel
            .exec(true, command)
            .await
            .map_err(self.protocol("starting the shell"))?;
        let (mut read, write) = channel.split();
        let input = async {
            let result = write.data(script).await;
            if let Err(error) = write.eof().await {
                debug!(%error, stage, "cannot close the stage's stdin");
            }
            result
        };
        let mut input = std::pin::pin!(input);
        let mut input_done = false;
        let mut pgid = PgidLine::default();
        let mut exit: Option<StageExit> = None;
        let mut stopped: Option<StageExit> = None;
        let mut kill_at: Option<Instant> = None;
        let mut give_up_at: Option<Instant> = None;
        let mut drain_until: Option<Instant> = None;
        loop {
            tokio::select! {
                biased;
                message = read.wait() => match message {
                    None | Some(ChannelMsg::Close) => break,
                    Some(ChannelMsg::Data { data }) => pgid.feed(&data, sink),
                    Some(ChannelMsg::ExtendedData { data, .. }) => sink.write(OutputStream::Stderr, &data),
                    Some(ChannelMsg::ExitStatus { exit_status }) => {
                        exit = Some(StageExit::Exited(i32::try_from(exit_status).unwrap_or(i32::MAX)));
                    }
                    Some(ChannelMsg::ExitSignal { signal_name, .. }) => {
                        exit = Some(StageExit::Signaled(signal_number(&signal_name)));
                    }
                    Some(_) => {}
                },
                result = &mut input, if !input_done => {
                    input_done = true;
                    if let Err(error) = result {
                        // The shell may exit before reading everything (`exit` in a script).
                        debug!(%error, stage, "stage script not fully sent");
                    }
                }
                () = stop.cancel.cancelled(), if stopped.is_none() && exit.is_none() => {
                    stopped = Some(StageExit::Cancelled);
                }
                () = until(stop.deadline), if stopped.is_none() && exit.is_none() => {
                    stopped = Some(StageExit::TimedOut);
                }
                () = until(kill_at), if kill_at.is_some() && exit.is_none() => {
                    kill_at = None;
                    warn!(stage, pgid = ?pgid.pgid, "stage ignored SIGTERM on the SSH host, sending SIGKILL");
                    if !self.signal_group(pgid.pgid, "KILL").await
                        && let Err(error) = write.signal(Sig::KILL).await
                    {
                            debug!(%error, stage, "cannot signal the stage's channel");
                    }
                    give_up_at = Some(Instant::now() + FORCE);
                }
                () = until(give_up_at), if give_up_at.is_some() && exit.is_none() => break,
                () = until(drain_until), if drain_until.is_some() => break,
            }
            if stopped.is_some() && kill_at.is_none() && give_up_at.is_none() && exit.is_none() {
                debug!(stage, pgid = ?pgid.pgid, "stopping stage on the SSH host");
                if !self.signal_group(pgid.pgid, "TERM").await
                    && let Err(error) = write.signal(Sig::TERM).await
                {
                    debug!(%error, stage, "cannot signal the stage's channel");
                }
                kill_at = Some(Instant::now() + grace);
            }
            if exit.is_some() && drain_until.is_none() {
                // Whatever the stage left behind holds the channel open: end it.
                self.signal_group(pgid.pgid, "KILL").await;
                drain_until = Some(Instant::now() + DRAIN);
            }
        }
        pgid.flush(sink);
        if let Err(error) = write.close().await {
            debug!(%error, stage, "cannot close the stage's channel");
        }
        match (stopped, exit) {
            (Some(stop), _) => Ok(stop),
            (None, Some(exit)) => Ok(exit),
            (None, None) => Err(SshError::Lost {
                address: self.address.clone(),
                stage: stage.to_owned(),
            }),
        }
    }

    /// Ends the connection.
    pub(crate) async fn close(self) {
        let result = self
            .handle
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
        if let Err(error) = result {
            debug!(%error, address = self.address, "SSH disconnect failed");
        }
    }
}

/// The number of a signal named in an `exit-signal` message.
fn signal_number(signal: &Sig) -> i32 {
    match signal {
        Sig::HUP => 1,
        Sig::INT => 2,
        Sig::QUIT => 3,
        Sig::ILL => 4,
        Sig::ABRT => 6,
        Sig::FPE => 8,
        Sig::KILL => 9,
        Sig::USR1 => 10,
        Sig::SEGV => 11,
        Sig::PIPE => 13,
        Sig::ALRM => 14,
        Sig::TERM => 15,
        _ => 1,
    }
}

/// Takes the `RUNNEL_PGID=<n>` line off the start of a stage's stdout.
#[derive(Debug, Default)]
struct PgidLine {
    buffer: Vec<u8>,
    done: bool,
    pgid: Option<u32>,
}

impl PgidLine {
    fn feed(&mut self, data: &[u8], sink: &dyn OutputSink) {
        if self.done {
            sink.write(OutputStream::Stdout, data);
            return;
        }
        self.buffer.extend_from_slice(data);
        if let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
            self.done = true;
            let line = self.buffer.get(..end).unwrap_or_default();
            let parsed = line
                .strip_prefix(PGID_PREFIX)
                .and_then(|n| std::str::from_utf8(n).ok())
                .and_then(|n| n.trim().parse::<u32>().ok())
                .filter(|n| *n > 1);
            let rest = match parsed {
                Some(pgid) => {
                    self.pgid = Some(pgid);
                    self.buffer.get(end + 1..).unwrap_or_default()
                }
                None => &self.buffer[..],
            };
            if !rest.is_empty() {
                sink.write(OutputStream::Stdout, rest);
            }
            self.buffer = Vec::new();
        } else if self.buffer.len() > 64 {
            self.flush(sink);
        }
    }

    fn flush(&mut self, sink: &dyn OutputSink) {
        if !self.done && !self.buffer.is_empty() {
            sink.write(OutputStream::Stdout, &self.buffer);
        }
        self.done = true;
        self.buffer = Vec::new();
    }
}

/// The command that starts a stage's shell: prints its process group id, then becomes
/// `<shell> -l` reading the script from stdin.
pub(crate) fn stage_command(shell: &str) -> String {
    format!("printf 'RUNNEL_PGID=%s\\n' \"$$\"; exec {shell} -l")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Collect(Mutex<Vec<u8>>);

    impl OutputSink for Collect {
        fn write(&self, _stream: OutputStream, bytes: &[u8]) {
            self.0.lock().unwrap().extend_from_slice(bytes);
        }
    }

    #[test]
    fn the_pgid_line_is_taken_off_even_when_split() {
        let sink = Collect::default();
        let mut line = PgidLine::default();
        line.feed(b"RUNNEL_PG", &sink);
        line.feed(b"ID=4242\nhello\n", &sink);
        line.feed(b"world\n", &sink);
        assert_eq!(line.pgid, Some(4242));
        assert_eq!(*sink.0.lock().unwrap(), b"hello\nworld\n");
    }

    #[test]
    fn output_without_a_pgid_line_is_kept() {
        let sink = Collect::default();
        let mut line = PgidLine::default();
        line.feed(b"profile noise\nmore", &sink);
        line.flush(&sink);
        assert_eq!(line.pgid, None);
        assert_eq!(*sink.0.lock().unwrap(), b"profile noise\nmore");
    }

    #[test]
    fn stage_commands() {
        insta::assert_snapshot!(stage_command("bash"), @r#"printf 'RUNNEL_PGID=%s\n' "$$"; exec bash -l"#);
    }
}
