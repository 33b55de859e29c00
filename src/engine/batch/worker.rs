//! The loop: one context, `parallel` sequences, one batch per step holding the last
//! sampled token of every generating sequence and as many prompt tokens as still fit.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::sync::{Arc, RwLock};

use anyhow::{anyhow, Result};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::token::LlamaToken;

use super::job::{Running, Sampled};
use super::{BatchOptions, JobStop, Queued, Shared};
use crate::engine::model::Engine;
use crate::engine::vision::{PreparedImage, Projector};

/// A sequence of the context: the tokens in its KV cache, and its job if it has one.
struct Slot {
    seq: i32,
    cache: SequenceCache,
    job: Option<Running>,
    /// When it last took a job: among caches that help a prompt equally, the oldest goes.
    last_used: u64,
}

struct Worker<'e> {
    engine: &'e Engine,
    ctx: LlamaContext<'e>,
    batch: LlamaBatch<'static>,
    n_batch: usize,
    ctx_per_sequence: usize,
    slots: Vec<Slot>,
    /// Jobs placed so far, the clock of `Slot::last_used`.
    placed: u64,
    shared: Arc<Shared>,
    projector: Option<Arc<RwLock<Projector>>>,
}

/// What a sequence's KV cache holds.
#[derive(Default)]
struct SequenceCache {
    /// The tokens at positions 0.. of the cache, which a prompt's prefix can reuse.
    cached: Vec<LlamaToken>,
    /// Cells after `cached` that no prompt can reuse: an image and what follows it.
    untracked: usize,
    /// The next token's position (images may take fewer positions than cells).
    next_position: usize,
}

impl SequenceCache {
    fn cells(&self) -> usize {
        self.cached.len() + self.untracked
    }

    /// Notes a token going into the cache at the next position; returns that position.
    fn push(&mut self, token: LlamaToken) -> i32 {
        let position = self.next_position;
        if self.untracked == 0 {
            self.cached.push(token);
        } else {
            self.untracked += 1;
        }
        self.next_position += 1;
        position as i32
    }

    /// The cache holds the first `kept` cached tokens only.
    fn keep(&mut self, kept: usize) {
        self.cached.truncate(kept);
        self.untracked = 0;
        self.next_position = self.cached.len();
    }
}

/// The thread: makes the context (telling `start` the tokens per sequence, or why it
/// could not), runs the loop, and fails whatever is left when the loop ends.
pub(super) fn run(
    engine: Arc<Engine>,
    options: BatchOptions,
    ctx_per_sequence: u32,
    shared: Arc<Shared>,
    ready: Sender<Result<u32>>,
) {
    let parallel = options.parallel;
    let projector = options.projector.clone();
    let ctx = match engine.parallel_context(&options.context, ctx_per_sequence, parallel) {
        Ok(ctx) => ctx,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let mut worker = Worker::new(&engine, ctx, parallel as usize, shared, projector);
    let _ = ready.send(Ok(worker.ctx_per_sequence as u32));
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| worker.run()));
    let reason = match outcome {
        Ok(()) => "the server is shutting down".to_owned(),
        Err(_) => "the batching loop failed (a bug in glm or llama.cpp)".to_owned(),
    };
    worker.end(reason);
}

impl<'e> Worker<'e> {
    fn new(
        engine: &'e Engine,
        ctx: LlamaContext<'e>,
        parallel: usize,
        shared: Arc<Shared>,
        projector: Option<Arc<RwLock<Projector>>>,
    ) -> Self {
        let n_batch = ctx.n_batch().max(1) as usize;
        // Non-unified KV: every sequence has an equal share of the cells.
        let ctx_per_sequence = ctx.n_ctx() as usize / parallel;
        shared
            .kv_cells_total
            .store((ctx_per_sequence * parallel) as u64, Ordering::Relaxed);
        let slots = (0..parallel)
            .map(|seq| Slot {
                seq: seq as i32,
                cache: SequenceCache::default(),
                job: None,
                last_used: 0,
            })
            .collect();
        Worker {
            engine,
            ctx,
            batch: LlamaBatch::new(n_batch, 1),
            n_batch,
            ctx_per_sequence,
            slots,
            placed: 0,
            shared,
            projector,
        }
    }

