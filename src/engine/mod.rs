//! The engine around llama.cpp: the only module that touches llama-cpp-2.

mod log;
pub mod quantize;

use std::num::NonZeroU32;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use glm_convert::gguf::check::{check_model, check_projector};
use glm_convert::gguf::{ArrayValue, GgufHeader, MetaValue};
use llama_cpp_2::context::params::{KvCacheType, LlamaContextParams};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::mtmd::{MtmdBitmap, MtmdContext, MtmdContextParams, MtmdInputText};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

/// Token texts that end a GLM turn; stopped on even when a file's metadata forgets one.
const GLM_END_OF_TURN: [&str; 3] = ["<|endoftext|>", "<|user|>", "<|observation|>"];
/// Tag tokens printed even when the file marks them as control tokens: the chat layer
/// needs them to tell reasoning from the answer.
const GLM_VISIBLE_TAGS: [&str; 2] = ["<think>", "</think>"];

/// The context size when none is asked for (capped by the model's training context).
pub const DEFAULT_CTX: u32 = 4096;

static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();

/// llama.cpp's backend may be initialised once per process; every engine shares it.
fn backend() -> Result<&'static LlamaBackend> {
    BACKEND
        .get_or_init(|| {
            let backend = LlamaBackend::init().map_err(|e| e.to_string())?;
            log::install();
            Ok(backend)
        })
        .as_ref()
        .map_err(|e| anyhow!("initialising llama.cpp: {e}"))
}

#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Layers to offload to the GPU (ignored by CPU-only builds).
    pub gpu_layers: u32,
    /// Load only the vocabulary (tokenization needs no weights).
    pub vocab_only: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            gpu_layers: u32::MAX,
            vocab_only: false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Sampling {
    pub temperature: f32,
    pub top_k: i32,
    pub top_p: f32,
    pub min_p: f32,
    pub repeat_penalty: f32,
    pub repeat_last_n: i32,
    pub seed: u32,
    /// Do not stop at end-of-turn tokens.
    pub ignore_eos: bool,
}

#[derive(Debug, Clone)]
pub struct ContextOptions {
    /// Context size in tokens; 0 takes the model's default ([`DEFAULT_CTX`] or its
    /// training context, whichever is smaller).
    pub ctx_size: u32,
    pub threads: i32,
    pub cache_type: CacheType,
    pub flash_attention: FlashAttention,
}

/// llama.cpp's CPU flash-attention kernel computes in F16 whatever the cache type, so
/// exact (F32) attention needs it off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FlashAttention {
    Auto,
    On,
    Off,
}

impl FlashAttention {
    fn llama_policy(self) -> llama_cpp_sys_2::llama_flash_attn_type {
        match self {
            FlashAttention::Auto => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_AUTO,
            FlashAttention::On => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_ENABLED,
            FlashAttention::Off => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED,
        }
    }
}

/// Element type of the KV cache: F16 (llama.cpp's default) halves its memory; F32 keeps
/// attention at full precision, which the parity tests need.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CacheType {
    F32,
    F16,
    #[value(name = "q8_0")]
    Q8_0,
}

