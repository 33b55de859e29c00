//! A loaded model: validation before llama.cpp reads the file, vocabulary and
//! tokenization, contexts checked against the training length, and samplers.

use std::num::NonZeroU32;
use std::path::Path;
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Result};
use glm_convert::gguf::check::check_model;
use glm_convert::gguf::{ArrayValue, GgufHeader, MetaValue};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::{LlamaBackend, NumaStrategy};
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

use super::log;
use super::options::{ContextOptions, LoadOptions, Numa, Sampling, DEFAULT_CTX};
use super::placement;
use super::session::decode_tokens;

/// Token texts that end a GLM turn; stopped on even when a file's metadata forgets one.
const GLM_END_OF_TURN: [&str; 3] = ["<|endoftext|>", "<|user|>", "<|observation|>"];
/// Tag tokens printed even when the file marks them as control tokens: the chat layer
/// needs them to tell reasoning from the answer.
const GLM_VISIBLE_TAGS: [&str; 2] = ["<think>", "</think>"];

static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();

extern "C" {
    /// `ffi/memory_breakdown.cpp`.
    fn glm_silence_common_log();
}
static NUMA: OnceLock<Numa> = OnceLock::new();

/// Sets the NUMA strategy; only before the first model is loaded (llama.cpp takes it
/// once, when its backend starts).
pub fn use_numa(numa: Numa) -> Result<()> {
    if BACKEND.get().is_some() || NUMA.set(numa).is_err() {
        bail!("the NUMA strategy can only be set before llama.cpp starts");
    }
    Ok(())
}

/// llama.cpp's backend may be initialised once per process; every engine shares it.
pub(super) fn backend() -> Result<&'static LlamaBackend> {
    BACKEND
        .get_or_init(|| {
            let backend = match NUMA.get() {
                None => LlamaBackend::init(),
                Some(numa) => LlamaBackend::init_numa(match numa {
                    Numa::Distribute => NumaStrategy::DISTRIBUTE,
                    Numa::Isolate => NumaStrategy::ISOLATE,
                    Numa::Numactl => NumaStrategy::NUMACTL,
                }),
            }
            .map_err(|e| e.to_string())?;
            log::install();
            // SAFETY: sets an integer in llama.cpp's common library; called once, before
            // any of its functions run.
            unsafe { glm_silence_common_log() };
            // SAFETY: installs a callback (a plain function that never returns) for
            // ggml's fatal errors, before any llama.cpp work runs.
            unsafe { llama_cpp_sys_2::ggml_set_abort_callback(Some(on_abort)) };
            Ok(backend)
        })
        .as_ref()
        .map_err(|e| anyhow!("initialising llama.cpp: {e}"))
}

/// ggml's fatal errors (a remote RPC server gone, a failed check in llama.cpp) end the
/// process with one line and exit status 1 rather than an abort with a backtrace.
extern "C" fn on_abort(message: *const std::ffi::c_char) {
    let text = if message.is_null() {
        String::from("(no reason given)")
    } else {
        // SAFETY: ggml passes a NUL-terminated message it formatted.
        unsafe { std::ffi::CStr::from_ptr(message) }
            .to_string_lossy()
            .into_owned()
    };
    // ggml's message starts with its source file and line.
    let reason = text.split_once(": ").map_or(text.as_str(), |(_, rest)| rest);
    exit_with(&format!("llama.cpp stopped: {}", reason.trim()))
}

/// Writes `error: MESSAGE` (with the RPC servers in use) and ends the process at once:
/// other threads may be inside llama.cpp, whose destructors must not run under them.
pub(super) fn exit_with(message: &str) -> ! {
    let servers = super::rpc::connected_now();
    let mut line = format!("error: {message}");
    if !servers.is_empty() && !message.contains("RPC servers") {
        line.push_str(&format!(" (RPC servers: {})", servers.join(", ")));
    }
    line.push('\n');
    // SAFETY: write(2) of a buffer that lives across the call, to standard error; then
    // _exit(2), which runs no destructors.
    unsafe {
        libc::write(2, line.as_ptr().cast(), line.len());
        libc::_exit(1)
    }
}

