//! How a model runs: placement flags (`-ngl`, `--cpu-moe`, `--n-cpu-moe`,
//! `--override-tensor`), the memory plan of `--dry-run`, `glm bench`, `glm devices`,
//! and sampling defaults taken from the model. On the CPU build every placement must
//! give the same logits as the default one.

mod common;

use std::process::Output;

use assert_cmd::Command;
use common::*;
use serde_json::Value;

fn glm() -> Command {
    let mut cmd = Command::cargo_bin("glm").expect("glm binary");
    cmd.env("GLM_CACHE_DIR", std::env::temp_dir().join("glm-test-cache"));
    cmd
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn succeed(output: Output) -> (String, String) {
    assert!(output.status.success(), "failed: {}", text(&output.stderr));
    (text(&output.stdout), text(&output.stderr))
}

/// The last-position logits of a fixed prompt, with `flags`.
fn logits_with(model: &std::path::Path, flags: &[&str]) -> Vec<f32> {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("logits.json");
    succeed(
        glm()
            .arg("logits")
            .arg(model)
            .args([
                "--tokens",
                "1,2,3,4,5",
                "-t",
                "2",
                "--cache-type",
                "f32",
                "--flash-attn",
                "off",
                "-o",
            ])
            .arg(&out)
            .args(flags)
            .output()
            .expect("run"),
    );
    floats(&read_json(&out)["logits"][0])
}

#[test]
fn every_placement_gives_the_same_logits_on_the_cpu() {
    let model = converted("glm4moe-tiny", "f32");
    let baseline = logits_with(&model, &[]);
    assert!(baseline.iter().all(|v| v.is_finite()) && !baseline.is_empty());
    let placements: [&[&str]; 7] = [
        &["-ngl", "auto"],
        &["-ngl", "all"],
        &["--gpu-layers", "0"],
        &["--cpu-moe"],
        &["--n-cpu-moe", "2"],
        &["-ot", "exps=CPU"],
        &["--override-tensor", r"blk\.1\.ffn_.*=CPU", "--no-mmap"],
    ];
    for flags in placements {
        assert_eq!(logits_with(&model, flags), baseline, "{flags:?}");
    }
}

#[test]
fn dry_run_prints_the_plan_and_loads_nothing() {
    let model = converted("glm4moe-tiny", "q8_0");
    let (stdout, _) = succeed(
        glm()
            .arg("run")
            .arg(&model)
            .args(["-p", "hi", "-c", "256", "--n-cpu-moe", "2", "--dry-run"])
            .output()
            .expect("run"),
    );
    assert!(stdout.contains("context: 256 tokens"), "{stdout}");
    assert!(stdout.contains("GPU layers: 0 of"), "{stdout}");
    assert!(stdout.contains(r"override: blk\.1\.ffn_"), "{stdout}");
    let cpu = stdout.lines().find(|l| l.starts_with("CPU ")).expect("a CPU row");
    let mib: Vec<f64> = cpu
        .split("MiB")
        .filter_map(|part| part.split_whitespace().last()?.parse().ok())
        .collect();
    let [weights, kv, compute, total] = mib[..] else {
        panic!("{cpu}");
    };
    // The weights are the file's tensors; the cache holds 256 positions.
    let file_mib = std::fs::metadata(&model).expect("size").len() as f64 / (1 << 20) as f64;
    assert!(weights > 0.5 * file_mib && weights <= file_mib, "{cpu}");
    assert!(
        kv > 0.0 && compute > 0.0 && (total - weights - kv - compute).abs() < 0.02,
        "{cpu}"
    );
    // A bigger context plans a bigger cache.
    let (bigger, _) = succeed(
        glm()
            .arg("chat")
            .arg(&model)
            .args(["-c", "1024", "--dry-run"])
            .output()
            .expect("run"),
    );
    let kv_of = |plan: &str| -> f64 {
        let row = plan.lines().find(|l| l.starts_with("CPU ")).expect("row");
        row.split("MiB")
            .nth(1)
            .and_then(|p| p.split_whitespace().last()?.parse().ok())
            .expect("kv")
    };
    assert!((kv_of(&bigger) - 4.0 * kv).abs() < 0.05, "{kv} then {bigger}");
}

#[test]
fn the_default_context_is_what_fits_up_to_the_training_context() {
    // glm-tiny was trained for 2048 tokens; memory is plenty, so all of it.
    let model = converted("glm-tiny", "q8_0");
    let (stdout, _) = succeed(
        glm()
            .arg("run")
            .arg(&model)
            .args(["-p", "hi", "--dry-run"])
            .output()
            .expect("run"),
    );
    assert!(stdout.contains("context: 2048 tokens"), "{stdout}");
}

fn bench_records(model: &std::path::Path, format: &str, extra: &[&str]) -> String {
    let (stdout, _) = succeed(
        glm()
            .arg("bench")
            .arg(model)
            .args(["-p", "32", "-n", "8", "-r", "2", "-t", "2", "-o", format])
            .args(extra)
            .output()
            .expect("bench"),
    );
    stdout
}

#[test]
fn bench_measures_prompt_and_generation_in_every_format() {
    let model = converted("glm-tiny", "q8_0");
    let json: Value = serde_json::from_str(&bench_records(&model, "json", &[])).expect("json");
    let records = json.as_array().expect("list");
    assert_eq!(records.len(), 2);
    assert_eq!(
        (records[0]["n_prompt"].as_u64(), records[0]["n_gen"].as_u64()),
        (Some(32), Some(0))
    );
    assert_eq!(
        (records[1]["n_prompt"].as_u64(), records[1]["n_gen"].as_u64()),
        (Some(0), Some(8))
    );
    for record in records {
        let samples = floats(&record["samples_ts"]);
        assert_eq!(samples.len(), 2, "{record}");
        let mean = samples.iter().sum::<f32>() / 2.0;
        assert!((record["avg_ts"].as_f64().expect("avg") as f32 - mean).abs() <= mean * 1e-4);
        assert!(samples.iter().all(|s| *s > 0.0));
        assert_eq!(record["n_threads"], 2);
    }
    let lines = bench_records(&model, "jsonl", &[]);
    assert_eq!(lines.lines().count(), 2);
    for line in lines.lines() {
        serde_json::from_str::<Value>(line).expect("a JSON object per line");
    }
    let csv = bench_records(&model, "csv", &[]);
    assert!(csv.starts_with("model_filename,n_threads,"), "{csv}");
    assert_eq!(csv.lines().count(), 3);
    let table = bench_records(&model, "md", &["-p", "16,24"]);
    assert!(
        table.contains("| pp16 |") && table.contains("| pp24 |") && table.contains("| tg8 |"),
        "{table}"
    );
}

#[test]
fn bench_drafts_with_mtp_on_a_nextn_model() {
    let model = converted("glm4moe-tiny", "q8_0");
    let json: Value = serde_json::from_str(&bench_records(&model, "json", &["--mtp", "-p", "0"])).expect("json");
    assert_eq!(json[0]["mtp"], true);
    assert!(json[0]["avg_ts"].as_f64().expect("avg") > 0.0);
}

#[test]
fn devices_lists_the_cpu() {
    let (stdout, _) = succeed(glm().arg("devices").output().expect("devices"));
    let cpu = stdout.lines().find(|l| l.starts_with("CPU ")).expect("a CPU line");
    let free: u64 = cpu
        .split_whitespace()
        .nth(3)
        .and_then(|n| n.parse().ok())
        .expect("free MiB");
    assert!(free > 0, "{stdout}");
}

#[test]
fn run_reports_drafting_and_keeps_the_output() {
    let model = converted("glm4moe-tiny", "f32");
    let args = [
        "-p",
        "Hello there",
        "--raw",
        "--temp",
        "0",
        "-n",
        "24",
        "--ignore-eos",
        "-t",
        "2",
    ];
    let (plain, plain_err) = succeed(
        glm()
            .arg("run")
            .arg(&model)
            .args(args)
            .arg("--no-mtp")
            .output()
            .expect("run"),
    );
    let (drafted, drafted_err) = succeed(glm().arg("run").arg(&model).args(args).output().expect("run"));
    assert_eq!(plain, drafted);
    assert!(!plain_err.contains("mtp:"), "{plain_err}");
    assert!(
        drafted_err.contains("| mtp: ") && drafted_err.contains("drafted"),
        "{drafted_err}"
    );
}

#[test]
fn sampling_defaults_come_from_the_model_and_say_so() {
    // glm4moe-tiny's generation_config.json: temperature 0.6, top_p 0.95.
    let model = converted("glm4moe-tiny", "q8_0");
    let output = glm()
        .arg("chat")
        .arg(&model)
        .args(["--top-k", "7", "-t", "2"])
        .write_stdin("/set\n")
        .output()
        .expect("chat");
    let (_, stderr) = succeed(output);
    let line = |name: &str| {
        stderr
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name}: {stderr}"))
            .to_owned()
    };
    assert!(
        line("temp ").contains("0.6") && line("temp ").contains("(model default)"),
        "{stderr}"
    );
    assert!(
        line("top-k ").contains('7') && line("top-k ").contains("(set)"),
        "{stderr}"
    );
    assert!(line("min-p ").contains("(glm default)"), "{stderr}");
}

#[test]
fn llama_cpp_cache_and_batch_flags_are_taken() {
    let model = converted("glm-tiny", "q8_0");
    let (stdout, _) = succeed(
        glm()
            .arg("run")
            .arg(&model)
            .args(["-p", "hi", "--raw", "--temp", "0", "-n", "4", "-t", "2", "-tb", "1"])
            .args([
                "-ctk", "q8_0", "-ctv", "q4_0", "-fa", "on", "-b", "64", "-ub", "16", "-c", "128",
            ])
            .output()
            .expect("run"),
    );
    assert!(!stdout.is_empty());
}
