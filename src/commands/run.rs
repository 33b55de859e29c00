use anyhow::Result;

use super::reply::ReplyPrinter;
use crate::chat::prompt_opens_thinking;
use crate::cli::RunArgs;
use crate::engine::{ChatSession, GenerationStats};

pub fn run(args: &RunArgs) -> Result<()> {
    let user_text = super::text_argument(&args.prompt)?;
    let draft = &args.generation.draft;
    let (engine, model_path) = super::load_engine_and_path(&args.model, Some(draft))?;
    let prompt = super::prompt_text(&engine, &args.prompt_format, &user_text, &args.images)?;
    let (sampling, _) = super::sampling(&args.generation, &engine);
    let mut output = ReplyPrinter::new(prompt_opens_thinking(&prompt), !args.generation.hide_reasoning);
    let context = super::context_options(&args.model.context, Some(draft));
    let mut on_text = |text: &str| output.push(text);
    let stats = if args.images.is_empty() {
        engine.check_text_fits(&prompt, engine.context_size(&context, 0)?)?;
        let tokens = engine.tokenize(&prompt);
        engine.generate(&tokens, args.generation.max_tokens, &sampling, &context, &mut on_text)?
    } else {
        let mut projector = super::load_projector(&engine, &model_path, args.mmproj.as_deref(), context.threads)?;
        let mut session = ChatSession::new(&engine, &context)?;
        session.respond_with_images(
            &mut projector,
            &prompt,
            &args.images,
            args.generation.max_tokens,
            &sampling,
            &mut on_text,
        )?
    };
    if let Err(e) = output.finish() {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(anyhow::Error::new(e).context("writing the answer to standard output"));
        }
    }
    eprintln!("{}", summary(&stats));
    Ok(())
}

/// The end-of-run line: speeds, and drafting when it happened.
pub fn summary(stats: &GenerationStats) -> String {
    let mut line = format!(
        "prompt: {} tokens, {:.1} tok/s | generation: {} tokens, {:.1} tok/s",
        stats.prompt_tokens,
        stats.prompt_rate(),
        stats.generated_tokens,
        stats.generation_rate()
    );
    if stats.draft.drafted > 0 {
        line += &format!(
            " | mtp: {} drafted, {} accepted ({:.1}%)",
            stats.draft.drafted,
            stats.draft.accepted,
            100.0 * stats.draft.acceptance_rate()
        );
    }
    line
}
