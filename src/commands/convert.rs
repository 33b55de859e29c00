use std::path::Path;

use anyhow::{anyhow, bail, Result};
use glm_convert::files::check_output;
use glm_convert::{ConvertOptions, GgmlType, ImportanceMatrix, OutputOptions, PlanOptions, Preset};

use crate::cli::ConvertArgs;
use crate::engine::quantize::GgmlQuantizer;
use crate::progress::ConvertProgress;

pub fn run(args: &ConvertArgs) -> Result<()> {
    let preset = Preset::load(&args.quant)?;
    if !args.input.is_dir() {
        return Err(anyhow!("{}: not a checkpoint folder", args.input.display()));
    }
    let default_name = glm_convert::default_output_name(&args.input, &preset);
    let output = match &args.output {
        Some(path) => glm_convert::files::output_in_folder(path, &default_name)?,
        None => default_name,
    };
    let importance = args.imatrix.as_deref().map(ImportanceMatrix::load).transpose()?;
    let inputs = input_files(&args.input, args.imatrix.as_deref(), &args.quant);
    let check = |path: &Path| check_output(path, &inputs, args.force);
    let options = ConvertOptions {
        preset,
        quantizer: Some(&GgmlQuantizer),
        importance: importance.as_ref(),
        name: args.name.clone(),
        plan: PlanOptions {
            keep_mtp: !args.no_mtp,
            allow_nonfinite: args.allow_nonfinite,
        },
        output: OutputOptions {
            split: args.split.limits(),
            check: Some(&check),
        },
    };
    let mmproj_type = match GgmlType::parse(&args.mmproj_type) {
        Some(t @ (GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::Q8_0)) => t,
        _ => bail!("--mmproj-type {}: use f32, f16, bf16 or q8_0", args.mmproj_type),
    };
    let dir = output.parent().unwrap_or(Path::new(""));
    let base = glm_convert::model_base_name(&args.input);
    let mmproj = dir.join(format!("{base}-mmproj-{}.gguf", mmproj_type.name()));
    if args.split.limits().is_none() {
        check_output(&output, &inputs, args.force)?;
    }
    if glm_convert::mmproj::has_vision(&args.input)? {
        check_output(&mmproj, &inputs, args.force)?;
        glm_convert::files::check_distinct(&output, &mmproj)?;
    }
    let summary = glm_convert::convert(&args.input, &output, &options, &ConvertProgress::new())?;
    report(&summary);
    if let Some(summary) =
        glm_convert::mmproj::convert_mmproj(&args.input, &mmproj, mmproj_type, &options, &ConvertProgress::new())?
    {
        report(&summary);
    }
    Ok(())
}

/// What a conversion reads: the checkpoint (or GGUF), the importance matrix, and the
/// preset when it is a file; no output may land on any of them.
pub fn input_files<'a>(input: &'a Path, imatrix: Option<&'a Path>, preset: &'a str) -> Vec<&'a Path> {
    let mut inputs = vec![input];
    inputs.extend(imatrix);
    let preset = Path::new(preset);
    if preset.is_file() {
        inputs.push(preset);
    }
    inputs
}

/// One line on stderr for each model written (naming every part of a split set).
pub fn report(summary: &glm_convert::ConvertSummary) {
    let files = match summary.outputs.as_slice() {
        [one] => one.display().to_string(),
        [first, .., last] => format!(
            "{} parts, {} … {}",
            summary.outputs.len(),
            first.display(),
            last.file_name().unwrap_or_default().to_string_lossy()
        ),
        [] => "nothing".to_owned(),
    };
    eprintln!(
        "wrote {files} ({}, {} tensors, {} parameters, {:.1} MiB)",
        summary.architecture,
        summary.tensors,
        summary.parameters,
        summary.bytes as f64 / (1024.0 * 1024.0)
    );
}
