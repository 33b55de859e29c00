//! `glm chat`: the interactive REPL (rustyline: history, editing, completion), and the
//! plain line-per-turn mode used when stdin is not a terminal.

mod editor;
mod settings;
mod slash_commands;

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};

use editor::{history_file, prompt_user, Prompted};
use slash_commands::{dispatch, Flow};

use super::reply::{ReasoningDisplay, Reply, ReplyPrinter};
use crate::chat::{prompt_opens_thinking, ChatTemplate, Conversation, RenderOptions};
use crate::cli::{ChatArgs, GenerationArgs};
use crate::engine::{ChatSession, Engine, GenerationStats, Projector, Sampling};

/// Everything one chat keeps between turns.
struct ChatState<'e> {
    session: ChatSession<'e>,
    template: ChatTemplate,
    render: RenderOptions,
    conversation: Conversation,
    generation: GenerationArgs,
    sampling: Sampling,
    /// Where each sampling value came from (`/set` shows it).
    sampling_sources: super::SamplingSources,
    /// Where the seed and max-tokens came from (`/set` and `/show` show it).
    other_sources: settings::OtherSources,
    show_reasoning: bool,
    /// `--reasoning-format none`: shown reasoning goes in the answer, with its tags.
    inline_reasoning: bool,
    last: Option<GenerationStats>,
    /// Plain output for scripts: no notices on stdout.
    interactive: bool,
    /// Images attached with /image, sent with the next message.
    pending_images: Vec<PathBuf>,
    /// The vision projector, loaded at the first image.
    projector: Option<Projector>,
    projector_path: Option<PathBuf>,
    model_path: PathBuf,
    engine: &'e Engine,
    threads: i32,
}

pub fn run(args: &ChatArgs) -> Result<()> {
    let draft = &args.generation.draft;
    let (engine, model_path) = super::load_engine_and_path(&args.model, Some(draft))?;
    let template = super::chat_template(&engine)?;
    let render = super::render_options(&engine, &args.prompt_format, args.prompt_format.enable_thinking())?;
    let context = super::context_options(&args.model.context, Some(draft));
    let (sampling, sampling_sources) = super::sampling(&args.generation, &engine);
    crate::terminal::detail(format_args!("seed: {}", sampling.seed));
    let mut session = ChatSession::new(&engine, &context)?;
    crate::terminal::detail(format_args!("context: {} tokens", session.n_ctx()));
    session.watch_prompts(crate::progress::PromptProgress::watcher());
    let interactive = std::io::stdin().is_terminal();
    let mut state = ChatState {
        session,
        template,
        render,
        conversation: Conversation::new(args.prompt_format.system.clone()),
        sampling,
        sampling_sources,
        other_sources: settings::OtherSources::from_flags(&args.generation),
        generation: args.generation.clone(),
        show_reasoning: !args.generation.hide_reasoning,
        inline_reasoning: args.generation.reasoning_display() == ReasoningDisplay::Inline,
        last: None,
        interactive,
        pending_images: Vec::new(),
        projector: None,
        projector_path: args.mmproj.clone(),
        model_path,
        engine: &engine,
        threads: context.threads,
    };
    if interactive {
        // Only a person at the terminal gets "Ctrl-C stops the answer"; a script fed
        // through a pipe keeps the usual meaning, stop the program.
        crate::signals::claim_interrupts();
        repl(&mut state)
    } else {
        scripted(&mut state)
    }
}

/// One turn per line (or `"""` block, or lines joined by a trailing `\`) from stdin;
/// answers printed plainly. A failed command or turn is reported and the script goes on,
/// like at the terminal; the exit status tells the caller that something failed.
fn scripted(state: &mut ChatState) -> Result<()> {
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut failures = 0;
    while let Some(text) = next_scripted_message(&mut input)? {
        match handle(state, &text) {
            Ok(Flow::Continue) => {}
            Ok(Flow::Leave) => break,
            // The reader has gone (`| head`): nobody is left to tell, as with `glm run`.
            Err(e) if is_broken_pipe(&e) => return Ok(()),
            Err(e) => {
                eprintln!("error: {}", crate::one_line(&e));
                failures += 1;
            }
        }
    }
    if failures > 0 {
        bail!("{failures} of the commands and messages read from standard input failed (see above)");
    }
    Ok(())
}

