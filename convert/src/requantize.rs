//! `glm quantize`: re-encode an F32/F16/BF16 GGUF with a preset, streaming tensor by
//! tensor from a memory map (the same engine and type choices as a one-pass conversion).

use std::io::Write;
use std::path::Path;

use crate::checkpoint::{RowDecoder, SourceDtype};
use crate::error::{ConvertError, Result};
use crate::gguf::{self, MetaValue, TensorHeader};
use crate::preset::{ModelFacts, TypePlanner};
use crate::tensor_type::GgmlType;
use crate::writer::{
    check_importance, encode_rows, end_tensor_data, write_atomically, ConvertOptions, ConvertSummary, Encoder,
    Progress, WriteError, CHUNK_ELEMENTS,
};

pub fn requantize(
    input: &Path,
    output: &Path,
    options: &ConvertOptions,
    progress: &dyn Progress,
) -> Result<ConvertSummary> {
    let file = gguf::read_file(input)?;
    let (header, map) = (&file.header, file.bytes());
    let invalid = |message: String| ConvertError::Config {
        path: input.to_path_buf(),
        message,
    };
    for (t, _) in &header.tensors {
        if source_dtype(t.ggml_type).is_none() {
            return Err(invalid(format!(
                "tensor {} is {}; re-quantize from an F32, F16 or BF16 file",
                t.name,
                t.ggml_type.name()
            )));
        }
    }
    let architecture = match header.meta.get("general.architecture") {
        Some(MetaValue::Str(a)) => a.clone(),
        _ => String::new(),
    };
    let facts = ModelFacts::from_metadata(&architecture, &header.meta);
    let mut types = TypePlanner::new(
        &options.preset,
        &facts,
        header.tensors.iter().map(|(t, _)| (t.name.as_str(), t.ne.as_slice())),
        options.importance.is_some(),
    );
    let outputs: Vec<TensorHeader> = header
        .tensors
        .iter()
        .map(|(t, _)| TensorHeader {
            name: t.name.clone(),
            ne: t.ne.clone(),
            ggml_type: types.choose(&t.name, &t.ne),
        })
        .collect();
    check_importance(&outputs, options)?;
    let mut meta = header.meta.clone();
    meta.set("general.file_type", options.preset.file_type);
    meta.set("general.quantization_version", MetaValue::U32(2));

    progress.begin(header.tensors.iter().map(|(t, _)| t.n_bytes()).sum());
    let written = write_atomically(output, |out| {
        let mut written = gguf::write_header(out, &meta, &outputs)?;
        for ((source, offset), target) in header.tensors.iter().zip(&outputs) {
            let encoder = Encoder::for_tensor(target, options);
            let start = *offset as usize;
            let bytes = &map[start..start + source.n_bytes() as usize];
            // As in conversion: consumed input pages leave the resident set as we go.
            let release = |r: std::ops::Range<usize>| file.release(start + r.start..start + r.end);
            written += reencode(out, bytes, source, target, &encoder, &release)?;
            progress.advance(bytes.len() as u64);
        }
        Ok(written)
    })?;
    progress.finish();
    Ok(ConvertSummary {
        output: output.to_path_buf(),
        architecture,
        tensors: outputs.len(),
        parameters: outputs.iter().map(|t| t.ne.iter().product::<u64>()).sum(),
        bytes: written,
    })
}

fn source_dtype(ty: GgmlType) -> Option<SourceDtype> {
    match ty {
        GgmlType::F32 => Some(SourceDtype::F32),
        GgmlType::F16 => Some(SourceDtype::F16),
        GgmlType::BF16 => Some(SourceDtype::BF16),
        _ => None,
    }
}

/// Re-encodes one tensor in row chunks that never straddle two experts, so each chunk can
/// use its expert's importance weights; `consumed` gets each chunk's range in `bytes`
/// once it is written.
fn reencode<W: Write>(
    out: &mut W,
    bytes: &[u8],
    source: &TensorHeader,
    target: &TensorHeader,
    encoder: &Encoder,
    consumed: &dyn Fn(std::ops::Range<usize>),
) -> Result<u64, WriteError> {
    let dtype = source_dtype(source.ggml_type).ok_or_else(|| {
        WriteError::Convert(ConvertError::tensor(
            &source.name,
            "only F32, F16 and BF16 can be re-quantized",
        ))
    })?;
    let row_len = source.ne[0] as usize;
    let rows_per_slab = source.ne.get(1).copied().unwrap_or(1) as usize;
    let row_bytes = row_len * dtype.size();
    let rows_per_chunk = (CHUNK_ELEMENTS / row_len.max(1)).clamp(1, rows_per_slab.max(1));
    let mut written = 0u64;
    let slab_bytes = rows_per_slab * row_bytes;
    for (slab, slab_data) in bytes.chunks(slab_bytes).enumerate() {
        for (index, chunk) in slab_data.chunks(rows_per_chunk * row_bytes).enumerate() {
            written += encode_rows(out, chunk, &RowDecoder::plain(dtype, row_len), 0, encoder, slab)?;
            let start = slab * slab_bytes + index * rows_per_chunk * row_bytes;
            consumed(start..start + chunk.len());
        }
    }
    end_tensor_data(out, target, written)
}
