//! The tokenizer part of a GGUF: byte-level BPE vocabulary, merges, token types,
//! special token ids and the chat template, read from the Hugging Face tokenizer files.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use crate::config::HfConfig;
use crate::error::{read_json, ConvertError, Result};
use crate::gguf::{MetaValue, Metadata};

/// llama.cpp token types.
const TOKEN_NORMAL: i32 = 1;
const TOKEN_CONTROL: i32 = 3;
const TOKEN_USER_DEFINED: i32 = 4;
const TOKEN_UNUSED: i32 = 5;

/// Special-token roles an architecture pins to token texts (e.g. eot = `<|user|>`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SpecialTokens {
    pub bos: Option<&'static str>,
    pub eos: Option<&'static str>,
    pub eot: Option<&'static str>,
    pub eom: Option<&'static str>,
    pub unk: Option<&'static str>,
    pub pad: Option<&'static str>,
}

struct AddedToken {
    id: u32,
    content: String,
    special: bool,
}

pub struct Vocabulary {
    tokens: Vec<String>,
    types: Vec<i32>,
    merges: Vec<String>,
    by_text: HashMap<String, u32>,
}

/// Token texts and types by id while a vocabulary is being assembled.
struct TokenTable<'p> {
    path: &'p Path,
    tokens: Vec<Option<String>>,
    types: Vec<i32>,
}

impl<'p> TokenTable<'p> {
    fn new(path: &'p Path, vocab_size: usize) -> Self {
        Self {
            path,
            tokens: vec![None; vocab_size],
            types: vec![TOKEN_UNUSED; vocab_size],
        }
    }

    /// Gives `id` its text and type. Added tokens may restate (`replaces`) a vocabulary
    /// entry; two different texts for one id in the same list would silently lose one.
    fn place(&mut self, id: u64, text: &str, kind: i32, replaces: bool) -> Result<()> {
        let vocab_size = self.tokens.len();
        let slot = self.tokens.get_mut(id as usize).ok_or_else(|| {
            tokenizer_error(
                self.path,
                format!("token {text:?} has id {id}, outside the model's vocab_size {vocab_size}"),
            )
        })?;
        if let Some(other) = slot.as_deref().filter(|other| *other != text && !replaces) {
            return Err(tokenizer_error(
                self.path,
                format!("id {id} is given to both {other:?} and {text:?}"),
            ));
        }
        *slot = Some(text.to_owned());
        self.types[id as usize] = kind;
        Ok(())
    }

    fn place_added(&mut self, added: &[AddedToken]) -> Result<()> {
        let mut added_ids = HashMap::new();
        for token in added {
            if let Some(other) = added_ids.insert(token.id, &token.content) {
                if *other != token.content {
                    return Err(tokenizer_error(
                        self.path,
                        format!("added tokens {other:?} and {:?} share id {}", token.content, token.id),
                    ));
                }
            }
            let kind = if token.special || looks_special(&token.content) {
                TOKEN_CONTROL
            } else {
                TOKEN_USER_DEFINED
            };
            self.place(u64::from(token.id), &token.content, kind, true)?;
        }
        Ok(())
    }
}