/// The next message of a script, gathered from as many lines as it spans.
fn next_scripted_message<R: BufRead>(input: &mut R) -> Result<Option<String>> {
    let Some(first) = bounded_line(input)? else {
        return Ok(None);
    };
    let mut failure = None;
    let message = gather_message(first, || {
        bounded_line(input).unwrap_or_else(|e| {
            failure = Some(e);
            None
        })
    });
    if let Some(e) = failure {
        return Err(e);
    }
    message.map(Some)
}

/// A message or a command, the same from the terminal and from a script.
fn handle(state: &mut ChatState, text: &str) -> Result<Flow> {
    if text.trim().is_empty() {
        return Ok(Flow::Continue);
    }
    if let Some(command) = text.trim().strip_prefix('/') {
        return dispatch(state, command);
    }
    all_or_nothing(state, |state| {
        push_user(state, text);
        answer(state)
    })?;
    Ok(Flow::Continue)
}

/// Runs a turn; when it fails, the conversation and the attached images are put back as
/// they were before it. Otherwise a message that failed (too long, a template error, an
/// interrupted evaluation) would be sent again with every later one, and the messages
/// dropped to make room for it would stay lost.
fn all_or_nothing(state: &mut ChatState, turn: impl FnOnce(&mut ChatState) -> Result<()>) -> Result<()> {
    let conversation = state.conversation.clone();
    let images = state.pending_images.clone();
    let result = turn(state);
    if result.is_err() {
        state.conversation = conversation;
        state.pending_images = images;
    }
    result
}

/// Whether `e` comes from writing to a pipe whose reader has gone.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The longest line a script may send (a turn is bounded by the context anyway).
const MAX_LINE_BYTES: u64 = 16 << 20;

/// The next line of `input` without its line end, refusing endless lines (`/dev/zero`).
fn bounded_line<R: BufRead>(input: &mut R) -> Result<Option<String>> {
    let mut line = Vec::new();
    let read = Read::take(&mut *input, MAX_LINE_BYTES + 1)
        .read_until(b'\n', &mut line)
        .context("reading standard input")?;
    if read == 0 {
        return Ok(None);
    }
    if line.len() as u64 > MAX_LINE_BYTES {
        bail!("standard input: a line is longer than {MAX_LINE_BYTES} bytes");
    }
    if line.ends_with(b"\n") {
        line.pop();
        if line.ends_with(b"\r") {
            line.pop();
        }
    }
    String::from_utf8(line)
        .map(Some)
        .map_err(|_| anyhow!("standard input: a line is not UTF-8 text"))
}

/// The user's message, with any images attached by /image.
fn push_user(state: &mut ChatState, text: &str) {
    let images = std::mem::take(&mut state.pending_images);
    state.conversation.push_user(text, &images);
}

fn repl(state: &mut ChatState) -> Result<()> {
    let history = history_file();
    eprintln!("glm chat — /help for commands, Ctrl-D to leave.");
    loop {
        // While the editor reads, Ctrl-C reaches it and not our handler; from Enter on,
        // a Ctrl-C is meant for the answer to this message, even before it streams.
        crate::signals::clear_interrupt();
        let text = match prompt_user(history.as_deref())? {
            Prompted::Message(text) => text,
            Prompted::Eof => break,
            Prompted::Interrupted => {
                eprintln!("(Ctrl-C: type /exit or press Ctrl-D to leave)");
                continue;
            }
        };
        match handle(state, &text) {
            Ok(Flow::Continue) => {}
            Ok(Flow::Leave) => break,
            Err(e) if is_broken_pipe(&e) => return Ok(()),
            Err(e) if e.chain().any(|cause| cause.is::<crate::engine::Interrupted>()) => {
                eprintln!("(interrupted before the answer: the message was not sent)");
            }
            Err(e) => eprintln!("error: {}", crate::one_line(&e)),
        }
    }
    Ok(())
}

