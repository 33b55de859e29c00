//! The engine around llama.cpp: the only module that touches llama-cpp-2.
//!
//! `options` holds the runtime settings, `model` loads and checks a model (and owns the
//! contexts and samplers), `session` generates with KV-cache reuse across turns, `vision`
//! handles projectors and images, `log` keeps llama.cpp's reasons for failures, and
//! `quantize` wraps ggml's quantization kernels.

mod log;
mod model;
mod options;
pub mod quantize;
#[cfg(feature = "test-support")]
pub mod reference;
mod session;
mod vision;

pub use model::Engine;
pub use options::{CacheType, ContextOptions, FlashAttention, LoadOptions, Sampling, DEFAULT_CTX};
pub use session::{ChatSession, GenerationStats};
pub use vision::{image_marker, Projector};
