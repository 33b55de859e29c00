//! The `glm` binary end to end: every subcommand, and its errors on bad input.

mod common;

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use common::*;

use serde_json::Value;

fn glm() -> Command {
    let mut cmd = Command::cargo_bin("glm").expect("glm binary");
    cmd.env("GLM_CACHE_DIR", std::env::temp_dir().join("glm-test-cache"));
    cmd
}

/// A writable copy of a fixture, for tests that damage it.
fn fixture_copy(model: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for entry in std::fs::read_dir(model_dir(model)).expect("fixture") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).expect("copy");
    }
    dir
}

fn stderr_of(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The conversion must fail with one line naming `culprit`, and leave nothing behind.
fn assert_clean_failure(input: &Path, culprit: &str) {
    let out_dir = tempfile::tempdir().expect("temp dir");
    let output_file = out_dir.path().join("out.gguf");
    let output = glm()
        .arg("convert")
        .arg(input)
        .arg("-o")
        .arg(&output_file)
        .output()
        .expect("run");
    let stderr = stderr_of(&output);
    assert!(!output.status.success(), "conversion should fail: {stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one-line error expected, got: {stderr}"
    );
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains(culprit), "error should name {culprit}: {stderr}");
    let leftovers: Vec<PathBuf> = std::fs::read_dir(out_dir.path())
        .expect("list")
        .map(|e| e.expect("e").path())
        .collect();
    assert!(leftovers.is_empty(), "files left behind: {leftovers:?}");
}

#[test]
fn convert_writes_default_name_and_inspect_shows_spec_keys() {
    let cwd = tempfile::tempdir().expect("temp dir");
    glm()
        .current_dir(cwd.path())
        .args(["convert", "--type", "q8_0"])
        .arg(model_dir("glm4-tiny"))
        .assert()
        .success();
    let file = cwd.path().join("glm4-tiny-Q8_0.gguf");
    assert!(file.is_file(), "default output name");
    let inspect = glm().arg("inspect").arg(&file).output().expect("inspect");
    assert!(inspect.status.success());
    let text = String::from_utf8_lossy(&inspect.stdout);
    for key in [
        "general.architecture",
        "glm4.context_length",
        "glm4.embedding_length",
        "glm4.block_count",
        "glm4.feed_forward_length",
        "glm4.attention.head_count",
        "glm4.attention.head_count_kv",
        "glm4.attention.layer_norm_rms_epsilon",
        "glm4.rope.dimension_count",
        "glm4.rope.freq_base",
        "tokenizer.ggml.model",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.eot_token_id",
        "tokenizer.chat_template",
        "blk.1.post_ffw_norm.weight",
        "Q8_0",
    ] {
        assert!(text.contains(key), "inspect output lacks {key}:\n{text}");
    }
}

#[test]
fn convert_rejects_missing_config() {
    let dir = fixture_copy("glm-tiny");
    std::fs::remove_file(dir.path().join("config.json")).expect("remove");
    assert_clean_failure(dir.path(), "config.json");
}

#[test]
fn convert_rejects_unsupported_architecture() {
    let dir = fixture_copy("glm-tiny");
    let path = dir.path().join("config.json");
    let mut config = read_json(&path);
    config["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
    std::fs::write(&path, config.to_string()).expect("write");
    assert_clean_failure(dir.path(), "LlamaForCausalLM");
}

#[test]
fn convert_rejects_truncated_safetensors() {
    let dir = fixture_copy("glm-tiny");
    let path = dir.path().join("model.safetensors");
    let len = std::fs::metadata(&path).expect("meta").len();
    let file = std::fs::OpenOptions::new().write(true).open(&path).expect("open");
    file.set_len(len / 2).expect("truncate");
    assert_clean_failure(dir.path(), "model.safetensors");
}

#[test]
fn convert_rejects_corrupt_safetensors_header() {
    let dir = fixture_copy("glm4-tiny");
    let index = read_json(&dir.path().join("model.safetensors.index.json"));
    let shard = index["weight_map"]
        .as_object()
        .expect("map")
        .values()
        .next()
        .expect("a shard")
        .as_str()
        .expect("name")
        .to_owned();
    let path = dir.path().join(&shard);
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[8..24].copy_from_slice(b"not json at all!");
    std::fs::write(&path, bytes).expect("write");
    assert_clean_failure(dir.path(), &shard);
}

#[test]
fn convert_rejects_unknown_type() {
    let out = glm()
        .args(["convert", "--type", "q3_x"])
        .arg(model_dir("glm-tiny"))
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains("q3_x"));
}

