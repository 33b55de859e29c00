//! From a request to the scheduler's job: the conversation rendered by the model's chat
//! template and tokenized (off the async threads: a long prompt takes a while), checked
//! against the context per sequence, and the sampling fields applied over the model's
//! defaults.

use std::sync::Arc;

use serde_json::Value;

use super::errors::ApiError;
use super::images::{self, RequestImage};
use super::ServedModel;
use crate::chat::{prompt_opens_thinking, RenderOptions};
use crate::engine::batch::{Job, JobImage};
use crate::engine::Sampling;

/// A request's conversation as the chat template reads it; its images, in the order the
/// template places them, stand apart.
pub struct Conversation {
    pub messages: Vec<Value>,
    pub options: RenderOptions,
    pub images: Vec<RequestImage>,
}

/// A prompt ready for the scheduler.
#[derive(Debug, Clone)]
pub struct Prompt {
    pub tokens: Vec<i32>,
    /// Images between the text tokens.
    pub images: Vec<JobImage>,
    /// The template left the model inside `<think>`: the first text is reasoning.
    pub opens_thinking: bool,
}

impl Prompt {
    /// Cells the prompt takes in the cache, its images' included.
    pub fn total_tokens(&self) -> usize {
        crate::engine::batch::prompt_cells(self.tokens.len(), &self.images)
    }
}

/// The messages through the model's chat template, tokenized, with their images laid out
/// by the model's vision projector.
pub async fn render(model: &Arc<ServedModel>, conversation: Conversation) -> Result<Prompt, ApiError> {
    images::check_count(&conversation.images)?;
    if let (Some(first), None) = (conversation.images.first(), &model.projector) {
        return Err(ApiError::field(
            &first.field,
            format!(
                "model {} takes no images: no vision projector was loaded for it (glm serve --mmproj)",
                model.name
            ),
        ));
    }
    let model = model.clone();
    blocking(move || {
        let template = model.template.as_ref().ok_or_else(|| {
            ApiError::bad_request(format!(
                "model {} has no chat template; use /v1/completions with the prompt text",
                model.name
            ))
        })?;
        let text = template
            .render(&conversation.messages, &conversation.options)
            .map_err(|e| ApiError::bad_request(format!("the model's chat template refused the conversation: {e}")))?;
        match &model.projector {
            Some(projector) if !conversation.images.is_empty() => {
                with_images(&model, projector, &text, conversation.images)
            }
            _ => tokenize(&model, &text),
        }
    })
    .await
}

/// The text between the images tokenized piece by piece (as libmtmd does), each image
/// placed at the token where the template put it.
fn with_images(
    model: &ServedModel,
    projector: &std::sync::RwLock<crate::engine::Projector>,
    text: &str,
    images: Vec<RequestImage>,
) -> Result<Prompt, ApiError> {
    let marker = crate::engine::image_marker();
    if text.contains(marker) {
        return Err(ApiError::bad_request(format!(
            "the conversation contains {marker}, which stands for images here"
        )));
    }
    let text =
        crate::commands::place_images(text, images.len()).map_err(|e| ApiError::bad_request(format!("{e:#}")))?;
    let n_ctx = model.scheduler.ctx_per_sequence();
    model
        .engine
        .check_text_fits(&text, n_ctx)
        .map_err(|e| ApiError::bad_request(format!("{e} (the context per request, -c)")))?;
    let prepared = images::prepare(projector, images)?;
    let mut prompt = Prompt {
        tokens: Vec::new(),
        images: Vec::with_capacity(prepared.len()),
        opens_thinking: prompt_opens_thinking(&text),
    };
    for (piece, image) in text.split(marker).zip(prepared.into_iter().map(Some).chain([None])) {
        prompt.tokens.extend(model.engine.tokenize(piece));
        if let Some(image) = image {
            prompt.images.push(JobImage {
                offset: prompt.tokens.len(),
                image,
            });
        }
    }
    if prompt
        .images
        .last()
        .is_some_and(|last| last.offset == prompt.tokens.len())
    {
        return Err(ApiError::bad_request(
            "the prompt ends with an image; text must follow it",
        ));
    }
    check_fits(prompt.total_tokens(), n_ctx)?;
    Ok(prompt)
}

/// A raw prompt text, tokenized as is.
pub async fn raw(model: &Arc<ServedModel>, text: String) -> Result<Prompt, ApiError> {
    let model = model.clone();
    blocking(move || tokenize(&model, &text)).await
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| ApiError::internal("preparing the prompt failed"))?
}

fn tokenize(model: &ServedModel, text: &str) -> Result<Prompt, ApiError> {
    let n_ctx = model.scheduler.ctx_per_sequence();
    // Megabytes that cannot fit are refused before the tokenizer spends time on them.
    model
        .engine
        .check_text_fits(text, n_ctx)
        .map_err(|e| ApiError::bad_request(format!("{e} (the context per request, -c)")))?;
    let tokens = model.engine.tokenize(text);
    check_fits(tokens.len(), n_ctx)?;
    Ok(Prompt {
        tokens,
        images: Vec::new(),
        opens_thinking: prompt_opens_thinking(text),
    })
}

/// A prompt must leave room for at least one generated token.
pub fn check_fits(prompt_tokens: usize, n_ctx: u32) -> Result<(), ApiError> {
    if prompt_tokens >= n_ctx as usize {
        return Err(ApiError::bad_request(format!(
            "the prompt is {prompt_tokens} tokens, too long for the context of {n_ctx} tokens per request (-c)"
        )));
    }
    Ok(())
}

