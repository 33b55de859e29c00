//! Numerical parity with Hugging Face transformers (float32 references computed by
//! `tests/fixtures/generate.py`): logits, greedy continuations and tokenization of the
//! GGUF files our converter writes, evaluated by llama.cpp through our engine.

mod common;

use common::*;
use glm::engine::{CacheType, ContextOptions, Engine, FlashAttention, LoadOptions};
use glm_convert::OutType;

/// F32 logits may differ from transformers' by this fraction of the largest |logit|.
const F32_RELATIVE_TOLERANCE: f32 = 1e-3;
/// Q8_0 quality floors. Measured on the fixtures (F32 attention): top-1 agreement 1.0 on
/// both, mean KL 0.0099 (glm-tiny) and 0.0119 (glm4-tiny). The floors leave room for one
/// flipped position and under 2x the measured divergence.
const Q8_0_MIN_TOP1_AGREEMENT: f64 = 0.9;
const Q8_0_MAX_MEAN_KL: f64 = 0.02;

/// Full-precision attention: the differences left are those of the weight types.
fn context() -> ContextOptions {
    ContextOptions {
        ctx_size: 256,
        threads: 2,
        cache_type: CacheType::F32,
        flash_attention: FlashAttention::Off,
    }
}

fn engine(model: &str, out_type: OutType) -> Engine {
    let path = converted(model, out_type);
    Engine::load(&path, &LoadOptions::default()).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()))
}

struct LogitsCase {
    name: String,
    tokens: Vec<i32>,
    rows: Vec<Vec<f32>>,
    all_positions: bool,
}

fn logits_cases(model: &str) -> Vec<LogitsCase> {
    let reference = reference(model);
    reference["logits"]
        .as_array()
        .expect("logits cases")
        .iter()
        .map(|case| LogitsCase {
            name: case["name"].as_str().unwrap_or("?").to_owned(),
            tokens: ids(&case["tokens"]),
            rows: case["logits"].as_array().expect("rows").iter().map(floats).collect(),
            all_positions: case["all_positions"].as_bool().unwrap_or(false),
        })
        .collect()
}

fn check_f32_logits(model: &str) {
    let engine = engine(model, OutType::F32);
    let cases = logits_cases(model);
    assert!(!cases.is_empty(), "{model}: no reference logits");
    for LogitsCase {
        name,
        tokens,
        rows: expected,
        all_positions,
    } in cases
    {
        let got = engine.logits(&tokens, all_positions, &context()).expect("logits");
        assert_eq!(got.len(), expected.len(), "{model}/{name}: row count");
        for (position, (g, e)) in got.iter().zip(&expected).enumerate() {
            assert_eq!(g.len(), e.len(), "{model}/{name}: vocabulary size");
            let scale = e.iter().fold(0f32, |m, v| m.max(v.abs()));
            let diff = g.iter().zip(e).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                diff <= F32_RELATIVE_TOLERANCE * scale,
                "{model}/{name} position {position}: max |diff| {diff} exceeds {F32_RELATIVE_TOLERANCE} x {scale}"
            );
            assert_eq!(
                argmax(g),
                argmax(e),
                "{model}/{name} position {position}: argmax differs"
            );
        }
    }
}

fn check_greedy(model: &str, out_type: OutType) {
    let engine = engine(model, out_type);
    let reference = reference(model);
    let cases = reference["greedy"].as_array().expect("greedy cases");
    assert!(!cases.is_empty(), "{model}: no greedy references");
    for case in cases {
        let prompt = ids(&case["prompt_tokens"]);
        let expected = ids(&case["generated"]);
        let got = engine
            .greedy_tokens(&prompt, expected.len(), &context())
            .expect("generation");
        assert_eq!(
            got,
            expected,
            "{model} {} greedy continuation of {:?}",
            out_type.name(),
            case["name"]
        );
    }
}

fn check_q8_0_quality(model: &str) {
    let engine = engine(model, OutType::Q8_0);
    let (mut agree, mut total, mut kl_sum) = (0usize, 0usize, 0f64);
    for case in logits_cases(model) {
        let got = engine
            .logits(&case.tokens, case.all_positions, &context())
            .expect("logits");
        let expected = &case.rows;
        for (g, e) in got.iter().zip(expected) {
            agree += usize::from(argmax(g) == argmax(e));
            kl_sum += kl_divergence(e, g);
            total += 1;
        }
    }
    let agreement = agree as f64 / total as f64;
    let mean_kl = kl_sum / total as f64;
    eprintln!("{model} Q8_0: top-1 agreement {agreement:.4} over {total} positions, mean KL {mean_kl:.6}");
    assert!(
        agreement >= Q8_0_MIN_TOP1_AGREEMENT,
        "{model} Q8_0 top-1 agreement {agreement}"
    );
    assert!(mean_kl <= Q8_0_MAX_MEAN_KL, "{model} Q8_0 mean KL {mean_kl}");
}

#[test]
fn glm_f32_logits_match_transformers() {
    check_f32_logits("glm-tiny");
}

#[test]
fn glm4_f32_logits_match_transformers() {
    check_f32_logits("glm4-tiny");
}

#[test]
fn greedy_continuations_match_for_float_types() {
    for model in MODELS {
        for out_type in [OutType::F32, OutType::F16, OutType::BF16] {
            check_greedy(model, out_type);
        }
    }
}

#[test]
fn q8_0_stays_close_to_transformers() {
    for model in MODELS {
        check_q8_0_quality(model);
    }
}

#[test]
fn tokenization_matches_transformers() {
    let cases = read_json(&fixtures().join("tokenization.json"));
    let cases = cases.as_array().expect("tokenization cases");
    assert!(cases.len() >= 40, "expected 40+ tokenization strings");
    for model in MODELS {
        let path = converted(model, OutType::Q8_0);
        let engine = Engine::load(
            &path,
            &LoadOptions {
                vocab_only: true,
                ..Default::default()
            },
        )
        .expect("vocab");
        for case in cases {
            let text = case["text"].as_str().expect("text");
            assert_eq!(
                engine.tokenize(text),
                ids(&case["ids"]),
                "{model}: tokenization of {text:?}"
            );
        }
    }
}
