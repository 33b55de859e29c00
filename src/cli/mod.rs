//! Command-line definitions. This module only parses arguments and dispatches to
//! `crate::commands`.

mod runtime;

use std::path::PathBuf;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

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
    /// Show llama.cpp's own log and the details of a run (seed, context) on stderr.
    #[arg(short = 'v', long, global = true)]
    verbose: bool,
}

impl Cli {
    /// What clap cannot say in its definitions: which positional argument is the model
    /// when `-m` names it too, and that a prompt is given in one way only.
    fn normalize(&mut self) -> Result<(), String> {
        if let Some(context) = self.command.context() {
            context.note_rounding();
        }
        match &mut self.command {
            Command::Run(args) => settle_model_and_prompt(&mut args.model, &mut args.input),
            Command::Logits(args) => {
                settle_model_and_prompt(&mut args.model, &mut args.input)?;
                if args.tokens.is_none() && !args.input.has_any() {
                    return Err("give a prompt (-p TEXT, -f FILE or text after the model) or --tokens".into());
                }
                if !args.images.is_empty() && !args.input.has_any() {
                    return Err("--image needs a prompt".into());
                }
                Ok(())
            }
            Command::Chat(args) => only_the_model(&mut args.model),
            Command::Bench(args) => only_the_model(&mut args.model),
            Command::Imatrix(args) => only_the_model(&mut args.model),
            _ => Ok(()),
        }
    }
}

impl Command {
    fn context(&self) -> Option<&ContextArgs> {
        match self {
            Command::Run(args) => Some(&args.model.context),
            Command::Chat(args) => Some(&args.model.context),
            Command::Logits(args) => Some(&args.model.context),
            Command::Bench(args) => Some(&args.model.context),
            Command::Serve(args) => Some(&args.context),
            _ => None,
        }
    }

    /// Records which generation settings the config file gave (`/set` shows it).
    fn note_config(&mut self, ids: Vec<&'static str>) {
        match self {
            Command::Run(args) => args.generation.from_config = ids,
            Command::Chat(args) => args.generation.from_config = ids,
            _ => {}
        }
    }
}

fn settle_model_and_prompt(model: &mut ModelArgs, input: &mut PromptInput) -> Result<(), String> {
    if let Some(first_word) = model.settle() {
        input.words.insert(0, first_word.to_string_lossy().into_owned());
        if input.prompt.is_some() || input.file.is_some() {
            return Err(format!(
                "{:?}: the prompt is given twice (as text after the model and with -p/-f)",
                input.words.join(" ")
            ));
        }
    }
    Ok(())
}

