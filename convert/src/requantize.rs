//! `glm quantize`: re-encode an F32/F16/BF16 GGUF with a preset, streaming tensor by
//! tensor from a memory map (the same engine and type choices as a one-pass conversion).

use std::io::Write;
use std::ops::Range;
use std::path::Path;

use crate::checkpoint::{RowDecoder, SourceDtype};
use crate::error::{ConvertError, Result};
use crate::gguf::{self, GgufFile, MetaValue, Metadata, TensorHeader};
use crate::output::{write_model, OutputOptions, TensorSink};
use crate::preset::{ModelFacts, TypePlanner};
use crate::split;
use crate::tensor_type::GgmlType;
use crate::writer::{
    check_importance, encode_rows, end_tensor_data, ConvertOptions, ConvertSummary, Encoder, Progress, WriteError,
    CHUNK_ELEMENTS,
};

pub fn requantize(
    input: &Path,
    output: &Path,
    options: &ConvertOptions,
    progress: &dyn Progress,
) -> Result<ConvertSummary> {
    let source = SourceModel::open(input)?;
    for (t, _, _) in source.tensors() {
        if source_dtype(t.ggml_type).is_none() {
            return Err(ConvertError::config(
                input,
                format!(
                    "tensor {} is {}; re-quantize from an F32, F16 or BF16 file (or merge and split \
                     with --quant copy)",
                    t.name,
                    t.ggml_type.name()
                ),
            ));
        }
    }
    let facts = ModelFacts::from_metadata(&source.architecture, &source.meta);
    let mut types = TypePlanner::new(
        &options.preset,
        &facts,
        source.tensors().map(|(t, _, _)| (t.name.as_str(), t.ne.as_slice())),
        options.importance.is_some(),
    );
    let outputs: Vec<TensorHeader> = source
        .tensors()
        .map(|(t, _, _)| TensorHeader {
            ggml_type: types.choose(&t.name, &t.ne),
            ..t.clone()
        })
        .collect();
    check_importance(&outputs, options)?;
    let mut meta = source.meta.clone();
    meta.set("general.file_type", options.preset.file_type);
    meta.set("general.quantization_version", MetaValue::U32(2));
    source.rewrite(
        output,
        &meta,
        &outputs,
        &options.output,
        progress,
        |out, bytes, from, to, release| reencode(out, bytes, from, to, &Encoder::for_tensor(to, options), release),
    )
}

/// `glm quantize --quant copy`: the tensors as they are (any type), into one file or a
/// new split set; what merges a split model or splits a whole one.
pub fn copy_model(
    input: &Path,
    output: &Path,
    options: &OutputOptions,
    progress: &dyn Progress,
) -> Result<ConvertSummary> {
    let source = SourceModel::open(input)?;
    let outputs: Vec<TensorHeader> = source.tensors().map(|(t, _, _)| t.clone()).collect();
    source.rewrite(
        output,
        &source.meta,
        &outputs,
        options,
        progress,
        |out, bytes, _, to, release| {
            out.write_all(bytes)?;
            release(0..bytes.len());
            end_tensor_data(out, to, bytes.len() as u64)
        },
    )
}

/// A GGUF model read whole or from every part of a split set.
struct SourceModel {
    files: Vec<GgufFile>,
    /// The first file's metadata without the split keys.
    meta: Metadata,
    architecture: String,
}

impl SourceModel {
    fn open(input: &Path) -> Result<Self> {
        let files = gguf::read_split_files(input)?;
        let meta = split::without_split_keys(&files[0].header.meta);
        let architecture = match meta.get("general.architecture") {
            Some(MetaValue::Str(a)) => a.clone(),
            _ => String::new(),
        };
        Ok(Self {
            files,
            meta,
            architecture,
        })
    }

    /// Every tensor with the file it is in and its offset there.
    fn tensors(&self) -> impl Iterator<Item = (&TensorHeader, &GgufFile, u64)> {
        self.files
            .iter()
            .flat_map(|f| f.header.tensors.iter().map(move |(t, offset)| (t, f, *offset)))
    }

    /// Writes `outputs` (one per source tensor, in order) with `meta`, each written by
    /// `recode(out, source bytes, source header, output header, release)`, where `release`
    /// hands consumed ranges of the source bytes back to the kernel.
    fn rewrite(
        &self,
        output: &Path,
        meta: &Metadata,
        outputs: &[TensorHeader],
        options: &OutputOptions,
        progress: &dyn Progress,
        recode: impl Fn(
            &mut TensorSink,
            &[u8],
            &TensorHeader,
            &TensorHeader,
            &dyn Fn(Range<usize>),
        ) -> Result<u64, WriteError>,
    ) -> Result<ConvertSummary> {
        let sources: Vec<_> = self.tensors().collect();
        progress.begin(sources.iter().map(|(t, _, _)| t.n_bytes()).sum());
        let (paths, bytes) = write_model(output, meta, outputs, options, |index, out| {
            let (source, file, offset) = sources[index];
            let start = offset as usize;
            let data = &file.bytes()[start..start + source.n_bytes() as usize];
            // As in conversion: consumed input pages leave the resident set as we go.
            let release = |r: Range<usize>| file.release(start + r.start..start + r.end);
            let written = recode(out, data, source, &outputs[index], &release)?;
            progress.advance(data.len() as u64);
            Ok(written)
        })?;
        progress.finish();
        Ok(ConvertSummary {
            outputs: paths,
            architecture: self.architecture.clone(),
            tensors: outputs.len(),
            parameters: outputs.iter().map(|t| t.ne.iter().product::<u64>()).sum(),
            bytes,
        })
    }
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
    consumed: &dyn Fn(Range<usize>),
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
