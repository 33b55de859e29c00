use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::json;

use crate::cli::LogitsArgs;
use crate::engine::ChatSession;

/// The file name `-o DIR` writes in that folder.
const DEFAULT_NAME: &str = "logits.json";

/// Where the JSON goes: `-o -` is standard output.
enum Output {
    Stdout,
    File(PathBuf),
}

pub fn run(args: &LogitsArgs) -> Result<()> {
    let output = output(args)?;
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
            &output,
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
    write_json(&output, &json!({"tokens": tokens, "logits": logits}))
}

/// Checked before the model loads, so a bad output costs nothing.
fn output(args: &LogitsArgs) -> Result<Output> {
    if args.output.as_os_str() == "-" {
        return Ok(Output::Stdout);
    }
    let path = glm_convert::files::output_in_folder(&args.output, Path::new(DEFAULT_NAME))?;
    let mut inputs = vec![args.model.model.as_path()];
    inputs.extend(args.mmproj.as_deref());
    inputs.extend(args.images.iter().map(PathBuf::as_path));
    inputs.extend(args.prompt_format.tools.as_deref());
    glm_convert::files::check_output(&path, &inputs, args.force)?;
    Ok(Output::File(path))
}

fn write_json(output: &Output, body: &serde_json::Value) -> Result<()> {
    let bytes = serde_json::to_vec(body)?;
    match output {
        Output::File(path) => Ok(glm_convert::files::write_bytes(path, &bytes)?),
        Output::Stdout => write_stdout(&bytes),
    }
}

/// A reader that stops early (`| head`) is no error.
fn write_stdout(bytes: &[u8]) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(bytes)
        .and_then(|()| stdout.write_all(b"\n"))
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        result => result.context("standard output"),
    }
}
