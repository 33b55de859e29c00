//! Request bodies: JSON read into typed requests, each failure a 4xx that says what is
//! wrong (malformed JSON, a known field of the wrong type with its path, a body too
//! large). Unknown fields are ignored: clients send more than this server uses.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::errors::ApiError;

pub type Body = Result<Bytes, BytesRejection>;

/// The body as a `T`; a 413 when it was over `--max-body`.
pub fn parse<T: DeserializeOwned>(body: Body) -> Result<T, ApiError> {
    let bytes = body.map_err(|rejection| {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                status,
                "the request body is larger than this server accepts (--max-body)",
            )
        } else {
            ApiError::new(status, rejection.body_text())
        }
    })?;
    parse_bytes(&bytes)
}

pub fn parse_bytes<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data if path != "." => ApiError::field(&path, inner),
            serde_json::error::Category::Data => ApiError::bad_request(format!("invalid request: {inner}")),
            _ => ApiError::bad_request(format!("the request body is not valid JSON: {inner}")),
        }
    })?;
    deserializer
        .end()
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))?;
    Ok(value)
}

/// OpenAI's `stop` and similar fields: one string or a list of them.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(list) => list,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct Sample {
        #[allow(dead_code)]
        items: Vec<Item>,
    }

    #[derive(Debug, serde::Deserialize)]
    struct Item {
        #[allow(dead_code)]
        count: u32,
    }

    #[test]
    fn a_wrong_type_names_the_field() {
        let error = parse_bytes::<Sample>(br#"{"items": [{"count": 1}, {"count": "x"}], "extra": 1}"#).unwrap_err();
        assert_eq!(error.status, StatusCode::BAD_REQUEST);
        assert_eq!(error.param.as_deref(), Some("items[1].count"));
        assert!(
            error.message.starts_with("`items[1].count`: invalid type"),
            "{}",
            error.message
        );
    }

    #[test]
    fn malformed_json_is_said_so() {
        let error = parse_bytes::<Sample>(b"{\"items\": [").unwrap_err();
        assert!(error.message.contains("not valid JSON"), "{}", error.message);
        assert!(parse_bytes::<Sample>(br#"{"items": []}"#).is_ok());
    }
}