#[test]
fn tokenize_prints_hf_ids() {
    let cases = read_json(&fixtures().join("tokenization.json"));
    let case = cases
        .as_array()
        .expect("cases")
        .iter()
        .find(|c| c["text"].as_str().is_some_and(|t| t.len() > 10))
        .expect("a case");
    let model = converted("glm-tiny", "f16");
    let out = glm()
        .arg("tokenize")
        .arg(&model)
        .arg(case["text"].as_str().expect("text"))
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", stderr_of(&out));
    let printed: Value = serde_json::from_slice(&out.stdout).expect("JSON list");
    assert_eq!(printed, case["ids"]);
}

/// A text that starts with `-` is text, not a flag; with no text, stdin is read.
#[test]
fn tokenize_takes_dashed_text_and_stdin() {
    let model = converted("glm-tiny", "f16");
    let tokens = |cmd: &mut Command| -> Value {
        let out = cmd.output().expect("run");
        assert!(out.status.success(), "{}", stderr_of(&out));
        serde_json::from_slice(&out.stdout).expect("JSON list")
    };
    let dashed = tokens(glm().arg("tokenize").arg(&model).arg("-5 degrees"));
    let piped = tokens(glm().arg("tokenize").arg(&model).write_stdin("-5 degrees"));
    let joined = tokens(glm().arg("tokenize").arg(&model).arg("x-5 degrees"));
    assert!(!dashed.as_array().expect("list").is_empty());
    assert_eq!(dashed, piped);
    assert_ne!(dashed, joined);
}

/// `--help` states each default once.
#[test]
fn help_states_each_default_once() {
    for command in ["run", "chat", "logits", "convert", "quantize"] {
        let out = glm().args([command, "--help"]).output().expect("help");
        let text = String::from_utf8_lossy(&out.stdout);
        // One block per option: it starts at the line that names the flag.
        let mut blocks: Vec<String> = Vec::new();
        for line in text.lines() {
            if line.starts_with("  -") || line.starts_with("      --") || blocks.is_empty() {
                blocks.push(String::new());
            }
            if let Some(block) = blocks.last_mut() {
                block.push_str(line);
                block.push('\n');
            }
        }
        for block in blocks {
            assert!(block.matches("[default:").count() <= 1, "{command}: {block}");
        }
    }
}

#[test]
fn logits_writes_last_and_all_positions() {
    let model = converted("glm4-tiny", "f32");
    let reference = reference("glm4-tiny");
    let case = &reference["logits"][0];
    let tokens: Vec<String> = ids(&case["tokens"]).iter().map(i32::to_string).collect();
    let dir = tempfile::tempdir().expect("temp dir");
    for all in [false, true] {
        let out_file = dir.path().join(format!("logits-{all}.json"));
        let mut cmd = glm();
        cmd.arg("logits")
            .arg(&model)
            .arg("--tokens")
            .arg(tokens.join(","))
            .arg("-o")
            .arg(&out_file)
            .args(["-t", "2"]);
        if all {
            cmd.arg("--all");
        }
        cmd.assert().success();
        let written = read_json(&out_file);
        assert_eq!(written["tokens"], case["tokens"]);
        let rows = written["logits"].as_array().expect("rows");
        assert_eq!(rows.len(), if all { tokens.len() } else { 1 });
        let last = floats(rows.last().expect("row"));
        let expected = floats(case["logits"].as_array().expect("rows").last().expect("row"));
        assert_eq!(argmax(&last), argmax(&expected));
    }
}

#[test]
fn logits_with_prompt_applies_the_chat_template() {
    let model = converted("glm-tiny", "f32");
    let dir = tempfile::tempdir().expect("temp dir");
    let out_file = dir.path().join("l.json");
    glm()
        .arg("logits")
        .arg(&model)
        .args(["--prompt", "hi", "-o"])
        .arg(&out_file)
        .assert()
        .success();
    let tokens = ids(&read_json(&out_file)["tokens"]);
    let raw_file = dir.path().join("r.json");
    glm()
        .arg("logits")
        .arg(&model)
        .args(["--prompt", "hi", "--raw", "-o"])
        .arg(&raw_file)
        .assert()
        .success();
    let raw = ids(&read_json(&raw_file)["tokens"]);
    assert!(
        tokens.len() > raw.len() + 2,
        "template adds role tokens: {tokens:?} vs {raw:?}"
    );
}

#[test]
fn logits_rejects_out_of_range_tokens() {
    let model = converted("glm-tiny", "f32");
    let dir = tempfile::tempdir().expect("temp dir");
    let out_file = dir.path().join("x.json");
    let out = glm()
        .arg("logits")
        .arg(&model)
        .args(["--tokens", "1,99999999", "-o"])
        .arg(&out_file)
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains("99999999"));
    assert!(!out_file.exists());
}

