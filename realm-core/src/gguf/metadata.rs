//! The key-value metadata of a GGUF file, with typed accessors.

use std::collections::HashMap;

use super::value::{MetadataArray, MetadataValue};
use crate::{Error, Result};

/// Key-value metadata, in file order.
///
/// Typed getters fail with [`Error::MissingKey`] or [`Error::WrongType`],
/// both naming the key:
///
/// ```
/// use realm_core::gguf::{Metadata, MetadataValue};
/// let mut md = Metadata::new();
/// md.insert("llama.block_count", MetadataValue::U32(30));
/// md.insert("general.name", MetadataValue::String("SmolLM2".into()));
/// assert_eq!(md.get_u32("llama.block_count").unwrap(), 30);
/// let err = md.get_u32("general.name").unwrap_err();
/// assert_eq!(err.to_string(), "metadata key `general.name` holds string, expected u32");
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metadata {
    entries: Vec<(String, MetadataValue)>,
    index: HashMap<String, usize>,
}

impl Metadata {
    /// Empty metadata.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` to `value`, replacing an earlier value (which keeps its
    /// position) and returning it.
    pub fn insert(
        &mut self,
        key: impl Into<String>,
        value: MetadataValue,
    ) -> Option<MetadataValue> {
        let key = key.into();
        match self.index.get(&key) {
            Some(&i) => Some(std::mem::replace(&mut self.entries[i].1, value)),
            None => {
                self.index.insert(key.clone(), self.entries.len());
                self.entries.push((key, value));
                None
            }
        }
    }

    /// Removes `key`, returning its value; the keys after it move up.
    pub fn remove(&mut self, key: &str) -> Option<MetadataValue> {
        let i = self.index.remove(key)?;
        let (_, value) = self.entries.remove(i);
        for (k, _) in &self.entries[i..] {
            if let Some(at) = self.index.get_mut(k) {
                *at -= 1;
            }
        }
        Some(value)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no keys.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// True when `key` is present.
    pub fn contains_key(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&MetadataValue> {
        self.index.get(key).map(|&i| &self.entries[i].1)
    }

    /// Keys and values in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &MetadataValue)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    fn require(&self, key: &str) -> Result<&MetadataValue> {
        self.get(key).ok_or_else(|| Error::MissingKey {
            key: key.to_string(),
        })
    }

    fn wrong(key: &str, expected: &'static str, found: &MetadataValue) -> Error {
        Error::WrongType {
            key: key.to_string(),
            expected,
            found: found.type_description(),
        }
    }

    fn get_int<T: TryFrom<i128>>(&self, key: &str, expected: &'static str) -> Result<T> {
        let v = self.require(key)?;
        v.as_i128()
            .and_then(|i| T::try_from(i).ok())
            .ok_or_else(|| match v.as_i128() {
                Some(i) => Error::WrongType {
                    key: key.to_string(),
                    expected,
                    found: format!("{} {i} (out of range)", v.type_description()),
                },
                None => Self::wrong(key, expected, v),
            })
    }

    /// `key` as a `u32`: any integer type whose value fits.
    pub fn get_u32(&self, key: &str) -> Result<u32> {
        self.get_int(key, "u32")
    }

    /// `key` as a `u64`: any integer type whose value fits.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.get_int(key, "u64")
    }

    /// `key` as an `i64`: any integer type whose value fits.
    pub fn get_i64(&self, key: &str) -> Result<i64> {
        self.get_int(key, "i64")
    }

    /// `key` as an `f32` (an `f32` value, or an `f64` narrowed).
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        match self.require(key)? {
            MetadataValue::F32(v) => Ok(*v),
            MetadataValue::F64(v) => Ok(*v as f32),
            v => Err(Self::wrong(key, "f32", v)),
        }
    }

    /// `key` as a `bool`.
    pub fn get_bool(&self, key: &str) -> Result<bool> {
        match self.require(key)? {
            MetadataValue::Bool(v) => Ok(*v),
            v => Err(Self::wrong(key, "bool", v)),
        }
    }

    /// `key` as a string.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        match self.require(key)? {
            MetadataValue::String(s) => Ok(s),
            v => Err(Self::wrong(key, "string", v)),
        }
    }

    /// `key` as an array of any element type.
    pub fn get_array(&self, key: &str) -> Result<&MetadataArray> {
        match self.require(key)? {
            MetadataValue::Array(a) => Ok(a),
            v => Err(Self::wrong(key, "array", v)),
        }
    }

    /// `key` as an array of strings.
    pub fn get_str_array(&self, key: &str) -> Result<&[String]> {
        match self.require(key)? {
            MetadataValue::Array(MetadataArray::String(a)) => Ok(a),
            v => Err(Self::wrong(key, "array of string", v)),
        }
    }

    /// `key` as an array of `f32`.
    pub fn get_f32_array(&self, key: &str) -> Result<&[f32]> {
        match self.require(key)? {
            MetadataValue::Array(MetadataArray::F32(a)) => Ok(a),
            v => Err(Self::wrong(key, "array of f32", v)),
        }
    }

    /// `key` as an array of `i32`.
    pub fn get_i32_array(&self, key: &str) -> Result<&[i32]> {
        match self.require(key)? {
            MetadataValue::Array(MetadataArray::I32(a)) => Ok(a),
            v => Err(Self::wrong(key, "array of i32", v)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_getters_widen_and_narrow_only_when_the_value_fits() {
        let mut md = Metadata::new();
        md.insert("a", MetadataValue::U8(7));
        md.insert("b", MetadataValue::I64(-1));
        md.insert("c", MetadataValue::U64(u64::from(u32::MAX) + 1));
        assert_eq!(md.get_u32("a").unwrap(), 7);
        assert_eq!(md.get_i64("b").unwrap(), -1);
        assert!(matches!(md.get_u32("b"), Err(Error::WrongType { .. })));
        assert!(md
            .get_u32("c")
            .unwrap_err()
            .to_string()
            .contains("out of range"));
        assert_eq!(md.get_u64("c").unwrap(), 1 << 32);
        assert!(matches!(md.get_u32("zz"), Err(Error::MissingKey { key }) if key == "zz"));
    }

    #[test]
    fn insert_replaces_in_place_and_arrays_are_typed() {
        let mut md = Metadata::new();
        md.insert("x", MetadataValue::Bool(true));
        md.insert(
            "t",
            MetadataValue::Array(MetadataArray::String(vec!["a".into(), "b".into()])),
        );
        assert_eq!(
            md.insert("x", MetadataValue::Bool(false)),
            Some(MetadataValue::Bool(true))
        );
        assert_eq!(md.iter().map(|(k, _)| k).collect::<Vec<_>>(), ["x", "t"]);
        let mut removed = md.clone();
        assert!(removed.remove("x").is_some());
        assert_eq!(removed.remove("x"), None);
        assert_eq!(removed.iter().map(|(k, _)| k).collect::<Vec<_>>(), ["t"]);
        assert!(removed.get("t").is_some() && !removed.contains_key("x"));
        assert_eq!(md.get_str_array("t").unwrap(), ["a", "b"]);
        let err = md.get_f32_array("t").unwrap_err().to_string();
        assert_eq!(
            err,
            "metadata key `t` holds array of string, expected array of f32"
        );
    }
}
