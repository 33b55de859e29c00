//! Renders Hugging Face chat templates exactly as transformers' `apply_chat_template`
//! does: Jinja with `trim_blocks` and `lstrip_blocks`, loop controls, Python string
//! methods, `raise_exception`, `strftime_now`, and a `tojson` that prints like Python's
//! `json.dumps` (", " and ": " separators, no HTML escaping). llama.cpp's built-in
//! template matcher only approximates GLM's templates (no thinking or tool logic), so
//! the prompt text is produced here and handed to the tokenizer as is.

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind};
use serde_json::Value as Json;

const TEMPLATE_NAME: &str = "chat";

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("chat template does not compile: {0}")]
    Syntax(String),
    #[error("chat template failed: {0}")]
    Render(String),
}

/// Everything a render needs besides the messages.
#[derive(Debug, Clone, Default)]
pub struct RenderOptions {
    pub add_generation_prompt: bool,
    /// OpenAI-style tool schemas, passed as `tools` when present.
    pub tools: Option<Json>,
    /// Extra template variables, e.g. `enable_thinking`, `bos_token`.
    pub extra: serde_json::Map<String, Json>,
}

/// Template instructions one render may execute: far beyond any real chat template with
/// a long conversation, small enough to stop a runaway one within seconds.
const RENDER_FUEL: u64 = 10_000_000;

pub struct ChatTemplate {
    env: Environment<'static>,
}

impl ChatTemplate {
    pub fn new(source: &str) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        // A template is code from the model file: its work per render is bounded, so a
        // hostile one (nested loops) fails instead of running for hours.
        env.set_fuel(Some(RENDER_FUEL));
        // Python's str/dict/list methods (`.strip()`, `.items()`, `.startswith()`, …).
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        minijinja_contrib::add_to_environment(&mut env);
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned(TEMPLATE_NAME, source.to_owned())
            .map_err(|e| TemplateError::Syntax(describe(&e)))?;
        Ok(Self { env })
    }

    /// Renders `messages` (OpenAI message objects) into the prompt text.
    pub fn render(&self, messages: &[Json], options: &RenderOptions) -> Result<String, TemplateError> {
        let mut context = options.extra.clone();
        context.insert("messages".into(), Json::Array(messages.to_vec()));
        context.insert(
            "add_generation_prompt".into(),
            Json::Bool(options.add_generation_prompt),
        );
        if let Some(tools) = &options.tools {
            context.insert("tools".into(), tools.clone());
        }
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| TemplateError::Render(describe(&e)))?;
        template
            .render(to_jinja(&Json::Object(context)))
            .map_err(|e| TemplateError::Render(describe(&e)))
    }
}

/// Builds the template value by hand, so that numbers reach templates as numbers
/// whatever serde_json's features: `gguf-rs` (the layout tests' independent reader)
/// turns on `arbitrary_precision` in test builds, under which serializing through serde
/// would hand templates `{"$serde_json::private::Number": …}` maps instead.
fn to_jinja(value: &Json) -> Value {
    match value {
        Json::Null => Value::from(()),
        Json::Bool(b) => Value::from(*b),
        Json::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Value::from(i),
            (None, Some(u), _) => Value::from(u),
            (None, None, Some(f)) => Value::from(f),
            _ => Value::from(n.to_string()),
        },
        Json::String(s) => Value::from(s.as_str()),
        Json::Array(items) => Value::from(items.iter().map(to_jinja).collect::<Vec<_>>()),
        Json::Object(map) => Value::from_iter(map.iter().map(|(k, v)| (k.as_str(), to_jinja(v)))),
    }
}

fn describe(e: &Error) -> String {
    match e.line() {
        Some(line) => format!("{} (template line {line})", e.detail().unwrap_or(&e.to_string())),
        None => e.to_string(),
    }
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// transformers' `strftime_now`. chrono panics when a format it cannot write is turned
/// into a string, so the format goes through `write!`, whose error becomes a template
/// error (a template is a stranger's code).
fn strftime_now(format: String) -> Result<String, Error> {
    use std::fmt::Write as _;
    let mut text = String::new();
    write!(text, "{}", chrono::Local::now().format(&format)).map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: invalid format {format:?}"),
        )
    })?;
    Ok(text)
}

