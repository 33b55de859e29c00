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

fn key(gguf: &Gguf, name: &str) -> Value {
    gguf.meta
        .get(name)
        .cloned()
        .unwrap_or_else(|| panic!("missing key {name}"))
}

fn f(config: &Value, name: &str) -> f64 {
    config[name].as_f64().unwrap_or_else(|| panic!("config.{name}"))
}

#[test]
fn moe_keys_follow_the_config() {
    for (model, arch) in [
        ("glm4moe-tiny", "glm4moe"),
        ("glm4moe-air-tiny", "glm4moe"),
        ("glm47flash-tiny", "deepseek2"),
    ] {
        let config = read_json(&model_dir(model).join("config.json"));
        let gguf = read_gguf(model, "f16");
        let k = |name: &str| key(&gguf, &format!("{arch}.{name}"));
        assert_eq!(gguf.meta["general.architecture"], arch);
        assert_eq!(k("expert_count"), u(&config, "n_routed_experts"), "{model}");
        assert_eq!(k("expert_used_count"), u(&config, "num_experts_per_tok"), "{model}");
        assert_eq!(k("expert_shared_count"), u(&config, "n_shared_experts"), "{model}");
        assert_eq!(
            k("expert_feed_forward_length"),
            u(&config, "moe_intermediate_size"),
            "{model}"
        );
        assert_eq!(
            k("leading_dense_block_count"),
            u(&config, "first_k_dense_replace"),
            "{model}"
        );
        assert_eq!(k("expert_gating_func"), 2, "{model}: sigmoid gating");
        let scale = k("expert_weights_scale").as_f64().expect("scale");
        assert!((scale - f(&config, "routed_scaling_factor")).abs() < 1e-6, "{model}");
        assert_eq!(k("expert_weights_norm"), config["norm_topk_prob"], "{model}");
        // NextN layers count in block_count only when the checkpoint has their weights.
        let trunk = u(&config, "num_hidden_layers");
        let has_mtp = gguf.tensors.keys().any(|n| n.starts_with(&format!("blk.{trunk}.")));
        assert_eq!(k("block_count"), trunk + u64::from(has_mtp), "{model}");
        assert_eq!(
            gguf.meta.contains_key(&format!("{arch}.nextn_predict_layers")),
            has_mtp,
            "{model}"
        );
        assert_eq!(gguf.meta["tokenizer.ggml.add_bos_token"], false);
        let tokens = gguf.meta["tokenizer.ggml.tokens"].as_array().expect("tokens");
        let text_of = |name: &str| tokens[key(&gguf, name).as_u64().expect("id") as usize].clone();
        assert_eq!(text_of("tokenizer.ggml.bos_token_id"), "[gMASK]", "{model}");
        assert_eq!(text_of("tokenizer.ggml.eom_token_id"), "<|observation|>", "{model}");
        if arch == "glm4moe" {
            assert_eq!(
                k("attention.key_length"),
                u(&config, "head_dim"),
                "{model}: head_dim is explicit"
            );
        } else {
            let rank = u(&config, "kv_lora_rank");
            let rope = u(&config, "qk_rope_head_dim");
            assert_eq!(k("attention.head_count_kv"), 1, "MLA runs as MQA");
            assert_eq!(k("attention.key_length"), rank + rope);
            assert_eq!(k("attention.value_length"), rank);
            assert_eq!(k("attention.key_length_mla"), u(&config, "qk_nope_head_dim") + rope);
            assert_eq!(k("attention.value_length_mla"), u(&config, "v_head_dim"));
            assert_eq!(k("rope.dimension_count"), rope);
        }
    }
}

