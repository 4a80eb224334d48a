//! Errors of the job log. Writing never fails: output past the limit or after the log is
//! finished is dropped by design, so only building a log and reading it can go wrong.

/// An error building or reading a job log.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The masked values could not be compiled into a matcher.
    #[error("failed to build the matcher for {count} masked values")]
    BuildMasker {
        /// How many distinct non-empty values were given.
        count: usize,
        #[source]
        source: aho_corasick::BuildError,
    },
    /// The token prefixes could not be compiled into a matcher.
    #[error("failed to build the matcher for {count} token prefixes")]
    BuildTokenPrefixes {
        /// How many distinct non-empty prefixes were given.
        count: usize,
        #[source]
        source: aho_corasick::BuildError,
    },
    /// A read started past the end of the stored log.
    #[error("failed to read the job log from offset {offset}: it holds {len} bytes")]
    OffsetBeyondEnd {
        /// The requested offset.
        offset: usize,
        /// The stored length.
        len: usize,
    },
}
