use anyhow::Result;

use super::reply::ReplyPrinter;
use crate::chat::prompt_opens_thinking;
use crate::cli::RunArgs;
use crate::engine::ChatSession;

pub fn run(args: &RunArgs) -> Result<()> {
    let user_text = super::text_argument(&args.prompt)?;
    let (engine, model_path) = super::load_engine_and_path(&args.model)?;
    let prompt = super::prompt_text(&engine, &args.prompt_format, &user_text, &args.images)?;
    let sampling = super::sampling(&args.generation);
    let mut output = ReplyPrinter::new(prompt_opens_thinking(&prompt), !args.generation.hide_reasoning);
    let context = super::context_options(&args.model);
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
    eprintln!(
        "prompt: {} tokens, {:.1} tok/s | generation: {} tokens, {:.1} tok/s",
        stats.prompt_tokens,
        stats.prompt_rate(),
        stats.generated_tokens,
        stats.generation_rate()
    );
    Ok(())
}
