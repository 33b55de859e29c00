//! Runtime settings of the engine: where a model's tensors go, how big its context is,
//! and how tokens are sampled. Plain data; `cli` turns flags into these.

use llama_cpp_2::context::params::KvCacheType;

/// The context size when nothing else decides it: the training context when it is
/// smaller, else what fits in memory, but at least this much when memory allows.
pub const DEFAULT_CTX: u32 = 4096;

/// How many layers go to GPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuLayers {
    /// As many as fit in free device memory, with the context (llama.cpp's fit).
    Auto,
    All,
    Count(u32),
}

/// One `--override-tensor`: tensors whose name matches `pattern` (an ECMAScript regular
/// expression, searched anywhere in the name, as llama.cpp does) go to `buffer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorOverride {
    pub pattern: String,
    pub buffer: String,
}

/// llama.cpp's ways of spreading a model over several GPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitMode {
    None,
    Layer,
    Row,
}

/// Where the weights go.
#[derive(Debug, Clone)]
pub struct Placement {
    pub gpu_layers: GpuLayers,
    /// Experts of every layer stay in CPU memory.
    pub cpu_moe: bool,
    /// Experts of the first N layers stay in CPU memory.
    pub n_cpu_moe: u32,
    pub overrides: Vec<TensorOverride>,
    /// Device names (`glm devices`) to use; empty means all.
    pub devices: Vec<String>,
    pub main_gpu: i32,
    pub split_mode: SplitMode,
    /// Share of the model per device, in device order; empty means by free memory.
    pub tensor_split: Vec<f32>,
}

impl Default for Placement {
    fn default() -> Self {
        Self {
            gpu_layers: GpuLayers::Auto,
            cpu_moe: false,
            n_cpu_moe: 0,
            overrides: Vec::new(),
            devices: Vec::new(),
            main_gpu: 0,
            split_mode: SplitMode::Layer,
            tensor_split: Vec::new(),
        }
    }
}

impl Placement {
    /// The tensor overrides in the order llama.cpp applies them (first match wins): the
    /// user's own first, then the experts kept on the CPU.
    pub fn all_overrides(&self) -> Vec<TensorOverride> {
        let mut all = self.overrides.clone();
        if self.cpu_moe {
            all.push(experts_on_cpu(r"\.ffn_(up|down|gate|gate_up)_(ch|)exps"));
        } else {
            all.extend(
                (0..self.n_cpu_moe)
                    .map(|layer| experts_on_cpu(&format!(r"blk\.{layer}\.ffn_(up|down|gate|gate_up)_(ch|)exps"))),
            );
        }
        all
    }
}

fn experts_on_cpu(pattern: &str) -> TensorOverride {
    TensorOverride {
        pattern: pattern.to_owned(),
        buffer: "CPU".to_owned(),
    }
}

/// How llama.cpp spreads threads and memory over NUMA nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Numa {
    Distribute,
    Isolate,
    Numactl,
}

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub placement: Placement,
    /// The context the user asked for (0: none); llama.cpp's fit plans around it.
    pub ctx_size: u32,
    /// Map the file instead of reading it into memory.
    pub use_mmap: bool,
    /// Lock the weights in RAM so the OS cannot page them out.
    pub use_mlock: bool,
    /// Load the multi-token-prediction (NextN) layers for speculative decoding.
    pub load_mtp: bool,
    /// Load only the vocabulary (tokenization needs no weights).
    pub vocab_only: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            placement: Placement::default(),
            ctx_size: 0,
            use_mmap: true,
            use_mlock: false,
            load_mtp: false,
            vocab_only: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
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

impl Sampling {
    /// Always the most likely token, past end-of-turn tokens too (benchmarks, tests).
    pub fn greedy_to_the_end() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            repeat_last_n: 0,
            seed: 0,
            ignore_eos: true,
        }
    }

    /// Greedy sampling picks the most likely token, so a draft can be checked exactly.
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0 && self.repeat_penalty == 1.0
    }
}

/// Multi-token-prediction drafting (see `engine::speculative`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DraftOptions {
    /// Most tokens drafted per step.
    pub max: u32,
    /// Fewest tokens a draft must have to be checked.
    pub min: u32,
    /// Draft tokens less likely than this (to the draft head) end the draft.
    pub p_min: f32,
    /// Draft whatever the sampling; by default only greedy replies draft, where a draft
    /// is most often right.
    pub always: bool,
}

impl Default for DraftOptions {
    fn default() -> Self {
        Self {
            max: 3,
            min: 0,
            p_min: 0.0,
            always: false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ContextOptions {
    /// Context size in tokens; 0 lets the engine choose (see [`DEFAULT_CTX`]).
    pub ctx_size: u32,
    pub threads: i32,
    pub threads_batch: i32,
    /// Tokens per `decode` call (logical batch) and per compute pass (physical batch).
    pub batch_size: u32,
    pub ubatch_size: u32,
    pub cache_type_k: CacheType,
    pub cache_type_v: CacheType,
    pub flash_attention: FlashAttention,
    /// Draft with the model's NextN layers when it has them (None: no drafting).
    pub draft: Option<DraftOptions>,
}

impl ContextOptions {
    /// llama.cpp's defaults with `threads` threads.
    pub fn with_threads(threads: i32) -> Self {
        Self {
            ctx_size: 0,
            threads,
            threads_batch: threads,
            batch_size: 2048,
            ubatch_size: 512,
            cache_type_k: CacheType::F16,
            cache_type_v: CacheType::F16,
            flash_attention: FlashAttention::Auto,
            draft: None,
        }
    }

    /// Exact attention: F32 cache, no flash attention (the parity tests' setting).
    pub fn exact(mut self) -> Self {
        self.cache_type_k = CacheType::F32;
        self.cache_type_v = CacheType::F32;
        self.flash_attention = FlashAttention::Off;
        self
    }
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

/// Element type of the KV cache: F16 (llama.cpp's default) halves its memory against
/// F32, which keeps attention exact; the quantized types save more. llama.cpp needs
/// flash attention for a quantized V cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheType {
    F32,
    F16,
    Bf16,
    Q8_0,
    Q4_0,
    Q4_1,
    Iq4Nl,
    Q5_0,
    Q5_1,
}

impl CacheType {
    pub(super) fn llama_type(self) -> KvCacheType {
        match self {
            CacheType::F32 => KvCacheType::F32,
            CacheType::F16 => KvCacheType::F16,
            CacheType::Bf16 => KvCacheType::BF16,
            CacheType::Q8_0 => KvCacheType::Q8_0,
            CacheType::Q4_0 => KvCacheType::Q4_0,
            CacheType::Q4_1 => KvCacheType::Q4_1,
            CacheType::Iq4Nl => KvCacheType::IQ4_NL,
            CacheType::Q5_0 => KvCacheType::Q5_0,
            CacheType::Q5_1 => KvCacheType::Q5_1,
        }
    }

    pub fn is_quantized(self) -> bool {
        !matches!(self, CacheType::F32 | CacheType::F16 | CacheType::Bf16)
    }
}
