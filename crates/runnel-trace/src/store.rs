//! The stored job log: an in-memory byte buffer with the output limit and a running CRC32.
//!
//! Input arrives already filtered (masked, valid UTF-8), so the only decision here is how
//! much of it fits. Once the limit is reached the limit notice is stored once and every
//! later byte is dropped, so the buffer never exceeds the limit plus the notice. This
//! module does no locking and no notification; [`crate::JobTrace`] wraps it.

use crc32fast::Hasher;

use crate::format;

/// The job log bytes and what the final update reports about them.
pub(crate) struct Store {
    data: Vec<u8>,
    limit: usize,
    truncated: bool,
    finished: bool,
    checksum: Hasher,
}

impl Store {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            data: Vec::new(),
            limit,
            truncated: false,
            finished: false,
            checksum: Hasher::new(),
        }
    }

    /// Stores as much of `chunk` as the limit allows. Returns whether anything was stored.
    pub(crate) fn append(&mut self, chunk: &[u8]) -> bool {
        if chunk.is_empty() || self.truncated || self.finished {
            return false;
        }
        let capacity = self.limit.saturating_sub(self.data.len());
        if chunk.len() < capacity {
            self.push(chunk);
            return true;
        }
        // Like the official runner, reaching the limit exactly also ends the log.
        let fitting = chunk
            .get(..floor_char_boundary(chunk, capacity))
            .unwrap_or_default();
        self.push(fitting);
        self.push(format::limit_exceeded(self.limit).as_bytes());
        self.truncated = true;
        tracing::debug!(
            limit_bytes = self.limit,
            "job log reached its output limit, dropping further output"
        );
        true
    }

    fn push(&mut self, bytes: &[u8]) {
        self.data.extend_from_slice(bytes);
        self.checksum.update(bytes);
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.data
    }

    pub(crate) fn len(&self) -> usize {
        self.data.len()
    }

    pub(crate) fn checksum(&self) -> u32 {
        self.checksum.clone().finalize()
    }

    pub(crate) fn is_truncated(&self) -> bool {
        self.truncated
    }

    pub(crate) fn is_finished(&self) -> bool {
        self.finished
    }

    pub(crate) fn finish(&mut self) {
        self.finished = true;
    }
}

/// The largest index `<= index` that does not split a UTF-8 character of `bytes`.
fn floor_char_boundary(bytes: &[u8], index: usize) -> usize {
    let mut index = index.min(bytes.len());
    while index > 0 && bytes.get(index).is_some_and(|&b| is_continuation(b)) {
        index -= 1;
    }
    index
}

fn is_continuation(byte: u8) -> bool {
    byte & 0xC0 == 0x80
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_everything_below_the_limit() {
        let mut store = Store::new(10);
        assert!(store.append(b"012345678"));
        assert_eq!(store.bytes(), b"012345678");
        assert!(!store.is_truncated());
    }

    #[test]
    fn cuts_at_the_limit_and_appends_the_notice_once() {
        let mut store = Store::new(10);
        store.append(b"01234");
        store.append(b"56789abc");
        assert!(!store.append(b"dropped"));
        let expected = format!("0123456789{}", format::limit_exceeded(10));
        assert_eq!(store.bytes(), expected.as_bytes());
        assert!(store.is_truncated());
    }

    #[test]
    fn never_cuts_a_character_in_half() {
        let mut store = Store::new(4);
        // The limit falls inside "é" (bytes 3..5).
        store.append("aaaé€".as_bytes());
        assert!(store.bytes().starts_with(b"aaa\n"), "{:?}", store.bytes());
        assert!(std::str::from_utf8(store.bytes()).is_ok());
    }

    #[test]
    fn nothing_is_stored_after_finish() {
        let mut store = Store::new(100);
        store.append(b"a");
        store.finish();
        assert!(!store.append(b"b"));
        assert_eq!(store.bytes(), b"a");
    }
}
