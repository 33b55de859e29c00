use std::path::{Path, PathBuf};

use anyhow::Result;
use serde_json::json;

use crate::cli::LogitsArgs;
use crate::engine::ChatSession;

pub fn run(args: &LogitsArgs) -> Result<()> {
    let mut inputs = vec![args.model.model.as_path()];
    inputs.extend(args.mmproj.as_deref());
    inputs.extend(args.images.iter().map(PathBuf::as_path));
    inputs.extend(args.prompt_format.tools.as_deref());
    glm_convert::files::check_output(&args.output, &inputs, args.force)?;
    let (engine, model_path) = super::load_engine_and_path(&args.model, None)?;
    if !args.images.is_empty() {
        let text = super::prompt_text(
            &engine,
            &args.prompt_format,
            &super::prompt_input_text(&args.input)?,
            &args.images,
        )?;
        let context = super::context_options(&args.model.context, None);
        let mut projector = super::load_projector(&engine, &model_path, args.mmproj.as_deref(), context.threads)?;
        let mut session = ChatSession::new(&engine, &context)?;
        let (tokens, logits) = session.logits_with_images(&mut projector, &text, &args.images)?;
        return write_json(
            &args.output,
            &json!({"tokens": tokens, "images": args.images.len(), "logits": [logits]}),
        );
    }
    let tokens = match &args.tokens {
        Some(tokens) => tokens.clone(),
        None => {
            let user_text = super::prompt_input_text(&args.input)?;
            let text = super::prompt_text(&engine, &args.prompt_format, &user_text, &[])?;
            engine.check_text_fits(&text, engine.n_ctx_train())?;
            engine.tokenize(&text)
        }
    };
    let logits = engine.logits(&tokens, args.all, &super::context_options(&args.model.context, None))?;
    write_json(&args.output, &json!({"tokens": tokens, "logits": logits}))
}

fn write_json(path: &Path, body: &serde_json::Value) -> Result<()> {
    Ok(glm_convert::files::write_bytes(path, &serde_json::to_vec(body)?)?)
}