/// Python's `json.dumps` with the arguments transformers' own `tojson` filter passes on
/// (`ensure_ascii=False` unless the template says otherwise, `indent`, `separators`,
/// `sort_keys`). minijinja's built-in escapes HTML characters and drops the spaces after
/// separators, which changes the prompt the model was trained on.
fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    let (item_separator, key_separator) = match separators.as_deref() {
        None if indent.is_some() => (",".to_owned(), ": ".to_owned()),
        None => (", ".to_owned(), ": ".to_owned()),
        Some([item, key]) => (item.clone(), key.clone()),
        Some(_) => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "tojson: separators must be two strings",
            ))
        }
    };
    let style = JsonStyle {
        indent,
        item_separator,
        key_separator,
        ensure_ascii: kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false),
        sort_keys: kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false),
    };
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_json(&value, &style, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

/// `json.dumps` formatting arguments.
struct JsonStyle {
    indent: Option<usize>,
    item_separator: String,
    key_separator: String,
    ensure_ascii: bool,
    sort_keys: bool,
}

fn write_json(value: &Value, style: &JsonStyle, depth: usize, out: &mut String) -> Result<(), Error> {
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => out.push_str(&python_number(value)),
        ValueKind::String => write_json_string(value.as_str().unwrap_or_default(), style.ensure_ascii, out),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            write_container(out, ('[', ']'), style, depth, &items, |item, out| {
                write_json(item, style, depth + 1, out)
            })?;
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = value.try_iter()?.collect();
            if style.sort_keys {
                keys.sort_by_key(|key| key.to_string());
            }
            write_container(out, ('{', '}'), style, depth, &keys, |key, out| {
                write_json_string(&key.to_string(), style.ensure_ascii, out);
                out.push_str(&style.key_separator);
                write_json(&value.get_item(key)?, style, depth + 1, out)
            })?;
        }
        _ => write_json_string(&value.to_string(), style.ensure_ascii, out),
    }
    Ok(())
}

fn write_container<T>(
    out: &mut String,
    (open, close): (char, char),
    style: &JsonStyle,
    depth: usize,
    items: &[T],
    mut write_item: impl FnMut(&T, &mut String) -> Result<(), Error>,
) -> Result<(), Error> {
    out.push(open);
    if items.is_empty() {
        out.push(close);
        return Ok(());
    }
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(&style.item_separator);
        }
        if let Some(width) = style.indent {
            out.push('\n');
            out.push_str(&" ".repeat(width * (depth + 1)));
        }
        write_item(item, out)?;
    }
    if let Some(width) = style.indent {
        out.push('\n');
        out.push_str(&" ".repeat(width * depth));
    }
    out.push(close);
    Ok(())
}

/// Numbers as Python prints them: integers plain, floats with a decimal point.
fn python_number(value: &Value) -> String {
    if let Ok(i) = i64::try_from(value.clone()) {
        if !value.to_string().contains(['.', 'e', 'E']) {
            return i.to_string();
        }
    }
    match f64::try_from(value.clone()) {
        Ok(f) if f.is_nan() => "NaN".into(),
        Ok(f) if f.is_infinite() => if f > 0.0 { "Infinity" } else { "-Infinity" }.into(),
        Ok(f) => python_float_repr(f),
        Err(_) => value.to_string(),
    }
}

fn python_float_repr(f: f64) -> String {
    let debug = format!("{f:?}");
    // Rust prints 1e-7 where Python prints 1e-07.
    match debug.split_once('e') {
        Some((mantissa, exp)) => {
            let (sign, digits) = exp.strip_prefix('-').map_or(("+", exp), |d| ("-", d));
            format!("{mantissa}e{sign}{digits:0>2}")
        }
        None => debug,
    }
}

