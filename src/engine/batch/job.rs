//! One running job: its sampler, where its prompt is, and its text on the way out.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use llama_cpp_2::token::LlamaToken;

use super::stream::Pending;
use super::{Job, JobEvent, JobImage, JobStop, JobSummary, Queued, TokenLogprob};
use crate::engine::log;
use crate::engine::model::Engine;
use crate::engine::session::decode_piece;
use crate::engine::vision::PreparedImage;

pub(super) struct Running {
    events: tokio::sync::mpsc::UnboundedSender<JobEvent>,
    cancelled: Arc<AtomicBool>,
    /// The prompt's text tokens.
    pub prompt: Vec<LlamaToken>,
    /// Its images, each before the text token at its offset.
    images: Vec<JobImage>,
    /// Images in the sequence's cache.
    images_done: usize,
    /// Text tokens and image cells of the prompt.
    prompt_tokens: usize,
    pub cached_tokens: usize,
    /// Prompt text tokens in the sequence's cache; the rest are evaluated in coming steps.
    pub evaluated: usize,
    /// The last sampled token, evaluated at the next step.
    pub next: Option<LlamaToken>,
    sampler: LlamaSampler,
    /// End-of-turn tokens end the job (a grammar's end is one even with `ignore_eos`).
    stop_at_end_of_turn: bool,
    max_tokens: usize,
    top_logprobs: Option<usize>,
    pub generated: usize,
    utf8: encoding_rs::Decoder,
    piece: Vec<u8>,
    text: String,
    pending: Pending,
    admitted: Instant,
    prompt_time: Duration,
    generating_since: Option<Instant>,
}

/// What became of a sampled token.
pub(super) enum Sampled {
    /// Evaluate it and sample again.
    Continue,
    Stop(JobStop),
}

impl Running {
    /// Checks the job and builds its sampler; a job refused gets `Failed` with why.
    /// Images need `can_see`: a vision projector.
    pub fn new(engine: &Engine, queued: Queued, ctx_per_sequence: usize, can_see: bool) -> Option<Running> {
        let checked =
            check_images(&queued.job, can_see).and_then(|()| Self::prepare(engine, &queued.job, ctx_per_sequence));
        match checked {
            Ok((prompt, sampler)) => Some(Self::with(queued, prompt, sampler)),
            Err(e) => {
                let _ = queued.events.send(JobEvent::Failed(format!("{e:#}")));
                None
            }
        }
    }

    fn prepare(engine: &Engine, job: &Job, ctx_per_sequence: usize) -> Result<(Vec<LlamaToken>, LlamaSampler)> {
        if job.prompt.is_empty() {
            return Err(anyhow!("the prompt is empty"));
        }
        let prompt = engine.check_tokens(&job.prompt)?;
        if job.prompt_tokens() >= ctx_per_sequence {
            return Err(anyhow!(
                "the prompt has {} tokens; a sequence's context holds {ctx_per_sequence} (and needs room for the reply)",
                job.prompt_tokens()
            ));
        }
        let sampler = sampler(engine, job, &prompt, ctx_per_sequence)?;
        Ok((prompt, sampler))
    }

    fn with(queued: Queued, prompt: Vec<LlamaToken>, sampler: LlamaSampler) -> Running {
        let job = queued.job;
        Running {
            events: queued.events,
            cancelled: queued.cancelled,
            prompt_tokens: job.prompt_tokens(),
            prompt,
            images: job.images,
            images_done: 0,
            cached_tokens: 0,
            evaluated: 0,
            next: None,
            sampler,
            stop_at_end_of_turn: !job.sampling.ignore_eos || job.grammar.is_some(),
            max_tokens: job.max_tokens,
            top_logprobs: job.top_logprobs.map(|n| n as usize),
            generated: 0,
            utf8: encoding_rs::UTF_8.new_decoder(),
            piece: Vec::new(),
            text: String::new(),
            pending: Pending::new(&job.stop),
            admitted: Instant::now(),
            prompt_time: Duration::ZERO,
            generating_since: None,
        }
    }

