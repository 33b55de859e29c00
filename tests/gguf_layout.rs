//! What the converter writes, checked against ../shared/spec/glm-gguf.md: keys, tensor
//! names and shapes, storage types, the token list and the special ids, for every
//! fixture and output type. Expected values are derived from each fixture's config.json.

mod common;

use std::collections::BTreeMap;

use common::*;

use serde_json::Value;

struct Gguf {
    meta: BTreeMap<String, Value>,
    tensors: BTreeMap<String, (u32, Vec<u64>)>,
}

fn read_gguf(model: &str, preset: &str) -> Gguf {
    let path = converted(model, preset);
    let mut container =
        gguf_rs::get_gguf_container_array_size(path.to_str().expect("utf-8 path"), u64::MAX).expect("open");
    let decoded = container.decode().expect("decode");
    Gguf {
        meta: decoded.metadata().clone(),
        tensors: decoded
            .tensors()
            .iter()
            .map(|t| (t.name.clone(), (t.kind, t.shape.clone())))
            .collect(),
    }
}

fn u(config: &Value, key: &str) -> u64 {
    config[key].as_u64().unwrap_or_else(|| panic!("config.{key}"))
}

#[test]
fn hyper_parameters_follow_the_config() {
    for (model, arch) in [("glm-tiny", "chatglm"), ("glm4-tiny", "glm4")] {
        let config = read_json(&model_dir(model).join("config.json"));
        let gguf = read_gguf(model, "bf16");
        let key = |k: &str| {
            gguf.meta
                .get(&format!("{arch}.{k}"))
                .cloned()
                .unwrap_or_else(|| panic!("{model}: missing {arch}.{k}"))
        };
        assert_eq!(gguf.meta["general.architecture"], arch);
        assert_eq!(key("block_count"), u(&config, "num_hidden_layers"));
        assert_eq!(key("embedding_length"), u(&config, "hidden_size"));
        assert_eq!(key("feed_forward_length"), u(&config, "intermediate_size"));
        assert_eq!(key("context_length"), u(&config, "max_position_embeddings"));
        assert_eq!(key("attention.head_count"), u(&config, "num_attention_heads"));
        assert_eq!(key("attention.head_count_kv"), u(&config, "num_key_value_heads"));
        let head_dim = u(&config, "head_dim");
        let factor = config["partial_rotary_factor"].as_f64().unwrap_or(0.5);
        assert_eq!(key("rope.dimension_count"), (head_dim as f64 * factor) as u64);
        let eps = key("attention.layer_norm_rms_epsilon").as_f64().expect("eps");
        let want = config["rms_norm_eps"].as_f64().expect("rms_norm_eps");
        assert!((eps - want).abs() <= want * 1e-6, "{model}: eps {eps} vs {want}");
        assert_eq!(gguf.meta["general.file_type"], 32);
        assert_eq!(gguf.meta["tokenizer.ggml.add_bos_token"], false);
        assert_eq!(gguf.meta["tokenizer.ggml.pre"], "glm4");
    }
}

