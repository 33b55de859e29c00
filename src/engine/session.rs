//! The token-generation session: a context that lives across turns and reuses its KV
//! cache for the unchanged prefix of each new prompt, streaming whole characters.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::token::LlamaToken;

use super::model::Engine;
use super::options::{ContextOptions, Sampling};
use super::speculative::{Decoder, DraftStats};

#[derive(Debug, Clone, Default)]
pub struct GenerationStats {
    /// Prompt tokens evaluated for this reply (those already in the KV cache are not).
    pub prompt_tokens: usize,
    /// Prompt tokens reused from the KV cache of earlier turns.
    pub reused_tokens: usize,
    pub prompt_time: Duration,
    pub generated_tokens: usize,
    pub generation_time: Duration,
    /// Why generation ended.
    pub stop: StopReason,
    /// Tokens drafted by multi-token prediction, and how many the model kept.
    pub draft: DraftStats,
}

/// Why a reply ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StopReason {
    /// The model ended its turn.
    #[default]
    EndOfTurn,
    /// The reply reached the token limit it was given.
    MaxTokens,
    /// The context has no room for another token.
    ContextFull,
    /// The caller's `on_text` asked to stop (an interrupt, or output that went away).
    Stopped,
}

impl StopReason {
    pub fn describe(self) -> &'static str {
        match self {
            StopReason::EndOfTurn => "end of turn",
            StopReason::MaxTokens => "max tokens",
            StopReason::ContextFull => "context full",
            StopReason::Stopped => "interrupted",
        }
    }
}

/// The prompt's evaluation was stopped by the caller's watcher before generation began;
/// the tokens evaluated so far stay in the cache for the next prompt to reuse.
#[derive(Debug, thiserror::Error)]
#[error("interrupted during prompt evaluation")]
pub struct Interrupted;

/// Told how far prompt evaluation is (tokens done, tokens in all) after each step;
/// returning `false` stops it.
pub type PromptWatcher = Box<dyn FnMut(usize, usize) -> bool>;

impl GenerationStats {
    /// Prompt tokens evaluated per second.
    pub fn prompt_rate(&self) -> f64 {
        per_second(self.prompt_tokens, self.prompt_time)
    }

    /// Tokens generated per second.
    pub fn generation_rate(&self) -> f64 {
        per_second(self.generated_tokens, self.generation_time)
    }
}

fn per_second(count: usize, time: Duration) -> f64 {
    count as f64 / time.as_secs_f64().max(1e-9)
}

/// A context that lives across turns: each reply evaluates only the part of the new
/// prompt that differs from what the KV cache already holds.
pub struct ChatSession<'m> {
    engine: &'m Engine,
    pub(super) decoder: Decoder<'m>,
    /// Tokens whose keys and values are in the cache, in position order.
    cached: Vec<LlamaToken>,
    /// The text those tokens stand for, and where each token's text ends in it.
    cached_text: Vec<u8>,
    token_ends: Vec<usize>,
    /// Position of the next token (images take positions that are not tokens).
    pub(super) next_position: usize,
    /// Set after an image turn: the cache cannot be matched against text any more.
    pub(super) positions_untracked: bool,
    /// Sees prompt evaluation progress and may stop it.
    prompt_watcher: Option<PromptWatcher>,
    /// Replaces drafts in tests (a random draft head never guesses right).
    #[cfg(feature = "test-support")]
    draft_oracle: Option<DraftOracle>,
}

/// Test drafts: the tokens expected at each position, every `wrong_every`-th one
/// changed so that drafts are partly rejected.
#[cfg(feature = "test-support")]
#[derive(Debug, Clone)]
pub struct DraftOracle {
    pub tokens: Vec<i32>,
    pub wrong_every: usize,
}

impl<'m> ChatSession<'m> {
    pub fn new(engine: &'m Engine, options: &ContextOptions) -> Result<Self> {
        let n_ctx = engine.context_size(options, 0)?;
        Ok(Self {
            engine,
            decoder: Decoder::new(engine, options, n_ctx)?,
            cached: Vec::new(),
            cached_text: Vec::new(),
            token_ends: Vec::new(),
            next_position: 0,
            positions_untracked: false,
            prompt_watcher: None,
            #[cfg(feature = "test-support")]
            draft_oracle: None,
        })
    }

