use std::io::IsTerminal;

use anyhow::Result;

use super::reply::ReplyPrinter;
use crate::chat::prompt_opens_thinking;
use crate::cli::{ChatArgs, RunArgs};
use crate::engine::{ChatSession, GenerationStats, StopReason};
use crate::progress::PromptProgress;

/// The shell's status for a program stopped by Ctrl-C (128 + SIGINT).
const INTERRUPTED_STATUS: i32 = 130;

pub fn run(args: RunArgs) -> Result<()> {
    let no_prompt = args.input.source().is_none() && args.images.is_empty();
    if no_prompt && std::io::stdin().is_terminal() {
        // As `ollama run MODEL`: no prompt, and a person at the terminal, is a chat.
        return super::chat::run(&ChatArgs {
            prompt_format: args.prompt_format,
            mmproj: args.mmproj,
            model: args.model,
            generation: args.generation,
        });
    }
    let user_text = super::prompt_input_text(&args.input)?;
    let draft = &args.generation.draft;
    let (engine, model_path) = super::load_engine_and_path(&args.model, Some(draft))?;
    let prompt = super::prompt_text(&engine, &args.prompt_format, &user_text, &args.images)?;
    let (sampling, _) = super::sampling(&args.generation, &engine);
    crate::terminal::detail(format_args!("seed: {}", sampling.seed));
    let mut output = ReplyPrinter::with_display(prompt_opens_thinking(&prompt), args.generation.reasoning_display());
    let context = super::context_options(&args.model.context, Some(draft));
    let mut session = ChatSession::new(&engine, &context)?;
    crate::terminal::detail(format_args!("context: {} tokens", session.n_ctx()));
    session.watch_prompts(PromptProgress::watcher());
    // From here on Ctrl-C stops the prompt or the answer, and the stats are still shown.
    crate::signals::claim_interrupts();
    let mut on_text = |text: &str| output.push(text) && !crate::signals::interrupted();
    let generated = if args.images.is_empty() {
        engine.check_text_fits(&prompt, session.n_ctx() as u32)?;
        let tokens = engine.tokenize(&prompt);
        session.respond(&tokens, args.generation.max_tokens, &sampling, &mut on_text)
    } else {
        let mut projector = super::load_projector(&engine, &model_path, args.mmproj.as_deref(), context.threads)?;
        session.respond_with_images(
            &mut projector,
            &prompt,
            &args.images,
            args.generation.max_tokens,
            &sampling,
            &mut on_text,
        )
    };
    let stats = match generated {
        Err(e) if e.is::<crate::engine::Interrupted>() => {
            eprintln!("(interrupted during prompt evaluation)");
            std::process::exit(INTERRUPTED_STATUS);
        }
        result => result?,
    };
    let output_closed = match output.finish() {
        Ok(_) => false,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => true,
        Err(e) => return Err(anyhow::Error::new(e).context("writing the answer to standard output")),
    };
    let interrupted = stats.stop == StopReason::Stopped && !output_closed;
    eprintln!("{}", summary(&stats, output_closed));
    if interrupted {
        std::process::exit(INTERRUPTED_STATUS);
    }
    Ok(())
}

/// The end-of-run line: speeds, why generation stopped, and drafting when it happened.
pub fn summary(stats: &GenerationStats, output_closed: bool) -> String {
    let stopped = match stats.stop {
        StopReason::Stopped if output_closed => "output closed",
        reason => reason.describe(),
    };
    let mut line = format!(
        "prompt: {} tokens, {:.1} tok/s | generation: {} tokens, {:.1} tok/s | stopped: {stopped}",
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