fn only_the_model(model: &mut ModelArgs) -> Result<(), String> {
    match model.settle() {
        Some(extra) => Err(format!(
            "unexpected argument {:?}: the model is already given with -m",
            extra.display()
        )),
        None => Ok(()),
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Convert a Hugging Face GLM checkpoint folder into a GGUF file.
    Convert(ConvertArgs),
    /// Generate an answer to one prompt (without one, at a terminal: chat, as `ollama run`).
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
    /// Re-quantize an F32/F16/BF16 GGUF with a preset (or merge and split one).
    Quantize(QuantizeArgs),
    /// Compute an importance matrix from a text (llama-imatrix's method and file format)
    /// for `--imatrix` of convert and quantize.
    Imatrix(ImatrixArgs),
    /// Measure prompt processing and generation speed (llama-bench's method).
    Bench(BenchArgs),
    /// List the devices llama.cpp can use, with their free and total memory.
    Devices(DevicesArgs),
    /// Serve models over HTTP: OpenAI's chat and completions API and Anthropic's messages
    /// API, several requests decoded together.
    Serve(ServeArgs),
    /// Serve this machine's devices to glm on other machines (llama.cpp's RPC backend):
    /// with `--rpc HOST:PORT` there, a model spreads over both.
    #[command(name = "rpc-server")]
    RpcServer(RpcServerArgs),
    /// Show how a model reference resolves: path, store, catalogue, Hugging Face cache,
    /// download.
    Which(WhichArgs),
    /// Download a model by name (and convert it once when the repository has no GGUF).
    Pull(PullArgs),
    /// The models in glm's store: list them, or show, remove or prune them.
    Models(ModelsArgs),
    /// Show or edit the config file (defaults for run, chat, logits and bench).
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print a shell completion script (bash, zsh, fish, powershell, elvish).
    Completions(CompletionsArgs),
}

/// `glm config`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print where the config file is (GLM_CONFIG, else the user's config folder).
    Path,
    /// Print the config file, after checking it.
    Show,
    /// Open the config file in $VISUAL or $EDITOR (else vi), creating it from a template;
    /// check it afterwards.
    Edit,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct WhichArgs {
    /// A path, a store or catalogue name, or ORG/NAME[:PRESET][@REVISION].
    #[arg(value_name = "MODEL")]
    pub reference: String,
    /// The preset when the reference names none.
    #[arg(long, value_name = "PRESET")]
    pub quant: Option<String>,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// A catalogue name (`glm-4.7-flash`) or ORG/NAME[:PRESET][@REVISION].
    #[arg(value_name = "MODEL")]
    pub reference: String,
    /// The preset when the reference names none [default: q4_k_m].
    #[arg(long, value_name = "PRESET")]
    pub quant: Option<String>,
}

#[derive(Debug, Args)]
pub struct ModelsArgs {
    #[command(subcommand)]
    pub action: Option<ModelsAction>,
    /// Print only the names (store, then catalogue), one per line, for shell completion.
    #[arg(long)]
    pub names: bool,
}

#[derive(Debug, Subcommand)]
pub enum ModelsAction {
    /// A stored model's origin, files and metadata summary.
    Show {
        #[arg(value_name = "MODEL")]
        reference: String,
    },
    /// Remove a stored model (every preset of it unless NAME:PRESET), saying the bytes freed.
    Rm {
        #[arg(value_name = "MODEL")]
        reference: String,
        /// Also remove its files from the Hugging Face cache (shared with other tools).
        #[arg(long = "hf-cache")]
        hf_cache: bool,
    },
    /// Remove conversions whose source or glm version changed, and entries whose files
    /// are gone.
    Prune,
}

#[derive(Debug, Args)]
pub struct QuantizeArgs {
    /// An F32, F16 or BF16 GGUF file (any type with `--quant copy`); a split model by its
    /// first part.
    pub input: PathBuf,
    /// The file to write; in a folder, the input's name with the new type
    /// (`X-BF16.gguf` → `DIR/X-Q4_K_M.gguf`).
    pub output: PathBuf,
    /// Quantization preset or preset YAML file; `copy` keeps every tensor as it is (to
    /// merge a split model, or split one with --split-max-size).
    #[arg(long, visible_alias = "type", value_name = "PRESET")]
    pub quant: String,
    #[command(flatten)]
    pub split: SplitArgs,
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
pub struct ImatrixArgs {
    /// The text to evaluate, cut into chunks of -c tokens (llama-imatrix's -f).
    #[arg(short = 'f', long = "file", value_name = "TEXT", help_heading = "Input")]
    pub file: PathBuf,
    /// At most this many chunks [default: all the text holds].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..), help_heading = "Input")]
    pub chunks: Option<u32>,
    /// Also collect the output projection (`output.weight`), as llama-imatrix's
    /// --process-output.
    #[arg(long = "process-output", help_heading = "Input")]
    pub process_output: bool,
    /// The matrix file (llama-imatrix's GGUF format); a folder gets `imatrix.gguf`.
    #[arg(short, long, default_value = "imatrix.gguf", help_heading = "Output")]
    pub output: PathBuf,
    /// Replace the output file if it exists.
    #[arg(long, help_heading = "Output")]
    pub force: bool,
    /// The model (-c is the chunk size [default: 512]).
    #[command(flatten)]
    pub model: ModelArgs,
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
    #[command(flatten)]
    pub split: SplitArgs,
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

/// Split output: several files `<name>-00001-of-0000N.gguf`, as llama.cpp writes and
/// loads them (by the first part).
#[derive(Debug, Args)]
pub struct SplitArgs {
    /// Split the output into parts of at most this much tensor data: bytes, or with K, M,
    /// G or T (powers of 1000), e.g. 50G for the Hugging Face Hub's file limit.
    #[arg(long = "split-max-size", value_name = "SIZE", value_parser = split_size)]
    pub max_size: Option<u64>,
    /// Split the output into parts of at most N tensors.
    #[arg(long = "split-max-tensors", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_tensors: Option<u32>,
}

impl SplitArgs {
    pub fn limits(&self) -> glm_convert::SplitLimits {
        glm_convert::SplitLimits {
            max_bytes: self.max_size,
            max_tensors: self.max_tensors.map(|n| n as usize),
        }
    }
}

fn split_size(text: &str) -> Result<u64, String> {
    glm_convert::split::parse_size(text)
}

/// Where the model comes from and how it is loaded.
#[derive(Debug, Args)]
#[command(next_help_heading = "Model")]
pub struct ModelArgs {
    /// The model, set by [`Cli::normalize`] from the positional argument or `-m`.
    #[arg(skip)]
    pub model: PathBuf,
    /// A GGUF file, a Hugging Face checkpoint folder (converted once to a cache), or a
    /// model name: `glm-4.7-flash`, ORG/NAME[:PRESET][@REVISION] (`glm which` explains).
    #[arg(index = 1, value_name = "MODEL", required_unless_present = "model_flag")]
    model_positional: Option<PathBuf>,
    /// The model, as llama.cpp's tools take it (instead of the first argument).
    #[arg(short = 'm', long = "model", value_name = "MODEL")]
    model_flag: Option<PathBuf>,
    /// Quantization preset for a checkpoint folder, converted once into the cache
    /// [default: bf16, exact]. Ignored for GGUF files.
    #[arg(long, value_name = "PRESET")]
    pub quant: Option<String>,
    #[command(flatten)]
    pub placement: PlacementArgs,
    #[command(flatten)]
    pub context: ContextArgs,
}

impl ModelArgs {
    /// Settles which argument named the model. With `-m`, a positional argument is not
    /// the model; it is returned for the caller to place (the prompt of `glm run`).
    fn settle(&mut self) -> Option<PathBuf> {
        match (self.model_flag.take(), self.model_positional.take()) {
            (Some(flag), positional) => {
                self.model = flag;
                positional
            }
            (None, Some(positional)) => {
                self.model = positional;
                None
            }
            (None, None) => None,
        }
    }
}

/// How the prompt is turned into tokens.
#[derive(Debug, Args)]
#[command(next_help_heading = "Prompt")]
pub struct PromptArgs {
    /// Feed the text to the model as is, without the chat template.
    #[arg(long)]
    pub raw: bool,
    /// System prompt placed before the user's message (-sys).
    #[arg(long = "system-prompt", visible_alias = "system", value_name = "TEXT")]
    pub system: Option<String>,
    /// Let thinking models reason first (`enable_thinking` in the template); `--think=false`
    /// is --no-think [default: the template's choice].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true",
          conflicts_with_all = ["no_think", "reasoning_budget"])]
    pub think: Option<bool>,
    /// Ask thinking models to answer directly (`enable_thinking=false`).
    #[arg(long = "no-think", conflicts_with = "reasoning_budget")]
    pub no_think: bool,
    /// llama.cpp's spelling of the thinking switch: 0 = --no-think, -1 = the default.
    /// GLM has no token budget for thinking, so no other value is taken.
    #[arg(long = "reasoning-budget", value_name = "N", value_parser = reasoning_budget)]
    pub reasoning_budget: Option<ReasoningBudget>,
    /// OpenAI-style tool definitions (a JSON list) for the template; calls the model
    /// makes are printed as JSON lines.
    #[arg(long, value_name = "FILE")]
    pub tools: Option<PathBuf>,
}

impl PromptArgs {
    pub fn enable_thinking(&self) -> Option<bool> {
        // `--think` conflicts with both switches, so a `think` set before them can only be
        // the config file's, which a flag beats.
        if self.no_think || self.reasoning_budget == Some(ReasoningBudget::Off) {
            return Some(false);
        }
        self.think
    }
}

/// `--reasoning-budget`'s two possible values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReasoningBudget {
    Off,
    Unlimited,
}