    /// From now on prompt evaluation goes in steps of one physical batch, and `watcher`
    /// hears after each step (progress display, interrupts).
    pub fn watch_prompts(&mut self, watcher: PromptWatcher) {
        self.prompt_watcher = Some(watcher);
    }

    pub fn n_ctx(&self) -> usize {
        self.decoder.target().n_ctx() as usize
    }

    /// Whether replies with `sampling` draft with the model's NextN layers.
    pub fn drafts(&self, sampling: &Sampling) -> bool {
        self.decoder.drafts(sampling.is_greedy())
    }

    /// Forgets the cache (a new conversation).
    pub fn clear(&mut self) {
        self.decoder.clear();
        self.cached.clear();
        self.cached_text.clear();
        self.token_ends.clear();
        self.next_position = 0;
        self.positions_untracked = false;
    }

    /// Tokens for a rendered conversation that reuse the cached tokens wherever the text
    /// is the same. Re-tokenizing the whole text would not give back the tokens the model
    /// generated (tokenization is not unique), and every turn would then re-evaluate the
    /// previous answer.
    pub fn tokens_for(&self, prompt: &str) -> Vec<i32> {
        let same = self
            .cached_text
            .iter()
            .zip(prompt.as_bytes())
            .take_while(|(a, b)| a == b)
            .count();
        let keep = self.token_ends.iter().take_while(|&&end| end <= same).count();
        let boundary = if keep == 0 { 0 } else { self.token_ends[keep - 1] };
        let rest = match prompt.get(boundary..) {
            Some(rest) => rest,
            None => return self.engine.tokenize(prompt),
        };
        let mut tokens: Vec<i32> = self.cached[..keep].iter().map(|t| t.0).collect();
        tokens.extend(self.engine.tokenize(rest));
        tokens
    }

    fn remember(&mut self, token: LlamaToken, text: &[u8]) {
        self.cached.push(token);
        self.cached_text.extend_from_slice(text);
        self.token_ends.push(self.cached_text.len());
    }

    /// Evaluates `prompt` (reusing the cached prefix) and generates the reply.
    pub fn respond(
        &mut self,
        prompt: &[i32],
        max_tokens: usize,
        sampling: &Sampling,
        mut on_text: impl FnMut(&str) -> bool,
    ) -> Result<GenerationStats> {
        if self.positions_untracked {
            // An image turn left positions that do not follow the token count.
            self.clear();
        }
        if prompt.is_empty() {
            bail!("the prompt is empty");
        }
        let prompt = self.engine.check_tokens(prompt)?;
        if prompt.len() >= self.n_ctx() {
            bail!(
                "the prompt has {} tokens; the context holds {}",
                prompt.len(),
                self.n_ctx()
            );
        }
        // At least the last prompt token is evaluated again, to get fresh logits.
        let reused = common_prefix(&self.cached, &prompt).min(prompt.len() - 1);
        self.forget_from(reused)?;
        // A drafting reply evaluates the last prompt token with the first draft.
        let drafting = self.decoder.drafts(sampling.is_greedy());
        let evaluated = if drafting { prompt.len() - 1 } else { prompt.len() };
        let started = Instant::now();
        let logits_index = self.evaluate_prompt(&prompt, reused..evaluated)?;
        let stats = GenerationStats {
            prompt_tokens: prompt.len() - reused,
            reused_tokens: reused,
            prompt_time: started.elapsed(),
            ..Default::default()
        };
        self.next_position = self.cached.len();
        if drafting {
            return self.generate_drafted(&prompt, max_tokens, sampling, &mut on_text, stats);
        }
        self.generate_reply(logits_index, &prompt, max_tokens, sampling, &mut on_text, stats)
    }

