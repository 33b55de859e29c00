use anyhow::Result;

use crate::cli::TokenizeArgs;
use crate::engine::{Engine, LoadOptions};

pub fn run(args: &TokenizeArgs) -> Result<()> {
    let text = super::text_argument(args.text.as_deref().unwrap_or("-"))?;
    let path = crate::model_source::resolve(&args.model)?;
    let engine = Engine::load(
        &path,
        &LoadOptions {
            vocab_only: true,
            ..Default::default()
        },
    )?;
    println!("{}", serde_json::to_string(&engine.tokenize(&text))?);
    Ok(())
}
