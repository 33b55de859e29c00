//! OpenAI's API: `/v1/chat/completions`, `/v1/completions` and `/v1/models`.

mod types;

use std::sync::Arc;

use axum::extract::State;
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{json, Value};

use super::errors::ApiError;
use super::generate::{self, new_id, unix_now, Generation, Outcome, Update};
use super::observe::{RequestLog, StreamLog, Usage};
use super::prompt::{self, Prompt};
use super::request::{self, Body};
use super::{ServedModel, ServerState};
use crate::chat::{Segment, ToolCall};
use crate::engine::batch::{JobStop, TokenLogprob};
pub use types::{ChatRequest, CompletionRequest};

pub async fn chat_completions(
    State(state): State<Arc<ServerState>>,
    Extension(log): Extension<RequestLog>,
    body: Body,
) -> Result<Response, ApiError> {
    let request: ChatRequest = request::parse(body)?;
    request.check()?;
    let model = state.model(request.model.as_deref())?;
    let conversation = request.conversation(&model)?;
    let prompt = prompt::render(&model, conversation).await?;
    let job = request.settings()?.job(&model, &prompt)?;
    let generation = generate::submit(&model, job, prompt.opens_thinking, false)?;
    let reply = Reply {
        id: new_id("chatcmpl-"),
        created: unix_now(),
        model: model.name.clone(),
        prompt_tokens: prompt.total_tokens(),
        logprobs: request.logprobs == Some(true),
        parallel_tool_calls: request.parallel_tool_calls != Some(false),
        chat: true,
    };
    if request.stream == Some(true) {
        let include_usage = request.stream_options.and_then(|o| o.include_usage) == Some(true);
        return Ok(stream(generation, reply, include_usage, log));
    }
    let outcome = generation.collect().await?;
    Ok(with_usage(Json(reply.chat_response(&outcome)), &prompt, &outcome))
}

pub async fn completions(
    State(state): State<Arc<ServerState>>,
    Extension(log): Extension<RequestLog>,
    body: Body,
) -> Result<Response, ApiError> {
    let request: CompletionRequest = request::parse(body)?;
    let text = request.check()?;
    let model = state.model(request.model.as_deref())?;
    let prompt = prompt::raw(&model, text).await?;
    let job = request.settings().job(&model, &prompt)?;
    let generation = generate::submit(&model, job, false, true)?;
    let reply = Reply {
        id: new_id("cmpl-"),
        created: unix_now(),
        model: model.name.clone(),
        prompt_tokens: prompt.total_tokens(),
        logprobs: request.logprobs.is_some(),
        parallel_tool_calls: true,
        chat: false,
    };
    if request.stream == Some(true) {
        let include_usage = request.stream_options.and_then(|o| o.include_usage) == Some(true);
        return Ok(stream(generation, reply, include_usage, log));
    }
    let outcome = generation.collect().await?;
    Ok(with_usage(Json(reply.completion_response(&outcome)), &prompt, &outcome))
}

pub async fn models(State(state): State<Arc<ServerState>>) -> Json<Value> {
    let data: Vec<Value> = state.models.iter().map(|m| model_entry(m, state.started)).collect();
    Json(json!({"object": "list", "data": data}))
}

