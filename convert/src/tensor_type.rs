//! ggml tensor types we write, and the row encoders that produce them.

use half::{bf16, f16};

/// ggml tensor types glm writes. Quantized types are produced by a [`Quantizer`] (ggml's
/// own kernels, supplied by the runtime side) so files are bit-identical to llama.cpp's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    IQ2XXS,
    IQ2XS,
    IQ3XXS,
    IQ1S,
    IQ4NL,
    IQ3S,
    IQ2S,
    IQ4XS,
    IQ1M,
    // Types glm reads (and shows) but never writes.
    Q8_1,
    Q8K,
    I8,
    I16,
    I32,
    I64,
    F64,
    TQ1_0,
    TQ2_0,
    MXFP4,
    NVFP4,
    Q1_0,
    Q2_0,
}

impl GgmlType {
    /// Every type a GGUF file may hold; those glm writes come first.
    pub const KNOWN: [GgmlType; 35] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
        GgmlType::IQ2XXS,
        GgmlType::IQ2XS,
        GgmlType::IQ3XXS,
        GgmlType::IQ1S,
        GgmlType::IQ4NL,
        GgmlType::IQ3S,
        GgmlType::IQ2S,
        GgmlType::IQ4XS,
        GgmlType::IQ1M,
        GgmlType::Q8_1,
        GgmlType::Q8K,
        GgmlType::I8,
        GgmlType::I16,
        GgmlType::I32,
        GgmlType::I64,
        GgmlType::F64,
        GgmlType::TQ1_0,
        GgmlType::TQ2_0,
        GgmlType::MXFP4,
        GgmlType::NVFP4,
        GgmlType::Q1_0,
        GgmlType::Q2_0,
    ];

    /// The types glm can write (presets choose among these): the first of [`Self::KNOWN`].
    pub const ALL: &'static [GgmlType] = Self::KNOWN.split_at(22).0;

    /// (ggml id, elements per block, bytes per block, name)
    fn facts(self) -> (u32, u64, u64, &'static str) {
        match self {
            GgmlType::F32 => (0, 1, 4, "F32"),
            GgmlType::F16 => (1, 1, 2, "F16"),
            GgmlType::Q4_0 => (2, 32, 18, "Q4_0"),
            GgmlType::Q4_1 => (3, 32, 20, "Q4_1"),
            GgmlType::Q5_0 => (6, 32, 22, "Q5_0"),
            GgmlType::Q5_1 => (7, 32, 24, "Q5_1"),
            GgmlType::Q8_0 => (8, 32, 34, "Q8_0"),
            GgmlType::Q2K => (10, 256, 84, "Q2_K"),
            GgmlType::Q3K => (11, 256, 110, "Q3_K"),
            GgmlType::Q4K => (12, 256, 144, "Q4_K"),
            GgmlType::Q5K => (13, 256, 176, "Q5_K"),
            GgmlType::Q6K => (14, 256, 210, "Q6_K"),
            GgmlType::IQ2XXS => (16, 256, 66, "IQ2_XXS"),
            GgmlType::IQ2XS => (17, 256, 74, "IQ2_XS"),
            GgmlType::IQ3XXS => (18, 256, 98, "IQ3_XXS"),
            GgmlType::IQ1S => (19, 256, 50, "IQ1_S"),
            GgmlType::IQ4NL => (20, 32, 18, "IQ4_NL"),
            GgmlType::IQ3S => (21, 256, 110, "IQ3_S"),
            GgmlType::IQ2S => (22, 256, 82, "IQ2_S"),
            GgmlType::IQ4XS => (23, 256, 136, "IQ4_XS"),
            GgmlType::BF16 => (30, 1, 2, "BF16"),
            GgmlType::IQ1M => (29, 256, 56, "IQ1_M"),
            GgmlType::Q8_1 => (9, 32, 36, "Q8_1"),
            GgmlType::Q8K => (15, 256, 292, "Q8_K"),
            GgmlType::I8 => (24, 1, 1, "I8"),
            GgmlType::I16 => (25, 1, 2, "I16"),
            GgmlType::I32 => (26, 1, 4, "I32"),
            GgmlType::I64 => (27, 1, 8, "I64"),
            GgmlType::F64 => (28, 1, 8, "F64"),
            GgmlType::TQ1_0 => (34, 256, 54, "TQ1_0"),
            GgmlType::TQ2_0 => (35, 256, 66, "TQ2_0"),
            GgmlType::MXFP4 => (39, 32, 17, "MXFP4"),
            GgmlType::NVFP4 => (40, 64, 36, "NVFP4"),
            GgmlType::Q1_0 => (41, 128, 18, "Q1_0"),
            GgmlType::Q2_0 => (42, 64, 18, "Q2_0"),
        }
    }

    pub fn id(self) -> u32 {
        self.facts().0
    }

    pub fn block_elems(self) -> u64 {
        self.facts().1
    }

    pub fn block_bytes(self) -> u64 {
        self.facts().2
    }

    pub fn name(self) -> &'static str {
        self.facts().3
    }

    pub fn parse(name: &str) -> Option<Self> {
        GgmlType::ALL
            .iter()
            .copied()
            .find(|t| t.name().eq_ignore_ascii_case(name))
    }

    pub fn from_id(id: u32) -> Option<Self> {
        GgmlType::KNOWN.into_iter().find(|t| t.id() == id)
    }

    pub fn is_quantized(self) -> bool {
        !matches!(self, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
    }

    pub fn row_bytes(self, row_len: usize) -> usize {
        row_len / self.block_elems() as usize * self.block_bytes() as usize
    }

    /// Encodes whole rows of f32 values into `out`; quantized types go through
    /// `quantizer`, with the per-column `importance` where the type uses one.
    pub fn encode(
        self,
        values: &[f32],
        row_len: usize,
        quantizer: Option<&dyn Quantizer>,
        importance: Option<&[f32]>,
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        match self {
            GgmlType::F32 => values.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
            GgmlType::F16 => values
                .iter()
                .for_each(|v| out.extend_from_slice(&f16::from_f32(*v).to_le_bytes())),
            GgmlType::BF16 => values
                .iter()
                .for_each(|v| out.extend_from_slice(&bf16::from_f32(*v).to_le_bytes())),
            quantized => {
                let quantizer = quantizer.ok_or_else(|| format!("no quantization backend for {}", quantized.name()))?;
                out.extend(quantizer.quantize(quantized, values, row_len, importance)?);
            }
        }
        Ok(())
    }
}

/// Quantizes rows of f32 values into a ggml block format. The runtime side implements it
/// with ggml's own kernels; this crate stays free of the runtime.
pub trait Quantizer: Sync {
    /// Types that cannot be made without importance weights (the very low-bit IQ types).
    fn requires_importance(&self, ty: GgmlType) -> bool;

    /// `values` holds whole rows of `row_len`; `importance` has `row_len` weights.
    fn quantize(
        &self,
        ty: GgmlType,
        values: &[f32],
        row_len: usize,
        importance: Option<&[f32]>,
    ) -> Result<Vec<u8>, String>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_parse_case_insensitively() {
        assert_eq!(GgmlType::parse("q8_0"), Some(GgmlType::Q8_0));
        assert_eq!(GgmlType::parse("Q4_K"), Some(GgmlType::Q4K));
        assert_eq!(GgmlType::parse("q4_k_m"), None);
    }

    #[test]
    fn block_sizes() {
        assert_eq!(GgmlType::Q6K.row_bytes(512), 420);
        assert_eq!(GgmlType::Q4_0.row_bytes(64), 36);
    }
}