#[test]
fn run_streams_text_and_reports_speed() {
    let model = converted("glm-tiny", "q8_0");
    let out = glm()
        .arg("run")
        .arg(&model)
        .args(["-p", "Hello there", "--temp", "0", "-n", "12", "-t", "2"])
        .output()
        .expect("run");
    let stderr = stderr_of(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).trim().is_empty(),
        "no text generated"
    );
    assert!(stderr.contains("tok/s"), "{stderr}");
}

/// A failed write of the answer is an error that says what failed; a closed pipe
/// (`glm run … | head`) is not.
#[test]
fn run_reports_a_failed_write_but_not_a_closed_pipe() {
    let model = converted("glm-tiny", "q8_0");
    // std's Command: assert_cmd's cannot hand the child a file or a pipe as stdout.
    let run = || {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_glm"));
        command.arg("run").arg(&model).args([
            "-p",
            "Hello there",
            "--temp",
            "0",
            "-n",
            "64",
            "--ignore-eos",
            "-t",
            "2",
        ]);
        command
    };
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let out = run().stdout(full).output().expect("run");
    let stderr = stderr_of(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("writing the answer to standard output"), "{stderr}");

    let mut reader = run()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn run");
    drop(reader.stdout.take());
    let out = reader.wait_with_output().expect("run");
    assert!(out.status.success(), "{}", stderr_of(&out));
}

/// GLM-Z1's template opens `<think>` in the prompt, so everything the model writes before
/// `</think>` is reasoning: it goes to stderr, and `--hide-reasoning` drops it.
#[test]
fn run_separates_reasoning_when_the_template_opens_think() {
    let model = converted("glm4-tiny", "q8_0");
    let run = |extra: &[&str]| {
        glm()
            .arg("run")
            .arg(&model)
            .args(["-p", "Hello there", "--temp", "0", "-n", "12", "-t", "2"])
            .args(extra)
            .output()
            .expect("run")
    };
    let shown = run(&[]);
    assert!(shown.status.success(), "{}", stderr_of(&shown));
    assert!(shown.stdout.is_empty(), "reasoning leaked to stdout");
    let reasoning = stderr_of(&shown);
    let reasoning = reasoning.lines().filter(|l| !l.contains("tok/s")).collect::<String>();
    assert!(!reasoning.trim().is_empty(), "reasoning not shown on stderr");
    let hidden = run(&["--hide-reasoning"]);
    assert!(hidden.stdout.is_empty());
    assert_eq!(
        stderr_of(&hidden).lines().count(),
        1,
        "only the speed line: {}",
        stderr_of(&hidden)
    );
}

#[test]
fn run_reads_prompt_from_stdin_and_is_deterministic_when_greedy() {
    let model = converted("glm-tiny", "f16");
    let run = |input: &str| {
        glm()
            .arg("run")
            .arg(&model)
            .args(["-p", "-", "--temp", "0", "-n", "10", "--raw"])
            .write_stdin(input)
            .output()
            .expect("run")
    };
    let a = run("The weather today");
    let b = run("The weather today");
    assert!(a.status.success(), "{}", stderr_of(&a));
    assert_eq!(a.stdout, b.stdout);
}

