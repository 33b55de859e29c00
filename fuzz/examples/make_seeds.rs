//! Writes the seed inputs of every fuzz target into `corpus/<target>/seed-*`: small valid
//! files of each kind, so that fuzzing starts from what the parsers accept.
//!
//! Run from `fuzz/`: `cargo run --no-default-features --example make_seeds`.

use std::fs;
use std::path::Path;

use glm_convert::gguf::{padding, write_header, MetaValue, Metadata, TensorHeader};
use glm_convert::GgmlType;

fn main() -> std::io::Result<()> {
    let fixtures = Path::new("../tests/fixtures/models");
    gguf_seeds()?;
    safetensors_seeds(fixtures)?;
    for entry in fs::read_dir("../quant-presets")? {
        let path = entry?.path();
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        save("preset_parser", &name, &fs::read(&path)?)?;
    }
    chat_template_seeds()?;
    thinking_seeds()
}

fn save(target: &str, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let dir = Path::new("corpus").join(target);
    fs::create_dir_all(&dir)?;
    fs::write(dir.join(format!("seed-{name}")), bytes)
}

/// A GGUF file: the header, then zeroed tensor data, each tensor padded.
fn gguf(meta: &Metadata, tensors: &[TensorHeader]) -> Vec<u8> {
    let mut out = Vec::new();
    write_header(&mut out, meta, tensors).expect("writing to memory");
    for t in tensors {
        let n = t.n_bytes();
        out.resize(out.len() + (n + padding(n)) as usize, 0);
    }
    out
}

fn tensor(name: &str, ne: &[u64], ggml_type: GgmlType) -> TensorHeader {
    TensorHeader {
        name: name.into(),
        ne: ne.to_vec(),
        ggml_type,
    }
}

fn model_meta(arch: &str, vocab: usize) -> Metadata {
    let mut meta = Metadata::default();
    meta.set("general.architecture", arch);
    meta.set("general.name", "fuzz seed");
    meta.set(format!("{arch}.block_count"), 2u32);
    meta.set(format!("{arch}.context_length"), 128u32);
    meta.set(format!("{arch}.embedding_length"), 64u32);
    meta.set(format!("{arch}.feed_forward_length"), 96u32);
    meta.set(format!("{arch}.attention.head_count"), 4u32);
    meta.set(format!("{arch}.attention.head_count_kv"), 2u32);
    meta.set(format!("{arch}.attention.key_length"), 16u32);
    meta.set(format!("{arch}.rope.dimension_count"), 8u32);
    meta.set(format!("{arch}.rope.freq_base"), 10000.0f32);
    meta.set(format!("{arch}.attention.layer_norm_rms_epsilon"), 1e-5f32);
    meta.set("tokenizer.ggml.model", "gpt2");
    let tokens: Vec<String> = (0..vocab).map(|i| format!("t{i}")).collect();
    meta.set("tokenizer.ggml.tokens", MetaValue::from(tokens));
    meta.set("tokenizer.ggml.token_type", MetaValue::from(vec![1i32; vocab]));
    meta.set("tokenizer.ggml.merges", MetaValue::from(vec!["t 0".to_owned()]));
    meta.set("tokenizer.ggml.bos_token_id", 1u32);
    meta.set("tokenizer.ggml.eos_token_id", 2u32);
    meta.set("tokenizer.ggml.padding_token_id", u32::MAX);
    meta.set(
        "tokenizer.chat_template",
        "{% for m in messages %}{{ m.content }}{% endfor %}",
    );
    meta
}

