//! A conversation in the OpenAI messages shape (what chat templates and other tools
//! read): an optional system prompt, then user, assistant and tool messages.

use std::path::Path;

use serde_json::{json, Value};

use super::ToolCall;

#[derive(Debug, Default, Clone)]
pub struct Conversation {
    pub system: Option<String>,
    /// Every message after the system prompt.
    turns: Vec<Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConversationError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    /// Reading or writing the file failed; the error names the file.
    #[error(transparent)]
    Io(#[from] glm_convert::ConvertError),
}

/// A saved conversation is read whole; this bounds it.
pub const MAX_SAVED_CHAT_BYTES: u64 = 64 << 20;

impl Conversation {
    pub fn new(system: Option<String>) -> Self {
        Self {
            system,
            turns: Vec::new(),
        }
    }

    /// All messages, system prompt first, as the template wants them.
    pub fn messages(&self) -> Vec<Value> {
        let system = self.system.iter().map(|s| json!({"role": "system", "content": s}));
        system.chain(self.turns.iter().cloned()).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.turns.is_empty()
    }

    pub fn len(&self) -> usize {
        self.turns.len()
    }

    /// A user message; with images it starts with them (kept by path, in content parts).
    pub fn push_user(&mut self, text: &str, images: &[std::path::PathBuf]) {
        if images.is_empty() {
            self.turns.push(json!({"role": "user", "content": text}));
            return;
        }
        let mut parts: Vec<Value> = images
            .iter()
            .map(|path| json!({"type": "image", "image": path.display().to_string()}))
            .collect();
        parts.push(json!({"type": "text", "text": text}));
        self.turns.push(json!({"role": "user", "content": parts}));
    }

    /// Every image of the conversation, in the order the template will place them.
    pub fn images(&self) -> Vec<std::path::PathBuf> {
        self.turns
            .iter()
            .filter_map(|m| m["content"].as_array())
            .flatten()
            .filter(|part| part["type"] == "image")
            .filter_map(|part| part["image"].as_str().map(std::path::PathBuf::from))
            .collect()
    }

    /// The assistant's reply with its reasoning kept apart (`reasoning_content`), so the
    /// template decides whether past reasoning is shown again.
    pub fn push_assistant(&mut self, content: &str, reasoning: &str, tool_calls: &[ToolCall]) {
        let mut message = json!({"role": "assistant", "content": content});
        if !reasoning.trim().is_empty() {
            message["reasoning_content"] = reasoning.trim().into();
        }
        if !tool_calls.is_empty() {
            message["tool_calls"] = tool_calls.iter().map(ToolCall::to_openai).collect();
        }
        self.turns.push(message);
    }

    /// Records on the last reply the random seed it was sampled with, so a saved
    /// conversation tells how to sample it again (an extra field other readers ignore).
    pub fn note_seed(&mut self, seed: u32) {
        if let Some(reply) = self.turns.last_mut().filter(|m| m["role"] == "assistant") {
            reply["seed"] = seed.into();
        }
    }

    /// The seed of the latest reply that has one (files from before seeds were kept have
    /// none).
    pub fn last_seed(&self) -> Option<u32> {
        self.turns
            .iter()
            .rev()
            .find_map(|m| m["seed"].as_u64())
            .and_then(|seed| u32::try_from(seed).ok())
    }

    /// A tool's result, as a JSON value or text.
    pub fn push_tool_result(&mut self, result: &str) {
        let content = match serde_json::from_str::<Value>(result) {
            Ok(Value::String(s)) => s,
            Ok(other) => other.to_string(),
            Err(_) => result.to_owned(),
        };
        self.turns.push(json!({"role": "tool", "content": content}));
    }

    /// Removes the last reply (for `/regen`); true when there was one.
    pub fn pop_reply(&mut self) -> bool {
        let mut removed = false;
        while self.turns.last().is_some_and(|m| m["role"] == "assistant") {
            self.turns.pop();
            removed = true;
        }
        removed
    }

