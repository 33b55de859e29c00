//! `glm imatrix`: an importance matrix from a text, for `--imatrix` of convert and
//! quantize (see `engine::imatrix` for the method).

use std::path::Path;

use anyhow::{bail, Result};
use glm_convert::ImatrixSource;
use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::ImatrixArgs;
use crate::engine::{ChunkDone, ImatrixOptions};

/// llama-imatrix's chunk size.
const DEFAULT_CHUNK: u32 = 512;
/// Calibration texts are a few MB; this bounds what a wrong file name can cost.
const MAX_TEXT_BYTES: u64 = 1 << 30;

pub fn run(args: &ImatrixArgs) -> Result<()> {
    let output = glm_convert::files::output_in_folder(&args.output, Path::new("imatrix.gguf"))?;
    glm_convert::files::check_output(&output, &[&args.model.model, &args.file], args.force)?;
    let text = glm_convert::files::read_limited(&args.file, MAX_TEXT_BYTES)?;
    let (engine, _) = super::load_engine_and_path(&args.model, None)?;
    let options = ImatrixOptions {
        chunk_size: args.model.context.ctx_size.unwrap_or(DEFAULT_CHUNK),
        max_chunks: args.chunks.map(|n| n as usize),
        process_output: args.process_output,
    };
    let context = super::context_options(&args.model.context, None);
    if options.chunk_size > engine.n_ctx_train() {
        bail!(
            "-c {}: larger than the model's training context ({} tokens)",
            options.chunk_size,
            engine.n_ctx_train()
        );
    }
    let tokens = engine.document_tokens(&text);
    let chunk = options.chunk_size as usize;
    if tokens.len() < chunk {
        bail!(
            "{}: {} tokens, fewer than one chunk of -c {chunk}; give more text or a smaller -c",
            args.file.display(),
            tokens.len()
        );
    }
    let bar = chunk_bar();
    let result = engine.importance(&tokens, &options, &context, &mut |done: ChunkDone| {
        bar.set_length(done.chunks as u64);
        bar.set_position(done.chunk as u64);
        bar.set_message(format!("perplexity {:.4}", done.perplexity));
    });
    bar.finish_and_clear();
    let imatrix = result?;
    let source = ImatrixSource {
        datasets: vec![args.file.display().to_string()],
        chunk_count: imatrix.chunks as u32,
        chunk_size: options.chunk_size,
    };
    glm_convert::write_imatrix(&output, &imatrix.stats, &source)?;
    eprintln!(
        "wrote {} ({} matrices from {} chunks of {} tokens; perplexity {:.4})",
        output.display(),
        imatrix.stats.len(),
        imatrix.chunks,
        options.chunk_size,
        imatrix.perplexity
    );
    Ok(())
}

/// Chunks done and the perplexity so far: drawn on a terminal, silent when piped.
fn chunk_bar() -> ProgressBar {
    let bar = ProgressBar::hidden();
    if crate::terminal::stderr_styled() {
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    }
    bar.set_style(
        ProgressStyle::with_template("{spinner} chunk {pos}/{len} [{bar:30}] {msg} ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}
