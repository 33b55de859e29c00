//! FP8 checkpoints (`tests/fixtures/generate_fp8.py`): converting one must give, tensor
//! for tensor, the bytes that converting its dequantized twin gives — F32 (so the
//! dequantization is exact) and Q4_K_M (so the quantizer sees the same values). Also the
//! checkpoints glm refuses for their quantization.

mod common;

use std::path::Path;

use common::*;
use glm::engine::quantize::GgmlQuantizer;
use glm_convert::{ConvertOptions, Preset};

/// Every tensor of a GGUF file: (name, type, data bytes).
fn tensors(path: &Path) -> Vec<(String, String, Vec<u8>)> {
    let file = glm_convert::gguf::read_file(path).expect("read the GGUF");
    let mut out: Vec<_> = file
        .header
        .tensors
        .iter()
        .map(|(header, offset)| {
            let start = *offset as usize;
            let data = file.bytes()[start..start + header.n_bytes() as usize].to_vec();
            (header.name.clone(), format!("{:?}", header.ggml_type), data)
        })
        .collect();
    out.sort();
    out
}

fn convert(model: &str, preset: &str, out: &Path) {
    let options = ConvertOptions {
        preset: Preset::load(preset).expect("preset"),
        quantizer: Some(&GgmlQuantizer),
        importance: None,
        name: Some("same".into()),
        plan: Default::default(),
        output: Default::default(),
    };
    glm_convert::convert(&model_dir(model), out, &options, &()).unwrap_or_else(|e| panic!("converting {model}: {e}"));
}

fn check_equal_to_twin(model: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    for preset in ["f32", "q4_k_m"] {
        let (fp8, twin) = (dir.path().join("fp8.gguf"), dir.path().join("twin.gguf"));
        convert(model, preset, &fp8);
        convert(&format!("{model}-dequant"), preset, &twin);
        let (got, expected) = (tensors(&fp8), tensors(&twin));
        assert_eq!(
            got.len(),
            expected.len(),
            "{model} {preset}: tensor count (scales must not be tensors)"
        );
        for (a, b) in got.iter().zip(&expected) {
            assert_eq!((&a.0, &a.1), (&b.0, &b.1), "{model} {preset}");
            assert!(
                a.2 == b.2,
                "{model} {preset}: tensor {} differs from the dequantized twin's",
                a.0
            );
        }
    }
}

#[test]
fn block_scaled_fp8_with_partial_edge_blocks_converts_as_its_dequantized_twin() {
    check_equal_to_twin("glm4-tiny-fp8-block");
}

#[test]
fn per_tensor_and_per_channel_fp8_moe_converts_as_its_dequantized_twin() {
    check_equal_to_twin("glm4moe-tiny-fp8-mixed");
}

/// A copy of an FP8 fixture with `edit` applied to its config.
fn edited(model: &str, edit: impl FnOnce(&mut serde_json::Value)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for entry in std::fs::read_dir(model_dir(model)).expect("fixture") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).expect("copy");
    }
    let path = dir.path().join("config.json");
    let mut config = read_json(&path);
    edit(&mut config);
    std::fs::write(&path, config.to_string()).expect("write config");
    dir
}

fn convert_error(dir: &Path) -> String {
    let options = ConvertOptions {
        preset: Preset::load("f32").expect("preset"),
        quantizer: None,
        importance: None,
        name: None,
        plan: Default::default(),
        output: Default::default(),
    };
    let out = tempfile::tempdir().expect("temp dir");
    glm_convert::convert(dir, &out.path().join("x.gguf"), &options, &())
        .expect_err("refused")
        .to_string()
}

#[test]
fn other_quantizations_and_wrong_block_sizes_are_one_clear_line() {
    let gptq = edited("glm4-tiny-fp8-block", |c| {
        c["quantization_config"] = serde_json::json!({"quant_method": "gptq", "bits": 4})
    });
    let error = convert_error(gptq.path());
    assert!(
        error.contains("config.json") && error.contains("\"gptq\"") && error.contains("FP8"),
        "{error}"
    );
    let e5m2 = edited("glm4-tiny-fp8-block", |c| {
        c["quantization_config"]["fmt"] = "e5m2".into()
    });
    assert!(convert_error(e5m2.path()).contains("\"e5m2\""));
    let wrong_block = edited("glm4-tiny-fp8-block", |c| {
        c["quantization_config"]["weight_block_size"] = serde_json::json!([128, 128])
    });
    let error = convert_error(wrong_block.path());
    assert!(
        error.contains("FP8 tensor") && error.contains("blocks of 128×128"),
        "{error}"
    );
}
