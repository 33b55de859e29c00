//! `Glm4ForCausalLM` (GLM-4-0414, GLM-Z1) → llama.cpp `glm4`.
//!
//! The "sandwich" block: extra norms after attention and after the MLP. Note the names:
//! HF's `post_attention_layernorm` is the pre-MLP norm (`ffn_norm`) here.

use super::DenseGlm;
use crate::tokenizer::SpecialTokens;

pub const GLM4: DenseGlm = DenseGlm {
    hf_name: "Glm4ForCausalLM",
    gguf_arch: "glm4",
    norms: &[
        ("post_self_attn_layernorm.weight", "post_attention_norm.weight"),
        ("post_attention_layernorm.weight", "ffn_norm.weight"),
        ("post_mlp_layernorm.weight", "post_ffw_norm.weight"),
    ],
    special_tokens: SpecialTokens {
        bos: Some("<|endoftext|>"),
        eos: Some("<|endoftext|>"),
        eot: Some("<|user|>"),
        eom: None,
        unk: Some("<|endoftext|>"),
        pad: Some("<|endoftext|>"),
    },
    vision: false,
};

/// `Glm4vForConditionalGeneration` (GLM-4.1V-9B-Thinking, GLM-4.6V-Flash): the same text
/// model under `model.language_model.`, with M-RoPE; the vision tower goes to the mmproj.
pub const GLM4V: DenseGlm = DenseGlm {
    hf_name: "Glm4vForConditionalGeneration",
    vision: true,
    ..GLM4
};
