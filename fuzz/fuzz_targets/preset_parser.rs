//! Quantization presets from arbitrary YAML; an accepted preset then plans the types of
//! a small MoE-shaped tensor list, which runs its layer selectors and fallbacks.
#![no_main]

use glm_convert::preset::{ModelFacts, TypePlanner};
use glm_convert::Preset;
use libfuzzer_sys::fuzz_target;

const TENSORS: &[(&str, &[u64])] = &[
    ("token_embd.weight", &[64, 100]),
    ("blk.0.attn_q.weight", &[64, 64]),
    ("blk.0.attn_v.weight", &[64, 16]),
    ("blk.0.ffn_down.weight", &[96, 64]),
    ("blk.1.attn_v.weight", &[64, 16]),
    ("blk.1.ffn_down_exps.weight", &[40, 64, 4]),
    ("blk.1.ffn_gate_inp.weight", &[64, 4]),
    ("blk.2.attn_output.weight", &[64, 64]),
    ("blk.2.ffn_down_shexp.weight", &[256, 64]),
    ("output_norm.weight", &[64]),
    ("output.weight", &[64, 100]),
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(preset) = Preset::from_yaml("fuzz", text) else {
        return;
    };
    let _ = preset.label();
    let facts = ModelFacts {
        experts: 4,
        head_count: 8,
        head_count_kv: 2,
        blocks: 3,
    };
    for has_importance in [false, true] {
        let mut planner = TypePlanner::new(&preset, &facts, TENSORS.iter().copied(), has_importance);
        for (name, ne) in TENSORS {
            let _ = planner.choose(name, ne);
        }
    }
});