#[test]
fn moe_tensors_are_stacked_and_typed() {
    for model in MOE_MODELS {
        let config = read_json(&model_dir(model).join("config.json"));
        let (h, e, fe) = (
            u(&config, "hidden_size"),
            u(&config, "n_routed_experts"),
            u(&config, "moe_intermediate_size"),
        );
        let first_moe = u(&config, "first_k_dense_replace");
        for preset in BASIC_PRESETS {
            let gguf = read_gguf(model, preset);
            let tensor = |name: String| {
                gguf.tensors
                    .get(&name)
                    .cloned()
                    .unwrap_or_else(|| panic!("{model}: missing {name}"))
            };
            let b = |n: &str| format!("blk.{first_moe}.{n}");
            assert_eq!(tensor(b("ffn_gate_exps.weight")).1, vec![h, fe, e]);
            assert_eq!(tensor(b("ffn_up_exps.weight")).1, vec![h, fe, e]);
            assert_eq!(tensor(b("ffn_down_exps.weight")).1, vec![fe, h, e]);
            assert_eq!(
                tensor(b("ffn_gate_inp.weight")),
                (0, vec![h, e]),
                "{model}: router stays F32"
            );
            assert_eq!(
                tensor(b("exp_probs_b.bias")),
                (0, vec![e]),
                "{model}: correction bias is F32"
            );
            assert!(gguf.tensors.contains_key(&b("ffn_up_shexp.weight")));
            assert!(
                !gguf.tensors.keys().any(|n| n.contains("ffn_gate_up")),
                "{model}: gate and up stay separate"
            );
            assert_eq!(
                tensor("blk.0.ffn_gate.weight".into()).1,
                vec![h, u(&config, "intermediate_size")],
                "{model}: leading dense layer"
            );
        }
    }
}

/// Each expert's rows must land in its own slab, in expert-id order: compare the F32
/// file's bytes with the checkpoint's BF16 values.
#[test]
fn expert_slabs_follow_expert_ids() {
    use safetensors::SafeTensors;
    let model = "glm4moe-tiny";
    let config = read_json(&model_dir(model).join("config.json"));
    let first_moe = u(&config, "first_k_dense_replace");
    let values = tensor_values(&converted(model, "f32"), &format!("blk.{first_moe}.ffn_up_exps.weight"));
    let experts = u(&config, "n_routed_experts") as usize;
    let slab = values.len() / experts;
    for expert in [0, 1, experts - 1] {
        let name = format!("model.layers.{first_moe}.mlp.experts.{expert}.up_proj.weight");
        let source = hf_tensor(model, &name, |bytes: &[u8], t: &SafeTensors| {
            assert_eq!(t.tensor(&name).expect("tensor").dtype(), safetensors::Dtype::BF16);
            bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect::<Vec<f32>>()
        });
        assert_eq!(
            &values[expert * slab..(expert + 1) * slab],
            &source[..],
            "expert {expert}"
        );
    }
}

/// MLA: `attn_k_b` holds each head's key rows of `kv_b_proj` transposed, `attn_v_b` its
/// value rows as they are.
#[test]
fn mla_kv_b_is_split_per_head() {
    let model = "glm47flash-tiny";
    let config = read_json(&model_dir(model).join("config.json"));
    let (heads, nope, value, rank) = (
        u(&config, "num_attention_heads") as usize,
        u(&config, "qk_nope_head_dim") as usize,
        u(&config, "v_head_dim") as usize,
        u(&config, "kv_lora_rank") as usize,
    );
    let path = converted(model, "f32");
    let k_b = tensor_values(&path, "blk.0.attn_k_b.weight");
    let v_b = tensor_values(&path, "blk.0.attn_v_b.weight");
    let name = "model.layers.0.self_attn.kv_b_proj.weight";
    let w = hf_tensor(model, name, |bytes, _| {
        bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect::<Vec<f32>>()
    });
    for h in 0..heads {
        for r in 0..rank {
            for d in 0..nope {
                assert_eq!(
                    k_b[d + nope * (r + rank * h)],
                    w[(h * (nope + value) + d) * rank + r],
                    "k_b h{h} r{r} d{d}"
                );
            }
            for v in 0..value {
                assert_eq!(
                    v_b[r + rank * (v + value * h)],
                    w[(h * (nope + value) + nope + v) * rank + r],
                    "v_b h{h} v{v} r{r}"
                );
            }
        }
    }
}