#[test]
fn tensors_have_spec_names_shapes_and_types() {
    for model in DENSE_MODELS {
        let config = read_json(&model_dir(model).join("config.json"));
        let (h, f, v, layers) = (
            u(&config, "hidden_size"),
            u(&config, "intermediate_size"),
            u(&config, "vocab_size"),
            u(&config, "num_hidden_layers"),
        );
        let q = u(&config, "num_attention_heads") * u(&config, "head_dim");
        let kv = u(&config, "num_key_value_heads") * u(&config, "head_dim");
        let mut expected: Vec<(String, Vec<u64>)> = vec![
            ("token_embd.weight".into(), vec![h, v]),
            ("output_norm.weight".into(), vec![h]),
            ("output.weight".into(), vec![h, v]),
        ];
        for i in 0..layers {
            let b = |n: &str| format!("blk.{i}.{n}");
            expected.extend([
                (b("attn_norm.weight"), vec![h]),
                (b("attn_q.weight"), vec![h, q]),
                (b("attn_q.bias"), vec![q]),
                (b("attn_k.weight"), vec![h, kv]),
                (b("attn_k.bias"), vec![kv]),
                (b("attn_v.weight"), vec![h, kv]),
                (b("attn_v.bias"), vec![kv]),
                (b("attn_output.weight"), vec![q, h]),
                (b("ffn_norm.weight"), vec![h]),
                (b("ffn_up.weight"), vec![h, 2 * f]),
                (b("ffn_down.weight"), vec![f, h]),
            ]);
            if model == "glm4-tiny" {
                expected.push((b("post_attention_norm.weight"), vec![h]));
                expected.push((b("post_ffw_norm.weight"), vec![h]));
            }
        }
        for preset in BASIC_PRESETS {
            let gguf = read_gguf(model, preset);
            assert_eq!(gguf.tensors.len(), expected.len(), "{model} {}: tensor count", preset);
            for (name, shape) in &expected {
                let (kind, got_shape) = gguf
                    .tensors
                    .get(name)
                    .unwrap_or_else(|| panic!("{model}: missing {name}"));
                assert_eq!(got_shape, shape, "{model}: shape of {name}");
                let want_type = if shape.len() == 1 {
                    glm_convert::GgmlType::F32.id()
                } else {
                    glm_convert::GgmlType::parse(preset).expect("type").id()
                };
                assert_eq!(*kind, want_type, "{model} {}: type of {name}", preset);
            }
        }
    }
}

#[test]
fn token_list_is_padded_and_typed() {
    for model in DENSE_MODELS {
        let config = read_json(&model_dir(model).join("config.json"));
        let tokenizer = read_json(&model_dir(model).join("tokenizer.json"));
        let gguf = read_gguf(model, "f16");
        let tokens = gguf.meta["tokenizer.ggml.tokens"].as_array().expect("tokens");
        let types = gguf.meta["tokenizer.ggml.token_type"].as_array().expect("types");
        let vocab_size = u(&config, "vocab_size") as usize;
        assert_eq!(tokens.len(), vocab_size, "{model}: token list padded to vocab_size");
        assert_eq!(types.len(), vocab_size);
        let regular = tokenizer["model"]["vocab"].as_object().expect("vocab");
        for (text, id) in regular {
            let id = id.as_u64().expect("id") as usize;
            assert_eq!(tokens[id], text.as_str(), "{model}: token {id}");
            assert_eq!(types[id], 1, "{model}: {text} is NORMAL");
        }
        for added in tokenizer["added_tokens"].as_array().expect("added") {
            let id = added["id"].as_u64().expect("id") as usize;
            assert_eq!(tokens[id], added["content"]);
            let want = if added["special"].as_bool() == Some(true) { 3 } else { 4 };
            assert_eq!(types[id], want, "{model}: type of {}", added["content"]);
        }
        let last = vocab_size - 1;
        assert_eq!(tokens[last], format!("[PAD{last}]"), "{model}: padding token text");
        assert_eq!(types[last], 5, "{model}: padding is UNUSED");
        let text_of = |key: &str| {
            let id = gguf.meta[key].as_u64().unwrap_or_else(|| panic!("{model}: {key}")) as usize;
            tokens[id].as_str().expect("text").to_owned()
        };
        assert_eq!(text_of("tokenizer.ggml.eos_token_id"), "<|endoftext|>");
        assert_eq!(text_of("tokenizer.ggml.eot_token_id"), "<|user|>");
        let merges = gguf.meta["tokenizer.ggml.merges"].as_array().expect("merges");
        assert_eq!(
            merges.len(),
            tokenizer["model"]["merges"].as_array().expect("merges").len()
        );
        let template = glm_convert::tokenizer::find_chat_template(&model_dir(model))
            .expect("read")
            .expect("template");
        assert_eq!(
            gguf.meta["tokenizer.chat_template"],
            template.as_str(),
            "{model}: chat template copied verbatim"
        );
    }
}
