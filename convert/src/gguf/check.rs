//! What a structurally valid GGUF must also say before llama.cpp may load it: the
//! hyper-parameters and token ids that llama.cpp trusts and would abort on (or compute
//! garbage with) when they are out of range.

use super::read::GgufHeader;
use super::{ArrayValue, MetaValue};

/// llama.cpp's `LLAMA_MAX_LAYERS` and `LLAMA_MAX_EXPERTS`.
const MAX_LAYERS: u64 = 512;
const MAX_EXPERTS: u64 = 1024;

/// Checks a model GGUF (not a projector) before llama.cpp loads it.
pub fn check_model(h: &GgufHeader) -> Result<(), String> {
    let arch = h
        .architecture()
        .filter(|a| !a.is_empty())
        .ok_or("no general.architecture: not a model file")?;
    if arch == "clip" {
        return Err("this is a vision projector (mmproj), not a model; pass it with --mmproj".into());
    }
    let p = Hparams { h, arch };
    let layers = p.uint("block_count")?.ok_or_else(|| p.missing("block_count"))?;
    if layers == 0 || layers > MAX_LAYERS {
        return Err(format!("{arch}.block_count = {layers}: must be 1 to {MAX_LAYERS}"));
    }
    let embd = p
        .uint("embedding_length")?
        .ok_or_else(|| p.missing("embedding_length"))?;
    p.positive("embedding_length", embd)?;
    if let Some(ctx) = p.uint("context_length")? {
        p.positive("context_length", ctx)?;
    }
    check_heads(&p, layers, embd)?;
    check_experts(&p, layers)?;
    for key in [
        "attention.layer_norm_rms_epsilon",
        "attention.layer_norm_epsilon",
        "rope.freq_base",
        "rope.scaling.factor",
    ] {
        if let Some(v) = p.float(key)? {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("{arch}.{key} = {v}: must be a positive number"));
            }
        }
    }
    if let Some(gating) = p.uint("expert_gating_func")?.filter(|&g| g > MAX_GATING_FUNC) {
        return Err(format!(
            "{arch}.expert_gating_func = {gating} is not a gating function llama.cpp knows"
        ));
    }
    check_rope_sections(&p)?;
    let vocab = check_vocabulary(h)?;
    // A file without tensors holds a vocabulary only (as llama.cpp's ggml-vocab-*.gguf,
    // or `glm tokenize` of a checkpoint folder): its tokenizer loads, and llama.cpp
    // itself refuses it as a model (missing tensors).
    if !h.tensors.is_empty() {
        check_tensors(h, layers, embd, vocab)?;
    }
    check_tensor_types(h)?;
    check_layer_shapes(&p, layers, embd)
}

/// llama.cpp's gating functions are numbered 0 to 4; it aborts on any other.
const MAX_GATING_FUNC: u64 = 4;

/// M-RoPE sections split the rotary dimensions: together at most half of them.
fn check_rope_sections(p: &Hparams) -> Result<(), String> {
    let key = p.key("rope.dimension_sections");
    let Some(value) = p.h.get(&key) else {
        return Ok(());
    };
    let sections = match value {
        MetaValue::Array(a) => a.integers(),
        _ => None,
    }
    .ok_or_else(|| format!("{key} must be a list of integers"))?;
    if sections.len() > 4 || sections.iter().any(|&s| s < 0) {
        return Err(format!("{key} must hold at most four non-negative sizes"));
    }
    let sum: i128 = sections.iter().sum();
    if let Some(rope) = p.uint("rope.dimension_count")? {
        if sum * 2 > i128::from(rope) {
            return Err(format!(
                "{key} covers {sum} pairs, more than the {rope} rotary dimensions hold"
            ));
        }
    }
    Ok(())
}

/// Matrices must be of a type ggml can multiply: not the integer types, F64, or the
/// internal Q8_1/Q8_K activation formats (ggml aborts on them mid-computation).
fn check_tensor_types(h: &GgufHeader) -> Result<(), String> {
    use crate::tensor_type::GgmlType as T;
    for (t, _) in &h.tensors {
        if matches!(
            t.ggml_type,
            T::I8 | T::I16 | T::I32 | T::I64 | T::F64 | T::Q8_1 | T::Q8K
        ) {
            return Err(format!(
                "tensor {} is {}, which llama.cpp cannot use as a weight",
                t.name,
                t.ggml_type.name()
            ));
        }
    }
    Ok(())
}