/// A JSON string as Python writes it; `ensure_ascii` escapes everything outside
/// printable ASCII, astral characters as surrogate pairs.
fn write_json_string(s: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if ensure_ascii && !(' '..='~').contains(&c) => {
                for unit in c.encode_utf16(&mut [0; 2]) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzzing (fuzz/regressions/chat_template/strftime-now-bad-format): an
    /// invalid format used to panic inside chrono.
    #[test]
    fn a_bad_strftime_format_is_an_error() {
        let template = ChatTemplate::new("{{ strftime_now('%') }}{{ strftime_now('%Q') }}").unwrap();
        let err = template.render(&[], &RenderOptions::default()).unwrap_err();
        assert!(err.to_string().contains("strftime_now"), "{err}");
        let good = ChatTemplate::new("{{ strftime_now('%Y') }}").unwrap();
        assert_eq!(good.render(&[], &RenderOptions::default()).unwrap().len(), 4);
    }
    use serde_json::json;

    fn render(source: &str, messages: Json) -> String {
        let template = ChatTemplate::new(source).unwrap();
        let messages = messages.as_array().unwrap().clone();
        template.render(&messages, &RenderOptions::default()).unwrap()
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        let out = render(
            "{{ messages[0] | tojson(ensure_ascii=False) }}",
            json!([{"role": "user", "content": "<b>你好</b>\n", "n": 1, "x": 0.5, "t": true, "l": [1, null]}]),
        );
        assert_eq!(
            out,
            r#"{"role": "user", "content": "<b>你好</b>\n", "n": 1, "x": 0.5, "t": true, "l": [1, null]}"#
        );
    }

    #[test]
    fn tojson_indent_like_python() {
        let out = render("{{ messages[0] | tojson(indent=2) }}", json!([{"a": [1, 2], "b": {}}]));
        assert_eq!(out, "{\n  \"a\": [\n    1,\n    2\n  ],\n  \"b\": {}\n}");
    }

    /// Expected strings printed by Python's `json.dumps` with the same arguments.
    #[test]
    fn tojson_keyword_arguments_like_python() {
        let value = json!([{"b": "é😀\u{7f}", "a": [1, {"z": null, "y": 2.5}]}]);
        let out = render(
            "{{ messages[0] | tojson(ensure_ascii=True, sort_keys=True) }}",
            value.clone(),
        );
        assert_eq!(
            out,
            r#"{"a": [1, {"y": 2.5, "z": null}], "b": "\u00e9\ud83d\ude00\u007f"}"#
        );
        let out = render("{{ messages[0] | tojson(separators=(',', ':')) }}", value.clone());
        assert_eq!(out, "{\"b\":\"é😀\u{7f}\",\"a\":[1,{\"z\":null,\"y\":2.5}]}");
        let out = render("{{ messages[0] | tojson(indent=1, separators=(', ', ': ')) }}", value);
        assert_eq!(
            out,
            "{\n \"b\": \"é😀\u{7f}\", \n \"a\": [\n  1, \n  {\n   \"z\": null, \n   \"y\": 2.5\n  }\n ]\n}"
        );
    }

    #[test]
    fn trim_and_lstrip_blocks_and_python_methods() {
        let source = "{% for m in messages %}\n    {% if m.content.startswith('x') %}\n{{ m.content.strip() }}|\n    {% endif %}\n{% endfor %}";
        let out = render(source, json!([{"content": " no"}, {"content": "x1 "}]));
        assert_eq!(out, "x1|\n");
    }

    #[test]
    fn raise_exception_is_an_error() {
        let template = ChatTemplate::new("{{ raise_exception('bad role') }}").unwrap();
        let err = template.render(&[], &RenderOptions::default()).unwrap_err();
        assert!(err.to_string().contains("bad role"), "{err}");
    }

    #[test]
    fn float_repr_like_python() {
        assert_eq!(python_float_repr(1e-7), "1e-07");
        assert_eq!(python_float_repr(1.0), "1.0");
        assert_eq!(python_float_repr(2.5e20), "2.5e+20");
    }
}
