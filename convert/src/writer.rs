//! The conversion driver: plan, header, then one streaming pass over the tensors.

use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde_json::Value;

use crate::arch::{self, Architecture, PlanOptions, PlannedTensor, SourceSlice};
use crate::checkpoint::{Checkpoint, RowDecoder, TensorEntry};
use crate::config::HfConfig;
use crate::error::{read_json, ConvertError, Result};
use crate::gguf::{self, Metadata, TensorHeader};
use crate::imatrix::ImportanceMatrix;
use crate::output::write_model;
pub use crate::output::{OutputCheck, OutputOptions};
use crate::preset::{ModelFacts, Preset, TypePlanner};
use crate::tensor_type::{GgmlType, Quantizer};
use crate::tokenizer::Vocabulary;

/// Elements converted per step; bounds memory to a few of these buffers whatever the
/// tensor size (a 151552×6144 embedding is 3.7 GB in f32).
pub(crate) const CHUNK_ELEMENTS: usize = 1 << 22;
/// Elements encoded per parallel task within a chunk (about a millisecond of K-quant
/// work).
const TASK_ELEMENTS: usize = 1 << 16;

#[derive(Clone)]
pub struct ConvertOptions<'a> {
    /// Which type each tensor gets.
    pub preset: Preset,
    /// Encoder for quantized types (ggml's kernels, from the runtime side); only float
    /// presets work without one.
    pub quantizer: Option<&'a dyn Quantizer>,
    /// Importance weights for the quantized types that use them (`--imatrix`).
    pub importance: Option<&'a ImportanceMatrix>,
    /// `general.name`; defaults to the checkpoint folder name.
    pub name: Option<String>,
    pub plan: PlanOptions,
    pub output: OutputOptions<'a>,
}

/// Reports progress in source bytes; the CLI draws a bar, tests pass `()`.
pub trait Progress: Sync {
    fn begin(&self, _total_bytes: u64) {}
    fn advance(&self, _bytes: u64) {}
    fn finish(&self) {}
}

impl Progress for () {}

#[derive(Debug, Clone)]
pub struct ConvertSummary {
    /// The file written, or every part of a split set.
    pub outputs: Vec<PathBuf>,
    pub architecture: String,
    pub tensors: usize,
    pub parameters: u64,
    pub bytes: u64,
}

/// Converts the checkpoint folder `input` into the GGUF file `output`. The file appears
/// only when complete: data goes to a temporary file beside it that is renamed at the end
/// (and removed on any error).
pub fn convert<'a>(
    input: &Path,
    output: &Path,
    options: &ConvertOptions<'a>,
    progress: &dyn Progress,
) -> Result<ConvertSummary> {
    let p = prepare(input, options)?;
    check_planned(&p.config, &p.meta, &p.headers)?;
    let written = write_planned(
        output,
        &p.meta,
        &p.planned,
        &p.headers,
        &p.checkpoint,
        options,
        progress,
    )?;
    progress.finish();
    Ok(ConvertSummary {
        outputs: written.0,
        architecture: p.arch.gguf_arch().to_owned(),
        tensors: p.headers.len(),
        parameters: p.parameters,
        bytes: written.1,
    })
}

/// Writes the metadata a conversion of `input` would carry (hyper-parameters, vocabulary,
/// chat template) and no tensors: enough for llama.cpp to load the tokenizer
/// (`vocab_only`) after reading only the config, the tokenizer files and the safetensors
/// headers, never the weights.
pub fn write_vocabulary(input: &Path, output: &Path) -> Result<()> {
    let options = ConvertOptions {
        preset: Preset::load("bf16")?,
        quantizer: None,
        importance: None,
        name: None,
        plan: PlanOptions::default(),
        output: OutputOptions::default(),
    };
    let p = prepare(input, &options)?;
    write_model(output, &p.meta, &[], &OutputOptions::default(), |_, _| Ok(0))?;
    Ok(())
}

/// Everything known about a conversion before its first tensor byte is read.
struct Prepared {
    config: HfConfig,
    arch: &'static dyn Architecture,
    checkpoint: Checkpoint,
    planned: Vec<PlannedTensor>,
    headers: Vec<TensorHeader>,
    meta: Metadata,
    parameters: u64,
}

