//! Command-line definitions. This module only parses arguments and dispatches to
//! `crate::commands`.

mod runtime;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub use runtime::{ContextArgs, DraftArgs, PlacementArgs};

use crate::commands;

#[derive(Debug, Parser)]
#[command(
    name = "glm",
    version,
    about = "Run the GLM model family locally: convert Hugging Face checkpoints to GGUF and generate with llama.cpp"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Convert a Hugging Face GLM checkpoint folder into a GGUF file.
    Convert(ConvertArgs),
    /// Generate an answer to one prompt.
    Run(RunArgs),
    /// Chat interactively (or answer one line per turn when stdin is not a terminal).
    Chat(ChatArgs),
    /// Show a GGUF file's metadata and tensor table.
    Inspect(InspectArgs),
    /// Print the token ids of a text as a JSON list.
    Tokenize(TokenizeArgs),
    /// Write the model's logits for a prompt as JSON.
    Logits(LogitsArgs),
    /// List the built-in quantization presets.
    Presets,
    /// Re-quantize an F32/F16/BF16 GGUF with a preset.
    Quantize(QuantizeArgs),
    /// Measure prompt processing and generation speed (llama-bench's method).
    Bench(BenchArgs),
    /// List the devices llama.cpp can use, with their free and total memory.
    Devices,
}

#[derive(Debug, Args)]
pub struct QuantizeArgs {
    /// An F32, F16 or BF16 GGUF file.
    pub input: PathBuf,
    /// The file to write; in a folder, the input's name with the new type
    /// (`X-BF16.gguf` → `DIR/X-Q4_K_M.gguf`).
    pub output: PathBuf,
    /// Quantization preset or preset YAML file.
    #[arg(long, visible_alias = "type", value_name = "PRESET")]
    pub quant: String,
    /// Importance matrix (llama-imatrix's GGUF or legacy .dat) for the quantized types.
    #[arg(long, value_name = "FILE")]
    pub imatrix: Option<PathBuf>,
    /// Re-quantize weights holding NaN or infinite values instead of refusing the file.
    #[arg(long = "allow-nonfinite")]
    pub allow_nonfinite: bool,
    /// Replace the output file if it exists.
    #[arg(short = 'f', long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// Checkpoint folder (config.json, *.safetensors, tokenizer files).
    pub input: PathBuf,
    /// Output file or folder [default: <folder name>-<TYPE>.gguf in the current directory].
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Quantization preset (`glm presets` lists them) or a preset YAML file.
    #[arg(long, visible_alias = "type", default_value = "bf16", value_name = "PRESET")]
    pub quant: String,
    /// `general.name` written into the file [default: the folder name].
    #[arg(long)]
    pub name: Option<String>,
    /// Leave out the multi-token-prediction (NextN) layers of GLM-4.5+ checkpoints.
    #[arg(long = "no-mtp")]
    pub no_mtp: bool,
    /// Importance matrix (llama-imatrix's GGUF or legacy .dat) for the quantized types.
    #[arg(long, value_name = "FILE")]
    pub imatrix: Option<PathBuf>,
    /// Matrix type of the vision projector written beside the model for GLM-4.5V-style
    /// checkpoints (`<name>-mmproj-<TYPE>.gguf`): f32, f16, bf16 or q8_0.
    #[arg(long = "mmproj-type", default_value = "f16", value_name = "TYPE")]
    pub mmproj_type: String,
    /// Convert weights holding NaN or infinite values instead of refusing the checkpoint.
    #[arg(long = "allow-nonfinite")]
    pub allow_nonfinite: bool,
    /// Replace the output file if it exists.
    #[arg(short = 'f', long)]
    pub force: bool,
}

/// Where the model comes from and how it is loaded.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// A GGUF file, or a Hugging Face checkpoint folder (converted once to a cache).
    pub model: PathBuf,
    /// Quantization preset for a checkpoint folder, converted once into the cache [default: bf16, exact]. Ignored for GGUF files.
    #[arg(long, value_name = "PRESET")]
    pub quant: Option<String>,
    #[command(flatten)]
    pub placement: PlacementArgs,
    #[command(flatten)]
    pub context: ContextArgs,
}

