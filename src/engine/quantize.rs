//! ggml's own quantization kernels, so that glm's files are bit-identical to what
//! llama.cpp's quantizer writes.

use glm_convert::{GgmlType, Quantizer};

/// Quantizes through `ggml_quantize_chunk`.
pub struct GgmlQuantizer;

impl Quantizer for GgmlQuantizer {
    fn requires_importance(&self, ty: GgmlType) -> bool {
        // SAFETY: pure function of the type id.
        unsafe { llama_cpp_sys_2::ggml_quantize_requires_imatrix(ty.id() as llama_cpp_sys_2::ggml_type) }
    }

    fn quantize(
        &self,
        ty: GgmlType,
        values: &[f32],
        row_len: usize,
        importance: Option<&[f32]>,
    ) -> Result<Vec<u8>, String> {
        if row_len == 0 || !values.len().is_multiple_of(row_len) || !(row_len as u64).is_multiple_of(ty.block_elems()) {
            return Err(format!(
                "{} rows of {row_len} values cannot hold {} values",
                ty.name(),
                values.len()
            ));
        }
        if importance.is_some_and(|w| w.len() != row_len) {
            return Err(format!(
                "importance has {} weights for rows of {row_len}",
                importance.map_or(0, <[f32]>::len)
            ));
        }
        let rows = values.len() / row_len;
        let ggml_type = ty.id() as llama_cpp_sys_2::ggml_type;
        if importance.is_none() && self.requires_importance(ty) {
            return Err(format!("{} needs an importance matrix (--imatrix)", ty.name()));
        }
        let mut out = vec![0u8; ty.row_bytes(row_len) * rows];
        let weights = importance.map_or(std::ptr::null(), <[f32]>::as_ptr);
        // SAFETY: `values` holds `rows * row_len` floats, `out` has exactly the bytes ggml
        // writes for that many rows of this type, and `weights` is null or `row_len` floats.
        // ggml_quantize_chunk only reads `values`/`weights` and writes inside `out`.
        let written = unsafe {
            llama_cpp_sys_2::ggml_quantize_chunk(
                ggml_type,
                values.as_ptr(),
                out.as_mut_ptr().cast(),
                0,
                rows as i64,
                row_len as i64,
                weights,
            )
        };
        if written != out.len() {
            return Err(format!("ggml wrote {written} bytes, expected {}", out.len()));
        }
        Ok(out)
    }
}