impl Vocabulary {
    /// Reads `tokenizer.json` and pads the token list to `vocab_size` (the embedding
    /// row count), since llama.cpp checks the two agree.
    pub fn load(dir: &Path, vocab_size: usize) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(tokenizer_error(&path, "missing: the GGUF needs the tokenizer"));
        }
        let json = read_json(&path)?;
        let model = json
            .get("model")
            .ok_or_else(|| tokenizer_error(&path, "no `model` section"))?;
        match model.get("type").and_then(Value::as_str) {
            Some("BPE") | None => {}
            Some(other) => {
                return Err(tokenizer_error(
                    &path,
                    format!("tokenizer model {other:?} is not supported; GLM tokenizers are byte-level BPE"),
                ))
            }
        }
        let vocab = model
            .get("vocab")
            .and_then(Value::as_object)
            .ok_or_else(|| tokenizer_error(&path, "no `model.vocab` object"))?;
        let added = added_tokens(&json, &path)?;

        let mut table = TokenTable::new(&path, vocab_size);
        for (text, id) in vocab {
            let id = id
                .as_u64()
                .ok_or_else(|| tokenizer_error(&path, format!("vocab entry {text:?} has no integer id")))?;
            table.place(id, text, TOKEN_NORMAL, false)?;
        }
        table.place_added(&added)?;
        let TokenTable { tokens, types, .. } = table;
        let tokens: Vec<String> = tokens
            .into_iter()
            .enumerate()
            .map(|(id, t)| t.unwrap_or_else(|| format!("[PAD{id}]")))
            .collect();
        let by_text = tokens
            .iter()
            .enumerate()
            .filter(|(id, _)| types[*id] != TOKEN_UNUSED)
            .map(|(id, t)| (t.clone(), id as u32))
            .collect();
        let merges = merges(model, &path)?;
        Ok(Self {
            tokens,
            types,
            merges,
            by_text,
        })
    }

    pub fn id_of(&self, text: &str) -> Option<u32> {
        self.by_text.get(text).copied()
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Writes the `tokenizer.ggml.*` keys. Role ids come from `tokenizer_config.json`
    /// first, then integer `*_token_id` fields of config.json, then the architecture's
    /// fixed roles (which llama.cpp's converter also imposes).
    pub fn write_metadata(
        &self,
        meta: &mut Metadata,
        dir: &Path,
        config: &HfConfig,
        roles: &SpecialTokens,
    ) -> Result<()> {
        meta.set("tokenizer.ggml.model", "gpt2");
        meta.set("tokenizer.ggml.pre", "glm4");
        meta.set("tokenizer.ggml.tokens", MetaValue::from(self.tokens.clone()));
        meta.set("tokenizer.ggml.token_type", MetaValue::from(self.types.clone()));
        meta.set("tokenizer.ggml.merges", MetaValue::from(self.merges.clone()));

        let tokenizer_config = read_tokenizer_config(dir)?;
        let mut ids: Vec<(&str, u32)> = Vec::new();
        let mut set = |role: &'static str, id: Option<u32>| {
            if let Some(id) = id {
                match ids.iter_mut().find(|(r, _)| *r == role) {
                    Some(entry) => entry.1 = id,
                    None => ids.push((role, id)),
                }
            }
        };
        for role in ["bos", "eos", "unk", "pad"] {
            let from_text = tokenizer_config
                .get(&format!("{role}_token"))
                .and_then(token_text)
                .and_then(|t| self.id_of(t));
            let from_config = config
                .text()
                .token_id(role)
                .filter(|id| (*id as usize) < self.tokens.len());
            set(role, from_text.or(from_config));
        }
        let fixed = [
            ("bos", roles.bos),
            ("eos", roles.eos),
            ("eot", roles.eot),
            ("eom", roles.eom),
            ("unk", roles.unk),
            ("pad", roles.pad),
        ];
        for (role, text) in fixed {
            set(role, text.and_then(|t| self.id_of(t)));
        }
        for (role, id) in ids {
            let key = match role {
                "unk" => "tokenizer.ggml.unknown_token_id".to_owned(),
                "pad" => "tokenizer.ggml.padding_token_id".to_owned(),
                other => format!("tokenizer.ggml.{other}_token_id"),
            };
            meta.set(key, id);
        }
        // GLM prompts begin with `[gMASK]<sop>` from the chat template; an automatic BOS
        // would duplicate or corrupt that prefix.
        meta.set("tokenizer.ggml.add_bos_token", false);
        meta.set("tokenizer.ggml.add_eos_token", false);
        if let Some(template) = chat_template(dir, &tokenizer_config)? {
            meta.set("tokenizer.chat_template", template);
        }
        Ok(())
    }
}

