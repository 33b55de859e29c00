//! One module per GLM architecture, behind the [`Architecture`] trait, registered by the
//! Hugging Face `architectures` name.

mod glm;
mod glm4;
mod glm4moe;
mod glm4moe_lite;
mod moe;

use std::collections::BTreeMap;
use std::ops::Range;

use crate::checkpoint::{Checkpoint, TensorEntry};
use crate::config::HfConfig;
use crate::error::{ConvertError, Result};
use crate::gguf::Metadata;
use crate::tokenizer::SpecialTokens;

/// Choices that change which tensors a file holds.
#[derive(Debug, Clone, Copy)]
pub struct PlanOptions {
    /// Keep multi-token-prediction (NextN) layers (llama.cpp's default).
    pub keep_mtp: bool,
    /// Convert weights that hold NaN or infinite values instead of refusing them.
    pub allow_nonfinite: bool,
}

impl Default for PlanOptions {
    fn default() -> Self {
        Self {
            keep_mtp: true,
            allow_nonfinite: false,
        }
    }
}

/// Which projection of a routed expert a tensor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ExpertProjection {
    Gate,
    Up,
    Down,
}

impl ExpertProjection {
    fn gguf_name(self, layer: u32) -> String {
        let kind = match self {
            ExpertProjection::Gate => "gate",
            ExpertProjection::Up => "up",
            ExpertProjection::Down => "down",
        };
        format!("blk.{layer}.ffn_{kind}_exps.weight")
    }
}

/// What becomes of one checkpoint tensor.
#[derive(Debug, Clone)]
pub enum TensorRole {
    /// Written under this GGUF name, data unchanged (only the shape list is reversed).
    Rename(String),
    /// Not part of the file (rotary caches, tied heads, vision tower, dropped MTP layers).
    Skip,
    /// One routed expert's matrix, stacked with its siblings into a 3-D tensor.
    Expert {
        layer: u32,
        expert: u32,
        projection: ExpertProjection,
    },
    /// Output tensors built from parts of this one (split, transposed, re-sliced).
    Derived(Vec<PlannedTensor>),
}

/// A run of rows of a checkpoint tensor viewed as 2-D `[rows, row_len]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceSlice {
    pub tensor: String,
    /// `None` means every row.
    pub rows: Option<Range<usize>>,
    /// Write the selected block transposed (its rows become columns).
    pub transpose: bool,
    /// `rows` counts single elements of a vector (for re-ordering biases).
    pub elements: bool,
}

impl SourceSlice {
    pub fn whole(tensor: &str) -> Self {
        Self {
            tensor: tensor.to_owned(),
            rows: None,
            transpose: false,
            elements: false,
        }
    }

    pub fn rows(tensor: &str, rows: Range<usize>) -> Self {
        Self {
            tensor: tensor.to_owned(),
            rows: Some(rows),
            transpose: false,
            elements: false,
        }
    }

    pub fn elements(tensor: &str, elements: Range<usize>) -> Self {
        Self {
            elements: true,
            ..Self::rows(tensor, elements)
        }
    }
}

/// One tensor of the output file and the checkpoint rows it is made of, in order.
#[derive(Debug, Clone)]
pub struct PlannedTensor {
    pub name: String,
    pub sources: Vec<SourceSlice>,
    /// ggml order: `ne[0]` is the contiguous dimension.
    pub ne: Vec<u64>,
}

/// Trunk and multi-token-prediction layer counts of the planned file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LayerCounts {
    pub trunk: u32,
    pub mtp: u32,
}

pub trait Architecture: Sync {
    /// The Hugging Face `architectures[0]` value this module converts.
    fn hf_name(&self) -> &'static str;

    /// `general.architecture` in the GGUF, i.e. the llama.cpp model it runs as.
    fn gguf_arch(&self) -> &'static str;

    /// Writes the `<arch>.*` hyper-parameter keys.
    fn write_hparams(&self, config: &HfConfig, layers: LayerCounts, meta: &mut Metadata) -> Result<()>;

    /// Maps a checkpoint tensor; `None` means the tensor is not expected here.
    fn tensor_role(&self, config: &HfConfig, entry: &TensorEntry, options: &PlanOptions) -> Result<Option<TensorRole>>;

    /// Token roles llama.cpp expects for this architecture, by token text.
    fn special_tokens(&self) -> SpecialTokens;

    /// Routed experts per MoE layer (0 for dense architectures).
    fn expert_count(&self, _config: &HfConfig) -> Result<u32> {
        Ok(0)
    }