/// Where the text of a one-shot prompt comes from.
#[derive(Debug, Args)]
#[command(next_help_heading = "Prompt")]
pub struct PromptInput {
    /// The prompt; `-` reads it from standard input.
    #[arg(short = 'p', long, allow_hyphen_values = true, value_name = "TEXT")]
    pub prompt: Option<String>,
    /// Read the prompt from a file (`-` for standard input).
    #[arg(short = 'f', long, value_name = "FILE", conflicts_with = "prompt")]
    pub file: Option<PathBuf>,
    /// The prompt as words after the model, joined with spaces (as `ollama run` takes it).
    #[arg(index = 2, value_name = "PROMPT", conflicts_with_all = ["prompt", "file"])]
    pub words: Vec<String>,
}

impl PromptInput {
    /// Which of the three forms the user chose, if any.
    pub fn source(&self) -> Option<PromptSource<'_>> {
        if let Some(text) = &self.prompt {
            return Some(PromptSource::Text(text));
        }
        if let Some(path) = &self.file {
            return Some(PromptSource::File(path));
        }
        (!self.words.is_empty()).then(|| PromptSource::Words(&self.words))
    }

    fn has_any(&self) -> bool {
        self.source().is_some()
    }
}

/// A prompt as the user gave it; `-` (as text or file) means standard input.
pub enum PromptSource<'a> {
    Text(&'a str),
    File(&'a std::path::Path),
    Words(&'a [String]),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub input: PromptInput,
    #[command(flatten)]
    pub prompt_format: PromptArgs,
    /// An image for vision models (repeat for several); PNG, JPEG, WebP, BMP or GIF.
    #[arg(long = "image", value_name = "FILE", help_heading = "Prompt")]
    pub images: Vec<PathBuf>,
    /// The vision projector [default: the `*mmproj*.gguf` next to the model].
    #[arg(long, value_name = "FILE", help_heading = "Model")]
    pub mmproj: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub generation: GenerationArgs,
}

/// Sampling and output of generated text (shared by `run` and `chat`).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Sampling")]
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
    /// Random seed, -1 = a fresh one [default: a fresh one each run; -v prints it].
    #[arg(short = 's', long, value_parser = seed)]
    pub seed: Option<u32>,
    /// Stop after this many generated tokens; -1 = until the end of the turn or a full
    /// context.
    #[arg(short = 'n', long = "max-tokens", visible_alias = "n-predict", value_name = "N", default_value = "1024",
          value_parser = max_tokens, help_heading = "Output")]
    pub max_tokens: usize,
    /// Do not print the model's reasoning (`<think>` blocks); by default it goes to
    /// stderr, dimmed on a terminal, and only the answer goes to stdout.
    #[arg(
        long = "hide-reasoning",
        visible_alias = "hidethinking",
        help_heading = "Output",
        conflicts_with = "reasoning_format"
    )]
    pub hide_reasoning: bool,
    /// llama.cpp's spelling of where reasoning goes: `none` leaves it in the answer with
    /// its tags (stdout); `deepseek` and `auto` split it off (the default).
    #[arg(
        long = "reasoning-format",
        value_enum,
        value_name = "FORMAT",
        help_heading = "Output"
    )]
    pub reasoning_format: Option<ReasoningFormat>,
    /// Keep generating past end-of-turn tokens, up to --max-tokens (for benchmarks).
    #[arg(long = "ignore-eos", help_heading = "Output")]
    pub ignore_eos: bool,
    #[command(flatten)]
    pub draft: DraftArgs,
    /// The ids of the settings whose value came from the config file.
    #[arg(skip)]
    pub from_config: Vec<&'static str>,
}

