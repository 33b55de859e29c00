//! Chat-template renders must be byte-identical to transformers' `apply_chat_template`
//! (references in tests/fixtures/templates.json). Pure chat layer: no model is loaded.

mod common;

use common::*;
use glm::chat::{ChatTemplate, RenderOptions};
use serde_json::Value;

/// The special-token variables transformers passes to every template.
fn special_token_variables(model: &str) -> serde_json::Map<String, Value> {
    let config = read_json(&model_dir(model).join("tokenizer_config.json"));
    let mut vars = serde_json::Map::new();
    for name in ["bos_token", "eos_token", "unk_token", "pad_token"] {
        let text = match &config[name] {
            Value::String(s) => Some(s.clone()),
            Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_owned),
            _ => None,
        };
        if let Some(text) = text {
            vars.insert(name.into(), text.into());
        }
    }
    vars
}

fn check_renders(file: &str) {
    let cases = read_json(&fixtures().join(file));
    let cases = cases.as_array().expect("template cases");
    assert!(!cases.is_empty());
    for (index, case) in cases.iter().enumerate() {
        let model = case["model"].as_str().expect("model");
        let source = glm_convert::tokenizer::find_chat_template(&model_dir(model))
            .expect("readable tokenizer files")
            .expect("a chat template");
        let template = ChatTemplate::new(&source).expect("template compiles");
        let mut extra = special_token_variables(model);
        let mut tools = None;
        for (key, value) in case["kwargs"].as_object().cloned().unwrap_or_default() {
            if key == "tools" {
                tools = Some(value);
            } else {
                extra.insert(key, value);
            }
        }
        let options = RenderOptions {
            add_generation_prompt: case["add_generation_prompt"].as_bool().unwrap_or(false),
            tools,
            extra,
        };
        let messages = case["messages"].as_array().expect("messages");
        let rendered = template.render(messages, &options).expect("render");
        assert_eq!(
            rendered,
            case["rendered"].as_str().expect("rendered"),
            "{file} case {index} ({model}, {})",
            case["name"]
        );
    }
}

#[test]
fn dense_templates_render_like_transformers() {
    check_renders("templates.json");
}

/// GLM-4.5 and GLM-4.7-Flash templates: thinking on/off, tools, tool calls and results,
/// reasoning content.
#[test]
fn moe_templates_render_like_transformers() {
    check_renders("templates_moe.json");
}

/// GLM-4.5V's template: image placeholders in list-shaped content, thinking, tools.
#[test]
fn vision_template_renders_like_transformers() {
    check_renders("templates_vision.json");
}