/// One message from its first line and the lines after it, read only as far as needed:
/// a `"""` block, lines continued with a trailing `\`, or the line alone. The terminal
/// and scripts both read messages this way, so a script types what a person would.
fn gather_message(first: String, mut next_line: impl FnMut() -> Option<String>) -> Result<String> {
    if let Some(rest) = first.trim_start().strip_prefix("\"\"\"") {
        return read_block(rest, next_line);
    }
    let mut text = first;
    while text.ends_with('\\') {
        text.pop();
        text.push('\n');
        match next_line() {
            Some(line) => text.push_str(&line),
            None => break,
        }
    }
    Ok(text)
}

/// The rest of a `"""` block whose first line (after the quotes) is `first`.
fn read_block(first: &str, mut next_line: impl FnMut() -> Option<String>) -> Result<String> {
    if let Some(body) = first.strip_suffix("\"\"\"") {
        return Ok(body.to_owned());
    }
    let mut lines = vec![first.to_owned()];
    loop {
        let Some(line) = next_line() else {
            bail!("input ended inside a \"\"\" block");
        };
        if let Some(last) = line.strip_suffix("\"\"\"") {
            lines.push(last.to_owned());
            break;
        }
        lines.push(line);
    }
    Ok(lines.join("\n").trim_matches('\n').to_owned())
}

fn stats(state: &ChatState) {
    let Some(s) = &state.last else {
        eprintln!("(no answer yet)");
        return;
    };
    eprintln!(
        "prompt: {} new tokens evaluated ({} reused from the cache), {:.1} tok/s\n\
         answer: {} tokens, {:.1} tok/s\n\
         context: {} messages",
        s.prompt_tokens,
        s.reused_tokens,
        s.prompt_rate(),
        s.generated_tokens,
        s.generation_rate(),
        state.conversation.messages().len()
    );
    if state.session.drafts(&state.sampling) || s.draft.drafted > 0 {
        eprintln!(
            "mtp: {} drafted, {} accepted ({:.1}%)",
            s.draft.drafted,
            s.draft.accepted,
            100.0 * s.draft.acceptance_rate()
        );
    }
}

fn notice(state: &ChatState, text: &str) {
    if state.interactive {
        eprintln!("{text}");
    }
}

/// The rendered prompt and its tokens, after dropping the fewest oldest exchanges that
/// make it fit with room for the answer. The cut is found by bisection, so a long loaded
/// conversation costs a few renders, not one per dropped exchange.
fn fit_to_context(state: &mut ChatState) -> Result<(String, Vec<i32>)> {
    let n_ctx = state.session.n_ctx();
    let room = state.generation.max_tokens.min(n_ctx / 4);
    if let Some(fitted) = render_if_fits(state, &state.conversation, n_ctx - room)? {
        return Ok(fitted);
    }
    let cuts = state.conversation.cut_points();
    let (mut low, mut high) = (0, cuts.len());
    let mut best = None;
    while low < high {
        let middle = (low + high) / 2;
        let mut trimmed = state.conversation.clone();
        trimmed.drop_oldest(cuts[middle]);
        match render_if_fits(state, &trimmed, n_ctx - room)? {
            Some(fitted) => {
                best = Some((cuts[middle], fitted));
                high = middle;
            }
            None => low = middle + 1,
        }
    }
    let Some((dropped, fitted)) = best else {
        bail!("the message does not fit in the context of {n_ctx} tokens with room for the answer; raise --ctx-size");
    };
    state.conversation.drop_oldest(dropped);
    eprintln!("(context full: dropped the oldest {dropped} messages)");
    Ok(fitted)
}

/// The prompt and tokens of `conversation` when they fit in `limit` tokens.
fn render_if_fits(state: &ChatState, conversation: &Conversation, limit: usize) -> Result<Option<(String, Vec<i32>)>> {
    let prompt = state.template.render(&conversation.messages(), &state.render)?;
    if prompt.len() / state.engine.max_token_bytes() > limit {
        return Ok(None);
    }
    let tokens = state.session.tokens_for(&prompt);
    Ok((tokens.len() <= limit).then_some((prompt, tokens)))
}

