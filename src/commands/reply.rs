//! Prints a streamed reply: the answer to stdout, the reasoning to stderr (dim on a
//! terminal) or nowhere, tool calls as JSON lines; and keeps what was said for the
//! conversation history.

use std::io::{IsTerminal, Write};

use crate::chat::{Segment, ThinkingSplitter, ToolCall};

/// What the model said in one turn, split by kind.
/// Model text as it may be shown on `terminal` (see `terminal::visible_controls`).
fn shown(text: &str, terminal: bool) -> std::borrow::Cow<'_, str> {
    if terminal {
        crate::terminal::visible_controls(text)
    } else {
        text.into()
    }
}

#[derive(Debug, Default, Clone)]
pub struct Reply {
    pub reasoning: String,
    pub content: String,
    pub tool_calls: Vec<ToolCall>,
}

/// Where the model's reasoning is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReasoningDisplay {
    /// On stderr, dim on a terminal, apart from the answer on stdout.
    Apart,
    /// Not at all.
    Hidden,
    /// In the answer on stdout, between its tags (llama.cpp's `--reasoning-format none`).
    Inline,
}

pub struct ReplyPrinter {
    splitter: ThinkingSplitter,
    show_reasoning: bool,
    inline_reasoning: bool,
    dim: bool,
    /// Control characters are made visible on a terminal (see `terminal::visible_controls`).
    stdout_terminal: bool,
    stderr_terminal: bool,
    reasoning_open: bool,
    reply: Reply,
    /// The first write that failed (a closed pipe, a full disk); reported by `finish`.
    write_error: Option<std::io::Error>,
}

impl ReplyPrinter {
    pub fn new(opened_by_prompt: bool, show_reasoning: bool) -> Self {
        Self {
            splitter: ThinkingSplitter::new(opened_by_prompt),
            show_reasoning,
            inline_reasoning: false,
            dim: crate::terminal::stderr_styled(),
            stdout_terminal: std::io::stdout().is_terminal(),
            stderr_terminal: std::io::stderr().is_terminal(),
            reasoning_open: false,
            reply: Reply::default(),
            write_error: None,
        }
    }

    /// A printer showing reasoning as `display` says.
    pub fn with_display(opened_by_prompt: bool, display: ReasoningDisplay) -> Self {
        let mut printer = Self::new(opened_by_prompt, display != ReasoningDisplay::Hidden);
        printer.inline_reasoning = display == ReasoningDisplay::Inline;
        printer
    }

    /// Prints a streamed piece; `false` once output has failed, so generation can stop.
    pub fn push(&mut self, text: &str) -> bool {
        let segments = self.splitter.push(text);
        if let Err(e) = self.write(segments) {
            self.write_error = Some(e);
        }
        self.write_error.is_none()
    }

    /// Flushes the stream and returns the whole reply, or the first write error.
    pub fn finish(&mut self) -> std::io::Result<Reply> {
        if let Some(e) = self.write_error.take() {
            return Err(e);
        }
        let segments = self.splitter.finish();
        self.write(segments)?;
        self.close_reasoning()?;
        let reasoning_on_stdout = self.inline_reasoning && !self.reply.reasoning.is_empty();
        if !self.reply.content.is_empty() || reasoning_on_stdout {
            writeln!(std::io::stdout())?;
        }
        Ok(std::mem::take(&mut self.reply))
    }

    fn write(&mut self, segments: Vec<Segment>) -> std::io::Result<()> {
        for segment in segments {
            match segment {
                Segment::Reasoning(text) => {
                    self.reply.reasoning.push_str(&text);
                    if self.inline_reasoning {
                        self.write_inline_reasoning(&text)?;
                    } else if self.show_reasoning {
                        let mut err = std::io::stderr().lock();
                        if !self.reasoning_open && self.dim {
                            err.write_all(b"\x1b[2m")?;
                        }
                        self.reasoning_open = true;
                        err.write_all(shown(&text, self.stderr_terminal).as_bytes())?;
                        err.flush()?;
                    }
                }
                Segment::Answer(text) => {
                    self.close_reasoning()?;
                    // The newline after </think> belongs to the template's layout.
                    let text = if self.reply.content.is_empty() {
                        text.trim_start_matches('\n')
                    } else {
                        &text
                    };
                    if text.is_empty() {
                        continue;
                    }
                    self.reply.content.push_str(text);
                    let mut out = std::io::stdout().lock();
                    out.write_all(shown(text, self.stdout_terminal).as_bytes())?;
                    out.flush()?;
                }
                Segment::ToolCall(call) => {
                    self.close_reasoning()?;
                    let mut out = std::io::stdout().lock();
                    if !self.reply.content.is_empty() && !self.reply.content.ends_with('\n') {
                        out.write_all(b"\n")?;
                    }
                    writeln!(out, "{}", serde_json::json!({"tool_call": call}))?;
                    out.flush()?;
                    self.reply.tool_calls.push(call);
                }
            }
        }
        Ok(())
    }

    /// Reasoning in the answer's stream, between the tags the model wrote.
    fn write_inline_reasoning(&mut self, text: &str) -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        if !self.reasoning_open {
            out.write_all(b"<think>")?;
            self.reasoning_open = true;
        }
        out.write_all(shown(text, self.stdout_terminal).as_bytes())?;
        out.flush()
    }

    fn close_reasoning(&mut self) -> std::io::Result<()> {
        if self.reasoning_open && self.inline_reasoning {
            self.reasoning_open = false;
            let mut out = std::io::stdout().lock();
            out.write_all(b"</think>")?;
            // The answer is then printed as if it were the first text of the reply.
            return out.flush();
        }
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
