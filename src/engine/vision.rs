//! Images: vision projectors (mmproj GGUFs) through llama.cpp's libmtmd, checked against
//! their model first, and image files decoded with size limits.

use std::path::Path;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use glm_convert::gguf::check::check_projector;
use llama_cpp_2::mtmd::{MtmdBitmap, MtmdContext, MtmdContextParams, MtmdInputText};
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
/// Decoding here rather than in libmtmd adds WebP and gives errors that say what is wrong.
fn load_bitmap(path: &Path) -> Result<MtmdBitmap> {
    let file = glm_convert::files::open_regular(path)?;
    let mut reader = image::ImageReader::new(std::io::BufReader::new(file))
        .with_guessed_format()
        .with_context(|| format!("{}: cannot read the image", path.display()))?;
    // A small file can claim a huge picture (a decompression bomb): the size is checked
    // from the header before any pixel is decoded.
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_IMAGE_BYTES);
    reader.limits(limits);
    let decoded = reader.decode().map_err(|e| {
        anyhow!(
            "{}: not a PNG, JPEG, WebP, BMP or GIF image llama.cpp can use: {e}",
            path.display()
        )
    })?;
    let rgb = decoded.to_rgb8();
    MtmdBitmap::from_image_data(rgb.width(), rgb.height(), rgb.as_raw())
        .map_err(|e| anyhow!("{}: cannot pass the image to llama.cpp: {e}", path.display()))
}

/// Largest image side and decoded size accepted (llama.cpp resizes far below this).
const MAX_IMAGE_SIDE: u32 = 16384;
const MAX_IMAGE_BYTES: u64 = 512 << 20;