/// `--reasoning-format`, as llama.cpp names its choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReasoningFormat {
    None,
    Auto,
    Deepseek,
}

impl GenerationArgs {
    /// How the reply shows the model's reasoning.
    pub fn reasoning_display(&self) -> ReasoningDisplay {
        match (self.hide_reasoning, self.reasoning_format) {
            (true, _) => ReasoningDisplay::Hidden,
            (false, Some(ReasoningFormat::None)) => ReasoningDisplay::Inline,
            _ => ReasoningDisplay::Apart,
        }
    }
}

pub use crate::commands::reply::ReasoningDisplay;

#[derive(Debug, Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub prompt_format: PromptArgs,
    /// The vision projector for /image [default: the `*mmproj*.gguf` next to the model].
    #[arg(long, value_name = "FILE", help_heading = "Model")]
    pub mmproj: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
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

/// `glm serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The models to serve, as `glm run` takes them; the first answers requests that name
    /// none.
    #[arg(value_name = "MODEL", required = true)]
    pub models: Vec<PathBuf>,
    /// Quantization preset for checkpoint folders, converted once into the cache.
    #[arg(long, value_name = "PRESET", help_heading = "Model")]
    pub quant: Option<String>,
    /// The name a model is served as, in the order of the models [default: the reference
    /// as typed, or a file's stem].
    #[arg(long = "alias", value_name = "NAME", help_heading = "Model")]
    pub aliases: Vec<String>,
    /// A vision projector, in the order of the models (repeatable) [default: the
    /// `*mmproj*.gguf` beside each model, when it fits].
    #[arg(long = "mmproj", value_name = "FILE", help_heading = "Model")]
    pub mmproj: Vec<PathBuf>,
    /// Load no vision projector: requests with images are refused.
    #[arg(long = "no-mmproj", conflicts_with = "mmproj", help_heading = "Model")]
    pub no_mmproj: bool,
    #[command(flatten)]
    pub placement: PlacementArgs,
    #[command(flatten)]
    pub context: ContextArgs,
    /// Address to listen on; anything but a loopback address needs --api-key to be safe.
    #[arg(long, default_value = "127.0.0.1", help_heading = "Server")]
    pub host: String,
    /// Port to listen on; 0 picks a free one (the start line says which).
    #[arg(long, default_value_t = 8080, help_heading = "Server")]
    pub port: u16,
    /// Requests decoded together per model; each gets --ctx-size tokens of context.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256), help_heading = "Server")]
    pub parallel: u32,
    /// Requests that may wait for a free slot per model; more are refused with 503.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(0..=1_000_000), help_heading = "Server")]
    pub queue: u32,
    /// Require this key (`Authorization: Bearer KEY` or `x-api-key: KEY`) on every
    /// route but /health.
    #[arg(
        long = "api-key",
        env = "GLM_API_KEY",
        hide_env_values = true,
        value_name = "KEY",
        help_heading = "Server"
    )]
    pub api_key: Option<String>,
    /// Allow browsers on this origin (repeatable; `*` for any) [default: no CORS].
    #[arg(long = "cors", value_name = "ORIGIN", help_heading = "Server")]
    pub cors: Vec<String>,
    /// Largest request body in bytes; larger ones get 413.
    #[arg(long = "max-body", value_name = "BYTES", default_value_t = 32 << 20, help_heading = "Server",
          value_parser = max_body)]
    pub max_body: usize,
}

