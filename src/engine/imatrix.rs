//! Importance matrices computed the way llama-imatrix computes them: the text is cut into
//! chunks of `n_ctx` tokens, each evaluated alone from an empty cache (its first token
//! replaced by BOS when the vocabulary adds one); for every matrix multiplication by a
//! weight of a layer (`blk.*`, and `output.weight` when asked), the squares of its input
//! rows are summed per column, per expert for the experts' stacked weights (each token
//! counted for the experts it was routed to). Dense multiplications of fewer than 16
//! rows are skipped, as llama-imatrix skips them. Perplexity over the second half of each
//! chunk is reported as it goes.
//!
//! The inputs are read through llama.cpp's evaluation callback (`cb_eval`), which the
//! scheduler calls for each graph node; the only FFI of this module is there.

use std::collections::BTreeMap;
use std::ffi::{c_void, CStr};
use std::num::NonZeroU32;
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use glm_convert::ActivationStats;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_sys_2 as sys;

use super::model::{backend, context_params, refusal};
use super::options::ContextOptions;
use super::Engine;

/// llama-imatrix ignores dense multiplications of fewer rows than this.
const MIN_ROWS: i64 = 16;

#[derive(Debug, Clone)]
pub struct ImatrixOptions {
    /// Tokens per chunk.
    pub chunk_size: u32,
    /// At most this many chunks (all the text holds when `None`).
    pub max_chunks: Option<usize>,
    /// Also collect `output.weight` (llama-imatrix's `--process-output`).
    pub process_output: bool,
}

/// Progress after each chunk.
#[derive(Debug, Clone, Copy)]
pub struct ChunkDone {
    pub chunk: usize,
    pub chunks: usize,
    /// Perplexity over the chunks so far.
    pub perplexity: f64,
}

#[derive(Debug)]
pub struct Imatrix {
    pub stats: BTreeMap<String, ActivationStats>,
    pub chunks: usize,
    pub perplexity: f64,
}

impl Engine {
    /// A calibration text's tokens as llama-imatrix reads them: with BOS when the
    /// vocabulary adds one, special-token text taken literally.
    pub fn document_tokens(&self, text: &[u8]) -> Vec<i32> {
        self.model
            .vocab()
            .tokenize(text, true, false)
            .into_iter()
            .map(|t| t.0)
            .collect()
    }

    /// Collects the importance matrix of `tokens` (see the module's documentation), in
    /// as many whole chunks as they hold (at most `options.max_chunks`).
    pub fn importance(
        &self,
        tokens: &[i32],
        options: &ImatrixOptions,
        context: &ContextOptions,
        on_chunk: &mut dyn FnMut(ChunkDone),
    ) -> Result<Imatrix> {
        let tokens = self.check_tokens(tokens)?;
        let n_ctx = options.chunk_size as usize;
        if n_ctx < 2 {
            bail!("-c {n_ctx}: a chunk needs at least 2 tokens");
        }
        let available = tokens.len() / n_ctx;
        if available == 0 {
            bail!("{} tokens do not fill one chunk of -c {n_ctx}", tokens.len());
        }
        let chunks = options.max_chunks.map_or(available, |n| n.min(available));
        let vocab = self.model.vocab();
        let bos = vocab.should_add_bos().then(|| vocab.bos());
        let collector = Collector::new(options.process_output);
        let mut ctx = self.collecting_context(options.chunk_size, context, &collector)?;
        let mut perplexity = Perplexity::default();
        for chunk in 0..chunks {
            let mut window: Vec<LlamaToken> = tokens[chunk * n_ctx..(chunk + 1) * n_ctx].to_vec();
            if let Some(bos) = bos {
                window[0] = bos;
            }
            evaluate_chunk(&mut ctx, &window)?;
            collector.check()?;
            for position in n_ctx / 2..n_ctx - 1 {
                perplexity.add(ctx.get_logits_ith(position as i32), window[position + 1].0);
            }
            on_chunk(ChunkDone {
                chunk: chunk + 1,
                chunks,
                perplexity: perplexity.value(),
            });
        }
        drop(ctx);
        let stats = collector.into_stats();
        if stats.is_empty() {
            bail!("no weight was multiplied by {MIN_ROWS} rows or more; use chunks of at least {MIN_ROWS} tokens");
        }
        Ok(Imatrix {
            stats,
            chunks,
            perplexity: perplexity.value(),
        })
    }