impl CacheType {
    fn llama_type(self) -> KvCacheType {
        match self {
            CacheType::F32 => KvCacheType::F32,
            CacheType::F16 => KvCacheType::F16,
            CacheType::Q8_0 => KvCacheType::Q8_0,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct GenerationStats {
    /// Prompt tokens evaluated for this reply (those already in the KV cache are not).
    pub prompt_tokens: usize,
    /// Prompt tokens reused from the KV cache of earlier turns.
    pub reused_tokens: usize,
    pub prompt_time: Duration,
    pub generated_tokens: usize,
    pub generation_time: Duration,
    /// True when the model ended its turn (not the token limit).
    pub stopped_at_end_of_turn: bool,
}

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

pub struct Engine {
    model: LlamaModel,
    /// The file's header as glm's reader validated it before llama.cpp saw the file.
    header: GgufHeader,
    end_of_turn: Vec<LlamaToken>,
    visible_tags: Vec<LlamaToken>,
}

impl Engine {
    /// Loads a model GGUF. The file is validated by glm's own reader first, so that a
    /// malformed or inconsistent file is refused with its reason before llama.cpp, which
    /// trusts what it reads, ever parses it.
    pub fn load(path: &Path, options: &LoadOptions) -> Result<Self> {
        let header = glm_convert::gguf::read_file(path)?.header;
        check_model(&header).map_err(|message| anyhow!("{}: {message}", path.display()))?;
        let backend = backend()?;
        let params = LlamaModelParams::default()
            .with_n_gpu_layers(options.gpu_layers)
            .with_vocab_only(options.vocab_only);
        log::start_capture();
        let model = LlamaModel::load_from_file(backend, path, &params)
            .map_err(|e| refusal(format!("{}: llama.cpp cannot load this file", path.display()), e))?;
        let single_tokens = |texts: &[&str]| -> Vec<LlamaToken> {
            texts
                .iter()
                .filter_map(|text| match model.vocab().tokenize(text.as_bytes(), false, true)[..] {
                    [token] => Some(token),
                    _ => None,
                })
                .collect()
        };
        let end_of_turn = single_tokens(&GLM_END_OF_TURN);
        let visible_tags = single_tokens(&GLM_VISIBLE_TAGS);
        Ok(Self {
            model,
            header,
            end_of_turn,
            visible_tags,
        })
    }

    /// The context length the model was trained for.
    pub fn n_ctx_train(&self) -> u32 {
        self.model.n_ctx_train().max(1)
    }

    /// The context size `options` ask for, checked against the model before anything is
    /// allocated: no more than the training context (a larger one needs memory the user
    /// did not plan for and gives garbage past the trained length).
    pub fn context_size(&self, options: &ContextOptions, needed: usize) -> Result<u32> {
        let train = self.n_ctx_train();
        let asked = if options.ctx_size == 0 {
            DEFAULT_CTX.min(train)
        } else {
            options.ctx_size
        };
        let needed = u32::try_from(needed).unwrap_or(u32::MAX);
        let n_ctx = asked.max(needed).max(16);
        if n_ctx > train {
            if needed > asked {
                bail!("{needed} tokens need a context larger than the {train} tokens this model was trained for");
            }
            bail!("--ctx-size {n_ctx} is larger than the {train} tokens this model was trained for");
        }
        Ok(n_ctx)
    }

    /// The longest text one token stands for, in bytes (GGUF token texts are at least as
    /// long as the bytes they decode to), so `bytes / this` tokens is a lower bound on
    /// what a text tokenizes to.
    pub fn max_token_bytes(&self) -> usize {
        match self.header.get("tokenizer.ggml.tokens") {
            Some(MetaValue::Array(ArrayValue::Str(tokens))) => tokens.iter().map(String::len).max().unwrap_or(1),
            _ => usize::MAX,
        }
        .max(1)
    }

    /// Refuses a text that cannot fit in `n_ctx` tokens before tokenizing it (tokenizing
    /// megabytes takes long and the result would be refused anyway).
    pub fn check_text_fits(&self, text: &str, n_ctx: u32) -> Result<()> {
        let at_least = text.len() / self.max_token_bytes();
        if at_least >= n_ctx as usize {
            bail!(
                "the prompt ({} bytes, at least {at_least} tokens) cannot fit in a context of {n_ctx} tokens",
                text.len()
            );
        }
        Ok(())
    }

    pub fn metadata(&self, key: &str) -> Option<String> {
        self.model.meta_val_str(key).ok()
    }

    pub fn chat_template(&self) -> Option<String> {
        self.metadata("tokenizer.chat_template")
    }

    pub fn token_text(&self, id: i32) -> Option<String> {
        let vocab = self.model.vocab();
        let text = vocab.text(LlamaToken(id))?.to_string_lossy().into_owned();
        Some(text)
    }

    pub fn n_vocab(&self) -> usize {
        self.model.n_vocab().max(0) as usize
    }

    /// Tokenizes text as Hugging Face does with `add_special_tokens=False`: special
    /// tokens written in the text become their single ids; nothing is prepended.
    pub fn tokenize(&self, text: &str) -> Vec<i32> {
        self.model
            .vocab()
            .tokenize(text.as_bytes(), false, true)
            .into_iter()
            .map(|t| t.0)
            .collect()
    }

    pub fn is_end_of_turn(&self, token: LlamaToken) -> bool {
        self.model.vocab().is_eog(token) || self.end_of_turn.contains(&token)
    }

    fn check_tokens(&self, tokens: &[i32]) -> Result<Vec<LlamaToken>> {
        let n_vocab = self.n_vocab();
        tokens
            .iter()
            .map(|&t| {
                if t < 0 || t as usize >= n_vocab {
                    bail!("token id {t} is outside the vocabulary (0..{n_vocab})")
                }
                Ok(LlamaToken(t))
            })
            .collect()
    }

    fn context(&self, options: &ContextOptions, min_ctx: usize) -> Result<LlamaContext<'_>> {
        let n_ctx = self.context_size(options, min_ctx)?;
        let batch = n_ctx.min(2048);
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n_ctx))
            .with_n_batch(batch)
            .with_n_ubatch(batch.min(512))
            .with_n_threads(options.threads)
            .with_n_threads_batch(options.threads)
            .with_type_k(options.cache_type.llama_type())
            .with_type_v(options.cache_type.llama_type())
            .with_flash_attention_policy(options.flash_attention.llama_policy());
        log::start_capture();
        self.model
            .new_context(backend()?, params)
            .map_err(|e| refusal(format!("cannot create a llama.cpp context of {n_ctx} tokens"), e))
    }