fn prepare(input: &Path, options: &ConvertOptions) -> Result<Prepared> {
    let config = HfConfig::load(input)?;
    config.check_ranges()?;
    let hf_arch = config.architecture()?;
    let arch = arch::find(&hf_arch).ok_or_else(|| ConvertError::UnsupportedArchitecture {
        path: config.path().to_path_buf(),
        name: hf_arch.clone(),
        supported: arch::supported().join(", "),
    })?;
    let checkpoint = Checkpoint::open(input, config.fp8_block_size()?)?;
    let planned = arch.plan(&config, &checkpoint, &options.plan)?;
    let layers = arch::layer_counts(&config, &planned)?;
    // The preset's conditions read the same hyper-parameter keys the file will carry.
    let mut hparams = Metadata::default();
    arch.write_hparams(&config, layers, &mut hparams)?;
    let facts = ModelFacts::from_metadata(arch.gguf_arch(), &hparams);
    let headers = plan_headers(
        &planned,
        &checkpoint,
        &options.preset,
        &facts,
        options.importance.is_some(),
    )?;
    check_importance(&headers, options)?;
    let parameters = headers.iter().map(|h| h.ne.iter().product::<u64>()).sum();

    let mut meta = Metadata::default();
    write_general(&mut meta, input, arch, options, parameters)?;
    arch.write_hparams(&config, layers, &mut meta)?;
    let vocab_size = embedding_rows(&checkpoint, &config)?;
    let vocab = Vocabulary::load(input, vocab_size)?;
    vocab.write_metadata(&mut meta, input, &config, &arch.special_tokens())?;
    Ok(Prepared {
        config,
        arch,
        checkpoint,
        planned,
        headers,
        meta,
        parameters,
    })
}

/// Runs the checks a GGUF gets before llama.cpp loads it on the file about to be written,
/// so a config.json that does not describe its weights (a wrong `hidden_size`, head or
/// expert count) fails here rather than at load time.
fn check_planned(config: &HfConfig, meta: &Metadata, headers: &[TensorHeader]) -> Result<()> {
    let planned = gguf::GgufHeader {
        version: 3,
        meta: meta.clone(),
        tensors: headers.iter().map(|h| (h.clone(), 0)).collect(),
        data_start: 0,
        alignment: gguf::ALIGNMENT,
    };
    gguf::check::check_model(&planned)
        .map_err(|message| config.error(format!("does not describe the checkpoint's weights: {message}")))
}

/// Writes header and metadata, then streams every planned tensor from the checkpoint;
/// returns the files written and their size in all.
pub(crate) fn write_planned(
    output: &Path,
    meta: &Metadata,
    planned: &[PlannedTensor],
    headers: &[TensorHeader],
    checkpoint: &Checkpoint,
    options: &ConvertOptions,
    progress: &dyn Progress,
) -> Result<(Vec<PathBuf>, u64)> {
    let total: u64 = planned
        .iter()
        .flat_map(|p| &p.sources)
        .filter_map(|s| Some(slice_bytes(s, checkpoint.get(&s.tensor)?)))
        .sum();
    progress.begin(total);
    write_model(output, meta, headers, &options.output, |index, out| {
        let (plan, header) = (&planned[index], &headers[index]);
        let encoder = Encoder::for_tensor(header, options);
        write_tensor(out, checkpoint, plan, header, &encoder, progress)
    })
}

/// The embedding's row count is the vocabulary size the token list must match.
fn embedding_rows(checkpoint: &Checkpoint, config: &HfConfig) -> Result<usize> {
    let embed = checkpoint
        .get("model.embed_tokens.weight")
        .or_else(|| checkpoint.get("model.language_model.embed_tokens.weight"))
        .ok_or_else(|| ConvertError::tensor("model.embed_tokens.weight", "missing from the checkpoint"))?;
    let rows = embed.shape.first().copied().unwrap_or(0);
    if let Some(v) = config.text().vocab_size {
        if v as usize != rows {
            return Err(config.error(format!("vocab_size {v} differs from the embedding's {rows} rows")));
        }
    }
    Ok(rows)
}

