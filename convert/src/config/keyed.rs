//! Reads a typed struct out of a JSON object so that every error names its key: serde's
//! derive knows the field names, but a wrong-typed value coming from serde_json says
//! neither where it was nor which file. `null` counts as absent, as transformers writes
//! it for "not set". A field given under two of its names (transformers writes both
//! `type` and `rope_type`) is read from its canonical name, else from the first in the
//! file, instead of serde's "duplicate field" error.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use serde::de::value::BorrowedStrDeserializer;
use serde::de::{self, DeserializeOwned, DeserializeSeed, MapAccess, Visitor};
use serde_json::{Map, Value};

use crate::error::{ConvertError, Result};

/// Deserialises `value` (the object found at the dotted `prefix`, "" for the top level);
/// errors name `path` and the key.
pub(super) fn parse<T: DeserializeOwned>(path: &Path, value: &Value, prefix: &str) -> Result<T> {
    let names = RefCell::new(Names::default());
    loop {
        let top = Keyed {
            value,
            path: prefix.to_owned(),
            names: &names,
        };
        let error = match T::deserialize(top) {
            Ok(parsed) => return Ok(parsed),
            Err(error) if prefix.is_empty() => error,
            Err(error) => error.at(prefix.to_owned()),
        };
        // Each retry drops or reorders one more key, so this ends.
        let retry = matches!(error.problem, Problem::Duplicate(field) if names.borrow_mut().settle(field));
        if !retry {
            return Err(ConvertError::config(path, error.to_string()));
        }
    }
}

/// Why a struct could not be read, and where (the dotted key path, set by the innermost
/// object that saw the error).
#[derive(Debug)]
pub(super) struct FieldError {
    at: Option<String>,
    problem: Problem,
}

#[derive(Debug)]
enum Problem {
    /// What was expected and what was found, to follow the key.
    Invalid(String),
    Missing(&'static str),
    Duplicate(&'static str),
}

impl FieldError {
    fn at(mut self, path: String) -> Self {
        self.at.get_or_insert(path);
        self
    }
}

impl de::Error for FieldError {
    fn custom<T: fmt::Display>(message: T) -> Self {
        Self {
            at: None,
            problem: Problem::Invalid(message.to_string()),
        }
    }

    fn missing_field(field: &'static str) -> Self {
        Self {
            at: None,
            problem: Problem::Missing(field),
        }
    }

    fn duplicate_field(field: &'static str) -> Self {
        Self {
            at: None,
            problem: Problem::Duplicate(field),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.problem, &self.at) {
            (Problem::Invalid(message), Some(at)) => write!(f, "`{at}` {message}"),
            (Problem::Invalid(message), None) => f.write_str(message),
            (Problem::Missing(field), Some(at)) => write!(f, "missing required field `{at}.{field}`"),
            (Problem::Missing(field), None) => write!(f, "missing required field `{field}`"),
            (Problem::Duplicate(field), _) => write!(f, "`{field}` is given twice, under two of its names"),
        }
    }
}

impl std::error::Error for FieldError {}

/// Which keys the next attempt reads first or skips, after serde met a field twice.
#[derive(Default)]
struct Names {
    /// The key last handed to a struct, and its dotted path.
    key: String,
    path: String,
    /// Canonical names that came after one of their aliases.
    first: BTreeSet<String>,
    /// Aliases of a field already read under another name.
    dropped: BTreeSet<String>,
}

impl Names {
    /// serde met `field` a second time at the current key. An alias gives way to the
    /// name read before it; a canonical name is read first next time, so that its alias
    /// gives way. False when that was already done (nothing left to try).
    fn settle(&mut self, field: &str) -> bool {
        let path = self.path.clone();
        if self.key == field {
            self.first.insert(path)
        } else {
            self.dropped.insert(path)
        }
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

/// A JSON value at a known key path.
struct Keyed<'de, 'n> {
    value: &'de Value,
    path: String,
    names: &'n RefCell<Names>,
}

impl<'de> de::Deserializer<'de> for Keyed<'de, '_> {
    type Error = FieldError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, FieldError> {
        match self.value {
            Value::Object(map) => visitor.visit_map(Entries::new(map, self.path, self.names)),
            other => other.deserialize_any(visitor).map_err(de::Error::custom),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, FieldError> {
        if self.value.is_null() {
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }

    // Unknown keys are not looked into.
    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, FieldError> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct newtype_struct seq tuple tuple_struct map struct enum identifier
    }
}

/// The non-null entries of an object, canonical names moved first and lost aliases left
/// out as [`Names`] says.
struct Entries<'de, 'n> {
    entries: std::vec::IntoIter<(&'de String, &'de Value)>,
    pending: Option<(&'de Value, String)>,
    prefix: String,
    names: &'n RefCell<Names>,
}

impl<'de, 'n> Entries<'de, 'n> {
    fn new(map: &'de Map<String, Value>, prefix: String, names: &'n RefCell<Names>) -> Self {
        let mut entries: Vec<_> = {
            let seen = names.borrow();
            map.iter()
                .filter(|(key, value)| !value.is_null() && !seen.dropped.contains(&join(&prefix, key)))
                .collect()
        };
        entries.sort_by_cached_key(|(key, _)| !names.borrow().first.contains(&join(&prefix, key)));
        Self {
            entries: entries.into_iter(),
            pending: None,
            prefix,
            names,
        }
    }
}

impl<'de> MapAccess<'de> for Entries<'de, '_> {
    type Error = FieldError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, FieldError> {
        let Some((key, value)) = self.entries.next() else {
            return Ok(None);
        };
        let path = join(&self.prefix, key);
        {
            let mut names = self.names.borrow_mut();
            names.key.clone_from(key);
            names.path.clone_from(&path);
        }
        self.pending = Some((value, path));
        seed.deserialize(BorrowedStrDeserializer::new(key)).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, FieldError> {
        let Some((value, path)) = self.pending.take() else {
            return Err(de::Error::custom("a value was asked for before its key"));
        };
        let names = self.names;
        seed.deserialize(Keyed {
            value,
            path: path.clone(),
            names,
        })
        .map_err(|error| error.at(path))
    }
}
