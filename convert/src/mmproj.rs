//! The vision projector ("mmproj") GGUF of GLM-4.5V / GLM-4.6V for llama.cpp's libmtmd
//! (`clip` architecture, `glm4v` projector): the vision tower and patch merger, with the
//! Conv3d patch embedding split into its two temporal Conv2d kernels.

use std::path::Path;

use serde_json::Value;

use crate::arch::{PlannedTensor, SourceSlice};
use crate::checkpoint::{Checkpoint, TensorEntry};
use crate::config::{HfConfig, VisionConfig};
use crate::error::{read_json, ConvertError, Result};
use crate::gguf::{MetaValue, Metadata};
use crate::output::OutputOptions;
use crate::preset::{ModelFacts, Preset};
use crate::tensor_type::GgmlType;
use crate::writer::{plan_headers, write_planned, ConvertOptions, ConvertSummary, Progress};

/// CLIP's normalisation, which GLM-4.xV's image processor uses; taken when the checkpoint
/// ships no preprocessor config.
const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

const CONVOLUTIONS: [&str; 3] = ["v.patch_embd.weight", "v.patch_embd.weight.1", "mm.patch_merger.weight"];

/// True for checkpoints that have a vision tower, for which [`convert_mmproj`] writes a
/// projector.
pub fn has_vision(input: &Path) -> Result<bool> {
    Ok(HfConfig::load(input)?.vision().is_some())
}

/// Writes the projector of a vision-language checkpoint to `output`; `None` when the
/// checkpoint has no `vision_config`. Matrices get `ty`; norms, biases and the position
/// embedding stay F32.
pub fn convert_mmproj(
    input: &Path,
    output: &Path,
    ty: GgmlType,
    options: &ConvertOptions,
    progress: &dyn Progress,
) -> Result<Option<ConvertSummary>> {
    let config = HfConfig::load(input)?;
    let Some(vision) = config.vision() else {
        return Ok(None);
    };
    let checkpoint = Checkpoint::open(input, config.fp8_block_size()?)?;
    let mut planned = Vec::new();
    for entry in checkpoint.entries() {
        let Some(name) = entry
            .name
            .strip_prefix("model.visual.")
            .or_else(|| entry.name.strip_prefix("visual."))
        else {
            continue;
        };
        planned.extend(plan_tensor(name, entry)?);
    }
    if planned.is_empty() {
        return Err(config.error("has a vision_config but the checkpoint has no vision tensors"));
    }
    let preset = Preset {
        name: ty.name().to_lowercase(),
        description: "mmproj".into(),
        file_type: file_type(ty)?,
        default: ty,
        rules: Vec::new(),
        fallback: Default::default(),
    };
    let mut headers = plan_headers(&planned, &checkpoint, &preset, &ModelFacts::default(), false)?;
    // The convolution kernels are never quantized; like llama.cpp's converter, they follow
    // an F16 file and are F32 otherwise.
    if ty == GgmlType::F16 {
        for header in headers.iter_mut().filter(|h| CONVOLUTIONS.contains(&h.name.as_str())) {
            header.ggml_type = GgmlType::F16;
        }
    }
    let meta = metadata(input, &config, vision, &preset)?;
    // A projector is small: never split.
    let options = ConvertOptions {
        preset,
        output: OutputOptions {
            split: Default::default(),
            ..options.output
        },
        ..options.clone()
    };
    let (outputs, written) = write_planned(output, &meta, &planned, &headers, &checkpoint, &options, progress)?;
    progress.finish();
    Ok(Some(ConvertSummary {
        outputs,
        architecture: "clip".into(),
        tensors: headers.len(),
        parameters: headers.iter().map(|h| h.ne.iter().product::<u64>()).sum(),
        bytes: written,
    }))
}

/// llama.cpp's `general.file_type` for the projector types `--mmproj-type` offers.
fn file_type(ty: GgmlType) -> Result<u32> {
    match ty {
        GgmlType::F32 => Ok(0),
        GgmlType::F16 => Ok(1),
        GgmlType::Q8_0 => Ok(7),
        GgmlType::BF16 => Ok(32),
        other => Err(ConvertError::Invalid(format!(
            "a vision projector cannot be {}; use f32, f16, bf16 or q8_0",
            other.name()
        ))),
    }
}

/// GGUF name(s) of one vision tensor (`name` without the `model.visual.` prefix).
fn plan_tensor(name: &str, entry: &TensorEntry) -> Result<Vec<PlannedTensor>> {
    if name == "patch_embed.proj.weight" {
        return split_patch_embedding(entry);
    }
    let gguf = match name {
        "patch_embed.proj.bias" => "v.patch_embd.bias".to_owned(),
        "post_conv_layernorm.weight" => "v.norm_embd.weight".to_owned(),
        "embeddings.position_embedding.weight" => "v.position_embd.weight".to_owned(),
        "post_layernorm.weight" => "v.post_ln.weight".to_owned(),
        "downsample.weight" => "mm.patch_merger.weight".to_owned(),
        "downsample.bias" => "mm.patch_merger.bias".to_owned(),
        "merger.proj.weight" => "mm.model.fc.weight".to_owned(),
        "merger.post_projection_norm.weight" => "mm.post_norm.weight".to_owned(),
        "merger.post_projection_norm.bias" => "mm.post_norm.bias".to_owned(),
        "merger.gate_proj.weight" => "mm.gate.weight".to_owned(),
        "merger.up_proj.weight" => "mm.up.weight".to_owned(),
        "merger.down_proj.weight" => "mm.down.weight".to_owned(),
        _ => {
            block_tensor(name).ok_or_else(|| ConvertError::tensor(&entry.name, "unexpected in a GLM-V vision tower"))?
        }
    };
    Ok(vec![PlannedTensor {
        name: gguf,
        sources: vec![SourceSlice::whole(&entry.name)],
        ne: entry.ne(),
    }])
}

