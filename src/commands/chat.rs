//! `glm chat`: the interactive REPL (rustyline: history, editing, completion), and the
//! plain line-per-turn mode used when stdin is not a terminal.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use rustyline::completion::{Completer, FilenameCompleter, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::FileHistory;
use rustyline::validate::Validator;
use rustyline::{Editor, Helper};

use super::reply::{Reply, ReplyPrinter};
use crate::chat::{prompt_opens_thinking, ChatTemplate, Conversation, RenderOptions};
use crate::cli::{ChatArgs, GenerationArgs};
use crate::engine::{ChatSession, Engine, GenerationStats, Projector, Sampling};

const HELP: &str = "\
/help                 this help
/exit                 leave (or Ctrl-D)
/clear                start a new conversation (keeps the system prompt)
/system <text>        set the system prompt (empty text removes it)
/think on|off         let thinking models reason first, or answer directly
/reasoning show|hide  show the model's reasoning, or hide it
/regen                answer the last message again
/save <file>          write the conversation as JSON (OpenAI messages)
/load <file>          read a conversation saved by /save
/tool <json>          give the result of the model's tool call and let it go on
/image <file>         attach an image to your next message (vision models)
/set <param> <value>  temp, top-k, top-p, min-p, repeat-penalty, repeat-last-n, seed, max-tokens
/stats                tokens and speed of the last answer
Multi-line input: end a line with \\ to continue it, or wrap text in \"\"\" … \"\"\".";

/// The slash commands Tab completes: those /help lists, and /quit, /exit's twin.
fn command_names() -> impl Iterator<Item = &'static str> {
    HELP.lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|word| word.starts_with('/'))
        .chain(["/quit"])
}

/// Everything one chat keeps between turns.
struct ChatState<'e> {
    session: ChatSession<'e>,
    template: ChatTemplate,
    render: RenderOptions,
    conversation: Conversation,
    generation: GenerationArgs,
    sampling: Sampling,
    show_reasoning: bool,
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
    let (engine, model_path) = super::load_engine_and_path(&args.model)?;
    let template = super::chat_template(&engine)?;
    let render = super::render_options(&engine, &args.prompt_format, args.prompt_format.enable_thinking())?;
    let context = super::context_options(&args.model);
    let session = ChatSession::new(&engine, &context)?;
    let interactive = std::io::stdin().is_terminal();
    let mut state = ChatState {
        session,
        template,
        render,
        conversation: Conversation::new(args.prompt_format.system.clone()),
        sampling: super::sampling(&args.generation),
        generation: args.generation.clone(),
        show_reasoning: !args.generation.hide_reasoning,
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

/// One turn per line (or per `"""` block) from stdin; answers printed plainly.
fn scripted(state: &mut ChatState) -> Result<()> {
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    while let Some(line) = bounded_line(&mut input)? {
        let text = match line.trim_start().strip_prefix("\"\"\"") {
            Some(first) => read_block(first, || bounded_line(&mut input).ok().flatten())?,
            None => line,
        };
        if text.trim().is_empty() {
            continue;
        }
        if let Some(command) = text.trim().strip_prefix('/') {
            if !command_line(state, command)? {
                break;
            }
            continue;
        }
        push_user(state, &text);
        answer(state)?;
    }
    Ok(())
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
        if text.trim().is_empty() {
            continue;
        }
        if let Some(command) = text.trim().strip_prefix('/') {
            match command_line(state, command) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    continue;
                }
            }
        }
        push_user(state, &text);
        if let Err(e) = answer(state) {
            eprintln!("error: {e:#}");
        }
    }
    Ok(())
}

enum Prompted {
    Message(String),
    Eof,
    Interrupted,
}

/// Reads one message with a fresh line editor. The editor owns the terminal's SIGINT
/// handler while it exists, so it is dropped before the answer streams and Ctrl-C then
/// reaches our handler and stops the answer.
fn prompt_user(history: Option<&std::path::Path>) -> Result<Prompted> {
    let mut editor: Editor<ReplHelper, FileHistory> = Editor::new().context("starting the line editor")?;
    editor.set_helper(Some(ReplHelper {
        files: FilenameCompleter::new(),
    }));
    if let Some(path) = history {
        let _ = editor.load_history(path);
    }
    let text = match read_message(&mut editor) {
        Ok(Some(text)) => text,
        Ok(None) => return Ok(Prompted::Eof),
        Err(ReadlineError::Interrupted) => return Ok(Prompted::Interrupted),
        Err(e) => return Err(e).context("reading input"),
    };
    if !text.trim().is_empty() {
        let _ = editor.add_history_entry(text.as_str());
        if let Some(path) = history {
            let _ = editor.save_history(path);
        }
    }
    Ok(Prompted::Message(text))
}

