//! A Hugging Face `config.json` read into typed structs, one per group of fields, each
//! field declared once with its aliases and default. Tolerates the field drift between
//! transformers versions (RoPE fields moved under `rope_parameters`, `text_config` for
//! multimodal checkpoints, list-valued `eos_token_id`, `null` for "not set").

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::error::{read_json, ConvertError, Result};

mod keyed;
mod value;

use value::{
    count, flag, int_list, number, opt_count, opt_number, opt_size, opt_text, size, text, text_list, token_id,
};

/// Fields every GLM text model reads. Sizes that must not be 0 are refused when read.
#[derive(Debug, Clone, Deserialize)]
pub struct TextConfig {
    #[serde(alias = "num_layers", deserialize_with = "size")]
    pub num_hidden_layers: u32,
    #[serde(deserialize_with = "size")]
    pub hidden_size: u32,
    #[serde(deserialize_with = "size")]
    pub num_attention_heads: u32,
    /// Absent means one key/value head per query head.
    #[serde(default, alias = "multi_query_group_num", deserialize_with = "opt_size")]
    pub num_key_value_heads: Option<u32>,
    /// Absent means hidden / heads (see [`HfConfig::head_dim`]).
    #[serde(default, alias = "kv_channels", deserialize_with = "opt_size")]
    pub head_dim: Option<u32>,
    #[serde(alias = "ffn_hidden_size", deserialize_with = "size")]
    pub intermediate_size: u32,
    #[serde(default, alias = "padded_vocab_size", deserialize_with = "opt_size")]
    pub vocab_size: Option<u32>,
    #[serde(alias = "seq_length", deserialize_with = "size")]
    pub max_position_embeddings: u32,
    #[serde(alias = "layernorm_epsilon", alias = "layer_norm_eps", deserialize_with = "number")]
    pub rms_norm_eps: f64,
    #[serde(default, deserialize_with = "flag")]
    pub tie_word_embeddings: bool,
    /// Multi-token-prediction layers stored after the trunk.
    #[serde(default, alias = "num_mtp_layers", deserialize_with = "count")]
    pub num_nextn_predict_layers: u32,
    #[serde(default, deserialize_with = "token_id")]
    pub bos_token_id: Option<u32>,
    #[serde(default, deserialize_with = "token_id")]
    pub eos_token_id: Option<u32>,
    #[serde(default, deserialize_with = "token_id")]
    pub unk_token_id: Option<u32>,
    #[serde(default, deserialize_with = "token_id")]
    pub pad_token_id: Option<u32>,
    #[serde(default)]
    rope_parameters: Option<RopeSection>,
    #[serde(default)]
    rope_scaling: Option<RopeSection>,
}

impl TextConfig {
    /// The `*_token_id` field of a token role (`bos`, `eos`, `unk`, `pad`).
    pub fn token_id(&self, role: &str) -> Option<u32> {
        match role {
            "bos" => self.bos_token_id,
            "eos" => self.eos_token_id,
            "unk" => self.unk_token_id,
            "pad" => self.pad_token_id,
            _ => None,
        }
    }
}

/// RoPE fields. The same fields are read at the top level (older configs), under
/// `rope_parameters` (transformers 5) and under `rope_scaling`, in that order.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RopeSection {
    #[serde(default, alias = "type", deserialize_with = "opt_text")]
    pub rope_type: Option<String>,
    #[serde(default, deserialize_with = "opt_number")]
    pub factor: Option<f64>,
    #[serde(default, deserialize_with = "opt_count")]
    pub original_max_position_embeddings: Option<u32>,
    #[serde(default, deserialize_with = "opt_number")]
    pub beta_fast: Option<f64>,
    #[serde(default, deserialize_with = "opt_number")]
    pub beta_slow: Option<f64>,
    #[serde(default, deserialize_with = "opt_number")]
    rope_theta: Option<f64>,
    #[serde(default, deserialize_with = "opt_number")]
    partial_rotary_factor: Option<f64>,
    /// M-RoPE: rotary dimensions per position axis (temporal, height, width).
    #[serde(default, deserialize_with = "int_list")]
    mrope_section: Option<Vec<i32>>,
}