    /// Evaluates `tokens` (in batches) and returns the logits of every position when
    /// `all_positions`, else of the last one only.
    pub fn logits(&self, tokens: &[i32], all_positions: bool, options: &ContextOptions) -> Result<Vec<Vec<f32>>> {
        if tokens.is_empty() {
            bail!("no tokens to evaluate");
        }
        let tokens = self.check_tokens(tokens)?;
        let mut ctx = self.context(options, tokens.len())?;
        let n_batch = ctx.n_batch() as usize;
        let mut rows = Vec::new();
        for (chunk_index, chunk) in tokens.chunks(n_batch).enumerate() {
            let start = chunk_index * n_batch;
            let wanted = |i: usize| all_positions || start + i + 1 == tokens.len();
            let mut batch = LlamaBatch::new(chunk.len(), 1);
            for (i, token) in chunk.iter().enumerate() {
                batch.add(*token, (start + i) as i32, &[0], wanted(i))?;
            }
            ctx.decode(&mut batch)
                .context("llama.cpp failed to evaluate the tokens")?;
            rows.extend(
                (0..chunk.len())
                    .filter(|&i| wanted(i))
                    .map(|i| ctx.get_logits_ith(i as i32).to_vec()),
            );
        }
        Ok(rows)
    }

    /// Generates up to `max_tokens` after `prompt`, calling `on_text` with each piece of
    /// complete UTF-8 text; stops at the end of the model's turn. `on_text` returning
    /// `false` stops early (used for Ctrl-C).
    pub fn generate(
        &self,
        prompt: &[i32],
        max_tokens: usize,
        sampling: &Sampling,
        options: &ContextOptions,
        on_text: impl FnMut(&str) -> bool,
    ) -> Result<GenerationStats> {
        // The context is what the user asked for; generation stops when it is full, so a
        // huge `max_tokens` never turns into a huge allocation.
        let mut session = ChatSession::new(self, options)?;
        session.respond(prompt, max_tokens, sampling, on_text)
    }

    /// Text of one generated token; the reasoning tags stay visible for the chat layer.
    fn piece(&self, token: LlamaToken, buffer: &mut Vec<u8>) {
        buffer.clear();
        let show_special = self.visible_tags.contains(&token);
        self.model
            .vocab()
            .token_to_piece_into(token, buffer, show_special, None);
    }

    /// Greedy token ids, for parity tests against reference continuations.
    pub fn greedy_tokens(&self, prompt: &[i32], count: usize, options: &ContextOptions) -> Result<Vec<i32>> {
        let prompt = self.check_tokens(prompt)?;
        let mut ctx = self.context(options, prompt.len() + count)?;
        let mut batch = LlamaBatch::new(prompt.len().max(1), 1);
        batch.add_sequence(&prompt, 0, false)?;
        ctx.decode(&mut batch)
            .context("llama.cpp failed to evaluate the prompt")?;
        let mut sampler = LlamaSampler::greedy();
        let mut out = Vec::with_capacity(count);
        for position in prompt.len()..prompt.len() + count {
            let token = sampler.sample(&ctx, batch.n_tokens() - 1);
            out.push(token.0);
            batch.clear();
            batch.add(token, position as i32, &[0], true)?;
            ctx.decode(&mut batch)
                .context("llama.cpp failed to evaluate a generated token")?;
        }
        Ok(out)
    }

