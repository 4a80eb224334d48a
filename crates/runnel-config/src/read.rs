//! The validating walk from a parsed TOML tree (with spans) to typed config values.
//!
//! Every typed value implements [`Read`]; every struct field implements [`Field`], which decides
//! what a missing key means (unset, a default, or an error). Problems are recorded in the
//! [`Context`] and reading carries on, so one pass reports every problem in the file. Keys that no
//! field asked for are reported as warnings when a [`Section`] is finished.
//!
//! This module does no I/O and never mutates the document; it does not know about saving.

use std::collections::BTreeMap;
use std::ops::Range;

use toml_edit::{Array, ArrayOfTables, Item, Table, TableLike, Value};

use crate::diagnostic::{Diagnostic, Severity, Source};
use crate::expand::{EnvLookup, expand_env};

/// Where problems go while a document is read.
pub(crate) struct Context<'s> {
    source: &'s Source<'s>,
    env: EnvLookup,
    pub(crate) errors: Vec<Diagnostic>,
    pub(crate) warnings: Vec<Diagnostic>,
}

impl<'s> Context<'s> {
    pub(crate) fn new(source: &'s Source<'s>, env: EnvLookup) -> Self {
        Self {
            source,
            env,
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// Records an error at `span` for the key path `key`.
    pub(crate) fn error(
        &mut self,
        key: &str,
        span: Option<Range<usize>>,
        message: impl Into<String>,
    ) {
        let diagnostic = self.source.diagnostic(Severity::Error, span, key, message);
        self.errors.push(diagnostic);
    }

    /// Records a warning at `span` for the key path `key`.
    pub(crate) fn warning(
        &mut self,
        key: &str,
        span: Option<Range<usize>>,
        message: impl Into<String>,
    ) {
        let diagnostic = self
            .source
            .diagnostic(Severity::Warning, span, key, message);
        self.warnings.push(diagnostic);
    }

    /// Expands `$VAR` and `${VAR}` like Go's `os.ExpandEnv`.
    pub(crate) fn expand(&self, value: &str) -> String {
        expand_env(value, self.env)
    }
}

/// One value in the document, with its key path.
#[derive(Clone)]
pub(crate) struct Node<'d> {
    pub(crate) path: String,
    content: Content<'d>,
}

#[derive(Clone, Copy)]
enum Content<'d> {
    Item(&'d Item),
    Value(&'d Value),
    Table(&'d Table),
}

impl<'d> Node<'d> {
    pub(crate) fn root(item: &'d Item) -> Self {
        Node {
            path: String::new(),
            content: Content::Item(item),
        }
    }

    pub(crate) fn span(&self) -> Option<Range<usize>> {
        match self.content {
            Content::Item(item) => item.span(),
            Content::Value(value) => value.span(),
            Content::Table(table) => table.span(),
        }
    }

    pub(crate) fn value(&self) -> Option<&'d Value> {
        match self.content {
            Content::Item(item) => item.as_value(),
            Content::Value(value) => Some(value),
            Content::Table(_) => None,
        }
    }

    pub(crate) fn table_like(&self) -> Option<&'d dyn TableLike> {
        match self.content {
            Content::Item(item) => item.as_table_like(),
            Content::Value(value) => value.as_inline_table().map(|t| t as &dyn TableLike),
            Content::Table(table) => Some(table),
        }
    }

    fn array_of_tables(&self) -> Option<&'d ArrayOfTables> {
        match self.content {
            Content::Item(item) => item.as_array_of_tables(),
            Content::Value(_) | Content::Table(_) => None,
        }
    }

    fn array(&self) -> Option<&'d Array> {
        self.value().and_then(Value::as_array)
    }

    /// A human name for what this node holds, for "expected X, found Y" messages.
    pub(crate) fn kind(&self) -> &'static str {
        if self.array_of_tables().is_some() {
            return "an array of tables";
        }
        if self.table_like().is_some() {
            return "a table";
        }
        match self.value() {
            Some(Value::String(_)) => "a string",
            Some(Value::Integer(_)) => "an integer",
            Some(Value::Float(_)) => "a float",
            Some(Value::Boolean(_)) => "a boolean",
            Some(Value::Datetime(_)) => "a datetime",
            Some(Value::Array(_)) => "an array",
            Some(Value::InlineTable(_)) => "a table",
            None => "nothing",
        }
    }

    /// Records "expected `expected`, found …" for this node.
    pub(crate) fn wrong_type(&self, cx: &mut Context<'_>, expected: &str) {
        cx.error(
            &self.path,
            self.span(),
            format!("expected {expected}, found {}", self.kind()),
        );
    }

    /// The string value, or a recorded type error.
    pub(crate) fn str(&self, cx: &mut Context<'_>) -> Option<&'d str> {
        let found = self.value().and_then(Value::as_str);
        if found.is_none() {
            self.wrong_type(cx, "a string");
        }
        found
    }
}

