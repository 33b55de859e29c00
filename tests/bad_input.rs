//! Bad input, table-driven: every row is a command given a hostile file or flag. Each must
//! fail with a non-zero exit (no panic, no signal), one `error:` line that names the file
//! and the problem, nothing left in its output folder, every input byte-identical after
//! the run, and an end within a bounded time.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use glm_convert::gguf::{read_file, write_header, ArrayValue, MetaValue, Metadata, TensorHeader};

/// No row may take longer than this (the slowest legitimate work here is a tiny model load).
const TIME_LIMIT: Duration = Duration::from_secs(60);

struct Row {
    name: &'static str,
    args: Vec<OsString>,
    stdin: Vec<u8>,
    /// Texts the error line must contain (the file, and the problem).
    expect: Vec<String>,
    /// Files and folders that must be byte-identical afterwards.
    inputs: Vec<PathBuf>,
}

fn row(name: &'static str, args: &[&dyn AsRef<std::ffi::OsStr>], expect: &[&str], inputs: &[&Path]) -> Row {
    row_os(
        name,
        args.iter().map(|a| a.as_ref().to_owned()).collect(),
        expect,
        inputs,
    )
}

fn row_os(name: &'static str, args: Vec<OsString>, expect: &[&str], inputs: &[&Path]) -> Row {
    Row {
        name,
        args,
        stdin: Vec::new(),
        expect: expect.iter().map(|s| (*s).to_owned()).collect(),
        inputs: inputs.iter().map(|p| p.to_path_buf()).collect(),
    }
}

/// Every regular file under `paths`, with its bytes.
fn snapshot(paths: &[PathBuf]) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    for path in paths {
        let meta = std::fs::symlink_metadata(path).expect("input exists");
        if meta.is_dir() {
            let entries: Vec<PathBuf> = std::fs::read_dir(path)
                .expect("list")
                .map(|e| e.expect("entry").path())
                .collect();
            files.extend(snapshot(&entries));
        } else if meta.is_file() {
            files.insert(path.clone(), std::fs::read(path).expect("read input"));
        }
    }
    files
}

