//! Flags that say how a model runs: where its tensors go, its context and cache, threads,
//! and multi-token-prediction drafting. Shared by `run`, `chat`, `bench` and `logits`.
//! llama.cpp's multi-letter short flags (`-ngl`, `-ot`, `-fa`, ...) are accepted too:
//! [`LLAMA_SHORT_FLAGS`] maps them to the long names before clap parses.

use clap::{Args, ValueEnum};

use crate::engine::{CacheType, FlashAttention, GpuLayers, Numa, SplitMode, TensorOverride};

/// llama.cpp's spellings that clap cannot declare (a short flag is one letter there).
pub const LLAMA_SHORT_FLAGS: &[(&str, &str)] = &[
    ("-ngl", "--gpu-layers"),
    ("-ot", "--override-tensor"),
    ("-cmoe", "--cpu-moe"),
    ("-ncmoe", "--n-cpu-moe"),
    ("-dev", "--device"),
    ("-mg", "--main-gpu"),
    ("-sm", "--split-mode"),
    ("-ts", "--tensor-split"),
    ("-fa", "--flash-attn"),
    ("-ctk", "--cache-type-k"),
    ("-ctv", "--cache-type-v"),
    ("-tb", "--threads-batch"),
    ("-ub", "--ubatch-size"),
    ("-sys", "--system-prompt"),
];

/// Rewrites llama.cpp's multi-letter short flags to their long names; everything after
/// `--` stays as it is.
pub fn expand_llama_flags(args: impl IntoIterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut after_separator = false;
    args.into_iter()
        .map(|arg| {
            if after_separator {
                return arg;
            }
            if arg == "--" {
                after_separator = true;
                return arg;
            }
            match LLAMA_SHORT_FLAGS.iter().find(|(short, _)| arg == *short) {
                Some((_, long)) => long.into(),
                None => arg,
            }
        })
        .collect()
}

/// Where the weights go.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Hardware")]
pub struct PlacementArgs {
    /// Layers on the GPU (-ngl): a number, `all`, or `auto` (as many as fit in free
    /// memory, with the context) [default: auto]. A build without a GPU warns and ignores
    /// it.
    #[arg(long = "gpu-layers", visible_alias = "n-gpu-layers", value_name = "N|auto|all", value_parser = gpu_layers)]
    pub gpu_layers: Option<GpuLayers>,
    /// Keep the experts of every MoE layer in CPU memory (-cmoe).
    #[arg(long = "cpu-moe")]
    pub cpu_moe: bool,
    /// Keep the experts of the first N layers in CPU memory (-ncmoe).
    #[arg(
        long = "n-cpu-moe",
        value_name = "N",
        conflicts_with = "cpu_moe",
        default_value_t = 0
    )]
    pub n_cpu_moe: u32,
    /// Put tensors whose name matches REGEX in BUFFER's memory, e.g. `exps=CPU`
    /// (repeatable; -ot).
    #[arg(long = "override-tensor", value_name = "REGEX=BUFFER", value_parser = crate::engine::parse_override)]
    pub override_tensor: Vec<TensorOverride>,
    /// Comma-separated GPUs to use (names from `glm devices`; -dev).
    #[arg(long = "device", value_name = "LIST", value_delimiter = ',')]
    pub devices: Vec<String>,
    /// The GPU for the whole model with `--split-mode none`, else for small tensors (-mg).
    #[arg(long = "main-gpu", value_name = "N", default_value_t = 0)]
    pub main_gpu: i32,
    /// How several GPUs share the model (-sm).
    #[arg(long = "split-mode", value_enum, default_value = "layer")]
    pub split_mode: SplitModeArg,
    /// Shares of the model per device, e.g. `3,1`: the RPC servers' devices first, then the
    /// GPUs (-ts).
    #[arg(
        long = "tensor-split",
        value_name = "LIST",
        value_delimiter = ',',
        allow_negative_numbers = true
    )]
    pub tensor_split: Vec<f32>,
    /// Lock the weights in RAM (no paging out).
    #[arg(long)]
    pub mlock: bool,
    /// Read the file into memory instead of mapping it.
    #[arg(long = "no-mmap")]
    pub no_mmap: bool,
    /// NUMA placement of threads and memory.
    #[arg(long, value_enum)]
    pub numa: Option<NumaArg>,
    /// Devices of `glm rpc-server`s on other machines, joined to this one's
    /// (comma-separated HOST:PORT): llama.cpp places layers on them first, as on GPUs
    /// (-ngl, --tensor-split, -ot REGEX=RPC0).
    #[arg(long = "rpc", value_name = "HOST:PORT,...", value_delimiter = ',', value_parser = rpc_endpoint)]
    pub rpc: Vec<String>,
    /// Seconds one evaluation on RPC servers may take before glm gives up on them.
    #[arg(long = "rpc-timeout", value_name = "SECS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub rpc_timeout: u64,
}