#[test]
fn no_mtp_drops_nextn_layers() {
    let model = "glm4moe-tiny";
    let config = read_json(&model_dir(model).join("config.json"));
    let trunk = u(&config, "num_hidden_layers");
    let kept = read_gguf(model, "f16");
    assert!(
        kept.tensors.contains_key(&format!("blk.{trunk}.nextn.eh_proj.weight")),
        "fixture has an MTP layer"
    );
    let path = converted_with(model, "f16", false);
    let mut container = gguf_rs::get_gguf_container_array_size(path.to_str().expect("path"), 4).expect("open");
    let dropped = container.decode().expect("decode");
    assert!(!dropped
        .tensors()
        .iter()
        .any(|t| t.name.starts_with(&format!("blk.{trunk}."))));
    assert_eq!(dropped.metadata()["glm4moe.block_count"], trunk);
    assert!(!dropped.metadata().contains_key("glm4moe.nextn_predict_layers"));
}

/// The F32 values of one tensor of a GGUF file.
fn tensor_values(path: &std::path::Path, name: &str) -> Vec<f32> {
    let mut container = gguf_rs::get_gguf_container_array_size(path.to_str().expect("path"), 4).expect("open");
    let model = container.decode().expect("decode");
    let t = model
        .tensors()
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no {name}"));
    assert_eq!(t.kind, 0, "{name} should be F32");
    let bytes = std::fs::read(path).expect("read");
    let start = (model.data_offset() + t.offset) as usize;
    bytes[start..start + t.size as usize]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Reads a checkpoint tensor's bytes from whichever shard holds it.
fn hf_tensor<T>(model: &str, name: &str, decode: impl Fn(&[u8], &safetensors::SafeTensors) -> T) -> T {
    for entry in std::fs::read_dir(model_dir(model)).expect("dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "safetensors") {
            let bytes = std::fs::read(&path).expect("read");
            let tensors = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
            if let Ok(view) = tensors.tensor(name) {
                return decode(view.data(), &tensors);
            }
        }
    }
    panic!("{name} not in {model}")
}

/// GLM-4.5V's text GGUF: the glm4moe model without the vision tower, plus the M-RoPE
/// sections llama.cpp needs before it accepts image embeddings.
#[test]
fn vision_language_text_model_has_mrope_sections_and_no_vision_tensors() {
    for (model, arch) in [("glm45v-tiny", "glm4moe"), ("glm41v-tiny", "glm4")] {
        check_vision_text_model(model, arch);
    }
}

fn check_vision_text_model(model: &str, arch: &str) {
    let config = read_json(&model_dir(model).join("config.json"));
    let text = &config["text_config"];
    let sections = text["rope_parameters"]["mrope_section"]
        .as_array()
        .or_else(|| text["rope_scaling"]["mrope_section"].as_array())
        .expect("mrope_section in the fixture");
    let mut expected: Vec<Value> = sections.clone();
    expected.resize(4, Value::from(0));
    let gguf = read_gguf(model, "f16");
    assert_eq!(gguf.meta["general.architecture"], arch);
    assert_eq!(
        gguf.meta[&format!("{arch}.rope.dimension_sections")],
        Value::Array(expected)
    );
    assert!(
        gguf.tensors
            .keys()
            .all(|n| !n.contains("visual") && !n.starts_with("v.")),
        "vision tensors leaked"
    );
    assert!(gguf.tensors.contains_key("token_embd.weight") && gguf.tensors.contains_key("output.weight"));
}