/// `GET /v1/models/{id}`: one served model, or a 404 listing them.
pub async fn model(
    State(state): State<Arc<ServerState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<Value>, ApiError> {
    let model = state.model(Some(&id))?;
    Ok(Json(model_entry(&model, state.started)))
}

fn model_entry(model: &ServedModel, created: u64) -> Value {
    json!({
        "id": model.name,
        "object": "model",
        "created": created,
        "owned_by": "glm",
        "meta": {"n_ctx_per_sequence": model.scheduler.ctx_per_sequence(), "n_ctx_train": model.engine.n_ctx_train()},
    })
}

/// A response carrying its token counts for the request log.
pub fn with_usage(body: impl IntoResponse, prompt: &Prompt, outcome: &Outcome) -> Response {
    let mut response = body.into_response();
    response.extensions_mut().insert(Usage {
        prompt: prompt.total_tokens(),
        generated: outcome.generated_tokens(),
    });
    response
}

/// What every response and chunk of one request repeats.
#[derive(Debug, Clone)]
pub struct Reply {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub prompt_tokens: usize,
    pub logprobs: bool,
    pub parallel_tool_calls: bool,
    /// A chat completion (else a text completion).
    pub chat: bool,
}

impl Reply {
    pub fn chat_response(&self, outcome: &Outcome) -> Value {
        let calls = self.tool_calls(&outcome.tool_calls);
        let content: Value = if outcome.content.is_empty() && !calls.is_empty() {
            Value::Null
        } else {
            outcome.content.clone().into()
        };
        let mut message = json!({"role": "assistant", "content": content});
        if !outcome.reasoning.is_empty() {
            message["reasoning_content"] = outcome.reasoning.clone().into();
        }
        if !calls.is_empty() {
            message["tool_calls"] = Value::Array(calls);
        }
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": message,
                "logprobs": self.logprobs.then(|| chat_logprobs(&outcome.logprobs)),
                "finish_reason": finish_reason(outcome.stop(), !outcome.tool_calls.is_empty()),
            }],
            "usage": self.usage(outcome.summary.as_ref()),
        })
    }

    pub fn completion_response(&self, outcome: &Outcome) -> Value {
        json!({
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "text": outcome.content,
                "logprobs": self.logprobs.then(|| completion_logprobs(&outcome.logprobs)),
                "finish_reason": finish_reason(outcome.stop(), false),
            }],
            "usage": self.usage(outcome.summary.as_ref()),
        })
    }

    /// The OpenAI entries of the calls (only the first when parallel calls are off).
    fn tool_calls(&self, calls: &[ToolCall]) -> Vec<Value> {
        let keep = if self.parallel_tool_calls {
            calls.len()
        } else {
            calls.len().min(1)
        };
        calls[..keep].iter().map(openai_tool_call).collect()
    }

    fn usage(&self, summary: Option<&crate::engine::batch::JobSummary>) -> Value {
        let generated = summary.map_or(0, |s| s.generated_tokens);
        let cached = summary.map_or(0, |s| s.cached_tokens);
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": generated,
            "total_tokens": self.prompt_tokens + generated,
            "prompt_tokens_details": {"cached_tokens": cached},
        })
    }

    fn chunk(&self, delta: Value, finish_reason: Option<&str>, logprobs: Option<Value>) -> Value {
        let (object, choice) = if self.chat {
            (
                "chat.completion.chunk",
                json!({"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}),
            )
        } else {
            let text = delta["content"].as_str().unwrap_or_default().to_owned();
            (
                "text_completion",
                json!({"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}),
            )
        };
        json!({"id": self.id, "object": object, "created": self.created, "model": self.model, "choices": [choice]})
    }
}

/// A call as OpenAI writes it: the arguments as a JSON string.
pub fn openai_tool_call(call: &ToolCall) -> Value {
    json!({
        "id": new_id("call_"),
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments.to_string()},
    })
}

pub fn finish_reason(stop: Option<&JobStop>, called_tools: bool) -> &'static str {
    match stop {
        _ if called_tools => "tool_calls",
        Some(JobStop::MaxTokens | JobStop::ContextFull) => "length",
        _ => "stop",
    }
}

fn chat_logprobs(tokens: &[TokenLogprob]) -> Value {
    let content: Vec<Value> = tokens
        .iter()
        .map(|t| {
            let top: Vec<Value> = t
                .top
                .iter()
                .map(|(text, logprob)| json!({"token": text, "logprob": logprob, "bytes": text.as_bytes()}))
                .collect();
            json!({"token": t.text, "logprob": t.logprob, "bytes": t.text.as_bytes(), "top_logprobs": top})
        })
        .collect();
    json!({"content": content})
}

fn completion_logprobs(tokens: &[TokenLogprob]) -> Value {
    json!({
        "tokens": tokens.iter().map(|t| t.text.clone()).collect::<Vec<_>>(),
        "token_logprobs": tokens.iter().map(|t| t.logprob).collect::<Vec<_>>(),
        "top_logprobs": tokens.iter().map(|t| {
            t.top.iter().map(|(text, lp)| (text.clone(), json!(lp))).collect::<serde_json::Map<_, _>>()
        }).collect::<Vec<_>>(),
    })
}

/// A streamed chat or text completion.
struct OpenAiStream {
    generation: Generation,
    reply: Reply,
    include_usage: bool,
    role_sent: bool,
    tool_calls: usize,
    called_tools: bool,
    log: StreamLog,
}

fn stream(generation: Generation, reply: Reply, include_usage: bool, log: RequestLog) -> Response {
    let prompt_tokens = reply.prompt_tokens;
    let state = OpenAiStream {
        generation,
        reply,
        include_usage,
        role_sent: false,
        tool_calls: 0,
        called_tools: false,
        log: StreamLog::new(log, prompt_tokens),
    };
    let steps = futures_util::stream::unfold(state, |mut state| async move {
        state.step().await.map(|events| (events, state))
    });
    generate::sse_response(steps)
}

fn data(value: &Value) -> Event {
    Event::default().data(value.to_string())
}

impl OpenAiStream {
    async fn step(&mut self) -> Option<Vec<Event>> {
        if self.reply.chat && !self.role_sent {
            self.role_sent = true;
            let delta = json!({"role": "assistant", "content": ""});
            return Some(vec![data(&self.reply.chunk(delta, None, None))]);
        }
        match self.generation.next().await? {
            Update::Segments(segments, logprobs) => Some(self.text_chunks(segments, &logprobs)),
            Update::Done(summary) => {
                self.log.finish(Usage {
                    prompt: summary.prompt_tokens,
                    generated: summary.generated_tokens,
                });
                let reason = finish_reason(Some(&summary.stop), self.called_tools);
                let mut events = vec![data(&self.reply.chunk(json!({}), Some(reason), None))];
                if self.include_usage {
                    let mut last = self.reply.chunk(json!({}), None, None);
                    last["choices"] = json!([]);
                    last["usage"] = self.reply.usage(Some(&summary));
                    events.push(data(&last));
                }
                events.push(Event::default().data("[DONE]"));
                Some(events)
            }
            Update::Failed(message) => {
                let error = ApiError::internal(format!("generation failed: {message}"));
                Some(vec![data(&error.body()), Event::default().data("[DONE]")])
            }
        }
    }

    fn text_chunks(&mut self, segments: Vec<Segment>, logprobs: &[TokenLogprob]) -> Vec<Event> {
        let mut logprobs = (self.reply.logprobs && !logprobs.is_empty()).then(|| {
            if self.reply.chat {
                chat_logprobs(logprobs)
            } else {
                completion_logprobs(logprobs)
            }
        });
        let mut events = Vec::new();
        for segment in segments {
            let delta = match segment {
                Segment::Answer(text) => json!({"content": text}),
                Segment::Reasoning(text) => json!({"reasoning_content": text}),
                Segment::ToolCall(call) => {
                    if self.tool_calls > 0 && !self.reply.parallel_tool_calls {
                        continue;
                    }
                    let mut entry = openai_tool_call(&call);
                    entry["index"] = self.tool_calls.into();
                    self.tool_calls += 1;
                    self.called_tools = true;
                    json!({"tool_calls": [entry]})
                }
            };
            events.push(data(&self.reply.chunk(delta, None, logprobs.take())));
        }
        if let Some(logprobs) = logprobs {
            events.push(data(&self.reply.chunk(json!({}), None, Some(logprobs))));
        }
        events
    }
}

#[cfg(test)]
mod tests;
