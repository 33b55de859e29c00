//! `deserialize_with` functions for config fields. serde's own messages for a wrong type
//! name neither the key nor the JSON found; these say what was expected and show the
//! value, and [`super::keyed`] puts the key in front ("`hidden_size` must be …").

use serde::de::{Deserializer, Error};
use serde::Deserialize;
use serde_json::Value;

fn read<'de, D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
    Value::deserialize(d)
}

fn to_count<E: Error>(value: &Value) -> Result<u32, E> {
    let n = value
        .as_u64()
        .ok_or_else(|| E::custom(format!("must be a non-negative integer, found {value}")))?;
    // GGUF stores these as u32; a larger value is an error, not a silent wrap.
    u32::try_from(n).map_err(|_| E::custom(format!("= {n} is too large")))
}

/// A non-negative integer that fits GGUF's u32.
pub fn count<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    to_count(&read(d)?)
}

pub fn opt_count<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    count(d).map(Some)
}

/// A count that makes no model when 0 (a layer count, a width, a number of heads).
pub fn size<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    match count(d)? {
        0 => Err(D::Error::custom("is 0")),
        n => Ok(n),
    }
}

pub fn opt_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    size(d).map(Some)
}

pub fn number<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let value = read(d)?;
    value
        .as_f64()
        .ok_or_else(|| D::Error::custom(format!("must be a number, found {value}")))
}

pub fn opt_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    number(d).map(Some)
}

pub fn flag<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    let value = read(d)?;
    value
        .as_bool()
        .ok_or_else(|| D::Error::custom(format!("must be true or false, found {value}")))
}

pub fn text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match read(d)? {
        Value::String(s) => Ok(s),
        other => Err(D::Error::custom(format!("must be a string, found {other}"))),
    }
}

/// A list of integers such as `mrope_section`.
pub fn int_list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<i32>>, D::Error> {
    let value = read(d)?;
    let list = value.as_array().and_then(|items| {
        items
            .iter()
            .map(|v| v.as_i64().and_then(|i| i32::try_from(i).ok()))
            .collect()
    });
    list.map(Some)
        .ok_or_else(|| D::Error::custom(format!("must be a list of integers, found {value}")))
}

/// A list of strings such as `mlp_layer_types`.
pub fn text_list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    let value = read(d)?;
    let list = value
        .as_array()
        .and_then(|items| items.iter().map(|v| v.as_str().map(str::to_owned)).collect());
    list.map(Some)
        .ok_or_else(|| D::Error::custom(format!("must be a list of strings, found {value}")))
}

/// A token id, or nothing: a list (GLM lists several EOS ids) or any other value says
/// no single id, and the token roles then come from the tokenizer files.
pub fn token_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    Ok(to_count::<D::Error>(&read(d)?).ok())
}

pub fn opt_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    text(d).map(Some)
}
