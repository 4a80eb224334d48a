//! Process signals, turned into the daemon's three requests (reference 2.4).
//!
//! SIGQUIT asks for a graceful stop, SIGTERM and SIGINT for a forceful one, SIGHUP for a config
//! reload. This module is the only place that listens for signals.

use tokio::signal::unix::{SignalKind, signal};

use crate::ServiceError;

/// What a signal asks of the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    /// SIGQUIT: stop taking jobs, let running jobs finish.
    Graceful,
    /// SIGTERM or SIGINT: abort running jobs.
    Forceful,
    /// SIGHUP: reload the configuration now.
    Reload,
}

/// The daemon's signal listeners.
#[derive(Debug)]
pub(crate) struct Signals {
    quit: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    pub(crate) fn install() -> Result<Self, ServiceError> {
        let listen = |kind: SignalKind, name: &'static str| {
            signal(kind).map_err(|source| ServiceError::Signal { name, source })
        };
        Ok(Self {
            quit: listen(SignalKind::quit(), "SIGQUIT")?,
            term: listen(SignalKind::terminate(), "SIGTERM")?,
            int: listen(SignalKind::interrupt(), "SIGINT")?,
            hup: listen(SignalKind::hangup(), "SIGHUP")?,
        })
    }

    /// The next signal received.
    pub(crate) async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.quit.recv() => Signal::Graceful,
            _ = self.term.recv() => Signal::Forceful,
            _ = self.int.recv() => Signal::Forceful,
            _ = self.hup.recv() => Signal::Reload,
        }
    }
}
