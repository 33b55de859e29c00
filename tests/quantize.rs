//! The quantization engine against llama.cpp's own quantizer: a one-pass
//! `glm convert --quant X` must give exactly the file that llama.cpp's
//! `llama_model_quantize` makes from our F32 conversion — same type and same bytes for
//! every tensor. If a preset disagrees with llama.cpp on some tensor, the preset is wrong.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use glm::engine::quantize::GgmlQuantizer;
use glm::engine::reference::llama_quantize;
use glm_convert::gguf::read_header;
use glm_convert::{ConvertOptions, GgmlType, ImportanceMatrix, Preset};

/// A random Glm4ForCausalLM checkpoint whose matrices are multiples of 256 wide, so
/// K-quants apply without fallbacks (the committed fixtures are 128 wide), with enough
/// layers for the "more bits" layer pattern to matter.
fn k_quant_checkpoint() -> &'static Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| k_quant_shaped(Channels::Even)).path()
}

/// As [`k_quant_checkpoint`], with the outlier channels of real models: the norms scale a
/// few hidden channels far above the rest, so the matrices' inputs are uneven across
/// columns (what an importance matrix captures).
fn outlier_checkpoint() -> &'static Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| k_quant_shaped(Channels::Outliers)).path()
}

fn k_quant_shaped(channels: Channels) -> tempfile::TempDir {
    {
        let (hidden, ffn, layers, heads, kv_heads, head_dim) = (256usize, 768usize, 8usize, 4usize, 2usize, 64usize);
        let mut config = read_json(&model_dir("glm4-tiny").join("config.json"));
        config["hidden_size"] = hidden.into();
        config["intermediate_size"] = ffn.into();
        config["num_hidden_layers"] = layers.into();
        config["num_attention_heads"] = heads.into();
        config["num_key_value_heads"] = kv_heads.into();
        config["head_dim"] = head_dim.into();
        let vocab = config["vocab_size"].as_u64().expect("vocab") as usize;
        let mut shapes: Vec<(String, Vec<usize>)> = vec![
            ("model.embed_tokens.weight".into(), vec![vocab, hidden]),
            ("model.norm.weight".into(), vec![hidden]),
            ("lm_head.weight".into(), vec![vocab, hidden]),
        ];
        for i in 0..layers {
            let p = |n: &str| format!("model.layers.{i}.{n}");
            shapes.extend([
                (p("input_layernorm.weight"), vec![hidden]),
                (p("post_self_attn_layernorm.weight"), vec![hidden]),
                (p("post_attention_layernorm.weight"), vec![hidden]),
                (p("post_mlp_layernorm.weight"), vec![hidden]),
                (p("self_attn.q_proj.weight"), vec![heads * head_dim, hidden]),
                (p("self_attn.q_proj.bias"), vec![heads * head_dim]),
                (p("self_attn.k_proj.weight"), vec![kv_heads * head_dim, hidden]),
                (p("self_attn.k_proj.bias"), vec![kv_heads * head_dim]),
                (p("self_attn.v_proj.weight"), vec![kv_heads * head_dim, hidden]),
                (p("self_attn.v_proj.bias"), vec![kv_heads * head_dim]),
                (p("self_attn.o_proj.weight"), vec![hidden, heads * head_dim]),
                (p("mlp.gate_up_proj.weight"), vec![2 * ffn, hidden]),
                (p("mlp.down_proj.weight"), vec![hidden, ffn]),
            ]);
        }
        write_checkpoint("glm4-tiny", &config, shapes, channels)
    }
}

/// How a checkpoint's norm weights scale the hidden channels.
#[derive(Clone, Copy, PartialEq)]
enum Channels {
    /// All near 1.
    Even,
    /// One channel in 32 eight times the others.
    Outliers,
}

