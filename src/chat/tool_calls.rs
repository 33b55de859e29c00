//! GLM-4.5+ tool calls: `<tool_call>name<arg_key>k</arg_key><arg_value>v</arg_value>…`
//! bodies (the text between the tags) parsed into a name and a JSON argument object.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub name: String,
    pub arguments: Value,
}

impl ToolCall {
    /// The OpenAI `tool_calls` entry the chat templates read back.
    pub fn to_openai(&self) -> Value {
        serde_json::json!({"type": "function", "function": {"name": self.name, "arguments": self.arguments}})
    }
}

/// Parses the body of one `<tool_call>` block. Values that are valid JSON (numbers,
/// booleans, objects) keep their type, as the templates write non-strings with `tojson`.
pub fn parse_tool_call(body: &str) -> Option<ToolCall> {
    let (name, mut rest) = match body.find("<arg_key>") {
        Some(at) => (&body[..at], &body[at..]),
        None => (body, ""),
    };
    let name = name.trim();
    if name.is_empty() {
        return None;
    }
    let mut arguments = Map::new();
    while let Some(key_start) = rest.find("<arg_key>") {
        let after_key = &rest[key_start + "<arg_key>".len()..];
        let key_end = after_key.find("</arg_key>")?;
        let key = after_key[..key_end].trim().to_owned();
        let after = &after_key[key_end + "</arg_key>".len()..];
        let value_start = after.find("<arg_value>")? + "<arg_value>".len();
        let value_end = after[value_start..].find("</arg_value>")? + value_start;
        let raw = &after[value_start..value_end];
        let value = serde_json::from_str::<Value>(raw).unwrap_or_else(|_| Value::String(raw.to_owned()));
        arguments.insert(key, value);
        rest = &after[value_end + "</arg_value>".len()..];
    }
    Some(ToolCall {
        name: name.to_owned(),
        arguments: Value::Object(arguments),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_typed_arguments() {
        let call = parse_tool_call("search\n<arg_key>q</arg_key>\n<arg_value>rust \"gguf\"</arg_value>\n<arg_key>n</arg_key><arg_value>5</arg_value>\n").unwrap();
        assert_eq!(call.name, "search");
        assert_eq!(call.arguments, serde_json::json!({"q": "rust \"gguf\"", "n": 5}));
    }

    #[test]
    fn a_call_without_arguments() {
        let call = parse_tool_call("now\n").unwrap();
        assert_eq!(call.arguments, serde_json::json!({}));
    }

    #[test]
    fn malformed_bodies_are_rejected() {
        assert!(parse_tool_call("  ").is_none());
        assert!(parse_tool_call("f<arg_key>k</arg_key>no value").is_none());
    }
}
