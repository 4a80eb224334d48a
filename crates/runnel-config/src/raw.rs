//! [`RawTable`]: a config section kept as plain TOML data instead of typed fields.
//!
//! Sections Runnel does not model key by key (`[runners.kubernetes]`, `[runners.machine]`, …)
//! are still available to the crates that need them, as a `toml::Table` that can be deserialized
//! into their own types. The file itself is never rewritten from a `RawTable`: saving works on the
//! original document, so comments and layout survive.

use std::fmt;

use serde::de::DeserializeOwned;
use toml_edit::{Item, TableLike, Value};

use crate::read::{Context, Node, Read};

/// A table of plain TOML values.
///
/// `Debug` lists only the keys: these sections hold secrets (`bearer_token`, passwords).
#[derive(Clone, PartialEq, Default)]
pub struct RawTable(toml::Table);

impl RawTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// The values.
    pub fn as_table(&self) -> &toml::Table {
        &self.0
    }

    /// The value under `key`.
    pub fn get(&self, key: &str) -> Option<&toml::Value> {
        self.0.get(key)
    }

    /// Sets `key` to `value`.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<toml::Value>) {
        self.0.insert(key.into(), value.into());
    }

    /// Deserializes the table into a caller's type.
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, toml::de::Error> {
        toml::Value::Table(self.0.clone()).try_into()
    }
}

impl From<toml::Table> for RawTable {
    fn from(table: toml::Table) -> Self {
        Self(table)
    }
}

impl fmt::Debug for RawTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawTable")
            .field("keys", &self.0.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Read for RawTable {
    fn read(node: &Node<'_>, cx: &mut Context<'_>) -> Option<Self> {
        match node.table_like() {
            Some(table) => Some(Self(table_from(table))),
            None => {
                node.wrong_type(cx, "a table");
                None
            }
        }
    }
}

fn table_from(table: &dyn TableLike) -> toml::Table {
    table
        .iter()
        .filter_map(|(key, item)| Some((key.to_owned(), value_from_item(item)?)))
        .collect()
}

fn value_from_item(item: &Item) -> Option<toml::Value> {
    match item {
        Item::None => None,
        Item::Value(value) => Some(value_from(value)),
        Item::Table(table) => Some(toml::Value::Table(table_from(table))),
        Item::ArrayOfTables(tables) => Some(toml::Value::Array(
            tables
                .iter()
                .map(|table| toml::Value::Table(table_from(table)))
                .collect(),
        )),
    }
}

fn value_from(value: &Value) -> toml::Value {
    match value {
        Value::String(text) => toml::Value::String(text.value().clone()),
        Value::Integer(number) => toml::Value::Integer(*number.value()),
        Value::Float(number) => toml::Value::Float(*number.value()),
        Value::Boolean(flag) => toml::Value::Boolean(*flag.value()),
        Value::Datetime(datetime) => toml::Value::Datetime(*datetime.value()),
        Value::Array(array) => toml::Value::Array(array.iter().map(value_from).collect()),
        Value::InlineTable(table) => toml::Value::Table(table_from(table)),
    }
}
