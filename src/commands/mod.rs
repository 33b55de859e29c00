//! One module per subcommand; `cli` parses and calls `run` here.

pub mod bench;
pub mod chat;
pub mod completions;
pub mod config;
pub mod convert;
pub mod devices;
pub mod imatrix;
pub mod inspect;
pub mod logits;
pub mod models;
pub mod presets;
pub mod quantize;
pub mod reply;
pub mod rpc_server;
pub mod run;
pub(crate) mod sampling;
pub mod serve;
pub mod tokenize;

use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::chat::{ChatTemplate, Conversation, RenderOptions};
use crate::cli::{ContextArgs, DraftArgs, ModelArgs, PlacementArgs, PromptArgs, PromptInput, PromptSource};
use crate::engine::{ContextOptions, DraftOptions, Engine, GpuLayers, LoadOptions, Placement};

pub use sampling::{default_sampling, sampling, SamplingSources};

const MAX_TOOLS_BYTES: u64 = 16 << 20;

/// Tool definitions from `--tools`, checked to be a JSON list.
pub fn tool_definitions(format: &PromptArgs) -> Result<Option<serde_json::Value>> {
    let Some(path) = &format.tools else {
        return Ok(None);
    };
    let text = glm_convert::files::read_text_limited(path, MAX_TOOLS_BYTES)?;
    let tools: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))?;
    if !tools.is_array() {
        anyhow::bail!("{}: expected a JSON list of tool definitions", path.display());
    }
    Ok(Some(tools))
}

/// The template variables every render passes: thinking switch, BOS/EOS texts, tools.
pub fn render_options(engine: &Engine, format: &PromptArgs, enable_thinking: Option<bool>) -> Result<RenderOptions> {
    let mut options = template_variables(engine, enable_thinking);
    options.tools = tool_definitions(format)?;
    Ok(options)
}

/// The template variables every render passes but the tools: generation prompt, thinking
/// switch, BOS/EOS texts (shared by `run`, `chat` and `serve`).
pub fn template_variables(engine: &Engine, enable_thinking: Option<bool>) -> RenderOptions {
    let mut options = RenderOptions {
        add_generation_prompt: true,
        ..Default::default()
    };
    if let Some(thinking) = enable_thinking {
        options.extra.insert("enable_thinking".into(), thinking.into());
    }
    for (variable, key) in [
        ("bos_token", "tokenizer.ggml.bos_token_id"),
        ("eos_token", "tokenizer.ggml.eos_token_id"),
    ] {
        if let Some(text) = engine
            .metadata(key)
            .and_then(|id| id.parse().ok())
            .and_then(|id| engine.token_text(id))
        {
            options.extra.insert(variable.into(), text.into());
        }
    }
    options
}

/// The model's chat template, compiled.
pub fn chat_template(engine: &Engine) -> Result<ChatTemplate> {
    let source = engine
        .chat_template()
        .context("the model has no chat template; use --raw to send the text as is")?;
    Ok(ChatTemplate::new(&source)?)
}

/// The most a prompt read from standard input may hold.
pub const MAX_STDIN_PROMPT_BYTES: u64 = 16 << 20;

/// `-` means standard input (at most [`MAX_STDIN_PROMPT_BYTES`]).
pub fn text_argument(text: &str) -> Result<String> {
    if text != "-" {
        return Ok(text.to_owned());
    }
    let mut buffer = Vec::new();
    std::io::stdin()
        .take(MAX_STDIN_PROMPT_BYTES + 1)
        .read_to_end(&mut buffer)
        .context("reading the prompt from standard input")?;
    if buffer.len() as u64 > MAX_STDIN_PROMPT_BYTES {
        anyhow::bail!("standard input: the prompt is larger than {MAX_STDIN_PROMPT_BYTES} bytes");
    }
    String::from_utf8(buffer).map_err(|_| anyhow::anyhow!("standard input: the prompt is not UTF-8 text"))
}

/// The text of a one-shot prompt: `-p TEXT`, `-f FILE` or the words after the model;
/// `-` (as text or file) reads standard input, as does no prompt at all when standard
/// input is not a terminal (`echo hi | glm run MODEL`).
pub fn prompt_input_text(input: &PromptInput) -> Result<String> {
    match input.source() {
        Some(PromptSource::Text(text)) => text_argument(text),
        Some(PromptSource::File(path)) if path == std::path::Path::new("-") => text_argument("-"),
        Some(PromptSource::File(path)) => Ok(glm_convert::files::read_text_limited(path, MAX_STDIN_PROMPT_BYTES)?),
        Some(PromptSource::Words(words)) => Ok(words.join(" ")),
        None if !std::io::stdin().is_terminal() => text_argument("-"),
        None => anyhow::bail!("no prompt: give -p TEXT, -f FILE or the text after the model"),
    }
}

/// The engine and the GGUF file it was loaded from (a projector is looked up beside it).
/// With `--dry-run` the memory plan is printed instead and the program ends.
pub fn load_engine_and_path(args: &ModelArgs, draft: Option<&DraftArgs>) -> Result<(Engine, PathBuf)> {
    let path = crate::model_source::resolve(&args.model, args.quant.as_deref())?;
    prepare_backend(&args.placement)?;
    warn_about_gpu_layers_without_gpu(&args.placement)?;
    let mut options = load_options(&args.placement, &args.context);
    // The NextN layers are loaded unless drafting is switched off; whether to draft is
    // decided per reply, from the sampling.
    options.load_mtp = draft.is_some_and(|d| d.choice() != Some(false));
    if args.context.dry_run {
        let plan = crate::engine::plan(&path, &options, &context_options(&args.context, draft))?;
        println!("{}\n{plan}", path.display());
        std::process::exit(0);
    }
    let engine = Engine::load(&path, &options)?;
    Ok((engine, path))
}

