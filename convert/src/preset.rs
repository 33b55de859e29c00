//! Quantization presets: which ggml type each tensor gets. A preset is a YAML file with a
//! default type, ordered rules (first match wins) that pick types by tensor name, layer
//! position and facts about the model (`when:`, e.g. the expert count), and the fallbacks
//! for rows that are not a whole number of blocks. The built-in presets
//! (`quant-presets/*.yaml`) reproduce llama.cpp's own mixtures for the GLM architectures,
//! whatever the checkpoint's shape.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::error::{ConvertError, Result};
use crate::gguf::{MetaValue, Metadata};
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
    ("iq4_xs", include_str!("../../quant-presets/iq4_xs.yaml")),
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
    /// Apply only when an importance matrix is given (`true`) or only when none is
    /// (`false`); always when absent.
    #[serde(default)]
    pub with_imatrix: Option<bool>,
    /// Apply only to models these facts hold for (all of them; always when absent).
    #[serde(default)]
    pub when: Condition,
    #[serde(rename = "type", deserialize_with = "ggml_type")]
    pub ty: GgmlType,
}

/// Facts about the model a rule may require, written `when: {experts: 8}` in YAML. Every
/// condition given must hold. These are the model properties llama.cpp's own mixtures
/// look at besides tensor names: the expert count, the grouped-query ratio and whether
/// the output head shares the token embedding.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// Exactly this many routed experts per MoE layer (0 for dense models).
    pub experts: Option<u32>,
    /// At least this many routed experts.
    pub experts_at_least: Option<u32>,
    /// At least this many query heads per key/value head.
    pub gqa_at_least: Option<u32>,
    /// Whether the file has no `output.weight`, the output head reusing `token_embd.weight`.
    pub tied_embeddings: Option<bool>,
}

/// The model's hyper-parameters that rules' conditions test, read from the GGUF keys
/// llama.cpp reads them from (so a one-pass conversion and a re-quantization agree).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModelFacts {
    /// Routed experts per MoE layer, `<arch>.expert_count`; 0 for dense models.
    pub experts: u32,
    /// Query heads, `<arch>.attention.head_count` (the first layer's when per layer).
    pub head_count: u32,
    /// Key/value heads, `<arch>.attention.head_count_kv`; the query head count when absent.
    pub head_count_kv: u32,
    /// Blocks, NextN layers included, `<arch>.block_count`: the n of `position: block`
    /// (0: one past the highest `blk.N` among the tensors).
    pub blocks: u32,
}

impl ModelFacts {
    /// The facts of architecture `arch` (`glm4moe`) from its hyper-parameter keys; missing
    /// keys read as llama.cpp's defaults (no experts, as many KV heads as query heads).
    pub fn from_metadata(arch: &str, meta: &Metadata) -> Self {
        let get = |key: &str| meta.get(&format!("{arch}.{key}")).and_then(first_u32);
        let head_count = get("attention.head_count").unwrap_or(0);
        Self {
            experts: get("expert_count").unwrap_or(0),
            head_count,
            head_count_kv: get("attention.head_count_kv").unwrap_or(head_count),
            blocks: get("block_count").unwrap_or(0),
        }
    }

    /// Query heads per key/value head, 0 without key/value heads (llama.cpp's `n_gqa`).
    pub fn gqa(&self) -> u32 {
        self.head_count.checked_div(self.head_count_kv).unwrap_or(0)
    }
}

/// An integer key, or the first entry of a per-layer array of them.
fn first_u32(value: &MetaValue) -> Option<u32> {
    let first = match value {
        MetaValue::Array(values) => values.integers()?.first().copied()?,
        scalar => scalar.as_integer()?,
    };
    u32::try_from(first).ok()
}

impl Condition {
    fn holds(&self, facts: &ModelFacts, tied_embeddings: bool) -> bool {
        self.experts.is_none_or(|n| facts.experts == n)
            && self.experts_at_least.is_none_or(|n| facts.experts >= n)
            && self.gqa_at_least.is_none_or(|n| facts.gqa() >= n)
            && self.tied_embeddings.is_none_or(|t| tied_embeddings == t)
    }
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
            return Self::from_yaml(name, text);
        }
        let path = Path::new(name_or_path);
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") || path.exists() {
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
            .filter_map(|(name, text)| Self::from_yaml(name, text).ok())
            .collect()
    }

    /// A preset from YAML text already in memory; `name` becomes its label and stands for
    /// the file in error messages.
    pub fn from_yaml(name: &str, text: &str) -> Result<Self> {
        Self::parse(name, text, Path::new(name))
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
    /// Which rules' `when` conditions hold for this model.
    applies: Vec<bool>,
    totals: Vec<usize>,
    seen: Vec<usize>,
    blocks: usize,
    has_importance: bool,
}

