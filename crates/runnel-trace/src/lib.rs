//! The job log: masking, size limit, checksum, and the byte buffer the uploader reads.
//!
//! A [`JobTrace`] is shared by everything that writes to a job's log (the runner's own
//! messages, and one [`TraceWriter`] per output stream) and by the uploader that sends it
//! to GitLab. Every write goes through a streaming filter chain, in this order:
//!
//! 1. masked values become `[MASKED]` (leftmost-longest, across write boundaries);
//! 2. values of sensitive URL parameters (`private_token`, `x-amz-signature`, ...) become
//!    `[MASKED]`;
//! 3. token bodies after known prefixes (`glpat-`, ...) become `[MASKED]`, keeping the prefix;
//! 4. invalid UTF-8 becomes U+FFFD;
//! 5. lines get `FF_TIMESTAMPS` headers, if enabled;
//! 6. the shared output limit cuts the log (at a character boundary) with a notice.
//!
//! The stored bytes, their CRC32 and size are what the trace PATCHes and the final job
//! update carry. Bytes on the hot path are scanned with SIMD-accelerated searches and
//! copied a few times, never handled one allocation at a time.
//!
//! This crate does no I/O: it does not send anything to GitLab (the daemon's upload loop
//! does), spawn tasks, read configuration files or keep the log on disk.
//!
//! ```
//! use runnel_trace::{JobTrace, Stream, TraceConfig};
//! use runnel_types::Secret;
//!
//! let trace = JobTrace::new(TraceConfig {
//!     masked: vec![Secret::new("hunter22")],
//!     ..TraceConfig::default()
//! })?;
//! trace.println("Running the script");
//! let mut stdout = trace.writer(Stream::SCRIPT_STDOUT);
//! stdout.write_bytes(b"password: hunt");
//! stdout.write_bytes(b"er22\n");
//! stdout.finish();
//! trace.finish();
//!
//! let log = trace.read_from(0, runnel_trace::MAX_READ_BYTES)?;
//! assert!(log.ends_with(b"password: [MASKED]\n"));
//! # Ok::<(), runnel_trace::TraceError>(())
//! ```

mod config;
mod error;
pub mod format;
mod mask;
mod matcher;
mod pipeline;
mod store;
mod timestamp;
mod token;
mod trace;
mod url;
mod utf8;

pub use config::{
    DEFAULT_LIMIT_BYTES, DEFAULT_TOKEN_PREFIXES, PAT_PREFIX, TraceConfig, default_token_prefixes,
};
pub use error::TraceError;
pub use format::SectionOptions;
pub use timestamp::{Clock, SystemClock};
pub use trace::{JobTrace, MAX_READ_BYTES, Stream, StreamKind, TraceWriter};