#[derive(Debug, Args)]
pub struct DevicesArgs {
    /// Also the devices of these RPC servers (comma-separated HOST:PORT).
    #[arg(long = "rpc", value_name = "HOST:PORT,...", value_delimiter = ',', value_parser = rpc_endpoint)]
    pub rpc: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RpcServerArgs {
    /// Address to listen on. The protocol has no authentication or encryption: anything
    /// but a loopback address lets everyone who reaches it run code on your devices and
    /// read what they hold.
    #[arg(short = 'H', long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on.
    #[arg(short = 'p', long, default_value_t = crate::engine::rpc::DEFAULT_PORT,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,
    /// CPU threads for the CPU device [default: the physical cores].
    #[arg(short = 't', long, value_parser = clap::value_parser!(i32).range(1..=MAX_THREADS))]
    pub threads: Option<i32>,
    /// Comma-separated devices to serve (names from `glm devices`) [default: the GPUs,
    /// else the CPU].
    #[arg(short = 'd', long = "device", value_name = "LIST", value_delimiter = ',')]
    pub devices: Vec<String>,
    /// Keep received weights in a folder, so a client that connects again sends only
    /// their hashes [default folder: glm's cache, `rpc`].
    #[arg(short = 'c', long, value_name = "DIR", num_args = 0..=1)]
    pub cache: Option<Option<PathBuf>>,
}

fn rpc_endpoint(text: &str) -> Result<String, String> {
    crate::engine::rpc::parse_endpoint(text)
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
    pub input: PromptInput,
    #[command(flatten)]
    pub prompt_format: PromptArgs,
    /// Comma-separated token ids, evaluated as given (instead of a prompt).
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["prompt", "file", "words"], help_heading = "Prompt")]
    pub tokens: Option<Vec<i32>>,
    /// An image for vision models (repeatable); needs a prompt.
    #[arg(long = "image", value_name = "FILE", conflicts_with_all = ["all", "tokens"], help_heading = "Prompt")]
    pub images: Vec<PathBuf>,
    /// The vision projector [default: the `*mmproj*.gguf` next to the model].
    #[arg(long, value_name = "FILE", help_heading = "Model")]
    pub mmproj: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Logits of every position instead of the last one only.
    #[arg(long, help_heading = "Output")]
    pub all: bool,
    /// Output JSON file; `-` writes it to standard output, a folder gets `logits.json`.
    #[arg(short, long, help_heading = "Output")]
    pub output: PathBuf,
    /// Replace the output file if it exists.
    #[arg(long, help_heading = "Output")]
    pub force: bool,
}