/// A checkpoint folder with the tokenizer files of fixture `source`, `config` and random
/// BF16 tensors of the given shapes (F32 for the router's correction bias, as released).
fn write_checkpoint(
    source: &str,
    config: &serde_json::Value,
    shapes: Vec<(String, Vec<usize>)>,
    channels: Channels,
) -> tempfile::TempDir {
    let dir = process_temp_dir();
    let source = model_dir(source);
    for file in [
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "generation_config.json",
    ] {
        std::fs::copy(source.join(file), dir.path().join(file)).expect("copy tokenizer");
    }
    std::fs::write(dir.path().join("config.json"), config.to_string()).expect("config");
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut uniform = move || {
        // xorshift64*: deterministic, dependency-free test data.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let data: Vec<(String, Vec<usize>, safetensors::Dtype, Vec<u8>)> = shapes
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let norm = shape.len() == 1 && name.ends_with("norm.weight");
            // The norms before attention and MLP (not those that feed the residual stream).
            let feeds_matrices =
                name.ends_with("input_layernorm.weight") || name.ends_with("post_attention_layernorm.weight");
            let values = (0..n).map(|i| match (norm, channels) {
                (true, Channels::Outliers) if feeds_matrices && i % 32 == 5 => 8.0 + uniform(),
                (true, _) => 1.0 + 0.1 * uniform(),
                (false, _) => 0.2 * uniform(),
            });
            if name.ends_with("e_score_correction_bias") {
                let bytes = values.flat_map(f32::to_le_bytes).collect();
                (name, shape, safetensors::Dtype::F32, bytes)
            } else {
                let bytes = values.flat_map(|v| half::bf16::from_f32(v).to_le_bytes()).collect();
                (name, shape, safetensors::Dtype::BF16, bytes)
            }
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = data
        .iter()
        .map(|(name, shape, dtype, bytes)| {
            let view = safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes).expect("view");
            (name.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.path().join("model.safetensors")).expect("write");
    dir
}

/// Attention of a synthetic MoE checkpoint: grouped-query (GLM-4.5) or multi-head latent
/// (GLM-4.7-Flash, llama.cpp's deepseek2).
#[derive(Clone, Copy, Debug)]
enum Attention {
    Gqa,
    Mla,
}

/// The shape of a synthetic MoE checkpoint. Every matrix is 256 wide so K-quants apply;
/// one leading dense layer and one NextN layer follow the released models.
#[derive(Clone, Copy, Debug)]
struct MoeShape {
    attention: Attention,
    experts: usize,
    /// Trunk layers; the NextN layer comes on top.
    layers: usize,
    tied_embeddings: bool,
}

fn moe_checkpoint(shape: MoeShape) -> tempfile::TempDir {
    let MoeShape {
        attention,
        experts,
        layers,
        tied_embeddings,
    } = shape;
    let hidden = 256usize;
    let ffn = 256usize;
    let source = match attention {
        Attention::Gqa => "glm4moe-tiny",
        Attention::Mla => "glm47flash-tiny",
    };
    let mut config = read_json(&model_dir(source).join("config.json"));
    config["hidden_size"] = hidden.into();
    config["intermediate_size"] = ffn.into();
    config["moe_intermediate_size"] = ffn.into();
    config["n_routed_experts"] = experts.into();
    config["num_experts_per_tok"] = 2.into();
    config["n_shared_experts"] = 1.into();
    config["first_k_dense_replace"] = 1.into();
    config["num_hidden_layers"] = layers.into();
    config["num_nextn_predict_layers"] = 1.into();
    config["tie_word_embeddings"] = tied_embeddings.into();
    // MLA: 2 heads of 64 (no RoPE) + 64 (RoPE) query/key dims and 128 value dims over a
    // 256-wide latent; GQA: 4 query heads of 64 sharing 2 KV heads.
    let (heads, kv_heads, head_dim) = (4usize, 2usize, 64usize);
    let (mla_heads, rank, nope, rope, value) = (2usize, 256usize, 64usize, 64usize, 128usize);
    match attention {
        Attention::Gqa => {
            config["num_attention_heads"] = heads.into();
            config["num_key_value_heads"] = kv_heads.into();
            config["head_dim"] = head_dim.into();
        }
        Attention::Mla => {
            config["num_attention_heads"] = mla_heads.into();
            config["num_key_value_heads"] = mla_heads.into();
            config["q_lora_rank"] = rank.into();
            config["kv_lora_rank"] = rank.into();
            config["qk_nope_head_dim"] = nope.into();
            config["qk_rope_head_dim"] = rope.into();
            config["v_head_dim"] = value.into();
        }
    }
    let vocab = config["vocab_size"].as_u64().expect("vocab") as usize;
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![vocab, hidden]),
        ("model.norm.weight".into(), vec![hidden]),
    ];
    if !tied_embeddings {
        shapes.push(("lm_head.weight".into(), vec![vocab, hidden]));
    }
    for i in 0..=layers {
        let p = |n: &str| format!("model.layers.{i}.{n}");
        shapes.extend([
            (p("input_layernorm.weight"), vec![hidden]),
            (p("post_attention_layernorm.weight"), vec![hidden]),
        ]);
        match attention {
            Attention::Gqa => shapes.extend([
                (p("self_attn.q_proj.weight"), vec![heads * head_dim, hidden]),
                (p("self_attn.q_proj.bias"), vec![heads * head_dim]),
                (p("self_attn.k_proj.weight"), vec![kv_heads * head_dim, hidden]),
                (p("self_attn.k_proj.bias"), vec![kv_heads * head_dim]),
                (p("self_attn.v_proj.weight"), vec![kv_heads * head_dim, hidden]),
                (p("self_attn.v_proj.bias"), vec![kv_heads * head_dim]),
                (p("self_attn.o_proj.weight"), vec![hidden, heads * head_dim]),
                (p("self_attn.q_norm.weight"), vec![head_dim]),
                (p("self_attn.k_norm.weight"), vec![head_dim]),
            ]),
            Attention::Mla => shapes.extend([
                (p("self_attn.q_a_proj.weight"), vec![rank, hidden]),
                (p("self_attn.q_a_layernorm.weight"), vec![rank]),
                (p("self_attn.q_b_proj.weight"), vec![mla_heads * (nope + rope), rank]),
                (p("self_attn.kv_a_proj_with_mqa.weight"), vec![rank + rope, hidden]),
                (p("self_attn.kv_a_layernorm.weight"), vec![rank]),
                (p("self_attn.kv_b_proj.weight"), vec![mla_heads * (nope + value), rank]),
                (p("self_attn.o_proj.weight"), vec![hidden, mla_heads * value]),
            ]),
        }
        if i == 0 {
            shapes.extend([
                (p("mlp.gate_proj.weight"), vec![ffn, hidden]),
                (p("mlp.up_proj.weight"), vec![ffn, hidden]),
                (p("mlp.down_proj.weight"), vec![hidden, ffn]),
            ]);
        } else {
            shapes.extend([
                (p("mlp.gate.weight"), vec![experts, hidden]),
                (p("mlp.gate.e_score_correction_bias"), vec![experts]),
                (p("mlp.shared_experts.gate_proj.weight"), vec![ffn, hidden]),
                (p("mlp.shared_experts.up_proj.weight"), vec![ffn, hidden]),
                (p("mlp.shared_experts.down_proj.weight"), vec![hidden, ffn]),
            ]);
            for e in 0..experts {
                shapes.extend([
                    (p(&format!("mlp.experts.{e}.gate_proj.weight")), vec![ffn, hidden]),
                    (p(&format!("mlp.experts.{e}.up_proj.weight")), vec![ffn, hidden]),
                    (p(&format!("mlp.experts.{e}.down_proj.weight")), vec![hidden, ffn]),
                ]);
            }
        }
        if i == layers {
            shapes.extend([
                (p("eh_proj.weight"), vec![hidden, 2 * hidden]),
                (p("enorm.weight"), vec![hidden]),
                (p("hnorm.weight"), vec![hidden]),
                (p("shared_head.norm.weight"), vec![hidden]),
            ]);
        }
    }
    write_checkpoint(source, &config, shapes, Channels::Even)
}