impl<'a> TypePlanner<'a> {
    /// `tensors` lists every tensor of the file with its shape, in file order; `facts`
    /// describe the model for the rules' `when` conditions.
    pub fn new<'n>(
        preset: &'a Preset,
        facts: &ModelFacts,
        tensors: impl Iterator<Item = (&'n str, &'n [u64])>,
        has_importance: bool,
    ) -> Self {
        let mut totals = vec![0; preset.rules.len()];
        let mut blocks = 0;
        // llama.cpp quantizes a token embedding that doubles as the output head like one.
        let mut tied_embeddings = true;
        for (name, ne) in tensors {
            blocks = blocks.max(block_number(name).map_or(0, |b| b + 1));
            tied_embeddings &= name != "output.weight";
            if is_quantizable(name, ne) {
                for (i, rule) in preset.rules.iter().enumerate() {
                    totals[i] += usize::from(rule.matches(name));
                }
            }
        }
        if facts.blocks > 0 {
            blocks = facts.blocks as usize;
        }
        Self {
            preset,
            applies: preset
                .rules
                .iter()
                .map(|r| r.when.holds(facts, tied_embeddings))
                .collect(),
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
            // Positions count every matching tensor, as llama.cpp's counters do even when
            // another rule decides the type.
            self.seen[i] += 1;
            if chosen.is_none()
                && self.applies[i]
                && rule.with_imatrix.is_none_or(|wanted| wanted == self.has_importance)
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
        let mut planner = TypePlanner::new(
            &preset,
            &ModelFacts::default(),
            tensors.iter().map(|(n, s)| (n.as_str(), s.as_slice())),
            false,
        );
        let types: Vec<GgmlType> = tensors.iter().map(|(n, s)| planner.choose(n, s)).collect();
        // n = 8: more bits at 0, 3, 6 and 7.
        assert_eq!(types[0], GgmlType::Q6K);
        assert_eq!(types[2], GgmlType::Q4K);
        assert_eq!(types[6], GgmlType::Q6K);
        assert_eq!(types[16], GgmlType::Q6K, "output");
        assert_eq!(types[17], GgmlType::F32, "norms are not quantized");
    }

    const WITH_CONDITIONS: &str = "description: d
file_type: 15
default: q4_k
rules:
  - contains: [attn_v.weight]
    when: {experts: 8}
    type: q8_0
  - names: [token_embd.weight]
    when:
      tied_embeddings: true
    type: q6_k
  - contains: [attn_k.weight]
    when: {experts_at_least: 4, gqa_at_least: 2}
    type: q5_k
";

    #[test]
    fn conditions_parse() {
        let preset = Preset::parse("x", WITH_CONDITIONS, Path::new("x.yaml")).unwrap();
        let when: Vec<Condition> = preset.rules.iter().map(|r| r.when).collect();
        assert_eq!(
            when,
            [
                Condition {
                    experts: Some(8),
                    ..Condition::default()
                },
                Condition {
                    tied_embeddings: Some(true),
                    ..Condition::default()
                },
                Condition {
                    experts_at_least: Some(4),
                    gqa_at_least: Some(2),
                    ..Condition::default()
                },
            ]
        );
        let built_in = Preset::load("q4_k_m").unwrap();
        assert_eq!(
            built_in.rules[0].when,
            Condition::default(),
            "no `when` is no condition"
        );
    }

    #[test]
    fn malformed_condition_names_the_line() {
        let unknown = WITH_CONDITIONS.replace("{experts: 8}", "{expert: 8}");
        let text = Preset::parse("x", &unknown, Path::new("x.yaml"))
            .unwrap_err()
            .to_string();
        assert!(text.contains("line 6"), "{text}");
        assert!(text.contains("expert") && text.contains("experts_at_least"), "{text}");

        let not_a_number = WITH_CONDITIONS.replace("experts_at_least: 4", "experts_at_least: four");
        let text = Preset::parse("x", &not_a_number, Path::new("x.yaml"))
            .unwrap_err()
            .to_string();
        assert!(text.contains("line 13"), "{text}");
        assert!(text.contains("four"), "{text}");
    }

    #[test]
    fn conditions_follow_the_model() {
        let preset = Preset::parse("x", WITH_CONDITIONS, Path::new("x.yaml")).unwrap();
        let tensors: Vec<(&str, Vec<u64>)> = vec![
            ("token_embd.weight", vec![256, 1000]),
            ("blk.0.attn_k.weight", vec![256, 128]),
            ("blk.0.attn_v.weight", vec![256, 128]),
        ];
        let plan = |facts: ModelFacts, with_output: bool| -> Vec<GgmlType> {
            let mut all = tensors.clone();
            if with_output {
                all.push(("output.weight", vec![256, 1000]));
            }
            let mut planner = TypePlanner::new(&preset, &facts, all.iter().map(|(n, s)| (*n, s.as_slice())), false);
            all.iter().map(|(n, s)| planner.choose(n, s)).collect()
        };
        let dense = ModelFacts {
            experts: 0,
            head_count: 4,
            head_count_kv: 4,
            blocks: 1,
        };
        assert_eq!(plan(dense, true)[..3], [GgmlType::Q4K, GgmlType::Q4K, GgmlType::Q4K]);
        assert_eq!(plan(dense, false)[0], GgmlType::Q6K, "tied embeddings");
        let moe = ModelFacts {
            experts: 8,
            head_count: 4,
            head_count_kv: 2,
            blocks: 1,
        };
        assert_eq!(plan(moe, true)[..3], [GgmlType::Q4K, GgmlType::Q5K, GgmlType::Q8_0]);
        let wide = ModelFacts { experts: 16, ..moe };
        assert_eq!(plan(wide, true)[..3], [GgmlType::Q4K, GgmlType::Q5K, GgmlType::Q4K]);
        let mha = ModelFacts {
            head_count_kv: 4,
            ..wide
        };
        assert_eq!(plan(mha, true)[1], GgmlType::Q4K, "gqa 1 < 2");
    }

    #[test]
    fn facts_come_from_the_architecture_keys() {
        let mut meta = Metadata::default();
        meta.set("glm4moe.expert_count", 8u32);
        meta.set("glm4moe.attention.head_count", 96u32);
        meta.set("glm4moe.attention.head_count_kv", 8u32);
        meta.set("glm4moe.block_count", 93u32);
        meta.set("llama.expert_count", 4u32);
        let facts = ModelFacts::from_metadata("glm4moe", &meta);
        assert_eq!(
            facts,
            ModelFacts {
                experts: 8,
                head_count: 96,
                head_count_kv: 8,
                blocks: 93,
            }
        );
        assert_eq!(facts.gqa(), 12);
        let mut dense = Metadata::default();
        dense.set("glm4.attention.head_count", MetaValue::from(vec![32, 32]));
        let facts = ModelFacts::from_metadata("glm4", &dense);
        assert_eq!((facts.experts, facts.head_count, facts.head_count_kv), (0, 32, 32));
        assert_eq!(ModelFacts::default().gqa(), 0);
    }

    #[test]
    fn block_positions_count_the_declared_blocks() {
        // llama.cpp's n for ffn_down is the block count, even where the file's tensors
        // stop earlier.
        let preset = Preset::load("q4_k_m").unwrap();
        let tensors: Vec<(String, Vec<u64>)> = (0..8)
            .map(|i| (format!("blk.{i}.ffn_down.weight"), vec![256, 256]))
            .collect();
        let picked = |facts: ModelFacts| -> Vec<usize> {
            let mut planner = TypePlanner::new(
                &preset,
                &facts,
                tensors.iter().map(|(n, s)| (n.as_str(), s.as_slice())),
                false,
            );
            let types: Vec<GgmlType> = tensors.iter().map(|(n, s)| planner.choose(n, s)).collect();
            (0..8).filter(|&i| types[i] == GgmlType::Q6K).collect()
        };
        // n = 8 from the names: 0, 3, 6, 7; n = 16 declared: 0, 1, 4, 7.
        assert_eq!(picked(ModelFacts::default()), [0, 3, 6, 7]);
        let declared = ModelFacts {
            blocks: 16,
            ..ModelFacts::default()
        };
        assert_eq!(picked(declared), [0, 1, 4, 7]);
    }

    #[test]
    fn rows_that_are_not_whole_blocks_fall_back() {
        let preset = Preset::load("q4_k_m").unwrap();
        let mut planner = TypePlanner::new(&preset, &ModelFacts::default(), std::iter::empty(), false);
        assert_eq!(planner.choose("blk.0.attn_q.weight", &[128, 128]), GgmlType::Q5_0);
        assert_eq!(planner.choose("blk.0.attn_q.weight", &[48, 128]), GgmlType::F16);
    }
}
