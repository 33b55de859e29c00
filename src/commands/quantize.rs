use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use glm_convert::{ConvertOptions, GgmlType, ImportanceMatrix, OutputOptions, Preset};

use crate::cli::QuantizeArgs;
use crate::engine::quantize::GgmlQuantizer;
use crate::progress::ConvertProgress;

/// The `--quant` value that copies tensors unchanged.
const COPY: &str = "copy";

pub fn run(args: &QuantizeArgs) -> Result<()> {
    crate::model_source::check_gguf_magic(&args.input)?;
    // Every part of a split input is an input no output may land on.
    let parts: Vec<PathBuf> = glm_convert::gguf::read_split_files(&args.input)?
        .into_iter()
        .map(|file| file.path)
        .collect();
    let mut input_refs: Vec<&Path> = parts.iter().map(PathBuf::as_path).collect();
    input_refs.extend(super::convert::input_files(
        &args.input,
        args.imatrix.as_deref(),
        &args.quant,
    ));
    let check = |path: &Path| glm_convert::files::check_output(path, &input_refs, args.force);
    let output_options = OutputOptions {
        split: args.split.limits(),
        check: Some(&check),
    };
    let copy = args.quant.eq_ignore_ascii_case(COPY);
    let label = if copy { None } else { Some(Preset::load(&args.quant)?) };
    let output = glm_convert::files::output_in_folder(&args.output, &default_name(&args.input, label.as_ref()))?;
    let summary = match label {
        None => {
            if args.imatrix.is_some() {
                bail!("--imatrix: --quant copy keeps every tensor as it is, so there is nothing to weigh");
            }
            glm_convert::copy_model(&args.input, &output, &output_options, &ConvertProgress::new())?
        }
        Some(preset) => {
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
                output: output_options,
            };
            glm_convert::requantize(&args.input, &output, &options, &ConvertProgress::new())?
        }
    };
    super::convert::report(&summary);
    Ok(())
}

/// The name a quantized copy gets in an output folder: the input's name (a split set's,
/// without the part number) with its type suffix replaced, `GLM-4-9B-BF16.gguf` →
/// `GLM-4-9B-Q4_K_M.gguf` (as `glm convert` names its files); a plain copy keeps the name.
fn default_name(input: &Path, preset: Option<&Preset>) -> PathBuf {
    let stem = input
        .file_stem()
        .map_or_else(|| "model".to_owned(), |s| s.to_string_lossy().into_owned());
    let stem = without_part_number(&stem);
    let Some(preset) = preset else {
        return PathBuf::from(format!("{stem}.gguf"));
    };
    let base = match stem.rsplit_once('-') {
        Some((base, suffix)) if !base.is_empty() && is_type_label(suffix) => base,
        _ => stem,
    };
    PathBuf::from(format!("{base}-{}.gguf", preset.label()))
}

/// `X-00001-of-00003` → `X`.
fn without_part_number(stem: &str) -> &str {
    let digits = |s: &str| s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit());
    match stem.rsplitn(4, '-').collect::<Vec<_>>().as_slice() {
        [count, "of", number, base] if digits(count) && digits(number) && !base.is_empty() => base,
        _ => stem,
    }
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
        let name = |input: &str| default_name(Path::new(input), Some(&q8));
        assert_eq!(name("/m/GLM-4-9B-BF16.gguf"), Path::new("GLM-4-9B-Q8_0.gguf"));
        assert_eq!(name("GLM-4-9B-f16.gguf"), Path::new("GLM-4-9B-Q8_0.gguf"));
        assert_eq!(name("GLM-4-9B.gguf"), Path::new("GLM-4-9B-Q8_0.gguf"));
        assert_eq!(name("GLM-4-9B-Q4_K_M.gguf"), Path::new("GLM-4-9B-Q8_0.gguf"));
        assert_eq!(
            name("GLM-4-9B-BF16-00001-of-00003.gguf"),
            Path::new("GLM-4-9B-Q8_0.gguf")
        );
        let copy = default_name(Path::new("/m/GLM-4-9B-Q4_K_M-00001-of-00002.gguf"), None);
        assert_eq!(copy, Path::new("GLM-4-9B-Q4_K_M.gguf"));
    }
}