/// Upper bounds for numeric flags, checked before anything is allocated.
pub const MAX_CTX: u32 = 1 << 24;
pub(crate) const MAX_THREADS: i64 = 1024;
pub(crate) const MAX_TOP_K: i64 = 1 << 24;

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
/// -1 (and llama.cpp's -2, "until the context is full") mean no limit of their own.
pub fn max_tokens(text: &str) -> Result<usize, String> {
    if matches!(text.trim(), "-1" | "-2") {
        return Ok(usize::MAX);
    }
    let value: u64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a count (or -1 for no limit)"))?;
    usize::try_from(value.min(u64::from(u32::MAX))).map_err(|e| e.to_string())
}

/// `--max-body`: from 1 KiB (smaller refuses every real request) to 4 GiB.
fn max_body(text: &str) -> Result<usize, String> {
    let value: u64 = text.parse().map_err(|_| format!("{text:?} is not a byte count"))?;
    if !(1 << 10..=4 << 30).contains(&value) {
        return Err(format!("{value} is outside 1024..={}", 4u64 << 30));
    }
    usize::try_from(value).map_err(|e| e.to_string())
}

/// llama.cpp's seed: -1 and its own 4294967295 (`LLAMA_DEFAULT_SEED`) mean a fresh one.
pub fn seed(text: &str) -> Result<u32, String> {
    if text.trim() == "-1" {
        return Ok(RANDOM_SEED);
    }
    text.parse()
        .map_err(|_| format!("{text:?} is not a seed: 0..={} or -1 for a random one", u32::MAX))
}

/// The seed value that asks for a fresh random seed, as in llama.cpp.
pub const RANDOM_SEED: u32 = u32::MAX;

/// `--reasoning-budget`: 0 switches thinking off, -1 leaves it to the template.
fn reasoning_budget(text: &str) -> Result<ReasoningBudget, String> {
    match text.trim() {
        "0" => Ok(ReasoningBudget::Off),
        "-1" => Ok(ReasoningBudget::Unlimited),
        _ => Err(format!(
            "{text:?}: only 0 (no thinking) and -1 (no limit) are possible; GLM models cannot limit their thinking to a number of tokens"
        )),
    }
}