/// The sampling and length fields both APIs share.
#[derive(Debug, Default, Clone)]
pub struct Settings {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub min_p: Option<f64>,
    pub repeat_penalty: Option<f64>,
    pub seed: Option<i64>,
    pub max_tokens: Option<u64>,
    pub stop: Vec<String>,
    pub top_logprobs: Option<u32>,
    pub grammar: Option<String>,
    /// llama.cpp's extension: generate past end-of-turn tokens, up to the length.
    pub ignore_eos: Option<bool>,
}

/// Most alternatives per token `top_logprobs` may ask for (OpenAI's limit).
const MAX_TOP_LOGPROBS: u32 = 20;
/// Stop strings a request may give, as OpenAI (4) with room for Anthropic's clients.
const MAX_STOP_STRINGS: usize = 16;

impl Settings {
    /// The job for `prompt`: the fields over the model's defaults, the length bounded by
    /// what is left of the context.
    pub fn job(self, model: &ServedModel, prompt: &Prompt) -> Result<Job, ApiError> {
        let sampling = self.sampling(&model.defaults)?;
        if self.stop.len() > MAX_STOP_STRINGS {
            return Err(ApiError::field(
                "stop",
                format!("at most {MAX_STOP_STRINGS} stop strings"),
            ));
        }
        if self.top_logprobs.is_some_and(|n| n > MAX_TOP_LOGPROBS) {
            return Err(ApiError::field("top_logprobs", format!("at most {MAX_TOP_LOGPROBS}")));
        }
        let room = (model.scheduler.ctx_per_sequence() as usize).saturating_sub(prompt.total_tokens());
        let max_tokens = match self.max_tokens {
            Some(0) => return Err(ApiError::field("max_tokens", "must be at least 1")),
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX).min(room),
            None => room,
        };
        Ok(Job {
            prompt: prompt.tokens.clone(),
            images: prompt.images.clone(),
            max_tokens,
            sampling,
            grammar: self.grammar,
            stop: self.stop.into_iter().filter(|s| !s.is_empty()).collect(),
            top_logprobs: self.top_logprobs,
        })
    }

    fn sampling(&self, defaults: &Sampling) -> Result<Sampling, ApiError> {
        let mut sampling = defaults.clone();
        sampling.ignore_eos = self.ignore_eos == Some(true);
        if let Some(t) = self.temperature {
            sampling.temperature = within("temperature", t, 0.0, 100.0)? as f32;
        }
        if let Some(p) = self.top_p {
            sampling.top_p = within("top_p", p, 0.0, 1.0)? as f32;
        }
        if let Some(p) = self.min_p {
            sampling.min_p = within("min_p", p, 0.0, 1.0)? as f32;
        }
        if let Some(k) = self.top_k {
            sampling.top_k = within("top_k", k as f64, 0.0, f64::from(1 << 24))? as i32;
        }
        if let Some(p) = self.repeat_penalty {
            if p <= 0.0 {
                return Err(ApiError::field("repeat_penalty", "must be above 0"));
            }
            sampling.repeat_penalty = within("repeat_penalty", p, 0.0, 100.0)? as f32;
        }
        sampling.seed = match self.seed {
            None | Some(-1) => crate::commands::sampling::drawn_seed(crate::cli::RANDOM_SEED),
            Some(seed) => u32::try_from(seed)
                .ok()
                .filter(|s| *s != crate::cli::RANDOM_SEED)
                .ok_or_else(|| ApiError::field("seed", format!("must be 0..{} or -1", crate::cli::RANDOM_SEED)))?,
        };
        Ok(sampling)
    }
}

fn within(field: &str, value: f64, low: f64, high: f64) -> Result<f64, ApiError> {
    if !(low..=high).contains(&value) {
        return Err(ApiError::field(field, format!("{value} is outside {low}..={high}")));
    }
    Ok(value)
}

/// The template variables of a render: the model's BOS/EOS texts, the thinking switch,
/// then what the request passes (`chat_template_kwargs`).
pub fn render_options(
    model: &ServedModel,
    tools: Option<Value>,
    enable_thinking: Option<bool>,
    kwargs: serde_json::Map<String, Value>,
) -> RenderOptions {
    let mut options = crate::commands::template_variables(&model.engine, enable_thinking);
    options.tools = tools;
    options.extra.extend(kwargs);
    options
}

/// How a tool must be used, for the note the system prompt gets: GLM's templates have
/// no way to force a call, so `required` and a named tool are asked for in words.
pub fn tool_note(required: bool, named: Option<&str>) -> Option<String> {
    match (named, required) {
        (Some(name), _) => Some(format!("You must answer by calling the tool `{name}`.")),
        (None, true) => Some("You must answer by calling one or more of the tools.".to_owned()),
        (None, false) => None,
    }
}

/// Puts `note` at the end of the system message, adding one when there is none.
pub fn add_system_note(messages: &mut Vec<Value>, note: &str) {
    match messages.first_mut() {
        Some(first) if first["role"] == "system" => {
            let content = first["content"].as_str().unwrap_or_default();
            first["content"] = format!("{content}\n\n{note}").trim_start().into();
        }
        _ => messages.insert(0, serde_json::json!({"role": "system", "content": note})),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_join_the_system_prompt() {
        let mut messages = vec![serde_json::json!({"role": "user", "content": "hi"})];
        add_system_note(&mut messages, "call f");
        assert_eq!(messages[0]["content"], "call f");
        add_system_note(&mut messages, "again");
        assert_eq!(messages[0]["content"], "call f\n\nagain");
        assert_eq!(messages.len(), 2);
    }

    #[test]
    fn a_prompt_must_leave_room() {
        assert!(check_fits(10, 11).is_ok());
        let error = check_fits(11, 11).unwrap_err();
        assert!(error.message.contains("11 tokens") && error.message.contains("context of 11"));
    }
}