pub(crate) fn plan_headers(
    planned: &[PlannedTensor],
    checkpoint: &Checkpoint,
    preset: &Preset,
    facts: &ModelFacts,
    has_importance: bool,
) -> Result<Vec<TensorHeader>> {
    let mut seen = std::collections::HashSet::new();
    let mut types = TypePlanner::new(
        preset,
        facts,
        planned.iter().map(|p| (p.name.as_str(), p.ne.as_slice())),
        has_importance,
    );
    planned
        .iter()
        .map(|p| {
            if !seen.insert(p.name.as_str()) {
                return Err(ConvertError::tensor(
                    &p.name,
                    "planned twice (duplicate tensor names are a load error)",
                ));
            }
            if p.ne.is_empty() || p.ne.contains(&0) {
                let sources: Vec<&str> = p.sources.iter().map(|s| s.tensor.as_str()).collect();
                return Err(ConvertError::tensor(
                    sources.join(", "),
                    format!(
                        "has shape {:?}; a weight needs at least one element per dimension",
                        p.ne
                    ),
                ));
            }
            if p.name.len() > 63 {
                return Err(ConvertError::tensor(&p.name, "name longer than ggml's 63-byte limit"));
            }
            let expected: u64 = p.ne.iter().product();
            let mut found = 0u64;
            for slice in &p.sources {
                let entry = source_entry(checkpoint, slice)?;
                let rows = slice_rows(slice, entry)?;
                let (row_len, n_rows) = written_shape(slice, entry, &rows);
                if slice.elements {
                    if p.ne.len() != 1 {
                        return Err(ConvertError::tensor(&p.name, "element slices only build vectors"));
                    }
                } else if row_len as u64 != p.ne[0] {
                    return Err(ConvertError::tensor(
                        &p.name,
                        format!(
                            "{} gives rows of {row_len} values, the shape {:?} needs {}",
                            slice.tensor, p.ne, p.ne[0]
                        ),
                    ));
                }
                found += (row_len * n_rows) as u64;
            }
            if found != expected {
                return Err(ConvertError::tensor(
                    &p.name,
                    format!("sources hold {found} values, shape {:?} needs {expected}", p.ne),
                ));
            }
            Ok(TensorHeader {
                name: p.name.clone(),
                ne: p.ne.clone(),
                ggml_type: types.choose(&p.name, &p.ne),
            })
        })
        .collect()
}

/// Refuses, before anything is written, a plan with types that need importance weights
/// the user did not supply.
pub(crate) fn check_importance(headers: &[TensorHeader], options: &ConvertOptions) -> Result<()> {
    let Some(quantizer) = options.quantizer else {
        return Ok(());
    };
    for header in headers {
        let ty = header.ggml_type;
        if !quantizer.requires_importance(ty) {
            continue;
        }
        let has_weights = options.importance.is_some_and(|m| m.get(&header.name).is_some());
        if !has_weights {
            let what = if options.importance.is_some() {
                "the importance matrix has no entry for it"
            } else {
                "pass one with --imatrix"
            };
            return Err(ConvertError::tensor(
                &header.name,
                format!("{} needs an importance matrix: {what}", ty.name()),
            ));
        }
    }
    Ok(())
}

pub(crate) enum WriteError {
    Io(std::io::Error),
    Convert(ConvertError),
}

impl From<std::io::Error> for WriteError {
    fn from(e: std::io::Error) -> Self {
        WriteError::Io(e)
    }
}

impl From<ConvertError> for WriteError {
    fn from(e: ConvertError) -> Self {
        WriteError::Convert(e)
    }
}

fn source_entry<'a>(checkpoint: &'a Checkpoint, slice: &SourceSlice) -> Result<&'a TensorEntry> {
    checkpoint
        .get(&slice.tensor)
        .ok_or_else(|| ConvertError::tensor(&slice.tensor, "missing from the checkpoint"))
}

/// The source bytes a slice reads, as progress counts them.
fn slice_bytes(slice: &SourceSlice, entry: &TensorEntry) -> u64 {
    let Ok(rows) = slice_rows(slice, entry) else {
        return 0;
    };
    let per_row = if slice.elements { 1 } else { entry.row_len() };
    (rows.len() * per_row * entry.dtype.size()) as u64
}

/// The rows a slice selects, checked against the tensor's row count.
fn slice_rows(slice: &SourceSlice, entry: &TensorEntry) -> Result<Range<usize>> {
    let count = if slice.elements {
        entry.n_elements()
    } else {
        entry.n_rows()
    };
    let rows = slice.rows.clone().unwrap_or(0..count);
    if rows.start > rows.end || rows.end > count {
        return Err(ConvertError::tensor(
            &entry.name,
            format!("rows {rows:?} requested, the tensor has {}", entry.n_rows()),
        ));
    }
    Ok(rows)
}