fn tokenizer_error(path: &Path, message: impl Into<String>) -> ConvertError {
    ConvertError::Tokenizer {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn added_tokens(json: &Value, path: &Path) -> Result<Vec<AddedToken>> {
    let Some(list) = json.get("added_tokens").and_then(Value::as_array) else {
        return Ok(Vec::new());
    };
    list.iter()
        .map(|t| {
            let id = t.get("id").and_then(Value::as_u64);
            let content = t.get("content").and_then(Value::as_str);
            match (id, content) {
                (Some(id), Some(content)) => Ok(AddedToken {
                    id: u32::try_from(id)
                        .map_err(|_| tokenizer_error(path, format!("added token id {id} too large")))?,
                    content: content.to_owned(),
                    special: t.get("special").and_then(Value::as_bool).unwrap_or(false),
                }),
                _ => Err(tokenizer_error(path, format!("malformed added token {t}"))),
            }
        })
        .collect()
}

/// Texts llama.cpp's converter treats as control tokens even when not flagged special.
fn looks_special(text: &str) -> bool {
    let wrapped = |open: &str, close: &str| {
        text.starts_with(open) && text.ends_with(close) && text.len() > open.len() + close.len()
    };
    wrapped("<|", "|>") || wrapped("<｜", "｜>") || text == "<pad>" || text == "<mask>" || text.starts_with("<unused")
}

/// Merges as "A B" strings; the newer pair form is joined with a space, after encoding any
/// literal space inside a part as `Ġ` (llama.cpp splits each merge at its first space).
fn merges(model: &Value, path: &Path) -> Result<Vec<String>> {
    let Some(list) = model.get("merges").and_then(Value::as_array) else {
        return Err(tokenizer_error(path, "no `model.merges` list"));
    };
    list.iter()
        .map(|m| match m {
            Value::String(s) => Ok(s.clone()),
            Value::Array(pair) if pair.len() == 2 => {
                let part = |v: &Value| v.as_str().map(|s| s.replace(' ', "\u{120}"));
                match (part(&pair[0]), part(&pair[1])) {
                    (Some(a), Some(b)) => Ok(format!("{a} {b}")),
                    _ => Err(tokenizer_error(path, format!("malformed merge {m}"))),
                }
            }
            _ => Err(tokenizer_error(path, format!("malformed merge {m}"))),
        })
        .collect()
}

fn read_tokenizer_config(dir: &Path) -> Result<serde_json::Map<String, Value>> {
    let path = dir.join("tokenizer_config.json");
    if !path.exists() {
        return Ok(Default::default());
    }
    match read_json(&path)? {
        Value::Object(map) => Ok(map),
        _ => Err(tokenizer_error(&path, "expected a JSON object")),
    }
}

/// A special token given as a string or as `{ "content": … }`.
fn token_text(v: &Value) -> Option<&str> {
    v.as_str().or_else(|| v.get("content").and_then(Value::as_str))
}

/// The checkpoint's chat template, wherever the folder keeps it.
pub fn find_chat_template(dir: &Path) -> Result<Option<String>> {
    chat_template(dir, &read_tokenizer_config(dir)?)
}

/// The chat template: `tokenizer_config.json` `chat_template` (string, or the `default`
/// entry of a list), else `chat_template.jinja`, else `chat_template.json`.
fn chat_template(dir: &Path, tokenizer_config: &serde_json::Map<String, Value>) -> Result<Option<String>> {
    if let Some(value) = tokenizer_config.get("chat_template").filter(|v| !v.is_null()) {
        return template_value(value).map(Some).ok_or_else(|| {
            tokenizer_error(
                &dir.join("tokenizer_config.json"),
                "`chat_template` must be a string or a list of {name, template} entries",
            )
        });
    }
    let jinja = dir.join("chat_template.jinja");
    if jinja.exists() {
        return crate::files::read_text_limited(&jinja, crate::files::MAX_CONFIG_BYTES).map(Some);
    }
    let json_path = dir.join("chat_template.json");
    if json_path.exists() {
        return match read_json(&json_path)?.get("chat_template").filter(|v| !v.is_null()) {
            None => Ok(None),
            Some(value) => template_value(value)
                .map(Some)
                .ok_or_else(|| tokenizer_error(&json_path, "`chat_template` must be a string")),
        };
    }
    Ok(None)
}

fn template_value(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Array(list) => list
            .iter()
            .find(|e| e.get("name").and_then(Value::as_str) == Some("default"))
            .or_else(|| list.first())
            .and_then(|e| e.get("template"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_looking_texts() {
        assert!(looks_special("<|user|>"));
        assert!(looks_special("<unused12>"));
        assert!(!looks_special("<think>"));
        assert!(!looks_special("<||>"));
    }

    #[test]
    fn pair_merges_encode_inner_spaces() {
        let model = serde_json::json!({"merges": [["a b", "c"], "d e"]});
        let merges = merges(&model, Path::new("t.json")).unwrap();
        assert_eq!(merges, vec!["a\u{120}b c".to_owned(), "d e".to_owned()]);
    }

    #[test]
    fn template_list_prefers_default() {
        let v = serde_json::json!([{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]);
        assert_eq!(template_value(&v).as_deref(), Some("D"));
    }
}
