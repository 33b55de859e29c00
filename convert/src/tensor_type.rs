//! ggml tensor types we write, and the row encoders that produce them.

use half::{bf16, f16};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q8_0,
}

impl GgmlType {
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q8_0 => 8,
            GgmlType::BF16 => 30,
        }
    }

    pub fn block_elems(self) -> u64 {
        match self {
            GgmlType::Q8_0 => 32,
            _ => 1,
        }
    }

    pub fn block_bytes(self) -> u64 {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q8_0 => 34,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::BF16 => "BF16",
            GgmlType::Q8_0 => "Q8_0",
        }
    }

    pub fn row_bytes(self, row_len: usize) -> usize {
        row_len / self.block_elems() as usize * self.block_bytes() as usize
    }

    /// Encodes whole rows of f32 values (a multiple of the block size) into `out`.
    pub fn encode(self, values: &[f32], out: &mut Vec<u8>) {
        match self {
            GgmlType::F32 => values.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
            GgmlType::F16 => values
                .iter()
                .for_each(|v| out.extend_from_slice(&f16::from_f32(*v).to_le_bytes())),
            GgmlType::BF16 => values
                .iter()
                .for_each(|v| out.extend_from_slice(&bf16::from_f32(*v).to_le_bytes())),
            GgmlType::Q8_0 => values.chunks_exact(32).for_each(|block| encode_q8_0(block, out)),
        }
    }
}

/// The output type a user asks for; 1-D tensors and norms stay F32 regardless.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutType {
    F32,
    F16,
    BF16,
    Q8_0,
}

impl OutType {
    pub const ALL: [OutType; 4] = [OutType::F32, OutType::F16, OutType::BF16, OutType::Q8_0];

    pub fn ggml_type(self) -> GgmlType {
        match self {
            OutType::F32 => GgmlType::F32,
            OutType::F16 => GgmlType::F16,
            OutType::BF16 => GgmlType::BF16,
            OutType::Q8_0 => GgmlType::Q8_0,
        }
    }

    /// llama_ftype value written to `general.file_type`.
    pub fn file_type(self) -> u32 {
        match self {
            OutType::F32 => 0,
            OutType::F16 => 1,
            OutType::Q8_0 => 7,
            OutType::BF16 => 32,
        }
    }

    pub fn name(self) -> &'static str {
        self.ggml_type().name()
    }

    pub fn parse(s: &str) -> Option<Self> {
        OutType::ALL.into_iter().find(|t| t.name().eq_ignore_ascii_case(s))
    }
}

/// Q8_0: per block of 32, scale d = max|x| / 127 stored as f16, values round(x / d)
/// rounded half away from zero (as ggml's reference quantizer does, with 1/d in f32).
fn encode_q8_0(block: &[f32], out: &mut Vec<u8>) {
    let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
    out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
    out.extend(block.iter().map(|v| (v * inv).round() as i8 as u8));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_block_layout_and_rounding() {
        let mut block = [0.0f32; 32];
        block[0] = 127.0; // scale becomes exactly 1
        block[1] = -63.5; // ties round away from zero ...
        block[2] = 2.5; // ... on both sides (round-half-even would give 2)
        let mut out = Vec::new();
        GgmlType::Q8_0.encode(&block, &mut out);
        assert_eq!(out.len(), 34);
        assert_eq!(f16::from_le_bytes([out[0], out[1]]).to_f32(), 1.0);
        assert_eq!(out[2] as i8, 127);
        assert_eq!(out[3] as i8, -64);
        assert_eq!(out[4] as i8, 3);
        assert_eq!(out[5] as i8, 0);
    }

    #[test]
    fn q8_0_all_zero_block_has_zero_scale() {
        let mut out = Vec::new();
        GgmlType::Q8_0.encode(&[0.0; 32], &mut out);
        assert_eq!(out, vec![0u8; 34]);
    }

    #[test]
    fn out_type_names_parse_case_insensitively() {
        assert_eq!(OutType::parse("q8_0"), Some(OutType::Q8_0));
        assert_eq!(OutType::parse("BF16"), Some(OutType::BF16));
        assert_eq!(OutType::parse("q4_k"), None);
    }
}
