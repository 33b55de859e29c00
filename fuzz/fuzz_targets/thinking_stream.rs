//! The streaming splitter of reasoning, answer and tool calls, and the tool-call body
//! parser. Byte 0 says whether the prompt opened `<think>`; in the rest (as UTF-8),
//! `\x01` marks where one streamed chunk ends and the next begins.
//!
//! Invariants: cutting the stream anywhere gives the same segments as one piece, and the
//! text shown never exceeds the text received.
#![no_main]

use glm::chat::tool_calls::parse_tool_call;
use glm::chat::{Segment, ThinkingSplitter};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let opened = flags & 1 != 0;
    let chunks: Vec<&str> = text.split('\u{1}').collect();
    let whole: String = chunks.concat();

    let streamed = split(&chunks, opened);
    let at_once = split(&[whole.as_str()], opened);
    assert_eq!(streamed, at_once, "chunks {chunks:?}");

    let shown: usize = streamed
        .iter()
        .map(|s| match s {
            Segment::Answer(t) | Segment::Reasoning(t) => t.len(),
            Segment::ToolCall(_) => 0,
        })
        .sum();
    assert!(shown <= whole.len(), "{shown} bytes shown of {}", whole.len());

    let _ = parse_tool_call(&whole);
});

/// All segments of a stream, neighbouring text of one kind merged, so that only what the
/// cuts must not change is compared.
fn split(chunks: &[&str], opened: bool) -> Vec<Segment> {
    let mut splitter = ThinkingSplitter::new(opened);
    let mut segments = Vec::new();
    for chunk in chunks {
        segments.extend(splitter.push(chunk));
    }
    segments.extend(splitter.finish());
    let mut merged: Vec<Segment> = Vec::new();
    for segment in segments {
        match (merged.last_mut(), segment) {
            (Some(Segment::Answer(a)), Segment::Answer(b)) => a.push_str(&b),
            (Some(Segment::Reasoning(a)), Segment::Reasoning(b)) => a.push_str(&b),
            (_, s) => merged.push(s),
        }
    }
    merged
}
