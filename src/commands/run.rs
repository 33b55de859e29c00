use std::io::{IsTerminal, Write};

use anyhow::Result;

use crate::chat::{prompt_opens_thinking, Segment, ThinkingSplitter};
use crate::cli::RunArgs;
use crate::engine::Sampling;

pub fn run(args: &RunArgs) -> Result<()> {
    let user_text = super::text_argument(&args.prompt)?;
    let engine = super::load_engine(&args.model)?;
    let prompt = super::prompt_text(&engine, &args.prompt_format, &user_text)?;
    let tokens = engine.tokenize(&prompt);
    let sampling = Sampling {
        temperature: args.temp,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        repeat_penalty: args.repeat_penalty,
        repeat_last_n: args.repeat_last_n,
        seed: args.seed.unwrap_or_else(rand_seed),
    };
    let mut output = AnswerOutput::new(prompt_opens_thinking(&prompt), args.hide_reasoning);
    let mut write_failed = None;
    let context = super::context_options(&args.model);
    let stats = engine.generate(&tokens, args.max_tokens, &sampling, &context, |text| {
        match output.push(text) {
            Ok(()) => true,
            Err(e) => {
                write_failed = Some(e);
                false
            }
        }
    })?;
    let finished = output.finish();
    if let Some(e) = write_failed.or(finished.err()) {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(e.into());
        }
    }
    let rate = |n: usize, t: std::time::Duration| n as f64 / t.as_secs_f64().max(1e-9);
    eprintln!(
        "prompt: {} tokens, {:.1} tok/s | generation: {} tokens, {:.1} tok/s",
        stats.prompt_tokens,
        rate(stats.prompt_tokens, stats.prompt_time),
        stats.generated_tokens,
        rate(stats.generated_tokens, stats.generation_time)
    );
    Ok(())
}

/// Answer text to stdout; reasoning to stderr (dim on a terminal) or nowhere.
struct AnswerOutput {
    splitter: ThinkingSplitter,
    hide_reasoning: bool,
    dim: bool,
    reasoning_open: bool,
    wrote_answer: bool,
}

impl AnswerOutput {
    fn new(opened_by_prompt: bool, hide_reasoning: bool) -> Self {
        Self {
            splitter: ThinkingSplitter::new(opened_by_prompt),
            hide_reasoning,
            dim: std::io::stderr().is_terminal(),
            reasoning_open: false,
            wrote_answer: false,
        }
    }

    fn push(&mut self, text: &str) -> std::io::Result<()> {
        let segments = self.splitter.push(text);
        self.write(segments)
    }

    fn finish(&mut self) -> std::io::Result<()> {
        let segments = self.splitter.finish();
        self.write(segments)?;
        self.close_reasoning()?;
        if self.wrote_answer {
            writeln!(std::io::stdout())?;
        }
        Ok(())
    }

    fn write(&mut self, segments: Vec<Segment>) -> std::io::Result<()> {
        for segment in segments {
            match segment {
                Segment::Reasoning(text) if !self.hide_reasoning => {
                    let mut err = std::io::stderr().lock();
                    if !self.reasoning_open && self.dim {
                        err.write_all(b"\x1b[2m")?;
                    }
                    self.reasoning_open = true;
                    err.write_all(text.as_bytes())?;
                    err.flush()?;
                }
                Segment::Reasoning(_) => {}
                Segment::Answer(text) => {
                    self.close_reasoning()?;
                    // The newline after </think> belongs to the template's layout.
                    let text = if self.wrote_answer {
                        text.as_str()
                    } else {
                        text.trim_start_matches('\n')
                    };
                    if text.is_empty() {
                        continue;
                    }
                    let mut out = std::io::stdout().lock();
                    out.write_all(text.as_bytes())?;
                    out.flush()?;
                    self.wrote_answer = true;
                }
            }
        }
        Ok(())
    }

    fn close_reasoning(&mut self) -> std::io::Result<()> {
        if self.reasoning_open {
            let mut err = std::io::stderr().lock();
            if self.dim {
                err.write_all(b"\x1b[0m")?;
            }
            err.write_all(b"\n")?;
            self.reasoning_open = false;
        }
        Ok(())
    }
}

fn rand_seed() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() ^ d.as_secs() as u32)
}