pub struct Engine {
    pub(super) model: LlamaModel,
    /// The file's header as glm's reader validated it before llama.cpp saw the file.
    pub(super) header: GgufHeader,
    /// See [`Engine::max_token_bytes`]; computed once, as every chat turn asks.
    max_token_bytes: usize,
    end_of_turn: Vec<LlamaToken>,
    visible_tags: Vec<LlamaToken>,
    /// The context size when none is asked for: llama.cpp's fit when it ran, else
    /// [`DEFAULT_CTX`] or the training context, whichever is smaller.
    default_ctx: u32,
}

impl Engine {
    /// Loads a model GGUF. The file is validated by glm's own reader first, so that a
    /// malformed or inconsistent file is refused with its reason before llama.cpp, which
    /// trusts what it reads, ever parses it.
    pub fn load(path: &Path, options: &LoadOptions) -> Result<Self> {
        let header = glm_convert::gguf::read_model_header(path)?;
        check_model(&header).map_err(|message| anyhow!("{}: {message}", path.display()))?;
        let backend = backend()?;
        let params = placement::model_params(path, &header, options)?;
        log::start_capture();
        let model = LlamaModel::load_from_file(backend, path, &params.params)
            .map_err(|e| refusal(format!("{}: llama.cpp cannot load this file", path.display()), e))?;
        let trained = model.n_ctx_train().max(1);
        let default_ctx = params.fitted_ctx.unwrap_or(DEFAULT_CTX).clamp(1, trained);
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
        let max_token_bytes = longest_token(&header);
        Ok(Self {
            model,
            header,
            max_token_bytes,
            end_of_turn,
            visible_tags,
            default_ctx,
        })
    }

    /// Bytes of weights and number of parameters, as llama.cpp counts them.
    pub fn size_and_parameters(&self) -> (u64, u64) {
        (self.model.size(), self.model.n_params())
    }

    /// Whether the file has multi-token-prediction (NextN) layers, which drafting needs.
    pub fn has_nextn_layers(&self) -> bool {
        placement::arch_integer(&self.header, "nextn_predict_layers").is_some_and(|n| n > 0)
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
            self.default_ctx
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
        self.max_token_bytes
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

    pub(super) fn check_tokens(&self, tokens: &[i32]) -> Result<Vec<LlamaToken>> {
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

    pub(super) fn context(&self, options: &ContextOptions, min_ctx: usize) -> Result<LlamaContext<'_>> {
        self.new_context(options, self.context_size(options, min_ctx)?)
    }

    /// A context of exactly `n_ctx` tokens (checked by [`Engine::context_size`]).
    pub(super) fn new_context(&self, options: &ContextOptions, n_ctx: u32) -> Result<LlamaContext<'_>> {
        log::start_capture();
        self.model
            .new_context(backend()?, context_params(options, n_ctx))
            .map_err(|e| refusal(format!("cannot create a llama.cpp context of {n_ctx} tokens"), e))
    }

