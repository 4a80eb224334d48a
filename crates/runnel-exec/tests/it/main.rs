//! Integration tests of `runnel-exec`'s views: reporters fed scripted events, the summary,
//! the live frame, `--list` and the pipeline corpus.

mod corpus;
mod includes;
mod list;
mod real_world;
mod view;

use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};

/// A writer whose bytes the test can read while a reporter owns it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Shared(Arc<Mutex<Vec<u8>>>);

impl Shared {
    pub(crate) fn text(&self) -> String {
        let bytes = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Escape sequences made visible for snapshots.
pub(crate) fn visible(text: &str) -> String {
    text.replace('\x1b', "␛").replace('\r', "␍")
}
