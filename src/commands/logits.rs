use anyhow::{Context, Result};
use serde_json::json;

use crate::cli::LogitsArgs;

pub fn run(args: &LogitsArgs) -> Result<()> {
    let engine = super::load_engine(&args.model)?;
    let tokens = match (&args.tokens, &args.prompt) {
        (Some(tokens), _) => tokens.clone(),
        (None, Some(prompt)) => {
            let text = super::prompt_text(&engine, &args.prompt_format, &super::text_argument(prompt)?, 0)?;
            engine.tokenize(&text)
        }
        (None, None) => anyhow::bail!("give --prompt or --tokens"),
    };
    let logits = engine.logits(&tokens, args.all, &super::context_options(&args.model))?;
    let body = serde_json::to_vec(&json!({"tokens": tokens, "logits": logits}))?;
    write_atomically(&args.output, &body)
}

/// Writes through a temporary file so a failed run never leaves a truncated JSON.
fn write_atomically(path: &std::path::Path, body: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let mut temp =
        tempfile::NamedTempFile::new_in(&dir).with_context(|| format!("{}: cannot write here", dir.display()))?;
    std::io::Write::write_all(&mut temp, body).with_context(|| format!("{}: write failed", path.display()))?;
    temp.persist(path)
        .with_context(|| format!("{}: cannot create", path.display()))?;
    Ok(())
}