    /// A context of `n_seq` sequences of `per_sequence` tokens each, every one with its
    /// own part of the KV cache (llama.cpp rounds the parts up to multiples of 256). The
    /// logical batch holds at least one token per sequence.
    pub(super) fn parallel_context(
        &self,
        options: &ContextOptions,
        per_sequence: u32,
        n_seq: u32,
    ) -> Result<LlamaContext<'_>> {
        let n_ctx = per_sequence.saturating_mul(n_seq);
        let mut params = context_params(options, n_ctx)
            .with_n_seq_max(n_seq)
            .with_kv_unified(false);
        if params.n_batch() < n_seq {
            params = params.with_n_batch(n_seq);
        }
        log::start_capture();
        self.model.new_context(backend()?, params).map_err(|e| {
            refusal(
                format!("cannot create a llama.cpp context of {n_seq} × {per_sequence} tokens"),
                e,
            )
        })
    }

    /// Evaluates `tokens` (in batches) and returns the logits of every position when
    /// `all_positions`, else of the last one only.
    pub fn logits(&self, tokens: &[i32], all_positions: bool, options: &ContextOptions) -> Result<Vec<Vec<f32>>> {
        if tokens.is_empty() {
            bail!("no tokens to evaluate");
        }
        let tokens = self.check_tokens(tokens)?;
        let mut ctx = self.context(options, tokens.len())?;
        let last = tokens.len() - 1;
        let mut rows = Vec::new();
        decode_tokens(&mut ctx, &tokens, 0, &|p| all_positions || p == last, &mut |_, row| {
            rows.push(row.to_vec())
        })?;
        Ok(rows)
    }

    /// Text of one generated token; the reasoning tags stay visible for the chat layer.
    pub(super) fn piece(&self, token: LlamaToken, buffer: &mut Vec<u8>) {
        buffer.clear();
        let show_special = self.visible_tags.contains(&token);
        self.model
            .vocab()
            .token_to_piece_into(token, buffer, show_special, None);
    }

    /// Greedy token ids, for parity tests against reference continuations.
    #[cfg(feature = "test-support")]
    pub fn greedy_tokens(&self, prompt: &[i32], count: usize, options: &ContextOptions) -> Result<Vec<i32>> {
        let prompt = self.check_tokens(prompt)?;
        let mut ctx = self.context(options, prompt.len() + count)?;
        let last = prompt.len().saturating_sub(1);
        let mut index = decode_tokens(&mut ctx, &prompt, 0, &|p| p == last, &mut |_, _| {})?;
        let mut sampler = LlamaSampler::greedy();
        let mut out = Vec::with_capacity(count);
        for position in prompt.len()..prompt.len() + count {
            let token = sampler.sample(&ctx, index);
            out.push(token.0);
            index = decode_tokens(&mut ctx, &[token], position, &|_| true, &mut |_, _| {})?;
        }
        Ok(out)
    }

    /// llama.cpp's usual sampler order: penalties, top-k, top-p, min-p, temperature, draw.
    /// The penalty window is at most the context (`-1` means all of it), since llama.cpp
    /// allocates it up front.
    pub(super) fn sampler(&self, s: &Sampling, n_ctx: usize) -> LlamaSampler {
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

/// llama.cpp's context parameters for `options` and `n_ctx` tokens. The batch sizes are
/// at most the context (llama.cpp's own rule), the physical one at most the logical one.
pub(super) fn context_params(options: &ContextOptions, n_ctx: u32) -> LlamaContextParams {
    let batch = options.batch_size.clamp(1, n_ctx);
    LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(n_ctx))
        .with_n_batch(batch)
        .with_n_ubatch(options.ubatch_size.clamp(1, batch))
        .with_n_threads(options.threads)
        .with_n_threads_batch(options.threads_batch)
        .with_type_k(options.cache_type_k.llama_type())
        .with_type_v(options.cache_type_v.llama_type())
        .with_flash_attention_policy(options.flash_attention.llama_policy())
}

/// The byte length of the longest token text in the file's vocabulary (at least 1).
fn longest_token(header: &GgufHeader) -> usize {
    match header.get("tokenizer.ggml.tokens") {
        Some(MetaValue::Array(ArrayValue::Str(tokens))) => tokens.iter().map(String::len).max().unwrap_or(1),
        _ => usize::MAX,
    }
    .max(1)
}

/// An error for a llama.cpp call that failed: llama.cpp's own reason when it logged one,
/// else what the binding reported.
pub(super) fn refusal(what: String, error: impl std::fmt::Display) -> anyhow::Error {
    match log::reason() {
        Some(reason) => anyhow!("{what}: {reason}"),
        None => anyhow!("{what}: {error}"),
    }
}
