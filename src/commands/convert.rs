use anyhow::{anyhow, Result};
use glm_convert::{ConvertOptions, ImportanceMatrix, PlanOptions, Preset};

use crate::cli::ConvertArgs;
use crate::engine::quantize::GgmlQuantizer;
use crate::progress::ConvertProgress;

pub fn run(args: &ConvertArgs) -> Result<()> {
    let preset = Preset::load(&args.quant)?;
    if !args.input.is_dir() {
        return Err(anyhow!("{}: not a checkpoint folder", args.input.display()));
    }
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| glm_convert::default_output_name(&args.input, &preset));
    let importance = args.imatrix.as_deref().map(ImportanceMatrix::load).transpose()?;
    let options = ConvertOptions {
        preset,
        quantizer: Some(&GgmlQuantizer),
        importance: importance.as_ref(),
        name: args.name.clone(),
        plan: PlanOptions { keep_mtp: !args.no_mtp },
    };
    let summary = glm_convert::convert(&args.input, &output, &options, &ConvertProgress::new())?;
    eprintln!(
        "wrote {} ({}, {} tensors, {} parameters, {:.1} MiB)",
        summary.output.display(),
        summary.architecture,
        summary.tensors,
        summary.parameters,
        summary.bytes as f64 / (1024.0 * 1024.0)
    );
    Ok(())
}
