//! Anthropic's messages API: `/v1/messages` (what Claude Code speaks) and
//! `/v1/messages/count_tokens`. Errors take Anthropic's shape.

mod types;

use std::sync::Arc;

use axum::extract::State;
use axum::response::sse::Event;
use axum::response::Response;
use axum::{Extension, Json};
use serde_json::{json, Value};

use super::errors::{ApiError, Flavor};
use super::generate::{self, new_id, Generation, Outcome, Update};
use super::observe::{RequestLog, StreamLog, Usage};
use super::openai::with_usage;
use super::prompt;
use super::request::{self, Body};
use super::ServerState;
use crate::chat::{Segment, ToolCall};
use crate::engine::batch::{JobStop, JobSummary};
pub use types::MessagesRequest;

pub async fn messages(
    State(state): State<Arc<ServerState>>,
    Extension(log): Extension<RequestLog>,
    body: Body,
) -> Result<Response, ApiError> {
    answer(state, log, body)
        .await
        .map_err(|e| e.in_flavor(Flavor::Anthropic))
}

pub async fn count_tokens(State(state): State<Arc<ServerState>>, body: Body) -> Result<Json<Value>, ApiError> {
    count(state, body).await.map_err(|e| e.in_flavor(Flavor::Anthropic))
}

async fn count(state: Arc<ServerState>, body: Body) -> Result<Json<Value>, ApiError> {
    let request: MessagesRequest = request::parse(body)?;
    let model = state.model(request.model.as_deref())?;
    let conversation = request.conversation(&model)?;
    let prompt = prompt::render(&model, conversation).await?;
    Ok(Json(json!({"input_tokens": prompt.total_tokens()})))
}

async fn answer(state: Arc<ServerState>, log: RequestLog, body: Body) -> Result<Response, ApiError> {
    let request: MessagesRequest = request::parse(body)?;
    let settings = request.settings()?;
    let model = state.model(request.model.as_deref())?;
    let conversation = request.conversation(&model)?;
    let prompt = prompt::render(&model, conversation).await?;
    let job = settings.job(&model, &prompt)?;
    let generation = generate::submit(&model, job, prompt.opens_thinking, false)?;
    let reply = Reply {
        id: new_id("msg_"),
        model: model.name.clone(),
        input_tokens: prompt.total_tokens(),
        parallel_tool_calls: request.parallel_tool_calls(),
    };
    if request.stream == Some(true) {
        return Ok(stream(generation, reply, log));
    }
    let outcome = generation.collect().await?;
    Ok(with_usage(Json(reply.response(&outcome)), &prompt, &outcome))
}

#[derive(Debug, Clone)]
pub struct Reply {
    pub id: String,
    pub model: String,
    pub input_tokens: usize,
    pub parallel_tool_calls: bool,
}

impl Reply {
    pub fn response(&self, outcome: &Outcome) -> Value {
        let mut content = Vec::new();
        if !outcome.reasoning.is_empty() {
            content.push(json!({"type": "thinking", "thinking": outcome.reasoning, "signature": ""}));
        }
        if !outcome.content.is_empty() || outcome.tool_calls.is_empty() {
            content.push(json!({"type": "text", "text": outcome.content}));
        }
        let calls = self.kept(&outcome.tool_calls);
        content.extend(calls.iter().map(tool_use));
        let (stop_reason, stop_sequence) = stop_reason(outcome.stop(), !calls.is_empty());
        json!({
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": stop_sequence,
            "usage": self.usage(outcome.summary.as_ref()),
        })
    }

    fn kept<'a>(&self, calls: &'a [ToolCall]) -> &'a [ToolCall] {
        if self.parallel_tool_calls {
            calls
        } else {
            &calls[..calls.len().min(1)]
        }
    }

    fn usage(&self, summary: Option<&JobSummary>) -> Value {
        json!({
            "input_tokens": self.input_tokens,
            "output_tokens": summary.map_or(0, |s| s.generated_tokens),
            "cache_read_input_tokens": summary.map_or(0, |s| s.cached_tokens),
        })
    }
}

fn tool_use(call: &ToolCall) -> Value {
    json!({"type": "tool_use", "id": new_id("toolu_"), "name": call.name, "input": call.arguments})
}

