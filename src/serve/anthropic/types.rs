//! Anthropic request bodies, and how they become a conversation and a job's settings.

use serde::Deserialize;
use serde_json::{json, Value};

use super::super::errors::ApiError;
use super::super::images::RequestImage;
use super::super::prompt::{self, Conversation, Settings};
use super::super::ServedModel;

#[derive(Debug, Deserialize)]
pub struct MessagesRequest {
    pub model: Option<String>,
    /// Required by `/v1/messages`, not by `count_tokens`.
    pub max_tokens: Option<u64>,
    pub messages: Vec<Message>,
    pub system: Option<Content>,
    pub stream: Option<bool>,
    pub stop_sequences: Option<Vec<String>>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub tools: Option<Vec<Tool>>,
    pub tool_choice: Option<ToolChoice>,
    pub thinking: Option<Thinking>,
}

#[derive(Debug, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: Content,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Blocks(Vec<Block>),
}

#[derive(Debug, Deserialize)]
pub struct Block {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
    pub thinking: Option<String>,
    pub id: Option<String>,
    pub name: Option<String>,
    pub input: Option<Value>,
    pub tool_use_id: Option<String>,
    /// A tool result: text, or text blocks.
    pub content: Option<Value>,
    /// An image: `{"type": "base64", "media_type": ..., "data": ...}`.
    pub source: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    pub input_schema: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub struct ToolChoice {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: Option<String>,
    pub disable_parallel_tool_use: Option<bool>,
}

/// `budget_tokens` is accepted and not used: GLM models cannot limit their thinking to a
/// number of tokens, only switch it on or off.
#[derive(Debug, Deserialize)]
pub struct Thinking {
    #[serde(rename = "type")]
    pub kind: String,
}

impl MessagesRequest {
    /// The messages as the chat template reads them, the render's variables, the images.
    pub fn conversation(&self, model: &ServedModel) -> Result<Conversation, ApiError> {
        let mut messages = Vec::new();
        let mut images = Vec::new();
        if let Some(system) = &self.system {
            messages.push(json!({"role": "system", "content": block_text(system, "system")?}));
        }
        for (i, message) in self.messages.iter().enumerate() {
            convert_message(i, message, &mut messages, &mut images)?;
        }
        if self.messages.is_empty() {
            return Err(ApiError::field("messages", "at least one message is needed"));
        }
        let choice = self.tool_choice.as_ref();
        let mode = choice.map_or("auto", |c| c.kind.as_str());
        if !["auto", "any", "tool", "none"].contains(&mode) {
            return Err(ApiError::field("tool_choice.type", "must be auto, any, tool or none"));
        }
        let named = choice.filter(|c| c.kind == "tool").and_then(|c| c.name.as_deref());
        if mode == "tool" && named.is_none() {
            return Err(ApiError::field(
                "tool_choice.name",
                "a tool name is needed with type \"tool\"",
            ));
        }
        let tools = match &self.tools {
            Some(tools) if !tools.is_empty() && mode != "none" => Some(template_tools(tools)),
            _ => None,
        };
        if tools.is_some() {
            if let Some(note) = prompt::tool_note(mode == "any", named) {
                prompt::add_system_note(&mut messages, &note);
            }
        }
        let thinking = match self.thinking.as_ref().map(|t| t.kind.as_str()) {
            None => None,
            Some("enabled") => Some(true),
            Some("disabled") => Some(false),
            Some(_) => return Err(ApiError::field("thinking.type", "must be enabled or disabled")),
        };
        Ok(Conversation {
            messages,
            options: prompt::render_options(model, tools, thinking, Default::default()),
            images,
        })
    }

    pub fn settings(&self) -> Result<Settings, ApiError> {
        let max_tokens = self
            .max_tokens
            .ok_or_else(|| ApiError::field("max_tokens", "required"))?;
        Ok(Settings {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            max_tokens: Some(max_tokens),
            stop: self.stop_sequences.clone().unwrap_or_default(),
            ..Default::default()
        })
    }

    pub fn parallel_tool_calls(&self) -> bool {
        self.tool_choice.as_ref().and_then(|c| c.disable_parallel_tool_use) != Some(true)
    }
}

/// The text of a `system` prompt or a tool result: a string or text blocks.
fn block_text(content: &Content, field: &str) -> Result<String, ApiError> {
    match content {
        Content::Text(text) => Ok(text.clone()),
        Content::Blocks(blocks) => {
            let mut text = String::new();
            for (j, block) in blocks.iter().enumerate() {
                match (block.kind.as_str(), &block.text) {
                    ("text", Some(t)) => text.push_str(t),
                    _ => {
                        return Err(ApiError::field(
                            &format!("{field}[{j}]"),
                            "only text blocks are allowed here",
                        ))
                    }
                }
            }
            Ok(text)
        }
    }
}

fn tool_result_text(content: Option<&Value>, field: &str) -> Result<String, ApiError> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(text)) => Ok(text.clone()),
        Some(Value::Array(blocks)) => {
            let mut parts = Vec::new();
            for (j, block) in blocks.iter().enumerate() {
                match (block["type"].as_str(), block["text"].as_str()) {
                    (Some("text"), Some(text)) => parts.push(text),
                    (Some("image"), _) => {
                        return Err(ApiError::field(
                            &format!("{field}[{j}]"),
                            "images in tool results are not supported; GLM's templates take tool results as text",
                        ))
                    }
                    _ => return Err(ApiError::field(&format!("{field}[{j}]"), "expected a text block")),
                }
            }
            Ok(parts.join("\n"))
        }
        Some(_) => Err(ApiError::field(field, "expected a string or a list of text blocks")),
    }
}

