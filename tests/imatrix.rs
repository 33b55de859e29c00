//! `glm imatrix` against llama-imatrix: the committed references in
//! `tests/fixtures/imatrix` were written by llama-imatrix, built from the llama.cpp source
//! glm links, on glm's F32 conversions of the fixtures (`make-reference.sh` there). The
//! sums, counts, metadata and perplexity must agree; and a matrix glm computes must make
//! the quantized model closer to F32 than no matrix does.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use glm_convert::gguf::{self, MetaValue};

const CHUNK: &str = "128";
const CHUNKS: &str = "8";

fn imatrix_fixtures() -> PathBuf {
    fixtures().join("imatrix")
}

fn glm(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_glm"))
        .args(args)
        .output()
        .expect("run glm")
}

fn succeeded(out: Output) -> Output {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out
}

/// Every tensor of an imatrix file as f32 values, by name.
fn tensors(path: &Path) -> BTreeMap<String, (Vec<u64>, Vec<f32>)> {
    let file = gguf::read_file(path).expect("read imatrix");
    file.header
        .tensors
        .iter()
        .map(|(t, offset)| {
            let start = *offset as usize;
            let bytes = &file.bytes()[start..start + t.n_bytes() as usize];
            let values = bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (t.name.clone(), (t.ne.clone(), values))
        })
        .collect()
}

/// `glm imatrix` on a fixture's F32 conversion, as make-reference.sh runs llama-imatrix;
/// returns the file and what glm printed.
fn compute(model: &str, dir: &Path) -> (PathBuf, String) {
    let output = dir.join(format!("{model}.imatrix.gguf"));
    let out = succeeded(glm(&[
        &"imatrix",
        &converted(model, "f32"),
        &"-f",
        &imatrix_fixtures().join("calibration.txt"),
        &"-c",
        &CHUNK,
        &"--chunks",
        &CHUNKS,
        &"-t",
        &"2",
        &"-o",
        &output,
    ]));
    (output, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn matrices_equal_llama_imatrix() {
    let perplexities = read_json(&imatrix_fixtures().join("perplexity.json"));
    let dir = tempfile::tempdir().expect("temp dir");
    for model in ["glm4-tiny", "glm4moe-tiny", "glm47flash-tiny"] {
        let (ours_path, log) = compute(model, dir.path());
        let theirs_path = imatrix_fixtures().join(format!("{model}.imatrix.gguf"));
        let (ours, theirs) = (tensors(&ours_path), tensors(&theirs_path));
        assert_eq!(
            ours.keys().collect::<Vec<_>>(),
            theirs.keys().collect::<Vec<_>>(),
            "{model}: tensor names"
        );
        if model != "glm4-tiny" {
            assert!(ours.keys().any(|k| k.contains("_exps.")), "{model}: no expert sums");
        }
        for (name, (shape, values)) in &ours {
            let (their_shape, their_values) = &theirs[name];
            assert_eq!(shape, their_shape, "{model}: shape of {name}");
            for (i, (a, b)) in values.iter().zip(their_values).enumerate() {
                let close = if name.ends_with(".counts") {
                    a == b
                } else {
                    (a - b).abs() <= 1e-5 * b.abs().max(1e-6)
                };
                assert!(close, "{model}: {name}[{i}] is {a}, llama-imatrix {b}");
            }
        }
        let meta = |path: &Path, key: &str| gguf::read_file(path).expect("read").header.get(key).cloned();
        for key in ["general.type", "imatrix.chunk_count", "imatrix.chunk_size"] {
            assert_eq!(meta(&ours_path, key), meta(&theirs_path, key), "{model}: {key}");
        }
        assert_eq!(meta(&ours_path, "imatrix.chunk_count"), Some(MetaValue::U32(8)));

        let printed: f64 = log
            .split("perplexity ")
            .nth(1)
            .and_then(|rest| rest.trim_end().trim_end_matches(')').parse().ok())
            .unwrap_or_else(|| panic!("{model}: no perplexity in {log:?}"));
        let expected = perplexities[model].as_f64().expect("perplexity");
        assert!(
            (printed - expected).abs() <= 1e-6 * expected,
            "{model}: perplexity {printed}, llama-imatrix {expected}"
        );
    }
}

/// Bad input is one line naming the problem, and nothing is written.
#[test]
fn bad_input_is_refused_in_one_line() {
    let model = converted("glm4-tiny", "f32");
    let dir = tempfile::tempdir().expect("temp dir");
    let short = dir.path().join("short.txt");
    std::fs::write(&short, "Only a few words.").expect("write");
    let existing = dir.path().join("existing.gguf");
    std::fs::write(&existing, "mine").expect("write");
    let output = dir.path().join("out.gguf");
    let calibration = imatrix_fixtures().join("calibration.txt");
    let folder = dir.path().to_path_buf();
    let cases: Vec<(&str, Vec<&dyn AsRef<std::ffi::OsStr>>, &str)> = vec![
        (
            "a short text",
            vec![&"-f", &short, &"-o", &output],
            "fewer than one chunk",
        ),
        (
            "a folder as text",
            vec![&"-f", &folder, &"-o", &output],
            "not a regular file",
        ),
        (
            "no such text",
            vec![&"-f", &"/nonexistent.txt", &"-o", &output],
            "/nonexistent.txt",
        ),
        (
            "a chunk past the training context",
            vec![&"-f", &calibration, &"-c", &"1000000", &"-o", &output],
            "training context",
        ),
        (
            "a chunk of one token",
            vec![&"-f", &calibration, &"-c", &"1", &"-o", &output],
            "at least 2 tokens",
        ),
        (
            "the model as output",
            vec![&"-f", &calibration, &"-o", &model],
            "is an input",
        ),
        (
            "the text as output",
            vec![&"-f", &calibration, &"-o", &calibration],
            "is an input",
        ),
        (
            "an existing output",
            vec![&"-f", &calibration, &"-o", &existing],
            "--force",
        ),
        (
            "no chunks",
            vec![&"-f", &calibration, &"--chunks", &"0", &"-o", &output],
            "--chunks",
        ),
    ];
    for (what, extra, expected) in cases {
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"imatrix", &model, &"-t", &"2"];
        args.extend(extra);
        let out = glm(&args);
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: succeeded");
        assert!(log.contains(expected), "{what}: {log}");
        assert!(
            log.lines().filter(|l| !l.trim().is_empty()).count() <= 3,
            "{what}: {log}"
        );
        assert!(!output.exists(), "{what}: wrote {}", output.display());
    }
    assert_eq!(std::fs::read(&existing).expect("read"), b"mine");
}
