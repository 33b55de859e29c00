//! `Glm4MoeForCausalLM` (GLM-4.5, GLM-4.5-Air, GLM-4.6, GLM-4.7) → llama.cpp `glm4moe`.
//!
//! Pre-norm blocks with GQA attention (optional per-head q/k norm, partial NeoX RoPE);
//! the first `first_k_dense_replace` layers have a dense MLP, the others routed experts
//! (sigmoid router with score-correction bias) plus shared experts; NextN layers follow
//! the trunk. HF's `post_attention_layernorm` is llama.cpp's `post_attention_norm` here.

use super::{
    global_tensor_role, gqa_attention_tensor, layer_tensor, moe, write_common_hparams, write_gqa_hparams,
    write_mrope_sections, Architecture, LayerCounts, PlanOptions, TensorRole,
};
use crate::checkpoint::TensorEntry;
use crate::config::HfConfig;
use crate::error::Result;
use crate::gguf::Metadata;
use crate::tokenizer::SpecialTokens;

/// `vision`: the text half of `Glm4vMoeForConditionalGeneration` (GLM-4.5V, GLM-4.6V):
/// the same model plus M-RoPE sections, with the vision tower left for the projector.
pub struct Glm4Moe {
    pub vision: bool,
}

impl Architecture for Glm4Moe {
    fn hf_name(&self) -> &'static str {
        if self.vision {
            "Glm4vMoeForConditionalGeneration"
        } else {
            "Glm4MoeForCausalLM"
        }
    }

    fn gguf_arch(&self) -> &'static str {
        "glm4moe"
    }

    fn write_hparams(&self, config: &HfConfig, layers: LayerCounts, meta: &mut Metadata) -> Result<()> {
        write_common_hparams(self.gguf_arch(), config, layers, meta)?;
        write_gqa_hparams(self.gguf_arch(), config, true, meta)?;
        if self.vision {
            write_mrope_sections(self.gguf_arch(), config, meta)?;
        }
        moe::write_moe_hparams(self.gguf_arch(), config, meta)
    }

    fn tensor_role(&self, config: &HfConfig, entry: &TensorEntry, options: &PlanOptions) -> Result<Option<TensorRole>> {
        if let Some(role) = global_tensor_role(config, &entry.name, self.vision) {
            return Ok(Some(role));
        }
        let Some((layer, rest)) = layer_tensor(&entry.name) else {
            return Ok(None);
        };
        if let Some(role) = moe::mtp_role(config, layer, rest, options)? {
            return Ok(Some(role));
        }
        if rest == "post_attention_layernorm.weight" {
            return Ok(Some(TensorRole::Rename(format!(
                "blk.{layer}.post_attention_norm.weight"
            ))));
        }
        if let Some(name) = gqa_attention_tensor(rest) {
            return Ok(Some(TensorRole::Rename(format!("blk.{layer}.{name}"))));
        }
        moe::ffn_role(layer, rest, entry)
    }

    fn special_tokens(&self) -> SpecialTokens {
        moe::MOE_SPECIAL_TOKENS
    }

    fn expert_count(&self, config: &HfConfig) -> Result<u32> {
        moe::expert_count(config)
    }
}
