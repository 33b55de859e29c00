//! One module per GLM architecture, behind the [`Architecture`] trait, registered by the
//! Hugging Face `architectures` name.

mod glm;
mod glm4;

use crate::checkpoint::Checkpoint;
use crate::config::HfConfig;
use crate::error::{ConvertError, Result};
use crate::gguf::Metadata;
use crate::tokenizer::SpecialTokens;

/// What becomes of one checkpoint tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TensorRole {
    /// Written under this GGUF name, data unchanged (only the shape list is reversed).
    Rename(String),
    /// Not part of the text model (rotary caches, tied heads, vision tower).
    Skip,
}

/// One tensor of the output file and the checkpoint tensors its rows come from, in order.
#[derive(Debug, Clone)]
pub struct PlannedTensor {
    pub name: String,
    pub sources: Vec<String>,
    /// ggml order: `ne[0]` is the contiguous dimension.
    pub ne: Vec<u64>,
}

pub trait Architecture: Sync {
    /// The Hugging Face `architectures[0]` value this module converts.
    fn hf_name(&self) -> &'static str;

    /// `general.architecture` in the GGUF, i.e. the llama.cpp model it runs as.
    fn gguf_arch(&self) -> &'static str;

    /// Writes the `<arch>.*` hyper-parameter keys.
    fn write_hparams(&self, config: &HfConfig, meta: &mut Metadata) -> Result<()>;

    /// Maps a checkpoint tensor; `None` means the tensor is not expected here.
    fn tensor_role(&self, config: &HfConfig, hf_name: &str) -> Option<TensorRole>;

    /// Token roles llama.cpp expects for this architecture, by token text.
    fn special_tokens(&self) -> SpecialTokens;

    /// The output tensors. By default one per kept checkpoint tensor, in checkpoint order.
    fn plan(&self, config: &HfConfig, checkpoint: &Checkpoint) -> Result<Vec<PlannedTensor>> {
        let mut planned = Vec::new();
        for entry in checkpoint.entries() {
            match self.tensor_role(config, &entry.name) {
                Some(TensorRole::Rename(name)) => planned.push(PlannedTensor {
                    name,
                    sources: vec![entry.name.clone()],
                    ne: entry.shape.iter().rev().map(|&d| d as u64).collect(),
                }),
                Some(TensorRole::Skip) => {}
                None => {
                    return Err(ConvertError::tensor(
                        &entry.name,
                        format!(
                            "unexpected in a {} checkpoint (file {})",
                            self.hf_name(),
                            checkpoint.shard_path(entry).display()
                        ),
                    ))
                }
            }
        }
        Ok(planned)
    }
}

static ARCHITECTURES: &[&dyn Architecture] = &[&glm::Glm, &glm4::Glm4];

pub fn find(hf_name: &str) -> Option<&'static dyn Architecture> {
    ARCHITECTURES
        .iter()
        .copied()
        .find(|a| a.hf_name() == hf_name)
}

pub fn supported() -> Vec<&'static str> {
    ARCHITECTURES.iter().map(|a| a.hf_name()).collect()
}

/// Splits `model.layers.{i}.{rest}` (also under `model.language_model.`) into `(i, rest)`.
pub(crate) fn layer_tensor(hf_name: &str) -> Option<(u32, &str)> {
    let rest = hf_name
        .strip_prefix("model.layers.")
        .or_else(|| hf_name.strip_prefix("model.language_model.layers."))?;
    let (index, rest) = rest.split_once('.')?;
    Some((index.parse().ok()?, rest))
}

/// Strips the multimodal `language_model.` level so text names look the same everywhere.
pub(crate) fn text_name(hf_name: &str) -> String {
    hf_name.replacen("model.language_model.", "model.", 1)
}

/// Tensors every GLM text model has outside its layers.
pub(crate) fn global_tensor_role(config: &HfConfig, hf_name: &str) -> Option<TensorRole> {
    let name = text_name(hf_name);
    let gguf = match name.as_str() {
        "model.embed_tokens.weight" => "token_embd.weight",
        "model.norm.weight" => "output_norm.weight",
        "lm_head.weight" if config.tie_word_embeddings() => return Some(TensorRole::Skip),
        "lm_head.weight" => "output.weight",
        _ if name.ends_with("rotary_emb.inv_freq") => return Some(TensorRole::Skip),
        _ => return None,
    };
    Some(TensorRole::Rename(gguf.to_owned()))
}