    /// The output tensors, in llama.cpp's usual file order.
    fn plan(&self, config: &HfConfig, checkpoint: &Checkpoint, options: &PlanOptions) -> Result<Vec<PlannedTensor>> {
        let mut planned = Vec::new();
        let mut experts: BTreeMap<(u32, ExpertProjection), Vec<(u32, &TensorEntry)>> = BTreeMap::new();
        for entry in checkpoint.entries() {
            match self.tensor_role(config, entry, options)? {
                Some(TensorRole::Rename(name)) => planned.push(PlannedTensor {
                    name,
                    sources: vec![SourceSlice::whole(&entry.name)],
                    ne: entry.ne(),
                }),
                Some(TensorRole::Skip) => {}
                Some(TensorRole::Expert {
                    layer,
                    expert,
                    projection,
                }) => {
                    experts.entry((layer, projection)).or_default().push((expert, entry));
                }
                Some(TensorRole::Derived(parts)) => planned.extend(parts),
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
        let expected = self.expert_count(config)?;
        for ((layer, projection), members) in experts {
            planned.push(moe::stack_experts(projection.gguf_name(layer), members, expected)?);
        }
        planned.sort_by_cached_key(|t| file_order(&t.name));
        Ok(planned)
    }
}

static ARCHITECTURES: &[&dyn Architecture] = &[
    &glm::GLM,
    &glm4::GLM4,
    &glm4::GLM4V,
    &glm4moe::Glm4Moe { vision: false },
    &glm4moe::Glm4Moe { vision: true },
    &glm4moe_lite::Glm4MoeLite,
];

pub fn find(hf_name: &str) -> Option<&'static dyn Architecture> {
    ARCHITECTURES.iter().copied().find(|a| a.hf_name() == hf_name)
}

pub fn supported() -> Vec<&'static str> {
    ARCHITECTURES.iter().map(|a| a.hf_name()).collect()
}

/// Counts the trunk and the kept MTP layers of a plan: blocks numbered at or beyond the
/// config's `num_hidden_layers` are NextN layers.
pub fn layer_counts(config: &HfConfig, planned: &[PlannedTensor]) -> Result<LayerCounts> {
    let trunk = config.text().num_hidden_layers;
    let mut trunk_layers = std::collections::BTreeSet::new();
    let mut mtp_layers = std::collections::BTreeSet::new();
    for t in planned {
        if let Some(layer) = t
            .name
            .strip_prefix("blk.")
            .and_then(|r| r.split('.').next())
            .and_then(|n| n.parse::<u32>().ok())
        {
            if layer >= trunk {
                mtp_layers.insert(layer);
            } else {
                trunk_layers.insert(layer);
            }
        }
    }
    // A layer count that disagrees with the weights gives a file llama.cpp cannot load.
    if let Some(missing) = (0..trunk).find(|l| !trunk_layers.contains(l)) {
        return Err(config.error(format!(
            "num_hidden_layers = {trunk}, but the checkpoint has no weights for layer {missing}"
        )));
    }
    let declared_mtp = config.text().num_nextn_predict_layers;
    if mtp_layers.len() as u32 > declared_mtp {
        return Err(config.error(format!(
            "num_hidden_layers = {trunk}, but the checkpoint has weights for {} more layers",
            mtp_layers.len() as u32 - declared_mtp
        )));
    }
    Ok(LayerCounts {
        trunk,
        mtp: mtp_layers.len() as u32,
    })
}

