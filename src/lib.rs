//! glm: run the GLM model family locally.
//!
//! `cli` parses arguments and dispatches to `commands`; `engine` is the only module that
//! touches llama.cpp; `chat` renders conversations with the model's template; the
//! `glm-convert` crate turns Hugging Face checkpoints into GGUF files.

pub mod chat;
pub mod cli;
pub mod commands;
pub mod engine;
pub mod model_source;
pub mod progress;
pub mod signals;
