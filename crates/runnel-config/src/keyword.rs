//! Closed sets of words a config key accepts (executors, shells, pull policies, log levels).
//!
//! [`keyword_enum!`] turns a list of spellings into an enum with parsing, display and a [`Read`]
//! implementation whose error lists every accepted spelling. It knows nothing about which key
//! uses which set.
//!
//! [`Read`]: crate::read::Read

/// A word that is not one of the accepted spellings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?}, expected one of: {expected}")]
pub struct UnknownKeyword {
    what: &'static str,
    value: String,
    expected: String,
}

impl UnknownKeyword {
    pub(crate) fn new(what: &'static str, value: &str, expected: &[&str]) -> Self {
        Self {
            what,
            value: value.to_owned(),
            expected: expected.join(", "),
        }
    }
}

macro_rules! keyword_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($what:literal, one_or_many = $one_or_many:literal) {
            $( $(#[$variant_meta:meta])* $variant:ident = $text:literal $(| $alias:literal)*, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$variant_meta])* $variant, )+
        }

        impl $name {
            /// Every value, in the order the official documentation lists them.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The spelling used in config.toml.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::keyword::UnknownKeyword;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                match text {
                    $($text $(| $alias)* => Ok(Self::$variant),)+
                    _ => Err($crate::keyword::UnknownKeyword::new($what, text, &[$($text),+])),
                }
            }
        }

        impl $crate::read::Read for $name {
            const ONE_OR_MANY: bool = $one_or_many;

            fn read(
                node: &$crate::read::Node<'_>,
                cx: &mut $crate::read::Context<'_>,
            ) -> Option<Self> {
                let text = node.str(cx)?;
                match text.parse() {
                    Ok(value) => Some(value),
                    Err(error) => {
                        let error: $crate::keyword::UnknownKeyword = error;
                        cx.error(&node.path, node.span(), error.to_string());
                        None
                    }
                }
            }
        }
    };
}
pub(crate) use keyword_enum;