fn run_row(row: &Row, out_dir: &Path) {
    let before = snapshot(&row.inputs);
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_glm"))
        .args(&row.args)
        .current_dir(out_dir)
        .env("GLM_CACHE_DIR", out_dir.join("cache"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn glm");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = row.stdin.clone();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let output = wait_bounded(child, row.name);
    let _ = feeder.join();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let name = row.name;
    assert!(started.elapsed() < TIME_LIMIT, "{name}: took {:?}", started.elapsed());
    assert!(
        matches!(output.status.code(), Some(1 | 2)),
        "{name}: exit {:?}, stderr: {stderr}",
        output.status
    );
    assert!(!stderr.contains("panicked"), "{name}: panic: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{name}: one line expected, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{name}: {stderr}");
    for text in &row.expect {
        assert!(
            lines[0].contains(text.as_str()),
            "{name}: the error should mention {text:?}: {stderr}"
        );
    }
    let leftovers: Vec<PathBuf> = std::fs::read_dir(out_dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| !p.ends_with("cache"))
        .collect();
    assert!(leftovers.is_empty(), "{name}: left behind {leftovers:?}");
    assert!(snapshot(&row.inputs) == before, "{name}: an input changed");
}

fn wait_bounded(mut child: std::process::Child, name: &str) -> std::process::Output {
    let started = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if started.elapsed() > TIME_LIMIT {
            let _ = child.kill();
            panic!("{name}: still running after {TIME_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn run_table(rows: &[Row]) {
    for row in rows {
        let out_dir = tempfile::tempdir().expect("temp dir");
        run_row(row, out_dir.path());
    }
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut config = read_json(&path);
    edit(&mut config);
    std::fs::write(&path, config.to_string()).expect("write config");
}

/// A copy of the GGUF `src` with its metadata and tensor list edited (data copied over).
fn rewrite_gguf(src: &Path, dst: &Path, edit: impl FnOnce(&mut Metadata, &mut Vec<(TensorHeader, u64)>)) {
    let file = read_file(src).expect("read gguf");
    let mut meta = file.header.meta.clone();
    let mut tensors = file.header.tensors.clone();
    edit(&mut meta, &mut tensors);
    let headers: Vec<TensorHeader> = tensors.iter().map(|(t, _)| t.clone()).collect();
    let mut out = Vec::new();
    write_header(&mut out, &meta, &headers).expect("header");
    for (t, offset) in &tensors {
        let n = t.n_bytes() as usize;
        out.extend_from_slice(&file.bytes()[*offset as usize..*offset as usize + n]);
        out.extend(std::iter::repeat_n(0u8, glm_convert::gguf::padding(n as u64) as usize));
    }
    std::fs::write(dst, out).expect("write gguf");
}

fn set_meta(meta: &mut Metadata, key: &str, value: MetaValue) {
    meta.set(key, value);
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().expect("mkfifo");
    assert!(status.success());
}

#[test]
fn outputs_never_land_on_inputs_or_devices() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ckpt = fixture_copy("glm-tiny", dir.path());
    let gguf = dir.path().join("model.gguf");
    std::fs::copy(converted("glm-tiny", "f16"), &gguf).expect("copy");
    let hard = dir.path().join("hard.gguf");
    std::fs::hard_link(&gguf, &hard).expect("hard link");
    let soft = dir.path().join("soft.gguf");
    std::os::unix::fs::symlink(&gguf, &soft).expect("symlink");
    let existing = dir.path().join("existing.gguf");
    std::fs::write(&existing, "keep me").expect("write");
    let shard = ckpt.join("model.safetensors");
    let config = ckpt.join("config.json");
    let q8 = &"q8_0";
    let rows = vec![
        row(
            "convert onto its shard",
            &[&"convert", &ckpt, &"-o", &shard, &"--force"],
            &["model.safetensors", "is an input"],
            &[&ckpt],
        ),
        row(
            "convert onto config.json",
            &[&"convert", &ckpt, &"-o", &config, &"--force"],
            &["config.json", "is an input"],
            &[&ckpt],
        ),
        row(
            "quantize onto itself",
            &[&"quantize", &gguf, &gguf, &"--quant", q8, &"--force"],
            &["model.gguf", "is an input"],
            &[&gguf],
        ),
        row(
            "quantize onto a hard link",
            &[&"quantize", &gguf, &hard, &"--quant", q8, &"--force"],
            &["hard.gguf", "is an input"],
            &[&gguf],
        ),
        row(
            "quantize onto a symlink",
            &[&"quantize", &gguf, &soft, &"--quant", q8, &"--force"],
            &["soft.gguf", "is an input"],
            &[&gguf, &soft],
        ),
        row(
            "quantize onto /dev/null",
            &[&"quantize", &gguf, &"/dev/null", &"--quant", q8, &"--force"],
            &["/dev/null", "not a regular file"],
            &[&gguf],
        ),
        row(
            "logits onto /dev/null",
            &[&"logits", &gguf, &"--tokens", &"1,2", &"-o", &"/dev/null", &"--force"],
            &["/dev/null", "not a regular file"],
            &[&gguf],
        ),
        row(
            "logits onto the model",
            &[&"logits", &gguf, &"--tokens", &"1,2", &"-o", &gguf, &"--force"],
            &["model.gguf", "is an input"],
            &[&gguf],
        ),
        row(
            "quantize onto an existing file",
            &[&"quantize", &gguf, &existing, &"--quant", q8],
            &["existing.gguf", "--force"],
            &[&gguf, &existing],
        ),
        row(
            "convert into a folder that does not exist",
            &[&"convert", &ckpt, &"-o", &dir.path().join("nope/out.gguf")],
            &["nope/out.gguf", "does not exist"],
            &[&ckpt],
        ),
        row(
            "convert into a folder that does not exist, named with a slash",
            &[
                &"convert",
                &ckpt,
                &"-o",
                &format!("{}/", dir.path().join("nope").display()),
                &"--force",
            ],
            &["nope/", "no such folder"],
            &[&ckpt],
        ),
    ];
    run_table(&rows);
    assert!(Path::new("/dev/null")
        .metadata()
        .expect("/dev/null")
        .file_type()
        .is_char_device_like());
}

/// `/dev/null` must still be the device.
trait CharDevice {
    fn is_char_device_like(&self) -> bool;
}

impl CharDevice for std::fs::FileType {
    fn is_char_device_like(&self) -> bool {
        std::os::unix::fs::FileTypeExt::is_char_device(self)
    }
}

#[test]
fn malformed_gguf_files_are_refused_before_llama_cpp() {
    let dir = tempfile::tempdir().expect("temp dir");
    let good = converted("glm-tiny", "f16");
    let path = |name: &str| dir.path().join(name);
    let bytes = std::fs::read(&good).expect("read");
    std::fs::write(path("truncated.gguf"), &bytes[..bytes.len() / 2]).expect("write");
    std::fs::write(path("header-only.gguf"), &bytes[..100]).expect("write");
    let mut huge_count = b"GGUF".to_vec();
    huge_count.extend(3u32.to_le_bytes());
    huge_count.extend(0u64.to_le_bytes());
    huge_count.extend(u64::MAX.to_le_bytes());
    std::fs::write(path("huge-count.gguf"), huge_count).expect("write");
    rewrite_gguf(&good, &path("alignment.gguf"), |m, _| {
        set_meta(m, "general.alignment", MetaValue::U32(3))
    });
    rewrite_gguf(&good, &path("bad-eos.gguf"), |m, _| {
        set_meta(m, "tokenizer.ggml.eos_token_id", MetaValue::U32(999_999))
    });
    rewrite_gguf(&good, &path("bad-gqa.gguf"), |m, _| {
        set_meta(m, "chatglm.attention.head_count_kv", MetaValue::U32(3))
    });
    rewrite_gguf(&good, &path("zero-layers.gguf"), |m, _| {
        set_meta(m, "chatglm.block_count", MetaValue::U32(0))
    });
    rewrite_gguf(&good, &path("many-layers.gguf"), |m, _| {
        set_meta(m, "chatglm.block_count", MetaValue::U32(100_000))
    });
    rewrite_gguf(&good, &path("eps.gguf"), |m, _| {
        set_meta(m, "chatglm.attention.layer_norm_rms_epsilon", MetaValue::F32(-1.0))
    });
    rewrite_gguf(&good, &path("rope.gguf"), |m, _| {
        set_meta(m, "chatglm.rope.dimension_count", MetaValue::U32(4096))
    });
    rewrite_gguf(&good, &path("token-types.gguf"), |m, _| {
        set_meta(
            m,
            "tokenizer.ggml.token_type",
            MetaValue::Array(ArrayValue::I32(vec![1; 3])),
        )
    });
    rewrite_gguf(&good, &path("missing-tensor.gguf"), |_, tensors| {
        tensors.retain(|(t, _)| t.name != "blk.1.ffn_down.weight")
    });
    rewrite_gguf(&good, &path("gating.gguf"), |m, _| {
        set_meta(m, "chatglm.expert_gating_func", MetaValue::U32(9))
    });
    rewrite_gguf(&converted("glm-tiny", "f32"), &path("int-weight.gguf"), |_, tensors| {
        for (t, _) in tensors.iter_mut().filter(|(t, _)| t.name == "blk.0.ffn_down.weight") {
            t.ggml_type = glm_convert::GgmlType::I32;
        }
    });
    let fifo = path("fifo.gguf");
    mkfifo(&fifo);
    let inspect = |file: &str, expect: &[&str]| -> Row {
        let p = path(file);
        let mut r = row("inspect", &[&"inspect", &p], expect, &[]);
        r.expect.push(file.to_owned());
        r
    };
    let run = |name: &'static str, file: &str, expect: &[&str]| -> Row {
        let p = path(file);
        let mut r = row(name, &[&"run", &p, &"-p", &"hi", &"-n", &"2"], expect, &[&p]);
        r.expect.push(file.to_owned());
        r
    };
    let rows = vec![
        inspect("truncated.gguf", &["truncated"]),
        inspect("header-only.gguf", &["truncated"]),
        inspect("huge-count.gguf", &["truncated or corrupt"]),
        inspect("alignment.gguf", &["power of two"]),
        inspect("fifo.gguf", &["FIFO"]),
        row(
            "inspect /dev/zero",
            &[&"inspect", &"/dev/zero"],
            &["/dev/zero", "not a regular file"],
            &[],
        ),
        run(
            "special token outside the vocabulary",
            "bad-eos.gguf",
            &["eos_token_id", "outside the vocabulary"],
        ),
        run(
            "key/value heads that do not divide",
            "bad-gqa.gguf",
            &["key/value heads"],
        ),
        run("zero layers", "zero-layers.gguf", &["block_count"]),
        run("too many layers", "many-layers.gguf", &["block_count"]),
        run("negative epsilon", "eps.gguf", &["epsilon"]),
        run("rope wider than the head", "rope.gguf", &["rope.dimension_count"]),
        run("an unknown gating function", "gating.gguf", &["expert_gating_func"]),
        run(
            "an integer weight matrix",
            "int-weight.gguf",
            &["blk.0.ffn_down.weight", "I32"],
        ),
        run("token types of the wrong length", "token-types.gguf", &["token_type"]),
        run(
            "a tensor llama.cpp needs is missing",
            "missing-tensor.gguf",
            &["llama.cpp cannot load", "blk.1.ffn_down.weight"],
        ),
    ];
    run_table(&rows);
}

#[test]
fn projectors_that_do_not_fit_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let model = converted("glm-tiny", "f16");
    let other_model = converted("glm4-tiny", "f16");
    let text = dir.path().join("model.gguf");
    std::fs::copy(&model, &text).expect("copy");
    let projector = dir.path().join("proj.gguf");
    let vision = fixture_copy("glm41v-tiny", dir.path());
    let status = Command::new(env!("CARGO_BIN_EXE_glm"))
        .arg("convert")
        .arg(&vision)
        .arg("-o")
        .arg(dir.path().join("vision.gguf"))
        .status()
        .expect("convert");
    assert!(status.success());
    std::fs::rename(dir.path().join("glm41v-tiny-mmproj-F16.gguf"), &projector).expect("projector");
    rewrite_gguf(&projector, &dir.path().join("narrow.gguf"), |m, _| {
        set_meta(m, "clip.vision.projection_dim", MetaValue::U32(4096))
    });
    let narrow = dir.path().join("narrow.gguf");
    let image = model_dir("glm45v-tiny").join("image.png");
    let rows = vec![
        row(
            "a model passed as the projector",
            &[
                &"run",
                &dir.path().join("vision.gguf"),
                &"-p",
                &"hi",
                &"--image",
                &image,
                &"--mmproj",
                &other_model,
            ],
            &["not a vision projector"],
            &[&other_model],
        ),
        row(
            "a projector for another width",
            &[
                &"run",
                &dir.path().join("vision.gguf"),
                &"-p",
                &"hi",
                &"--image",
                &image,
                &"--mmproj",
                &narrow,
            ],
            &["narrow.gguf", "does not belong to this model"],
            &[&narrow],
        ),
        row(
            "a projector passed as the model",
            &[&"run", &projector, &"-p", &"hi"],
            &["proj.gguf", "vision projector"],
            &[&projector],
        ),
    ];
    run_table(&rows);
}

#[test]
fn checkpoints_that_cannot_work_are_refused_before_writing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let variant = |name: &str, edit: &dyn Fn(&Path)| -> PathBuf {
        let base = dir.path().join(name);
        std::fs::create_dir_all(&base).expect("mkdir");
        let copy = fixture_copy("glm4-tiny", &base);
        edit(&copy);
        copy
    };
    let config_edit = |key: &'static str, value: serde_json::Value| {
        move |d: &Path| {
            let value = value.clone();
            edit_config(d, |c| c[key] = value)
        }
    };
    let hidden = variant("hidden", &config_edit("hidden_size", 96.into()));
    let heads = variant("heads", &config_edit("num_key_value_heads", 3.into()));
    let layers = variant("layers", &config_edit("num_hidden_layers", 0.into()));
    let more_layers = variant("more-layers", &config_edit("num_hidden_layers", 7.into()));
    let head_dim = variant("head-dim", &config_edit("head_dim", 0.into()));
    let eps = variant("eps", &config_edit("rms_norm_eps", (-1e-6).into()));
    let rotary = variant("rotary", &config_edit("partial_rotary_factor", 1.5.into()));
    let escape = variant("escape", &|d: &Path| point_first_shard_at(d, "../outside.safetensors"));
    let absolute = variant("absolute", &|d: &Path| point_first_shard_at(d, "/etc/passwd"));
    let trailing = variant("trailing", &|d: &Path| {
        let shard = d.join("model-00001-of-00003.safetensors");
        let mut file = std::fs::OpenOptions::new().append(true).open(shard).expect("open");
        file.write_all(b"junk").expect("append");
    });
    let template = variant("template", &|d: &Path| {
        let path = d.join("tokenizer_config.json");
        let mut json = read_json(&path);
        json["chat_template"] = 42.into();
        std::fs::write(&path, json.to_string()).expect("write");
        let _ = std::fs::remove_file(d.join("chat_template.jinja"));
    });
    let fifo = variant("fifo", &|d: &Path| {
        let shard = d.join("model-00002-of-00003.safetensors");
        std::fs::remove_file(&shard).expect("remove");
        mkfifo(&shard);
    });
    let fifo_config = variant("fifo-config", &|d: &Path| {
        std::fs::remove_file(d.join("config.json")).expect("remove");
        mkfifo(&d.join("config.json"));
    });
    let nan = variant("nan", &poison_first_norm);
    let scalar = variant("scalar", &|d: &Path| {
        let index = read_json(&d.join("model.safetensors.index.json"));
        let shard = d.join(index["weight_map"]["model.norm.weight"].as_str().expect("shard"));
        rebuild_shard(&shard, |name, shape, bytes| {
            if name == "model.norm.weight" {
                shape.clear();
                bytes.truncate(2);
            }
        });
    });
    let convert = |name: &'static str, input: &Path, expect: &[&str]| {
        row(name, &[&"convert", &input, &"-o", &"out.gguf"], expect, &[input])
    };
    let rows = vec![
        convert("wrong hidden_size", &hidden, &["config.json", "token_embd"]),
        convert("heads not divisible", &heads, &["config.json", "num_key_value_heads"]),
        convert("zero layers", &layers, &["config.json", "num_hidden_layers"]),
        convert(
            "layers without weights",
            &more_layers,
            &["config.json", "no weights for layer 2"],
        ),
        convert("zero head_dim", &head_dim, &["config.json", "head_dim"]),
        convert("negative epsilon", &eps, &["config.json", "rms_norm_eps"]),
        convert(
            "rotary fraction above one",
            &rotary,
            &["config.json", "partial_rotary_factor"],
        ),
        convert(
            "index escaping the folder",
            &escape,
            &["index.json", "inside the checkpoint folder"],
        ),
        convert(
            "index naming an absolute path",
            &absolute,
            &["index.json", "/etc/passwd"],
        ),
        convert(
            "trailing bytes in a shard",
            &trailing,
            &["model-00001-of-00003.safetensors", "trailing bytes"],
        ),
        convert(
            "a chat template that is not text",
            &template,
            &["tokenizer_config.json", "chat_template"],
        ),
        convert("fifo shard", &fifo, &["model-00002-of-00003.safetensors", "FIFO"]),
        convert("fifo config", &fifo_config, &["config.json", "FIFO"]),
        convert("NaN weights", &nan, &["NaN"]),
        convert("a 0-d weight", &scalar, &["model.norm.weight", "shape []"]),
    ];
    run_table(&rows);
    // With --allow-nonfinite the same checkpoint converts.
    let out = tempfile::tempdir().expect("temp dir");
    let status = Command::new(env!("CARGO_BIN_EXE_glm"))
        .arg("convert")
        .arg(&nan)
        .arg("-o")
        .arg(out.path().join("nan.gguf"))
        .arg("--allow-nonfinite")
        .status()
        .expect("convert");
    assert!(status.success());
}