    /// A context of one chunk, evaluated whole, whose matrix multiplications `collector`
    /// sees. It borrows `collector`, so it cannot outlive it.
    fn collecting_context<'c>(
        &'c self,
        chunk_size: u32,
        context: &ContextOptions,
        collector: &'c Collector,
    ) -> Result<LlamaContext<'c>> {
        let params = context_params(
            &ContextOptions {
                batch_size: chunk_size,
                ..context.clone()
            },
            chunk_size,
        )
        .with_n_ctx(NonZeroU32::new(chunk_size));
        // SAFETY: `on_eval` catches every panic; the returned context borrows `collector`
        // (lifetime 'c), so the pointer stays valid for every evaluation.
        let params = unsafe { params.with_cb_eval(Some(on_eval), (collector as *const Collector).cast_mut().cast()) };
        super::log::start_capture();
        self.model
            .new_context(backend()?, params)
            .map_err(|e| refusal(format!("cannot create a llama.cpp context of {chunk_size} tokens"), e))
    }
}

/// Evaluates one chunk from an empty cache, every position an output: llama.cpp computes
/// the last layer only for output rows, and its inputs are part of the matrix.
fn evaluate_chunk(ctx: &mut LlamaContext<'_>, window: &[LlamaToken]) -> Result<()> {
    ctx.clear_kv_cache();
    let mut batch = LlamaBatch::new(window.len(), 1);
    for (position, token) in window.iter().enumerate() {
        batch.add(*token, position as i32, &[0], true)?;
    }
    let _watch = super::rpc::watch();
    ctx.decode(&mut batch).context("llama.cpp failed to evaluate a chunk")
}

/// Mean negative log-likelihood of the next token, as perplexity.
#[derive(Default)]
struct Perplexity {
    nll: f64,
    count: usize,
}

impl Perplexity {
    fn add(&mut self, logits: &[f32], next: i32) {
        let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
        let sum: f64 = logits.iter().map(|&v| (v as f64 - max).exp()).sum();
        let chosen = usize::try_from(next).ok().and_then(|i| logits.get(i)).copied();
        self.nll += max + sum.ln() - chosen.map_or(f64::NAN, f64::from);
        self.count += 1;
    }

    fn value(&self) -> f64 {
        (self.nll / self.count.max(1) as f64).exp()
    }
}

/// The sums gathered by the evaluation callback. llama.cpp calls it from the thread that
/// runs `decode`; the lock only makes the shared access sound.
struct Collector {
    process_output: bool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    stats: BTreeMap<String, ActivationStats>,
    /// Copies of inputs that live in device memory.
    scratch: Vec<u8>,
    ids: Vec<u8>,
    error: Option<String>,
}

