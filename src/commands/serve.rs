//! `glm serve`: loads each model, starts its continuous-batching scheduler, and serves
//! the HTTP API (`crate::serve`) until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::chat::ChatTemplate;
use crate::cli::ServeArgs;
use crate::engine::batch::{BatchOptions, Scheduler};
use crate::engine::{Engine, Projector, DEFAULT_CTX};
use crate::serve::{ServedModel, ServerState};

/// How long requests still running at shutdown may take to end.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

pub fn run(args: &ServeArgs) -> Result<()> {
    let names = served_names(&args.models, &args.aliases)?;
    if args.api_key.as_deref() == Some("") {
        bail!("--api-key is empty");
    }
    super::prepare_backend(&args.placement)?;
    if args.mmproj.len() > args.models.len() {
        bail!("{} --mmproj files for {} models", args.mmproj.len(), args.models.len());
    }
    let mut models = Vec::new();
    for (index, (reference, name)) in args.models.iter().zip(names).enumerate() {
        let projector = args.mmproj.get(index).map(std::path::PathBuf::as_path);
        models.push(Arc::new(load(args, reference, name, projector)?));
    }
    let state = Arc::new(ServerState::new(models, args.api_key.clone(), args.cors.clone()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("glm-serve")
        .build()
        .context("starting the server's threads")?;
    // Ctrl-C and SIGTERM only raise a flag from here on: the server then stops on its
    // own, its model threads ended in order rather than under a process exit.
    crate::signals::claim_termination();
    let served = runtime.block_on(listen_and_serve(args, state.clone()));
    if served.is_ok() {
        eprintln!("glm serve: stopping");
    }
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    drop(state);
    served
}

async fn listen_and_serve(args: &ServeArgs, state: Arc<ServerState>) -> Result<()> {
    let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", args.host, args.port))?;
    let address = listener.local_addr().context("reading the listening address")?;
    warn_if_exposed(address, state.api_key.is_some());
    let names: Vec<&str> = state.models.iter().map(|m| m.name.as_str()).collect();
    eprintln!(
        "glm serve: listening on http://{address} (models: {})",
        names.join(", ")
    );
    crate::serve::serve(listener, state, args.max_body, stop_requested())
        .await
        .context("serving HTTP")
}

/// Completes once Ctrl-C or SIGTERM arrived.
async fn stop_requested() {
    while !crate::signals::interrupted() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn warn_if_exposed(address: SocketAddr, has_key: bool) {
    if address.ip().is_loopback() {
        return;
    }
    if has_key {
        eprintln!("glm serve: note: listening on {address}, reachable from other machines; requests need the API key");
    } else {
        eprintln!(
            "glm serve: WARNING: listening on {address} WITHOUT an API key: anyone who can reach this machine can use the models. Give --api-key (or GLM_API_KEY), or listen on 127.0.0.1."
        );
    }
}

/// The names the models are served as: `--alias` in order, else the reference as typed
/// (a file's stem for a path).
fn served_names(models: &[std::path::PathBuf], aliases: &[String]) -> Result<Vec<String>> {
    if aliases.len() > models.len() {
        bail!("{} --alias names for {} models", aliases.len(), models.len());
    }
    let names: Vec<String> = models
        .iter()
        .enumerate()
        .map(|(i, model)| aliases.get(i).cloned().unwrap_or_else(|| default_name(model)))
        .collect();
    for (i, name) in names.iter().enumerate() {
        if names[..i].contains(name) {
            bail!("two models would be served as {name:?}; name them apart with --alias");
        }
    }
    Ok(names)
}

fn default_name(model: &Path) -> String {
    let is_file = model.is_file() || model.extension().is_some_and(|e| e == "gguf");
    match model.file_stem() {
        Some(stem) if is_file => stem.to_string_lossy().into_owned(),
        _ => model.to_string_lossy().trim_end_matches('/').to_owned(),
    }
}

fn load(args: &ServeArgs, reference: &Path, name: String, projector: Option<&Path>) -> Result<ServedModel> {
    let path = crate::model_source::resolve(reference, args.quant.as_deref())?;
    let options = super::load_options(&args.placement, &args.context);
    let context = super::context_options(&args.context, None);
    if args.context.dry_run {
        let plan = crate::engine::plan(&path, &options, &context)?;
        println!("{}\n{plan}", path.display());
        return Err(anyhow::anyhow!("--dry-run: the server was not started"));
    }
    let engine = Arc::new(Engine::load(&path, &options).with_context(|| format!("loading {name}"))?);
    let template = match engine.chat_template() {
        Some(source) => Some(Arc::new(
            ChatTemplate::new(&source).with_context(|| format!("{name}: the chat template"))?,
        )),
        None => {
            eprintln!("glm serve: note: {name} has no chat template; only /v1/completions works with it");
            None
        }
    };
    let projector = match args.no_mmproj {
        true => None,
        false => load_projector(&engine, &path, projector, &name, context.threads)?,
    };
    let ctx_per_sequence = args.context.ctx_size.unwrap_or(DEFAULT_CTX.min(engine.n_ctx_train()));
    let scheduler = Scheduler::start(
        engine.clone(),
        BatchOptions {
            parallel: args.parallel,
            ctx_per_sequence,
            queue_limit: args.queue as usize,
            context,
            projector: projector.clone(),
        },
    )
    .with_context(|| {
        format!(
            "{name}: starting {} sequences of {ctx_per_sequence} tokens",
            args.parallel
        )
    })?;
    Ok(ServedModel {
        name,
        defaults: super::default_sampling(&engine),
        engine,
        scheduler,
        template,
        projector,
        metrics: Default::default(),
    })
}

/// The model's vision projector: the one given, else the one beside the model. One found
/// beside it that does not fit is a note, not an error, and only for a model whose
/// template can place images: a text model serves on without.
fn load_projector(
    engine: &Engine,
    model: &Path,
    explicit: Option<&Path>,
    name: &str,
    threads: i32,
) -> Result<Option<Arc<RwLock<Projector>>>> {
    let found = crate::model_source::projector_for(model, explicit)
        .and_then(|path| engine.load_projector(&path, threads).map(|projector| (path, projector)));
    match found {
        Ok((path, projector)) => {
            eprintln!("glm serve: {name}: images through {}", path.display());
            Ok(Some(Arc::new(RwLock::new(projector))))
        }
        Err(e) if explicit.is_some() => Err(e.context(format!("{name}: the vision projector"))),
        Err(e) => {
            let places_images = engine
                .chat_template()
                .is_some_and(|template| template.contains("<|begin_of_image|>"));
            if places_images {
                eprintln!("glm serve: note: {name} takes no images: {e:#}");
            }
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_aliases_then_references() {
        let models = ["models/GLM-4.7-Flash-Q4_K_M.gguf".into(), "glm-4.5-air".into()];
        assert_eq!(
            served_names(&models, &[]).unwrap(),
            ["GLM-4.7-Flash-Q4_K_M", "glm-4.5-air"]
        );
        assert_eq!(
            served_names(&models, &["flash".into()]).unwrap(),
            ["flash", "glm-4.5-air"]
        );
        assert!(served_names(&models, &["a".into(), "a".into()]).is_err());
        assert!(served_names(&models[..1], &["a".into(), "b".into()]).is_err());
    }
}
