//! Tolerant decoding helpers for GitLab's JSON: numbers that arrive as strings, strings that
//! arrive as numbers, single values where a list is expected, and `null` anywhere.
//!
//! These are wire-only types; nothing outside the wire structs should see them.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};

/// Removes `null` members from every object, so that `#[serde(default)]` treats them as absent.
pub(crate) fn strip_nulls(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// An integer that may be sent as a number (integral float included) or a numeric string.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Int(pub(crate) i64);

impl Int {
    /// The value as an unsigned number; negatives become 0.
    pub(crate) fn unsigned(self) -> u64 {
        u64::try_from(self.0).unwrap_or(0)
    }
}

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IntVisitor;

        impl Visitor<'_> for IntVisitor {
            type Value = Int;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer or a string holding one")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Int, E> {
                Ok(Int(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Int, E> {
                i64::try_from(v)
                    .map(Int)
                    .map_err(|_| E::custom(format!("integer {v} is too large")))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Int, E> {
                #[allow(clippy::cast_possible_truncation)] // checked to be integral and in range
                let truncated = v as i64;
                if v.fract() == 0.0 && v.is_finite() && truncated as f64 == v {
                    Ok(Int(truncated))
                } else {
                    Err(E::custom(format!("{v} is not an integer")))
                }
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Int, E> {
                let v = v.trim();
                if v.is_empty() {
                    return Ok(Int(0));
                }
                v.parse()
                    .map(Int)
                    .map_err(|_| E::custom(format!("`{v}` is not an integer")))
            }
        }

        deserializer.deserialize_any(IntVisitor)
    }
}

/// A float that may be sent as a number or a numeric string.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Float(pub(crate) f64);

impl<'de> Deserialize<'de> for Float {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Number(f64),
            Text(String),
        }
        match Repr::deserialize(deserializer)? {
            Repr::Number(v) => Ok(Float(v)),
            Repr::Text(v) if v.trim().is_empty() => Ok(Float(0.0)),
            Repr::Text(v) => v
                .trim()
                .parse()
                .map(Float)
                .map_err(|_| de::Error::custom(format!("`{v}` is not a number"))),
        }
    }
}

/// A string that may be sent as a number (e.g. a numeric user id).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Text(pub(crate) String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Text(String),
            Signed(i64),
            Unsigned(u64),
        }
        Ok(Text(match Repr::deserialize(deserializer)? {
            Repr::Text(v) => v,
            Repr::Signed(v) => v.to_string(),
            Repr::Unsigned(v) => v.to_string(),
        }))
    }
}

/// A list that may be sent as a single string.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct StringList(pub(crate) Vec<String>);

impl<'de> Deserialize<'de> for StringList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListVisitor;

        impl<'de> Visitor<'de> for ListVisitor {
            type Value = StringList;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<StringList, E> {
                Ok(StringList(vec![v.to_owned()]))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<StringList, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Option<String>>()? {
                    items.extend(item);
                }
                Ok(StringList(items))
            }
        }

        deserializer.deserialize_any(ListVisitor)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn int(value: serde_json::Value) -> Result<i64, serde_json::Error> {
        serde_json::from_value::<Int>(value).map(|i| i.0)
    }

    #[test]
    fn ints_accept_numbers_and_strings() {
        assert_eq!(int(json!(42)).unwrap(), 42);
        assert_eq!(int(json!(-3)).unwrap(), -3);
        assert_eq!(int(json!("17")).unwrap(), 17);
        assert_eq!(int(json!(" 5 ")).unwrap(), 5);
        assert_eq!(int(json!("")).unwrap(), 0);
        assert_eq!(int(json!(3.0)).unwrap(), 3);
        assert!(int(json!(3.5)).is_err());
        assert!(int(json!("abc")).is_err());
        assert!(int(json!(u64::MAX)).is_err());
        assert!(int(json!(1e300)).is_err());
        assert!(int(json!([1])).is_err());
        assert_eq!(Int(-1).unsigned(), 0);
    }

    #[test]
    fn floats_and_texts_and_lists_are_lenient() {
        assert_eq!(
            serde_json::from_value::<Float>(json!("1.5")).unwrap().0,
            1.5
        );
        assert_eq!(serde_json::from_value::<Float>(json!(2)).unwrap().0, 2.0);
        assert_eq!(
            serde_json::from_value::<Text>(json!(1000)).unwrap().0,
            "1000"
        );
        assert_eq!(
            serde_json::from_value::<StringList>(json!("always"))
                .unwrap()
                .0,
            ["always"]
        );
        assert_eq!(
            serde_json::from_value::<StringList>(json!(["a", null, "b"]))
                .unwrap()
                .0,
            ["a", "b"]
        );
    }

    #[test]
    fn nulls_are_stripped_from_objects_at_any_depth() {
        let mut value = json!({"a": null, "b": {"c": null, "d": 1}, "e": [{"f": null}]});
        strip_nulls(&mut value);
        assert_eq!(value, json!({"b": {"d": 1}, "e": [{}]}));
    }
}