/// (row length, row count) of a slice as written, after its optional transpose.
fn written_shape(slice: &SourceSlice, entry: &TensorEntry, rows: &Range<usize>) -> (usize, usize) {
    if slice.elements {
        return (rows.len(), 1);
    }
    if slice.transpose {
        (rows.len(), entry.row_len())
    } else {
        (entry.row_len(), rows.len())
    }
}

/// How one output tensor's rows are encoded.
pub(crate) struct Encoder<'a> {
    pub name: &'a str,
    pub ty: GgmlType,
    pub row_len: usize,
    pub quantizer: Option<&'a dyn Quantizer>,
    /// Per-column importance; for stacked experts one row of weights per expert.
    pub importance: Option<&'a [f32]>,
    /// NaN and infinities pass instead of failing the tensor.
    pub allow_nonfinite: bool,
}

impl<'a> Encoder<'a> {
    /// The encoder of one output tensor: its type and row length, the options' quantizer
    /// and the importance weights recorded under its name.
    pub fn for_tensor(header: &'a TensorHeader, options: &'a ConvertOptions) -> Self {
        Self {
            name: &header.name,
            ty: header.ggml_type,
            row_len: header.ne[0] as usize,
            quantizer: options.quantizer,
            importance: options.importance.and_then(|m| m.get(&header.name)),
            allow_nonfinite: options.plan.allow_nonfinite,
        }
    }

    /// The importance weights of the `source`-th slice (its expert, for stacked tensors).
    fn importance_for(&self, source: usize) -> Option<&[f32]> {
        let all = self.importance?;
        let slabs = all.len() / self.row_len.max(1);
        let slab = if slabs > 1 { source % slabs } else { 0 };
        all.get(slab * self.row_len..(slab + 1) * self.row_len)
    }

    pub fn encode(&self, values: &[f32], source: usize) -> Result<Vec<u8>, WriteError> {
        if !self.allow_nonfinite && values.iter().any(|v| !v.is_finite()) {
            return Err(WriteError::Convert(ConvertError::tensor(
                self.name,
                "holds NaN or infinite weights (a broken checkpoint); pass --allow-nonfinite to convert it anyway",
            )));
        }
        let mut encoded = Vec::with_capacity(self.ty.row_bytes(values.len()));
        self.ty
            .encode(
                values,
                self.row_len,
                self.quantizer,
                self.importance_for(source),
                &mut encoded,
            )
            .map_err(|message| WriteError::Convert(ConvertError::tensor(self.name, message)))?;
        Ok(encoded)
    }
}

/// Streams one tensor: row chunks are decoded to f32 and encoded in parallel, then written
/// in order; consumed source pages are released right away.
fn write_tensor<W: Write>(
    out: &mut W,
    checkpoint: &Checkpoint,
    plan: &PlannedTensor,
    header: &TensorHeader,
    encoder: &Encoder,
    progress: &dyn Progress,
) -> Result<u64, WriteError> {
    let mut written = 0u64;
    for (index, slice) in plan.sources.iter().enumerate() {
        let entry = source_entry(checkpoint, slice).map_err(WriteError::Convert)?;
        let rows = slice_rows(slice, entry).map_err(WriteError::Convert)?;
        if slice.elements {
            if entry.scale.is_some() {
                return Err(WriteError::Convert(ConvertError::tensor(
                    &entry.name,
                    "an FP8 tensor read element by element (a bug in glm's plan)",
                )));
            }
            let size = entry.dtype.size();
            let bytes = checkpoint.row_bytes_raw(entry, rows.start * size..rows.end * size);
            let decoder = RowDecoder::plain(entry.dtype, rows.len());
            written += encode_rows(out, bytes, &decoder, 0, encoder, index)?;
            progress.advance(slice_bytes(slice, entry));
            continue;
        }
        let decoder = checkpoint.row_decoder(entry);
        if slice.transpose {
            written += write_transposed(out, checkpoint, entry, &decoder, rows.clone(), encoder, index)?;
            progress.advance(slice_bytes(slice, entry));
            continue;
        }
        let rows_per_chunk = (CHUNK_ELEMENTS / entry.row_len().max(1)).max(1);
        let mut row = rows.start;
        while row < rows.end {
            let end = (row + rows_per_chunk).min(rows.end);
            let bytes = checkpoint.row_bytes(entry, row..end);
            written += encode_rows(out, bytes, &decoder, row, encoder, index)?;
            checkpoint.release_rows(entry, row..end);
            progress.advance(bytes.len() as u64);
            row = end;
        }
    }
    end_tensor_data(out, header, written)
}