/// A table being read field by field; remembers which keys were asked for.
pub(crate) struct Section<'d> {
    path: String,
    table: &'d dyn TableLike,
    span: Option<Range<usize>>,
    used: Vec<&'static str>,
}

impl<'d> Section<'d> {
    /// Opens `node` as a table, or records a type error.
    pub(crate) fn open(node: &Node<'d>, cx: &mut Context<'_>) -> Option<Self> {
        let Some(table) = node.table_like() else {
            node.wrong_type(cx, "a table");
            return None;
        };
        Some(Self {
            path: node.path.clone(),
            table,
            span: node.span(),
            used: Vec::new(),
        })
    }

    /// The key path of this table (empty for the document root).
    pub(crate) fn path(&self) -> &str {
        &self.path
    }

    /// Where the table starts in the file, when known.
    pub(crate) fn span(&self) -> Option<Range<usize>> {
        self.span.clone()
    }

    /// The node under `key`, marking the key as known.
    pub(crate) fn node(&mut self, key: &'static str) -> Option<Node<'d>> {
        self.used.push(key);
        let item = self.table.get(key)?;
        Some(Node {
            path: join(&self.path, key),
            content: Content::Item(item),
        })
    }

    /// Reads the field `key`; `None` means a problem was recorded.
    pub(crate) fn field<T: Field>(&mut self, cx: &mut Context<'_>, key: &'static str) -> Option<T> {
        T::take(self, key, cx)
    }

    /// Reports every key nobody asked for as a warning; the key stays in the file.
    pub(crate) fn finish(self, cx: &mut Context<'_>) {
        for (key, _) in self.table.iter() {
            if self.used.contains(&key) {
                continue;
            }
            let span = self
                .table
                .get_key_value(key)
                .and_then(|(key, _)| key.span());
            cx.warning(&join(&self.path, key), span, "unknown key (kept)");
        }
    }
}

/// Appends `key` to a key path, quoting it when it is not a bare TOML key.
pub(crate) fn join(path: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let key = if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    };
    if path.is_empty() {
        key
    } else {
        format!("{path}.{key}")
    }
}

/// A typed value that can be read from a node, recording problems in the context.
pub(crate) trait Read: Sized {
    /// Whether a single value may stand where an array is expected (`pull_policy = "never"`).
    const ONE_OR_MANY: bool = false;

    /// Reads the value; `None` means a problem was recorded.
    fn read(node: &Node<'_>, cx: &mut Context<'_>) -> Option<Self>;
}