/// Reads one message: a line, a line continued with `\`, or a `"""` block.
fn read_message(editor: &mut Editor<ReplHelper, FileHistory>) -> Result<Option<String>, ReadlineError> {
    let first = match editor.readline("» ") {
        Ok(line) => line,
        Err(ReadlineError::Eof) => return Ok(None),
        Err(e) => return Err(e),
    };
    if let Some(rest) = first.trim_start().strip_prefix("\"\"\"") {
        let mut next = || editor.readline("… ").ok();
        return Ok(Some(read_block(rest, &mut next).unwrap_or_default()));
    }
    let mut text = first;
    while text.ends_with('\\') {
        text.pop();
        text.push('\n');
        match editor.readline("… ") {
            Ok(line) => text.push_str(&line),
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e),
        }
    }
    Ok(Some(text))
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

/// Runs a slash command; false means leave.
fn command_line(state: &mut ChatState, command: &str) -> Result<bool> {
    let (name, argument) = command.split_once(char::is_whitespace).unwrap_or((command, ""));
    let argument = argument.trim();
    match name {
        "exit" | "quit" => return Ok(false),
        "help" => eprintln!("{HELP}"),
        "clear" => {
            state.conversation.clear();
            state.session.clear();
            notice(state, "(new conversation)");
        }
        "system" => {
            state.conversation.system = (!argument.is_empty()).then(|| argument.to_owned());
            notice(state, "(system prompt set)");
        }
        "think" => {
            let on = on_off(argument, "/think on|off")?;
            state.render.extra.insert("enable_thinking".into(), on.into());
            notice(state, if on { "(thinking on)" } else { "(thinking off)" });
        }
        "reasoning" => {
            state.show_reasoning = match argument {
                "show" => true,
                "hide" => false,
                _ => bail!("usage: /reasoning show|hide"),
            };
            notice(
                state,
                if state.show_reasoning {
                    "(reasoning shown)"
                } else {
                    "(reasoning hidden)"
                },
            );
        }
        "regen" => {
            if !state.conversation.pop_reply() {
                bail!("nothing to answer again");
            }
            answer(state)?;
        }
        "save" => {
            let path = path_argument(argument, "/save <file>")?;
            let mut inputs = vec![state.model_path.as_path()];
            inputs.extend(state.projector_path.as_deref());
            state.conversation.save(&path, &inputs)?;
            notice(
                state,
                &format!(
                    "(saved {} messages to {})",
                    state.conversation.messages().len(),
                    path.display()
                ),
            );
        }
        "load" => {
            let path = path_argument(argument, "/load <file>")?;
            state.conversation = Conversation::load(&path)?;
            notice(
                state,
                &format!(
                    "(loaded {} messages from {})",
                    state.conversation.messages().len(),
                    path.display()
                ),
            );
        }
        "tool" => {
            if argument.is_empty() {
                bail!("usage: /tool <result as JSON or text>");
            }
            state.conversation.push_tool_result(argument);
            answer(state)?;
        }
        "set" => set_parameter(state, argument)?,
        "image" => {
            let path = path_argument(argument, "/image <file>")?;
            if !path.is_file() {
                bail!("{}: no such image file", path.display());
            }
            notice(
                state,
                &format!("(image {} goes with your next message)", path.display()),
            );
            state.pending_images.push(path);
        }
        "stats" => stats(state),
        other => bail!("unknown command /{other} (try /help)"),
    }
    Ok(true)
}

fn on_off(argument: &str, usage: &str) -> Result<bool> {
    match argument {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => bail!("usage: {usage}"),
    }
}

fn path_argument(argument: &str, usage: &str) -> Result<PathBuf> {
    if argument.is_empty() {
        bail!("usage: {usage}");
    }
    Ok(PathBuf::from(argument))
}

