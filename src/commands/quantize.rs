use std::path::{Path, PathBuf};

use anyhow::Result;
use glm_convert::{ConvertOptions, GgmlType, ImportanceMatrix, Preset};

use crate::cli::QuantizeArgs;
use crate::engine::quantize::GgmlQuantizer;
use crate::progress::ConvertProgress;

pub fn run(args: &QuantizeArgs) -> Result<()> {
    crate::model_source::check_gguf_magic(&args.input)?;
    let preset = Preset::load(&args.quant)?;
    let output = glm_convert::files::output_in_folder(&args.output, &default_name(&args.input, &preset))?;
    let importance = args.imatrix.as_deref().map(ImportanceMatrix::load).transpose()?;
    let options = ConvertOptions {
        preset,
        quantizer: Some(&GgmlQuantizer),
        importance: importance.as_ref(),
        name: None,
        plan: glm_convert::PlanOptions {
            allow_nonfinite: args.allow_nonfinite,
            ..Default::default()
        },
    };
    let inputs = super::convert::input_files(&args.input, args.imatrix.as_deref(), &args.quant);
    glm_convert::files::check_output(&output, &inputs, args.force)?;
    let summary = glm_convert::requantize(&args.input, &output, &options, &ConvertProgress::new())?;
    super::convert::report(&summary);
    Ok(())
}

/// The name a quantized copy gets in an output folder: the input's name with its type
/// suffix replaced, `GLM-4-9B-BF16.gguf` → `GLM-4-9B-Q4_K_M.gguf` (as `glm convert` names
/// its files).
fn default_name(input: &Path, preset: &Preset) -> PathBuf {
    let stem = input
        .file_stem()
        .map_or_else(|| "model".to_owned(), |s| s.to_string_lossy().into_owned());
    let base = match stem.rsplit_once('-') {
        Some((base, suffix)) if !base.is_empty() && is_type_label(suffix) => base,
        _ => &stem,
    };
    PathBuf::from(format!("{base}-{}.gguf", preset.label()))
}

fn is_type_label(text: &str) -> bool {
    GgmlType::parse(text).is_some() || Preset::built_in_names().iter().any(|n| n.eq_ignore_ascii_case(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_name_replaces_the_type_suffix() {
        let q8 = Preset::load("q8_0").unwrap();
        let name = |input: &str| default_name(Path::new(input), &q8);
        assert_eq!(name("/m/GLM-4-9B-BF16.gguf"), Path::new("GLM-4-9B-Q8_0.gguf"));
        assert_eq!(name("GLM-4-9B-f16.gguf"), Path::new("GLM-4-9B-Q8_0.gguf"));
        assert_eq!(name("GLM-4-9B.gguf"), Path::new("GLM-4-9B-Q8_0.gguf"));
        assert_eq!(name("GLM-4-9B-Q4_K_M.gguf"), Path::new("GLM-4-9B-Q8_0.gguf"));
    }
}
