use anyhow::{anyhow, Result};
use glm_convert::{ConvertOptions, OutType, PlanOptions};

use crate::cli::ConvertArgs;
use crate::progress::ConvertProgress;

pub fn run(args: &ConvertArgs) -> Result<()> {
    let out_type = OutType::parse(&args.out_type).ok_or_else(|| {
        let names: Vec<_> = OutType::ALL.iter().map(|t| t.name().to_lowercase()).collect();
        anyhow!(
            "--type {}: unknown type (choose one of {})",
            args.out_type,
            names.join(", ")
        )
    })?;
    if !args.input.is_dir() {
        return Err(anyhow!("{}: not a checkpoint folder", args.input.display()));
    }
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| glm_convert::default_output_name(&args.input, out_type));
    let options = ConvertOptions {
        out_type,
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
