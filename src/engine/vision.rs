//! Images: vision projectors (mmproj GGUFs) through llama.cpp's libmtmd, checked against
//! their model first, and image files decoded with size limits.

use std::io::{BufRead, Seek};
use std::path::Path;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use glm_convert::gguf::check::check_projector;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::mtmd::{MtmdBitmap, MtmdContext, MtmdContextParams, MtmdInputChunks, MtmdInputText};
use llama_cpp_2::token::LlamaToken;

use super::log;
use super::model::{refusal, Engine};
use super::options::Sampling;
use super::session::ChatSession;
use super::GenerationStats;

/// The text that stands for one image in a prompt given to [`ChatSession::respond_with_images`].
pub fn image_marker() -> &'static str {
    llama_cpp_2::mtmd::mtmd_default_marker()
}

/// A vision projector (mmproj GGUF) loaded for a model, through llama.cpp's libmtmd.
pub struct Projector {
    ctx: MtmdContext,
}

impl std::fmt::Debug for Projector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Projector")
    }
}

/// One image made ready for a batch job where the request is read: libmtmd has resized
/// it and laid out its chunks (its begin/end tokens and the embeddings' place), so the
/// batching loop only encodes and decodes it.
pub struct PreparedImage {
    chunks: MtmdInputChunks,
    tokens: usize,
}

impl PreparedImage {
    /// Cells of the KV cache the image takes, its begin/end tokens included.
    pub fn tokens(&self) -> usize {
        self.tokens
    }
}

impl std::fmt::Debug for PreparedImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PreparedImage({} tokens)", self.tokens)
    }
}

impl Projector {
    /// Lays out one image for [`Projector::evaluate`]. Each image is laid out alone,
    /// which gives the tokens libmtmd gives for a whole prompt: it tokenizes the text
    /// between markers piece by piece, and GLM's projectors merge no adjacent images.
    pub fn prepare_image(&self, bitmap: &MtmdBitmap) -> Result<PreparedImage> {
        let input = MtmdInputText {
            text: image_marker().to_owned(),
            add_special: false,
            parse_special: true,
        };
        let chunks = self
            .ctx
            .tokenize(input, &[bitmap])
            .map_err(|e| anyhow!("llama.cpp cannot prepare the image: {e}"))?;
        Ok(PreparedImage {
            tokens: chunks.total_tokens(),
            chunks,
        })
    }

    /// Encodes `image` and puts it in sequence `seq` of `ctx` from position `n_past`;
    /// returns the position after it (M-RoPE images take fewer positions than cells).
    pub(super) fn evaluate(
        &mut self,
        image: &PreparedImage,
        ctx: &mut LlamaContext,
        n_past: usize,
        seq: i32,
    ) -> Result<usize> {
        let n_batch = ctx.n_batch() as i32;
        let n_past = i32::try_from(n_past).context("image position")?;
        let _watch = super::rpc::watch();
        let next = image
            .chunks
            .eval_chunks(&mut self.ctx, ctx, n_past, seq, n_batch, false)
            .map_err(|e| anyhow!("llama.cpp failed to evaluate an image: {e}"))?;
        usize::try_from(next).context("image position")
    }
}

impl Engine {
    pub fn load_projector(&self, path: &Path, threads: i32) -> Result<Projector> {
        let text = path
            .to_str()
            .with_context(|| format!("{}: path is not UTF-8", path.display()))?;
        let params = MtmdContextParams {
            use_gpu: true,
            print_timings: false,
            n_threads: threads,
            media_marker: std::ffi::CString::new(image_marker()).context("media marker")?,
            image_min_tokens: -1,
            image_max_tokens: -1,
        };
        let projector = glm_convert::gguf::read_file(path)?.header;
        check_projector(&projector, &self.header).map_err(|message| anyhow!("{}: {message}", path.display()))?;
        log::start_capture();
        let ctx = MtmdContext::init_from_file(text, &self.model, &params).map_err(|e| {
            refusal(
                format!(
                    "{}: llama.cpp cannot load this vision projector for the model",
                    path.display()
                ),
                e,
            )
        })?;
        if !ctx.support_vision() {
            bail!("{}: this projector has no vision encoder", path.display());
        }
        Ok(Projector { ctx })
    }
}