    /// Evaluates `prompt[range]` and returns the batch index of the prompt's last token's
    /// logits (when the range holds it).
    /// With a watcher, it goes a physical batch at a time (llama.cpp splits a batch into
    /// physical batches anyway, so the results are the same) and may be stopped between
    /// steps; what was evaluated stays cached. On any error the cache keeps only what
    /// was evaluated.
    fn evaluate_prompt(&mut self, prompt: &[LlamaToken], range: std::ops::Range<usize>) -> Result<i32> {
        let from = range.start;
        let todo = &prompt[range];
        let step = match self.prompt_watcher {
            Some(_) => self.decoder.target().n_ubatch().max(1) as usize,
            None => todo.len().max(1),
        };
        let last = prompt.len().saturating_sub(1);
        let mut logits_index = -1;
        let mut piece = Vec::new();
        for (i, chunk) in todo.chunks(step).enumerate() {
            let start = from + i * step;
            for token in chunk {
                prompt_piece(self.engine, *token, &mut piece);
                self.remember(*token, &piece);
            }
            let evaluated = decode_tokens(&mut self.decoder, chunk, start, &|p| p == last, &mut |_, _| {});
            logits_index = match evaluated {
                Ok(index) => index,
                Err(e) => {
                    self.forget_from(start)?;
                    return Err(e);
                }
            };
            let done = start + chunk.len() - from;
            if let Some(watcher) = &mut self.prompt_watcher {
                if !watcher(done, todo.len()) && done < todo.len() {
                    self.next_position = self.cached.len();
                    return Err(Interrupted.into());
                }
            }
        }
        Ok(logits_index)
    }

    /// Samples the reply after a prompt whose logits sit at `logits_index` of the last
    /// batch, streaming text to `on_text`.
    pub(super) fn generate_reply(
        &mut self,
        logits_index: i32,
        prompt: &[LlamaToken],
        max_tokens: usize,
        sampling: &Sampling,
        on_text: &mut dyn FnMut(&str) -> bool,
        mut stats: GenerationStats,
    ) -> Result<GenerationStats> {
        let mut sampler = self.engine.sampler(sampling, self.n_ctx());
        sampler.accept_many(prompt.iter());
        let mut decoder = encoding_rs::UTF_8.new_decoder();
        let (mut piece, mut text) = (Vec::new(), String::new());
        let mut index = logits_index;
        let started = Instant::now();
        stats.stop = loop {
            if stats.generated_tokens >= max_tokens {
                break StopReason::MaxTokens;
            }
            if self.next_position >= self.n_ctx() {
                break StopReason::ContextFull;
            }
            let token = sampler.sample(self.decoder.target(), index);
            if self.engine.is_end_of_turn(token) && !sampling.ignore_eos {
                break StopReason::EndOfTurn;
            }
            stats.generated_tokens += 1;
            self.engine.piece(token, &mut piece);
            decode_piece(&mut decoder, &piece, &mut text);
            // Shown before the next forward pass, not after it; a stop here leaves the token
            // out of the cache, and the next turn evaluates its text again.
            if !text.is_empty() && !on_text(&text) {
                break StopReason::Stopped;
            }
            let position = self.next_position;
            self.next_position += 1;
            self.remember(token, &piece);
            index = decode_tokens(&mut self.decoder, &[token], position, &|_| true, &mut |_, _| {})?;
        };
        stats.generation_time = started.elapsed();
        Ok(stats)
    }

