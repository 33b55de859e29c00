//! Chat templates: arbitrary template source with arbitrary messages, and the real GLM
//! templates of the test fixtures with arbitrary messages, tools and variables. Every
//! input must render or fail with an error; the fuel limit ends runaway templates.
//!
//! Input layout: byte 0 picks the mode and flags. Even: the rest is
//! `<template source>\0<context JSON>`. Odd: byte 0 also picks a fixture template and
//! the rest is the context JSON. The context is a message array, or an object whose
//! `messages` and `tools` become those and whose other keys become template variables.
#![no_main]

use glm::chat::{ChatTemplate, RenderOptions};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

const FIXTURES: &[&str] = &[
    include_str!("../../tests/fixtures/models/glm4-tiny/chat_template.jinja"),
    include_str!("../../tests/fixtures/models/glm45v-tiny/chat_template.jinja"),
    include_str!("../../tests/fixtures/models/glm47flash-tiny/chat_template.jinja"),
    include_str!("../../tests/fixtures/models/glm4moe-tiny/chat_template.jinja"),
];

thread_local! {
    // Compiling a fixture template every run would dominate the time spent per input.
    static COMPILED: Vec<ChatTemplate> = FIXTURES
        .iter()
        .map(|source| ChatTemplate::new(source).expect("fixture templates compile"))
        .collect();
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Ok(rest) = std::str::from_utf8(rest) else {
        return;
    };
    if flags & 1 == 0 {
        let (source, context) = rest.split_once('\0').unwrap_or((rest, "[]"));
        let Ok(template) = ChatTemplate::new(source) else {
            return;
        };
        render(&template, flags, context);
    } else {
        COMPILED.with(|templates| {
            let template = &templates[usize::from(flags >> 1) % templates.len()];
            render(template, flags, rest);
        });
    }
});

fn render(template: &ChatTemplate, flags: u8, context: &str) {
    let context: Value =
        serde_json::from_str(context).unwrap_or_else(|_| json!([{"role": "user", "content": context}]));
    let mut options = RenderOptions {
        add_generation_prompt: flags & 0x80 != 0,
        ..RenderOptions::default()
    };
    let messages = match context {
        Value::Array(messages) => messages,
        Value::Object(mut map) => {
            options.tools = map.remove("tools");
            let messages = match map.remove("messages") {
                Some(Value::Array(messages)) => messages,
                Some(other) => vec![other],
                None => Vec::new(),
            };
            options.extra = map;
            messages
        }
        other => vec![other],
    };
    let _ = template.render(&messages, &options);
}
