use anyhow::Result;
use glm_convert::{ConvertOptions, ImportanceMatrix, Preset};

use crate::cli::QuantizeArgs;
use crate::engine::quantize::GgmlQuantizer;
use crate::progress::ConvertProgress;

pub fn run(args: &QuantizeArgs) -> Result<()> {
    crate::model_source::check_gguf_magic(&args.input)?;
    let importance = args.imatrix.as_deref().map(ImportanceMatrix::load).transpose()?;
    let options = ConvertOptions {
        preset: Preset::load(&args.quant)?,
        quantizer: Some(&GgmlQuantizer),
        importance: importance.as_ref(),
        name: None,
        plan: glm_convert::PlanOptions {
            allow_nonfinite: args.allow_nonfinite,
            ..Default::default()
        },
    };
    let inputs = super::convert::input_files(&args.input, args.imatrix.as_deref(), &args.quant);
    glm_convert::files::check_output(&args.output, &inputs, args.force)?;
    let summary = glm_convert::requantize(&args.input, &args.output, &options, &ConvertProgress::new())?;
    super::convert::report(&summary);
    Ok(())
}