/// What must be settled before llama.cpp lists devices or loads a model: the NUMA
/// strategy, and the `--rpc` servers' devices (with the watchdog on their evaluations).
pub fn prepare_backend(placement: &PlacementArgs) -> Result<()> {
    if let Some(numa) = placement.numa {
        crate::engine::use_numa(numa.into())?;
    }
    if !placement.rpc.is_empty() {
        crate::engine::rpc::connect(&placement.rpc)?;
        crate::engine::rpc::watch_evaluations(std::time::Duration::from_secs(placement.rpc_timeout));
    }
    Ok(())
}

/// A layer count asked for on a build that has no GPU does nothing; say so, as the
/// user probably expected the GPU to work.
fn warn_about_gpu_layers_without_gpu(placement: &PlacementArgs) -> Result<()> {
    let asked = matches!(placement.gpu_layers, Some(GpuLayers::All) | Some(GpuLayers::Count(1..)));
    if asked && !crate::engine::has_gpu()? {
        eprintln!(
            "warning: --gpu-layers has no effect: this glm has no GPU backend, or no GPU was found (see `glm devices`)"
        );
    }
    Ok(())
}

pub fn load_options(placement: &PlacementArgs, context: &ContextArgs) -> LoadOptions {
    LoadOptions {
        placement: Placement {
            gpu_layers: placement.gpu_layers.unwrap_or(GpuLayers::Auto),
            cpu_moe: placement.cpu_moe,
            n_cpu_moe: placement.n_cpu_moe,
            overrides: placement.override_tensor.clone(),
            devices: placement.devices.clone(),
            main_gpu: placement.main_gpu,
            split_mode: placement.split_mode.into(),
            tensor_split: placement.tensor_split.clone(),
        },
        ctx_size: context.ctx_size.unwrap_or(0),
        use_mmap: !placement.no_mmap,
        use_mlock: placement.mlock,
        load_mtp: false,
        vocab_only: false,
    }
}

pub fn context_options(args: &ContextArgs, draft: Option<&DraftArgs>) -> ContextOptions {
    let threads = args.threads.unwrap_or_else(physical_cores);
    let cache = args.cache_type.map(Into::into);
    ContextOptions {
        ctx_size: args.ctx_size.unwrap_or(0),
        threads,
        threads_batch: args.threads_batch.unwrap_or(threads),
        batch_size: args.batch_size,
        ubatch_size: args.ubatch_size,
        cache_type_k: args
            .cache_type_k
            .map(Into::into)
            .or(cache)
            .unwrap_or(crate::engine::CacheType::F16),
        cache_type_v: args
            .cache_type_v
            .map(Into::into)
            .or(cache)
            .unwrap_or(crate::engine::CacheType::F16),
        flash_attention: args.flash_attention.into(),
        draft: draft.filter(|d| d.choice() != Some(false)).map(|d| DraftOptions {
            max: d.draft_max,
            min: d.draft_min.min(d.draft_max),
            p_min: d.draft_p_min,
            always: d.choice() == Some(true),
        }),
    }
}

/// Physical cores, not hardware threads: llama.cpp's matrix kernels gain nothing from a
/// core's second thread and lose to the contention (llama.cpp's own default), and never
/// more than this process may use.
pub fn physical_cores() -> i32 {
    let usable = std::thread::available_parallelism().map_or(1, |n| n.get());
    num_cpus::get_physical().clamp(1, usable) as i32
}

/// The vision projector for the model at `model_path` (`explicit` when given, else the
/// one found beside the model), loaded and checked against the model.
pub fn load_projector(
    engine: &Engine,
    model_path: &std::path::Path,
    explicit: Option<&std::path::Path>,
    threads: i32,
) -> Result<crate::engine::Projector> {
    let path = crate::model_source::projector_for(model_path, explicit)?;
    engine.load_projector(&path, threads)
}

/// Where the template puts an image; libmtmd adds the begin/end tokens itself.
const TEMPLATE_IMAGE: &str = "<|begin_of_image|><|image|><|end_of_image|>";

/// The prompt text the model sees: the chat template applied to one user turn (with an
/// optional system turn), or the raw text with `--raw`. With `images`, the user turn
/// starts with them, each left as the engine's image marker.
pub fn prompt_text(engine: &Engine, format: &PromptArgs, user_text: &str, images: &[PathBuf]) -> Result<String> {
    if format.raw {
        return Ok(crate::engine::image_marker().repeat(images.len()) + user_text);
    }
    let mut conversation = Conversation::new(format.system.clone());
    conversation.push_user(user_text, images);
    let options = render_options(engine, format, format.enable_thinking())?;
    let rendered = chat_template(engine)?.render(&conversation.messages(), &options)?;
    if images.is_empty() {
        return Ok(rendered);
    }
    place_images(&rendered, images.len())
}

/// Turns the template's image placeholders into the engine's image markers, checking that
/// the template placed every image.
pub fn place_images(rendered: &str, images: usize) -> Result<String> {
    let placed = rendered.matches(TEMPLATE_IMAGE).count();
    if placed != images {
        anyhow::bail!("the model's chat template placed {placed} of {images} images; is this a vision model?");
    }
    Ok(rendered.replace(TEMPLATE_IMAGE, crate::engine::image_marker()))
}
