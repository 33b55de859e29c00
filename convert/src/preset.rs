//! Quantization presets: which ggml type each tensor gets. A preset is a YAML file with a
//! default type, ordered rules (first match wins) that pick types by tensor name and
//! layer position, and the fallbacks for rows that are not a whole number of blocks. The
//! built-in presets (`quant-presets/*.yaml`) reproduce llama.cpp's own mixtures for the
//! GLM architectures.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::error::{ConvertError, Result};
use crate::tensor_type::GgmlType;

/// The built-in presets, embedded at build time.
const BUILT_IN: &[(&str, &str)] = &[
    ("f32", include_str!("../../quant-presets/f32.yaml")),
    ("f16", include_str!("../../quant-presets/f16.yaml")),
    ("bf16", include_str!("../../quant-presets/bf16.yaml")),
    ("q8_0", include_str!("../../quant-presets/q8_0.yaml")),
    ("q6_k", include_str!("../../quant-presets/q6_k.yaml")),
    ("q5_k_m", include_str!("../../quant-presets/q5_k_m.yaml")),
    ("q5_k_s", include_str!("../../quant-presets/q5_k_s.yaml")),
    ("q4_k_m", include_str!("../../quant-presets/q4_k_m.yaml")),
    ("q4_k_s", include_str!("../../quant-presets/q4_k_s.yaml")),
    ("q4_0", include_str!("../../quant-presets/q4_0.yaml")),
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    #[serde(skip)]
    pub name: String,
    pub description: String,
    /// llama_ftype written to `general.file_type`.
    pub file_type: u32,
    /// Type of every quantizable matrix no rule claims.
    #[serde(deserialize_with = "ggml_type")]
    pub default: GgmlType,
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// Type to use when rows are not a whole number of blocks of the chosen type.
    #[serde(default, deserialize_with = "fallback_map")]
    pub fallback: BTreeMap<GgmlType, GgmlType>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Exact tensor names this rule applies to.
    #[serde(default)]
    pub names: Vec<String>,
    /// Substrings; a tensor whose name contains any of them matches.
    #[serde(default)]
    pub contains: Vec<String>,
    /// Which positions among the matching tensors get the type (all when absent).
    #[serde(default, deserialize_with = "layer_selector")]
    pub layers: Option<LayerSelector>,
    /// How a tensor's position is counted for `layers`.
    #[serde(default)]
    pub position: Position,
    /// Apply only when an importance matrix is given.
    #[serde(default)]
    pub with_imatrix: bool,
    #[serde(rename = "type", deserialize_with = "ggml_type")]
    pub ty: GgmlType,
}

/// Written `more_bits`, `first_eighth` or `first 4` in YAML.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerSelector {
    /// llama.cpp's `use_more_bits`: the first and last eighth, and every third one between.
    MoreBits,
    /// The first eighth.
    FirstEighth,
    /// The first N.
    First(usize),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Position {
    /// i = running count of matching tensors so far, n = their total.
    #[default]
    Occurrence,
    /// i = the block number in `blk.N.`, n = the number of blocks (NextN layers
    /// included), as llama.cpp counts `ffn_down` layers.
    Block,
}

fn ggml_type<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<GgmlType, D::Error> {
    let name = String::deserialize(d)?;
    GgmlType::parse(&name).ok_or_else(|| serde::de::Error::custom(unknown_type(&name)))
}

fn layer_selector<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<LayerSelector>, D::Error> {
    let text = String::deserialize(d)?;
    let words: Vec<&str> = text.split_whitespace().collect();
    match words[..] {
        ["more_bits"] => Ok(Some(LayerSelector::MoreBits)),
        ["first_eighth"] => Ok(Some(LayerSelector::FirstEighth)),
        ["first", n] => n
            .parse()
            .map(|n| Some(LayerSelector::First(n)))
            .map_err(|_| serde::de::Error::custom(format!("`first` needs a count, found {n:?}"))),
        _ => Err(serde::de::Error::custom(format!(
            "unknown layer selector {text:?} (use more_bits, first_eighth or first N)"
        ))),
    }
}

fn fallback_map<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<BTreeMap<GgmlType, GgmlType>, D::Error> {
    let raw = BTreeMap::<String, String>::deserialize(d)?;
    raw.iter()
        .map(|(from, to)| {
            let parse = |n: &str| GgmlType::parse(n).ok_or_else(|| serde::de::Error::custom(unknown_type(n)));
            Ok((parse(from)?, parse(to)?))
        })
        .collect()
}