/// The synthetic MoE checkpoints, made once per test process: GLM-4.5 shaped with 8
/// experts (llama.cpp special-cases exactly 8) over 8 blocks, so "first eighth" and "more
/// bits" pick real layers; GLM-4.5 shaped with 4 experts and tied embeddings; and
/// GLM-4.7-Flash shaped (MLA) with 8 and with 16 experts.
fn moe_checkpoints() -> &'static [(MoeShape, tempfile::TempDir)] {
    static DIRS: std::sync::OnceLock<Vec<(MoeShape, tempfile::TempDir)>> = std::sync::OnceLock::new();
    DIRS.get_or_init(|| {
        let shape = |attention, experts, layers, tied_embeddings| MoeShape {
            attention,
            experts,
            layers,
            tied_embeddings,
        };
        [
            shape(Attention::Gqa, 8, 7, false),
            shape(Attention::Gqa, 4, 3, true),
            shape(Attention::Mla, 8, 3, false),
            shape(Attention::Mla, 16, 2, false),
        ]
        .into_iter()
        .map(|s| (s, moe_checkpoint(s)))
        .collect()
    })
}

fn convert_with(input: &Path, preset: &str, output: &Path) {
    convert_with_importance(input, preset, output, None);
}

fn convert_with_importance(input: &Path, preset: &str, output: &Path, importance: Option<&ImportanceMatrix>) {
    let options = ConvertOptions {
        preset: Preset::load(preset).expect("preset"),
        quantizer: Some(&GgmlQuantizer),
        importance,
        name: None,
        plan: Default::default(),
        output: Default::default(),
    };
    glm_convert::convert(input, output, &options, &()).unwrap_or_else(|e| panic!("{preset}: {e}"));
}

