//! Runtime settings of the engine: how a model is loaded, how big its context is, and
//! how tokens are sampled. Plain data; `cli` turns flags into these.

use llama_cpp_2::context::params::KvCacheType;

/// The context size when none is asked for (capped by the model's training context).
pub const DEFAULT_CTX: u32 = 4096;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlashAttention {
    Auto,
    On,
    Off,
}

impl FlashAttention {
    pub(super) fn llama_policy(self) -> llama_cpp_sys_2::llama_flash_attn_type {
        match self {
            FlashAttention::Auto => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_AUTO,
            FlashAttention::On => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_ENABLED,
            FlashAttention::Off => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED,
        }
    }
}

/// Element type of the KV cache: F16 (llama.cpp's default) halves its memory; F32 keeps
/// attention at full precision, which the parity tests need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheType {
    F32,
    F16,
    Q8_0,
}

impl CacheType {
    pub(super) fn llama_type(self) -> KvCacheType {
        match self {
            CacheType::F32 => KvCacheType::F32,
            CacheType::F16 => KvCacheType::F16,
            CacheType::Q8_0 => KvCacheType::Q8_0,
        }
    }
}
