//! `GlmForCausalLM` (THUDM/glm-4-9b-chat-hf) → llama.cpp `chatglm`.
//!
//! Pre-norm blocks, q/k/v with bias, fused gate/up MLP, interleaved partial RoPE. HF's
//! `post_attention_layernorm` is the pre-MLP norm (`ffn_norm`).

use super::DenseGlm;
use crate::tokenizer::SpecialTokens;

pub const GLM: DenseGlm = DenseGlm {
    hf_name: "GlmForCausalLM",
    gguf_arch: "chatglm",
    norms: &[("post_attention_layernorm.weight", "ffn_norm.weight")],
    special_tokens: SpecialTokens {
        bos: None,
        eos: Some("<|endoftext|>"),
        eot: Some("<|user|>"),
        eom: None,
        unk: Some("<|endoftext|>"),
        pad: None,
    },
    vision: false,
};
