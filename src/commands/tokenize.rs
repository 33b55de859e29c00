use std::path::Path;

use anyhow::{Context, Result};

use crate::cli::TokenizeArgs;
use crate::engine::{Engine, LoadOptions};

pub fn run(args: &TokenizeArgs) -> Result<()> {
    let text = super::text_argument(args.text.as_deref().unwrap_or("-"))?;
    // A checkpoint folder's tokenizer is read without converting its weights: a GGUF of
    // its metadata alone, in a temporary folder, is all llama.cpp needs.
    let scratch;
    let path = if args.model.is_dir() {
        scratch = tempfile::tempdir().context("cannot create a temporary folder")?;
        let vocabulary = scratch.path().join("vocabulary.gguf");
        glm_convert::write_vocabulary(&args.model, &vocabulary)?;
        vocabulary
    } else {
        crate::model_source::resolve(&args.model, None)?
    };
    println!("{}", serde_json::to_string(&tokenize(&path, &text)?)?);
    Ok(())
}

fn tokenize(path: &Path, text: &str) -> Result<Vec<i32>> {
    let engine = Engine::load(
        path,
        &LoadOptions {
            vocab_only: true,
            ..Default::default()
        },
    )?;
    Ok(engine.tokenize(text))
}
