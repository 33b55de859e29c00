//! Pieces shared by the mixture-of-experts GLM architectures (glm4moe, deepseek2):
//! expert stacking, router tensors, shared experts, NextN (MTP) layers and MoE keys.

use super::{ExpertProjection, PlanOptions, PlannedTensor, SourceSlice, TensorRole};
use crate::checkpoint::TensorEntry;
use crate::config::{HfConfig, MoeConfig};
use crate::error::{ConvertError, Result};
use crate::gguf::Metadata;
use crate::tokenizer::SpecialTokens;

/// Token roles of the GLM-4.5 family (llama.cpp's converter pins these by text).
pub(crate) const MOE_SPECIAL_TOKENS: SpecialTokens = SpecialTokens {
    bos: Some("[gMASK]"),
    eos: Some("<|endoftext|>"),
    eot: Some("<|user|>"),
    eom: Some("<|observation|>"),
    unk: Some("<|endoftext|>"),
    pad: Some("<|endoftext|>"),
};

/// Routed experts per MoE layer.
pub(crate) fn expert_count(config: &HfConfig) -> Result<u32> {
    Ok(config.moe()?.n_routed_experts)
}

/// Number of leading dense (non-MoE) layers: `first_k_dense_replace`, or the leading
/// `"dense"` entries of transformers 5's `mlp_layer_types`.
pub(crate) fn leading_dense_layers(moe: &MoeConfig) -> u32 {
    if let Some(k) = moe.first_k_dense_replace {
        return k;
    }
    let types = moe.mlp_layer_types.as_deref().unwrap_or_default();
    types.iter().take_while(|t| t.as_str() == "dense").count() as u32
}

/// The `<arch>.expert_*` and `leading_dense_block_count` keys.
pub(crate) fn write_moe_hparams(arch: &str, config: &HfConfig, meta: &mut Metadata) -> Result<()> {
    let key = |k: &str| format!("{arch}.{k}");
    let moe = config.moe()?;
    let (experts, used) = (moe.n_routed_experts, moe.num_experts_per_tok);
    if used > experts {
        return Err(config.error(format!("{used} experts per token out of {experts} is not a valid MoE")));
    }
    meta.set(key("expert_count"), experts);
    meta.set(key("expert_used_count"), used);
    meta.set(key("expert_feed_forward_length"), moe.moe_intermediate_size);
    meta.set(key("expert_shared_count"), moe.n_shared_experts);
    meta.set(key("leading_dense_block_count"), leading_dense_layers(&moe));
    // GLM routes with sigmoid scores plus a correction bias (llama.cpp: 2 = sigmoid).
    meta.set(key("expert_gating_func"), 2u32);
    meta.set(key("expert_weights_scale"), moe.routed_scaling_factor as f32);
    meta.set(key("expert_weights_norm"), moe.norm_topk_prob);
    if let Some(groups) = moe.n_group {
        meta.set(key("expert_group_count"), groups);
    }
    if let Some(used_groups) = moe.topk_group {
        meta.set(key("expert_group_used_count"), used_groups);
    }
    Ok(())
}

/// The feed-forward part of a MoE-family block (`rest` is the name below the layer).
pub(crate) fn ffn_role(layer: u32, rest: &str, entry: &TensorEntry) -> Result<Option<TensorRole>> {
    let blk = |n: &str| Some(TensorRole::Rename(format!("blk.{layer}.{n}")));
    Ok(match rest {
        "mlp.gate_proj.weight" => blk("ffn_gate.weight"),
        "mlp.up_proj.weight" => blk("ffn_up.weight"),
        "mlp.down_proj.weight" => blk("ffn_down.weight"),
        "mlp.gate.weight" => blk("ffn_gate_inp.weight"),
        "mlp.gate.e_score_correction_bias" | "mlp.e_score_correction_bias" => blk("exp_probs_b.bias"),
        "mlp.shared_experts.gate_proj.weight" => blk("ffn_gate_shexp.weight"),
        "mlp.shared_experts.up_proj.weight" => blk("ffn_up_shexp.weight"),
        "mlp.shared_experts.down_proj.weight" => blk("ffn_down_shexp.weight"),
        // transformers 5 may save experts fused: gate_up [E, 2Fe, H], down [E, H, Fe].
        "mlp.experts.down_proj" | "mlp.experts.down_proj.weight" => blk("ffn_down_exps.weight"),
        "mlp.experts.gate_up_proj" | "mlp.experts.gate_up_proj.weight" => {
            Some(TensorRole::Derived(split_fused_gate_up(layer, entry)?))
        }
        _ => per_expert_role(layer, rest),
    })
}