/// The order llama.cpp's own converter uses: embeddings, then blocks by layer number,
/// then the output head. Only readability depends on it (`glm inspect`).
pub(crate) fn file_order(gguf_name: &str) -> (u8, u32, String) {
    if let Some(rest) = gguf_name.strip_prefix("blk.") {
        let layer = rest.split('.').next().and_then(|n| n.parse().ok()).unwrap_or(u32::MAX);
        return (1, layer, gguf_name.to_owned());
    }
    let group = match gguf_name {
        n if n.starts_with("token_embd") => 0,
        n if n.starts_with("output_norm") => 2,
        n if n.starts_with("output") => 3,
        _ => 4,
    };
    (group, 0, gguf_name.to_owned())
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
/// `vision`: the checkpoint also holds a vision tower, which the text file leaves out.
pub(crate) fn global_tensor_role(config: &HfConfig, hf_name: &str, vision: bool) -> Option<TensorRole> {
    if vision && is_vision_tensor(hf_name) {
        return Some(TensorRole::Skip);
    }
    let name = text_name(hf_name);
    let gguf = match name.as_str() {
        "model.embed_tokens.weight" => "token_embd.weight",
        "model.norm.weight" => "output_norm.weight",
        "lm_head.weight" if config.text().tie_word_embeddings => return Some(TensorRole::Skip),
        "lm_head.weight" => "output.weight",
        _ if name.ends_with("rotary_emb.inv_freq") => return Some(TensorRole::Skip),
        _ => return None,
    };
    Some(TensorRole::Rename(gguf.to_owned()))
}

/// The dense GLM architectures (chatglm, glm4): same attention and fused MLP, different
/// norm names and token roles, so each is a value of this one type (in its own file).
pub struct DenseGlm {
    pub hf_name: &'static str,
    pub gguf_arch: &'static str,
    /// HF norm names below the layer → GGUF names below `blk.N.`.
    pub norms: &'static [(&'static str, &'static str)],
    pub special_tokens: SpecialTokens,
    /// The text half of a vision-language checkpoint (GLM-4.1V): M-RoPE sections, and
    /// q/k rows re-ordered from interleaved to NeoX rotation, which llama.cpp's M-RoPE uses.
    pub vision: bool,
}

impl Architecture for DenseGlm {
    fn hf_name(&self) -> &'static str {
        self.hf_name
    }

    fn gguf_arch(&self) -> &'static str {
        self.gguf_arch
    }

    fn write_hparams(&self, config: &HfConfig, layers: LayerCounts, meta: &mut Metadata) -> Result<()> {
        write_common_hparams(self.gguf_arch, config, layers, meta)?;
        write_gqa_hparams(self.gguf_arch, config, false, meta)?;
        if self.vision {
            write_mrope_sections(self.gguf_arch, config, meta)?;
        }
        Ok(())
    }

    fn tensor_role(&self, config: &HfConfig, entry: &TensorEntry, _: &PlanOptions) -> Result<Option<TensorRole>> {
        if let Some(role) = global_tensor_role(config, &entry.name, self.vision) {
            return Ok(Some(role));
        }
        let Some((layer, rest)) = layer_tensor(&entry.name) else {
            return Ok(None);
        };
        if rest.ends_with("rotary_emb.inv_freq") {
            return Ok(Some(TensorRole::Skip));
        }
        if self.vision {
            if let Some(name) = rest
                .strip_prefix("self_attn.")
                .filter(|r| r.starts_with("q_proj.") || r.starts_with("k_proj."))
            {
                let gguf = format!("blk.{layer}.attn_{}", &name[..1]) + &name[6..];
                return Ok(Some(TensorRole::Derived(vec![neox_rows(config, entry, gguf)?])));
            }
        }
        let norm = self.norms.iter().find(|(hf, _)| *hf == rest).map(|(_, gguf)| *gguf);
        Ok(norm
            .or_else(|| dense_block_tensor(rest))
            .map(|gguf| TensorRole::Rename(format!("blk.{layer}.{gguf}"))))
    }

    fn special_tokens(&self) -> SpecialTokens {
        self.special_tokens
    }
}

fn is_vision_tensor(name: &str) -> bool {
    name.starts_with("model.visual.") || name.starts_with("visual.")
}

/// `mrope_section` padded to the four sections llama.cpp reads; with it llama.cpp runs
/// the text model with multimodal RoPE, which image positions need.
pub(crate) fn write_mrope_sections(arch: &str, config: &HfConfig, meta: &mut Metadata) -> Result<()> {
    let sections = config
        .mrope_section()
        .ok_or_else(|| config.error("no `mrope_section` in rope_parameters or rope_scaling"))?;
    if sections.is_empty() || sections.len() > 4 {
        return Err(config.error(format!("`mrope_section` {sections:?} must have 1 to 4 entries")));
    }
    let mut padded = sections.to_vec();
    padded.resize(4, 0);
    meta.set(
        format!("{arch}.rope.dimension_sections"),
        crate::gguf::MetaValue::from(padded),
    );
    Ok(())
}

/// A q or k projection (weight rows, or bias elements) with each head's rotated part
/// re-ordered from interleaved pairs to halves: [0, 2, 4, …, 1, 3, 5, …], the rest as is.
fn neox_rows(config: &HfConfig, entry: &TensorEntry, gguf: String) -> Result<PlannedTensor> {
    let head_dim = config.head_dim()? as usize;
    let rotated = (head_dim as f64 * config.rotary_fraction()).round() as usize;
    let rows = entry.shape[0];
    if !rotated.is_multiple_of(2) || rotated > head_dim || !rows.is_multiple_of(head_dim) {
        return Err(ConvertError::tensor(
            &entry.name,
            format!("cannot re-order {rows} rows in heads of {head_dim} with {rotated} rotated"),
        ));
    }
    let is_bias = entry.shape.len() == 1;
    let slice = |range: Range<usize>| {
        if is_bias {
            SourceSlice::elements(&entry.name, range)
        } else {
            SourceSlice::rows(&entry.name, range)
        }
    };
    let mut sources = Vec::new();
    for head in (0..rows).step_by(head_dim) {
        let order = (0..rotated).step_by(2).chain((1..rotated).step_by(2));
        sources.extend(order.map(|r| slice(head + r..head + r + 1)));
        if rotated < head_dim {
            sources.push(slice(head + rotated..head + head_dim));
        }
    }
    Ok(PlannedTensor {
        name: gguf,
        sources,
        ne: entry.ne(),
    })
}

