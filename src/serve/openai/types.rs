//! OpenAI request bodies, and how they become a conversation and a job's settings.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::super::errors::ApiError;
use super::super::images::RequestImage;
use super::super::prompt::{self, Conversation, Settings};
use super::super::request::OneOrMany;
use super::super::ServedModel;

#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: Option<String>,
    pub messages: Vec<Message>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub min_p: Option<f64>,
    /// llama.cpp's multiplicative penalty (not OpenAI's, which has only the two below).
    pub repeat_penalty: Option<f64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub max_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    pub stop: Option<OneOrMany>,
    pub seed: Option<i64>,
    pub logit_bias: Option<Map<String, Value>>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<u32>,
    pub n: Option<u32>,
    pub tools: Option<Vec<Tool>>,
    pub tool_choice: Option<ToolChoice>,
    pub parallel_tool_calls: Option<bool>,
    pub response_format: Option<ResponseFormat>,
    pub chat_template_kwargs: Option<Map<String, Value>>,
    pub ignore_eos: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: Option<Content>,
    pub tool_calls: Option<Vec<MessageToolCall>>,
    pub tool_call_id: Option<String>,
    pub name: Option<String>,
    pub reasoning_content: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
    /// `{"url": "data:...", "detail": ...}`, or the URL alone as some clients send it.
    pub image_url: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub struct MessageToolCall {
    pub id: Option<String>,
    pub function: FunctionCall,
}

#[derive(Debug, Deserialize)]
pub struct FunctionCall {
    pub name: String,
    /// A JSON string as OpenAI sends it (an object is taken too).
    pub arguments: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub struct Tool {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub function: FunctionDefinition,
}

#[derive(Debug, Deserialize)]
pub struct FunctionDefinition {
    pub name: String,
    pub description: Option<String>,
    pub parameters: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ToolChoice {
    Mode(String),
    Named { function: NamedFunction },
}

#[derive(Debug, Deserialize)]
pub struct NamedFunction {
    pub name: String,
}

#[derive(Debug, Deserialize)]
pub struct ResponseFormat {
    #[serde(rename = "type")]
    pub kind: String,
    pub json_schema: Option<JsonSchemaFormat>,
    /// llama.cpp's shortcut: `{"type": "json_object", "schema": {...}}`.
    pub schema: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub struct JsonSchemaFormat {
    pub schema: Option<Value>,
}

impl ChatRequest {
    /// What this server refuses outright, each naming the field.
    pub fn check(&self) -> Result<(), ApiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::field("n", "only one choice per request is supported (n = 1)"));
        }
        if self.logit_bias.as_ref().is_some_and(|b| !b.is_empty()) {
            return Err(ApiError::field("logit_bias", "not supported by this server"));
        }
        for (name, value) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if value.is_some_and(|v| v != 0.0) {
                return Err(ApiError::field(
                    name,
                    "not supported; use repeat_penalty (llama.cpp's multiplicative penalty, 1 = off)",
                ));
            }
        }
        if self.top_logprobs.is_some() && self.logprobs != Some(true) {
            return Err(ApiError::field("top_logprobs", "needs \"logprobs\": true"));
        }
        if self.messages.is_empty() {
            return Err(ApiError::field("messages", "at least one message is needed"));
        }
        Ok(())
    }

    /// The messages as the chat template reads them, the render's variables, the images.
    pub fn conversation(&self, model: &ServedModel) -> Result<Conversation, ApiError> {
        let mut images = Vec::new();
        let mut messages = self
            .messages
            .iter()
            .enumerate()
            .map(|(i, m)| template_message(i, m, &mut images))
            .collect::<Result<Vec<_>, _>>()?;
        let (mode, named) = match &self.tool_choice {
            None => ("auto", None),
            Some(ToolChoice::Mode(mode)) => (mode.as_str(), None),
            Some(ToolChoice::Named { function }) => ("required", Some(function.name.as_str())),
        };
        if !["auto", "none", "required"].contains(&mode) {
            return Err(ApiError::field(
                "tool_choice",
                "must be auto, none, required or a named function",
            ));
        }
        let tools = match &self.tools {
            Some(tools) if !tools.is_empty() && mode != "none" => Some(template_tools(tools)?),
            _ => None,
        };
        if tools.is_some() {
            if let Some(note) = prompt::tool_note(mode == "required", named) {
                prompt::add_system_note(&mut messages, &note);
            }
        }
        let mut kwargs = self.chat_template_kwargs.clone().unwrap_or_default();
        let thinking = kwargs.remove("enable_thinking").and_then(|v| v.as_bool());
        Ok(Conversation {
            messages,
            options: prompt::render_options(model, tools, thinking, kwargs),
            images,
        })
    }

    pub fn settings(&self) -> Result<Settings, ApiError> {
        Ok(Settings {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            seed: self.seed,
            max_tokens: self.max_completion_tokens.or(self.max_tokens),
            stop: self.stop.clone().map(OneOrMany::into_vec).unwrap_or_default(),
            top_logprobs: (self.logprobs == Some(true)).then(|| self.top_logprobs.unwrap_or(0)),
            grammar: self.response_format.as_ref().map(grammar).transpose()?.flatten(),
            ignore_eos: self.ignore_eos,
        })
    }
}