fn gguf_seeds() -> std::io::Result<()> {
    let vocab = 16;
    let dense = model_meta("glm4", vocab);
    let tensors = [
        tensor("token_embd.weight", &[64, vocab as u64], GgmlType::F16),
        tensor("blk.0.attn_q.weight", &[64, 64], GgmlType::Q8_0),
        tensor("blk.1.attn_norm.weight", &[64], GgmlType::F32),
        tensor("output.weight", &[64, vocab as u64], GgmlType::Q4_0),
    ];
    save("gguf_reader", "dense", &gguf(&dense, &tensors))?;

    let mut v2 = gguf(&dense, &tensors[..1]);
    v2[4..8].copy_from_slice(&2u32.to_le_bytes());
    save("gguf_reader", "version2", &v2)?;

    let mut aligned = dense.clone();
    // write_header pads to GGUF's default of 32, which the key must then name.
    aligned.set("general.alignment", 32u32);
    aligned.set("glm4.attention.head_count", MetaValue::from(vec![4i32, 4]));
    aligned.set("tokenizer.ggml.scores", MetaValue::from(vec![0.0f32; vocab]));
    save("gguf_reader", "aligned", &gguf(&aligned, &tensors[..2]))?;

    let mut moe = model_meta("glm4moe", vocab);
    moe.set("glm4moe.block_count", 3u32);
    moe.set("glm4moe.expert_count", 4u32);
    moe.set("glm4moe.expert_used_count", 2u32);
    moe.set("glm4moe.leading_dense_block_count", 1u32);
    moe.set("glm4moe.nextn_predict_layers", 1u32);
    moe.set("glm4moe.rope.scaling.factor", 1.0f32);
    let moe_tensors = [
        tensor("token_embd.weight", &[64, vocab as u64], GgmlType::BF16),
        tensor("blk.1.ffn_down_exps.weight", &[256, 64, 4], GgmlType::Q4K),
        tensor("blk.2.ffn_gate_inp.weight", &[64, 4], GgmlType::F32),
    ];
    save("gguf_reader", "moe", &gguf(&moe, &moe_tensors))?;

    let mut clip = Metadata::default();
    clip.set("general.architecture", "clip");
    clip.set("clip.has_vision_encoder", true);
    clip.set("clip.projector_type", "glm4v");
    for (key, value) in [
        ("image_size", 56u32),
        ("patch_size", 14),
        ("embedding_length", 64),
        ("block_count", 1),
        ("attention.head_count", 4),
        ("projection_dim", 64),
    ] {
        clip.set(format!("clip.vision.{key}"), value);
    }
    clip.set("clip.vision.attention.layer_norm_epsilon", 1e-6f32);
    // The target checks a projector against itself: this makes it fit.
    clip.set("clip.embedding_length", 64u32);
    let clip_tensors = [tensor("v.patch_embd.weight", &[14, 14, 3, 2], GgmlType::F16)];
    save("gguf_reader", "projector", &gguf(&clip, &clip_tensors))?;
    save("gguf_reader", "empty", &gguf(&Metadata::default(), &[]))?;
    report_gguf_seeds()
}

/// Says what the reader and the checks make of each GGUF seed, so that a seed the
/// checks refuse (and which therefore covers less) is noticed.
fn report_gguf_seeds() -> std::io::Result<()> {
    use glm_convert::gguf::{check, read};
    for entry in fs::read_dir("corpus/gguf_reader")? {
        let path = entry?.path();
        let verdict = match read::parse(&fs::read(&path)?) {
            Err(e) => format!("unreadable: {e}"),
            Ok(h) => format!(
                "model: {:?}; projector: {:?}",
                check::check_model(&h),
                check::check_projector(&h, &h)
            ),
        };
        println!("{}: {verdict}", path.display());
    }
    Ok(())
}

/// A shard as safetensors writes it: header length, JSON header, zeroed data.
fn shard(tensors: &[(&str, &str, &[usize])]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut offset = 0;
    for (name, dtype, shape) in tensors {
        let size = match *dtype {
            "F32" | "I32" => 4,
            "F16" | "BF16" => 2,
            _ => 1,
        };
        let len = shape.iter().product::<usize>() * size;
        header.insert(
            (*name).into(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len]}),
        );
        offset += len;
    }
    let mut text = serde_json::Value::Object(header).to_string();
    // safetensors pads the header with spaces to 8 bytes.
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let mut bytes = (text.len() as u64).to_le_bytes().to_vec();
    bytes.extend(text.as_bytes());
    bytes.resize(bytes.len() + offset, 0);
    bytes
}