fn block_tensor(name: &str) -> Option<String> {
    let rest = name.strip_prefix("blocks.")?;
    let (index, rest) = rest.split_once('.')?;
    let index: u32 = index.parse().ok()?;
    let gguf = match rest {
        "norm1.weight" => "ln1.weight",
        "norm2.weight" => "ln2.weight",
        "attn.qkv.weight" => "attn_qkv.weight",
        "attn.qkv.bias" => "attn_qkv.bias",
        "attn.proj.weight" => "attn_out.weight",
        "attn.proj.bias" => "attn_out.bias",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        _ => return None,
    };
    Some(format!("v.blk.{index}.{gguf}"))
}

/// The Conv3d kernel `[Hv, C, T, P, P]` becomes one Conv2d kernel per temporal step
/// (llama.cpp adds the two convolutions of a still image, as HF repeats the frame).
fn split_patch_embedding(entry: &TensorEntry) -> Result<Vec<PlannedTensor>> {
    let [hidden, channels, steps, height, width] = entry.shape[..] else {
        return Err(ConvertError::tensor(
            &entry.name,
            format!("expected a Conv3d kernel, found {:?}", entry.shape),
        ));
    };
    if steps != 2 {
        return Err(ConvertError::tensor(
            &entry.name,
            format!("{steps} temporal steps; llama.cpp's glm4v takes 2"),
        ));
    }
    // Rows are the last dimension (width); one (h, c, t) kernel slice is `height` rows.
    let part = |t: usize, name: &str| PlannedTensor {
        name: name.to_owned(),
        sources: (0..hidden * channels)
            .map(|hc| {
                let first = (hc * steps + t) * height;
                SourceSlice::rows(&entry.name, first..first + height)
            })
            .collect(),
        ne: vec![width as u64, height as u64, channels as u64, hidden as u64],
    };
    Ok(vec![part(0, "v.patch_embd.weight"), part(1, "v.patch_embd.weight.1")])
}

fn metadata(input: &Path, config: &HfConfig, vision: &VisionConfig, preset: &Preset) -> Result<Metadata> {
    let mut meta = Metadata::default();
    let base = crate::model_base_name(input);
    meta.set("general.architecture", "clip");
    meta.set("general.type", "mmproj");
    meta.set("general.name", format!("{base} mmproj"));
    meta.set("general.file_type", preset.file_type);
    meta.set("general.quantization_version", 2u32);
    meta.set("clip.has_vision_encoder", true);
    meta.set("clip.projector_type", "glm4v");
    match vision.hidden_act.as_str() {
        "silu" => meta.set("clip.use_silu", true),
        "gelu" | "gelu_pytorch_tanh" => meta.set("clip.use_gelu", true),
        other => return Err(config.error(format!("vision hidden_act {other:?} is not supported"))),
    }
    meta.set("clip.vision.projection_dim", config.text().hidden_size);
    meta.set("clip.vision.image_size", vision.image_size);
    meta.set("clip.vision.patch_size", vision.patch_size);
    meta.set("clip.vision.embedding_length", vision.hidden_size);
    meta.set("clip.vision.feed_forward_length", vision.intermediate_size);
    meta.set("clip.vision.block_count", vision.depth);
    meta.set("clip.vision.attention.head_count", vision.num_heads);
    meta.set("clip.vision.attention.layer_norm_epsilon", vision.rms_norm_eps as f32);
    if let Some(merge) = vision.spatial_merge_size {
        meta.set("clip.vision.spatial_merge_size", merge);
    }
    let (mean, std) = normalisation(input)?;
    let floats = |v: [f32; 3]| MetaValue::from(v.to_vec());
    meta.set("clip.vision.image_mean", floats(mean));
    meta.set("clip.vision.image_std", floats(std));
    Ok(meta)
}

/// `image_mean`/`image_std` from `preprocessor_config.json` (or the `image_processor`
/// part of `processor_config.json`), else CLIP's values.
fn normalisation(input: &Path) -> Result<([f32; 3], [f32; 3])> {
    for (file, section) in [
        ("preprocessor_config.json", None),
        ("processor_config.json", Some("image_processor")),
    ] {
        let path = input.join(file);
        if !path.exists() {
            continue;
        }
        let json = read_json(&path)?;
        let json = section.map_or(&json, |s| &json[s]);
        let triple = |key: &str| -> Option<[f32; 3]> {
            let values: Vec<f32> = json[key]
                .as_array()?
                .iter()
                .filter_map(Value::as_f64)
                .map(|v| v as f32)
                .collect();
            values.try_into().ok()
        };
        if let (Some(mean), Some(std)) = (triple("image_mean"), triple("image_std")) {
            return Ok((mean, std));
        }
    }
    Ok((CLIP_MEAN, CLIP_STD))
}