#[test]
fn run_accepts_a_checkpoint_folder() {
    let out = glm()
        .arg("run")
        .arg(model_dir("glm-tiny"))
        .args(["-p", "Hi", "--temp", "0", "-n", "4"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", stderr_of(&out));
}

#[test]
fn run_and_inspect_reject_non_gguf_files() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bogus = dir.path().join("bogus.gguf");
    std::fs::write(&bogus, b"hello world").expect("write");
    for sub in ["run", "inspect"] {
        let mut cmd = glm();
        cmd.arg(sub).arg(&bogus);
        if sub == "run" {
            cmd.args(["-p", "x"]);
        }
        let out = cmd.output().expect("run");
        assert!(!out.status.success());
        assert!(
            stderr_of(&out).contains("not a GGUF file"),
            "{sub}: {}",
            stderr_of(&out)
        );
    }
    let out = glm()
        .args(["run", "/nonexistent/model.gguf", "-p", "x"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains("/nonexistent/model.gguf"));
}

#[test]
fn q4_k_m_conversion_of_a_sharded_checkpoint_runs_and_shows_mixed_types() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("q4km.gguf");
    glm()
        .arg("convert")
        .arg(model_dir("glm4-tiny"))
        .args(["--quant", "q4_k_m", "-o"])
        .arg(&file)
        .assert()
        .success();
    let inspect = glm().arg("inspect").arg(&file).output().expect("inspect");
    let text = String::from_utf8_lossy(&inspect.stdout);
    // 128-wide rows take llama.cpp's fallbacks: Q4_K -> Q5_0, Q6_K -> Q8_0; norms stay F32.
    for ty in ["Q5_0", "Q8_0", "F32"] {
        assert!(text.contains(&format!(" {ty} ")), "inspect lacks {ty}:\n{text}");
    }
    assert!(
        text.contains("general.file_type                            15"),
        "{text}"
    );
    let run = glm()
        .arg("run")
        .arg(&file)
        .args(["-p", "Hello", "--raw", "--temp", "0", "-n", "8"])
        .output()
        .expect("run");
    assert!(run.status.success(), "{}", stderr_of(&run));
    assert!(!run.stdout.is_empty());
}

#[test]
fn presets_lists_every_built_in_preset() {
    let out = glm().arg("presets").output().expect("presets");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for name in [
        "f32", "f16", "bf16", "q8_0", "q6_k", "q5_k_m", "q5_k_s", "q4_k_m", "q4_k_s", "q4_0",
    ] {
        assert!(text.lines().any(|l| l.starts_with(name)), "{name} missing:\n{text}");
    }
}

#[test]
fn malformed_user_preset_is_rejected_with_its_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let preset = dir.path().join("mine.yaml");
    std::fs::write(
        &preset,
        "description: mine\nfile_type: 15\ndefault: q4_k\nrules:\n  - contains: [ffn_down]\n    type: q4_x\n",
    )
    .expect("write");
    let out = glm()
        .arg("convert")
        .arg(model_dir("glm-tiny"))
        .arg("--quant")
        .arg(&preset)
        .arg("-o")
        .arg(dir.path().join("x.gguf"))
        .output()
        .expect("run");
    let stderr = stderr_of(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("mine.yaml") && stderr.contains("line 6") && stderr.contains("q4_x"),
        "{stderr}"
    );
    assert!(!dir.path().join("x.gguf").exists());
}

#[test]
fn quantize_requantizes_and_refuses_quantized_input() {
    let dir = tempfile::tempdir().expect("temp dir");
    let f16 = converted("glm-tiny", "f16");
    let out_file = dir.path().join("q8.gguf");
    glm()
        .arg("quantize")
        .arg(&f16)
        .arg(&out_file)
        .args(["--quant", "q8_0"])
        .assert()
        .success();
    let inspect = glm().arg("inspect").arg(&out_file).output().expect("inspect");
    assert!(String::from_utf8_lossy(&inspect.stdout).contains(" Q8_0 "));
    let again = glm()
        .arg("quantize")
        .arg(&out_file)
        .arg(dir.path().join("x.gguf"))
        .args(["--quant", "q4_0"])
        .output()
        .expect("run");
    assert!(!again.status.success());
    assert!(
        stderr_of(&again).contains("re-quantize from an F32, F16 or BF16 file"),
        "{}",
        stderr_of(&again)
    );
}

/// `--no-think` reaches the template as `enable_thinking=false` (GLM-4.5 marks the user
/// turn with `/nothink`), `--think` as true.
#[test]
fn think_flags_reach_the_template() {
    let model = converted("glm4moe-tiny", "q8_0");
    let dir = tempfile::tempdir().expect("temp dir");
    let tokens = |flag: &str| {
        let file = dir.path().join(format!("{flag}.json"));
        glm()
            .arg("logits")
            .arg(&model)
            .args(["--prompt", "hi", flag, "-o"])
            .arg(&file)
            .assert()
            .success();
        ids(&read_json(&file)["tokens"])
    };
    let nothink = glm()
        .arg("tokenize")
        .arg(&model)
        .arg("/nothink")
        .output()
        .expect("tokenize");
    let nothink: Vec<i32> = serde_json::from_slice(&nothink.stdout).expect("ids");
    assert_eq!(nothink.len(), 1, "/nothink is one token");
    assert!(tokens("--no-think").contains(&nothink[0]));
    assert!(!tokens("--think").contains(&nothink[0]));
}

/// GLM-4.7-Flash opens `<think>` in the prompt: by default the answer is reasoning (on
/// stderr); with `--no-think` the template closes the block and text goes to stdout.
#[test]
fn no_think_sends_the_answer_to_stdout() {
    let model = converted("glm47flash-tiny", "q8_0");
    let run = |flag: Option<&str>| {
        glm()
            .arg("run")
            .arg(&model)
            .args(["-p", "Hello", "--temp", "0", "-n", "10"])
            .args(flag)
            .output()
            .expect("run")
    };
    let thinking = run(None);
    assert!(thinking.status.success(), "{}", stderr_of(&thinking));
    assert!(thinking.stdout.is_empty(), "reasoning must not reach stdout");
    let direct = run(Some("--no-think"));
    assert!(direct.status.success(), "{}", stderr_of(&direct));
    assert!(!direct.stdout.is_empty(), "answer expected on stdout");
}