fn safetensors_seeds(fixtures: &Path) -> std::io::Result<()> {
    save(
        "safetensors_header",
        "shard",
        &shard(&[
            ("model.embed_tokens.weight", "BF16", &[16, 8]),
            ("model.layers.0.input_layernorm.weight", "F32", &[8]),
            ("lm_head.weight", "F16", &[16, 8]),
        ]),
    )?;
    save("safetensors_header", "int-dtype", &shard(&[("a", "I32", &[2, 2])]))?;
    save("safetensors_header", "no-tensors", &shard(&[]))?;
    for model in ["glm4-tiny", "glm4moe-tiny"] {
        let index = fs::read(fixtures.join(model).join("model.safetensors.index.json"))?;
        save("safetensors_header", &format!("{model}-index"), &index)?;
    }
    save(
        "safetensors_header",
        "index-small",
        br#"{"metadata":{"total_size":8},"weight_map":{"a":"model-00001-of-00002.safetensors","b":"sub/model-00002-of-00002.safetensors"}}"#,
    )
}

fn chat_template_seeds() -> std::io::Result<()> {
    let conversation = serde_json::json!({
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "", "reasoning_content": "need a tool",
             "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}}]},
            {"role": "tool", "content": "{\"temp\": 21.5}"},
            {"role": "assistant", "content": "<think>ok</think>21.5 °C"},
            {"role": "user", "content": [{"type": "text", "text": "and this?"}, {"type": "image"}]}
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
        "enable_thinking": false,
        "bos_token": "[gMASK]<sop>"
    })
    .to_string();
    let simple = r#"[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}]"#;
    // Odd first bytes pick fixture templates (byte >> 1 is the index); 0x80 adds the
    // generation prompt.
    for (i, flags) in [0x81u8, 0x03, 0x85, 0x07].into_iter().enumerate() {
        let mut input = vec![flags];
        input.extend(conversation.as_bytes());
        save("chat_template", &format!("fixture{i}-tools"), &input)?;
        let mut input = vec![flags ^ 0x80];
        input.extend(simple.as_bytes());
        save("chat_template", &format!("fixture{i}-simple"), &input)?;
    }
    let sources = [
        ("loop", "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}{% if not loop.last %}\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"),
        ("tojson", "{{ messages | tojson(indent=2, sort_keys=True) }}{{ tools | tojson(ensure_ascii=True, separators=(',', ':')) }}"),
        ("methods", "{% set ns = namespace(n=0) %}{% for m in messages %}{% if m.content is string and m.content.strip().startswith('h') %}{% set ns.n = ns.n + 1 %}{% endif %}{{ m.content.split(' ') | join('|') }}{% endfor %}{{ ns.n }}"),
        ("macro", "{% macro show(v) %}{% if v is mapping %}{% for k, x in v.items() %}{{ k }}={{ show(x) }};{% endfor %}{% else %}{{ v }}{% endif %}{% endmacro %}{% for m in messages %}{{ show(m) }}{% endfor %}"),
        ("raise", "{% if messages | length == 0 %}{{ raise_exception('no messages') }}{% endif %}{{ messages[-1].content | trim }}"),
        ("strftime", "{{ strftime_now('%Y-%m-%d') }}"),
    ];
    for (name, source) in sources {
        let mut input = vec![0u8];
        input.extend(source.as_bytes());
        input.push(0);
        input.extend(simple.as_bytes());
        save("chat_template", name, &input)?;
    }
    Ok(())
}

fn thinking_seeds() -> std::io::Result<()> {
    let streams: [(&str, u8, &str); 5] = [
        ("answer", 0, "Hello \u{1}world <thi\u{1}nk>no</think>"),
        ("reasoning", 1, "let me see\u{1} 2+2</th\u{1}ink>\n4"),
        (
            "tool-call",
            0,
            "<think>need weather</think>Checking.<tool_\u{1}call>get_weather\n<arg_key>city</arg_key>\n<arg_value>北京</arg_value>\n<arg_key>days</arg_key>\n<arg_value>3</arg_value>\n</tool_call>",
        ),
        ("unfinished-call", 0, "<tool_call>now\u{1}<arg_key>k</arg_key>"),
        ("bad-call", 0, "<tool_call>f<arg_key>k</arg_key>no value</tool_call>tail"),
    ];
    for (name, flags, text) in streams {
        let mut input = vec![flags];
        input.extend(text.as_bytes());
        save("thinking_stream", name, &input)?;
    }
    Ok(())
}