/// Renders the conversation, makes room in the context if needed, and streams the reply.
fn answer(state: &mut ChatState) -> Result<()> {
    let (prompt, tokens) = fit_to_context(state)?;
    let display = match (state.show_reasoning, state.inline_reasoning) {
        (false, _) => ReasoningDisplay::Hidden,
        (true, true) => ReasoningDisplay::Inline,
        (true, false) => ReasoningDisplay::Apart,
    };
    let mut printer = ReplyPrinter::with_display(prompt_opens_thinking(&prompt), display);
    let generated = generate(state, &prompt, &tokens, &mut printer);
    // Also after a failure midway, so the streamed line and the dimmed reasoning end.
    let written = printer.finish().context("writing the answer");
    let stats = generated?;
    let reply: Reply = written?;
    if crate::signals::take_interrupt() {
        eprintln!("(interrupted)");
    }
    std::io::stdout().flush().context("writing the answer")?;
    state
        .conversation
        .push_assistant(&reply.content, &reply.reasoning, &reply.tool_calls);
    state.conversation.note_seed(state.sampling.seed);
    if !reply.tool_calls.is_empty() {
        notice(state, "(give the result with /tool <json>)");
    }
    state.last = Some(stats);
    Ok(())
}

/// Evaluates the prompt (with the conversation's images, if any) and streams the reply
/// into `printer`.
fn generate(
    state: &mut ChatState,
    prompt: &str,
    tokens: &[i32],
    printer: &mut ReplyPrinter,
) -> Result<GenerationStats> {
    let images = state.conversation.images();
    let mut on_text = |text: &str| printer.push(text) && !crate::signals::interrupted();
    let (max_tokens, sampling) = (state.generation.max_tokens, state.sampling.clone());
    if images.is_empty() {
        return state.session.respond(tokens, max_tokens, &sampling, &mut on_text);
    }
    let prompt = super::place_images(prompt, images.len())?;
    load_projector(state)?;
    let projector = state.projector.as_mut().context("vision projector")?;
    state
        .session
        .respond_with_images(projector, &prompt, &images, max_tokens, &sampling, &mut on_text)
}

/// Loads the vision projector once, at the first image, and remembers where it was
/// found (`/show` names it, `/save` will not overwrite it).
fn load_projector(state: &mut ChatState) -> Result<()> {
    if state.projector.is_none() {
        let path = crate::model_source::projector_for(&state.model_path, state.projector_path.as_deref())?;
        state.projector = Some(state.engine.load_projector(&path, state.threads)?);
        state.projector_path = Some(path);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gathered(first: &str, rest: &[&str]) -> Result<String> {
        let mut lines = rest.iter().map(|l| l.to_string());
        gather_message(first.to_owned(), || lines.next())
    }

    #[test]
    fn a_trailing_backslash_continues_the_message() {
        assert_eq!(gathered("first \\", &["second"]).unwrap(), "first \nsecond");
        assert_eq!(gathered("a\\", &["b\\", "c", "not read"]).unwrap(), "a\nb\nc");
        assert_eq!(gathered("alone", &["not read"]).unwrap(), "alone");
        assert_eq!(gathered("cut \\", &[]).unwrap(), "cut \n", "input ended");
    }

    #[test]
    fn blocks_run_to_the_closing_quotes() {
        assert_eq!(
            gathered("\"\"\"one", &["two\\", "three\"\"\""]).unwrap(),
            "one\ntwo\\\nthree"
        );
        assert_eq!(gathered("\"\"\"inline\"\"\"", &[]).unwrap(), "inline");
        assert!(gathered("\"\"\"open", &["never closed"]).is_err());
    }

    #[test]
    fn broken_pipes_are_found_under_context() {
        let pipe = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        let e = anyhow::Error::new(pipe).context("writing the answer");
        assert!(is_broken_pipe(&e));
        let other = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::StorageFull));
        assert!(!is_broken_pipe(&other.context("writing the answer")));
    }
}