fn unknown_type(name: &str) -> String {
    let known: Vec<String> = GgmlType::ALL.iter().map(|t| t.name().to_lowercase()).collect();
    format!("unknown tensor type {name:?} (known: {})", known.join(", "))
}

impl Preset {
    /// A built-in preset by name (`q4_k_m`), or a user's YAML file by path.
    pub fn load(name_or_path: &str) -> Result<Self> {
        if let Some((name, text)) = BUILT_IN.iter().find(|(n, _)| n.eq_ignore_ascii_case(name_or_path)) {
            return Self::parse(name, text, Path::new(name));
        }
        let path = Path::new(name_or_path);
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") || path.is_file() {
            let text = crate::files::read_text_limited(path, crate::files::MAX_PRESET_BYTES)?;
            let name = path
                .file_stem()
                .map_or_else(|| "custom".to_owned(), |s| s.to_string_lossy().into_owned());
            return Self::parse(&name, &text, path);
        }
        Err(ConvertError::Invalid(format!(
            "unknown preset {name_or_path:?}: use one of {} or a .yaml file",
            Self::built_in_names().join(", ")
        )))
    }

    pub fn built_in_names() -> Vec<&'static str> {
        BUILT_IN.iter().map(|(n, _)| *n).collect()
    }

    pub fn built_in() -> Vec<Preset> {
        BUILT_IN
            .iter()
            .filter_map(|(name, text)| Self::parse(name, text, Path::new(name)).ok())
            .collect()
    }

    fn parse(name: &str, text: &str, path: &Path) -> Result<Self> {
        let mut preset: Preset = serde_norway::from_str(text).map_err(|e| {
            let message = e.to_string();
            // Errors raised by our own field parsers carry no position; find the value.
            let line = quoted_value(&message)
                .and_then(|value| text.lines().position(|l| l.contains(value)).map(|i| i + 1))
                .or_else(|| e.location().map(|l| l.line()));
            let at = line.map(|l| format!("line {l}: ")).unwrap_or_default();
            let message = message.split(" at line ").next().unwrap_or(&message).to_owned();
            ConvertError::config(path, format!("{at}{message}"))
        })?;
        for (i, rule) in preset.rules.iter().enumerate() {
            if rule.names.is_empty() && rule.contains.is_empty() {
                return Err(ConvertError::config(
                    path,
                    format!("rule {} matches nothing: give `names` or `contains`", i + 1),
                ));
            }
        }
        preset.name = name.to_owned();
        Ok(preset)
    }

    /// The file-name suffix, e.g. `Q4_K_M`.
    pub fn label(&self) -> String {
        self.name.to_uppercase()
    }
}

/// The first `"…"`-quoted value of an error message.
fn quoted_value(message: &str) -> Option<&str> {
    let start = message.find('"')? + 1;
    let end = start + message[start..].find('"')?;
    Some(&message[start..end])
}

impl Rule {
    fn matches(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name) || self.contains.iter().any(|c| name.contains(c.as_str()))
    }
}

/// True for tensors llama.cpp's quantizer may change: matrices named `*weight`, except
/// norms and the MoE router (which stays F32).
pub fn is_quantizable(name: &str, ne: &[u64]) -> bool {
    ne.len() >= 2
        && name.ends_with("weight")
        && !name.contains("_norm.weight")
        && !name.contains("ffn_gate_inp.weight")
        && !name.contains(".position_embd")
        && !name.contains(".patch_embd")
        && !name.contains(".patch_merger")
}

/// Picks each tensor's type for one file, in file order (positions are counted as the
/// tensors go by, as llama.cpp does).
pub struct TypePlanner<'a> {
    preset: &'a Preset,
    totals: Vec<usize>,
    seen: Vec<usize>,
    blocks: usize,
    has_importance: bool,
}