/// Tensors (by the suffix of their name) with an axis that is the embedding width.
const EMBEDDING_AXES: &[(&str, usize)] = &[
    ("attn_norm.weight", 0),
    ("ffn_norm.weight", 0),
    ("post_attention_norm.weight", 0),
    ("post_ffw_norm.weight", 0),
    ("attn_q.weight", 0),
    ("attn_k.weight", 0),
    ("attn_v.weight", 0),
    ("attn_qkv.weight", 0),
    ("attn_q_a.weight", 0),
    ("attn_kv_a_mqa.weight", 0),
    ("attn_output.weight", 1),
    ("ffn_gate.weight", 0),
    ("ffn_up.weight", 0),
    ("ffn_down.weight", 1),
    ("ffn_gate_inp.weight", 0),
    ("ffn_gate_exps.weight", 0),
    ("ffn_up_exps.weight", 0),
    ("ffn_down_exps.weight", 1),
    ("ffn_gate_shexp.weight", 0),
    ("ffn_up_shexp.weight", 0),
    ("ffn_down_shexp.weight", 1),
];

/// Every layer tensor against the hyper-parameters llama.cpp will build the graph from:
/// the embedding width, the attention heads, the feed-forward width and the experts. A
/// mismatch here is a checkpoint whose config.json does not describe its weights.
fn check_layer_shapes(p: &Hparams, layers: u64, embd: u64) -> Result<(), String> {
    let heads = p.per_layer("attention.head_count", layers)?;
    let kv_heads = p.per_layer("attention.head_count_kv", layers)?;
    let ff = p.per_layer("feed_forward_length", layers)?;
    let experts = p.uint("expert_count")?.unwrap_or(0);
    let expert_ff = p.uint("expert_feed_forward_length")?;
    // MLA (deepseek2) factors its attention; its head sizes are checked by llama.cpp.
    let plain_attention = p.uint("attention.key_length_mla")?.is_none();
    for (t, _) in &p.h.tensors {
        let Some((block, role)) = layer_role(&t.name) else {
            continue;
        };
        let axis = |i: usize| t.ne.get(i).copied().unwrap_or(1);
        let wrong = |what: String| format!("tensor {} has shape {:?}: {what}", t.name, t.ne);
        if let Some(&(_, i)) = EMBEDDING_AXES.iter().find(|(suffix, _)| role == *suffix) {
            if axis(i) != embd {
                return Err(wrong(format!("the embedding width is {embd}")));
            }
        }
        if role.ends_with("_exps.weight") && axis(2) != experts {
            return Err(wrong(format!("the model has {experts} experts")));
        }
        if role == "ffn_gate_inp.weight" && axis(1) != experts {
            return Err(wrong(format!("the model has {experts} experts")));
        }
        let expert_width_axis = match role {
            "ffn_down_exps.weight" => Some(0),
            "ffn_gate_exps.weight" | "ffn_up_exps.weight" => Some(1),
            _ => None,
        };
        if let (Some(i), Some(width)) = (expert_width_axis, expert_ff) {
            if axis(i) != width {
                return Err(wrong(format!("the expert feed-forward width is {width}")));
            }
        }
        let layer = block as usize;
        if role == "ffn_down.weight" {
            if let Some(&width) = ff.get(layer).filter(|&&w| w > 0) {
                if axis(0) != width {
                    return Err(wrong(format!("the feed-forward width is {width}")));
                }
            }
        }
        if plain_attention {
            let (h, kv) = (heads.get(layer).copied(), kv_heads.get(layer).copied());
            if let Some(expected) = attention_width(p, role, h, kv.or(h), embd)? {
                let i = usize::from(role != "attn_output.weight");
                if axis(i) != expected {
                    return Err(wrong(format!("the attention heads need {expected}")));
                }
            }
        }
    }
    Ok(())
}

/// The head-dependent axis of an attention projection (`None` for other tensors).
fn attention_width(
    p: &Hparams,
    role: &str,
    heads: Option<u64>,
    kv_heads: Option<u64>,
    embd: u64,
) -> Result<Option<u64>, String> {
    let (Some(h), Some(kv)) = (heads, kv_heads) else {
        return Ok(None);
    };
    if h == 0 {
        return Ok(None);
    }
    let key = p.uint("attention.key_length")?.unwrap_or(embd / h);
    let value = p.uint("attention.value_length")?.unwrap_or(embd / h);
    Ok(match role {
        "attn_q.weight" => Some(h * key),
        "attn_k.weight" => Some(kv * key),
        "attn_v.weight" => Some(kv * value),
        "attn_output.weight" => Some(h * value),
        "attn_qkv.weight" => Some(h * key + kv * key + kv * value),
        _ => None,
    })
}

/// `blk.7.attn_q.weight` → (7, `attn_q.weight`).
fn layer_role(name: &str) -> Option<(u64, &str)> {
    let (block, role) = name.strip_prefix("blk.")?.split_once('.')?;
    Some((block.parse().ok()?, role))
}

