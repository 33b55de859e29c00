//! Errors of the conversion library. Every variant names the file it is about, so the
//! CLI can print one line that tells the user what to fix.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    // The cause is part of the message and deliberately not a `source()`: the CLI prints
    // an error's whole chain, which would say it twice.
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{path}: not valid JSON: {error}")]
    Json { path: PathBuf, error: serde_json::Error },
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{path}: not a valid safetensors file: {reason}")]
    Safetensors { path: PathBuf, reason: String },
    #[error("{path}: unsupported architecture {name:?} (supported: {supported})")]
    UnsupportedArchitecture {
        path: PathBuf,
        name: String,
        supported: String,
    },
    #[error("{path}: {message}")]
    Gguf { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error("tensor {name}: {message}")]
    Tensor { name: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = ConvertError> = std::result::Result<T, E>;

impl ConvertError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ConvertError::Io {
            path: path.into(),
            error: source,
        }
    }

    pub(crate) fn config(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        ConvertError::Config {
            path: path.into(),
            message: message.into(),
        }
    }

    pub(crate) fn tensor(name: impl Into<String>, message: impl Into<String>) -> Self {
        ConvertError::Tensor {
            name: name.into(),
            message: message.into(),
        }
    }
}

/// Reads and parses a JSON file, naming the file in any error. Only `tokenizer.json`
/// may be large.
pub(crate) fn read_json(path: &std::path::Path) -> Result<serde_json::Value> {
    let limit = if path.file_name().is_some_and(|n| n == "tokenizer.json") {
        crate::files::MAX_TOKENIZER_BYTES
    } else {
        crate::files::MAX_CONFIG_BYTES
    };
    let text = crate::files::read_text_limited(path, limit)?;
    serde_json::from_str(&text).map_err(|error| ConvertError::Json {
        path: path.to_path_buf(),
        error,
    })
}
