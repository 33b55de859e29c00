//! The line editor of the interactive chat: one message at a time (a line, a line
//! continued with `\`, or a `"""` block), history kept in a file, Tab completion of the
//! slash commands (from the command table) and, after them, of file paths.

use std::path::PathBuf;

use anyhow::{Context, Result};
use rustyline::completion::{Completer, FilenameCompleter, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::FileHistory;
use rustyline::validate::Validator;
use rustyline::{Editor, Helper};

use super::gather_message;
use super::slash_commands::command_names;

pub(super) enum Prompted {
    Message(String),
    Eof,
    Interrupted,
}

/// Reads one message with a fresh line editor. The editor owns the terminal's SIGINT
/// handler while it exists, so it is dropped before the answer streams and Ctrl-C then
/// reaches our handler and stops the answer.
pub(super) fn prompt_user(history: Option<&std::path::Path>) -> Result<Prompted> {
    // The editor draws on the terminal itself (/dev/tty), never on stdout: with stdout
    // redirected (`glm chat model > answers.txt`) the file gets the answers only, no
    // prompts or escape codes.
    let config = rustyline::Config::builder()
        .behavior(rustyline::Behavior::PreferTerm)
        .build();
    let mut editor: Editor<ReplHelper, FileHistory> =
        Editor::with_config(config).context("starting the line editor")?;
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
    let mut failure = None;
    let message = gather_message(first, || match editor.readline("… ") {
        Ok(line) => Some(line),
        Err(ReadlineError::Eof) => None,
        Err(e) => {
            failure = Some(e);
            None
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    // A `"""` block left open by Ctrl-D is dropped, as an empty message.
    Ok(Some(message.unwrap_or_default()))
}

/// `$GLM_HISTORY_FILE`, else `glm/history.txt` under the user's data directory, when it
/// is a regular file or does not exist yet: the line editor
/// would block opening a FIFO and write into a device. Without one, history stays in
/// memory for the session.
pub(super) fn history_file() -> Option<PathBuf> {
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