/// Makes the index name `file` as the shard of its first tensor.
fn point_first_shard_at(dir: &Path, file: &str) {
    let index = dir.join("model.safetensors.index.json");
    let mut json = read_json(&index);
    let first = json["weight_map"]
        .as_object()
        .and_then(|map| map.keys().next().cloned())
        .expect("a tensor in the index");
    json["weight_map"][first] = file.into();
    std::fs::write(&index, json.to_string()).expect("write");
}

/// Rewrites a safetensors shard, letting `edit` change any tensor's shape and bytes.
fn rebuild_shard(path: &Path, mut edit: impl FnMut(&str, &mut Vec<u64>, &mut Vec<u8>)) {
    let source = std::fs::read(path).expect("read");
    let header_len = u64::from_le_bytes(source[..8].try_into().expect("len")) as usize;
    let header: serde_json::Value = serde_json::from_slice(&source[8..8 + header_len]).expect("header");
    let data = &source[8 + header_len..];
    let mut entries = serde_json::Map::new();
    let mut body = Vec::new();
    for (name, info) in header.as_object().expect("object") {
        if name == "__metadata__" {
            continue;
        }
        let start = info["data_offsets"][0].as_u64().expect("start") as usize;
        let end = info["data_offsets"][1].as_u64().expect("end") as usize;
        let mut shape: Vec<u64> = info["shape"]
            .as_array()
            .expect("shape")
            .iter()
            .map(|d| d.as_u64().expect("dim"))
            .collect();
        let mut bytes = data[start..end].to_vec();
        edit(name, &mut shape, &mut bytes);
        let mut entry = info.clone();
        entry["shape"] = shape.into();
        entry["data_offsets"] = serde_json::json!([body.len(), body.len() + bytes.len()]);
        body.extend(bytes);
        entries.insert(name.clone(), entry);
    }
    let mut text = serde_json::Value::Object(entries).to_string().into_bytes();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text);
    out.extend(body);
    std::fs::write(path, out).expect("write");
}