/// How the prompt is turned into tokens.
#[derive(Debug, Args)]
pub struct PromptArgs {
    /// Feed the text to the model as is, without the chat template.
    #[arg(long)]
    pub raw: bool,
    /// System prompt placed before the user's message.
    #[arg(long, short = 's')]
    pub system: Option<String>,
    /// Let thinking models reason first (`enable_thinking=true` in the template).
    #[arg(long, overrides_with = "no_think")]
    pub think: bool,
    /// Ask thinking models to answer directly (`enable_thinking=false`).
    #[arg(long = "no-think", overrides_with = "think")]
    pub no_think: bool,
    /// OpenAI-style tool definitions (a JSON list) for the template; calls the model
    /// makes are printed as JSON lines.
    #[arg(long, value_name = "FILE")]
    pub tools: Option<PathBuf>,
}

impl PromptArgs {
    pub fn enable_thinking(&self) -> Option<bool> {
        match (self.think, self.no_think) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        }
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub prompt_format: PromptArgs,
    /// The prompt; `-` reads it from standard input.
    #[arg(short, long)]
    pub prompt: String,
    /// An image for vision models (repeat for several); PNG, JPEG, WebP, BMP or GIF.
    #[arg(long = "image", value_name = "FILE")]
    pub images: Vec<PathBuf>,
    /// The vision projector [default: the `*mmproj*.gguf` next to the model].
    #[arg(long, value_name = "FILE")]
    pub mmproj: Option<PathBuf>,
    #[command(flatten)]
    pub generation: GenerationArgs,
}

/// Sampling and output of generated text (shared by `run` and `chat`).
#[derive(Debug, Clone, Args)]
pub struct GenerationArgs {
    /// Sampling temperature; 0 picks the most likely token every time [default: the
    /// model's general.sampling.temp, else 0.8].
    #[arg(long, value_parser = temperature)]
    pub temp: Option<f32>,
    /// Keep only the K most likely tokens, 0 = off [default: the model's
    /// general.sampling.top_k, else 40].
    #[arg(long = "top-k", value_parser = clap::value_parser!(i32).range(0..=MAX_TOP_K))]
    pub top_k: Option<i32>,
    /// Keep the most likely tokens up to this total probability, 1 = off [default: the
    /// model's general.sampling.top_p, else 0.95].
    #[arg(long = "top-p", value_parser = probability)]
    pub top_p: Option<f32>,
    /// Drop tokens less likely than this fraction of the best one, 0 = off [default: the
    /// model's general.sampling.min_p, else 0.05].
    #[arg(long = "min-p", value_parser = probability)]
    pub min_p: Option<f32>,
    /// Penalty for repeating recent tokens, 1 = off [default: the model's
    /// general.sampling.penalty_repeat, else 1].
    #[arg(long = "repeat-penalty", value_parser = penalty)]
    pub repeat_penalty: Option<f32>,
    /// How many recent tokens the repeat penalty looks at, -1 = the whole context
    /// [default: the model's general.sampling.penalty_last_n, else 64].
    #[arg(long = "repeat-last-n", value_parser = clap::value_parser!(i32).range(-1..=MAX_CTX as i64))]
    pub repeat_last_n: Option<i32>,
    /// Random seed [default: a fresh one each run].
    #[arg(long)]
    pub seed: Option<u32>,
    /// Stop after this many generated tokens (generation also stops when the context is
    /// full).
    #[arg(short = 'n', long = "max-tokens", default_value_t = 1024, value_parser = max_tokens)]
    pub max_tokens: usize,
    /// Do not print the model's reasoning (`<think>` blocks); by default it goes to
    /// stderr, dimmed on a terminal, and only the answer goes to stdout.
    #[arg(long = "hide-reasoning")]
    pub hide_reasoning: bool,
    /// Keep generating past end-of-turn tokens, up to --max-tokens (for benchmarks).
    #[arg(long = "ignore-eos")]
    pub ignore_eos: bool,
    #[command(flatten)]
    pub draft: DraftArgs,
}

#[derive(Debug, Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub prompt_format: PromptArgs,
    /// The vision projector for /image [default: the `*mmproj*.gguf` next to the model].
    #[arg(long, value_name = "FILE")]
    pub mmproj: Option<PathBuf>,
    #[command(flatten)]
    pub generation: GenerationArgs,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt lengths to time, comma-separated or repeated (0 = none).
    #[arg(short = 'p', long = "n-prompt", value_delimiter = ',', default_value = "512", value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_CTX)))]
    pub n_prompt: Vec<u32>,
    /// Generation lengths to time, comma-separated or repeated (0 = none).
    #[arg(short = 'n', long = "n-gen", value_delimiter = ',', default_value = "128", value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_CTX)))]
    pub n_gen: Vec<u32>,
    /// Timed repetitions of each test (after one warm-up run).
    #[arg(short = 'r', long = "repetitions", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub repetitions: u32,
    /// Report format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "md")]
    pub output: BenchFormat,
    /// Draft with the model's NextN layers during generation tests.
    #[arg(long)]
    pub mtp: bool,
}