    /// Starts at `reused` prompt tokens already cached.
    pub fn start(&mut self, reused: usize) {
        self.cached_tokens = reused;
        self.evaluated = reused;
        self.send(JobEvent::Started {
            prompt_tokens: self.prompt_tokens,
            cached_tokens: reused,
        });
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst) || self.events.is_closed()
    }

    pub fn prompt_done(&self) -> bool {
        self.evaluated == self.prompt.len() && self.images_done == self.images.len()
    }

    /// The text before the first image: what a sequence's cached tokens can stand for.
    pub fn reusable_prompt(&self) -> &[LlamaToken] {
        let end = self.images.first().map_or(self.prompt.len(), |i| i.offset);
        &self.prompt[..end]
    }

    /// Where the text to evaluate next ends: at the next image, or the prompt's end.
    pub fn text_end(&self) -> usize {
        self.images
            .get(self.images_done)
            .map_or(self.prompt.len(), |i| i.offset)
    }

    /// The next image, once the text before it is in the cache.
    pub fn image_due(&self) -> Option<Arc<PreparedImage>> {
        self.images
            .get(self.images_done)
            .filter(|i| i.offset == self.evaluated)
            .map(|i| Arc::clone(&i.image))
    }

    pub fn image_evaluated(&mut self) {
        self.images_done += 1;
    }

    pub fn has_room(&self) -> bool {
        self.generated < self.max_tokens
    }

    /// Samples from `logits` (the job's row of the last batch) and streams the token's
    /// text. Fails when the sampler refuses (a grammar that allows nothing).
    pub fn sample(&mut self, engine: &Engine, logits: &[f32]) -> Result<(LlamaToken, Sampled)> {
        if self.generating_since.is_none() {
            self.prompt_time = self.admitted.elapsed();
            self.generating_since = Some(Instant::now());
        }
        let mut candidates = LlamaTokenDataArray::from_iter(
            logits
                .iter()
                .enumerate()
                .map(|(id, &logit)| llama_cpp_2::token::data::LlamaTokenData::new(LlamaToken(id as i32), logit, 0.0)),
            false,
        );
        candidates.apply_sampler(&mut self.sampler);
        let token = candidates
            .selected_token()
            .ok_or_else(|| anyhow!("the sampler chose no token"))?;
        self.sampler
            .try_accept(token)
            .map_err(|e| anyhow!("the sampler refused the token it chose: {e}"))?;
        if self.stop_at_end_of_turn && engine.is_end_of_turn(token) {
            return Ok((token, Sampled::Stop(JobStop::EndOfTurn)));
        }
        self.generated += 1;
        let logprob = self.top_logprobs.map(|n| logprob(engine, logits, token, n));
        engine.piece(token, &mut self.piece);
        decode_piece(&mut self.utf8, &self.piece, &mut self.text);
        let release = self.pending.push(&self.text, logprob);
        let stop = release.stop.clone();
        self.send_text(release.text, release.logprobs);
        match stop {
            Some(stop) => Ok((token, Sampled::Stop(JobStop::StopString(stop)))),
            None if !self.has_room() => Ok((token, Sampled::Stop(JobStop::MaxTokens))),
            None => Ok((token, Sampled::Continue)),
        }
    }

    /// Sends what text is held back (unless a stop string ended it) and the summary.
    pub fn finish(mut self, stop: JobStop) {
        if !matches!(stop, JobStop::StopString(_) | JobStop::Cancelled) {
            let release = self.pending.flush();
            self.send_text(release.text, release.logprobs);
        }
        let summary = JobSummary {
            stop,
            prompt_tokens: self.prompt_tokens,
            cached_tokens: self.cached_tokens,
            generated_tokens: self.generated,
            prompt_time: if self.generating_since.is_some() {
                self.prompt_time
            } else {
                self.admitted.elapsed()
            },
            generation_time: self.generating_since.map(|t| t.elapsed()).unwrap_or_default(),
        };
        self.send(JobEvent::Finished(summary));
    }

    pub fn fail(self, reason: String) {
        self.send(JobEvent::Failed(reason));
    }

    fn send_text(&self, text: String, logprobs: Vec<TokenLogprob>) {
        if !text.is_empty() || !logprobs.is_empty() {
            self.send(JobEvent::Text { text, logprobs });
        }
    }

    /// A requester that went away is noticed at the next step (`is_cancelled`).
    fn send(&self, event: JobEvent) {
        let _ = self.events.send(event);
    }
}

/// Images need a projector, and come in order within the text, which they may not end
/// (the logits to sample from come from the last text token).
fn check_images(job: &Job, can_see: bool) -> Result<()> {
    if job.images.is_empty() {
        return Ok(());
    }
    if !can_see {
        return Err(anyhow!("this model has no vision projector: it cannot take images"));
    }
    let ordered = job.images.windows(2).all(|pair| pair[0].offset <= pair[1].offset);
    let inside = job.images.iter().all(|i| i.offset < job.prompt.len());
    if !ordered || !inside {
        return Err(anyhow!(
            "the images are out of order or after the prompt's text (a bug in glm)"
        ));
    }
    Ok(())
}

/// The job's sampler: the engine's chain, which has seen the prompt (repetition
/// penalties count it), behind the grammar, which must see only the reply.
fn sampler(engine: &Engine, job: &Job, prompt: &[LlamaToken], ctx_per_sequence: usize) -> Result<LlamaSampler> {
    let mut chain = engine.sampler(&job.sampling, ctx_per_sequence);
    chain.accept_many(prompt.iter());
    let Some(grammar) = &job.grammar else {
        return Ok(chain);
    };
    log::start_capture();
    let grammar = LlamaSampler::grammar(&engine.model, grammar, "root").map_err(|e| match log::reason() {
        Some(reason) => anyhow!("the grammar is invalid: {reason}"),
        None => anyhow!("the grammar is invalid: {e}"),
    })?;
    Ok(LlamaSampler::chain_simple([grammar, chain]))
}

/// The chosen token's log-probability and the `top` most likely tokens' (log-softmax of
/// the raw logits, before any sampler).
fn logprob(engine: &Engine, logits: &[f32], token: LlamaToken, top: usize) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    let log_total = max + sum.ln() as f32;
    let of = |id: usize| logits.get(id).map_or(f32::NEG_INFINITY, |l| l - log_total);
    let mut ids: Vec<usize> = (0..logits.len()).collect();
    let by_logit = |a: &usize, b: &usize| logits[*b].total_cmp(&logits[*a]);
    let top = top.min(ids.len());
    if top > 0 && top < ids.len() {
        ids.select_nth_unstable_by(top - 1, by_logit);
    }
    ids.truncate(top);
    ids.sort_by(by_logit);
    let mut piece = Vec::new();
    let mut text_of = |id: LlamaToken| {
        engine.piece(id, &mut piece);
        String::from_utf8_lossy(&piece).into_owned()
    };
    TokenLogprob {
        text: text_of(token),
        logprob: of(token.0 as usize),
        top: ids
            .into_iter()
            .map(|id| (text_of(LlamaToken(id as i32)), of(id)))
            .collect(),
    }
}
