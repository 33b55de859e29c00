//! Continuous batching for `glm serve`: up to `parallel` sequences decoded together in one
//! llama.cpp context, each with its own KV cache (sequence id), its own sampler and its
//! own prompt-prefix reuse; a bounded queue beyond that. One thread owns the context and
//! runs the loop; requests arrive as [`Job`]s and answer with [`JobEvent`]s.
//!
//! INTERFACE ONLY — the implementation lands with the server work.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::model::Engine;
use super::options::{ContextOptions, Sampling};

/// How the scheduler sizes its context and queue.
#[derive(Debug, Clone)]
pub struct BatchOptions {
    /// Sequences decoded together (`--parallel`).
    pub parallel: u32,
    /// Tokens of context per sequence (`--ctx-size`); the context holds `parallel` times
    /// this.
    pub ctx_per_sequence: u32,
    /// Jobs waiting beyond the running ones; one more is refused with [`Busy`].
    pub queue_limit: usize,
    /// Threads, batch sizes, cache types, flash attention (its `ctx_size` and `draft` are
    /// ignored).
    pub context: ContextOptions,
}

/// One generation request, its prompt already rendered and tokenized.
#[derive(Debug, Clone)]
pub struct Job {
    pub prompt: Vec<i32>,
    /// At most this many generated tokens (also bounded by the sequence's context).
    pub max_tokens: usize,
    pub sampling: Sampling,
    /// A GBNF grammar the output must follow (`response_format`), root rule `root`.
    pub grammar: Option<String>,
    /// Generation ends when the text contains one of these; the stop string itself is not
    /// sent.
    pub stop: Vec<String>,
    /// Report the log-probabilities of each generated token and of this many alternatives.
    pub top_logprobs: Option<u32>,
}

/// A generated token's log-probability, and the best alternatives (for `logprobs`).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub text: String,
    pub logprob: f32,
    pub top: Vec<(String, f32)>,
}

/// What a job tells its requester, in order: `Started`, then `Text` pieces, then one of
/// `Finished` or `Failed`.
#[derive(Debug, Clone)]
pub enum JobEvent {
    /// The job has a sequence; `cached_tokens` of its prompt were already in that
    /// sequence's KV cache (prefix reuse).
    Started {
        prompt_tokens: usize,
        cached_tokens: usize,
    },
    /// Complete UTF-8 text, reasoning and tool-call tags included (the caller splits
    /// them), with the log-probabilities of its tokens when asked.
    Text {
        text: String,
        logprobs: Vec<TokenLogprob>,
    },
    Finished(JobSummary),
    Failed(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct JobSummary {
    pub stop: JobStop,
    pub prompt_tokens: usize,
    pub cached_tokens: usize,
    pub generated_tokens: usize,
    pub prompt_time: Duration,
    pub generation_time: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobStop {
    EndOfTurn,
    MaxTokens,
    ContextFull,
    /// One of the job's stop strings appeared.
    StopString(String),
    /// [`JobHandle::cancel`] (or the handle was dropped: the client went away).
    Cancelled,
}

/// The queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the server is busy: {queued} requests wait already")]
pub struct Busy {
    pub queued: usize,
}

/// A submitted job: its events, and the way to cancel it. Dropping the handle cancels the
/// job, so a client that disconnects frees its sequence at once.
pub struct JobHandle {
    pub events: tokio::sync::mpsc::UnboundedReceiver<JobEvent>,
    cancelled: Arc<AtomicBool>,
}

impl JobHandle {
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
    }
}

impl Drop for JobHandle {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// For `/metrics` and `/health`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchStats {
    pub running: usize,
    pub queued: usize,
    pub kv_cells_used: u64,
    pub kv_cells_total: u64,
    pub prompt_tokens_total: u64,
    pub generated_tokens_total: u64,
    pub requests_total: u64,
}

/// The batching loop's thread and the way to reach it.
pub struct Scheduler {
    engine: Arc<Engine>,
}

impl Scheduler {
    /// Creates the context (`parallel` sequences of `ctx_per_sequence` tokens) on a new
    /// thread and starts the loop; fails when llama.cpp cannot make the context.
    pub fn start(engine: Arc<Engine>, options: BatchOptions) -> anyhow::Result<Scheduler> {
        let _ = options;
        let _ = Scheduler { engine };
        todo!("batch implementation")
    }

    /// Queues `job`; [`Busy`] when `queue_limit` jobs already wait.
    pub fn submit(&self, job: Job) -> Result<JobHandle, Busy> {
        let _ = (job, &self.engine);
        todo!("batch implementation")
    }

    pub fn stats(&self) -> BatchStats {
        todo!("batch implementation")
    }

    /// Tokens of context each sequence has.
    pub fn ctx_per_sequence(&self) -> u32 {
        todo!("batch implementation")
    }
}

// The scheduler's thread and the HTTP handlers share the engine.
const _: fn() = || {
    fn shared<T: Send + Sync>() {}
    shared::<Engine>();
};
