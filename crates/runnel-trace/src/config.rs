//! What a job log is configured with: masked values, token prefixes, size limit, timestamps.
//!
//! This module only holds the settings and the official defaults. It does not read
//! `config.toml` or job variables; the caller maps `output_limit`, `FF_TIMESTAMPS`,
//! `FF_MASK_ALL_DEFAULT_TOKENS` and the job's `features.token_mask_prefixes` onto it.

use runnel_types::Secret;

/// The default output limit: 4 MiB (`output_limit = 4096` KB).
pub const DEFAULT_LIMIT_BYTES: usize = 4 * 1024 * 1024;

pub use runnel_types::{DEFAULT_TOKEN_PREFIXES, PAT_PREFIX};

/// The token prefixes the official runner masks by default: [`PAT_PREFIX`] always, and
/// [`DEFAULT_TOKEN_PREFIXES`] when `mask_all_default_tokens` (`FF_MASK_ALL_DEFAULT_TOKENS`).
pub fn default_token_prefixes(mask_all_default_tokens: bool) -> Vec<String> {
    let mut prefixes = vec![PAT_PREFIX.to_owned()];
    if mask_all_default_tokens {
        prefixes.extend(DEFAULT_TOKEN_PREFIXES.iter().map(|p| (*p).to_owned()));
    }
    prefixes
}

/// How a job log filters and bounds what is written to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceConfig {
    /// Values replaced by `[MASKED]` wherever they appear (masked job variables). Empty
    /// values are ignored.
    pub masked: Vec<Secret>,
    /// Prefixes of tokens whose body is replaced by `[MASKED]`, keeping the prefix.
    /// [`PAT_PREFIX`] is always added. See [`default_token_prefixes`].
    pub token_prefixes: Vec<String>,
    /// The most bytes of output stored; the rest is dropped after a notice.
    pub limit_bytes: usize,
    /// Whether every line gets an `FF_TIMESTAMPS` header.
    pub timestamps: bool,
}

impl Default for TraceConfig {
    /// No masked values, the default token prefixes, a 4 MiB limit and no timestamps.
    fn default() -> Self {
        Self {
            masked: Vec::new(),
            token_prefixes: default_token_prefixes(true),
            limit_bytes: DEFAULT_LIMIT_BYTES,
            timestamps: false,
        }
    }
}