/// `mlp.experts.{e}.{gate,up,down}_proj.weight`.
fn per_expert_role(layer: u32, rest: &str) -> Option<TensorRole> {
    let rest = rest.strip_prefix("mlp.experts.")?;
    let (expert, projection) = rest.split_once('.')?;
    let projection = match projection {
        "gate_proj.weight" => ExpertProjection::Gate,
        "up_proj.weight" => ExpertProjection::Up,
        "down_proj.weight" => ExpertProjection::Down,
        _ => return None,
    };
    Some(TensorRole::Expert {
        layer,
        expert: expert.parse().ok()?,
        projection,
    })
}

fn split_fused_gate_up(layer: u32, entry: &TensorEntry) -> Result<Vec<PlannedTensor>> {
    let [experts, rows, hidden] = entry.shape[..] else {
        return Err(ConvertError::tensor(
            &entry.name,
            format!("expected [experts, 2*ffn, hidden], found {:?}", entry.shape),
        ));
    };
    if rows % 2 != 0 {
        return Err(ConvertError::tensor(&entry.name, "odd gate/up row count"));
    }
    let half = rows / 2;
    let part = |name: &str, offset: usize| PlannedTensor {
        name: format!("blk.{layer}.{name}"),
        sources: (0..experts)
            .map(|e| SourceSlice::rows(&entry.name, e * rows + offset..e * rows + offset + half))
            .collect(),
        ne: vec![hidden as u64, half as u64, experts as u64],
    };
    Ok(vec![part("ffn_gate_exps.weight", 0), part("ffn_up_exps.weight", half)])
}

/// Stacks one projection of every expert of a layer into `{cols, rows, E}`, expert `e`
/// being the e-th slab. Ids are checked to be exactly `0..expected`.
pub(crate) fn stack_experts(
    name: String,
    mut members: Vec<(u32, &TensorEntry)>,
    expected: u32,
) -> Result<PlannedTensor> {
    members.sort_by_key(|(id, _)| *id);
    let ids: Vec<u32> = members.iter().map(|(id, _)| *id).collect();
    if ids != (0..expected).collect::<Vec<_>>() {
        return Err(ConvertError::tensor(
            &name,
            format!(
                "expected experts 0..{expected}, the checkpoint has {} of them",
                ids.len()
            ),
        ));
    }
    let shape = &members[0].1.shape;
    if let Some((_, odd)) = members.iter().find(|(_, e)| &e.shape != shape) {
        return Err(ConvertError::tensor(
            &odd.name,
            format!("shape {:?} differs from expert 0's {shape:?}", odd.shape),
        ));
    }
    let mut ne: Vec<u64> = members[0].1.ne();
    ne.push(u64::from(expected));
    Ok(PlannedTensor {
        name,
        sources: members.iter().map(|(_, e)| SourceSlice::whole(&e.name)).collect(),
        ne,
    })
}

/// NextN (multi-token prediction) extras of the layers after the trunk; `None` for
/// trunk layers and for the ordinary block tensors of a NextN layer, so the normal block
/// mapping applies to them. Layers beyond what the config declares are an error.
pub(crate) fn mtp_role(config: &HfConfig, layer: u32, rest: &str, options: &PlanOptions) -> Result<Option<TensorRole>> {
    let trunk = config.text().num_hidden_layers;
    if layer < trunk {
        return Ok(None);
    }
    let declared = config.text().num_nextn_predict_layers;
    if layer >= trunk + declared {
        return Err(config.error(format!(
            "the checkpoint has layer {layer}, beyond {trunk} trunk layers and {declared} NextN layers"
        )));
    }
    if !options.keep_mtp {
        return Ok(Some(TensorRole::Skip));
    }
    let name = match rest {
        "eh_proj.weight" => "nextn.eh_proj.weight",
        "enorm.weight" => "nextn.enorm.weight",
        "hnorm.weight" => "nextn.hnorm.weight",
        "shared_head.norm.weight" => "nextn.shared_head_norm.weight",
        "shared_head.head.weight" => "nextn.shared_head_head.weight",
        "embed_tokens.weight" => "nextn.embed_tokens.weight",
        _ => return Ok(None),
    };
    Ok(Some(TensorRole::Rename(format!("blk.{layer}.{name}"))))
}