/// The grammar `response_format` asks for (none for plain text).
fn grammar(format: &ResponseFormat) -> Result<Option<String>, ApiError> {
    let schema = match format.kind.as_str() {
        "text" => return Ok(None),
        "json_object" => format.schema.clone(),
        "json_schema" => Some(
            format
                .json_schema
                .as_ref()
                .and_then(|s| s.schema.clone())
                .ok_or_else(|| ApiError::field("response_format.json_schema.schema", "a JSON schema is needed"))?,
        ),
        _ => {
            return Err(ApiError::field(
                "response_format.type",
                "must be text, json_object or json_schema",
            ))
        }
    };
    let grammar = match schema {
        Some(schema) => crate::engine::json_schema_grammar(&schema),
        None => crate::engine::json_object_grammar(),
    };
    grammar.map(Some).map_err(|e| ApiError::field("response_format", e))
}

/// A message's content as the template reads it: text parts joined as GLM's templates
/// join them, or, when a user message has images, its parts in order with each image a
/// `{"type": "image"}` part (the image itself goes to `images`).
fn template_content(
    index: usize,
    content: Option<&Content>,
    images_allowed: bool,
    images: &mut Vec<RequestImage>,
) -> Result<Value, ApiError> {
    let parts = match content {
        None => return Ok(Value::String(String::new())),
        Some(Content::Text(text)) => return Ok(Value::String(text.clone())),
        Some(Content::Parts(parts)) => parts,
    };
    let mut text = String::new();
    let mut out = Vec::new();
    for (j, part) in parts.iter().enumerate() {
        let field = format!("messages[{index}].content[{j}]");
        match (part.kind.as_str(), &part.text) {
            ("text", Some(t)) => {
                text.push_str(t);
                out.push(json!({"type": "text", "text": t}));
            }
            ("text", None) => return Err(ApiError::field(&format!("{field}.text"), "missing")),
            ("image_url", _) if images_allowed => {
                let url = match &part.image_url {
                    Some(Value::String(url)) => url.as_str(),
                    Some(Value::Object(object)) => object.get("url").and_then(Value::as_str).unwrap_or_default(),
                    _ => "",
                };
                let field = format!("{field}.image_url.url");
                if url.is_empty() {
                    return Err(ApiError::field(&field, "missing"));
                }
                images.push(RequestImage::from_url(url, &field)?);
                out.push(json!({"type": "image"}));
            }
            ("image_url", _) => return Err(ApiError::field(&field, "images are taken in user messages only")),
            (other, _) => {
                return Err(ApiError::field(
                    &field,
                    format!("content of type {other:?} is not supported"),
                ))
            }
        }
    }
    if out.iter().any(|part| part["type"] == "image") {
        Ok(Value::Array(out))
    } else {
        Ok(Value::String(text))
    }
}