/// `stop_reason` and `stop_sequence`.
pub fn stop_reason(stop: Option<&JobStop>, called_tools: bool) -> (&'static str, Value) {
    match stop {
        _ if called_tools => ("tool_use", Value::Null),
        Some(JobStop::StopString(s)) => ("stop_sequence", s.clone().into()),
        Some(JobStop::MaxTokens | JobStop::ContextFull) => ("max_tokens", Value::Null),
        _ => ("end_turn", Value::Null),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlockKind {
    Thinking,
    Text,
}

/// A streamed message: content blocks opened as the kind of text changes.
struct MessageStream {
    generation: Generation,
    reply: Reply,
    started: bool,
    open: Option<BlockKind>,
    index: usize,
    tool_calls: usize,
    log: StreamLog,
}

fn stream(generation: Generation, reply: Reply, log: RequestLog) -> Response {
    let input_tokens = reply.input_tokens;
    let state = MessageStream {
        generation,
        reply,
        started: false,
        open: None,
        index: 0,
        tool_calls: 0,
        log: StreamLog::new(log, input_tokens),
    };
    let steps = futures_util::stream::unfold(state, |mut state| async move {
        state.step().await.map(|events| (events, state))
    });
    generate::sse_response(steps)
}

fn event(name: &str, data: Value) -> Event {
    Event::default().event(name).data(data.to_string())
}

impl MessageStream {
    async fn step(&mut self) -> Option<Vec<Event>> {
        if !self.started {
            self.started = true;
            let message = json!({
                "id": self.reply.id, "type": "message", "role": "assistant", "model": self.reply.model,
                "content": [], "stop_reason": null, "stop_sequence": null, "usage": self.reply.usage(None),
            });
            return Some(vec![event(
                "message_start",
                json!({"type": "message_start", "message": message}),
            )]);
        }
        match self.generation.next().await? {
            Update::Segments(segments, _) => {
                let mut events = Vec::new();
                for segment in segments {
                    self.segment(segment, &mut events);
                }
                Some(events)
            }
            Update::Done(summary) => Some(self.end(&summary)),
            Update::Failed(message) => {
                let error = ApiError::internal(format!("generation failed: {message}")).in_flavor(Flavor::Anthropic);
                Some(vec![event("error", error.body())])
            }
        }
    }

    fn segment(&mut self, segment: Segment, events: &mut Vec<Event>) {
        match segment {
            Segment::Reasoning(text) => {
                self.open_block(BlockKind::Thinking, events);
                events.push(self.delta(json!({"type": "thinking_delta", "thinking": text})));
            }
            Segment::Answer(text) => {
                self.open_block(BlockKind::Text, events);
                events.push(self.delta(json!({"type": "text_delta", "text": text})));
            }
            Segment::ToolCall(call) => {
                if self.tool_calls > 0 && !self.reply.parallel_tool_calls {
                    return;
                }
                self.close_block(events);
                self.tool_calls += 1;
                let block = json!({"type": "tool_use", "id": new_id("toolu_"), "name": call.name, "input": {}});
                events.push(event(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": self.index, "content_block": block}),
                ));
                let arguments = call.arguments.to_string();
                events.push(self.delta(json!({"type": "input_json_delta", "partial_json": arguments})));
                events.push(self.stop_event());
                self.index += 1;
            }
        }
    }

    fn delta(&self, delta: Value) -> Event {
        event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": self.index, "delta": delta}),
        )
    }

    fn stop_event(&self) -> Event {
        event(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": self.index}),
        )
    }

    fn open_block(&mut self, kind: BlockKind, events: &mut Vec<Event>) {
        if self.open == Some(kind) {
            return;
        }
        self.close_block(events);
        let block = match kind {
            BlockKind::Thinking => json!({"type": "thinking", "thinking": ""}),
            BlockKind::Text => json!({"type": "text", "text": ""}),
        };
        events.push(event(
            "content_block_start",
            json!({"type": "content_block_start", "index": self.index, "content_block": block}),
        ));
        self.open = Some(kind);
    }

    fn close_block(&mut self, events: &mut Vec<Event>) {
        let Some(kind) = self.open.take() else {
            return;
        };
        if kind == BlockKind::Thinking {
            events.push(self.delta(json!({"type": "signature_delta", "signature": ""})));
        }
        events.push(self.stop_event());
        self.index += 1;
    }

    fn end(&mut self, summary: &JobSummary) -> Vec<Event> {
        let mut events = Vec::new();
        if self.index == 0 && self.open.is_none() {
            self.open_block(BlockKind::Text, &mut events);
        }
        self.close_block(&mut events);
        self.log.finish(Usage {
            prompt: summary.prompt_tokens,
            generated: summary.generated_tokens,
        });
        let (reason, sequence) = stop_reason(Some(&summary.stop), self.tool_calls > 0);
        events.push(event(
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": sequence},
                   "usage": {"output_tokens": summary.generated_tokens}}),
        ));
        events.push(event("message_stop", json!({"type": "message_stop"})));
        events
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_reply_with_reasoning_and_a_tool_call_makes_three_blocks() {
        let summary = JobSummary {
            stop: JobStop::EndOfTurn,
            prompt_tokens: 5,
            cached_tokens: 0,
            generated_tokens: 9,
            prompt_time: Duration::ZERO,
            generation_time: Duration::ZERO,
        };
        let text = "<think>hm</think>Let me look.<tool_call>search\n<arg_key>q</arg_key>\n<arg_value>gguf</arg_value>\n</tool_call>";
        let outcome = Outcome::from_text(text, false, summary);
        let reply = Reply {
            id: "msg_1".into(),
            model: "m".into(),
            input_tokens: 5,
            parallel_tool_calls: true,
        };
        let response = reply.response(&outcome);
        let content = response["content"].as_array().unwrap();
        assert_eq!(
            content[0],
            json!({"type": "thinking", "thinking": "hm", "signature": ""})
        );
        assert_eq!(content[1], json!({"type": "text", "text": "Let me look."}));
        assert_eq!(content[2]["type"], "tool_use");
        assert_eq!(content[2]["name"], "search");
        assert_eq!(content[2]["input"], json!({"q": "gguf"}));
        assert_eq!(response["stop_reason"], "tool_use");
        assert_eq!(response["usage"]["output_tokens"], 9);
    }

    #[test]
    fn stop_sequences_are_reported() {
        let (reason, sequence) = stop_reason(Some(&JobStop::StopString("END".into())), false);
        assert_eq!((reason, sequence), ("stop_sequence", json!("END")));
        assert_eq!(stop_reason(Some(&JobStop::MaxTokens), false).0, "max_tokens");
    }
}
