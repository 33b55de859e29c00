//! The engine around llama.cpp: the only module that touches llama-cpp-2.
//!
//! `options` holds the runtime settings, `model` loads and checks a model (and owns the
//! contexts and samplers), `session` generates with KV-cache reuse across turns, `vision`
//! handles projectors and images, `log` keeps llama.cpp's reasons for failures,
//! `rpc` joins other machines' devices (and serves this one's), `quantize` wraps
//! ggml's quantization kernels, and `imatrix` computes importance matrices.

pub mod batch;
mod grammar;
mod imatrix;
mod log;
mod model;
mod options;
mod placement;
mod plan;
pub mod quantize;
#[cfg(feature = "test-support")]
pub mod reference;
pub mod rpc;
mod session;
mod speculative;
mod vision;

pub use grammar::{json_object_grammar, json_schema_grammar};
pub use imatrix::{ChunkDone, Imatrix, ImatrixOptions};
pub use log::show_llama_log;
pub use model::{use_numa, Engine};
pub use options::{
    CacheType, ContextOptions, DraftOptions, FlashAttention, GpuLayers, LoadOptions, Numa, Placement, Sampling,
    SplitMode, TensorOverride, DEFAULT_CTX,
};
pub use placement::{devices, has_gpu, parse_override, Device};
pub use plan::{plan, DeviceMemory, MemoryPlan};
#[cfg(feature = "test-support")]
pub use session::DraftOracle;
pub use session::{ChatSession, GenerationStats, Interrupted, PromptWatcher, StopReason};
pub use speculative::DraftStats;
pub use vision::{decode_image, image_marker, PreparedImage, Projector};
