//! Runner and job tokens: redacting newtypes plus the official token shortener.

use std::fmt;

/// Prefix of runner authentication tokens created in the GitLab UI (the new workflow).
const AUTH_TOKEN_PREFIX: &str = "glrt-";

/// The personal access token prefix: tokens with it are masked in every job log.
pub const PAT_PREFIX: &str = "glpat-";

/// Further GitLab token prefixes masked in job logs when `FF_MASK_ALL_DEFAULT_TOKENS` is on
/// (its default).
pub const DEFAULT_TOKEN_PREFIXES: &[&str] = &[
    "gloas-",
    "gldt-",
    "glrt-",
    "glcbt-",
    "glrtr-",
    "glptt-",
    "glft-",
    "glimt-",
    "glagent-",
    "glsoat-",
    "glffct-",
    "_gitlab_session=",
    "gltok-",
];

macro_rules! redacting_token {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, Hash, Default)]
        pub struct $name(String);

        impl $name {
            /// Wraps a token value.
            pub fn new(value: impl Into<String>) -> Self {
                Self(value.into())
            }

            /// The token itself, for the one place that puts it on the wire. Never log it.
            pub fn expose(&self) -> &str {
                &self.0
            }

            /// Whether no token is set.
            pub fn is_empty(&self) -> bool {
                self.0.is_empty()
            }

            /// The official short form (see [`short_token`]), safe to show and log.
            pub fn short(&self) -> String {
                short_token(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({}…)"), self.short())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.short())
            }
        }

        impl From<String> for $name {
            fn from(value: String) -> Self {
                Self(value)
            }
        }

        impl From<&str> for $name {
            fn from(value: &str) -> Self {
                Self(value.to_owned())
            }
        }
    };
}

redacting_token!(
    /// A runner token: a `glrt-` authentication token or a legacy runner/registration token.
    ///
    /// `Debug` and `Display` show only the official short form.
    RunnerToken
);

redacting_token!(
    /// A job token (`glcbt-…`), valid while its job runs. `Debug`/`Display` show the short form.
    JobToken
);

impl RunnerToken {
    /// Whether this is a new-workflow authentication token (`glrt-`).
    pub fn is_authentication_token(&self) -> bool {
        self.0.starts_with(AUTH_TOKEN_PREFIX)
    }
}

/// Shortens a token the way the official runner does for `CI_RUNNER_SHORT_TOKEN`, log fields
/// and directory names: known prefixes are stripped, then the first 9 characters are kept.
pub fn short_token(token: &str) -> String {
    let rest = strip_known_prefix(token);
    rest.chars().take(9).collect()
}

fn strip_known_prefix(token: &str) -> &str {
    // The partition prefixes `t1_`…`t3_` may follow `glrt-` or stand alone.
    let mut rest = token;
    for prefix in ["glrtr-", "glrt-", "glcbt-"] {
        if let Some(stripped) = rest.strip_prefix(prefix) {
            rest = stripped;
            break;
        }
    }
    for prefix in ["t1_", "t2_", "t3_"] {
        if let Some(stripped) = rest.strip_prefix(prefix) {
            return stripped;
        }
    }
    // Legacy registration tokens look like `GR1348941` followed by the secret part.
    if rest.len() > 9
        && rest.starts_with("GR")
        && rest.as_bytes()[2..9].iter().all(u8::is_ascii_hexdigit)
    {
        return &rest[9..];
    }
    rest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortens_like_the_official_runner() {
        assert_eq!(short_token("glrt-abcdefghijklmnop"), "abcdefghi");
        assert_eq!(short_token("glrt-t1_abcdefghijklmnop"), "abcdefghi");
        assert_eq!(short_token("t2_abcdefghijklmnop"), "abcdefghi");
        assert_eq!(short_token("glcbt-abcdefghijkl"), "abcdefghi");
        assert_eq!(short_token("GR1348941abcdefghijkl"), "abcdefghi");
        assert_eq!(short_token("plaintoken123"), "plaintoke");
        assert_eq!(short_token("abc"), "abc");
        assert_eq!(short_token(""), "");
    }

    #[test]
    fn debug_and_display_redact() {
        let t = RunnerToken::new("glrt-secretsecretsecret");
        assert_eq!(format!("{t}"), "secretsec");
        assert!(!format!("{t:?}").contains("secretsecretsecret"));
        assert!(t.is_authentication_token());
    }
}