/// Every tensor of `ours` and `theirs`: same name, type, shape and bytes. Type
/// disagreements are all listed at once: they say which preset rule is missing.
fn assert_same_tensors(ours: &Path, theirs: &Path, what: &str) {
    let read = |path: &PathBuf| {
        let bytes = std::fs::read(path).expect("read");
        let header = read_header(&mut std::io::Cursor::new(&bytes)).expect("header");
        (bytes, header)
    };
    let (ours_bytes, ours) = read(&ours.to_path_buf());
    let (theirs_bytes, theirs) = read(&theirs.to_path_buf());
    assert_eq!(ours.tensors.len(), theirs.tensors.len(), "{what}: tensor count");
    let mut wrong_types = Vec::new();
    for (t, offset) in &ours.tensors {
        let (u, their_offset) = theirs
            .tensors
            .iter()
            .find(|(u, _)| u.name == t.name)
            .unwrap_or_else(|| panic!("{what}: llama.cpp has no {}", t.name));
        assert_eq!(t.ne, u.ne, "{what}: shape of {}", t.name);
        if t.ggml_type != u.ggml_type {
            wrong_types.push(format!(
                "{} is {}, llama.cpp {}",
                t.name,
                t.ggml_type.name(),
                u.ggml_type.name()
            ));
            continue;
        }
        let n = t.n_bytes() as usize;
        let a = &ours_bytes[*offset as usize..*offset as usize + n];
        let b = &theirs_bytes[*their_offset as usize..*their_offset as usize + n];
        assert!(a == b, "{what}: bytes of {} differ", t.name);
    }
    assert!(
        wrong_types.is_empty(),
        "{what}: {} of {} tensors have another type:\n  {}",
        wrong_types.len(),
        ours.tensors.len(),
        wrong_types.join("\n  ")
    );
}

/// Our F32 conversion of `input`, made once per test process (the reference every
/// preset's llama.cpp quantization starts from).
fn f32_conversion(input: &Path) -> PathBuf {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    static DONE: std::sync::Mutex<Vec<(PathBuf, PathBuf)>> = std::sync::Mutex::new(Vec::new());
    let dir = DIR.get_or_init(process_temp_dir);
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, file)) = done.iter().find(|(i, _)| i == input) {
        return file.clone();
    }
    let file = dir.path().join(format!("f32-{}.gguf", done.len()));
    convert_with(input, "f32", &file);
    done.push((input.to_path_buf(), file.clone()));
    file
}

fn check_equivalence(input: &Path, preset: &str) -> std::collections::BTreeSet<GgmlType> {
    check_equivalence_with(input, &input.display().to_string(), preset, None)
}

