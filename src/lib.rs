//! glm: run the GLM model family locally.
//!
//! `cli` parses arguments and dispatches to `commands`; `engine` is the only module that
//! touches llama.cpp; `chat` renders conversations with the model's template; the
//! `glm-convert` crate turns Hugging Face checkpoints into GGUF files.

//!
//! The library's surface is what the binary and the tests use: [`run`] (the whole CLI),
//! [`install_signal_handlers`], and the `chat` and `engine` layers; everything else is
//! private, so the compiler reports what nothing uses.

pub mod chat;
mod cli;
mod commands;
pub mod engine;
mod model_source;
mod progress;
mod signals;
mod terminal;

pub use cli::run;
pub use signals::install as install_signal_handlers;