/// Mixture-of-experts fields (glm4moe, deepseek2), read only by those architectures.
#[derive(Debug, Clone, Deserialize)]
pub struct MoeConfig {
    #[serde(alias = "num_experts", alias = "num_local_experts", deserialize_with = "size")]
    pub n_routed_experts: u32,
    #[serde(deserialize_with = "size")]
    pub num_experts_per_tok: u32,
    #[serde(deserialize_with = "size")]
    pub moe_intermediate_size: u32,
    #[serde(default, deserialize_with = "count")]
    pub n_shared_experts: u32,
    /// Leading dense layers; transformers 5 may give `mlp_layer_types` instead.
    #[serde(default, deserialize_with = "opt_count")]
    pub first_k_dense_replace: Option<u32>,
    #[serde(default, deserialize_with = "text_list")]
    pub mlp_layer_types: Option<Vec<String>>,
    #[serde(default = "no_scaling", deserialize_with = "number")]
    pub routed_scaling_factor: f64,
    /// transformers' default for both GLM MoE configs is to renormalise the top-k weights.
    #[serde(default = "yes", deserialize_with = "flag")]
    pub norm_topk_prob: bool,
    #[serde(default, deserialize_with = "opt_count")]
    pub n_group: Option<u32>,
    #[serde(default, deserialize_with = "opt_count")]
    pub topk_group: Option<u32>,
}

fn no_scaling() -> f64 {
    1.0
}

fn yes() -> bool {
    true
}

/// Multi-head latent attention sizes (deepseek2).
#[derive(Debug, Clone, Deserialize)]
pub struct MlaConfig {
    #[serde(default, deserialize_with = "opt_count")]
    pub q_lora_rank: Option<u32>,
    #[serde(deserialize_with = "size")]
    pub kv_lora_rank: u32,
    #[serde(deserialize_with = "count")]
    pub qk_nope_head_dim: u32,
    #[serde(deserialize_with = "size")]
    pub qk_rope_head_dim: u32,
    #[serde(deserialize_with = "size")]
    pub v_head_dim: u32,
}

/// The vision tower of a GLM-V checkpoint (`vision_config`).
#[derive(Debug, Clone, Deserialize)]
pub struct VisionConfig {
    #[serde(alias = "num_hidden_layers", deserialize_with = "size")]
    pub depth: u32,
    #[serde(deserialize_with = "size")]
    pub hidden_size: u32,
    #[serde(alias = "num_attention_heads", deserialize_with = "size")]
    pub num_heads: u32,
    #[serde(deserialize_with = "size")]
    pub intermediate_size: u32,
    #[serde(deserialize_with = "size")]
    pub patch_size: u32,
    #[serde(deserialize_with = "size")]
    pub image_size: u32,
    #[serde(default = "silu", deserialize_with = "text")]
    pub hidden_act: String,
    #[serde(default = "vision_eps", alias = "layer_norm_eps", deserialize_with = "number")]
    pub rms_norm_eps: f64,
    #[serde(default, deserialize_with = "opt_count")]
    pub spatial_merge_size: Option<u32>,
}

fn silu() -> String {
    "silu".to_owned()
}

fn vision_eps() -> f64 {
    1e-5
}

/// Refuses checkpoints quantized in a way glm cannot read: FP8 (E4M3) is read, as
/// `quant_method` `fp8` or compressed-tensors' `float-quantized` format.
fn check_quantization(path: &Path, root: &Value) -> Result<()> {
    let Some(quantization) = root.get("quantization_config") else {
        return Ok(());
    };
    let method = quantization
        .get("quant_method")
        .and_then(Value::as_str)
        .unwrap_or("(none given)");
    let supported = "glm reads BF16, F16 and F32 checkpoints, and FP8 ones (quant_method fp8, or compressed-tensors in float-quantized format)";
    match method {
        "fp8" => match quantization.get("fmt").and_then(Value::as_str) {
            None | Some("e4m3") | Some("float8_e4m3fn") => Ok(()),
            Some(other) => Err(ConvertError::config(
                path,
                format!("quantization_config: FP8 format {other:?} is not supported; {supported}"),
            )),
        },
        "compressed-tensors" => match quantization.get("format").and_then(Value::as_str) {
            Some("float-quantized") | Some("naive-quantized") | None => Ok(()),
            Some(other) => Err(ConvertError::config(
                path,
                format!("quantization_config: compressed-tensors format {other:?} is not supported; {supported}"),
            )),
        },
        other => Err(ConvertError::config(
            path,
            format!("quantization_config: the checkpoint is quantized with {other:?}; {supported}"),
        )),
    }
}