/// Attention and MLP tensors shared by the dense GLM blocks (chatglm and glm4 layouts).
pub(crate) fn dense_block_tensor(rest: &str) -> Option<&'static str> {
    Some(match rest {
        "input_layernorm.weight" => "attn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.q_proj.bias" => "attn_q.bias",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.k_proj.bias" => "attn_k.bias",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.v_proj.bias" => "attn_v.bias",
        "self_attn.o_proj.weight" => "attn_output.weight",
        // Kept fused: llama.cpp's SwiGLU takes gate from the first half of ffn_up.
        "mlp.gate_up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        _ => return None,
    })
}

/// Keys common to the dense GLM architectures (chatglm, glm4).
pub(crate) fn write_dense_hparams(
    arch: &str,
    config: &HfConfig,
    meta: &mut Metadata,
) -> Result<()> {
    let key = |k: &str| format!("{arch}.{k}");
    meta.set(
        key("context_length"),
        config.u32(&["max_position_embeddings", "seq_length"])?,
    );
    meta.set(key("embedding_length"), config.u32(&["hidden_size"])?);
    meta.set(
        key("block_count"),
        config.u32(&["num_hidden_layers", "num_layers"])?,
    );
    meta.set(
        key("feed_forward_length"),
        config.u32(&["intermediate_size", "ffn_hidden_size"])?,
    );
    let heads = config.u32(&["num_attention_heads"])?;
    meta.set(key("attention.head_count"), heads);
    let kv_heads = config
        .opt_u32(&["num_key_value_heads", "multi_query_group_num"])?
        .unwrap_or(heads);
    meta.set(key("attention.head_count_kv"), kv_heads);
    meta.set(
        key("attention.layer_norm_rms_epsilon"),
        config.f64(&["rms_norm_eps", "layernorm_epsilon"])? as f32,
    );
    let head_dim = config.head_dim()?;
    if config.opt_u64(&["head_dim"])?.is_some() {
        let d = u32::try_from(head_dim).map_err(|_| config.error("head_dim too large"))?;
        meta.set(key("attention.key_length"), d);
        meta.set(key("attention.value_length"), d);
    }
    // GLM rotates the first half of each head unless the config says otherwise.
    let factor = config.rope_f64("partial_rotary_factor")?.unwrap_or(0.5);
    meta.set(
        key("rope.dimension_count"),
        (head_dim as f64 * factor).round() as u32,
    );
    if let Some(theta) = config.rope_f64("rope_theta")? {
        meta.set(key("rope.freq_base"), theta as f32);
    }
    write_rope_scaling(arch, config, meta)
}

/// Linear and YaRN context extension, when a checkpoint declares one.
pub(crate) fn write_rope_scaling(arch: &str, config: &HfConfig, meta: &mut Metadata) -> Result<()> {
    let Some(scaling) = config.rope_scaling() else {
        return Ok(());
    };
    let kind = scaling
        .get("rope_type")
        .or_else(|| scaling.get("type"))
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    let number = |k: &str| scaling.get(k).and_then(|v| v.as_f64());
    let factor = number("factor")
        .ok_or_else(|| config.error(format!("rope scaling {kind:?} has no `factor`")))?;
    match kind {
        "linear" => {
            meta.set(format!("{arch}.rope.scaling.type"), "linear");
            meta.set(format!("{arch}.rope.scaling.factor"), factor as f32);
        }
        "yarn" => {
            meta.set(format!("{arch}.rope.scaling.type"), "yarn");
            meta.set(format!("{arch}.rope.scaling.factor"), factor as f32);
            if let Some(n) = number("original_max_position_embeddings") {
                meta.set(
                    format!("{arch}.rope.scaling.original_context_length"),
                    n as u32,
                );
            }
            for (hf, gguf) in [
                ("beta_fast", "rope.scaling.yarn_beta_fast"),
                ("beta_slow", "rope.scaling.yarn_beta_slow"),
            ] {
                if let Some(v) = number(hf) {
                    meta.set(format!("{arch}.{gguf}"), v as f32);
                }
            }
        }
        other => return Err(config.error(format!("rope scaling type {other:?} is not supported"))),
    }
    Ok(())
}
