//! Split output: `glm convert` and `glm quantize` write llama.cpp's split format, read a
//! split set by its first part, and merge or re-split one. Every part is compared with an
//! independent splitter (`common::split_gguf`, written from the format's description),
//! and a split model answers with the same logits as the whole file.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use glm_convert::gguf::{self, MetaValue};

fn glm(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_glm"))
        .args(args)
        .output()
        .expect("run glm")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn succeeded(out: Output) -> Output {
    assert!(out.status.success(), "{}", stderr(&out));
    out
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn tensor_count(path: &Path) -> usize {
    gguf::read_file(path).expect("read gguf").header.tensors.len()
}

/// The logits of every position of a fixed token list.
fn logits(model: &Path, out_dir: &Path) -> Vec<serde_json::Value> {
    let out_file = out_dir.join("logits.json");
    succeeded(glm(&[
        &"logits",
        &model,
        &"--tokens",
        &"3,17,42,7,99",
        &"--all",
        &"-t",
        &"2",
        &"-o",
        &out_file,
        &"--force",
    ]));
    read_json(&out_file)["logits"].as_array().expect("rows").clone()
}

/// `glm convert --split-max-tensors` writes what the reference splitter writes, byte for
/// byte; the set answers exactly as the whole file; merging it gives the whole file back.
#[test]
fn a_converted_split_set_round_trips() {
    let model = "glm4moe-tiny";
    let whole = converted(model, "q8_0");
    let n_tensors = tensor_count(&whole);
    let per_part = n_tensors.div_ceil(3);
    let dir = tempfile::tempdir().expect("temp dir");
    let written = dir.path().join("written");
    let reference = dir.path().join("reference");
    std::fs::create_dir_all(&written).expect("mkdir");
    std::fs::create_dir_all(&reference).expect("mkdir");
    let output = written.join("tiny-Q8_0.gguf");
    let out = succeeded(glm(&[
        &"convert",
        &model_dir(model),
        &"--quant",
        &"q8_0",
        &"--split-max-tensors",
        &per_part.to_string(),
        &"-o",
        &output,
    ]));
    assert!(stderr(&out).contains("3 parts"), "{}", stderr(&out));
    let expected = split_gguf(&whole, &reference, "tiny-Q8_0", 3);
    assert_eq!(names_in(&written), names_in(&reference));
    for part in &expected {
        let ours = std::fs::read(written.join(part.file_name().expect("name"))).expect("read part");
        assert!(ours == std::fs::read(part).expect("read"), "{} differs", part.display());
    }
    let first = written.join("tiny-Q8_0-00001-of-00003.gguf");

    assert_eq!(logits(&first, dir.path()), logits(&whole, dir.path()));

    let inspected = succeeded(glm(&[&"inspect", &first]));
    let text = String::from_utf8_lossy(&inspected.stdout);
    assert!(text.contains(&format!("{n_tensors} tensors in 3 parts")), "{text}");

    let merged = dir.path().join("merged.gguf");
    succeeded(glm(&[&"quantize", &first, &merged, &"--quant", &"copy"]));
    assert!(std::fs::read(&merged).expect("read") == std::fs::read(&whole).expect("read"));
}

/// Parts hold at most `--split-max-size` of tensor data (one tensor alone may hold more);
/// quantizing a split BF16 set equals quantizing the whole file, and can re-split.
#[test]
fn quantize_reads_and_writes_split_sets() {
    let whole = converted("glm4-tiny", "bf16");
    let dir = tempfile::tempdir().expect("temp dir");
    let limit = 40_000u64;
    let split_bf16 = dir.path().join("bf16.gguf");
    succeeded(glm(&[
        &"quantize",
        &whole,
        &split_bf16,
        &"--quant",
        &"copy",
        &"--split-max-size",
        &"40K",
    ]));
    let parts: Vec<PathBuf> = gguf::read_split_files(&first_part(dir.path(), "bf16"))
        .expect("read set")
        .into_iter()
        .map(|f| f.path)
        .collect();
    assert!(parts.len() > 2, "{parts:?}");
    for part in &parts {
        let file = gguf::read_file(part).expect("read part");
        let data: u64 = file
            .header
            .tensors
            .iter()
            .map(|(t, _)| t.n_bytes() + gguf::padding(t.n_bytes()))
            .sum();
        assert!(
            data <= limit || file.header.tensors.len() == 1,
            "{}: {data}",
            part.display()
        );
        assert!(matches!(file.header.get("split.count"), Some(MetaValue::U16(n)) if *n as usize == parts.len()));
    }

    // No output lands on a later part of the input, even with --force.
    let second = std::fs::read(&parts[1]).expect("read part");
    let out = glm(&[&"quantize", &parts[0], &parts[1], &"--quant", &"copy", &"--force"]);
    assert!(
        !out.status.success() && stderr(&out).contains("is an input"),
        "{}",
        stderr(&out)
    );
    assert!(std::fs::read(&parts[1]).expect("read part") == second);

    let from_whole = dir.path().join("from-whole.gguf");
    let from_split = dir.path().join("from-split.gguf");
    succeeded(glm(&[&"quantize", &whole, &from_whole, &"--quant", &"q8_0"]));
    succeeded(glm(&[&"quantize", &parts[0], &from_split, &"--quant", &"q8_0"]));
    assert!(std::fs::read(&from_whole).expect("read") == std::fs::read(&from_split).expect("read"));

    let resplit = dir.path().join("q8.gguf");
    succeeded(glm(&[
        &"quantize",
        &parts[0],
        &resplit,
        &"--quant",
        &"q8_0",
        &"--split-max-tensors",
        &"4",
    ]));
    let resplit_first = first_part(dir.path(), "q8");
    let n_parts = gguf::read_split_files(&resplit_first).expect("read set").len();
    assert_eq!(n_parts, tensor_count(&from_whole).div_ceil(4));
    assert_eq!(logits(&resplit_first, dir.path()), logits(&from_whole, dir.path()));
}

/// The first part of the set `<stem>-00001-of-0000N.gguf` in `dir`.
fn first_part(dir: &Path, stem: &str) -> PathBuf {
    let prefix = format!("{stem}-00001-of-");
    let name = names_in(dir)
        .into_iter()
        .find(|n| n.starts_with(&prefix) && n.ends_with(".gguf"))
        .unwrap_or_else(|| panic!("no {prefix}* in {}", dir.display()));
    dir.join(name)
}

/// Bad limits and existing parts are refused in one line, before anything is written.
#[test]
fn split_outputs_are_checked_before_writing() {
    let whole = converted("glm4-tiny", "q8_0");
    let dir = tempfile::tempdir().expect("temp dir");
    let output = dir.path().join("m.gguf");
    for (flag, value) in [
        ("--split-max-size", "0"),
        ("--split-max-size", "12Q"),
        ("--split-max-tensors", "0"),
    ] {
        let out = glm(&[&"quantize", &whole, &output, &"--quant", &"copy", &flag, &value]);
        assert!(!out.status.success());
        assert!(stderr(&out).contains(flag), "{}", stderr(&out));
    }
    let count = tensor_count(&whole).div_ceil(5);
    let taken_name = format!("m-00002-of-{count:05}.gguf");
    let taken = dir.path().join(&taken_name);
    std::fs::write(&taken, "mine").expect("write");
    let out = glm(&[
        &"quantize",
        &whole,
        &output,
        &"--quant",
        &"copy",
        &"--split-max-tensors",
        &"5",
    ]);
    let log = stderr(&out);
    assert!(!out.status.success());
    assert_eq!(log.lines().count(), 1, "{log}");
    assert!(log.contains(&taken_name) && log.contains("--force"), "{log}");
    assert_eq!(names_in(dir.path()), [taken_name]);
    assert_eq!(std::fs::read(&taken).expect("read"), b"mine");

    // A quantized file cannot be re-quantized, but can be copied.
    let out = glm(&[&"quantize", &whole, &output, &"--quant", &"q4_0"]);
    assert!(stderr(&out).contains("--quant copy"), "{}", stderr(&out));
}