    /// llama.cpp's usual sampler order: penalties, top-k, top-p, min-p, temperature, draw.
    /// The penalty window is at most the context (`-1` means all of it), since llama.cpp
    /// allocates it up front.
    fn sampler(&self, s: &Sampling, n_ctx: usize) -> LlamaSampler {
        let n_ctx = i32::try_from(n_ctx).unwrap_or(i32::MAX);
        let window = if s.repeat_last_n < 0 {
            n_ctx
        } else {
            s.repeat_last_n.min(n_ctx)
        };
        let mut chain = Vec::new();
        if s.repeat_penalty != 1.0 {
            chain.push(LlamaSampler::penalties(
                self.model.n_vocab(),
                window,
                s.repeat_penalty,
                0.0,
                0.0,
            ));
        }
        if s.temperature <= 0.0 {
            chain.push(LlamaSampler::greedy());
        } else {
            if s.top_k > 0 {
                chain.push(LlamaSampler::top_k(s.top_k));
            }
            if s.top_p < 1.0 {
                chain.push(LlamaSampler::top_p(s.top_p, 1));
            }
            if s.min_p > 0.0 {
                chain.push(LlamaSampler::min_p(s.min_p, 1));
            }
            chain.push(LlamaSampler::temp(s.temperature));
            chain.push(LlamaSampler::dist(s.seed));
        }
        LlamaSampler::chain_simple(chain)
    }
}

/// A context that lives across turns: each reply evaluates only the part of the new
/// prompt that differs from what the KV cache already holds.
pub struct ChatSession<'m> {
    engine: &'m Engine,
    ctx: LlamaContext<'m>,
    /// Tokens whose keys and values are in the cache, in position order.
    cached: Vec<LlamaToken>,
    /// The text those tokens stand for, and where each token's text ends in it.
    cached_text: Vec<u8>,
    token_ends: Vec<usize>,
    /// Position of the next token (images take positions that are not tokens).
    next_position: usize,
    /// Set after an image turn: the cache cannot be matched against text any more.
    positions_untracked: bool,
}

impl<'m> ChatSession<'m> {
    pub fn new(engine: &'m Engine, options: &ContextOptions) -> Result<Self> {
        Ok(Self {
            engine,
            ctx: engine.context(options, 0)?,
            cached: Vec::new(),
            cached_text: Vec::new(),
            token_ends: Vec::new(),
            next_position: 0,
            positions_untracked: false,
        })
    }

    pub fn n_ctx(&self) -> usize {
        self.ctx.n_ctx() as usize
    }

    /// Forgets the cache (a new conversation).
    pub fn clear(&mut self) {
        self.ctx.clear_kv_cache();
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
        let started = Instant::now();
        let n_batch = self.ctx.n_batch() as usize;
        let mut batch = LlamaBatch::new(n_batch.max(1), 1);
        let mut piece = Vec::new();
        for chunk in prompt[reused..].chunks(n_batch) {
            batch.clear();
            for token in chunk {
                let pos = self.cached.len();
                batch.add(*token, pos as i32, &[0], pos + 1 == prompt.len())?;
                piece.clear();
                self.engine
                    .model
                    .vocab()
                    .token_to_piece_into(*token, &mut piece, true, None);
                self.remember(*token, &piece);
            }
            self.ctx
                .decode(&mut batch)
                .context("llama.cpp failed to evaluate the prompt")?;
        }
        let stats = GenerationStats {
            prompt_tokens: prompt.len() - reused,
            reused_tokens: reused,
            prompt_time: started.elapsed(),
            ..Default::default()
        };

        self.next_position = self.cached.len();
        self.generate_reply(batch.n_tokens() - 1, &prompt, max_tokens, sampling, &mut on_text, stats)
    }