impl Collector {
    fn new(process_output: bool) -> Self {
        Self {
            process_output,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn check(&self) -> Result<()> {
        match self.lock().error.take() {
            Some(error) => bail!("{error}"),
            None => Ok(()),
        }
    }

    fn into_stats(self) -> BTreeMap<String, ActivationStats> {
        self.state.into_inner().unwrap_or_else(|p| p.into_inner()).stats
    }

    /// The weight a node multiplies by when it is one to collect.
    fn wanted(&self, node: &sys::ggml_tensor) -> Option<String> {
        let weight = source(node, 0)?;
        let input = source(node, 1)?;
        let name = weight_name(weight);
        match node.op {
            sys::GGML_OP_MUL_MAT_ID => Some(name),
            sys::GGML_OP_MUL_MAT
                if input.ne[1] >= MIN_ROWS
                    && input.type_ == sys::GGML_TYPE_F32
                    && (name.starts_with("blk.") || (self.process_output && name == "output.weight")) =>
            {
                Some(name)
            }
            _ => None,
        }
    }

    fn collect(&self, node: &sys::ggml_tensor) {
        let Some(name) = self.wanted(node) else {
            return;
        };
        let mut state = self.lock();
        if state.error.is_some() {
            return;
        }
        if let Err(error) = state.collect(node, name) {
            state.error = Some(error);
        }
    }
}

impl State {
    fn collect(&mut self, node: &sys::ggml_tensor, name: String) -> Result<(), String> {
        let (Some(weight), Some(input)) = (source(node, 0), source(node, 1)) else {
            return Ok(());
        };
        if input.nb[0] != std::mem::size_of::<f32>() {
            return Err(format!("the input of {name} is not a row-contiguous F32 tensor"));
        }
        // The copies are reused across calls; taken out while the sums are borrowed.
        let (mut scratch, mut ids_scratch) = (std::mem::take(&mut self.scratch), std::mem::take(&mut self.ids));
        let stat = self.stats.entry(name.clone()).or_default();
        let data = host_bytes(input, &mut scratch);
        let result = if node.op == sys::GGML_OP_MUL_MAT_ID {
            match source(node, 2) {
                Some(ids) => collect_routed(stat, weight, input, data, ids, host_bytes(ids, &mut ids_scratch)),
                None => Err("expert ids missing".into()),
            }
        } else {
            collect_dense(stat, weight, input, data)
        };
        let finite = stat.sums.iter().all(|v| v.is_finite());
        (self.scratch, self.ids) = (scratch, ids_scratch);
        result.map_err(|e| format!("{name}: {e}"))?;
        if !finite {
            return Err(format!(
                "the inputs of {name} hold NaN or infinite values; the model is broken"
            ));
        }
        Ok(())
    }
}

/// Sums for an expert multiplication: input `[columns, used (or 1), tokens]`, ids
/// `[used, tokens]`; each (token, slot) adds its row to the chosen expert's sums.
fn collect_routed(
    stat: &mut ActivationStats,
    weight: &sys::ggml_tensor,
    input: &sys::ggml_tensor,
    data: &[u8],
    ids: &sys::ggml_tensor,
    ids_data: &[u8],
) -> Result<(), String> {
    let experts = usize::try_from(weight.ne[2]).map_err(|_| "bad expert count")?;
    let columns = usize::try_from(input.ne[0]).map_err(|_| "bad row length")?;
    let (slots, tokens) = (ids.ne[0], ids.ne[1]);
    if ids.ne[1] != input.ne[2] || input.ne[3] != 1 || input.ne[1] < 1 {
        return Err("unexpected shapes of an expert multiplication".into());
    }
    init(stat, columns, experts)?;
    for slot in 0..slots {
        for token in 0..tokens {
            let at = token as usize * ids.nb[1] + slot as usize * ids.nb[0];
            let expert = read_i32(ids_data, at).ok_or("expert ids out of range")?;
            let expert = usize::try_from(expert)
                .ok()
                .filter(|&e| e < experts)
                .ok_or("an expert id outside the model's experts")?;
            let row_at = (slot % input.ne[1]) as usize * input.nb[1] + token as usize * input.nb[2];
            let row = read_row(data, row_at, columns).ok_or("input rows out of range")?;
            stat.counts[expert] += 1;
            add_squares(&mut stat.sums[expert * columns..(expert + 1) * columns], row);
        }
    }
    Ok(())
}

/// Sums for a plain multiplication; a 3-D weight (one matrix per head) has sums per matrix,
/// one count for all.
fn collect_dense(
    stat: &mut ActivationStats,
    weight: &sys::ggml_tensor,
    input: &sys::ggml_tensor,
    data: &[u8],
) -> Result<(), String> {
    let matrices = (weight.ne[2] * weight.ne[3]).max(1);
    let columns = usize::try_from(input.ne[0]).map_err(|_| "bad row length")?;
    init(
        stat,
        columns,
        usize::try_from(matrices).map_err(|_| "bad matrix count")?,
    )?;
    stat.counts.truncate(1);
    for i3 in 0..input.ne[3] {
        for i2 in 0..input.ne[2] {
            let matrix = ((i3 % weight.ne[3].max(1)) * weight.ne[2].max(1) + (i2 % weight.ne[2].max(1))) as usize;
            for row in 0..input.ne[1] {
                let at = row as usize * input.nb[1] + i2 as usize * input.nb[2] + i3 as usize * input.nb[3];
                let values = read_row(data, at, columns).ok_or("input rows out of range")?;
                add_squares(&mut stat.sums[matrix * columns..(matrix + 1) * columns], values);
            }
        }
    }
    let rows = input.ne[1] * input.ne[2] * input.ne[3];
    stat.counts[0] += rows / matrices;
    Ok(())
}

/// Sizes a new entry; an existing one must have the same shape.
fn init(stat: &mut ActivationStats, columns: usize, matrices: usize) -> Result<(), String> {
    if stat.sums.is_empty() {
        stat.sums = vec![0.0; columns * matrices];
        stat.counts = vec![0; matrices];
    } else if stat.sums.len() != columns * matrices {
        return Err(format!(
            "multiplied by {columns}-column inputs in {matrices} matrices, earlier by {} values",
            stat.sums.len()
        ));
    }
    Ok(())
}

fn add_squares(sums: &mut [f32], row: impl Iterator<Item = f32>) {
    for (sum, x) in sums.iter_mut().zip(row) {
        *sum += x * x;
    }
}

fn read_i32(bytes: &[u8], at: usize) -> Option<i32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn read_row(bytes: &[u8], at: usize, columns: usize) -> Option<impl Iterator<Item = f32> + '_> {
    let b = bytes.get(at..at.checked_add(columns.checked_mul(4)?)?)?;
    Some(b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
}

/// `node.src[index]`, when set.
fn source(node: &sys::ggml_tensor, index: usize) -> Option<&sys::ggml_tensor> {
    let pointer = *node.src.get(index)?;
    // SAFETY: ggml's graph nodes point at their sources, which live as long as the graph
    // the callback is called for; null means no source.
    unsafe { pointer.as_ref() }
}

/// A weight's name as llama-imatrix keys it: a backend's copy is named
/// `<backend>#<name>#<n>`, and the part between the marks is the weight's own name.
fn weight_name(weight: &sys::ggml_tensor) -> String {
    // SAFETY: ggml keeps tensor names NUL-terminated inside the fixed-size array.
    let full = unsafe { CStr::from_ptr(weight.name.as_ptr()) }.to_string_lossy();
    match full.split_once('#') {
        Some((_, rest)) => rest.split('#').next().unwrap_or(rest).to_owned(),
        None => full.into_owned(),
    }
}

/// A tensor's bytes in host memory: its own when its buffer is the host's, else a copy
/// in `scratch`.
fn host_bytes<'a>(tensor: &'a sys::ggml_tensor, scratch: &'a mut Vec<u8>) -> &'a [u8] {
    // SAFETY: the tensor is a computed node's source, alive during the callback; ggml
    // reports its size, and a host buffer's data pointer covers that many bytes.
    unsafe {
        let size = sys::ggml_nbytes(tensor);
        if !tensor.buffer.is_null() && sys::ggml_backend_buffer_is_host(tensor.buffer) && !tensor.data.is_null() {
            return std::slice::from_raw_parts(tensor.data.cast::<u8>(), size);
        }
        scratch.resize(size, 0);
        sys::ggml_backend_tensor_get(tensor, scratch.as_mut_ptr().cast(), 0, size);
        scratch
    }
}

/// llama.cpp's evaluation callback: with `ask`, whether the node's data is wanted; without,
/// the node is computed and its input is summed. Never unwinds into C.
extern "C" fn on_eval(node: *mut sys::ggml_tensor, ask: bool, user_data: *mut c_void) -> bool {
    let result = std::panic::catch_unwind(|| {
        // SAFETY: `user_data` is the `Collector` set with the callback, alive while the
        // context evaluates; `node` is the scheduler's node, valid for this call.
        let (collector, node) = unsafe { (&*(user_data as *const Collector), node.as_ref()) };
        let Some(node) = node else {
            return false;
        };
        if ask {
            return collector.wanted(node).is_some();
        }
        collector.collect(node);
        collector.lock().error.is_none()
    });
    result.unwrap_or(false)
}
