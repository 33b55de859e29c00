//! Prints a streamed reply: the answer to stdout, the reasoning to stderr (dim on a
//! terminal) or nowhere, tool calls as JSON lines; and keeps what was said for the
//! conversation history.

use std::io::{IsTerminal, Write};

use crate::chat::{Segment, ThinkingSplitter, ToolCall};

/// What the model said in one turn, split by kind.
#[derive(Debug, Default, Clone)]
pub struct Reply {
    pub reasoning: String,
    pub content: String,
    pub tool_calls: Vec<ToolCall>,
}

pub struct ReplyPrinter {
    splitter: ThinkingSplitter,
    show_reasoning: bool,
    dim: bool,
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
            dim: std::io::stderr().is_terminal(),
            reasoning_open: false,
            reply: Reply::default(),
            write_error: None,
        }
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
        if !self.reply.content.is_empty() {
            writeln!(std::io::stdout())?;
        }
        Ok(std::mem::take(&mut self.reply))
    }

    fn write(&mut self, segments: Vec<Segment>) -> std::io::Result<()> {
        for segment in segments {
            match segment {
                Segment::Reasoning(text) => {
                    self.reply.reasoning.push_str(&text);
                    if self.show_reasoning {
                        let mut err = std::io::stderr().lock();
                        if !self.reasoning_open && self.dim {
                            err.write_all(b"\x1b[2m")?;
                        }
                        self.reasoning_open = true;
                        err.write_all(text.as_bytes())?;
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
                    out.write_all(text.as_bytes())?;
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