    /// Samples the reply after a prompt whose logits sit at `logits_index` of the last
    /// batch, streaming text to `on_text`.
    fn generate_reply(
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
        let mut batch = LlamaBatch::new(1, 1);
        let mut index = logits_index;
        let started = Instant::now();
        while stats.generated_tokens < max_tokens && self.next_position < self.n_ctx() {
            let token = sampler.sample(&self.ctx, index);
            if self.engine.is_end_of_turn(token) && !sampling.ignore_eos {
                stats.stopped_at_end_of_turn = true;
                break;
            }
            stats.generated_tokens += 1;
            self.engine.piece(token, &mut piece);
            decode_piece(&mut decoder, &piece, &mut text);
            // Shown before the next forward pass, not after it; a stop here leaves the token
            // out of the cache, and the next turn evaluates its text again.
            if !text.is_empty() && !on_text(&text) {
                break;
            }
            batch.clear();
            batch.add(token, self.next_position as i32, &[0], true)?;
            self.next_position += 1;
            self.remember(token, &piece);
            self.ctx
                .decode(&mut batch)
                .context("llama.cpp failed to evaluate a generated token")?;
            index = 0;
        }
        stats.generation_time = started.elapsed();
        Ok(stats)
    }

    fn forget_from(&mut self, position: usize) -> Result<()> {
        if position < self.cached.len() {
            self.ctx
                .clear_kv_cache_seq(Some(0), Some(position as u32), None)
                .map_err(|e| anyhow!("cannot trim the KV cache: {e}"))?;
            self.cached.truncate(position);
            self.token_ends.truncate(position);
            self.cached_text.truncate(self.token_ends.last().copied().unwrap_or(0));
        }
        Ok(())
    }
}

