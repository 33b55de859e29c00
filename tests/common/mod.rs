//! Shared helpers for the integration tests: fixture paths, conversions cached per test
//! process, and reference files written by `tests/fixtures/generate.py`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use glm_convert::{ConvertOptions, OutType};
use serde_json::Value;

pub const MODELS: [&str; 2] = ["glm-tiny", "glm4-tiny"];

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn model_dir(model: &str) -> PathBuf {
    fixtures().join("models").join(model)
}

pub fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn reference(model: &str) -> Value {
    read_json(&model_dir(model).join("reference.json"))
}

fn work_dir() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temporary directory"))
}

/// Converts a fixture once per test process and returns the GGUF path.
pub fn converted(model: &str, out_type: OutType) -> PathBuf {
    static DONE: OnceLock<Mutex<HashMap<(String, &'static str), PathBuf>>> = OnceLock::new();
    let done = DONE.get_or_init(Default::default);
    let mut done = done.lock().unwrap_or_else(|e| e.into_inner());
    let key = (model.to_owned(), out_type.name());
    if let Some(path) = done.get(&key) {
        return path.clone();
    }
    let output = work_dir().path().join(format!("{model}-{}.gguf", out_type.name()));
    let options = ConvertOptions {
        out_type,
        name: None,
        plan: Default::default(),
    };
    glm_convert::convert(&model_dir(model), &output, &options, &())
        .unwrap_or_else(|e| panic!("converting {model} to {}: {e}", out_type.name()));
    done.insert(key, output.clone());
    output
}

pub fn ids(value: &Value) -> Vec<i32> {
    value
        .as_array()
        .expect("list of ids")
        .iter()
        .map(|v| v.as_i64().expect("integer id") as i32)
        .collect()
}

pub fn floats(value: &Value) -> Vec<f32> {
    value
        .as_array()
        .expect("list of floats")
        .iter()
        .map(|v| v.as_f64().expect("number") as f32)
        .collect()
}

pub fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |best, (i, &v)| {
                if v > best.1 {
                    (i, v)
                } else {
                    best
                }
            },
        )
        .0
}

fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
    let log_z = max + sum.ln();
    row.iter().map(|&v| v as f64 - log_z).collect()
}

/// KL(reference ‖ candidate) of the softmax distributions of two logit rows.
pub fn kl_divergence(reference: &[f32], candidate: &[f32]) -> f64 {
    let p = log_softmax(reference);
    let q = log_softmax(candidate);
    p.iter().zip(&q).map(|(lp, lq)| lp.exp() * (lp - lq)).sum()
}
