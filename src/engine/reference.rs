//! llama.cpp's own tools, called the way they call themselves, for the tests to hold glm
//! to (built only with the `test-support` feature).

use std::ffi::CString;
use std::path::Path;

use anyhow::{bail, Result};
use glm_convert::ImportanceMatrix;

/// Runs llama.cpp's own `llama_model_quantize` (what `llama-quantize` does) on a GGUF;
/// the tests hold glm's quantizer to it.
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
    super::model::backend()?;
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