fn check_heads(p: &Hparams, layers: u64, embd: u64) -> Result<(), String> {
    let heads = p.per_layer("attention.head_count", layers)?;
    let kv_heads = p.per_layer("attention.head_count_kv", layers)?;
    for (layer, &n_head) in heads.iter().enumerate() {
        let n_kv = kv_heads.get(layer).copied().unwrap_or(n_head);
        if n_head > 0 && (n_kv == 0 || n_kv > n_head || n_head % n_kv != 0) {
            return Err(format!(
                "layer {layer}: {n_head} attention heads cannot be shared by {n_kv} key/value heads (must divide)"
            ));
        }
    }
    for key in ["attention.key_length", "attention.value_length"] {
        if let Some(v) = p.uint(key)? {
            p.positive(key, v)?;
        }
    }
    let head_size = match (p.uint("attention.key_length")?, heads.first()) {
        (Some(k), _) => Some(k),
        (None, Some(&n)) if n > 0 => Some(embd / n),
        _ => None,
    };
    if let (Some(rope), Some(head)) = (p.uint("rope.dimension_count")?, head_size) {
        if rope > head || rope % 2 != 0 {
            return Err(format!(
                "{}.rope.dimension_count = {rope}: must be even and at most the head size {head}",
                p.arch
            ));
        }
    }
    Ok(())
}

fn check_experts(p: &Hparams, layers: u64) -> Result<(), String> {
    let experts = p.uint("expert_count")?.unwrap_or(0);
    if experts > MAX_EXPERTS {
        return Err(format!("{}.expert_count = {experts}: at most {MAX_EXPERTS}", p.arch));
    }
    let used = p.uint("expert_used_count")?.unwrap_or(0);
    if used > experts || (experts > 0 && used == 0) {
        return Err(format!(
            "{}.expert_used_count = {used}: must be 1 to expert_count ({experts})",
            p.arch
        ));
    }
    for key in ["nextn_predict_layers", "leading_dense_block_count"] {
        if let Some(n) = p.uint(key)? {
            if n >= layers && !(key == "leading_dense_block_count" && n == layers) {
                return Err(format!("{}.{key} = {n}: the model has {layers} blocks", p.arch));
            }
        }
    }
    Ok(())
}

/// The token list and every special-token id (an id outside the list makes llama.cpp
/// throw through the C API, which aborts the process). Returns the vocabulary size.
fn check_vocabulary(h: &GgufHeader) -> Result<Option<u64>, String> {
    let tokens = match h.get("tokenizer.ggml.tokens") {
        None => return Ok(None),
        Some(MetaValue::Array(ArrayValue::Str(t))) => t.len() as u64,
        Some(_) => return Err("tokenizer.ggml.tokens must be a list of strings".into()),
    };
    if tokens == 0 {
        return Err("tokenizer.ggml.tokens is empty".into());
    }
    for key in ["tokenizer.ggml.scores", "tokenizer.ggml.token_type"] {
        match h.get(key) {
            Some(MetaValue::Array(a)) if a.len() as u64 != tokens => {
                return Err(format!("{key} has {} entries for {tokens} tokens", a.len()))
            }
            Some(MetaValue::Array(_)) | None => {}
            Some(_) => return Err(format!("{key} must be a list")),
        }
    }
    for (key, value) in h.meta.iter() {
        let Some(name) = key.strip_prefix("tokenizer.ggml.") else {
            continue;
        };
        if !(name.ends_with("_token_id") || name.ends_with("_token_ids")) {
            continue;
        }
        let ids = match value {
            MetaValue::Array(a) => a.integers(),
            scalar => scalar.as_integer().map(|i| vec![i]),
        }
        .ok_or_else(|| format!("{key} must be a token id"))?;
        // -1 (or its u32 form) means "none" to llama.cpp.
        if let Some(bad) = ids
            .into_iter()
            .find(|&id| id != -1 && id != i128::from(u32::MAX) && !(0..i128::from(tokens)).contains(&id))
        {
            return Err(format!("{key} = {bad} is outside the vocabulary of {tokens} tokens"));
        }
    }
    Ok(Some(tokens))
}

/// The embedding and output matrices fit the declared sizes, and no layer tensor lies
/// beyond the block count.
fn check_tensors(h: &GgufHeader, layers: u64, embd: u64, vocab: Option<u64>) -> Result<(), String> {
    for name in ["token_embd.weight", "output.weight"] {
        let Some(t) = h.tensor(name) else {
            if name == "token_embd.weight" {
                return Err("no token_embd.weight tensor".into());
            }
            continue;
        };
        if t.ne.len() != 2 || t.ne[0] != embd || vocab.is_some_and(|v| t.ne[1] != v) {
            return Err(format!(
                "{name} has shape {:?}; embedding_length {embd} and {} tokens need [{embd}, {}]",
                t.ne,
                vocab.map_or("the".into(), |v| v.to_string()),
                vocab.map_or("n_vocab".into(), |v| v.to_string())
            ));
        }
    }
    for (t, _) in &h.tensors {
        let block = t
            .name
            .strip_prefix("blk.")
            .and_then(|rest| rest.split('.').next())
            .and_then(|n| n.parse::<u64>().ok());
        if block.is_some_and(|b| b >= layers) {
            return Err(format!(
                "tensor {} lies beyond the {layers} blocks the file declares",
                t.name
            ));
        }
    }
    Ok(())
}

