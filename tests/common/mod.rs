//! Shared helpers for the integration tests: fixture paths, conversions cached per test
//! process, and reference files written by `tests/fixtures/generate.py`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use glm::engine::quantize::GgmlQuantizer;
use glm_convert::{ConvertOptions, Preset};
use serde_json::Value;

/// The presets every fixture is converted to in the layout tests.
pub const BASIC_PRESETS: [&str; 4] = ["f32", "f16", "bf16", "q8_0"];

/// Dense fixtures (GlmForCausalLM, Glm4ForCausalLM) share one tokenizer.
pub const DENSE_MODELS: [&str; 2] = ["glm-tiny", "glm4-tiny"];
/// Mixture-of-experts fixtures (GLM-4.5-like, GLM-4.5-Air-like, GLM-4.7-Flash-like).
pub const MOE_MODELS: [&str; 3] = ["glm4moe-tiny", "glm4moe-air-tiny", "glm47flash-tiny"];

/// Vision-language fixtures (GLM-4.5V and GLM-4.1V shaped; the MoE tokenizer).
pub const VISION_MODELS: [&str; 2] = ["glm45v-tiny", "glm41v-tiny"];

/// Tokenization references of the tokenizer a fixture uses.
pub fn tokenization_file(model: &str) -> PathBuf {
    if MOE_MODELS.contains(&model) || VISION_MODELS.contains(&model) {
        fixtures().join("tokenization_moe.json")
    } else {
        fixtures().join("tokenization.json")
    }
}

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn model_dir(model: &str) -> PathBuf {
    fixtures().join("models").join(model)
}

/// A writable copy of a fixture folder inside `into`.
pub fn fixture_copy(model: &str, into: &Path) -> PathBuf {
    let dir = into.join(model);
    std::fs::create_dir_all(&dir).expect("mkdir");
    for entry in std::fs::read_dir(model_dir(model)).expect("fixture") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), dir.join(entry.file_name())).expect("copy");
    }
    dir
}

pub fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn reference(model: &str) -> Value {
    read_json(&model_dir(model).join("reference.json"))
}

/// A folder for files a test process keeps until it ends. A `TempDir` in a static is
/// never dropped and would stay behind after every run; instead each process gets a
/// folder named by its id under cargo's scratch folder for tests, and the folders of
/// processes that have ended are removed when the next one starts.
pub fn process_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("glm-tests");
        std::fs::create_dir_all(&root).expect("test scratch folder");
        for entry in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            let ended = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<u32>().ok())
                .is_some_and(|pid| cfg!(target_os = "linux") && !Path::new(&format!("/proc/{pid}")).exists());
            if ended {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let dir = root.join(std::process::id().to_string());
        std::fs::create_dir_all(&dir).expect("test process folder");
        dir
    })
}

/// A new folder inside [`process_dir`], for files kept for the whole test process.
pub fn process_temp_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(process_dir()).expect("temporary directory")
}

/// Converts a fixture once per test process and returns the GGUF path.
pub fn converted(model: &str, preset: &str) -> PathBuf {
    converted_with(model, preset, true)
}

/// As [`converted`], choosing whether NextN (MTP) layers are kept.
pub fn converted_with(model: &str, preset: &str, keep_mtp: bool) -> PathBuf {
    static DONE: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let done = DONE.get_or_init(Default::default);
    let mut done = done.lock().unwrap_or_else(|e| e.into_inner());
    let key = format!("{model}-{keep_mtp}-{preset}");
    if let Some(path) = done.get(&key) {
        return path.clone();
    }
    let output = process_dir().join(format!("{model}-{keep_mtp}-{}.gguf", preset));
    let options = ConvertOptions {
        preset: Preset::load(preset).expect("built-in preset"),
        quantizer: Some(&GgmlQuantizer),
        importance: None,
        name: None,
        plan: glm_convert::PlanOptions {
            keep_mtp,
            ..Default::default()
        },
        output: Default::default(),
    };
    glm_convert::convert(&model_dir(model), &output, &options, &())
        .unwrap_or_else(|e| panic!("converting {model} to {}: {e}", preset));
    done.insert(key, output.clone());
    output
}

/// The `role` of every message of a conversation saved with `/save`.
pub fn saved_roles(path: &Path) -> Vec<String> {
    read_json(path)
        .as_array()
        .expect("a list of messages")
        .iter()
        .filter_map(|m| m["role"].as_str().map(str::to_owned))
        .collect()
}

