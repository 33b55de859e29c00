//! `Glm4MoeLiteForCausalLM` (GLM-4.7-Flash) → llama.cpp `deepseek2`.
//!
//! DeepSeek-V3-style multi-head latent attention: low-rank query (`q_a` → norm → `q_b`),
//! compressed KV (`kv_a_mqa` → norm → `kv_b`) with interleaved RoPE on a separate slice,
//! then the same sigmoid-routed MoE as GLM-4.5. llama.cpp runs MLA as MQA over the latent,
//! so `kv_b_proj` is split per head into `attn_k_b` (transposed) and `attn_v_b`.

use super::{global_tensor_role, layer_tensor, moe, write_common_hparams, Architecture, LayerCounts, PlanOptions};
use super::{PlannedTensor, SourceSlice, TensorRole};
use crate::checkpoint::TensorEntry;
use crate::config::HfConfig;
use crate::error::{ConvertError, Result};
use crate::gguf::Metadata;
use crate::tokenizer::SpecialTokens;

pub struct Glm4MoeLite;

/// MLA head sizes from the config.
struct MlaDims {
    heads: u32,
    q_lora_rank: Option<u32>,
    kv_lora_rank: u32,
    nope: u32,
    rope: u32,
    value: u32,
}

impl MlaDims {
    fn of(config: &HfConfig) -> Result<Self> {
        let mla = config.mla()?;
        Ok(Self {
            heads: config.text().num_attention_heads,
            q_lora_rank: mla.q_lora_rank,
            kv_lora_rank: mla.kv_lora_rank,
            nope: mla.qk_nope_head_dim,
            rope: mla.qk_rope_head_dim,
            value: mla.v_head_dim,
        })
    }
}

impl Architecture for Glm4MoeLite {
    fn hf_name(&self) -> &'static str {
        "Glm4MoeLiteForCausalLM"
    }

    fn gguf_arch(&self) -> &'static str {
        "deepseek2"
    }

    fn write_hparams(&self, config: &HfConfig, layers: LayerCounts, meta: &mut Metadata) -> Result<()> {
        let arch = self.gguf_arch();
        let key = |k: &str| format!("{arch}.{k}");
        write_common_hparams(arch, config, layers, meta)?;
        let dims = MlaDims::of(config)?;
        let vocab = config.text().vocab_size;
        meta.set(
            key("vocab_size"),
            vocab.ok_or_else(|| config.error("missing required field `vocab_size`"))?,
        );
        meta.set(key("attention.head_count"), dims.heads);
        // MLA runs as multi-query attention over the shared latent.
        meta.set(key("attention.head_count_kv"), 1u32);
        if let Some(q_lora) = dims.q_lora_rank {
            meta.set(key("attention.q_lora_rank"), q_lora);
        }
        meta.set(key("attention.kv_lora_rank"), dims.kv_lora_rank);
        meta.set(key("attention.key_length"), dims.kv_lora_rank + dims.rope);
        meta.set(key("attention.value_length"), dims.kv_lora_rank);
        meta.set(key("attention.key_length_mla"), dims.nope + dims.rope);
        meta.set(key("attention.value_length_mla"), dims.value);
        meta.set(key("rope.dimension_count"), dims.rope);
        moe::write_moe_hparams(arch, config, meta)
    }

    fn tensor_role(&self, config: &HfConfig, entry: &TensorEntry, options: &PlanOptions) -> Result<Option<TensorRole>> {
        if let Some(role) = global_tensor_role(config, &entry.name, false) {
            return Ok(Some(role));
        }
        let Some((layer, rest)) = layer_tensor(&entry.name) else {
            return Ok(None);
        };
        if let Some(role) = moe::mtp_role(config, layer, rest, options)? {
            return Ok(Some(role));
        }
        let name = match rest {
            "input_layernorm.weight" => "attn_norm.weight",
            "self_attn.q_proj.weight" => "attn_q.weight",
            "self_attn.q_a_proj.weight" => "attn_q_a.weight",
            "self_attn.q_a_layernorm.weight" => "attn_q_a_norm.weight",
            "self_attn.q_b_proj.weight" => "attn_q_b.weight",
            "self_attn.kv_a_proj_with_mqa.weight" => "attn_kv_a_mqa.weight",
            "self_attn.kv_a_layernorm.weight" => "attn_kv_a_norm.weight",
            "self_attn.o_proj.weight" => "attn_output.weight",
            "post_attention_layernorm.weight" => "ffn_norm.weight",
            "self_attn.kv_b_proj.weight" => {
                return Ok(Some(TensorRole::Derived(split_kv_b(config, layer, entry)?)));
            }
            _ => return moe::ffn_role(layer, rest, entry),
        };
        Ok(Some(TensorRole::Rename(format!("blk.{layer}.{name}"))))
    }

    fn special_tokens(&self) -> SpecialTokens {
        moe::MOE_SPECIAL_TOKENS
    }

    fn expert_count(&self, config: &HfConfig) -> Result<u32> {
        moe::expert_count(config)
    }
}

/// `kv_b_proj` `[heads·(nope+value), kv_lora_rank]` holds, per head, `nope` key rows then
/// `value` value rows. llama.cpp wants `attn_k_b` = each head's key rows transposed
/// (`{nope, rank, heads}`) and `attn_v_b` = each head's value rows (`{rank, value, heads}`).
fn split_kv_b(config: &HfConfig, layer: u32, entry: &TensorEntry) -> Result<Vec<PlannedTensor>> {
    let dims = MlaDims::of(config)?;
    let (heads, nope, value, rank) = (
        dims.heads as usize,
        dims.nope as usize,
        dims.value as usize,
        dims.kv_lora_rank as usize,
    );
    let per_head = nope + value;
    if entry.shape != [heads * per_head, rank] {
        return Err(ConvertError::tensor(
            &entry.name,
            format!(
                "shape {:?} does not match {heads} heads x ({nope}+{value}) rows x {rank}",
                entry.shape
            ),
        ));
    }
    let key_rows = (0..heads)
        .map(|h| SourceSlice {
            transpose: true,
            ..SourceSlice::rows(&entry.name, h * per_head..h * per_head + nope)
        })
        .collect();
    let value_rows = (0..heads)
        .map(|h| SourceSlice::rows(&entry.name, h * per_head + nope..(h + 1) * per_head))
        .collect();
    Ok(vec![
        PlannedTensor {
            name: format!("blk.{layer}.attn_k_b.weight"),
            sources: key_rows,
            ne: vec![nope as u64, rank as u64, heads as u64],
        },
        PlannedTensor {
            name: format!("blk.{layer}.attn_v_b.weight"),
            sources: value_rows,
            ne: vec![rank as u64, value as u64, heads as u64],
        },
    ])
}