fn check_equivalence_with(
    input: &Path,
    label: &str,
    preset: &str,
    importance: Option<&ImportanceMatrix>,
) -> std::collections::BTreeSet<GgmlType> {
    let dir = tempfile::tempdir().expect("temp dir");
    let f32_file = f32_conversion(input);
    let ours = dir.path().join("ours.gguf");
    convert_with_importance(input, preset, &ours, importance);
    let theirs = dir.path().join("llama.gguf");
    let file_type = Preset::load(preset).expect("preset").file_type;
    llama_quantize(&f32_file, &theirs, file_type, 2, importance).expect("llama_model_quantize");
    let with = if importance.is_some() { " with an imatrix" } else { "" };
    assert_same_tensors(&ours, &theirs, &format!("{label} {preset}{with}"));
    types_in(&ours)
}

fn types_in(path: &Path) -> std::collections::BTreeSet<GgmlType> {
    let bytes = std::fs::read(path).expect("read");
    let header = read_header(&mut std::io::Cursor::new(&bytes)).expect("header");
    header.tensors.iter().map(|(t, _)| t.ggml_type).collect()
}

macro_rules! equivalence_tests {
    ($($test:ident => $preset:literal),* $(,)?) => {$(
        #[test]
        fn $test() {
            let types = check_equivalence(k_quant_checkpoint(), $preset);
            let wanted = Preset::load($preset).expect("preset").default;
            assert!(types.contains(&wanted), "{}: no {} tensor in {types:?}", $preset, wanted.name());
            // The committed fixtures are 128 wide: K-quants fall back there.
            check_equivalence(&model_dir("glm-tiny"), $preset);
        }
    )*};
}

equivalence_tests! {
    q8_0_matches_llama_quantize => "q8_0",
    q4_0_matches_llama_quantize => "q4_0",
    q6_k_matches_llama_quantize => "q6_k",
    q4_k_m_matches_llama_quantize => "q4_k_m",
    q5_k_m_matches_llama_quantize => "q5_k_m",
    q4_k_s_matches_llama_quantize => "q4_k_s",
    q5_k_s_matches_llama_quantize => "q5_k_s",
    iq4_xs_matches_llama_quantize => "iq4_xs",
}

/// llama.cpp's mixture depends on the model, not only on tensor names: 8-expert models
/// get 8-bit attention keys/values (and Q5_K attention output in the Q4_K presets), tied
/// embeddings take the output head's type. Each preset on every synthetic MoE shape.
macro_rules! moe_equivalence_tests {
    ($($test:ident => $preset:literal),* $(,)?) => {$(
        #[test]
        fn $test() {
            for (shape, dir) in moe_checkpoints() {
                check_equivalence_with(dir.path(), &format!("{shape:?}"), $preset, None);
            }
        }
    )*};
}

moe_equivalence_tests! {
    q8_0_matches_llama_quantize_on_moe => "q8_0",
    q4_0_matches_llama_quantize_on_moe => "q4_0",
    q6_k_matches_llama_quantize_on_moe => "q6_k",
    q4_k_m_matches_llama_quantize_on_moe => "q4_k_m",
    q5_k_m_matches_llama_quantize_on_moe => "q5_k_m",
    q4_k_s_matches_llama_quantize_on_moe => "q4_k_s",
    q5_k_s_matches_llama_quantize_on_moe => "q5_k_s",
    iq4_xs_matches_llama_quantize_on_moe => "iq4_xs",
}

/// `glm quantize` from an F32 GGUF gives the same file as the one-pass conversion: the
/// model facts the preset needs come from the GGUF metadata there, from the config here.
fn assert_requantize_equals_one_pass(input: &Path, label: &str, preset: &str) -> std::collections::BTreeSet<GgmlType> {
    let dir = tempfile::tempdir().expect("temp dir");
    let f32_file = f32_conversion(input);
    let one_pass = dir.path().join("one-pass.gguf");
    convert_with(input, preset, &one_pass);
    let requantized = dir.path().join("requantized.gguf");
    let options = ConvertOptions {
        preset: Preset::load(preset).expect("preset"),
        quantizer: Some(&GgmlQuantizer),
        importance: None,
        name: None,
        plan: Default::default(),
        output: Default::default(),
    };
    glm_convert::requantize(&f32_file, &requantized, &options, &()).expect("requantize");
    assert_same_tensors(&requantized, &one_pass, &format!("{label}: requantize {preset}"));
    types_in(&requantized)
}