pub fn ids(value: &Value) -> Vec<i32> {
    value
        .as_array()
        .expect("list of ids")
        .iter()
        .map(|v| v.as_i64().expect("integer id") as i32)
        .collect()
}

pub fn floats(value: &Value) -> Vec<f32> {
    value
        .as_array()
        .expect("list of floats")
        .iter()
        .map(|v| v.as_f64().expect("number") as f32)
        .collect()
}

pub fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |best, (i, &v)| {
                if v > best.1 {
                    (i, v)
                } else {
                    best
                }
            },
        )
        .0
}

fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
    let log_z = max + sum.ln();
    row.iter().map(|&v| v as f64 - log_z).collect()
}

/// KL(reference ‖ candidate) of the softmax distributions of two logit rows.
pub fn kl_divergence(reference: &[f32], candidate: &[f32]) -> f64 {
    let p = log_softmax(reference);
    let q = log_softmax(candidate);
    p.iter().zip(&q).map(|(lp, lq)| lp.exp() * (lp - lq)).sum()
}

/// Splits a GGUF the way llama.cpp's `gguf-split` does: `<stem>-0000i-of-0000n.gguf` in
/// `dir`, the tensors in `parts` runs, each part a whole GGUF with `split.no`,
/// `split.count` and `split.tensors.count`, the metadata in the first. Returns the parts.
pub fn split_gguf(src: &Path, dir: &Path, stem: &str, parts: usize) -> Vec<PathBuf> {
    use glm_convert::gguf::{write_header, MetaValue, Metadata, TensorHeader};
    let file = glm_convert::gguf::read_file(src).expect("read gguf");
    let tensors = &file.header.tensors;
    let per_part = tensors.len().div_ceil(parts);
    let mut paths = Vec::new();
    for (index, chunk) in tensors.chunks(per_part).enumerate() {
        let mut meta = if index == 0 {
            file.header.meta.clone()
        } else {
            Metadata::default()
        };
        meta.set("split.no", MetaValue::U16(index as u16));
        meta.set("split.count", MetaValue::U16(parts as u16));
        meta.set("split.tensors.count", MetaValue::I32(tensors.len() as i32));
        let headers: Vec<TensorHeader> = chunk.iter().map(|(t, _)| t.clone()).collect();
        let mut out = Vec::new();
        write_header(&mut out, &meta, &headers).expect("header");
        for (t, offset) in chunk {
            let n = t.n_bytes() as usize;
            out.extend_from_slice(&file.bytes()[*offset as usize..*offset as usize + n]);
            out.extend(std::iter::repeat_n(0u8, glm_convert::gguf::padding(n as u64) as usize));
        }
        let path = dir.join(format!("{stem}-{:05}-of-{parts:05}.gguf", index + 1));
        std::fs::write(&path, out).expect("write part");
        paths.push(path);
    }
    assert_eq!(paths.len(), parts, "fewer tensors than parts");
    paths
}

/// A 24-bit BMP (a format llama.cpp's image loader reads) with a colour gradient.
pub fn write_bmp(path: &Path, width: u32, height: u32) {
    let row = (width * 3).div_ceil(4) * 4;
    let size = 54 + row * height;
    let mut bytes = Vec::with_capacity(size as usize);
    bytes.extend(b"BM");
    bytes.extend(size.to_le_bytes());
    bytes.extend([0u8; 4]);
    bytes.extend(54u32.to_le_bytes());
    bytes.extend(40u32.to_le_bytes());
    bytes.extend((width as i32).to_le_bytes());
    bytes.extend((height as i32).to_le_bytes());
    bytes.extend(1u16.to_le_bytes());
    bytes.extend(24u16.to_le_bytes());
    bytes.extend([0u8; 24]);
    for y in 0..height {
        for x in 0..width {
            bytes.extend([(x * 255 / width) as u8, (y * 255 / height) as u8, 128]);
        }
        bytes.extend(vec![0u8; (row - width * 3) as usize]);
    }
    std::fs::write(path, bytes).expect("write image");
}

/// Runs `command` with `stdin` written to its standard input (none: empty input) and
/// collects its output.
pub fn output_with_stdin(command: &mut std::process::Command, stdin: Option<&str>) -> std::process::Output {
    use std::process::Stdio;
    let mut child = command
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn glm");
    if let Some(text) = stdin {
        use std::io::Write;
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(text.as_bytes()).expect("write stdin");
    }
    child.wait_with_output().expect("wait for glm")
}
