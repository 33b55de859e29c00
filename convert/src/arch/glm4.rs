//! `Glm4ForCausalLM` (GLM-4-0414, GLM-Z1) → llama.cpp `glm4`.
//!
//! The "sandwich" block: extra norms after attention and after the MLP. Note the names:
//! HF's `post_attention_layernorm` is the pre-MLP norm (`ffn_norm`) here.

use super::{
    dense_block_tensor, global_tensor_role, layer_tensor, write_common_hparams, write_gqa_hparams, Architecture,
    LayerCounts, PlanOptions, TensorRole,
};
use crate::checkpoint::TensorEntry;
use crate::config::HfConfig;
use crate::error::Result;
use crate::gguf::Metadata;
use crate::tokenizer::SpecialTokens;

pub struct Glm4;

impl Architecture for Glm4 {
    fn hf_name(&self) -> &'static str {
        "Glm4ForCausalLM"
    }

    fn gguf_arch(&self) -> &'static str {
        "glm4"
    }

    fn write_hparams(&self, config: &HfConfig, layers: LayerCounts, meta: &mut Metadata) -> Result<()> {
        write_common_hparams(self.gguf_arch(), config, layers, meta)?;
        write_gqa_hparams(self.gguf_arch(), config, false, meta)
    }

    fn tensor_role(&self, config: &HfConfig, entry: &TensorEntry, _: &PlanOptions) -> Result<Option<TensorRole>> {
        Ok(role(config, &entry.name))
    }

    fn special_tokens(&self) -> SpecialTokens {
        SpecialTokens {
            bos: Some("<|endoftext|>"),
            eos: Some("<|endoftext|>"),
            eot: Some("<|user|>"),
            unk: Some("<|endoftext|>"),
            pad: Some("<|endoftext|>"),
            ..Default::default()
        }
    }
}

fn role(config: &HfConfig, hf_name: &str) -> Option<TensorRole> {
    if let Some(role) = global_tensor_role(config, hf_name) {
        return Some(role);
    }
    let (layer, rest) = layer_tensor(hf_name)?;
    let gguf = match rest {
        "post_self_attn_layernorm.weight" => "post_attention_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "post_mlp_layernorm.weight" => "post_ffw_norm.weight",
        _ if rest.ends_with("rotary_emb.inv_freq") => return Some(TensorRole::Skip),
        _ => dense_block_tensor(rest)?,
    };
    Some(TensorRole::Rename(format!("blk.{layer}.{gguf}")))
}