/// Writes a NaN into the first BF16 value of `model.norm.weight`.
fn poison_first_norm(dir: &Path) {
    let index = read_json(&dir.join("model.safetensors.index.json"));
    let shard = dir.join(index["weight_map"]["model.norm.weight"].as_str().expect("shard"));
    let mut bytes = std::fs::read(&shard).expect("read");
    let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("len")) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).expect("header");
    let start = header["model.norm.weight"]["data_offsets"][0].as_u64().expect("offset") as usize;
    let at = 8 + header_len + start;
    bytes[at..at + 2].copy_from_slice(&half::bf16::NAN.to_le_bytes());
    std::fs::write(&shard, bytes).expect("write");
}

#[test]
fn flags_and_streams_are_bounded() {
    let dir = tempfile::tempdir().expect("temp dir");
    let model = converted("glm-tiny", "q8_0");
    let fifo = dir.path().join("tools.fifo");
    mkfifo(&fifo);
    let nested = dir.path().join("nested.gguf");
    rewrite_gguf(&model, &nested, |m, _| {
        m.set(
            "tokenizer.chat_template",
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
        )
    });
    let run = |extra: &[&dyn AsRef<std::ffi::OsStr>]| -> Vec<OsString> {
        let mut args = vec![OsString::from("run"), model.clone().into_os_string()];
        args.extend(extra.iter().map(|a| a.as_ref().to_owned()));
        args
    };
    let mut rows = vec![
        row_os(
            "context beyond the training length",
            run(&[&"-p", &"hi", &"-c", &"102400"]),
            &["--ctx-size", "2048"],
            &[],
        ),
        row_os(
            "absurd context",
            run(&[&"-p", &"hi", &"-c", &"1000000000000"]),
            &["--ctx-size"],
            &[],
        ),
        row_os(
            "absurd threads",
            run(&[&"-p", &"hi", &"-t", &"100000000"]),
            &["--threads"],
            &[],
        ),
        row_os(
            "absurd penalty window",
            run(&[&"-p", &"hi", &"--repeat-last-n", &"1000000000000"]),
            &["--repeat-last-n"],
            &[],
        ),
        row_os(
            "NaN temperature",
            run(&[&"-p", &"hi", &"--temp", &"nan"]),
            &["--temp"],
            &[],
        ),
        row_os(
            "top-p above one",
            run(&[&"-p", &"hi", &"--top-p", &"1.5"]),
            &["--top-p"],
            &[],
        ),
        row_os(
            "top-p below zero",
            run(&[&"-p", &"hi", &"--top-p", &"-0.5"]),
            &["--top-p", "0..=1"],
            &[],
        ),
        row_os(
            "min-p below zero",
            run(&[&"-p", &"hi", &"--min-p", &"-0.1"]),
            &["--min-p", "0..=1"],
            &[],
        ),
        row_os(
            "min-p above one",
            run(&[&"-p", &"hi", &"--min-p", &"2"]),
            &["--min-p", "0..=1"],
            &[],
        ),
        row_os(
            "a repeat penalty of zero",
            run(&[&"-p", &"hi", &"--repeat-penalty", &"0"]),
            &["--repeat-penalty", "above 0"],
            &[],
        ),
        row_os(
            "a negative temperature",
            run(&[&"-p", &"hi", &"--temp", &"-1"]),
            &["--temp", "0..=100"],
            &[],
        ),
        row_os(
            "a zero context",
            run(&[&"-p", &"hi", &"-c", &"0"]),
            &["--ctx-size", "1..="],
            &[],
        ),
        row_os(
            "thinking on and off",
            run(&[&"-p", &"hi", &"--think", &"--no-think"]),
            &["--think", "--no-think"],
            &[],
        ),
        row_os(
            "a thinking budget GLM cannot keep",
            run(&[&"-p", &"hi", &"--reasoning-budget", &"512"]),
            &["--reasoning-budget", "only 0"],
            &[],
        ),
        row_os(
            "a negative token count",
            run(&[&"-p", &"hi", &"-n", &"-7"]),
            &["--max-tokens", "-1"],
            &[],
        ),
        row_os(
            "a seed below -1",
            run(&[&"-p", &"hi", &"--seed", &"-2"]),
            &["--seed", "-1"],
            &[],
        ),
        row_os(
            "tools from a FIFO",
            run(&[&"-p", &"hi", &"--tools", &fifo]),
            &["tools.fifo", "FIFO"],
            &[],
        ),
        row_os(
            "a prompt file that is a FIFO",
            run(&[&"-f", &fifo]),
            &["tools.fifo", "FIFO"],
            &[],
        ),
        row_os(
            "a prompt file that never ends",
            run(&[&"-f", &"/dev/zero"]),
            &["/dev/zero", "not a regular file"],
            &[],
        ),
        row_os(
            "tools from /dev/zero",
            run(&[&"-p", &"hi", &"--tools", &"/dev/zero"]),
            &["/dev/zero", "not a regular file"],
            &[],
        ),
        row_os(
            "a prompt longer than the context",
            run(&[&"-p", &"-", &"-c", &"256"]),
            &["cannot fit"],
            &[],
        ),
        row_os(
            "a stdin prompt larger than the limit",
            run(&[&"-p", &"-"]),
            &["standard input", "larger than"],
            &[],
        ),
        row(
            "a server body limit of zero",
            &[&"serve", &model, &"--max-body", &"0"],
            &["--max-body", "1024"],
            &[],
        ),
        row(
            "a server with no sequences",
            &[&"serve", &model, &"--parallel", &"0"],
            &["--parallel", "1..="],
            &[],
        ),
        row(
            "a server address that does not resolve",
            &[&"serve", &model, &"--host", &"nonsense.invalid", &"--port", &"0"],
            &["nonsense.invalid", "cannot listen"],
            &[],
        ),
        row(
            "a template that never ends",
            &[&"run", &nested, &"-p", &"hi"],
            &["fuel"],
            &[&nested],
        ),
    ];
    let long_prompt = rows.iter().position(|r| r.name == "a prompt longer than the context");
    let huge_stdin = rows
        .iter()
        .position(|r| r.name == "a stdin prompt larger than the limit");
    rows[long_prompt.expect("row")].stdin = "word ".repeat(200_000).into_bytes();
    rows[huge_stdin.expect("row")].stdin = vec![b'a'; (16 << 20) + 10];
    run_table(&rows);
}