    fn run(&mut self) {
        while self.admit_or_wait() {
            self.drop_cancelled();
            self.step();
            self.publish();
        }
    }

    /// Starts queued jobs in idle sequences; waits while there is nothing to do. False
    /// once the scheduler is closed.
    fn admit_or_wait(&mut self) -> bool {
        let taken = {
            let mut state = self.shared.lock();
            loop {
                state.jobs.retain(|queued| {
                    let keep = !queued.is_cancelled();
                    if !keep {
                        let _ = queued
                            .events
                            .send(super::JobEvent::Finished(cancelled_while_queued(queued)));
                    }
                    keep
                });
                if !state.open {
                    return false;
                }
                let idle = self.idle_slots();
                if idle < self.slots.len() || !state.jobs.is_empty() {
                    let take = idle.min(state.jobs.len());
                    state.idle_slots = idle - take;
                    break state.jobs.drain(..take).collect::<Vec<_>>();
                }
                state = self.shared.wake.wait(state).unwrap_or_else(|e| e.into_inner());
            }
        };
        let mut refused = false;
        for queued in taken {
            refused |= !self.place(queued);
        }
        if refused {
            self.shared.lock().idle_slots = self.idle_slots();
        }
        true
    }

    fn idle_slots(&self) -> usize {
        self.slots.iter().filter(|s| s.job.is_none()).count()
    }

    /// Puts a job in the idle sequence whose cache shares the longest prefix with its
    /// prompt, dropping the rest of that cache. False when the job was refused.
    fn place(&mut self, queued: Queued) -> bool {
        let can_see = self.projector.is_some();
        let Some(mut job) = Running::new(self.engine, queued, self.ctx_per_sequence, can_see) else {
            return false;
        };
        let Some(index) = self.best_slot(job.reusable_prompt()) else {
            job.fail("no sequence was free (a bug in glm)".to_owned());
            return false;
        };
        // At least the last prompt token is evaluated again, for fresh logits.
        let common = common_prefix(&self.slots[index].cache.cached, job.reusable_prompt()).min(job.prompt.len() - 1);
        let reused = self.forget_from(index, common);
        job.start(reused);
        self.placed += 1;
        self.slots[index].last_used = self.placed;
        self.slots[index].job = Some(job);
        true
    }