/// Checks that a tensor's data has the size its header promised, then pads it; returns
/// the bytes written in all.
pub(crate) fn end_tensor_data<W: Write>(out: &mut W, header: &TensorHeader, written: u64) -> Result<u64, WriteError> {
    if written != header.n_bytes() {
        return Err(WriteError::Convert(ConvertError::tensor(
            &header.name,
            format!("wrote {written} bytes, header promised {}", header.n_bytes()),
        )));
    }
    Ok(gguf::write_padding(out, written)?)
}

/// A small block (one MLA head's key rows) written with rows and columns swapped.
fn write_transposed<W: Write>(
    out: &mut W,
    checkpoint: &Checkpoint,
    entry: &TensorEntry,
    decoder: &RowDecoder,
    rows: Range<usize>,
    encoder: &Encoder,
    source: usize,
) -> Result<u64, WriteError> {
    let (n_rows, row_len) = (rows.len(), entry.row_len());
    let first_row = rows.start;
    let bytes = checkpoint.row_bytes(entry, rows);
    let mut values = vec![0f32; n_rows * row_len];
    decoder.decode(first_row, bytes, &mut values);
    let transposed: Vec<f32> = (0..row_len)
        .flat_map(|c| (0..n_rows).map(move |r| (r, c)))
        .map(|(r, c)| values[r * row_len + c])
        .collect();
    let encoded = encoder.encode(&transposed, source)?;
    out.write_all(&encoded)?;
    Ok(encoded.len() as u64)
}

/// Decodes whole rows (the first being row `first_row` of the tensor) and encodes them,
/// split across threads, writing the parts in order.
pub(crate) fn encode_rows<W: Write>(
    out: &mut W,
    bytes: &[u8],
    decoder: &RowDecoder,
    first_row: usize,
    encoder: &Encoder,
    source: usize,
) -> Result<u64, WriteError> {
    let size = decoder.dtype().size();
    let src_row_bytes = decoder.row_len() * size;
    // Whole source rows per task keep quantization blocks intact. Many small tasks (as
    // llama-quantize hands out 16K-value chunks) keep every core busy to the end of the
    // chunk; two halves would leave one core idle whenever the other lags.
    let rows_per_task = (TASK_ELEMENTS / decoder.row_len().max(1)).max(1);
    let parts: Vec<Vec<u8>> = bytes
        .par_chunks(rows_per_task * src_row_bytes)
        .enumerate()
        .map(|(task, part)| {
            let mut values = vec![0f32; part.len() / size];
            decoder.decode(first_row + task * rows_per_task, part, &mut values);
            encoder.encode(&values, source)
        })
        .collect::<Result<_, _>>()?;
    let mut n = 0;
    for part in parts {
        out.write_all(&part)?;
        n += part.len() as u64;
    }
    Ok(n)
}

fn write_general(
    meta: &mut Metadata,
    input: &Path,
    arch: &dyn Architecture,
    options: &ConvertOptions,
    parameters: u64,
) -> Result<()> {
    let base = crate::model_base_name(input);
    meta.set("general.architecture", arch.gguf_arch());
    meta.set("general.type", "model");
    meta.set("general.name", options.name.clone().unwrap_or_else(|| base.clone()));
    meta.set("general.basename", base);
    meta.set("general.size_label", crate::size_label(parameters));
    meta.set("general.file_type", options.preset.file_type);
    meta.set("general.quantization_version", 2u32);
    let generation = input.join("generation_config.json");
    if generation.exists() {
        let g = read_json(&generation)?;
        if let Some(t) = g.get("temperature").and_then(Value::as_f64) {
            meta.set("general.sampling.temp", t as f32);
        }
        if let Some(p) = g.get("top_p").and_then(Value::as_f64) {
            meta.set("general.sampling.top_p", p as f32);
        }
        if let Some(k) = g
            .get("top_k")
            .and_then(Value::as_i64)
            .and_then(|k| i32::try_from(k).ok())
        {
            meta.set("general.sampling.top_k", crate::gguf::MetaValue::I32(k));
        }
    }
    Ok(())
}
