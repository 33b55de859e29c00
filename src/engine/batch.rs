//! Continuous batching for `glm serve`: up to `parallel` sequences decoded together in one
//! llama.cpp context, each with its own KV cache (sequence id), its own sampler and its
//! own prompt-prefix reuse; a bounded queue beyond that. One thread owns the context and
//! runs the loop; requests arrive as [`Job`]s and answer with [`JobEvent`]s.
//!
//! `submit` queues a job under one lock with the count of idle sequences, so `Busy` is
//! decided against what will really wait; the loop (`worker`) takes jobs between decode
//! steps, and `stream` holds back text that may turn out to be a stop string.

mod job;
mod stream;
mod worker;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};

use super::model::Engine;
use super::options::{ContextOptions, Sampling};
use super::vision::{PreparedImage, Projector};

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
    /// The vision projector that evaluates jobs' images; without one, a job with images
    /// fails. Requests lay their images out with it (`read`) while the loop encodes
    /// (`write`).
    pub projector: Option<Arc<RwLock<Projector>>>,
}

/// One generation request, its prompt already rendered and tokenized.
#[derive(Debug, Clone)]
pub struct Job {
    /// The prompt's text tokens.
    pub prompt: Vec<i32>,
    /// Images placed between the text tokens, in order; the prompt ends with text.
    pub images: Vec<JobImage>,
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

/// An image of a job's prompt, before the text token at `offset`.
#[derive(Debug, Clone)]
pub struct JobImage {
    pub offset: usize,
    pub image: Arc<PreparedImage>,
}

impl Job {
    /// Cells the prompt takes in a sequence's cache: its text and its images.
    pub fn prompt_tokens(&self) -> usize {
        prompt_cells(self.prompt.len(), &self.images)
    }
}

/// Cells a prompt of `text_tokens` tokens and `images` takes in a sequence's cache.
pub fn prompt_cells(text_tokens: usize, images: &[JobImage]) -> usize {
    text_tokens + images.iter().map(|i| i.image.tokens()).sum::<usize>()
}

/// A generated token's log-probability, and the best alternatives (for `logprobs`).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub text: String,
    pub logprob: f32,
    pub top: Vec<(String, f32)>,
}

/// What a job tells its requester, in order: `Started`, then `Text` pieces, then one of
/// `Finished` or `Failed`. A job refused before it starts (invalid grammar, prompt too
/// long) gets only `Failed`; one cancelled while it waited, only `Finished`.
#[derive(Debug, Clone)]
pub enum JobEvent {
    /// The job has a sequence; `cached_tokens` of its `prompt_tokens` (the whole prompt)
    /// were already in that sequence's KV cache (prefix reuse) and are not evaluated.
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
    /// Tokens in the sequences' KV caches (kept after a job ends, for prefix reuse).
    pub kv_cells_used: u64,
    pub kv_cells_total: u64,
    /// Prompt tokens evaluated (those reused from a cache are not counted).
    pub prompt_tokens_total: u64,
    pub generated_tokens_total: u64,
    /// Jobs accepted by `submit`.
    pub requests_total: u64,
}

/// The batching loop's thread and the way to reach it. Clones share the loop; it ends
/// (failing what is left) when the last clone goes away.
#[derive(Clone)]
pub struct Scheduler {
    engine: Arc<Engine>,
    shared: Arc<Shared>,
    ctx_per_sequence: u32,
    _keeper: Arc<Keeper>,
}

/// What `submit`, `stats` and the loop share.
struct Shared {
    state: Mutex<State>,
    /// Told when a job arrives or the scheduler closes, for an idle loop.
    wake: Condvar,
    parallel: usize,
    queue_limit: usize,
    kv_cells_total: AtomicU64,
    kv_cells_used: AtomicU64,
    prompt_tokens_total: AtomicU64,
    generated_tokens_total: AtomicU64,
    requests_total: AtomicU64,
}

struct State {
    jobs: VecDeque<Queued>,
    /// Sequences without a job; that many queued jobs start at the loop's next step.
    idle_slots: usize,
    /// False once the last `Scheduler` is gone: the loop ends.
    open: bool,
    /// Why the loop ended, once it has (new jobs fail with it at once).
    ended: Option<String>,
}

impl State {
    /// Jobs that cannot start at the next step.
    fn waiting(&self) -> usize {
        self.jobs.len().saturating_sub(self.idle_slots)
    }
}

