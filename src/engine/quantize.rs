//! ggml's own quantization kernels, so that glm's files are bit-identical to what
//! llama.cpp's quantizer writes, and llama.cpp's quantizer itself for parity checks.

use std::ffi::CString;
use std::path::Path;

use anyhow::{bail, Result};
use glm_convert::{GgmlType, ImportanceMatrix, Quantizer};

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

/// Runs llama.cpp's own `llama_model_quantize` (what `llama-quantize` does) on a GGUF.
pub fn llama_quantize(
    input: &Path,
    output: &Path,
    file_type: u32,
    threads: i32,
    importance: Option<&ImportanceMatrix>,
) -> Result<()> {
    let path = |p: &Path| {
        CString::new(p.to_string_lossy().as_bytes())
            .map_err(|_| anyhow::anyhow!("{}: path has a NUL byte", p.display()))
    };
    let (input_c, output_c) = (path(input)?, path(output)?);
    super::backend()?;
    // SAFETY: returns a plain struct of defaults.
    let mut params = unsafe { llama_cpp_sys_2::llama_model_quantize_default_params() };
    params.ftype = file_type as llama_cpp_sys_2::llama_ftype;
    params.nthread = threads;
    // The importance entries as llama.cpp wants them: name/data/size records ending in a
    // null name. `names` and `importance` outlive the call below.
    let entries: Vec<(CString, &[f32])> = importance
        .into_iter()
        .flat_map(|m| m.iter())
        .filter_map(|(name, data)| Some((CString::new(name).ok()?, data)))
        .collect();
    let mut records: Vec<llama_cpp_sys_2::llama_model_imatrix_data> = entries
        .iter()
        .map(|(name, data)| llama_cpp_sys_2::llama_model_imatrix_data {
            name: name.as_ptr(),
            data: data.as_ptr(),
            size: data.len(),
        })
        .collect();
    if importance.is_some() {
        records.push(llama_cpp_sys_2::llama_model_imatrix_data {
            name: std::ptr::null(),
            data: std::ptr::null(),
            size: 0,
        });
        params.imatrix = records.as_ptr();
    }
    // SAFETY: both paths are valid NUL-terminated strings that outlive the call; `params`
    // is a fully initialised struct from llama_model_quantize_default_params whose
    // `imatrix` (when set) points at `records`, a null-terminated array of pointers into
    // `entries` and `importance`, all alive until the call returns.
    let status = unsafe { llama_cpp_sys_2::llama_model_quantize(input_c.as_ptr(), output_c.as_ptr(), &params) };
    if status != 0 {
        bail!("llama.cpp could not quantize {} (status {status})", input.display());
    }
    Ok(())
}
