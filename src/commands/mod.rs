//! One module per subcommand; `cli` parses and calls `run` here.

pub mod convert;
pub mod inspect;
pub mod logits;
pub mod presets;
pub mod quantize;
pub mod reply;
pub mod run;
pub mod tokenize;

use std::io::Read;

use anyhow::{Context, Result};
use serde_json::json;

use crate::chat::{ChatTemplate, RenderOptions};
use crate::cli::{ModelArgs, PromptArgs};
use crate::engine::{ContextOptions, Engine, LoadOptions};

/// `-` means standard input.
pub fn text_argument(text: &str) -> Result<String> {
    if text != "-" {
        return Ok(text.to_owned());
    }
    let mut buffer = String::new();
    std::io::stdin()
        .read_to_string(&mut buffer)
        .context("reading the prompt from standard input")?;
    Ok(buffer)
}

pub fn load_engine(args: &ModelArgs) -> Result<Engine> {
    let path = crate::model_source::resolve(&args.model)?;
    let options = LoadOptions {
        gpu_layers: args.gpu_layers.unwrap_or(u32::MAX),
        vocab_only: false,
    };
    Engine::load(&path, &options)
}

pub fn context_options(args: &ModelArgs) -> ContextOptions {
    let cores = std::thread::available_parallelism().map_or(4, |n| n.get()) as i32;
    ContextOptions {
        ctx_size: args.ctx_size,
        threads: args.threads.unwrap_or(cores).max(1),
        cache_type: args.cache_type,
        flash_attention: args.flash_attention,
    }
}

/// The prompt text the model sees: the chat template applied to one user turn (with an
/// optional system turn), or the raw text with `--raw`.
pub fn prompt_text(engine: &Engine, format: &PromptArgs, user_text: &str) -> Result<String> {
    if format.raw {
        return Ok(user_text.to_owned());
    }
    let source = engine
        .chat_template()
        .context("the model has no chat template; use --raw to send the text as is")?;
    let template = ChatTemplate::new(&source)?;
    let mut messages = Vec::new();
    if let Some(system) = &format.system {
        messages.push(json!({"role": "system", "content": system}));
    }
    messages.push(json!({"role": "user", "content": user_text}));
    let mut options = RenderOptions {
        add_generation_prompt: true,
        ..Default::default()
    };
    if let Some(thinking) = format.enable_thinking() {
        options.extra.insert("enable_thinking".into(), thinking.into());
    }
    for (variable, key) in [
        ("bos_token", "tokenizer.ggml.bos_token_id"),
        ("eos_token", "tokenizer.ggml.eos_token_id"),
    ] {
        if let Some(text) = engine
            .metadata(key)
            .and_then(|id| id.parse().ok())
            .and_then(|id| engine.token_text(id))
        {
            options.extra.insert(variable.into(), text.into());
        }
    }
    Ok(template.render(&messages, &options)?)
}