/// `glm bench --output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchFormat {
    Md,
    Json,
    Jsonl,
    Csv,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The GGUF file.
    pub file: PathBuf,
    /// Print every element of long arrays (token lists) instead of a summary.
    #[arg(long)]
    pub full: bool,
}

#[derive(Debug, Args)]
pub struct TokenizeArgs {
    /// A GGUF file or Hugging Face checkpoint folder.
    pub model: PathBuf,
    /// The text (it may start with `-`); `-` or nothing reads it from standard input.
    #[arg(allow_hyphen_values = true)]
    pub text: Option<String>,
}

#[derive(Debug, Args)]
pub struct LogitsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub prompt_format: PromptArgs,
    /// Prompt text (rendered with the chat template unless --raw).
    #[arg(long, conflicts_with = "tokens", required_unless_present = "tokens")]
    pub prompt: Option<String>,
    /// Comma-separated token ids, evaluated as given.
    #[arg(long, value_delimiter = ',')]
    pub tokens: Option<Vec<i32>>,
    /// Logits of every position instead of the last one only.
    #[arg(long, conflicts_with = "images")]
    pub all: bool,
    /// An image for vision models (repeatable); needs --prompt.
    #[arg(long = "image", value_name = "FILE", requires = "prompt")]
    pub images: Vec<PathBuf>,
    /// The vision projector [default: the `*mmproj*.gguf` next to the model].
    #[arg(long, value_name = "FILE")]
    pub mmproj: Option<PathBuf>,
    /// Output JSON file; `-` writes it to standard output, a folder gets `logits.json`.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Replace the output file if it exists.
    #[arg(short = 'f', long)]
    pub force: bool,
}

/// Upper bounds for numeric flags, checked before anything is allocated.
pub const MAX_CTX: u32 = 1 << 24;
pub(crate) const MAX_THREADS: i64 = 1024;
const MAX_TOP_K: i64 = 1 << 24;

/// A number the sampler can use: finite, and within `range`.
fn bounded_float(text: &str, range: std::ops::RangeInclusive<f32>) -> Result<f32, String> {
    let value: f32 = text.parse().map_err(|_| format!("{text:?} is not a number"))?;
    if !value.is_finite() || !range.contains(&value) {
        return Err(format!("{text} is outside {}..={}", range.start(), range.end()));
    }
    Ok(value)
}

pub fn temperature(text: &str) -> Result<f32, String> {
    bounded_float(text, 0.0..=100.0)
}

pub fn probability(text: &str) -> Result<f32, String> {
    bounded_float(text, 0.0..=1.0)
}

pub fn penalty(text: &str) -> Result<f32, String> {
    bounded_float(text, 0.0..=100.0).and_then(|v| if v > 0.0 { Ok(v) } else { Err("must be above 0".into()) })
}

/// A token count; larger than any context, the generation is bounded by the context.
pub fn max_tokens(text: &str) -> Result<usize, String> {
    let value: u64 = text.parse().map_err(|_| format!("{text:?} is not a count"))?;
    usize::try_from(value.min(u64::from(u32::MAX))).map_err(|e| e.to_string())
}

/// Parses the command line. A usage error is one line, like every other error (clap's
/// own report adds a usage block and a hint); help and version print as usual.
fn parse() -> Cli {
    match Cli::try_parse_from(runtime::expand_llama_flags(std::env::args_os())) {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() || e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            e.exit()
        }
        Err(e) => {
            let report = e.render().to_string();
            let message: Vec<&str> = report
                .lines()
                .take_while(|line| !line.trim().is_empty())
                .map(str::trim)
                .collect();
            eprintln!("{}", message.join(" "));
            std::process::exit(2);
        }
    }
}

pub fn run() -> anyhow::Result<()> {
    let cli = parse();
    match cli.command {
        Command::Convert(args) => commands::convert::run(&args),
        Command::Run(args) => commands::run::run(&args),
        Command::Chat(args) => commands::chat::run(&args),
        Command::Inspect(args) => commands::inspect::run(&args),
        Command::Tokenize(args) => commands::tokenize::run(&args),
        Command::Logits(args) => commands::logits::run(&args),
        Command::Presets => commands::presets::run(),
        Command::Quantize(args) => commands::quantize::run(&args),
        Command::Bench(args) => commands::bench::run(&args),
        Command::Devices => commands::devices::run(),
    }
}