/// The vision projector: llama.cpp's `clip`/`glm4v` keys and tensor names, and the
/// Conv3d patch kernel split into its two temporal halves.
#[test]
fn mmproj_has_clip_keys_and_split_patch_kernels() {
    let model = "glm45v-tiny";
    let config = read_json(&model_dir(model).join("config.json"));
    let vision = &config["vision_config"];
    let dir = tempfile::tempdir().expect("temp dir");
    let output = dir.path().join("mmproj.gguf");
    let options = glm_convert::ConvertOptions {
        preset: glm_convert::Preset::load("f32").expect("preset"),
        quantizer: None,
        importance: None,
        name: None,
        plan: Default::default(),
        output: Default::default(),
    };
    let summary =
        glm_convert::mmproj::convert_mmproj(&model_dir(model), &output, glm_convert::GgmlType::F32, &options, &())
            .expect("convert")
            .expect("a vision checkpoint has a projector");
    assert_eq!(summary.architecture, "clip");
    let mut container = gguf_rs::get_gguf_container_array_size(output.to_str().expect("path"), u64::MAX).expect("open");
    let decoded = container.decode().expect("decode");
    let meta = decoded.metadata();
    assert_eq!(meta["clip.projector_type"], "glm4v");
    assert_eq!(meta["clip.has_vision_encoder"], true);
    assert_eq!(meta["clip.use_silu"], true);
    assert_eq!(meta["clip.vision.projection_dim"], config["text_config"]["hidden_size"]);
    assert_eq!(meta["clip.vision.block_count"], vision["depth"]);
    assert_eq!(meta["clip.vision.embedding_length"], vision["hidden_size"]);
    assert_eq!(meta["clip.vision.image_mean"].as_array().expect("mean").len(), 3);
    let hv = vision["hidden_size"].as_u64().expect("hidden");
    let p = vision["patch_size"].as_u64().expect("patch");
    let tensors: BTreeMap<String, Vec<u64>> = decoded
        .tensors()
        .iter()
        .map(|t| (t.name.clone(), t.shape.clone()))
        .collect();
    assert_eq!(tensors["v.patch_embd.weight"], vec![p, p, 3, hv]);
    assert_eq!(tensors["v.patch_embd.weight.1"], vec![p, p, 3, hv]);
    assert_eq!(
        tensors["mm.down.weight"][1],
        config["text_config"]["hidden_size"].as_u64().expect("h")
    );
    for name in [
        "v.patch_embd.bias",
        "mm.patch_merger.bias",
        "v.position_embd.weight",
        "mm.post_norm.bias",
        "v.blk.0.attn_qkv.weight",
    ] {
        assert!(tensors.contains_key(name), "missing {name}");
    }
    // Kernel values: element (h, c, t, y, x) of the Conv3d lands in half t at (h, c, y, x).
    let conv = hf_tensor(model, "model.visual.patch_embed.proj.weight", |bytes, _| {
        bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect::<Vec<f32>>()
    });
    let (hv, p) = (hv as usize, p as usize);
    for (t, name) in [(0, "v.patch_embd.weight"), (1, "v.patch_embd.weight.1")] {
        let half_kernel = tensor_values(&output, name);
        for (h, c, y, x) in [(0, 0, 0, 0), (1, 2, 3, 4), (hv - 1, 2, p - 1, p - 1)] {
            let hf = conv[((((h * 3 + c) * 2 + t) * p) + y) * p + x];
            assert_eq!(
                half_kernel[((h * 3 + c) * p + y) * p + x],
                hf,
                "{name} at {h},{c},{y},{x}"
            );
        }
    }
    // Text-only checkpoints have no projector.
    let none = glm_convert::mmproj::convert_mmproj(
        &model_dir("glm4moe-tiny"),
        &dir.path().join("x.gguf"),
        glm_convert::GgmlType::F32,
        &options,
        &(),
    )
    .expect("no error");
    assert!(none.is_none());
    assert!(!dir.path().join("x.gguf").exists());
}

/// Records what a conversion reports as its progress.
#[derive(Default)]
struct RecordedProgress {
    total: std::sync::atomic::AtomicU64,
    done: std::sync::atomic::AtomicU64,
}

impl glm_convert::Progress for RecordedProgress {
    fn begin(&self, total_bytes: u64) {
        self.total.store(total_bytes, std::sync::atomic::Ordering::SeqCst);
    }
    fn advance(&self, bytes: u64) {
        self.done.fetch_add(bytes, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The progress bar ends exactly at its total, also for GLM-4.1V's element-sliced q/k
/// biases and MLA's transposed blocks.
#[test]
fn progress_ends_at_its_total() {
    for model in ["glm41v-tiny", "glm47flash-tiny", "glm4-tiny"] {
        let dir = tempfile::tempdir().expect("temp dir");
        let progress = RecordedProgress::default();
        let options = glm_convert::ConvertOptions {
            preset: glm_convert::Preset::load("bf16").expect("preset"),
            quantizer: None,
            importance: None,
            name: None,
            plan: Default::default(),
            output: Default::default(),
        };
        glm_convert::convert(&model_dir(model), &dir.path().join("out.gguf"), &options, &progress).expect("convert");
        let total = progress.total.load(std::sync::atomic::Ordering::SeqCst);
        let done = progress.done.load(std::sync::atomic::Ordering::SeqCst);
        assert!(total > 0, "{model}");
        assert_eq!(done, total, "{model}: progress ended at {done} of {total}");
    }
}