impl<'a> TypePlanner<'a> {
    /// `names` lists every tensor of the file with its shape, in file order.
    pub fn new<'n>(
        preset: &'a Preset,
        tensors: impl Iterator<Item = (&'n str, &'n [u64])>,
        has_importance: bool,
    ) -> Self {
        let mut totals = vec![0; preset.rules.len()];
        let mut blocks = 0;
        for (name, ne) in tensors {
            blocks = blocks.max(block_number(name).map_or(0, |b| b + 1));
            if is_quantizable(name, ne) {
                for (i, rule) in preset.rules.iter().enumerate() {
                    totals[i] += usize::from(rule.matches(name));
                }
            }
        }
        Self {
            preset,
            seen: vec![0; totals.len()],
            totals,
            blocks,
            has_importance,
        }
    }

    /// The type of the next tensor; call once per tensor, in file order.
    pub fn choose(&mut self, name: &str, ne: &[u64]) -> GgmlType {
        if !is_quantizable(name, ne) {
            return GgmlType::F32;
        }
        let mut chosen = None;
        for (i, rule) in self.preset.rules.iter().enumerate() {
            if !rule.matches(name) {
                continue;
            }
            let (index, count) = match rule.position {
                Position::Occurrence => (self.seen[i], self.totals[i]),
                Position::Block => (block_number(name).unwrap_or(self.seen[i]), self.blocks),
            };
            self.seen[i] += 1;
            if chosen.is_none()
                && (!rule.with_imatrix || self.has_importance)
                && rule.layers.is_none_or(|l| l.selects(index, count))
            {
                chosen = Some(rule.ty);
            }
        }
        self.fit_rows(chosen.unwrap_or(self.preset.default), ne[0])
    }

    /// llama.cpp's fallbacks for rows that are not whole blocks, then F16 as last resort.
    fn fit_rows(&self, ty: GgmlType, row_len: u64) -> GgmlType {
        if row_len.is_multiple_of(ty.block_elems()) {
            return ty;
        }
        match self.preset.fallback.get(&ty) {
            Some(&next) if row_len.is_multiple_of(next.block_elems()) => next,
            _ => GgmlType::F16,
        }
    }
}

impl LayerSelector {
    fn selects(self, i: usize, n: usize) -> bool {
        match self {
            LayerSelector::MoreBits => i < n / 8 || i >= 7 * n / 8 || (i as i64 - (n / 8) as i64).rem_euclid(3) == 2,
            LayerSelector::FirstEighth => i < n / 8,
            LayerSelector::First(k) => i < k,
        }
    }
}

fn block_number(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_in_preset_parses() {
        for name in Preset::built_in_names() {
            Preset::load(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn malformed_preset_names_the_line() {
        let err = Preset::parse(
            "x",
            "description: d\nfile_type: 1\ndefault: q9_9\n",
            Path::new("x.yaml"),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("line 3"), "{text}");
        assert!(text.contains("q9_9"), "{text}");
    }

    #[test]
    fn more_bits_matches_llama_cpp() {
        // n = 16: first 2, last 2, and (i - 2) % 3 == 2 in between.
        let picked: Vec<usize> = (0..16).filter(|&i| LayerSelector::MoreBits.selects(i, 16)).collect();
        assert_eq!(picked, vec![0, 1, 4, 7, 10, 13, 14, 15]);
    }

    #[test]
    fn q4_k_m_mixture() {
        let preset = Preset::load("q4_k_m").unwrap();
        let tensors: Vec<(String, Vec<u64>)> = (0..8)
            .flat_map(|i| {
                [
                    (format!("blk.{i}.attn_v.weight"), vec![256, 256]),
                    (format!("blk.{i}.ffn_down.weight"), vec![256, 256]),
                ]
            })
            .chain([
                ("output.weight".to_owned(), vec![256, 1000]),
                ("blk.0.attn_norm.weight".to_owned(), vec![256]),
            ])
            .collect();
        let mut planner = TypePlanner::new(&preset, tensors.iter().map(|(n, s)| (n.as_str(), s.as_slice())), false);
        let types: Vec<GgmlType> = tensors.iter().map(|(n, s)| planner.choose(n, s)).collect();
        // n = 8: more bits at 0, 3, 6 and 7.
        assert_eq!(types[0], GgmlType::Q6K);
        assert_eq!(types[2], GgmlType::Q4K);
        assert_eq!(types[6], GgmlType::Q6K);
        assert_eq!(types[16], GgmlType::Q6K, "output");
        assert_eq!(types[17], GgmlType::F32, "norms are not quantized");
    }

    #[test]
    fn rows_that_are_not_whole_blocks_fall_back() {
        let preset = Preset::load("q4_k_m").unwrap();
        let mut planner = TypePlanner::new(&preset, std::iter::empty(), false);
        assert_eq!(planner.choose("blk.0.attn_q.weight", &[128, 128]), GgmlType::Q5_0);
        assert_eq!(planner.choose("blk.0.attn_q.weight", &[48, 128]), GgmlType::F16);
    }
}
