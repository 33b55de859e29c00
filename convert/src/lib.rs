//! Hugging Face GLM checkpoints → GGUF files for llama.cpp.
//!
//! The pipeline: read `config.json` and pick the [`arch::Architecture`] registered for its
//! `architectures` name; index the safetensors shards; plan every output tensor (name,
//! shape, type) so the GGUF header can be written first; then stream each tensor in row
//! chunks from the memory-mapped checkpoint through the encoder into a temporary file,
//! renamed into place only once complete.
//!
//! This crate knows nothing of the llama.cpp runtime.

pub mod arch;
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod files;
pub mod fp8;
pub mod gguf;
pub mod imatrix;
pub mod mmproj;
mod output;
pub mod preset;
pub mod split;
pub mod tensor_type;
pub mod tokenizer;

mod requantize;
mod writer;

use std::path::{Path, PathBuf};

pub use arch::PlanOptions;
pub use error::{ConvertError, Result};
pub use imatrix::{write_imatrix, ActivationStats, ImatrixSource, ImportanceMatrix};
pub use preset::Preset;
pub use requantize::{copy_model, requantize};
pub use split::SplitLimits;
pub use tensor_type::{GgmlType, Quantizer};
pub use writer::{convert, write_vocabulary, ConvertOptions, ConvertSummary, OutputCheck, OutputOptions, Progress};

/// The conventional file name for a conversion: `<folder name>-<PRESET>.gguf`, e.g.
/// `GLM-4-9B-0414-Q4_K_M.gguf`.
pub fn default_output_name(input: &Path, preset: &Preset) -> PathBuf {
    let base = model_base_name(input);
    PathBuf::from(format!("{base}-{}.gguf", preset.label()))
}

/// The checkpoint folder's own name (after resolving `.` and trailing slashes).
pub fn model_base_name(input: &Path) -> String {
    let resolved = input.canonicalize().unwrap_or_else(|_| input.to_path_buf());
    resolved
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "model".to_owned())
}

/// A byte count for people: `512 B`, `3.5 KiB`, `1.25 MiB`, `2.00 GiB`.
pub fn byte_label(bytes: u64) -> String {
    let n = bytes as f64;
    if n >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2} GiB", n / (1024.0 * 1024.0 * 1024.0))
    } else if n >= 1024.0 * 1024.0 {
        format!("{:.2} MiB", n / (1024.0 * 1024.0))
    } else if n >= 1024.0 {
        format!("{:.1} KiB", n / 1024.0)
    } else {
        format!("{bytes} B")
    }
}

/// Parameter count in the short form used in model names: `9.4B`, `355B`, `695K`.
pub fn size_label(parameters: u64) -> String {
    let units = [(1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")];
    let n = parameters as f64;
    for (scale, unit) in units {
        if n >= scale {
            let v = n / scale;
            return if v < 10.0 {
                format!("{:.1}{unit}", v)
            } else {
                format!("{:.0}{unit}", v)
            };
        }
    }
    parameters.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_labels() {
        assert_eq!(size_label(9_400_000_000), "9.4B");
        assert_eq!(size_label(355_000_000_000), "355B");
        assert_eq!(size_label(695_000), "695K");
        assert_eq!(size_label(12), "12");
    }

    #[test]
    fn default_name_uses_folder_and_type() {
        let preset = Preset::load("q4_k_m").unwrap();
        let name = default_output_name(Path::new("/x/GLM-4-9B-0414/"), &preset);
        assert_eq!(name, PathBuf::from("GLM-4-9B-0414-Q4_K_M.gguf"));
    }
}
