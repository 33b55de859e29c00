//! What glm writes to a terminal, and only to one: styles (dim reasoning, progress
//! lines) when the stream is a terminal that takes them, model text with its control
//! characters made visible, and the `-v` switch for details.
//!
//! Styles follow the usual conventions: off when the stream is not a terminal, when
//! `NO_COLOR` is set to anything non-empty (no-color.org), or when `TERM=dumb`.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

static VERBOSE: AtomicBool = AtomicBool::new(false);

/// `-v`: llama.cpp's log and the details of a run (seed, context size) go to stderr.
pub fn set_verbose(on: bool) {
    VERBOSE.store(on, Ordering::SeqCst);
    if on {
        crate::engine::show_llama_log();
    }
}

pub fn verbose() -> bool {
    VERBOSE.load(Ordering::SeqCst)
}

/// Prints a detail line on stderr with `-v`.
pub fn detail(text: impl std::fmt::Display) {
    if verbose() {
        eprintln!("{text}");
    }
}

/// Whether the environment allows escape sequences at all.
fn styles_allowed() -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let dumb = std::env::var_os("TERM").is_some_and(|t| t == "dumb");
    !no_color && !dumb
}

/// Whether stderr may carry escape sequences (dim text, redrawn progress lines).
pub fn stderr_styled() -> bool {
    std::io::stderr().is_terminal() && styles_allowed()
}

/// Text the model produced, for a terminal: control characters other than newline and
/// tab are shown as `\x1b`-style escapes, so a model cannot move the cursor, change
/// colours or retitle the window. Text for a pipe or file stays as the model wrote it.
pub fn visible_controls(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(is_hidden_control) {
        return text.into();
    }
    let mut shown = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_hidden_control(c) {
            shown.push_str(&format!("\\x{:02x}", u32::from(c)));
        } else {
            shown.push(c);
        }
    }
    shown.into()
}

/// C0 and C1 controls and DEL, except the line layout a reader expects.
fn is_hidden_control(c: char) -> bool {
    c.is_control() && !matches!(c, '\n' | '\t')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_become_visible_and_layout_stays() {
        assert_eq!(visible_controls("a\x1b[2Jb"), "a\\x1b[2Jb");
        assert_eq!(visible_controls("line\n\tnext"), "line\n\tnext");
        assert_eq!(
            visible_controls("bell\x07 del\x7f c1\u{9b}"),
            "bell\\x07 del\\x7f c1\\x9b"
        );
        assert_eq!(visible_controls("cr\r"), "cr\\x0d");
        assert!(matches!(visible_controls("plain"), std::borrow::Cow::Borrowed(_)));
    }
}