#[test]
fn requantize_equals_one_pass_conversion() {
    let types = assert_requantize_equals_one_pass(k_quant_checkpoint(), "Glm4", "q4_k_m");
    assert!(
        types.contains(&GgmlType::Q4K) && types.contains(&GgmlType::Q6K),
        "mixed types expected: {types:?}"
    );
    // The shapes whose facts change the mixture.
    for (shape, dir) in moe_checkpoints()
        .iter()
        .filter(|(s, _)| s.experts == 8 || s.tied_embeddings)
    {
        let label = format!("{shape:?}");
        let types = assert_requantize_equals_one_pass(dir.path(), &label, "q4_k_m");
        if shape.experts == 8 {
            assert!(
                types.contains(&GgmlType::Q5K),
                "{label}: 8 experts give Q5_K attn_output"
            );
        }
    }
}

/// A legacy-format importance matrix with positive pseudo-random weights for every
/// quantizable tensor of a GGUF file (what `llama-imatrix` would collect).
fn importance_for(gguf: &Path, dir: &Path) -> ImportanceMatrix {
    let bytes = std::fs::read(gguf).expect("read");
    let header = read_header(&mut std::io::Cursor::new(&bytes)).expect("header");
    let tensors: Vec<_> = header
        .tensors
        .iter()
        .filter(|(t, _)| glm_convert::preset::is_quantizable(&t.name, &t.ne))
        .collect();
    let mut file = Vec::new();
    file.extend((tensors.len() as i32).to_le_bytes());
    let mut seed = 7u32;
    for (t, _) in tensors {
        file.extend((t.name.len() as i32).to_le_bytes());
        file.extend(t.name.as_bytes());
        file.extend(3i32.to_le_bytes()); // calls
        let n = t.ne[0] as usize * t.ne.get(2).copied().unwrap_or(1) as usize;
        file.extend((n as i32).to_le_bytes());
        for _ in 0..n {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            file.extend((0.1 + (seed >> 8) as f32 / (1u32 << 24) as f32 * 3.0).to_le_bytes());
        }
    }
    let path = dir.join("imatrix.dat");
    std::fs::write(&path, file).expect("write imatrix");
    ImportanceMatrix::load(&path).expect("load imatrix")
}

/// With an importance matrix both sides must still agree bit for bit (the weights change
/// the rounding of every K-quant and legacy block, and Q4_0 guards early ffn_down layers).
#[test]
fn importance_matrix_matches_llama_quantize() {
    let dir = tempfile::tempdir().expect("temp dir");
    let input = k_quant_checkpoint();
    let importance = importance_for(&f32_conversion(input), dir.path());
    for preset in ["q4_k_m", "q4_0", "q5_k_s", "iq4_xs"] {
        let with = check_equivalence_with(input, "Glm4", preset, Some(&importance));
        if preset == "q4_0" {
            assert!(
                with.contains(&GgmlType::Q4_1),
                "Q4_0 with an imatrix guards early ffn_down with Q4_1"
            );
        }
        if preset == "iq4_xs" {
            assert!(
                !with.contains(&GgmlType::Q5K),
                "IQ4_XS guards early ffn_down with Q5_K only without an imatrix"
            );
        }
    }
    // And the weights matter: without them the bytes differ.
    let plain = dir.path().join("plain.gguf");
    convert_with(input, "q4_k_m", &plain);
    let weighted = dir.path().join("weighted.gguf");
    convert_with_importance(input, "q4_k_m", &weighted, Some(&importance));
    assert_ne!(
        std::fs::read(&plain).expect("read"),
        std::fs::read(&weighted).expect("read")
    );
}

/// The same with an importance matrix on the 8-expert MoE shapes (per-expert weights for
/// the stacked expert tensors).
#[test]
fn importance_matrix_matches_llama_quantize_on_moe() {
    for (shape, input) in moe_checkpoints().iter().filter(|(s, _)| s.experts == 8) {
        let dir = tempfile::tempdir().expect("temp dir");
        let importance = importance_for(&f32_conversion(input.path()), dir.path());
        for preset in ["q4_k_m", "q4_0", "q5_k_s", "iq4_xs"] {
            check_equivalence_with(input.path(), &format!("{shape:?}"), preset, Some(&importance));
        }
    }
}