/// Appends the complete characters of a token's bytes to a cleared `text`; a character
/// split across tokens waits in `decoder` for the next piece, and bytes that are not
/// UTF-8 become U+FFFD. Room is made for the decoder's worst case first: it writes only
/// what fits and would otherwise drop the rest.
fn decode_piece(decoder: &mut encoding_rs::Decoder, piece: &[u8], text: &mut String) {
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

/// An error for a llama.cpp call that failed: llama.cpp's own reason when it logged one,
/// else what the binding reported.
fn refusal(what: String, error: impl std::fmt::Display) -> anyhow::Error {
    match log::reason() {
        Some(reason) => anyhow!("{what}: {reason}"),
        None => anyhow!("{what}: {error}"),
    }
}

fn common_prefix(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// The text that stands for one image in a prompt given to [`ChatSession::respond_with_images`].
pub fn image_marker() -> &'static str {
    llama_cpp_2::mtmd::mtmd_default_marker()
}

/// A vision projector (mmproj GGUF) loaded for a model, through llama.cpp's libmtmd.
pub struct Projector {
    ctx: MtmdContext,
}

impl Engine {
    pub fn load_projector(&self, path: &Path, threads: i32) -> Result<Projector> {
        let text = path
            .to_str()
            .with_context(|| format!("{}: path is not UTF-8", path.display()))?;
        let params = MtmdContextParams {
            use_gpu: true,
            print_timings: false,
            n_threads: threads,
            media_marker: std::ffi::CString::new(image_marker()).context("media marker")?,
            image_min_tokens: -1,
            image_max_tokens: -1,
        };
        let projector = glm_convert::gguf::read_file(path)?.header;
        check_projector(&projector, &self.header).map_err(|message| anyhow!("{}: {message}", path.display()))?;
        log::start_capture();
        let ctx = MtmdContext::init_from_file(text, &self.model, &params).map_err(|e| {
            refusal(
                format!(
                    "{}: llama.cpp cannot load this vision projector for the model",
                    path.display()
                ),
                e,
            )
        })?;
        if !ctx.support_vision() {
            bail!("{}: this projector has no vision encoder", path.display());
        }
        Ok(Projector { ctx })
    }
}

impl ChatSession<'_> {
    /// Evaluates a prompt in which each [`image_marker`] stands for one of `images`
    /// (PNG, JPEG, BMP, …), then generates the reply. The cache starts afresh: image
    /// positions do not follow the token count, so no text prefix can be reused.
    pub fn respond_with_images(
        &mut self,
        projector: &mut Projector,
        prompt: &str,
        images: &[std::path::PathBuf],
        max_tokens: usize,
        sampling: &Sampling,
        mut on_text: impl FnMut(&str) -> bool,
    ) -> Result<GenerationStats> {
        let (stats, text_tokens) = self.evaluate_with_images(projector, prompt, images)?;
        self.generate_reply(-1, &text_tokens, max_tokens, sampling, &mut on_text, stats)
    }

    /// The logits after a prompt with images (the last position), for parity checks.
    pub fn logits_with_images(
        &mut self,
        projector: &mut Projector,
        prompt: &str,
        images: &[std::path::PathBuf],
    ) -> Result<(Vec<i32>, Vec<f32>)> {
        let (_, text_tokens) = self.evaluate_with_images(projector, prompt, images)?;
        let logits = self.ctx.get_logits_ith(-1).to_vec();
        Ok((text_tokens.iter().map(|t| t.0).collect(), logits))
    }

    /// Evaluates text and images from position 0; returns the stats and the text tokens.
    fn evaluate_with_images(
        &mut self,
        projector: &mut Projector,
        prompt: &str,
        images: &[std::path::PathBuf],
    ) -> Result<(GenerationStats, Vec<LlamaToken>)> {
        self.clear();
        let mut bitmaps = Vec::with_capacity(images.len());
        for image in images {
            bitmaps.push(load_bitmap(image)?);
        }
        let refs: Vec<&MtmdBitmap> = bitmaps.iter().collect();
        let input = MtmdInputText {
            text: prompt.to_owned(),
            add_special: false,
            parse_special: true,
        };
        let chunks = projector
            .ctx
            .tokenize(input, &refs)
            .map_err(|e| anyhow!("cannot combine the prompt and the images: {e}"))?;
        // M-RoPE images take fewer positions than tokens; both must fit.
        let needed = chunks.total_tokens().max(chunks.total_positions().max(0) as usize);
        if needed >= self.n_ctx() {
            bail!(
                "the prompt with its images needs {needed} tokens; the context holds {}",
                self.n_ctx()
            );
        }
        let started = Instant::now();
        let n_batch = self.ctx.n_batch() as i32;
        let n_past = chunks
            .eval_chunks(&mut projector.ctx, &mut self.ctx, 0, 0, n_batch, true)
            .map_err(|e| anyhow!("llama.cpp failed to evaluate the prompt with its images: {e}"))?;
        self.next_position = usize::try_from(n_past).unwrap_or(0);
        self.positions_untracked = true;
        let stats = GenerationStats {
            prompt_tokens: chunks.total_tokens(),
            prompt_time: started.elapsed(),
            ..Default::default()
        };
        let text_tokens: Vec<LlamaToken> = (0..chunks.len())
            .filter_map(|i| chunks.get(i))
            .filter_map(|chunk| chunk.text_tokens().map(<[LlamaToken]>::to_vec))
            .flatten()
            .collect();
        Ok((stats, text_tokens))
    }
}

/// Decodes an image file (PNG, JPEG, WebP, BMP, GIF) to the RGB pixels libmtmd takes.
/// Decoding here rather than in libmtmd adds WebP and gives errors that say what is wrong.
fn load_bitmap(path: &Path) -> Result<MtmdBitmap> {
    let file = glm_convert::files::open_regular(path)?;
    let mut reader = image::ImageReader::new(std::io::BufReader::new(file))
        .with_guessed_format()
        .with_context(|| format!("{}: cannot read the image", path.display()))?;
    // A small file can claim a huge picture (a decompression bomb): the size is checked
    // from the header before any pixel is decoded.
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_IMAGE_BYTES);
    reader.limits(limits);
    let decoded = reader.decode().map_err(|e| {
        anyhow!(
            "{}: not a PNG, JPEG, WebP, BMP or GIF image llama.cpp can use: {e}",
            path.display()
        )
    })?;
    let rgb = decoded.to_rgb8();
    MtmdBitmap::from_image_data(rgb.width(), rgb.height(), rgb.as_raw())
        .map_err(|e| anyhow!("{}: cannot pass the image to llama.cpp: {e}", path.display()))
}

/// Largest image side and decoded size accepted (llama.cpp resizes far below this).
const MAX_IMAGE_SIDE: u32 = 16384;
const MAX_IMAGE_BYTES: u64 = 512 << 20;

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