fn template_message(index: usize, message: &Message, images: &mut Vec<RequestImage>) -> Result<Value, ApiError> {
    let is_user = message.role == "user";
    let content = template_content(index, message.content.as_ref(), is_user, images)?;
    let role = match message.role.as_str() {
        "system" | "developer" => "system",
        "user" => "user",
        "assistant" => "assistant",
        "tool" => "tool",
        other => {
            return Err(ApiError::field(
                &format!("messages[{index}].role"),
                format!("{other:?} is not one of system, user, assistant, tool"),
            ))
        }
    };
    let mut out = json!({"role": role, "content": content});
    if role == "assistant" {
        if let Some(reasoning) = message.reasoning_content.as_deref().filter(|r| !r.trim().is_empty()) {
            out["reasoning_content"] = reasoning.trim().into();
        }
        if let Some(calls) = message.tool_calls.as_ref().filter(|c| !c.is_empty()) {
            out["tool_calls"] = calls.iter().map(template_tool_call).collect();
        }
    }
    if role == "tool" {
        if let Some(id) = &message.tool_call_id {
            out["tool_call_id"] = id.clone().into();
        }
    }
    if let Some(name) = &message.name {
        out["name"] = name.clone().into();
    }
    Ok(out)
}

/// A past call as the templates read it: the arguments as an object (GLM's templates
/// iterate over them), not OpenAI's JSON string.
fn template_tool_call(call: &MessageToolCall) -> Value {
    let arguments = match &call.function.arguments {
        Some(Value::String(text)) => serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.clone())),
        Some(other) => other.clone(),
        None => json!({}),
    };
    let mut out = json!({"type": "function", "function": {"name": call.function.name, "arguments": arguments}});
    if let Some(id) = &call.id {
        out["id"] = id.clone().into();
    }
    out
}

fn template_tools(tools: &[Tool]) -> Result<Value, ApiError> {
    let mut out = Vec::new();
    for (i, tool) in tools.iter().enumerate() {
        if tool.kind.as_deref().is_some_and(|k| k != "function") {
            return Err(ApiError::field(
                &format!("tools[{i}].type"),
                "only function tools are supported",
            ));
        }
        let mut function = json!({"name": tool.function.name});
        if let Some(description) = &tool.function.description {
            function["description"] = description.clone().into();
        }
        function["parameters"] = tool
            .function
            .parameters
            .clone()
            .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
        out.push(json!({"type": "function", "function": function}));
    }
    Ok(Value::Array(out))
}

#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: OneOrMany,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub min_p: Option<f64>,
    pub repeat_penalty: Option<f64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub max_tokens: Option<u64>,
    pub stop: Option<OneOrMany>,
    pub seed: Option<i64>,
    pub logit_bias: Option<Map<String, Value>>,
    /// The legacy API's count of alternatives per token.
    pub logprobs: Option<u32>,
    pub n: Option<u32>,
    pub echo: Option<bool>,
    pub suffix: Option<String>,
    pub ignore_eos: Option<bool>,
}

impl CompletionRequest {
    /// The prompt text, after refusing what this server does not do.
    pub fn check(&self) -> Result<String, ApiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::field("n", "only one choice per request is supported (n = 1)"));
        }
        if self.logit_bias.as_ref().is_some_and(|b| !b.is_empty()) {
            return Err(ApiError::field("logit_bias", "not supported by this server"));
        }
        if self.echo == Some(true) {
            return Err(ApiError::field("echo", "not supported by this server"));
        }
        if self.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::field("suffix", "not supported by this server"));
        }
        for (name, value) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if value.is_some_and(|v| v != 0.0) {
                return Err(ApiError::field(name, "not supported; use repeat_penalty (1 = off)"));
            }
        }
        match &self.prompt {
            OneOrMany::One(text) => Ok(text.clone()),
            OneOrMany::Many(list) if list.len() == 1 => Ok(list[0].clone()),
            OneOrMany::Many(_) => Err(ApiError::field("prompt", "only one prompt per request is supported")),
        }
    }

    pub fn settings(&self) -> Settings {
        Settings {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            seed: self.seed,
            // The legacy API's default is 16 tokens.
            max_tokens: Some(self.max_tokens.unwrap_or(16)),
            stop: self.stop.clone().map(OneOrMany::into_vec).unwrap_or_default(),
            top_logprobs: self.logprobs,
            grammar: None,
            ignore_eos: self.ignore_eos,
        }
    }
}