    fn best_slot(&self, prompt: &[LlamaToken]) -> Option<usize> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, slot)| slot.job.is_none())
            .max_by_key(|(_, slot)| {
                (
                    common_prefix(&slot.cache.cached, prompt),
                    std::cmp::Reverse(slot.last_used),
                )
            })
            .map(|(index, _)| index)
    }

    /// Drops a sequence's cache from `position` on; returns the tokens kept (none when
    /// llama.cpp cannot cut this cache part way).
    fn forget_from(&mut self, index: usize, position: usize) -> usize {
        let slot = &mut self.slots[index];
        let seq = Some(slot.seq as u32);
        // Positions grow along the cache, so cutting at a position of `cached` also drops
        // everything untracked after it.
        if position < slot.cache.cells() || position == 0 {
            let cut = self.ctx.clear_kv_cache_seq(seq, Some(position as u32), None);
            if !matches!(cut, Ok(true)) {
                let _ = self.ctx.clear_kv_cache_seq(seq, None, None);
                slot.cache.keep(0);
                return 0;
            }
            slot.cache.keep(position);
        }
        slot.cache.cached.len()
    }

    /// Ends jobs whose requester cancelled or went away; their sequences keep their
    /// caches for prefix reuse.
    fn drop_cancelled(&mut self) {
        let cancelled: Vec<Running> = self
            .slots
            .iter_mut()
            .filter(|slot| slot.job.as_ref().is_some_and(Running::is_cancelled))
            .filter_map(|slot| slot.job.take())
            .collect();
        if cancelled.is_empty() {
            return;
        }
        // Free first, then tell, as in `finish`.
        self.publish();
        for job in cancelled {
            job.finish(JobStop::Cancelled);
        }
    }

    /// One decode: the pending token of every generating job, then prompt tokens while
    /// the batch has room; then every job with logits samples.
    fn step(&mut self) {
        self.evaluate_images();
        self.batch.clear();
        let mut outputs = Vec::new();
        let mut in_batch = Vec::new();
        let filled = self.fill(&mut outputs, &mut in_batch);
        if self.batch.n_tokens() == 0 {
            return;
        }
        let decoded = filled.and_then(|()| {
            let _watch = crate::engine::rpc::watch();
            self.ctx
                .decode(&mut self.batch)
                .map_err(|e| anyhow!("llama.cpp failed to evaluate the batch: {e}"))
        });
        if let Err(e) = decoded {
            for index in in_batch {
                self.fail_slot(index, format!("{e:#}"));
            }
            return;
        }
        for (index, logits_index) in outputs {
            self.sample(index, logits_index);
        }
    }

    /// Evaluates, one by one and outside the batch (as llama-server does), the images
    /// whose preceding text is in the cache: libmtmd encodes an image and decodes its
    /// embeddings in batches of its own.
    fn evaluate_images(&mut self) {
        for index in 0..self.slots.len() {
            while let Some(image) = self.slots[index].job.as_ref().and_then(Running::image_due) {
                match self.evaluate_image(index, &image) {
                    Ok(()) => {
                        self.shared
                            .prompt_tokens_total
                            .fetch_add(image.tokens() as u64, Ordering::Relaxed);
                    }
                    Err(e) => {
                        self.fail_slot(index, format!("{e:#}"));
                        break;
                    }
                }
            }
        }
    }

    fn evaluate_image(&mut self, index: usize, image: &PreparedImage) -> Result<()> {
        let projector = self
            .projector
            .as_ref()
            .ok_or_else(|| anyhow!("this model has no vision projector"))?;
        let slot = &mut self.slots[index];
        let next = projector.write().unwrap_or_else(|e| e.into_inner()).evaluate(
            image,
            &mut self.ctx,
            slot.cache.next_position,
            slot.seq,
        )?;
        slot.cache.untracked += image.tokens();
        slot.cache.next_position = next;
        if let Some(job) = slot.job.as_mut() {
            job.image_evaluated();
        }
        Ok(())
    }

    /// Adds the step's tokens to the batch (and to the slots' caches), noting which
    /// slots take part and where their logits will be.
    fn fill(&mut self, outputs: &mut Vec<(usize, i32)>, in_batch: &mut Vec<usize>) -> Result<()> {
        for (index, slot) in self.slots.iter_mut().enumerate() {
            let Some(token) = slot.job.as_mut().and_then(|job| job.next.take()) else {
                continue;
            };
            in_batch.push(index);
            let position = slot.cache.push(token);
            self.batch.add(token, position, &[slot.seq], true)?;
            outputs.push((index, self.batch.n_tokens() - 1));
        }
        for (index, slot) in self.slots.iter_mut().enumerate() {
            let room = self.n_batch.saturating_sub(self.batch.n_tokens() as usize);
            let Some(job) = slot.job.as_mut().filter(|job| !job.prompt_done()) else {
                continue;
            };
            if room == 0 {
                break;
            }
            // Zero while an image waits (its evaluation failed: the job is gone).
            let chunk = (job.text_end() - job.evaluated).min(room);
            if chunk == 0 {
                continue;
            }
            in_batch.push(index);
            let last = job.prompt.len() - 1;
            for at in job.evaluated..job.evaluated + chunk {
                let token = job.prompt[at];
                let position = slot.cache.push(token);
                self.batch.add(token, position, &[slot.seq], at == last)?;
            }
            job.evaluated += chunk;
            self.shared
                .prompt_tokens_total
                .fetch_add(chunk as u64, Ordering::Relaxed);
            if job.prompt_done() {
                outputs.push((index, self.batch.n_tokens() - 1));
            }
        }
        Ok(())
    }

    /// Samples a slot's next token from its logits and decides whether it goes on.
    fn sample(&mut self, index: usize, logits_index: i32) {
        let slot = &mut self.slots[index];
        let Some(job) = slot.job.as_mut() else {
            return;
        };
        if !job.has_room() {
            return self.finish(index, JobStop::MaxTokens);
        }
        if slot.cache.cells() >= self.ctx_per_sequence {
            return self.finish(index, JobStop::ContextFull);
        }
        let logits = self.ctx.get_logits_ith(logits_index);
        match job.sample(self.engine, logits) {
            Err(e) => self.fail_slot(index, format!("{e:#}")),
            Ok((_, Sampled::Stop(stop))) => self.count_and_finish(index, stop),
            // The token would take the last cell: no room to sample after it.
            Ok((_, Sampled::Continue)) if slot.cache.cells() + 1 >= self.ctx_per_sequence => {
                self.count_and_finish(index, JobStop::ContextFull)
            }
            Ok((token, Sampled::Continue)) => {
                job.next = Some(token);
                self.shared.generated_tokens_total.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn count_and_finish(&mut self, index: usize, stop: JobStop) {
        if stop != JobStop::EndOfTurn {
            self.shared.generated_tokens_total.fetch_add(1, Ordering::Relaxed);
        }
        self.finish(index, stop);
    }

    /// The slot is free before the job hears it has finished: a client that sends its
    /// next request (or reads `stats`) on the answer must find the sequence free.
    fn finish(&mut self, index: usize, stop: JobStop) {
        if let Some(job) = self.slots[index].job.take() {
            self.publish();
            job.finish(stop);
        }
    }

    /// Fails a slot's job and forgets its cache, which may hold tokens llama.cpp did not
    /// evaluate.
    fn fail_slot(&mut self, index: usize, reason: String) {
        let slot = &mut self.slots[index];
        let _ = self.ctx.clear_kv_cache_seq(Some(slot.seq as u32), None, None);
        slot.cache.keep(0);
        if let Some(job) = slot.job.take() {
            self.publish();
            job.fail(reason);
        }
    }

    /// Tells `submit` and `stats` how things stand after a step.
    fn publish(&mut self) {
        let used: usize = self.slots.iter().map(|s| s.cache.cells()).sum();
        self.shared.kv_cells_used.store(used as u64, Ordering::Relaxed);
        self.shared.lock().idle_slots = self.idle_slots();
    }

    /// Fails the running and the queued jobs; later submissions fail at once.
    fn end(&mut self, reason: String) {
        for slot in &mut self.slots {
            if let Some(job) = slot.job.take() {
                job.fail(reason.clone());
            }
        }
        let queued: Vec<Queued> = {
            let mut state = self.shared.lock();
            state.ended = Some(reason.clone());
            state.idle_slots = 0;
            state.jobs.drain(..).collect()
        };
        for queued in queued {
            let _ = queued.events.send(super::JobEvent::Failed(reason.clone()));
        }
    }
}

fn cancelled_while_queued(queued: &Queued) -> super::JobSummary {
    super::JobSummary {
        stop: JobStop::Cancelled,
        prompt_tokens: queued.job.prompt_tokens(),
        cached_tokens: 0,
        generated_tokens: 0,
        prompt_time: Default::default(),
        generation_time: Default::default(),
    }
}

fn common_prefix(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}