/// A job and the way back to its requester.
struct Queued {
    job: Job,
    events: tokio::sync::mpsc::UnboundedSender<JobEvent>,
    cancelled: Arc<AtomicBool>,
}

impl Queued {
    fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst) || self.events.is_closed()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The lock guards plain data that every update leaves whole.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Closes the loop when the last scheduler clone is dropped and waits for its thread
/// (at most the decode step under way), so the context is freed when `drop` returns.
struct Keeper {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.shared.lock().open = false;
        self.shared.wake.notify_all();
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

impl Scheduler {
    /// Creates the context (`parallel` sequences of `ctx_per_sequence` tokens) on a new
    /// thread and starts the loop; fails when llama.cpp cannot make the context.
    pub fn start(engine: Arc<Engine>, options: BatchOptions) -> Result<Scheduler> {
        if options.parallel == 0 {
            bail!("--parallel must be at least 1");
        }
        // The training-length check of a single context, per sequence.
        let per_sequence = ContextOptions {
            ctx_size: options.ctx_per_sequence,
            ..options.context.clone()
        };
        let asked = engine.context_size(&per_sequence, 0)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                jobs: VecDeque::new(),
                idle_slots: options.parallel as usize,
                open: true,
                ended: None,
            }),
            wake: Condvar::new(),
            parallel: options.parallel as usize,
            queue_limit: options.queue_limit,
            kv_cells_total: AtomicU64::new(0),
            kv_cells_used: AtomicU64::new(0),
            prompt_tokens_total: AtomicU64::new(0),
            generated_tokens_total: AtomicU64::new(0),
            requests_total: AtomicU64::new(0),
        });
        let (ready, started) = std::sync::mpsc::channel();
        let thread = {
            let (engine, shared) = (Arc::clone(&engine), Arc::clone(&shared));
            std::thread::Builder::new()
                .name("glm-batch".to_owned())
                .spawn(move || worker::run(engine, options, asked, shared, ready))?
        };
        let ctx_per_sequence = match started.recv() {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(anyhow!("the batching thread ended before its context was made"));
            }
        };
        Ok(Scheduler {
            engine,
            _keeper: Arc::new(Keeper {
                shared: Arc::clone(&shared),
                thread: Mutex::new(Some(thread)),
            }),
            shared,
            ctx_per_sequence,
        })
    }

    /// Queues `job`; [`Busy`] when `queue_limit` jobs already wait.
    pub fn submit(&self, job: Job) -> Result<JobHandle, Busy> {
        let (events, receiver) = tokio::sync::mpsc::unbounded_channel();
        let cancelled = Arc::new(AtomicBool::new(false));
        let queued = Queued {
            job,
            events,
            cancelled: Arc::clone(&cancelled),
        };
        {
            let mut state = self.shared.lock();
            if let Some(reason) = &state.ended {
                let _ = queued.events.send(JobEvent::Failed(reason.clone()));
            } else {
                let waiting_with_it = (state.jobs.len() + 1).saturating_sub(state.idle_slots);
                if waiting_with_it > self.shared.queue_limit {
                    return Err(Busy {
                        queued: state.waiting(),
                    });
                }
                state.jobs.push_back(queued);
                self.shared.requests_total.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.shared.wake.notify_all();
        Ok(JobHandle {
            events: receiver,
            cancelled,
        })
    }

    pub fn stats(&self) -> BatchStats {
        let (running, queued) = {
            let state = self.shared.lock();
            (
                self.shared.parallel - state.idle_slots.min(self.shared.parallel),
                state.waiting(),
            )
        };
        let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
        BatchStats {
            running,
            queued,
            kv_cells_used: load(&self.shared.kv_cells_used),
            kv_cells_total: load(&self.shared.kv_cells_total),
            prompt_tokens_total: load(&self.shared.prompt_tokens_total),
            generated_tokens_total: load(&self.shared.generated_tokens_total),
            requests_total: load(&self.shared.requests_total),
        }
    }

    /// Tokens of context each sequence has (llama.cpp rounds the asked size up to a
    /// multiple of 256). A prompt must be shorter than this.
    pub fn ctx_per_sequence(&self) -> u32 {
        self.ctx_per_sequence
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }
}

// The scheduler's thread and the HTTP handlers share the engine.
const _: fn() = || {
    fn shared<T: Send + Sync>() {}
    shared::<Engine>();
};
