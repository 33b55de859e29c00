//! FP8 checkpoints (Z.ai's `quant_method: "fp8"`, llm-compressor's `compressed-tensors`
//! `float-quantized`, AutoFP8): `F8_E4M3` weights with their scales, dequantized row by
//! row while streaming, so no BF16 copy is ever made.
//!
//! A weight `X.weight` in F8_E4M3 has its scale in `X.weight_scale_inv` or
//! `X.weight_scale` (both are multiplied: transformers' FP8 integration stores the
//! inverse of the quantization scale, which is the dequantization factor). The scale's
//! shape says its layout: one value (per tensor), one per row (per channel), or one per
//! block of `weight_block_size` rows × columns, edge blocks partial. Activation scales
//! (`X.input_scale`) play no part in the weights and are dropped.

use std::sync::OnceLock;

use crate::checkpoint::{SourceDtype, TensorEntry};

/// How a scale tensor covers its weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleLayout {
    Tensor,
    Row,
    /// One scale per block of `rows` × `cols` elements.
    Block {
        rows: usize,
        cols: usize,
    },
}

/// The scale tensor of an FP8 weight.
#[derive(Debug, Clone)]
pub struct Scale {
    pub entry: Box<TensorEntry>,
    pub layout: ScaleLayout,
}

/// The names a weight's scale may have, in the order they are looked for.
pub fn scale_names(weight: &str) -> [String; 2] {
    [format!("{weight}_scale_inv"), format!("{weight}_scale")]
}

/// Whether `name` is an activation scale of an FP8 layer (not a weight of the model).
pub fn is_activation_scale(name: &str) -> bool {
    name.ends_with(".input_scale") || name.ends_with(".input_scale_inv")
}

/// The layout of `scale` for `weight`, from their shapes (and the configured block size,
/// when the checkpoint's config gives one).
pub fn layout(weight: &TensorEntry, scale: &TensorEntry, block: Option<[usize; 2]>) -> Result<ScaleLayout, String> {
    if !matches!(scale.dtype, SourceDtype::F32 | SourceDtype::BF16 | SourceDtype::F16) {
        return Err(format!("its scale {} is not a float tensor", scale.name));
    }
    if scale.n_elements() == 1 {
        return Ok(ScaleLayout::Tensor);
    }
    let [rows, cols] = match weight.shape.as_slice() {
        [rows, cols] => [*rows, *cols],
        _ => return Err("FP8 weights with more than one scale must be 2-D".to_owned()),
    };
    let scale_shape = match scale.shape.as_slice() {
        [n] => [*n, 1],
        [a, b] => [*a, *b],
        _ => return Err(format!("its scale {} has shape {:?}", scale.name, scale.shape)),
    };
    if scale_shape == [rows, 1] {
        return Ok(ScaleLayout::Row);
    }
    let [block_rows, block_cols] = match block {
        Some(block) => block,
        // Without a configured size, the smallest power of two that gives the scale's
        // shape (128 in every published FP8 checkpoint).
        None => [
            rows.div_ceil(scale_shape[0]).next_power_of_two(),
            cols.div_ceil(scale_shape[1]).next_power_of_two(),
        ],
    };
    if block_rows == 0 || block_cols == 0 {
        return Err("weight_block_size holds a zero".to_owned());
    }
    let expected = [rows.div_ceil(block_rows), cols.div_ceil(block_cols)];
    if expected != scale_shape {
        return Err(format!(
            "its scale {} has shape {:?}; blocks of {block_rows}×{block_cols} over {rows}×{cols} need {expected:?}",
            scale.name, scale.shape
        ));
    }
    Ok(ScaleLayout::Block {
        rows: block_rows,
        cols: block_cols,
    })
}

/// Every F8_E4M3 byte's value (the "fn" variant: no infinities; 0x7F and 0xFF are NaN).
fn e4m3_table() -> &'static [f32; 256] {
    static TABLE: OnceLock<[f32; 256]> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = [0f32; 256];
        for (byte, value) in table.iter_mut().enumerate() {
            let sign = if byte & 0x80 != 0 { -1.0 } else { 1.0 };
            let exponent = ((byte >> 3) & 0x0F) as i32;
            let mantissa = (byte & 0x07) as f32;
            *value = match exponent {
                0x0F if byte & 0x07 == 0x07 => f32::NAN,
                0 => sign * mantissa / 8.0 * 2f32.powi(-6),
                _ => sign * (1.0 + mantissa / 8.0) * 2f32.powi(exponent - 7),
            };
        }
        table
    })
}

pub fn decode_e4m3(bytes: &[u8], out: &mut [f32]) {
    let table = e4m3_table();
    for (o, &b) in out.iter_mut().zip(bytes) {
        *o = table[b as usize];
    }
}

/// Multiplies `values` (whole rows of `row_len`, the first being row `first_row`) by
/// their scales, `scales` holding the scale tensor's values in row-major order.
pub fn apply(
    layout: ScaleLayout,
    scales: &[f32],
    scale_cols: usize,
    row_len: usize,
    first_row: usize,
    values: &mut [f32],
) {
    for (i, row) in values.chunks_mut(row_len.max(1)).enumerate() {
        let r = first_row + i;
        match layout {
            ScaleLayout::Tensor => row.iter_mut().for_each(|v| *v *= scales[0]),
            ScaleLayout::Row => row.iter_mut().for_each(|v| *v *= scales[r]),
            ScaleLayout::Block { rows, cols } => {
                let base = (r / rows) * scale_cols;
                for (c, v) in row.iter_mut().enumerate() {
                    *v *= scales[base + c / cols];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e4m3_values_follow_the_format() {
        let mut out = [0f32; 8];
        decode_e4m3(&[0x00, 0x38, 0x40, 0xB8, 0x7E, 0x01, 0x08, 0x7F], &mut out);
        assert_eq!(out[..7], [0.0, 1.0, 2.0, -1.0, 448.0, 2f32.powi(-9), 2f32.powi(-6)]);
        assert!(out[7].is_nan());
    }

    #[test]
    fn blocks_cover_partial_edges() {
        // 3 rows × 5 columns in blocks of 2 × 2: scales of shape [2, 3].
        let scales = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let mut values = vec![1f32; 15];
        apply(ScaleLayout::Block { rows: 2, cols: 2 }, &scales, 3, 5, 0, &mut values);
        assert_eq!(values, [1., 1., 2., 2., 3., 1., 1., 2., 2., 3., 4., 4., 5., 5., 6.]);
        let mut last_row = vec![1f32; 5];
        apply(ScaleLayout::Block { rows: 2, cols: 2 }, &scales, 3, 5, 2, &mut last_row);
        assert_eq!(last_row, [4., 4., 5., 5., 6.]);
    }
}