/// One Anthropic message as template messages: tool results become `tool` messages
/// (before the user's text, as the API orders them), tool uses an assistant's
/// `tool_calls`, thinking its `reasoning_content`.
fn convert_message(
    index: usize,
    message: &Message,
    out: &mut Vec<Value>,
    images: &mut Vec<RequestImage>,
) -> Result<(), ApiError> {
    let role = match message.role.as_str() {
        "user" | "assistant" => message.role.as_str(),
        other => {
            return Err(ApiError::field(
                &format!("messages[{index}].role"),
                format!("{other:?} is not user or assistant"),
            ))
        }
    };
    let blocks = match &message.content {
        Content::Text(text) => {
            out.push(json!({"role": role, "content": text}));
            return Ok(());
        }
        Content::Blocks(blocks) => blocks,
    };
    let mut text = String::new();
    // The text and images in order, for a user message with images.
    let mut parts = Vec::new();
    let mut reasoning = String::new();
    let mut calls = Vec::new();
    for (j, block) in blocks.iter().enumerate() {
        let field = format!("messages[{index}].content[{j}]");
        match block.kind.as_str() {
            "text" => {
                let piece = block.text.as_deref().unwrap_or_default();
                text.push_str(piece);
                parts.push(json!({"type": "text", "text": piece}));
            }
            "image" if role == "user" => {
                images.push(block_image(block.source.as_ref(), &format!("{field}.source"))?);
                parts.push(json!({"type": "image"}));
            }
            "thinking" => reasoning.push_str(block.thinking.as_deref().unwrap_or_default()),
            "redacted_thinking" => {}
            "tool_use" => {
                let name = block
                    .name
                    .clone()
                    .ok_or_else(|| ApiError::field(&format!("{field}.name"), "missing"))?;
                let mut call = json!({"type": "function", "function": {
                    "name": name, "arguments": block.input.clone().unwrap_or_else(|| json!({}))}});
                if let Some(id) = &block.id {
                    call["id"] = id.clone().into();
                }
                calls.push(call);
            }
            "tool_result" => {
                let content = tool_result_text(block.content.as_ref(), &format!("{field}.content"))?;
                let mut result = json!({"role": "tool", "content": content});
                if let Some(id) = &block.tool_use_id {
                    result["tool_call_id"] = id.clone().into();
                }
                out.push(result);
            }
            "image" => return Err(ApiError::field(&field, "images are taken in user messages only")),
            "document" => return Err(ApiError::field(&field, "documents are not supported")),
            other => {
                return Err(ApiError::field(
                    &format!("{field}.type"),
                    format!("{other:?} is not supported"),
                ))
            }
        }
    }
    if role == "user" && text.is_empty() && blocks.iter().any(|b| b.kind == "tool_result") {
        return Ok(());
    }
    let content = if parts.iter().any(|part| part["type"] == "image") {
        Value::Array(parts)
    } else {
        Value::String(text)
    };
    let mut converted = json!({"role": role, "content": content});
    if role == "assistant" {
        if !reasoning.trim().is_empty() {
            converted["reasoning_content"] = reasoning.trim().into();
        }
        if !calls.is_empty() {
            converted["tool_calls"] = Value::Array(calls);
        }
    }
    out.push(converted);
    Ok(())
}

/// An image block's source: base64 data (the server fetches no URL).
fn block_image(source: Option<&Value>, field: &str) -> Result<RequestImage, ApiError> {
    let source = source.ok_or_else(|| ApiError::field(field, "missing"))?;
    match source["type"].as_str() {
        Some("base64") => {
            let data = source["data"]
                .as_str()
                .ok_or_else(|| ApiError::field(&format!("{field}.data"), "missing"))?;
            RequestImage::from_base64(data, &format!("{field}.data"))
        }
        Some("url") => RequestImage::from_url(source["url"].as_str().unwrap_or_default(), &format!("{field}.url")),
        _ => Err(ApiError::field(
            &format!("{field}.type"),
            "must be base64 (or url with a data: URL)",
        )),
    }
}

/// Anthropic's tools in OpenAI's shape, which the chat templates read.
fn template_tools(tools: &[Tool]) -> Value {
    tools
        .iter()
        .map(|tool| {
            let mut function = json!({"name": tool.name});
            if let Some(description) = &tool.description {
                function["description"] = description.clone().into();
            }
            function["parameters"] = tool
                .input_schema
                .clone()
                .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
            json!({"type": "function", "function": function})
        })
        .collect()
}
