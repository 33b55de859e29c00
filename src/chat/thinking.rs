//! Splits a streamed answer into reasoning (`<think>…</think>`), tool calls
//! (`<tool_call>…</tool_call>`) and the answer proper. Tags may arrive cut across chunks
//! at any byte, so a possible tag start is held back until it is complete or proven not
//! to be a tag.

use super::tool_calls::{parse_tool_call, ToolCall};

const THINK_OPEN: &str = "<think>";
const THINK_CLOSE: &str = "</think>";
const TOOL_OPEN: &str = "<tool_call>";
const TOOL_CLOSE: &str = "</tool_call>";

#[derive(Debug, Clone, PartialEq)]
pub enum Segment {
    Reasoning(String),
    Answer(String),
    ToolCall(ToolCall),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    #[default]
    Answer,
    Reasoning,
    ToolCall,
}

#[derive(Debug, Default)]
pub struct ThinkingSplitter {
    state: State,
    held: String,
    tool_call: String,
}

impl ThinkingSplitter {
    /// `opened_by_prompt`: the rendered prompt already ends inside `<think>` (GLM-4.5+
    /// templates with thinking on), so the first text is reasoning.
    pub fn new(opened_by_prompt: bool) -> Self {
        Self {
            state: if opened_by_prompt {
                State::Reasoning
            } else {
                State::Answer
            },
            ..Default::default()
        }
    }

    /// Feeds the next piece of text; returns what can be shown now.
    pub fn push(&mut self, text: &str) -> Vec<Segment> {
        self.held.push_str(text);
        let mut out = Vec::new();
        loop {
            let tags: &[&str] = match self.state {
                State::Answer => &[THINK_OPEN, TOOL_OPEN],
                State::Reasoning => &[THINK_CLOSE],
                State::ToolCall => &[TOOL_CLOSE],
            };
            let found = tags
                .iter()
                .filter_map(|tag| self.held.find(tag).map(|at| (at, *tag)))
                .min_by_key(|(at, _)| *at);
            match found {
                Some((at, tag)) => {
                    let before: String = self.held.drain(..at).collect();
                    self.held.drain(..tag.len());
                    self.emit(&mut out, before);
                    self.switch(tag, &mut out);
                }
                None => {
                    // Keep back the longest suffix that could still grow into a tag.
                    let keep = tags
                        .iter()
                        .map(|t| longest_tag_prefix_suffix(&self.held, t))
                        .max()
                        .unwrap_or(0);
                    let ready: String = self.held.drain(..self.held.len() - keep).collect();
                    self.emit(&mut out, ready);
                    return out;
                }
            }
        }
    }

    /// Flushes held-back text at the end of the stream (an unfinished tool call is
    /// shown as the text it is).
    pub fn finish(&mut self) -> Vec<Segment> {
        let rest = std::mem::take(&mut self.held);
        let mut out = Vec::new();
        if self.state == State::ToolCall {
            let raw = format!("{TOOL_OPEN}{}{rest}", std::mem::take(&mut self.tool_call));
            out.push(Segment::Answer(raw));
            self.state = State::Answer;
        } else {
            self.emit(&mut out, rest);
        }
        out
    }

    fn switch(&mut self, tag: &str, out: &mut Vec<Segment>) {
        self.state = match tag {
            THINK_OPEN => State::Reasoning,
            TOOL_OPEN => State::ToolCall,
            TOOL_CLOSE => {
                let body = std::mem::take(&mut self.tool_call);
                out.push(match parse_tool_call(&body) {
                    Some(call) => Segment::ToolCall(call),
                    None => Segment::Answer(format!("{TOOL_OPEN}{body}{TOOL_CLOSE}")),
                });
                State::Answer
            }
            _ => State::Answer,
        };
    }