/// Parses the command line. A usage error is one line, like every other error (clap's
/// own report adds a usage block and a hint); help and version print as usual. The
/// config file's values are clap default values of a second parse, so a flag beats them
/// and they pass the flag's checks.
fn parse() -> Cli {
    let args = runtime::expand_llama_flags(std::env::args_os());
    let first = matches_or_exit(command(), &args);
    let (matches, from_config) = match with_config(&first) {
        Ok(Some((configured, ids))) => (matches_or_exit(configured, &args), ids),
        Ok(None) => (first, Vec::new()),
        Err(message) => usage_error(&format!("error: {message}")),
    };
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| exit_for(&e));
    cli.command.note_config(configured_ids(&matches, &from_config));
    if let Err(message) = cli.normalize() {
        usage_error(&format!("error: {message}"));
    }
    cli
}

fn matches_or_exit(command: clap::Command, args: &[std::ffi::OsString]) -> clap::ArgMatches {
    command.try_get_matches_from(args).unwrap_or_else(|e| exit_for(&e))
}

fn exit_for(e: &clap::Error) -> ! {
    if !e.use_stderr() || e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        e.exit()
    }
    usage_error(&first_paragraph(&e.render().to_string()))
}

/// For a command that runs a model: the CLI with the config file's values for this model
/// as defaults, and the ids of the arguments they went to. `None` without a file.
fn with_config(first: &clap::ArgMatches) -> Result<Option<(clap::Command, Vec<&'static str>)>, String> {
    let Some((name, sub)) = first.subcommand() else {
        return Ok(None);
    };
    if !crate::config::CONFIGURED_COMMANDS.contains(&name) {
        return Ok(None);
    }
    let mut cli = command();
    let Some(config) = crate::config::Config::load(&cli)? else {
        return Ok(None);
    };
    let model = ["model_flag", "model_positional"]
        .into_iter()
        .find_map(|id| sub.get_one::<PathBuf>(id))
        .map(|path| path.to_string_lossy().into_owned());
    let defaults = config.defaults_for(model.as_deref());
    let flags = cli.find_subcommand(name).ok_or("no such command")?;
    let applied: Vec<(&'static str, String)> = defaults
        .into_iter()
        .filter(|(id, _)| flags.get_arguments().any(|a| a.get_id() == *id))
        .map(|(id, value)| (id, value.to_owned()))
        .collect();
    for (id, value) in &applied {
        let value = value.clone();
        cli = cli.mut_subcommand(name, |sub| sub.mut_arg(*id, |arg| arg.default_value(value)));
    }
    Ok(Some((cli, applied.into_iter().map(|(id, _)| id).collect())))
}

/// Of the arguments given a default from the config file, those the command line left
/// alone: their values are the file's.
fn configured_ids(matches: &clap::ArgMatches, applied: &[&'static str]) -> Vec<&'static str> {
    let Some((_, sub)) = matches.subcommand() else {
        return Vec::new();
    };
    applied
        .iter()
        .copied()
        .filter(|id| sub.value_source(id) == Some(clap::parser::ValueSource::DefaultValue))
        .collect()
}

/// The command-line definition, with every option that takes a value also taking a
/// negative number: `-n -1` and `--seed -1` are values, never "unexpected argument
/// '-1'" with clap's hint to write `-- -1`.
pub(crate) fn command() -> clap::Command {
    let negatives = |arg: clap::Arg| {
        if arg.get_action().takes_values() {
            arg.allow_negative_numbers(true)
        } else {
            arg
        }
    };
    Cli::command().mut_subcommands(move |sub| sub.mut_args(negatives))
}

/// A clap report's first paragraph on one line (the usage block and tips follow it).
fn first_paragraph(report: &str) -> String {
    let lines: Vec<&str> = report
        .lines()
        .take_while(|line| !line.trim().is_empty())
        .map(str::trim)
        .collect();
    lines.join(" ")
}

fn usage_error(message: &str) -> ! {
    eprintln!("{message}");
    std::process::exit(2);
}

pub fn run() -> anyhow::Result<()> {
    let cli = parse();
    crate::terminal::set_verbose(cli.verbose);
    match cli.command {
        Command::Convert(args) => commands::convert::run(&args),
        Command::Run(args) => commands::run::run(args),
        Command::Chat(args) => commands::chat::run(&args),
        Command::Inspect(args) => commands::inspect::run(&args),
        Command::Tokenize(args) => commands::tokenize::run(&args),
        Command::Logits(args) => commands::logits::run(&args),
        Command::Presets => commands::presets::run(),
        Command::Quantize(args) => commands::quantize::run(&args),
        Command::Imatrix(args) => commands::imatrix::run(&args),
        Command::Bench(args) => commands::bench::run(&args),
        Command::Devices(args) => commands::devices::run(&args),
        Command::RpcServer(args) => commands::rpc_server::run(&args),
        Command::Serve(args) => commands::serve::run(&args),
        Command::Which(args) => commands::models::which(&args),
        Command::Pull(args) => commands::models::pull(&args),
        Command::Models(args) => commands::models::run(&args),
        Command::Config(command) => commands::config::run(&command),
        Command::Completions(args) => commands::completions::run(args.shell),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// Every spelling each subcommand takes: long and short names, aliases, the global
    /// flags, and llama.cpp's multi-letter flags that expand to one of them.
    fn spellings(subcommand: &str) -> BTreeSet<String> {
        let root = command();
        let sub = root
            .find_subcommand(subcommand)
            .unwrap_or_else(|| panic!("README names `glm {subcommand}`, which does not exist"));
        let mut known: BTreeSet<String> = ["-h", "--help", "-v", "--verbose"].map(String::from).into();
        for arg in sub.get_arguments() {
            known.extend(arg.get_long().map(|l| format!("--{l}")));
            known.extend(arg.get_short().map(|s| format!("-{s}")));
            known.extend(arg.get_all_aliases().into_iter().flatten().map(|a| format!("--{a}")));
        }
        for (short, long) in runtime::LLAMA_SHORT_FLAGS {
            if known.contains(*long) {
                known.insert((*short).to_owned());
            }
        }
        known
    }

    /// The flags in a piece of README text: a dash or two and a letter, at a word start.
    fn flags_in(text: &str) -> Vec<String> {
        let pattern = regex::Regex::new(r"(?:^|[\s`(/,\[])(--?[a-zA-Z][a-zA-Z0-9-]*)").expect("pattern");
        pattern.captures_iter(text).map(|c| c[1].to_owned()).collect()
    }

    /// The README's command lines (`glm run … -x`) and flag tables (first column, in a
    /// command's section) name only flags that exist, so the reference cannot drift from
    /// `--help`.
    #[test]
    fn the_readme_names_only_flags_that_exist() {
        let readme = include_str!("../../README.md");
        let command_line = regex::Regex::new(r"\bglm ([a-z][a-z-]*[a-z])\b([^#`]*)").expect("pattern");
        let section = regex::Regex::new(r"^### `glm ([a-z][a-z-]*[a-z])").expect("pattern");
        let mut current: Option<String> = None;
        let mut checked = 0;
        for line in readme.lines() {
            if let Some(heading) = section.captures(line) {
                current = Some(heading[1].to_owned());
            } else if line.starts_with("## ") {
                current = None;
            }
            let mut uses: Vec<(String, String)> = Vec::new();
            for found in command_line.captures_iter(line) {
                uses.extend(flags_in(&found[2]).into_iter().map(|f| (found[1].to_owned(), f)));
            }
            if let (Some(command), Some(cell)) = (&current, line.strip_prefix('|')) {
                let first_cell = cell.split(" | ").next().unwrap_or_default();
                uses.extend(flags_in(first_cell).into_iter().map(|f| (command.clone(), f)));
            }
            for (command, flag) in uses {
                if command == "chat" && flag.starts_with('/') {
                    continue;
                }
                assert!(
                    spellings(&command).contains(&flag),
                    "README: `glm {command}` has no flag {flag} (line: {line})"
                );
                checked += 1;
            }
        }
        assert!(checked > 100, "only {checked} flags found: is the pattern still right?");
    }

    #[test]
    fn a_made_up_flag_in_the_readme_would_be_caught() {
        assert!(!spellings("run").contains("--no-such-flag"));
        assert!(spellings("run").contains("-ngl") && spellings("run").contains("--n-predict"));
        assert_eq!(
            flags_in("`-c, --ctx-size` (`-ctk`) -5 a-b"),
            ["-c", "--ctx-size", "-ctk"]
        );
    }
}
