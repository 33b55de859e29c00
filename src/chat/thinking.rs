//! Splits a streamed answer into reasoning (`<think>…</think>`) and the answer proper.
//! Tags may arrive cut across chunks at any byte, so a possible tag start is held back
//! until it is complete or proven not to be a tag.

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Reasoning(String),
    Answer(String),
}

#[derive(Debug, Default)]
pub struct ThinkingSplitter {
    in_reasoning: bool,
    held: String,
}

impl ThinkingSplitter {
    /// `opened_by_prompt`: the rendered prompt already ends inside `<think>` (GLM-4.5+
    /// templates with thinking on), so the first text is reasoning.
    pub fn new(opened_by_prompt: bool) -> Self {
        Self {
            in_reasoning: opened_by_prompt,
            held: String::new(),
        }
    }

    /// Feeds the next piece of text; returns what can be shown now.
    pub fn push(&mut self, text: &str) -> Vec<Segment> {
        self.held.push_str(text);
        let mut out = Vec::new();
        loop {
            let tag = if self.in_reasoning { CLOSE } else { OPEN };
            match self.held.find(tag) {
                Some(at) => {
                    let before: String = self.held.drain(..at).collect();
                    self.held.drain(..tag.len());
                    self.emit(&mut out, before);
                    self.in_reasoning = !self.in_reasoning;
                }
                None => {
                    // Keep back the longest suffix that could still grow into the tag.
                    let keep = longest_tag_prefix_suffix(&self.held, tag);
                    let ready: String = self.held.drain(..self.held.len() - keep).collect();
                    self.emit(&mut out, ready);
                    return out;
                }
            }
        }
    }

    /// Flushes held-back text at the end of the stream.
    pub fn finish(&mut self) -> Vec<Segment> {
        let rest = std::mem::take(&mut self.held);
        let mut out = Vec::new();
        self.emit(&mut out, rest);
        out
    }

    pub fn in_reasoning(&self) -> bool {
        self.in_reasoning
    }

    fn emit(&self, out: &mut Vec<Segment>, text: String) {
        if text.is_empty() {
            return;
        }
        out.push(if self.in_reasoning {
            Segment::Reasoning(text)
        } else {
            Segment::Answer(text)
        });
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
    match (prompt.rfind(OPEN), prompt.rfind(CLOSE)) {
        (Some(open), Some(close)) => open > close,
        (Some(_), None) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(pieces: &[&str], opened: bool) -> (String, String) {
        let mut splitter = ThinkingSplitter::new(opened);
        let mut segments = Vec::new();
        for p in pieces {
            segments.extend(splitter.push(p));
        }
        segments.extend(splitter.finish());
        let mut reasoning = String::new();
        let mut answer = String::new();
        for s in segments {
            match s {
                Segment::Reasoning(t) => reasoning.push_str(&t),
                Segment::Answer(t) => answer.push_str(&t),
            }
        }
        (reasoning, answer)
    }

    #[test]
    fn every_byte_boundary_gives_the_same_split() {
        let stream = "<think>Let me see: 2+2 is 4 — 对。</think>The answer is 4 <thin";
        for cut in 0..=stream.len() {
            if !stream.is_char_boundary(cut) {
                continue;
            }
            for cut2 in cut..=stream.len() {
                if !stream.is_char_boundary(cut2) {
                    continue;
                }
                let pieces = [&stream[..cut], &stream[cut..cut2], &stream[cut2..]];
                let (reasoning, answer) = split_all(&pieces, false);
                assert_eq!(reasoning, "Let me see: 2+2 is 4 — 对。", "cuts {cut},{cut2}");
                assert_eq!(answer, "The answer is 4 <thin", "cuts {cut},{cut2}");
            }
        }
    }

    #[test]
    fn prompt_opened_thinking_starts_in_reasoning() {
        let (reasoning, answer) = split_all(&["hmm", "</th", "ink>\nok"], true);
        assert_eq!(reasoning, "hmm");
        assert_eq!(answer, "\nok");
    }

    #[test]
    fn detects_open_think_at_prompt_end() {
        assert!(prompt_opens_thinking("<|assistant|>\n<think>"));
        assert!(!prompt_opens_thinking("<|assistant|>\n<think></think>\n"));
        assert!(!prompt_opens_thinking("<|assistant|>\n"));
    }
}