impl ChatSession<'_> {
    /// Evaluates a prompt in which each [`image_marker`] stands for one of `images`
    /// (PNG, JPEG, BMP, …), then generates the reply. The cache starts afresh: image
    /// positions do not follow the token count, so no text prefix can be reused.
    pub fn respond_with_images(
        &mut self,
        projector: &mut Projector,
        prompt: &str,
        images: &[std::path::PathBuf],
        max_tokens: usize,
        sampling: &Sampling,
        mut on_text: impl FnMut(&str) -> bool,
    ) -> Result<GenerationStats> {
        let (stats, text_tokens) = self.evaluate_with_images(projector, prompt, images)?;
        self.generate_reply(-1, &text_tokens, max_tokens, sampling, &mut on_text, stats)
    }

    /// The logits after a prompt with images (the last position), for parity checks.
    pub fn logits_with_images(
        &mut self,
        projector: &mut Projector,
        prompt: &str,
        images: &[std::path::PathBuf],
    ) -> Result<(Vec<i32>, Vec<f32>)> {
        let (_, text_tokens) = self.evaluate_with_images(projector, prompt, images)?;
        let logits = self.decoder.target().get_logits_ith(-1).to_vec();
        Ok((text_tokens.iter().map(|t| t.0).collect(), logits))
    }

    /// Evaluates text and images from position 0; returns the stats and the text tokens.
    fn evaluate_with_images(
        &mut self,
        projector: &mut Projector,
        prompt: &str,
        images: &[std::path::PathBuf],
    ) -> Result<(GenerationStats, Vec<LlamaToken>)> {
        self.clear();
        let mut bitmaps = Vec::with_capacity(images.len());
        for image in images {
            bitmaps.push(load_bitmap(image)?);
        }
        let refs: Vec<&MtmdBitmap> = bitmaps.iter().collect();
        let input = MtmdInputText {
            text: prompt.to_owned(),
            add_special: false,
            parse_special: true,
        };
        let chunks = projector
            .ctx
            .tokenize(input, &refs)
            .map_err(|e| anyhow!("cannot combine the prompt and the images: {e}"))?;
        // M-RoPE images take fewer positions than tokens; both must fit.
        let needed = chunks.total_tokens().max(chunks.total_positions().max(0) as usize);
        if needed >= self.n_ctx() {
            bail!(
                "the prompt with its images needs {needed} tokens; the context holds {}",
                self.n_ctx()
            );
        }
        let started = Instant::now();
        let n_batch = self.decoder.target().n_batch() as i32;
        let _watch = super::rpc::watch();
        let n_past = chunks
            .eval_chunks(&mut projector.ctx, self.decoder.target_mut(), 0, 0, n_batch, true)
            .map_err(|e| anyhow!("llama.cpp failed to evaluate the prompt with its images: {e}"))?;
        self.next_position = usize::try_from(n_past).unwrap_or(0);
        self.positions_untracked = true;
        // The draft context never saw the image; drafting waits for a cleared cache.
        self.decoder.lose_step();
        let stats = GenerationStats {
            prompt_tokens: chunks.total_tokens(),
            prompt_time: started.elapsed(),
            ..Default::default()
        };
        let text_tokens: Vec<LlamaToken> = (0..chunks.len())
            .filter_map(|i| chunks.get(i))
            .filter_map(|chunk| chunk.text_tokens().map(<[LlamaToken]>::to_vec))
            .flatten()
            .collect();
        Ok((stats, text_tokens))
    }
}

/// Decodes an image file (PNG, JPEG, WebP, BMP, GIF) to the RGB pixels libmtmd takes.
fn load_bitmap(path: &Path) -> Result<MtmdBitmap> {
    let file = glm_convert::files::open_regular(path)?;
    decode(std::io::BufReader::new(file), &path.display().to_string())
}

/// Decodes an image held in memory (a request's), naming it `name` in errors.
pub fn decode_image(bytes: &[u8], name: &str) -> Result<MtmdBitmap> {
    decode(std::io::Cursor::new(bytes), name)
}

/// Decoding here rather than in libmtmd adds WebP and gives errors that say what is wrong.
fn decode(source: impl BufRead + Seek, name: &str) -> Result<MtmdBitmap> {
    let mut reader = image::ImageReader::new(source)
        .with_guessed_format()
        .with_context(|| format!("{name}: cannot read the image"))?;
    // A small file can claim a huge picture (a decompression bomb): the size is checked
    // from the header before any pixel is decoded.
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_IMAGE_BYTES);
    reader.limits(limits);
    let decoded = reader
        .decode()
        .map_err(|e| anyhow!("{name}: not a PNG, JPEG, WebP, BMP or GIF image llama.cpp can use: {e}"))?;
    let rgb = decoded.to_rgb8();
    MtmdBitmap::from_image_data(rgb.width(), rgb.height(), rgb.as_raw())
        .map_err(|e| anyhow!("{name}: cannot pass the image to llama.cpp: {e}"))
}

/// Largest image side and decoded size accepted (llama.cpp resizes far below this).
const MAX_IMAGE_SIDE: u32 = 16384;
const MAX_IMAGE_BYTES: u64 = 512 << 20;