fn rpc_endpoint(text: &str) -> Result<String, String> {
    crate::engine::rpc::parse_endpoint(text)
}

/// Context, cache and threads.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Context")]
pub struct ContextArgs {
    /// Context size in tokens, at most the model's training context; llama.cpp rounds it
    /// up to a multiple of 256 [default: what fits in memory with -ngl auto, else 4096;
    /// never more than the training context].
    #[arg(short = 'c', long = "ctx-size", value_parser = clap::value_parser!(u32).range(1..=i64::from(super::MAX_CTX)))]
    pub ctx_size: Option<u32>,
    /// CPU threads for generation [default: the physical cores].
    #[arg(short = 't', long, help_heading = "Hardware", value_parser = clap::value_parser!(i32).range(1..=super::MAX_THREADS))]
    pub threads: Option<i32>,
    /// CPU threads for prompt processing [default: --threads] (-tb).
    #[arg(long = "threads-batch", help_heading = "Hardware", value_parser = clap::value_parser!(i32).range(1..=super::MAX_THREADS))]
    pub threads_batch: Option<i32>,
    /// Most tokens per evaluation call (logical batch).
    #[arg(short = 'b', long = "batch-size", default_value_t = 2048, value_parser = clap::value_parser!(u32).range(1..=i64::from(super::MAX_CTX)))]
    pub batch_size: u32,
    /// Most tokens per compute pass (physical batch; -ub).
    #[arg(long = "ubatch-size", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=i64::from(super::MAX_CTX)))]
    pub ubatch_size: u32,
    /// KV cache type of keys and values both (-ctk/-ctv set them apart).
    #[arg(long = "cache-type", value_enum)]
    pub cache_type: Option<CacheTypeArg>,
    /// KV cache type of keys [default: --cache-type, else f16] (-ctk).
    #[arg(long = "cache-type-k", value_enum)]
    pub cache_type_k: Option<CacheTypeArg>,
    /// KV cache type of values [default: --cache-type, else f16]; quantized types need
    /// flash attention (-ctv).
    #[arg(long = "cache-type-v", value_enum)]
    pub cache_type_v: Option<CacheTypeArg>,
    /// Flash attention: faster; on CPU it computes attention in F16 (-fa).
    #[arg(long = "flash-attn", value_enum, default_value = "auto")]
    pub flash_attention: FlashAttentionArg,
    /// Print where the model would go (per device: weights, KV cache, compute buffers)
    /// and exit without loading it.
    #[arg(long = "dry-run", help_heading = "Hardware")]
    pub dry_run: bool,
}

/// Multi-token-prediction drafting from the model's own NextN layers.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Drafting")]
pub struct DraftArgs {
    /// Draft tokens with the model's NextN layers and check them in one pass [default:
    /// on when the file has them and sampling is greedy].
    #[arg(long, overrides_with = "no_mtp")]
    pub mtp: bool,
    /// Never draft.
    #[arg(long = "no-mtp", overrides_with = "mtp")]
    pub no_mtp: bool,
    /// Most tokens drafted per step.
    #[arg(long = "draft-max", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub draft_max: u32,
    /// Fewest tokens a draft needs to be checked.
    #[arg(long = "draft-min", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=64))]
    pub draft_min: u32,
    /// Stop a draft at a token the draft head thinks less likely than this.
    #[arg(long = "draft-p-min", default_value_t = 0.0, value_parser = super::probability)]
    pub draft_p_min: f32,
}

/// llama.cpp allocates the context in steps of this many tokens.
pub const CTX_STEP: u32 = 256;