/// A GGUF-size huge generation request is bounded by the context, not allocated.
#[test]
fn a_huge_token_count_stops_at_the_context() {
    let model = converted("glm-tiny", "q8_0");
    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_glm"))
        .arg("run")
        .arg(&model)
        .args([
            "-p",
            "hi",
            "-n",
            "1000000000000",
            "-c",
            "64",
            "--ignore-eos",
            "--temp",
            "0",
            "--raw",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let output = wait_bounded(child, "huge -n");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(started.elapsed() < TIME_LIMIT);
}

/// A PNG whose header claims a 100000×100000 picture (a decompression bomb).
fn bomb_png(path: &Path) {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend((data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend(kind);
        out.extend(data);
        let crc = crc32(&out[start..]);
        out.extend(crc.to_be_bytes());
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend(100_000u32.to_be_bytes());
    ihdr.extend(100_000u32.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    chunk(&mut png, b"IHDR", &ihdr);
    chunk(&mut png, b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    chunk(&mut png, b"IEND", &[]);
    std::fs::write(path, png).expect("write png");
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn images_are_checked_before_decoding() {
    let dir = tempfile::tempdir().expect("temp dir");
    let vision = fixture_copy("glm41v-tiny", dir.path());
    let status = Command::new(env!("CARGO_BIN_EXE_glm"))
        .arg("convert")
        .arg(&vision)
        .arg("-o")
        .arg(dir.path().join("vision.gguf"))
        .status()
        .expect("convert");
    assert!(status.success());
    let bomb = dir.path().join("bomb.png");
    bomb_png(&bomb);
    let fifo = dir.path().join("image.fifo");
    mkfifo(&fifo);
    let model = dir.path().join("vision.gguf");
    let rows = vec![
        row(
            "decompression bomb",
            &[&"run", &model, &"-p", &"hi", &"--image", &bomb],
            &["bomb.png"],
            &[&bomb],
        ),
        row(
            "image from a FIFO",
            &[&"run", &model, &"-p", &"hi", &"--image", &fifo],
            &["image.fifo", "FIFO"],
            &[],
        ),
    ];
    run_table(&rows);
}

/// A checkpoint whose embedding and output matrices are large zero tensors stored sparsely,
/// so that converting it takes seconds while the file costs no disk space.
fn slow_checkpoint(into: &Path) -> PathBuf {
    let dir = fixture_copy("glm-tiny", into);
    let rows = 1536 * 600;
    edit_config(&dir, |c| c["vocab_size"] = rows.into());
    let source = std::fs::read(dir.join("model.safetensors")).expect("read");
    let header_len = u64::from_le_bytes(source[..8].try_into().expect("len")) as usize;
    let header: serde_json::Value = serde_json::from_slice(&source[8..8 + header_len]).expect("header");
    let data = &source[8 + header_len..];
    let mut entries = serde_json::Map::new();
    let mut body = Vec::new();
    let big = ["model.embed_tokens.weight", "lm_head.weight"];
    for (name, info) in header.as_object().expect("object") {
        if name == "__metadata__" || big.contains(&name.as_str()) {
            continue;
        }
        let start = info["data_offsets"][0].as_u64().expect("start") as usize;
        let end = info["data_offsets"][1].as_u64().expect("end") as usize;
        let mut entry = info.clone();
        entry["data_offsets"] = serde_json::json!([body.len(), body.len() + end - start]);
        body.extend_from_slice(&data[start..end]);
        entries.insert(name.clone(), entry);
    }
    let mut end = body.len();
    for name in big {
        let size = rows * 128 * 2;
        entries.insert(
            name.to_owned(),
            serde_json::json!({"dtype": "BF16", "shape": [rows, 128], "data_offsets": [end, end + size]}),
        );
        end += size;
    }
    let mut text = serde_json::Value::Object(entries).to_string().into_bytes();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let path = dir.join("model.safetensors");
    let mut file = std::fs::File::create(&path).expect("create");
    file.write_all(&(text.len() as u64).to_le_bytes()).expect("write");
    file.write_all(&text).expect("write");
    file.write_all(&body).expect("write");
    file.set_len((8 + text.len() + end) as u64).expect("sparse zeros");
    dir
}

/// SIGINT and SIGTERM in the middle of a conversion leave no partial file behind.
#[test]
fn an_interrupted_conversion_leaves_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let checkpoint = slow_checkpoint(dir.path());
    for (signal, code) in [("INT", 130), ("TERM", 143)] {
        let out = tempfile::tempdir().expect("temp dir");
        let mut child = Command::new(env!("CARGO_BIN_EXE_glm"))
            .arg("convert")
            .arg(&checkpoint)
            .arg("-o")
            .arg(out.path().join("big.gguf"))
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let started = Instant::now();
        let partial = loop {
            let found = std::fs::read_dir(out.path())
                .expect("list")
                .any(|e| e.expect("entry").file_name().to_string_lossy().ends_with(".partial"));
            if found {
                break true;
            }
            if child.try_wait().expect("wait").is_some() || started.elapsed() > TIME_LIMIT {
                break false;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        assert!(partial, "the conversion should be writing");
        let status = Command::new("kill")
            .args([format!("-{signal}"), child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let status = child.wait().expect("wait");
        assert_eq!(status.code(), Some(code), "SIG{signal}");
        let left: Vec<_> = std::fs::read_dir(out.path()).expect("list").collect();
        assert!(left.is_empty(), "SIG{signal} left {left:?}");
    }
}

/// A GGUF header written byte by byte: `(key, type id, value bytes)` entries and
/// `(name, dims, ggml type, offset)` tensor infos, then `data` bytes.
fn raw_gguf(kvs: &[(&str, u32, Vec<u8>)], tensors: &[(&str, &[u64], u32, u64)], data: usize) -> Vec<u8> {
    let string = |s: &str| {
        let mut b = (s.len() as u64).to_le_bytes().to_vec();
        b.extend(s.as_bytes());
        b
    };
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((kvs.len() as u64).to_le_bytes());
    for (key, ty, value) in kvs {
        out.extend(string(key));
        out.extend(ty.to_le_bytes());
        out.extend(value);
    }
    for (name, dims, ty, offset) in tensors {
        out.extend(string(name));
        out.extend((dims.len() as u32).to_le_bytes());
        for d in *dims {
            out.extend(d.to_le_bytes());
        }
        out.extend(ty.to_le_bytes());
        out.extend(offset.to_le_bytes());
    }
    while !out.len().is_multiple_of(32) {
        out.push(0);
    }
    out.extend(std::iter::repeat_n(0u8, data));
    out
}

#[test]
fn hand_made_gguf_headers_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let arch = ("general.architecture", 8u32, {
        let mut b = 4u64.to_le_bytes().to_vec();
        b.extend(b"glm4");
        b
    });
    let u32_value = |v: u32| v.to_le_bytes().to_vec();
    let nested = {
        // An array of arrays of u8.
        let mut b = 9u32.to_le_bytes().to_vec();
        b.extend(1u64.to_le_bytes());
        b
    };
    let files: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "duplicate-key.gguf",
            raw_gguf(&[arch.clone(), arch.clone()], &[], 0),
            "appears twice",
        ),
        (
            "nested.gguf",
            raw_gguf(&[arch.clone(), ("x", 9, nested)], &[], 0),
            "arrays of arrays",
        ),
        (
            "unknown-type.gguf",
            raw_gguf(&[arch.clone(), ("x", 77, vec![0; 8])], &[], 0),
            "unknown value type",
        ),
        (
            "zero-dim.gguf",
            raw_gguf(std::slice::from_ref(&arch), &[("a.weight", &[0, 4], 0, 0)], 64),
            "zero dimension",
        ),
        (
            "overflow.gguf",
            raw_gguf(
                std::slice::from_ref(&arch),
                &[("a.weight", &[1 << 40, 1 << 40], 0, 0)],
                64,
            ),
            "more elements",
        ),
        (
            "ggml-type.gguf",
            raw_gguf(std::slice::from_ref(&arch), &[("a.weight", &[4], 99, 0)], 64),
            "unknown ggml type",
        ),
        (
            "duplicate-tensor.gguf",
            raw_gguf(
                std::slice::from_ref(&arch),
                &[("a.weight", &[8], 0, 0), ("a.weight", &[8], 0, 32)],
                64,
            ),
            "appears twice",
        ),
        (
            "offset.gguf",
            raw_gguf(std::slice::from_ref(&arch), &[("a.weight", &[8], 0, u64::MAX - 8)], 64),
            "offset",
        ),
        (
            "long-name.gguf",
            raw_gguf(std::slice::from_ref(&arch), &[(&"n".repeat(100), &[8], 0, 0)], 64),
            "longer than",
        ),
        (
            "dims.gguf",
            raw_gguf(
                std::slice::from_ref(&arch),
                &[("a.weight", &[1, 1, 1, 1, 1, 1], 0, 0)],
                64,
            ),
            "dimensions",
        ),
        (
            "alignment-type.gguf",
            raw_gguf(
                &[arch.clone(), ("general.alignment", 10, 32u64.to_le_bytes().to_vec())],
                &[],
                0,
            ),
            "general.alignment",
        ),
        (
            "layers.gguf",
            raw_gguf(&[arch.clone(), ("glm4.block_count", 4, u32_value(100_000))], &[], 0),
            "block_count",
        ),
    ];
    let mut rows = Vec::new();
    for (name, bytes, problem) in &files {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).expect("write");
        let command = if name.starts_with("layers") { "run" } else { "inspect" };
        let mut r = row("hand-made header", &[&command, &path], &[name, problem], &[&path]);
        if command == "run" {
            r.args.extend(["-p".into(), "hi".into()]);
        }
        rows.push(r);
    }
    run_table(&rows);
}

#[test]
fn presets_and_importance_matrices_are_checked() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ckpt = fixture_copy("glm-tiny", dir.path());
    let path = |name: &str| dir.path().join(name);
    std::fs::write(path("big.yaml"), "#".repeat(2 << 20)).expect("write");
    std::fs::write(path("bad.yaml"), "description: d\nfile_type: 1\ndefault: q9_9\n").expect("write");
    let mut legacy = Vec::new();
    legacy.extend(1i32.to_le_bytes());
    legacy.extend(21i32.to_le_bytes());
    legacy.extend(b"blk.0.ffn_down.weight");
    legacy.extend(1i32.to_le_bytes());
    legacy.extend(2i32.to_le_bytes());
    legacy.extend(f32::NAN.to_le_bytes());
    legacy.extend(1.0f32.to_le_bytes());
    std::fs::write(path("nan.dat"), &legacy).expect("write");
    std::fs::write(path("short.dat"), &legacy[..10]).expect("write");
    let convert = |name: &'static str, extra: &[&str], expect: &[&str]| {
        let mut args: Vec<OsString> = vec!["convert".into(), ckpt.clone().into(), "-o".into(), "out.gguf".into()];
        args.extend(extra.iter().map(OsString::from));
        row_os(name, args, expect, &[&ckpt])
    };
    let big = path("big.yaml");
    let bad = path("bad.yaml");
    let nan = path("nan.dat");
    let short = path("short.dat");
    let rows = vec![
        convert(
            "a huge preset",
            &["--quant", big.to_str().expect("utf-8")],
            &["big.yaml", "larger than"],
        ),
        convert(
            "a malformed preset",
            &["--quant", bad.to_str().expect("utf-8")],
            &["bad.yaml", "line 3", "q9_9"],
        ),
        convert(
            "a preset from /dev/zero",
            &["--quant", "/dev/zero"],
            &["/dev/zero", "not a regular file"],
        ),
        convert(
            "an unknown preset",
            &["--quant", "q9_k_x"],
            &["q9_k_x", "unknown preset"],
        ),
        convert(
            "an importance matrix with NaN",
            &["--quant", "q4_k_m", "--imatrix", nan.to_str().expect("utf-8")],
            &["nan.dat", "finite"],
        ),
        convert(
            "a truncated importance matrix",
            &["--quant", "q4_k_m", "--imatrix", short.to_str().expect("utf-8")],
            &["short.dat"],
        ),
    ];
    run_table(&rows);
}

/// Placement, cache and drafting flags: each bad value is one line naming the flag.
#[test]
fn placement_flags_are_checked_before_loading() {
    let model = converted("glm4moe-tiny", "q8_0");
    let run = |extra: &[&str]| -> Vec<OsString> {
        let mut args = vec![
            OsString::from("run"),
            model.clone().into_os_string(),
            "-p".into(),
            "hi".into(),
        ];
        args.extend(extra.iter().map(OsString::from));
        args
    };
    let rows = vec![
        row_os(
            "unknown buffer",
            run(&["-ot", "exps=GPU7"]),
            &["--override-tensor", "GPU7", "unknown buffer"],
            &[],
        ),
        row_os(
            "malformed regex",
            run(&["-ot", "ex(ps=CPU"]),
            &["--override-tensor", "ex(ps", "regular expression"],
            &[],
        ),
        row_os(
            "override without buffer",
            run(&["-ot", "exps"]),
            &["--override-tensor", "REGEX=BUFFER"],
            &[],
        ),
        row_os(
            "more CPU-MoE layers than the model has",
            run(&["--n-cpu-moe", "99"]),
            &["--n-cpu-moe 99", "only 4 layers"],
            &[],
        ),
        row_os(
            "unknown device",
            run(&["--device", "CUDA3"]),
            &["--device CUDA3", "no such device"],
            &[],
        ),
        row_os(
            "the CPU as a GPU",
            run(&["-dev", "CPU"]),
            &["--device CPU", "not a GPU"],
            &[],
        ),
        row_os(
            "a main GPU that is not there",
            run(&["-mg", "3"]),
            &["--main-gpu 3"],
            &[],
        ),
        row_os("negative tensor split", run(&["-ts", "-1"]), &["--tensor-split"], &[]),
        row_os(
            "a split for GPUs that are not there",
            run(&["-ts", "1,1"]),
            &["--tensor-split", "2 shares"],
            &[],
        ),
        row_os(
            "gpu layers that are not a number",
            run(&["-ngl", "many"]),
            &["--gpu-layers", "many"],
            &[],
        ),
        row_os(
            "unknown cache type",
            run(&["-ctk", "q3_k"]),
            &["--cache-type-k", "q3_k"],
            &[],
        ),
        row_os("no draft tokens", run(&["--draft-max", "0"]), &["--draft-max"], &[]),
        row_os(
            "a NaN draft probability",
            run(&["--draft-p-min", "nan"]),
            &["--draft-p-min"],
            &[],
        ),
        row_os(
            "zero repetitions",
            vec!["bench".into(), model.clone().into_os_string(), "-r".into(), "0".into()],
            &["--repetitions"],
            &[],
        ),
        row_os(
            "nothing to bench",
            vec![
                "bench".into(),
                model.clone().into_os_string(),
                "-p".into(),
                "0".into(),
                "-n".into(),
                "0".into(),
            ],
            &["nothing to measure"],
            &[],
        ),
    ];
    run_table(&rows);
}
