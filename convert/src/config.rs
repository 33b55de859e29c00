//! Typed access to a Hugging Face `config.json`, tolerant of the field drift between
//! transformers versions (rope fields moved under `rope_parameters`, `text_config` for
//! multimodal checkpoints, list-valued `eos_token_id`).

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{read_json, ConvertError, Result};

#[derive(Debug, Clone)]
pub struct HfConfig {
    path: PathBuf,
    root: Map<String, Value>,
}

impl HfConfig {
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        if !path.exists() {
            return Err(ConvertError::config(
                &path,
                "missing: a Hugging Face checkpoint folder needs a config.json",
            ));
        }
        let Value::Object(mut root) = read_json(&path)? else {
            return Err(ConvertError::config(&path, "expected a JSON object"));
        };
        // Multimodal checkpoints keep the language model's fields in `text_config`;
        // they win over the top level, as in transformers.
        if let Some(Value::Object(text)) = root.get("text_config").cloned() {
            root.extend(text);
        }
        Ok(Self { path, root })
    }

    /// A nested config object such as `vision_config`, read with the same accessors.
    pub fn section(&self, key: &str) -> Option<HfConfig> {
        match self.root.get(key) {
            Some(Value::Object(map)) => Some(Self {
                path: self.path.clone(),
                root: map.clone(),
            }),
            _ => None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The first entry of `architectures`, which selects the converter.
    pub fn architecture(&self) -> Result<String> {
        match self.root.get("architectures") {
            Some(Value::Array(list)) => list
                .first()
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| self.error("`architectures` is empty")),
            Some(Value::String(name)) => Ok(name.clone()),
            _ => Err(self.error("no `architectures` field: cannot tell which GLM variant this is")),
        }
    }

    pub fn error(&self, message: impl Into<String>) -> ConvertError {
        ConvertError::config(&self.path, message)
    }

    fn lookup(&self, key: &str) -> Option<&Value> {
        self.root.get(key).filter(|v| !v.is_null())
    }

    pub fn opt_u64(&self, keys: &[&str]) -> Result<Option<u64>> {
        for key in keys {
            if let Some(value) = self.lookup(key) {
                return value
                    .as_u64()
                    .map(Some)
                    .ok_or_else(|| self.error(format!("`{key}` must be a non-negative integer, found {value}")));
            }
        }
        Ok(None)
    }

    pub fn u64(&self, keys: &[&str]) -> Result<u64> {
        self.opt_u64(keys)?
            .ok_or_else(|| self.error(format!("missing required field `{}`", keys[0])))
    }

    /// A u64 that GGUF stores as u32; larger values are an error, not a silent wrap.
    pub fn u32(&self, keys: &[&str]) -> Result<u32> {
        let value = self.u64(keys)?;
        u32::try_from(value).map_err(|_| self.error(format!("`{}` = {value} is too large", keys[0])))
    }

    pub fn opt_u32(&self, keys: &[&str]) -> Result<Option<u32>> {
        match self.opt_u64(keys)? {
            Some(v) => u32::try_from(v)
                .map(Some)
                .map_err(|_| self.error(format!("`{}` = {v} is too large", keys[0]))),
            None => Ok(None),
        }
    }

    pub fn opt_f64(&self, keys: &[&str]) -> Result<Option<f64>> {
        for key in keys {
            if let Some(value) = self.lookup(key) {
                return value
                    .as_f64()
                    .map(Some)
                    .ok_or_else(|| self.error(format!("`{key}` must be a number, found {value}")));
            }
        }
        Ok(None)
    }

    pub fn f64(&self, keys: &[&str]) -> Result<f64> {
        self.opt_f64(keys)?
            .ok_or_else(|| self.error(format!("missing required field `{}`", keys[0])))
    }

    pub fn opt_bool(&self, key: &str) -> Option<bool> {
        self.lookup(key).and_then(Value::as_bool)
    }

    /// A list of strings such as `mlp_layer_types`.
    pub fn opt_str_list(&self, key: &str) -> Result<Option<Vec<String>>> {
        let Some(value) = self.lookup(key) else {
            return Ok(None);
        };
        value
            .as_array()
            .and_then(|items| {
                items
                    .iter()
                    .map(|v| v.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
            })
            .map(Some)
            .ok_or_else(|| self.error(format!("`{key}` must be a list of strings")))
    }

    pub fn opt_str(&self, key: &str) -> Option<&str> {
        self.lookup(key).and_then(Value::as_str)
    }

    /// RoPE fields live at the top level in older configs and under `rope_parameters`
    /// (transformers 5) or `rope_scaling` in newer ones.
    pub fn rope_f64(&self, key: &str) -> Result<Option<f64>> {
        if let Some(v) = self.opt_f64(&[key])? {
            return Ok(Some(v));
        }
        for section in ["rope_parameters", "rope_scaling"] {
            if let Some(v) = self.lookup(section).and_then(|s| s.get(key)) {
                if v.is_null() {
                    continue;
                }
                return v
                    .as_f64()
                    .map(Some)
                    .ok_or_else(|| self.error(format!("`{section}.{key}` must be a number, found {v}")));
            }
        }
        Ok(None)
    }

    /// A list of integers under `rope_parameters` or `rope_scaling` (e.g. `mrope_section`).
    pub fn rope_list(&self, key: &str) -> Result<Option<Vec<i32>>> {
        for section in ["rope_parameters", "rope_scaling"] {
            let Some(value) = self.lookup(section).and_then(|s| s.get(key)) else {
                continue;
            };
            let list = value.as_array().and_then(|items| {
                items
                    .iter()
                    .map(|v| v.as_i64().and_then(|i| i32::try_from(i).ok()))
                    .collect()
            });
            return list
                .map(Some)
                .ok_or_else(|| self.error(format!("`{section}.{key}` must be a list of integers, found {value}")));
        }
        Ok(None)
    }

    /// The RoPE scaling object, if the checkpoint declares a non-default one.
    pub fn rope_scaling(&self) -> Option<&Map<String, Value>> {
        ["rope_scaling", "rope_parameters"]
            .iter()
            .filter_map(|k| self.lookup(k).and_then(Value::as_object))
            .find(|m| {
                let kind = m.get("rope_type").or_else(|| m.get("type")).and_then(Value::as_str);
                // "mrope" only names the multimodal position layout, not a scaling.
                matches!(kind, Some(t) if t != "default" && t != "mrope")
            })
    }

    /// Head dimension: `head_dim` when given, else hidden / heads.
    pub fn head_dim(&self) -> Result<u64> {
        if let Some(d) = self.opt_u64(&["head_dim"])? {
            return Ok(d);
        }
        let hidden = self.u64(&["hidden_size"])?;
        let heads = self.u64(&["num_attention_heads"])?;
        if heads == 0 || hidden % heads != 0 {
            return Err(self.error(format!(
                "hidden_size {hidden} is not divisible by num_attention_heads {heads}"
            )));
        }
        Ok(hidden / heads)
    }

    pub fn tie_word_embeddings(&self) -> bool {
        self.opt_bool("tie_word_embeddings").unwrap_or(false)
    }
}

/// Keys (with their aliases) that must be positive when present.
const POSITIVE_KEYS: &[&[&str]] = &[
    &["num_hidden_layers", "num_layers"],
    &["hidden_size"],
    &["num_attention_heads"],
    &["num_key_value_heads", "multi_query_group_num"],
    &["head_dim", "kv_channels"],
    &["intermediate_size", "ffn_hidden_size"],
    &["vocab_size", "padded_vocab_size"],
    &["max_position_embeddings", "seq_length"],
    &["moe_intermediate_size"],
    &["n_routed_experts", "num_experts", "num_local_experts"],
    &["num_experts_per_tok"],
    &["kv_lora_rank"],
    &["qk_rope_head_dim"],
    &["v_head_dim"],
];

/// Vision tower keys that must be positive when present.
const POSITIVE_VISION_KEYS: &[&[&str]] = &[
    &["depth", "num_hidden_layers"],
    &["hidden_size"],
    &["num_heads", "num_attention_heads"],
    &["intermediate_size"],
    &["patch_size"],
    &["image_size"],
];

/// llama.cpp's `LLAMA_MAX_LAYERS` and `LLAMA_MAX_EXPERTS`.
const MAX_LAYERS: u64 = 512;
const MAX_EXPERTS: u64 = 1024;

impl HfConfig {
    /// Refuses values that cannot make a working model (llama.cpp would abort on them at
    /// load, or compute garbage): zero sizes, heads that key/value heads do not divide,
    /// a rotary fraction outside (0, 1], a non-positive epsilon, more experts used than
    /// exist, more layers than llama.cpp supports.
    pub fn check_ranges(&self) -> Result<()> {
        self.check_positive(POSITIVE_KEYS)?;
        let layers = self.opt_u64(&["num_hidden_layers", "num_layers"])?;
        if let Some(n) = layers.filter(|&n| n > MAX_LAYERS) {
            return Err(self.error(format!(
                "num_hidden_layers = {n}: llama.cpp supports at most {MAX_LAYERS}"
            )));
        }
        let heads = self.opt_u64(&["num_attention_heads"])?;
        let kv_heads = self.opt_u64(&["num_key_value_heads", "multi_query_group_num"])?;
        if let (Some(h), Some(kv)) = (heads, kv_heads) {
            if kv > h || h % kv != 0 {
                return Err(self.error(format!(
                    "num_attention_heads = {h} is not a multiple of num_key_value_heads = {kv}"
                )));
            }
        }
        let experts = self.opt_u64(&["n_routed_experts", "num_experts", "num_local_experts"])?;
        if let Some(n) = experts.filter(|&n| n > MAX_EXPERTS) {
            return Err(self.error(format!("{n} experts: llama.cpp supports at most {MAX_EXPERTS}")));
        }
        if let (Some(used), Some(all)) = (self.opt_u64(&["num_experts_per_tok"])?, experts) {
            if used > all {
                return Err(self.error(format!("num_experts_per_tok = {used} is more than the {all} experts")));
            }
        }
        if let (Some(dense), Some(layers)) = (self.opt_u64(&["first_k_dense_replace"])?, layers) {
            if dense > layers {
                return Err(self.error(format!(
                    "first_k_dense_replace = {dense} is more than the {layers} layers"
                )));
            }
        }
        self.check_floats()?;
        if let Some(vision) = self.section("vision_config") {
            vision.check_positive(POSITIVE_VISION_KEYS)?;
            let hidden = vision.opt_u64(&["hidden_size"])?;
            let heads = vision.opt_u64(&["num_heads", "num_attention_heads"])?;
            if let (Some(d), Some(h)) = (hidden, heads) {
                if d % h != 0 {
                    return Err(self.error(format!(
                        "vision_config: hidden_size {d} is not divisible by its {h} heads"
                    )));
                }
            }
        }
        Ok(())
    }

    fn check_positive(&self, keys: &[&[&str]]) -> Result<()> {
        for aliases in keys {
            if self.opt_u64(aliases)? == Some(0) {
                return Err(self.error(format!("`{}` is 0", aliases[0])));
            }
        }
        Ok(())
    }

    fn check_floats(&self) -> Result<()> {
        if let Some(eps) = self.opt_f64(&["rms_norm_eps", "layernorm_epsilon", "layer_norm_eps"])? {
            if !(eps.is_finite() && eps > 0.0) {
                return Err(self.error(format!("rms_norm_eps = {eps}: must be a small positive number")));
            }
        }
        if let Some(f) = self.rope_f64("partial_rotary_factor")? {
            if !(f > 0.0 && f <= 1.0) {
                return Err(self.error(format!("partial_rotary_factor = {f}: must be in (0, 1]")));
            }
        }
        if let Some(theta) = self.rope_f64("rope_theta")? {
            if !(theta.is_finite() && theta > 0.0) {
                return Err(self.error(format!("rope_theta = {theta}: must be positive")));
            }
        }
        if let Some(f) = self.opt_f64(&["routed_scaling_factor"])? {
            if !f.is_finite() {
                return Err(self.error(format!("routed_scaling_factor = {f}: must be finite")));
            }
        }
        Ok(())
    }
}