    /// The reply with multi-token prediction: from the last prompt token (not yet
    /// evaluated), each step drafts a few tokens, evaluates the last token and the draft
    /// in one batch, and samples each position in turn, keeping the draft while it
    /// matches what was sampled. The first sample that differs from the draft (or the
    /// one after a fully kept draft) starts the next step.
    fn generate_drafted(
        &mut self,
        prompt: &[LlamaToken],
        max_tokens: usize,
        sampling: &Sampling,
        on_text: &mut dyn FnMut(&str) -> bool,
        mut stats: GenerationStats,
    ) -> Result<GenerationStats> {
        let n_ctx = self.n_ctx();
        let mut sampler = self.engine.sampler(sampling, n_ctx);
        sampler.accept_many(prompt.iter());
        let (&first, history) = prompt.split_last().context("the prompt is empty")?;
        let mut last = first;
        let mut last_piece = Vec::new();
        prompt_piece(self.engine, last, &mut last_piece);
        self.decoder.begin(history)?;
        let mut utf8 = encoding_rs::UTF_8.new_decoder();
        let (mut piece, mut text) = (Vec::new(), String::new());
        let started = Instant::now();
        loop {
            if stats.generated_tokens >= max_tokens {
                stats.stop = StopReason::MaxTokens;
                break;
            }
            if self.next_position >= n_ctx {
                stats.stop = StopReason::ContextFull;
                break;
            }
            let position = self.next_position;
            let room = (n_ctx - position - 1).min(max_tokens - stats.generated_tokens - 1);
            let guesses = self.decoder.draft(position as u32, last, room)?;
            #[cfg(feature = "test-support")]
            let guesses = self.oracle_guesses(position, guesses);
            let mut batch = LlamaBatch::new(guesses.len() + 1, 1);
            for (offset, token) in std::iter::once(&last).chain(&guesses).enumerate() {
                batch.add(*token, (position + offset) as i32, &[0], true)?;
            }
            self.decoder.decode(&mut batch)?;
            self.remember(last, &last_piece);
            self.next_position += 1;
            let mut kept = 0;
            let mut stop = false;
            for index in 0..=guesses.len() {
                let token = sampler.sample(self.decoder.target(), index as i32);
                if self.engine.is_end_of_turn(token) && !sampling.ignore_eos {
                    stats.stop = StopReason::EndOfTurn;
                    stop = true;
                    break;
                }
                stats.generated_tokens += 1;
                self.engine.piece(token, &mut piece);
                decode_piece(&mut utf8, &piece, &mut text);
                if !text.is_empty() && !on_text(&text) {
                    stats.stop = StopReason::Stopped;
                    stop = true;
                    break;
                }
                if guesses.get(index) != Some(&token) {
                    // Not evaluated yet: the next step starts from it.
                    last = token;
                    last_piece.clone_from(&piece);
                    break;
                }
                // The guess is this token, and its position is already evaluated.
                self.remember(token, &piece);
                self.next_position += 1;
                kept += 1;
                if stats.generated_tokens >= max_tokens {
                    break;
                }
            }
            // The drafter is told what was kept however the step ended: it refuses to draft
            // again until it knows.
            stats.draft.drafted += guesses.len();
            stats.draft.accepted += kept;
            self.decoder.accept(kept, guesses.len())?;
            self.decoder.forget_from(self.next_position as u32)?;
            if stop {
                break;
            }
        }
        stats.generation_time = started.elapsed();
        Ok(stats)
    }

    /// Drafts from the test oracle instead of the draft head (no more than the head
    /// drafted, which llama.cpp's bookkeeping expects).
    #[cfg(feature = "test-support")]
    fn oracle_guesses(&self, position: usize, guesses: Vec<LlamaToken>) -> Vec<LlamaToken> {
        let Some(oracle) = &self.draft_oracle else {
            return guesses;
        };
        (position + 1..position + 1 + guesses.len())
            .map_while(|p| {
                let token = *oracle.tokens.get(p)?;
                let wrong = oracle.wrong_every > 0 && p % oracle.wrong_every == 0;
                Some(LlamaToken(if wrong {
                    (token + 1) % self.engine.n_vocab() as i32
                } else {
                    token
                }))
            })
            .collect()
    }

    #[cfg(feature = "test-support")]
    pub fn set_draft_oracle(&mut self, oracle: Option<DraftOracle>) {
        self.draft_oracle = oracle;
    }

    /// The tokens in the KV cache, in position order.
    #[cfg(feature = "test-support")]
    pub fn cached_tokens(&self) -> Vec<i32> {
        self.cached.iter().map(|t| t.0).collect()
    }

    fn forget_from(&mut self, position: usize) -> Result<()> {
        if position < self.cached.len() {
            self.decoder.forget_from(position as u32)?;
            self.cached.truncate(position);
            self.token_ends.truncate(position);
            self.cached_text.truncate(self.token_ends.last().copied().unwrap_or(0));
        }
        Ok(())
    }
}

