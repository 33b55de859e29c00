//! A submitted job's events turned into what both APIs answer with: reasoning, answer
//! text and tool calls split by the chat layer, and why generation stopped.

use std::sync::Arc;

use super::errors::ApiError;
use super::ServedModel;
use crate::chat::{Segment, ThinkingSplitter, ToolCall};
use crate::engine::batch::{Job, JobEvent, JobHandle, JobStop, JobSummary, TokenLogprob};

/// Queues `job` on the model's scheduler; a full queue is a 503. Its text is split into
/// reasoning, answer and tool calls, unless `raw` (text completions).
pub fn submit(model: &Arc<ServedModel>, job: Job, opens_thinking: bool, raw: bool) -> Result<Generation, ApiError> {
    let handle = model
        .scheduler
        .submit(job)
        .map_err(|busy| ApiError::busy(format!("{busy}; try again shortly")))?;
    Ok(Generation {
        model: model.clone(),
        handle,
        splitter: ThinkingSplitter::new(opens_thinking),
        raw,
        finished: None,
        done: false,
    })
}

/// What the next step of a generation brings.
#[derive(Debug)]
pub enum Update {
    Segments(Vec<Segment>, Vec<TokenLogprob>),
    Done(JobSummary),
    Failed(String),
}

/// A running job. Dropping it drops the handle, which cancels the job: a client that
/// goes away frees its sequence.
pub struct Generation {
    model: Arc<ServedModel>,
    handle: JobHandle,
    splitter: ThinkingSplitter,
    raw: bool,
    /// The summary, held back until the splitter's last text has gone out.
    finished: Option<JobSummary>,
    done: bool,
}

impl Generation {
    /// The next update; `None` after `Done` or `Failed`.
    pub async fn next(&mut self) -> Option<Update> {
        if self.done {
            return None;
        }
        if let Some(summary) = self.finished.take() {
            self.done = true;
            return Some(Update::Done(summary));
        }
        loop {
            match self.handle.events.recv().await {
                Some(JobEvent::Started { .. }) => continue,
                Some(JobEvent::Text { text, logprobs }) => {
                    let segments = if self.raw {
                        vec![Segment::Answer(text)]
                    } else {
                        self.splitter.push(&text)
                    };
                    if segments.is_empty() && logprobs.is_empty() {
                        continue;
                    }
                    return Some(Update::Segments(segments, logprobs));
                }
                Some(JobEvent::Finished(summary)) => {
                    self.model.metrics.record(&summary);
                    self.finished = Some(summary);
                    let rest = if self.raw { Vec::new() } else { self.splitter.finish() };
                    return Some(Update::Segments(rest, Vec::new()));
                }
                Some(JobEvent::Failed(message)) => {
                    self.done = true;
                    return Some(Update::Failed(message));
                }
                None => {
                    self.done = true;
                    return Some(Update::Failed("the generation ended without a result".into()));
                }
            }
        }
    }

    /// Everything, for a response that is not streamed.
    pub async fn collect(mut self) -> Result<Outcome, ApiError> {
        let mut outcome = Outcome::default();
        while let Some(update) = self.next().await {
            match update {
                Update::Segments(segments, logprobs) => {
                    outcome.add(segments);
                    outcome.logprobs.extend(logprobs);
                }
                Update::Done(summary) => outcome.summary = Some(summary),
                Update::Failed(message) => return Err(ApiError::internal(format!("generation failed: {message}"))),
            }
        }
        Ok(outcome)
    }
}

/// A whole reply, split by kind.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    pub reasoning: String,
    pub content: String,
    pub tool_calls: Vec<ToolCall>,
    pub logprobs: Vec<TokenLogprob>,
    pub summary: Option<JobSummary>,
}

impl Outcome {
    pub fn add(&mut self, segments: Vec<Segment>) {
        for segment in segments {
            match segment {
                Segment::Reasoning(text) => self.reasoning.push_str(&text),
                Segment::Answer(text) => self.content.push_str(&text),
                Segment::ToolCall(call) => self.tool_calls.push(call),
            }
        }
    }

    /// The reply a raw model text makes (the tests' way to the response builders).
    #[cfg(test)]
    pub fn from_text(text: &str, opens_thinking: bool, summary: JobSummary) -> Outcome {
        let mut splitter = ThinkingSplitter::new(opens_thinking);
        let mut outcome = Outcome::default();
        outcome.add(splitter.push(text));
        outcome.add(splitter.finish());
        outcome.summary = Some(summary);
        outcome
    }

    pub fn stop(&self) -> Option<&JobStop> {
        self.summary.as_ref().map(|s| &s.stop)
    }

    pub fn generated_tokens(&self) -> usize {
        self.summary.as_ref().map_or(0, |s| s.generated_tokens)
    }
}

/// Ids for responses and tool calls: unique within the process, and not guessable
/// across restarts.
pub fn new_id(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!("{prefix}{:016x}{count:04x}", clock ^ (count << 48))
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A streamed response: server-sent events from `steps`, each step's events in order,
/// with a comment every few seconds while nothing is said, so a client that went away is
/// noticed (its job is cancelled when the stream is dropped).
pub fn sse_response<S>(steps: S) -> axum::response::Response
where
    S: futures_util::Stream<Item = Vec<axum::response::sse::Event>> + Send + 'static,
{
    use axum::response::sse::{KeepAlive, Sse};
    use axum::response::IntoResponse;
    use futures_util::StreamExt;
    let events =
        steps.flat_map(|batch| futures_util::stream::iter(batch.into_iter().map(Ok::<_, std::convert::Infallible>)));
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(2)))
        .into_response();
    response.extensions_mut().insert(super::observe::Streamed);
    response
}