/// Checks a vision projector, and that it fits `model`.
pub fn check_projector(projector: &GgufHeader, model: &GgufHeader) -> Result<(), String> {
    if projector.architecture() != Some("clip") {
        return Err(format!(
            "not a vision projector (general.architecture is {:?}, a projector's is \"clip\")",
            projector.architecture().unwrap_or("missing")
        ));
    }
    if !matches!(projector.get("clip.has_vision_encoder"), Some(MetaValue::Bool(true))) {
        return Err("this projector has no vision encoder".into());
    }
    let p = Hparams {
        h: projector,
        arch: "clip.vision",
    };
    for key in [
        "image_size",
        "patch_size",
        "embedding_length",
        "block_count",
        "attention.head_count",
        "projection_dim",
    ] {
        let v = p.uint(key)?.ok_or_else(|| p.missing(key))?;
        p.positive(key, v)?;
    }
    let value = |key: &str| p.uint(key).ok().flatten().unwrap_or(0);
    if value("block_count") > MAX_LAYERS {
        return Err(format!("clip.vision.block_count: at most {MAX_LAYERS}"));
    }
    if value("patch_size") > value("image_size") {
        return Err("clip.vision.patch_size is larger than the image size".into());
    }
    if value("embedding_length") % value("attention.head_count") != 0 {
        return Err("clip.vision.embedding_length is not divisible by its head count".into());
    }
    if let Some(eps) = p.float("attention.layer_norm_epsilon")? {
        if !(eps.is_finite() && eps > 0.0) {
            return Err(format!(
                "clip.vision.attention.layer_norm_epsilon = {eps}: must be positive"
            ));
        }
    }
    let arch = model.architecture().unwrap_or_default();
    let model_embd = Hparams { h: model, arch }.uint("embedding_length")?.unwrap_or(0);
    if value("projection_dim") != model_embd {
        return Err(format!(
            "made for a model of width {} but this model's is {model_embd}: the projector does not belong to this model",
            value("projection_dim")
        ));
    }
    Ok(())
}

/// Reads `<arch>.<key>` hyper-parameters.
struct Hparams<'a> {
    h: &'a GgufHeader,
    arch: &'a str,
}

impl Hparams<'_> {
    fn key(&self, key: &str) -> String {
        format!("{}.{key}", self.arch)
    }

    fn missing(&self, key: &str) -> String {
        format!("missing {}", self.key(key))
    }

    fn positive(&self, key: &str, value: u64) -> Result<(), String> {
        if value == 0 {
            return Err(format!("{} is 0", self.key(key)));
        }
        Ok(())
    }

    /// A non-negative integer that fits in u32, as llama.cpp stores them.
    fn uint(&self, key: &str) -> Result<Option<u64>, String> {
        let full = self.key(key);
        match self.h.get(&full) {
            None => Ok(None),
            Some(v) => match v.as_integer() {
                Some(i) if (0..=i128::from(u32::MAX)).contains(&i) => Ok(Some(i as u64)),
                Some(i) => Err(format!("{full} = {i} is out of range")),
                None => Err(format!("{full} must be an integer")),
            },
        }
    }

    fn float(&self, key: &str) -> Result<Option<f64>, String> {
        let full = self.key(key);
        match self.h.get(&full) {
            None => Ok(None),
            Some(v) => v.as_float().map(Some).ok_or_else(|| format!("{full} must be a number")),
        }
    }

    /// A value given once for every layer, or as a list with one entry per layer.
    fn per_layer(&self, key: &str, layers: u64) -> Result<Vec<u64>, String> {
        let full = self.key(key);
        match self.h.get(&full) {
            None => Ok(Vec::new()),
            Some(MetaValue::Array(a)) => {
                let values = a.integers().ok_or_else(|| format!("{full} must hold integers"))?;
                if values.len() as u64 != layers {
                    return Err(format!("{full} has {} entries for {layers} layers", values.len()));
                }
                values
                    .into_iter()
                    .map(|v| u64::try_from(v).map_err(|_| format!("{full} holds {v}")))
                    .collect()
            }
            Some(_) => Ok(vec![self.uint(key)?.unwrap_or(0); layers as usize]),
        }
    }
}