/// Types that need importance weights (IQ2_XXS here) refuse to run without them, before
/// writing anything, and work with them.
#[test]
fn importance_only_types_need_an_imatrix() {
    let dir = tempfile::tempdir().expect("temp dir");
    let preset_file = dir.path().join("iq2.yaml");
    std::fs::write(
        &preset_file,
        "description: 2-bit\nfile_type: 19\ndefault: iq2_xxs\nrules:\n  - names: [output.weight]\n    type: q6_k\n",
    )
    .expect("preset");
    let preset = preset_file.to_str().expect("path");
    let input = k_quant_checkpoint();
    let output = dir.path().join("iq2.gguf");
    let options = ConvertOptions {
        preset: Preset::load(preset).expect("preset"),
        quantizer: Some(&GgmlQuantizer),
        importance: None,
        name: None,
        plan: Default::default(),
        output: Default::default(),
    };
    let err = glm_convert::convert(input, &output, &options, &()).expect_err("must refuse");
    assert!(err.to_string().contains("IQ2_XXS needs an importance matrix"), "{err}");
    assert!(!output.exists());

    let f32_file = dir.path().join("f32.gguf");
    convert_with(input, "f32", &f32_file);
    let importance = importance_for(&f32_file, dir.path());
    convert_with_importance(input, preset, &output, Some(&importance));
    let types = types_in(&output);
    assert!(types.contains(&GgmlType::IQ2XXS), "{types:?}");
    let engine = glm::engine::Engine::load(&output, &Default::default()).expect("llama.cpp loads it");
    let context = glm::engine::ContextOptions {
        ctx_size: 64,
        ..glm::engine::ContextOptions::with_threads(2)
    };
    let logits = engine.logits(&[1, 2, 3], false, &context).expect("logits");
    assert!(logits[0].iter().all(|v| v.is_finite()));
}

/// What an importance matrix is for: a matrix `glm imatrix` computes from a text makes
/// the Q4_K_M and IQ4_XS models closer to F32 (mean KL divergence of the next-token
/// distributions over a text the matrix never saw) than the same presets without one.
#[test]
fn a_computed_imatrix_brings_quantized_models_closer_to_f32() {
    use glm::engine::{ContextOptions, Engine, LoadOptions};
    let dir = tempfile::tempdir().expect("temp dir");
    let f32_file = f32_conversion(outlier_checkpoint());
    let matrix = dir.path().join("imatrix.gguf");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_glm"))
        .arg("imatrix")
        .arg(&f32_file)
        .arg("-f")
        .arg(fixtures().join("imatrix").join("calibration.txt"))
        .args(["-c", "128", "-t", "2", "-o"])
        .arg(&matrix)
        .output()
        .expect("run glm imatrix");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let importance = ImportanceMatrix::load(&matrix).expect("load the computed matrix");

    let held_out = "A harbour at dusk: the ferries come in one by one, the gulls settle on the \
                    posts, and the lights of the town come on along the water. Somebody is \
                    frying fish; somebody else is arguing about the price of diesel.";
    let context = ContextOptions::with_threads(2);
    let logits = |path: &Path| {
        let engine = Engine::load(path, &LoadOptions::default()).expect("load");
        let tokens = engine.tokenize(held_out);
        engine.logits(&tokens, true, &context).expect("logits")
    };
    let reference = logits(&f32_file);
    let mean_kl = |path: &Path| {
        let rows = logits(path);
        rows.iter()
            .zip(&reference)
            .map(|(q, p)| kl_divergence(p, q))
            .sum::<f64>()
            / rows.len() as f64
    };
    for preset in ["q4_k_m", "iq4_xs"] {
        let without = dir.path().join(format!("{preset}.gguf"));
        let with = dir.path().join(format!("{preset}-imatrix.gguf"));
        convert_with_importance(outlier_checkpoint(), preset, &without, None);
        convert_with_importance(outlier_checkpoint(), preset, &with, Some(&importance));
        let (kl_without, kl_with) = (mean_kl(&without), mean_kl(&with));
        eprintln!("{preset}: mean KL {kl_without:.6} without the matrix, {kl_with:.6} with it");
        assert!(
            kl_with < kl_without,
            "{preset}: the matrix made it worse ({kl_with} vs {kl_without})"
        );
    }
}