/// A struct field: decides what a missing key means.
pub(crate) trait Field: Sized {
    /// Reads `key` from `section`; `None` means a problem was recorded.
    fn take(section: &mut Section<'_>, key: &'static str, cx: &mut Context<'_>) -> Option<Self>;
}

/// Missing keys (and, as in the official runner, empty strings) are unset.
impl<T: Read> Field for Option<T> {
    fn take(section: &mut Section<'_>, key: &'static str, cx: &mut Context<'_>) -> Option<Self> {
        let Some(node) = section.node(key) else {
            return Some(None);
        };
        if node.value().and_then(Value::as_str) == Some("") {
            return Some(None);
        }
        T::read(&node, cx).map(Some)
    }
}

/// Reads `key`, falling back to the type's default when it is missing.
pub(crate) fn or_default<T: Read + Default>(
    section: &mut Section<'_>,
    key: &'static str,
    cx: &mut Context<'_>,
) -> Option<T> {
    match section.node(key) {
        Some(node) => T::read(&node, cx),
        None => Some(T::default()),
    }
}

macro_rules! field_with_default {
    ($($ty:ty),* $(,)?) => {$(
        impl Field for $ty {
            fn take(
                section: &mut Section<'_>,
                key: &'static str,
                cx: &mut Context<'_>,
            ) -> Option<Self> {
                or_default(section, key, cx)
            }
        }
    )*};
}
field_with_default!(bool, String, i64, u32, u64);

impl<T: Read> Field for Vec<T> {
    fn take(section: &mut Section<'_>, key: &'static str, cx: &mut Context<'_>) -> Option<Self> {
        or_default(section, key, cx)
    }
}

impl<T: Read> Field for BTreeMap<String, T> {
    fn take(section: &mut Section<'_>, key: &'static str, cx: &mut Context<'_>) -> Option<Self> {
        or_default(section, key, cx)
    }
}

impl Read for String {
    fn read(node: &Node<'_>, cx: &mut Context<'_>) -> Option<Self> {
        node.str(cx).map(str::to_owned)
    }
}

impl Read for bool {
    fn read(node: &Node<'_>, cx: &mut Context<'_>) -> Option<Self> {
        let found = node.value().and_then(Value::as_bool);
        if found.is_none() {
            node.wrong_type(cx, "a boolean");
        }
        found
    }
}

impl Read for i64 {
    fn read(node: &Node<'_>, cx: &mut Context<'_>) -> Option<Self> {
        let found = node.value().and_then(Value::as_integer);
        if found.is_none() {
            node.wrong_type(cx, "an integer");
        }
        found
    }
}

macro_rules! read_unsigned {
    ($($ty:ty),*) => {$(
        impl Read for $ty {
            fn read(node: &Node<'_>, cx: &mut Context<'_>) -> Option<Self> {
                let value = i64::read(node, cx)?;
                match <$ty>::try_from(value) {
                    Ok(value) => Some(value),
                    Err(_) if value < 0 => {
                        cx.error(&node.path, node.span(), format!("must not be negative, found {value}"));
                        None
                    }
                    Err(_) => {
                        cx.error(&node.path, node.span(), format!("{value} is too large"));
                        None
                    }
                }
            }
        }
    )*};
}

read_unsigned!(u32, u64);

impl<T: Read> Read for Vec<T> {
    fn read(node: &Node<'_>, cx: &mut Context<'_>) -> Option<Self> {
        let elements: Vec<Node<'_>> = if let Some(tables) = node.array_of_tables() {
            tables
                .iter()
                .enumerate()
                .map(|(i, table)| node.element(i, Content::Table(table)))
                .collect()
        } else if let Some(array) = node.array() {
            array
                .iter()
                .enumerate()
                .map(|(i, value)| node.element(i, Content::Value(value)))
                .collect()
        } else if T::ONE_OR_MANY && node.value().is_some() {
            return T::read(node, cx).map(|value| vec![value]);
        } else {
            node.wrong_type(cx, "an array");
            return None;
        };
        // Read every element before giving up, so that each bad one is reported.
        let values: Vec<Option<T>> = elements
            .iter()
            .map(|element| T::read(element, cx))
            .collect();
        values.into_iter().collect()
    }
}

impl<T: Read> Read for BTreeMap<String, T> {
    fn read(node: &Node<'_>, cx: &mut Context<'_>) -> Option<Self> {
        let Some(table) = node.table_like() else {
            node.wrong_type(cx, "a table");
            return None;
        };
        let entries: Vec<(String, Option<T>)> = table
            .iter()
            .map(|(key, item)| {
                let child = Node {
                    path: join(&node.path, key),
                    content: Content::Item(item),
                };
                (key.to_owned(), T::read(&child, cx))
            })
            .collect();
        entries
            .into_iter()
            .map(|(key, value)| Some((key, value?)))
            .collect()
    }
}

impl<'d> Node<'d> {
    fn element(&self, index: usize, content: Content<'d>) -> Node<'d> {
        Node {
            path: format!("{}[{index}]", self.path),
            content,
        }
    }
}

/// Declares a config struct whose fields are read by key, plus its `read_fields` function.
///
/// Field types implement [`Field`]: `Option<T>` is unset when missing, collections, numbers,
/// booleans and strings take their default, and a few (the executor) are required.
macro_rules! section {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$field_meta:meta])* $key:literal => $field:ident : $ty:ty, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq)]
        pub struct $name {
            $( $(#[$field_meta])* pub $field: $ty, )*
        }

        impl $name {
            /// Reads every field, reporting each problem before giving up.
            fn read_fields(
                section: &mut $crate::read::Section<'_>,
                cx: &mut $crate::read::Context<'_>,
            ) -> Option<Self> {
                $( let $field = section.field::<$ty>(cx, $key); )*
                Some(Self { $( $field: $field?, )* })
            }
        }
    };
}
pub(crate) use section;

/// Implements [`Read`] for a [`section!`] struct that needs no checks beyond its fields.
macro_rules! read_section {
    ($($name:ty),* $(,)?) => {$(
        impl $crate::read::Read for $name {
            fn read(
                node: &$crate::read::Node<'_>,
                cx: &mut $crate::read::Context<'_>,
            ) -> Option<Self> {
                let mut section = $crate::read::Section::open(node, cx)?;
                let value = Self::read_fields(&mut section, cx);
                section.finish(cx);
                value
            }
        }
    )*};
}
pub(crate) use read_section;

impl Read for runnel_types::Secret {
    fn read(node: &Node<'_>, cx: &mut Context<'_>) -> Option<Self> {
        node.str(cx).map(runnel_types::Secret::new)
    }
}