/// Text of a prompt token as the template wrote it (special tokens spelled out).
fn prompt_piece(engine: &Engine, token: LlamaToken, piece: &mut Vec<u8>) {
    piece.clear();
    engine.model.vocab().token_to_piece_into(token, piece, true, None);
}

/// What evaluates batches: a plain context, or a session's contexts (which keep the
/// draft context in step).
pub(super) trait Evaluate<'m> {
    fn evaluate(&mut self, batch: &mut LlamaBatch) -> Result<()>;
    fn context(&self) -> &LlamaContext<'m>;
}

impl<'m> Evaluate<'m> for LlamaContext<'m> {
    fn evaluate(&mut self, batch: &mut LlamaBatch) -> Result<()> {
        let _watch = super::rpc::watch();
        self.decode(batch).context("llama.cpp failed to evaluate the tokens")
    }

    fn context(&self) -> &LlamaContext<'m> {
        self
    }
}

impl<'m> Evaluate<'m> for Decoder<'m> {
    fn evaluate(&mut self, batch: &mut LlamaBatch) -> Result<()> {
        self.decode(batch)
    }

    fn context(&self) -> &LlamaContext<'m> {
        self.target()
    }
}

/// Evaluates `tokens` at positions `first..`, in batches the context accepts; logits are
/// computed only where `wanted(position)` and handed to `on_logits`. Returns the batch
/// index of the last token's logits, which a sampler reads next. The one decode loop of
/// `logits`, prompt evaluation and generation.
pub(super) fn decode_tokens<'m>(
    ctx: &mut dyn Evaluate<'m>,
    tokens: &[LlamaToken],
    first: usize,
    wanted: &dyn Fn(usize) -> bool,
    on_logits: &mut dyn FnMut(usize, &[f32]),
) -> Result<i32> {
    let n_batch = (ctx.context().n_batch() as usize).max(1);
    let mut last_index = -1;
    for (chunk_index, chunk) in tokens.chunks(n_batch).enumerate() {
        let start = first + chunk_index * n_batch;
        let mut batch = LlamaBatch::new(chunk.len(), 1);
        for (i, token) in chunk.iter().enumerate() {
            batch.add(*token, (start + i) as i32, &[0], wanted(start + i))?;
        }
        ctx.evaluate(&mut batch)?;
        for i in (0..chunk.len()).filter(|&i| wanted(start + i)) {
            on_logits(start + i, ctx.context().get_logits_ith(i as i32));
        }
        last_index = chunk.len() as i32 - 1;
    }
    Ok(last_index)
}

/// Appends the complete characters of a token's bytes to a cleared `text`; a character
/// split across tokens waits in `decoder` for the next piece, and bytes that are not
/// UTF-8 become U+FFFD. Room is made for the decoder's worst case first: it writes only
/// what fits and would otherwise drop the rest.
pub(super) fn decode_piece(decoder: &mut encoding_rs::Decoder, piece: &[u8], text: &mut String) {
    text.clear();
    let mut rest = piece;
    loop {
        text.reserve(decoder.max_utf8_buffer_length(rest.len()).unwrap_or(rest.len() * 3 + 4));
        let (result, read, _) = decoder.decode_to_string(rest, text, false);
        rest = &rest[read..];
        if result == encoding_rs::CoderResult::InputEmpty {
            return;
        }
    }
}

fn common_prefix(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_bytes_are_replaced_not_lost() {
        let mut decoder = encoding_rs::UTF_8.new_decoder();
        let mut text = String::new();
        decode_piece(&mut decoder, &[0xff; 16], &mut text);
        assert_eq!(text, "\u{fffd}".repeat(16));
        decode_piece(&mut decoder, "añb".as_bytes(), &mut text);
        assert_eq!(text, "añb");
    }

    #[test]
    fn a_character_split_across_pieces_arrives_whole() {
        let mut decoder = encoding_rs::UTF_8.new_decoder();
        let mut text = String::new();
        let bytes = "你".as_bytes();
        decode_piece(&mut decoder, &bytes[..1], &mut text);
        assert_eq!(text, "");
        decode_piece(&mut decoder, &bytes[1..], &mut text);
        assert_eq!(text, "你");
    }
}