impl ContextArgs {
    /// Says when llama.cpp will make the context larger than asked (it rounds up to a
    /// multiple of [`CTX_STEP`] without a word).
    pub(super) fn note_rounding(&self) {
        if let Some(asked) = self.ctx_size {
            let actual = asked.div_ceil(CTX_STEP) * CTX_STEP;
            if actual != asked {
                eprintln!("note: --ctx-size {asked} is raised to {actual}: llama.cpp sizes the context in steps of {CTX_STEP} tokens");
            }
        }
    }
}

impl DraftArgs {
    /// `Some(true)` / `Some(false)` when the user chose, `None` for the default.
    pub fn choice(&self) -> Option<bool> {
        match (self.mtp, self.no_mtp) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        }
    }
}

fn gpu_layers(text: &str) -> Result<GpuLayers, String> {
    match text {
        "auto" => Ok(GpuLayers::Auto),
        "all" => Ok(GpuLayers::All),
        _ => text
            .parse::<u32>()
            .map(GpuLayers::Count)
            .map_err(|_| format!("{text:?} is not a layer count, `auto` or `all`")),
    }
}

/// `--cache-type*`; the engine's [`CacheType`] stays free of clap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CacheTypeArg {
    F32,
    F16,
    Bf16,
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q4_0")]
    Q4_0,
    #[value(name = "q4_1")]
    Q4_1,
    #[value(name = "iq4_nl")]
    Iq4Nl,
    #[value(name = "q5_0")]
    Q5_0,
    #[value(name = "q5_1")]
    Q5_1,
}

impl From<CacheTypeArg> for CacheType {
    fn from(arg: CacheTypeArg) -> Self {
        match arg {
            CacheTypeArg::F32 => CacheType::F32,
            CacheTypeArg::F16 => CacheType::F16,
            CacheTypeArg::Bf16 => CacheType::Bf16,
            CacheTypeArg::Q8_0 => CacheType::Q8_0,
            CacheTypeArg::Q4_0 => CacheType::Q4_0,
            CacheTypeArg::Q4_1 => CacheType::Q4_1,
            CacheTypeArg::Iq4Nl => CacheType::Iq4Nl,
            CacheTypeArg::Q5_0 => CacheType::Q5_0,
            CacheTypeArg::Q5_1 => CacheType::Q5_1,
        }
    }
}

/// `--flash-attn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FlashAttentionArg {
    Auto,
    On,
    Off,
}

impl From<FlashAttentionArg> for FlashAttention {
    fn from(arg: FlashAttentionArg) -> Self {
        match arg {
            FlashAttentionArg::Auto => FlashAttention::Auto,
            FlashAttentionArg::On => FlashAttention::On,
            FlashAttentionArg::Off => FlashAttention::Off,
        }
    }
}

/// `--split-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SplitModeArg {
    None,
    Layer,
    Row,
}

impl From<SplitModeArg> for SplitMode {
    fn from(arg: SplitModeArg) -> Self {
        match arg {
            SplitModeArg::None => SplitMode::None,
            SplitModeArg::Layer => SplitMode::Layer,
            SplitModeArg::Row => SplitMode::Row,
        }
    }
}

/// `--numa`, as llama.cpp names its strategies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NumaArg {
    /// Spread threads over all nodes.
    Distribute,
    /// Keep threads on the node the program started on.
    Isolate,
    /// Follow the CPU map numactl gave.
    Numactl,
}

impl From<NumaArg> for Numa {
    fn from(arg: NumaArg) -> Self {
        match arg {
            NumaArg::Distribute => Numa::Distribute,
            NumaArg::Isolate => Numa::Isolate,
            NumaArg::Numactl => Numa::Numactl,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_short_flags_become_long_ones_before_the_separator_only() {
        let args = ["glm", "run", "-ngl", "5", "-p", "x", "--", "-ngl"].map(std::ffi::OsString::from);
        let expanded = expand_llama_flags(args);
        assert_eq!(expanded[2], "--gpu-layers");
        assert_eq!(expanded[7], "-ngl");
    }

    #[test]
    fn gpu_layers_take_counts_and_words() {
        assert_eq!(gpu_layers("auto"), Ok(GpuLayers::Auto));
        assert_eq!(gpu_layers("99"), Ok(GpuLayers::Count(99)));
        assert!(gpu_layers("-1").is_err());
    }
}