/// GLM rotates the first half of each head unless the config says otherwise.
const DEFAULT_ROTARY_FRACTION: f64 = 0.5;

/// A checkpoint's config.json: the text fields and vision tower read when it is loaded
/// (every conversion needs them), the per-architecture groups when asked for, since a
/// dense model lacks the MoE fields an MoE model requires.
#[derive(Debug, Clone)]
pub struct HfConfig {
    path: PathBuf,
    /// The merged object, kept for the groups only some architectures read.
    root: Value,
    text: TextConfig,
    /// RoPE fields given at the top level.
    rope: RopeSection,
    vision: Option<VisionConfig>,
}

impl HfConfig {
    /// Reads `dir/config.json`; a missing required field or a wrong-typed or zero-sized
    /// value is an error naming the file and the key.
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
        let root = Value::Object(root);
        check_quantization(&path, &root)?;
        let vision = match root.get("vision_config") {
            Some(section @ Value::Object(_)) => Some(keyed::parse(&path, section, "vision_config")?),
            _ => None,
        };
        Ok(Self {
            text: keyed::parse(&path, &root, "")?,
            rope: keyed::parse(&path, &root, "")?,
            vision,
            root,
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `quantization_config.weight_block_size` of an FP8 checkpoint (rows, columns), or
    /// the block structure of compressed-tensors' block strategy.
    pub fn fp8_block_size(&self) -> Result<Option<[usize; 2]>> {
        let Some(quantization) = self.root.get("quantization_config") else {
            return Ok(None);
        };
        let block = quantization.get("weight_block_size").or_else(|| {
            quantization
                .get("config_groups")
                .and_then(Value::as_object)
                .and_then(|groups| groups.values().find_map(|g| g.pointer("/weights/block_structure")))
        });
        match block {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(pair)) if pair.len() == 2 => {
                let size = |v: &Value| v.as_u64().filter(|&n| n > 0).map(|n| n as usize);
                match (size(&pair[0]), size(&pair[1])) {
                    (Some(rows), Some(cols)) => Ok(Some([rows, cols])),
                    _ => Err(self.error("quantization_config: the block size must be two positive integers")),
                }
            }
            Some(_) => Err(self.error("quantization_config: the block size must be two positive integers")),
        }
    }

    pub fn text(&self) -> &TextConfig {
        &self.text
    }

    /// The mixture-of-experts fields; an error names the first missing or invalid one.
    pub fn moe(&self) -> Result<MoeConfig> {
        keyed::parse(&self.path, &self.root, "")
    }

    /// The multi-head latent attention fields.
    pub fn mla(&self) -> Result<MlaConfig> {
        keyed::parse(&self.path, &self.root, "")
    }

    /// `vision_config`, for checkpoints with a vision tower.
    pub fn vision(&self) -> Option<&VisionConfig> {
        self.vision.as_ref()
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

    /// The RoPE sections in the order they are searched.
    fn rope_sections(&self) -> impl Iterator<Item = &RopeSection> {
        [
            Some(&self.rope),
            self.text.rope_parameters.as_ref(),
            self.text.rope_scaling.as_ref(),
        ]
        .into_iter()
        .flatten()
    }

    pub fn rope_theta(&self) -> Option<f64> {
        self.rope_sections().find_map(|s| s.rope_theta)
    }

    /// The fraction of each head that RoPE rotates.
    pub fn rotary_fraction(&self) -> f64 {
        self.rope_sections()
            .find_map(|s| s.partial_rotary_factor)
            .unwrap_or(DEFAULT_ROTARY_FRACTION)
    }

    pub fn mrope_section(&self) -> Option<&[i32]> {
        self.rope_sections().find_map(|s| s.mrope_section.as_deref())
    }

    /// The RoPE scaling section, if the checkpoint declares a non-default one.
    pub fn rope_scaling(&self) -> Option<&RopeSection> {
        [self.text.rope_scaling.as_ref(), self.text.rope_parameters.as_ref()]
            .into_iter()
            .flatten()
            // "mrope" only names the multimodal position layout, not a scaling.
            .find(|s| matches!(s.rope_type.as_deref(), Some(t) if t != "default" && t != "mrope"))
    }

    /// Head dimension: `head_dim` when given, else hidden / heads.
    pub fn head_dim(&self) -> Result<u32> {
        let text = &self.text;
        if let Some(d) = text.head_dim {
            return Ok(d);
        }
        let (hidden, heads) = (text.hidden_size, text.num_attention_heads);
        if !hidden.is_multiple_of(heads) {
            return Err(self.error(format!(
                "hidden_size {hidden} is not divisible by num_attention_heads {heads}"
            )));
        }
        Ok(hidden / heads)
    }
}

/// llama.cpp's `LLAMA_MAX_LAYERS` and `LLAMA_MAX_EXPERTS`.
const MAX_LAYERS: u32 = 512;
const MAX_EXPERTS: u32 = 1024;

impl HfConfig {
    /// Refuses values that cannot make a working model (llama.cpp would abort on them at
    /// load, or compute garbage): heads that key/value heads do not divide, a rotary
    /// fraction outside (0, 1], a non-positive epsilon, more experts used than exist,
    /// more layers than llama.cpp supports. Zero sizes are refused when read.
    pub fn check_ranges(&self) -> Result<()> {
        let text = &self.text;
        let layers = text.num_hidden_layers;
        if layers > MAX_LAYERS {
            return Err(self.error(format!(
                "num_hidden_layers = {layers}: llama.cpp supports at most {MAX_LAYERS}"
            )));
        }
        let h = text.num_attention_heads;
        if let Some(kv) = text.num_key_value_heads {
            if kv > h || !h.is_multiple_of(kv) {
                return Err(self.error(format!(
                    "num_attention_heads = {h} is not a multiple of num_key_value_heads = {kv}"
                )));
            }
        }
        self.check_floats()?;
        // Only the MoE architectures need these fields, and they report a missing or
        // invalid one themselves.
        if let Ok(moe) = self.moe() {
            self.check_moe(&moe)?;
        }
        if let Some(vision) = &self.vision {
            let (d, h) = (vision.hidden_size, vision.num_heads);
            if !d.is_multiple_of(h) {
                return Err(self.error(format!(
                    "vision_config: hidden_size {d} is not divisible by its {h} heads"
                )));
            }
        }
        Ok(())
    }

    fn check_moe(&self, moe: &MoeConfig) -> Result<()> {
        let (all, used) = (moe.n_routed_experts, moe.num_experts_per_tok);
        if all > MAX_EXPERTS {
            return Err(self.error(format!("{all} experts: llama.cpp supports at most {MAX_EXPERTS}")));
        }
        if used > all {
            return Err(self.error(format!("num_experts_per_tok = {used} is more than the {all} experts")));
        }
        let layers = self.text.num_hidden_layers;
        if let Some(dense) = moe.first_k_dense_replace.filter(|&d| d > layers) {
            return Err(self.error(format!(
                "first_k_dense_replace = {dense} is more than the {layers} layers"
            )));
        }
        let f = moe.routed_scaling_factor;
        if !f.is_finite() {
            return Err(self.error(format!("routed_scaling_factor = {f}: must be finite")));
        }
        Ok(())
    }

    fn check_floats(&self) -> Result<()> {
        let eps = self.text.rms_norm_eps;
        if !(eps.is_finite() && eps > 0.0) {
            return Err(self.error(format!("rms_norm_eps = {eps}: must be a small positive number")));
        }
        let f = self.rotary_fraction();
        if !(f > 0.0 && f <= 1.0) {
            return Err(self.error(format!("partial_rotary_factor = {f}: must be in (0, 1]")));
        }
        if let Some(theta) = self.rope_theta() {
            if !(theta.is_finite() && theta > 0.0) {
                return Err(self.error(format!("rope_theta = {theta}: must be positive")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A minimal dense config with `edit` applied, loaded from a temporary folder.
    fn load(edit: impl FnOnce(&mut Value)) -> (tempfile::TempDir, Result<HfConfig>) {
        let mut config = json!({
            "architectures": ["Glm4ForCausalLM"],
            "hidden_size": 128,
            "intermediate_size": 256,
            "max_position_embeddings": 2048,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "rms_norm_eps": 1e-5,
        });
        edit(&mut config);
        let dir = tempfile::tempdir().expect("temporary folder");
        std::fs::write(dir.path().join("config.json"), config.to_string()).expect("write config");
        let loaded = HfConfig::load(dir.path());
        (dir, loaded)
    }

    fn error_of(edit: impl FnOnce(&mut Value)) -> String {
        let (dir, loaded) = load(edit);
        let message = loaded.expect_err("config should be refused").to_string();
        let file = dir.path().join("config.json");
        assert!(message.starts_with(&format!("{}: ", file.display())), "{message}");
        message
    }

    #[test]
    fn alias_reads_the_same_field() {
        let (_dir, config) = load(|c| {
            c.as_object_mut().expect("object").remove("num_hidden_layers");
            c["num_layers"] = json!(3);
        });
        assert_eq!(config.expect("loads").text().num_hidden_layers, 3);
    }

    #[test]
    fn canonical_name_wins_over_its_alias_in_either_order() {
        let (_dir, config) = load(|c| c["num_layers"] = json!(7));
        assert_eq!(config.expect("loads").text().num_hidden_layers, 2);
        let (_dir, config) = load(|c| {
            c["rope_scaling"] = json!({"rope_type": "yarn", "type": "linear", "factor": 4.0});
        });
        let config = config.expect("loads");
        let scaling = config.rope_scaling().expect("a scaling");
        assert_eq!(scaling.rope_type.as_deref(), Some("yarn"));
        let (_dir, config) =
            load(|c| c["rope_scaling"] = json!({"type": "linear", "rope_type": "yarn", "factor": 4.0}));
        assert_eq!(
            config
                .expect("loads")
                .rope_scaling()
                .and_then(|s| s.rope_type.clone())
                .as_deref(),
            Some("yarn")
        );
    }

    #[test]
    fn absent_and_null_fields_take_their_defaults() {
        let (_dir, config) = load(|c| c["tie_word_embeddings"] = Value::Null);
        let config = config.expect("loads");
        assert!(!config.text().tie_word_embeddings);
        assert_eq!(config.text().num_nextn_predict_layers, 0);
        assert_eq!(config.rotary_fraction(), DEFAULT_ROTARY_FRACTION);
        assert_eq!(config.head_dim().expect("head_dim"), 32);
        let (_dir, config) = load(|c| {
            c["n_routed_experts"] = json!(8);
            c["num_experts_per_tok"] = json!(2);
            c["moe_intermediate_size"] = json!(64);
        });
        let moe = config.expect("loads").moe().expect("MoE fields");
        assert_eq!(
            (moe.routed_scaling_factor, moe.norm_topk_prob, moe.n_shared_experts),
            (1.0, true, 0)
        );
    }

    #[test]
    fn rope_fields_are_found_under_rope_parameters() {
        let (_dir, config) = load(|c| {
            c["rope_parameters"] = json!({"rope_theta": 5e5, "partial_rotary_factor": 1.0, "mrope_section": [2, 3, 3]});
        });
        let config = config.expect("loads");
        assert_eq!(config.rope_theta(), Some(5e5));
        assert_eq!(config.rotary_fraction(), 1.0);
        assert_eq!(config.mrope_section(), Some(&[2, 3, 3][..]));
        // transformers 5's "default" type is no scaling.
        assert!(config.rope_scaling().is_none());
        let (_dir, config) = load(|c| {
            c["rope_theta"] = json!(1e4);
            c["rope_parameters"] = json!({"rope_theta": 5e5});
        });
        assert_eq!(config.expect("loads").rope_theta(), Some(1e4));
    }

    #[test]
    fn text_config_wins_over_the_top_level() {
        let (_dir, config) = load(|c| {
            c["text_config"] = json!({"hidden_size": 256, "eos_token_id": [1, 2], "pad_token_id": 5});
            c["vision_config"] = json!({
                "depth": 2, "hidden_size": 32, "num_heads": 2, "intermediate_size": 64,
                "patch_size": 14, "image_size": 56,
            });
        });
        let config = config.expect("loads");
        assert_eq!(config.text().hidden_size, 256);
        assert_eq!(config.text().num_attention_heads, 4);
        // Several EOS ids name no single one.
        assert_eq!(
            (config.text().token_id("eos"), config.text().token_id("pad")),
            (None, Some(5))
        );
        let vision = config.vision().expect("a vision tower");
        assert_eq!(
            (vision.depth, vision.hidden_act.as_str(), vision.rms_norm_eps),
            (2, "silu", 1e-5)
        );
    }

    #[test]
    fn errors_name_the_file_the_key_and_the_value() {
        let message = error_of(|c| c["num_hidden_layers"] = json!("x"));
        assert!(
            message.ends_with("`num_hidden_layers` must be a non-negative integer, found \"x\""),
            "{message}"
        );
        let message = error_of(|c| {
            c.as_object_mut().expect("object").remove("num_hidden_layers");
            c["num_layers"] = json!(-1);
        });
        assert!(
            message.ends_with("`num_layers` must be a non-negative integer, found -1"),
            "{message}"
        );
        let message = error_of(|c| c["num_attention_heads"] = json!(4294967296u64));
        assert!(
            message.ends_with("`num_attention_heads` = 4294967296 is too large"),
            "{message}"
        );
        let message = error_of(|c| c["rope_parameters"] = json!({"rope_theta": "big"}));
        assert!(
            message.ends_with("`rope_parameters.rope_theta` must be a number, found \"big\""),
            "{message}"
        );
        let message = error_of(|c| c["head_dim"] = json!(0));
        assert!(message.ends_with("`head_dim` is 0"), "{message}");
        let message = error_of(|c| {
            c.as_object_mut().expect("object").remove("hidden_size");
        });
        assert!(message.ends_with("missing required field `hidden_size`"), "{message}");
        let message = error_of(|c| c["vision_config"] = json!({"depth": true}));
        assert!(
            message.ends_with("`vision_config.depth` must be a non-negative integer, found true"),
            "{message}"
        );
        let message = error_of(|c| c["vision_config"] = json!({"depth": 2}));
        assert!(
            message.ends_with("missing required field `vision_config.hidden_size`"),
            "{message}"
        );
    }

    #[test]
    fn missing_group_fields_are_reported_when_asked_for() {
        let (dir, config) = load(|_| {});
        let config = config.expect("a dense config loads");
        let message = config.moe().expect_err("no MoE fields").to_string();
        let file = dir.path().join("config.json");
        assert_eq!(
            message,
            format!("{}: missing required field `n_routed_experts`", file.display())
        );
        config.check_ranges().expect("dense config in range");
    }

    #[test]
    fn ranges_are_checked_on_typed_values() {
        let (_dir, config) = load(|c| c["num_key_value_heads"] = json!(3));
        let message = config
            .expect("loads")
            .check_ranges()
            .expect_err("3 kv heads")
            .to_string();
        assert!(message.contains("num_key_value_heads = 3"), "{message}");
        let (_dir, config) = load(|c| {
            c["n_routed_experts"] = json!(8);
            c["num_experts_per_tok"] = json!(9);
            c["moe_intermediate_size"] = json!(64);
        });
        let message = config.expect("loads").check_ranges().expect_err("9 of 8").to_string();
        assert!(message.contains("num_experts_per_tok = 9"), "{message}");
    }
}