/// Attention and MLP tensors shared by the dense GLM blocks (chatglm and glm4 layouts).
pub(crate) fn dense_block_tensor(rest: &str) -> Option<&'static str> {
    if let Some(name) = gqa_attention_tensor(rest) {
        return Some(name);
    }
    Some(match rest {
        // Kept fused: llama.cpp's SwiGLU takes gate from the first half of ffn_up.
        "mlp.gate_up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        _ => return None,
    })
}

/// Grouped-query attention tensors (chatglm, glm4, glm4moe).
pub(crate) fn gqa_attention_tensor(rest: &str) -> Option<&'static str> {
    Some(match rest {
        "input_layernorm.weight" => "attn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.q_proj.bias" => "attn_q.bias",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.k_proj.bias" => "attn_k.bias",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.v_proj.bias" => "attn_v.bias",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "self_attn.q_norm.weight" => "attn_q_norm.weight",
        "self_attn.k_norm.weight" => "attn_k_norm.weight",
        _ => return None,
    })
}

/// Keys every GLM text model has: sizes, depth (trunk + kept NextN layers), norm
/// epsilon and RoPE base/scaling.
pub(crate) fn write_common_hparams(
    arch: &str,
    config: &HfConfig,
    layers: LayerCounts,
    meta: &mut Metadata,
) -> Result<()> {
    let key = |k: &str| format!("{arch}.{k}");
    let text = config.text();
    meta.set(key("context_length"), text.max_position_embeddings);
    meta.set(key("embedding_length"), text.hidden_size);
    meta.set(key("block_count"), layers.trunk + layers.mtp);
    if layers.mtp > 0 {
        meta.set(key("nextn_predict_layers"), layers.mtp);
    }
    meta.set(key("feed_forward_length"), text.intermediate_size);
    meta.set(key("attention.layer_norm_rms_epsilon"), text.rms_norm_eps as f32);
    if let Some(theta) = config.rope_theta() {
        meta.set(key("rope.freq_base"), theta as f32);
    }
    write_rope_scaling(arch, config, meta)
}

/// Grouped-query attention keys (chatglm, glm4, glm4moe): heads, head size and the
/// partial rotary width. `always_head_dim` writes key/value lengths even when the config
/// leaves head_dim implicit (glm4moe's head_dim is not hidden/heads).
pub(crate) fn write_gqa_hparams(
    arch: &str,
    config: &HfConfig,
    always_head_dim: bool,
    meta: &mut Metadata,
) -> Result<()> {
    let key = |k: &str| format!("{arch}.{k}");
    let text = config.text();
    let heads = text.num_attention_heads;
    meta.set(key("attention.head_count"), heads);
    meta.set(
        key("attention.head_count_kv"),
        text.num_key_value_heads.unwrap_or(heads),
    );
    let head_dim = config.head_dim()?;
    if always_head_dim || text.head_dim.is_some() {
        meta.set(key("attention.key_length"), head_dim);
        meta.set(key("attention.value_length"), head_dim);
    }
    let rotated = f64::from(head_dim) * config.rotary_fraction();
    meta.set(key("rope.dimension_count"), rotated.round() as u32);
    Ok(())
}

/// Linear and YaRN context extension, when a checkpoint declares one.
pub(crate) fn write_rope_scaling(arch: &str, config: &HfConfig, meta: &mut Metadata) -> Result<()> {
    let Some(scaling) = config.rope_scaling() else {
        return Ok(());
    };
    let kind = scaling.rope_type.as_deref().unwrap_or_default();
    let factor = scaling
        .factor
        .ok_or_else(|| config.error(format!("rope scaling {kind:?} has no `factor`")))?;
    match kind {
        "linear" => {
            meta.set(format!("{arch}.rope.scaling.type"), "linear");
            meta.set(format!("{arch}.rope.scaling.factor"), factor as f32);
        }
        "yarn" => {
            meta.set(format!("{arch}.rope.scaling.type"), "yarn");
            meta.set(format!("{arch}.rope.scaling.factor"), factor as f32);
            if let Some(n) = scaling.original_max_position_embeddings {
                meta.set(format!("{arch}.rope.scaling.original_context_length"), n);
            }
            for (value, gguf) in [
                (scaling.beta_fast, "rope.scaling.yarn_beta_fast"),
                (scaling.beta_slow, "rope.scaling.yarn_beta_slow"),
            ] {
                if let Some(v) = value {
                    meta.set(format!("{arch}.{gguf}"), v as f32);
                }
            }
        }
        other => return Err(config.error(format!("rope scaling type {other:?} is not supported"))),
    }
    Ok(())
}