fn set_parameter(state: &mut ChatState, argument: &str) -> Result<()> {
    let (name, value) = argument
        .split_once(char::is_whitespace)
        .context("usage: /set <param> <value>")?;
    let value = value.trim();
    let checked = |parse: fn(&str) -> Result<f32, String>| parse(value).map_err(|e| anyhow!("{name}: {e}"));
    let integer = |range: std::ops::RangeInclusive<i64>| -> Result<i32> {
        match value.parse::<i64>() {
            Ok(v) if range.contains(&v) => Ok(v as i32),
            _ => bail!(
                "{name}: {value:?} is not a whole number in {}..={}",
                range.start(),
                range.end()
            ),
        }
    };
    let s = &mut state.sampling;
    match name {
        "temp" | "temperature" => s.temperature = checked(crate::cli::temperature)?,
        "top-k" => s.top_k = integer(0..=i64::from(i32::MAX))?,
        "top-p" => s.top_p = checked(crate::cli::probability)?,
        "min-p" => s.min_p = checked(crate::cli::probability)?,
        "repeat-penalty" => s.repeat_penalty = checked(crate::cli::penalty)?,
        "repeat-last-n" => s.repeat_last_n = integer(-1..=i64::from(crate::cli::MAX_CTX))?,
        "seed" => s.seed = value.parse().with_context(|| format!("{value:?} is not a seed"))?,
        "max-tokens" => state.generation.max_tokens = crate::cli::max_tokens(value).map_err(|e| anyhow!("{e}"))?,
        other => bail!(
            "unknown parameter {other:?} (temp, top-k, top-p, min-p, repeat-penalty, repeat-last-n, seed, max-tokens)"
        ),
    }
    notice(state, &format!("({name} = {value})"));
    Ok(())
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
    let images = state.conversation.images();
    let mut printer = ReplyPrinter::new(prompt_opens_thinking(&prompt), state.show_reasoning);
    let mut on_text = |text: &str| printer.push(text) && !crate::signals::interrupted();
    let (max_tokens, sampling) = (state.generation.max_tokens, state.sampling.clone());
    let stats = if images.is_empty() {
        state.session.respond(&tokens, max_tokens, &sampling, &mut on_text)?
    } else {
        let prompt = super::place_images(&prompt, images.len())?;
        if state.projector.is_none() {
            let path = crate::model_source::projector_for(&state.model_path, state.projector_path.as_deref())?;
            state.projector = Some(state.engine.load_projector(&path, state.threads)?);
        }
        let projector = state.projector.as_mut().context("vision projector")?;
        state
            .session
            .respond_with_images(projector, &prompt, &images, max_tokens, &sampling, &mut on_text)?
    };
    let reply: Reply = printer.finish().context("writing the answer")?;
    if crate::signals::take_interrupt() {
        eprintln!("(interrupted)");
    }
    std::io::stdout().flush()?;
    state
        .conversation
        .push_assistant(&reply.content, &reply.reasoning, &reply.tool_calls);
    if !reply.tool_calls.is_empty() {
        notice(state, "(give the result with /tool <json>)");
    }
    state.last = Some(stats);
    Ok(())
}

/// `$GLM_HISTORY_FILE`, else `glm/history.txt` under the user's data directory.
/// The history file, when it is a regular file or does not exist yet: the line editor
/// would block opening a FIFO and write into a device. Without one, history stays in
/// memory for the session.
fn history_file() -> Option<PathBuf> {
    let path = match std::env::var_os("GLM_HISTORY_FILE") {
        Some(path) => PathBuf::from(path),
        None => {
            let dir = dirs::data_dir()?.join("glm");
            std::fs::create_dir_all(&dir).ok()?;
            dir.join("history.txt")
        }
    };
    match std::fs::metadata(&path) {
        Ok(meta) if !meta.is_file() => {
            eprintln!("(history not kept: {} is not a regular file)", path.display());
            None
        }
        _ => Some(path),
    }
}

/// Completes slash commands and, after them, file paths.
struct ReplHelper {
    files: FilenameCompleter,
}

impl Completer for ReplHelper {
    type Candidate = Pair;

    fn complete(&self, line: &str, pos: usize, ctx: &rustyline::Context<'_>) -> rustyline::Result<(usize, Vec<Pair>)> {
        if line.starts_with('/') && !line[..pos].contains(' ') {
            let matches = command_names()
                .filter(|c| c.starts_with(&line[..pos]))
                .map(|c| Pair {
                    display: c.to_owned(),
                    replacement: format!("{c} "),
                })
                .collect();
            return Ok((0, matches));
        }
        self.files.complete(line, pos, ctx)
    }
}

impl Hinter for ReplHelper {
    type Hint = String;
}
impl Highlighter for ReplHelper {}
impl Validator for ReplHelper {}
impl Helper for ReplHelper {}
