//! glm: run the GLM model family locally.
//!
//! `cli` parses arguments and dispatches to `commands`; `engine` is the only module that
//! touches llama.cpp; `chat` renders conversations with the model's template; the
//! `glm-convert` crate turns Hugging Face checkpoints into GGUF files.

//!
//! The library's surface is what the binary and the tests use: [`run`] (the whole CLI),
//! [`install_signal_handlers`], [`one_line`] for errors, and the `chat` and `engine` layers; everything else is
//! private, so the compiler reports what nothing uses.

pub mod chat;
mod cli;
mod commands;
mod config;
pub mod engine;
pub mod hub;
mod model_source;
mod models;
mod progress;
mod serve;
mod signals;
mod terminal;

pub use cli::run;
pub use signals::install as install_signal_handlers;

/// An error as one line: the outermost message and its causes, each said once (a cause
/// whose text the line already holds, as when a message quotes its source, is left out).
pub fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    #[test]
    fn each_cause_is_said_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory (os error 2)");
        let quoted = anyhow::Error::new(io).context("model.gguf: No such file or directory (os error 2)");
        assert_eq!(
            super::one_line(&quoted.context("loading the model")),
            "loading the model: model.gguf: No such file or directory (os error 2)"
        );
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(super::one_line(&plain), "outer: inner");
    }
}