    /// The places the conversation can be cut when the context is full, in messages
    /// dropped: each later exchange's start (a user message), never the last user
    /// message itself.
    pub fn cut_points(&self) -> Vec<usize> {
        let last_user = self.turns.iter().rposition(|m| m["role"] == "user").unwrap_or(0);
        (1..=last_user).filter(|&i| self.turns[i]["role"] == "user").collect()
    }

    /// Drops the first `count` messages (a value from [`Self::cut_points`]).
    pub fn drop_oldest(&mut self, count: usize) {
        self.turns.drain(..count.min(self.turns.len()));
    }

    pub fn clear(&mut self) {
        self.turns.clear();
    }

    /// Writes the conversation as JSON to `path`, which may not be one of `inputs` (the
    /// model, its projector, …) nor anything but a regular file; an existing file is
    /// replaced.
    pub fn save(&self, path: &Path, inputs: &[&Path]) -> Result<(), ConversationError> {
        let text = serde_json::to_string_pretty(&self.messages()).map_err(|e| file_error(path, e))?;
        glm_convert::files::check_output(path, inputs, true)?;
        Ok(glm_convert::files::write_bytes(path, (text + "\n").as_bytes())?)
    }

    pub fn load(path: &Path) -> Result<Self, ConversationError> {
        let text = glm_convert::files::read_text_limited(path, MAX_SAVED_CHAT_BYTES)?;
        let value: Value = serde_json::from_str(&text).map_err(|e| file_error(path, e))?;
        let Value::Array(messages) = value else {
            return Err(file_error(path, "expected a JSON list of messages"));
        };
        let mut conversation = Conversation::default();
        for message in messages {
            match message["role"].as_str() {
                Some("system") => conversation.system = message["content"].as_str().map(str::to_owned),
                Some("user" | "assistant" | "tool") => conversation.turns.push(message),
                _ => return Err(file_error(path, format!("message without a known role: {message}"))),
            }
        }
        Ok(conversation)
    }
}

fn file_error(path: &Path, e: impl std::fmt::Display) -> ConversationError {
    ConversationError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Conversation {
        let mut c = Conversation::new(Some("Be brief.".into()));
        c.push_user("one", &[]);
        c.push_assistant("1", "counting", &[]);
        c.push_user("two", &[]);
        c.push_assistant("2", "", &[]);
        c
    }

    #[test]
    fn messages_start_with_the_system_prompt() {
        let m = sample().messages();
        assert_eq!(m.len(), 5);
        assert_eq!(m[0]["role"], "system");
        assert_eq!(m[2]["reasoning_content"], "counting");
        assert!(m[4].get("reasoning_content").is_none());
    }

    #[test]
    fn dropping_keeps_the_system_prompt_and_the_last_question() {
        let mut c = sample();
        assert_eq!(c.cut_points(), vec![2]);
        c.drop_oldest(2);
        assert_eq!(c.messages()[1]["content"], "two");
        c.pop_reply();
        assert!(c.cut_points().is_empty(), "the last user message stays");
        assert_eq!(c.messages()[0]["role"], "system");
    }

    #[test]
    fn save_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        let mut c = sample();
        c.push_assistant(
            "",
            "",
            &[ToolCall {
                name: "f".into(),
                arguments: json!({"x": 1}),
            }],
        );
        c.push_tool_result("{\"ok\": true}");
        c.save(&path, &[]).unwrap();
        let loaded = Conversation::load(&path).unwrap();
        assert_eq!(loaded.messages(), c.messages());
    }

    #[test]
    fn the_latest_seed_is_kept_on_its_reply() {
        let mut c = sample();
        assert_eq!(c.last_seed(), None, "older conversations have no seed");
        c.note_seed(7);
        c.push_user("three", &[]);
        c.note_seed(9);
        assert_eq!(c.messages()[4]["seed"], 7);
        assert!(c.messages()[5].get("seed").is_none(), "only replies carry a seed");
        assert_eq!(c.last_seed(), Some(7));
        c.push_assistant("3", "", &[]);
        c.note_seed(9);
        assert_eq!(c.last_seed(), Some(9));
    }

    #[test]
    fn regen_removes_the_reply() {
        let mut c = sample();
        assert!(c.pop_reply());
        assert_eq!(c.messages().last().unwrap()["role"], "user");
        assert!(!c.pop_reply());
    }
}