    fn emit(&mut self, out: &mut Vec<Segment>, text: String) {
        if text.is_empty() {
            return;
        }
        match self.state {
            State::Answer => out.push(Segment::Answer(text)),
            State::Reasoning => out.push(Segment::Reasoning(text)),
            State::ToolCall => self.tool_call.push_str(&text),
        }
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of `tag`.
fn longest_tag_prefix_suffix(text: &str, tag: &str) -> usize {
    (1..tag.len().min(text.len() + 1))
        .rev()
        .find(|&n| text.is_char_boundary(text.len() - n) && tag.starts_with(&text[text.len() - n..]))
        .unwrap_or(0)
}

/// True when a rendered prompt leaves the model inside an open `<think>` block.
pub fn prompt_opens_thinking(prompt: &str) -> bool {
    match (prompt.rfind(THINK_OPEN), prompt.rfind(THINK_CLOSE)) {
        (Some(open), Some(close)) => open > close,
        (Some(_), None) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(pieces: &[&str], opened: bool) -> Vec<Segment> {
        let mut splitter = ThinkingSplitter::new(opened);
        let mut segments: Vec<Segment> = Vec::new();
        for p in pieces {
            segments.extend(splitter.push(p));
        }
        segments.extend(splitter.finish());
        // Merge neighbouring text of one kind, so cuts do not matter.
        let mut merged: Vec<Segment> = Vec::new();
        for s in segments {
            match (merged.last_mut(), s) {
                (Some(Segment::Answer(a)), Segment::Answer(b)) => a.push_str(&b),
                (Some(Segment::Reasoning(a)), Segment::Reasoning(b)) => a.push_str(&b),
                (_, s) => merged.push(s),
            }
        }
        merged
    }

    /// Every way of cutting `stream` into three pieces gives the same segments.
    fn assert_cut_invariant(stream: &str, opened: bool, expected: &[Segment]) {
        let bounds: Vec<usize> = (0..=stream.len()).filter(|&i| stream.is_char_boundary(i)).collect();
        for &a in &bounds {
            for &b in bounds.iter().filter(|&&b| b >= a) {
                let pieces = [&stream[..a], &stream[a..b], &stream[b..]];
                assert_eq!(split_all(&pieces, opened), expected, "cuts {a},{b}");
            }
        }
    }

    #[test]
    fn reasoning_and_answer_at_every_byte_boundary() {
        assert_cut_invariant(
            "<think>Let me see: 2+2 is 4 — 对。</think>The answer is 4 <thin",
            false,
            &[
                Segment::Reasoning("Let me see: 2+2 is 4 — 对。".into()),
                Segment::Answer("The answer is 4 <thin".into()),
            ],
        );
    }

    #[test]
    fn tool_calls_at_every_byte_boundary() {
        let call = ToolCall {
            name: "get_weather".into(),
            arguments: serde_json::json!({"city": "北京", "days": 3}),
        };
        assert_cut_invariant(
            "<think>need weather</think>Checking.<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>北京</arg_value>\n<arg_key>days</arg_key>\n<arg_value>3</arg_value>\n</tool_call>",
            false,
            &[
                Segment::Reasoning("need weather".into()),
                Segment::Answer("Checking.".into()),
                Segment::ToolCall(call),
            ],
        );
    }

    #[test]
    fn prompt_opened_thinking_starts_in_reasoning() {
        let segments = split_all(&["hmm", "</th", "ink>\nok"], true);
        assert_eq!(
            segments,
            vec![Segment::Reasoning("hmm".into()), Segment::Answer("\nok".into())]
        );
    }

    #[test]
    fn unfinished_tool_call_is_shown_as_text() {
        let segments = split_all(&["<tool_call>get_wea"], false);
        assert_eq!(segments, vec![Segment::Answer("<tool_call>get_wea".into())]);
    }

    #[test]
    fn detects_open_think_at_prompt_end() {
        assert!(prompt_opens_thinking("<|assistant|>\n<think>"));
        assert!(!prompt_opens_thinking("<|assistant|>\n<think></think>\n"));
        assert!(!prompt_opens_thinking("<|assistant|>\n"));
    }
}
