//! The files glm writes: their modes, where `-o` puts them, what they may never replace,
//! the cache of converted checkpoints, and the errors about paths.

mod common;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::*;

fn glm_path() -> &'static str {
    env!("CARGO_BIN_EXE_glm")
}

/// Runs glm under `umask` (through `sh`, as a user's shell would), with `cache` as the
/// cache and `stdin` fed in.
fn glm_umask(umask: u32, cache: &Path, args: &[&OsStr], stdin: &str) -> Output {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("umask {umask:03o}; exec \"$0\" \"$@\""))
        .arg(glm_path())
        .args(args)
        .env("GLM_CACHE_DIR", cache)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn glm");
    let mut input = child.stdin.take().expect("stdin");
    std::io::Write::write_all(&mut input, stdin.as_bytes()).expect("write stdin");
    drop(input);
    child.wait_with_output().expect("wait for glm")
}

fn glm(cache: &Path, args: &[&OsStr]) -> Output {
    glm_umask(0o022, cache, args, "")
}

fn os<S: AsRef<OsStr> + ?Sized>(s: &S) -> &OsStr {
    s.as_ref()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_ok(out: &Output, what: &str) {
    assert!(out.status.success(), "{what}: {}", stderr(out));
}

/// Fails with exactly one error line containing every one of `expect`.
fn assert_refused(out: &Output, what: &str, expect: &[&str]) -> String {
    let err = stderr(out);
    assert!(!out.status.success(), "{what}: succeeded; stderr: {err}");
    assert_eq!(err.lines().count(), 1, "{what}: one line expected: {err}");
    for part in expect {
        assert!(err.contains(part), "{what}: {part:?} missing from {err}");
    }
    err
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("list") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

fn names(dir: &Path) -> BTreeSet<String> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => BTreeSet::new(),
    }
}

/// A BF16 GGUF named as `glm convert` names it, for `quantize`.
fn bf16_model(into: &Path) -> PathBuf {
    let path = into.join("glm-tiny-BF16.gguf");
    std::fs::copy(converted("glm-tiny", "bf16"), &path).expect("copy model");
    path
}

#[test]
fn every_output_gets_the_mode_of_a_new_file() {
    let model = converted("glm-tiny", "q8_0");
    let work = tempfile::tempdir().expect("temp dir");
    let bf16 = bf16_model(work.path());
    for umask in [0o022, 0o077, 0o027] {
        let out = work.path().join(format!("out-{umask:o}"));
        let cache = out.join("cache");
        std::fs::create_dir_all(&out).expect("mkdir");
        // An existing file of another mode, replaced with --force.
        let replaced = out.join("replaced.gguf");
        std::fs::write(&replaced, "old").expect("write");
        std::fs::set_permissions(&replaced, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let save = out.join("saved.json");
        let (dense, vision) = (model_dir("glm-tiny"), model_dir("glm45v-tiny"));
        let runs: Vec<(Vec<&OsStr>, String)> = vec![
            (
                vec![
                    os("convert"),
                    dense.as_os_str(),
                    os("-o"),
                    replaced.as_os_str(),
                    os("--force"),
                ],
                String::new(),
            ),
            (
                vec![os("convert"), vision.as_os_str(), os("-o"), out.as_os_str()],
                String::new(),
            ),
            (
                vec![
                    os("quantize"),
                    bf16.as_os_str(),
                    out.as_os_str(),
                    os("--quant"),
                    os("q8_0"),
                ],
                String::new(),
            ),
            (
                vec![
                    os("logits"),
                    model.as_os_str(),
                    os("--tokens"),
                    os("1,2,3"),
                    os("-o"),
                    out.as_os_str(),
                ],
                String::new(),
            ),
            (
                vec![os("chat"), model.as_os_str()],
                format!("/save {}\n", save.display()),
            ),
            (
                vec![os("run"), vision.as_os_str(), os("-p"), os("hi"), os("-n"), os("1")],
                String::new(),
            ),
        ];
        for (args, stdin) in &runs {
            let result = glm_umask(umask, &cache, args, stdin);
            assert_ok(&result, &format!("umask {umask:o}: {args:?}"));
        }
        let written: BTreeSet<String> = files_under(&out)
            .iter()
            .map(|p| p.strip_prefix(&out).expect("under out").display().to_string())
            .collect();
        let expected = [
            "replaced.gguf",
            "glm45v-tiny-BF16.gguf",
            "glm45v-tiny-mmproj-F16.gguf",
            "glm-tiny-Q8_0.gguf",
            "logits.json",
            "saved.json",
        ];
        for name in expected {
            assert!(
                written.contains(name),
                "umask {umask:o}: {name} missing from {written:?}"
            );
        }
        let cached = written.iter().filter(|n| n.starts_with("cache/")).count();
        assert_eq!(cached, 3, "model, projector and sidecar in the cache: {written:?}");
        for file in files_under(&out) {
            assert_eq!(
                mode(&file),
                0o666 & !umask,
                "umask {umask:o}: {} has mode {:o}",
                file.display(),
                mode(&file)
            );
        }
    }
}

#[test]
fn outputs_never_replace_inputs_or_existing_files_unasked() {
    let work = tempfile::tempdir().expect("temp dir");
    let cache = work.path().join("cache");
    let ckpt = fixture_copy("glm-tiny", work.path());
    let model = bf16_model(work.path());
    let existing = work.path().join("existing.gguf");
    std::fs::write(&existing, "keep me").expect("write");
    let hard = work.path().join("hard.gguf");
    std::fs::hard_link(&model, &hard).expect("hard link");
    let soft = work.path().join("soft.gguf");
    std::os::unix::fs::symlink(&model, &soft).expect("symlink");
    let soft_config = work.path().join("config-link.json");
    std::os::unix::fs::symlink(ckpt.join("config.json"), &soft_config).expect("symlink");
    let config_before = std::fs::read(ckpt.join("config.json")).expect("read");
    let model_before = std::fs::read(&model).expect("read");

    let convert = |output: &Path, force: bool| {
        let mut args = vec![os("convert"), ckpt.as_os_str(), os("-o"), output.as_os_str()];
        args.extend(force.then(|| os("--force")));
        glm(&cache, &args)
    };
    let quantize = |output: &Path, force: bool| {
        let mut args = vec![
            os("quantize"),
            model.as_os_str(),
            output.as_os_str(),
            os("--quant"),
            os("q8_0"),
        ];
        args.extend(force.then(|| os("--force")));
        glm(&cache, &args)
    };
    let logits = |output: &Path, force: bool| {
        let mut args = vec![
            os("logits"),
            model.as_os_str(),
            os("--tokens"),
            os("1,2"),
            os("-o"),
            output.as_os_str(),
        ];
        args.extend(force.then(|| os("--force")));
        glm(&cache, &args)
    };
    for (name, run) in [
        ("convert", &convert as &dyn Fn(&Path, bool) -> Output),
        ("quantize", &quantize),
        ("logits", &logits),
    ] {
        assert_refused(&run(&existing, false), name, &["existing.gguf", "--force"]);
        assert_eq!(std::fs::read(&existing).expect("read"), b"keep me", "{name}");
    }
    for output in [ckpt.join("config.json"), soft_config.clone()] {
        assert_refused(&convert(&output, true), "convert onto its input", &["is an input"]);
    }
    for output in [&model, &hard, &soft] {
        assert_refused(&quantize(output, true), "quantize onto its input", &["is an input"]);
        assert_refused(&logits(output, true), "logits onto its model", &["is an input"]);
    }
    assert_eq!(std::fs::read(ckpt.join("config.json")).expect("read"), config_before);
    assert_eq!(std::fs::read(&model).expect("read"), model_before);
    assert!(std::fs::symlink_metadata(&soft).expect("link").file_type().is_symlink());

    assert_ok(&convert(&existing, true), "convert --force");
    assert_eq!(&std::fs::read(&existing).expect("read")[..4], b"GGUF");
    assert_ok(&quantize(&existing, true), "quantize --force");
    assert_ok(&logits(&existing, true), "logits --force");
    assert_eq!(read_json(&existing)["tokens"], serde_json::json!([1, 2]));
}

#[test]
fn a_folder_output_gets_the_default_name() {
    let work = tempfile::tempdir().expect("temp dir");
    let cache = work.path().join("cache");
    let model = bf16_model(work.path());
    let ckpt = model_dir("glm-tiny");
    for (i, slash) in ["", "/"].into_iter().enumerate() {
        let dir = work.path().join(format!("out{i}"));
        std::fs::create_dir(&dir).expect("mkdir");
        let named = PathBuf::from(format!("{}{slash}", dir.display()));
        let runs: [Vec<&OsStr>; 3] = [
            vec![
                os("convert"),
                ckpt.as_os_str(),
                os("--quant"),
                os("f16"),
                os("-o"),
                named.as_os_str(),
            ],
            vec![
                os("quantize"),
                model.as_os_str(),
                named.as_os_str(),
                os("--quant"),
                os("q8_0"),
            ],
            vec![
                os("logits"),
                model.as_os_str(),
                os("--tokens"),
                os("1,2"),
                os("-o"),
                named.as_os_str(),
            ],
        ];
        for args in &runs {
            assert_ok(&glm(&cache, args), &format!("{args:?}"));
        }
        let expected: BTreeSet<String> = ["glm-tiny-F16.gguf", "glm-tiny-Q8_0.gguf", "logits.json"]
            .map(String::from)
            .into();
        assert_eq!(names(&dir), expected, "-o {}", named.display());
        assert_eq!(
            &std::fs::read(dir.join("glm-tiny-Q8_0.gguf")).expect("read")[..4],
            b"GGUF"
        );
    }
    let missing = PathBuf::from(format!("{}/", work.path().join("nope").display()));
    let runs: [Vec<&OsStr>; 3] = [
        vec![os("convert"), ckpt.as_os_str(), os("-o"), missing.as_os_str()],
        vec![
            os("quantize"),
            model.as_os_str(),
            missing.as_os_str(),
            os("--quant"),
            os("q8_0"),
        ],
        vec![
            os("logits"),
            model.as_os_str(),
            os("--tokens"),
            os("1"),
            os("-o"),
            missing.as_os_str(),
        ],
    ];
    for args in &runs {
        let shown = missing.display().to_string();
        assert_refused(&glm(&cache, args), &format!("{args:?}"), &[&shown, "no such folder"]);
    }
    assert!(!work.path().join("nope").exists());
}

#[test]
fn logits_to_standard_output_match_the_file() {
    let work = tempfile::tempdir().expect("temp dir");
    let cache = work.path().join("cache");
    let model = converted("glm-tiny", "q8_0");
    let file = work.path().join("logits.json");
    let base = [
        os("logits"),
        model.as_os_str(),
        os("--tokens"),
        os("5,6,7"),
        os("--all"),
        os("-o"),
    ];
    assert_ok(&glm(&cache, &[&base[..], &[file.as_os_str()]].concat()), "to a file");
    let existing = work.path().join("-");
    let out = Command::new(glm_path())
        .args(base)
        .args(["-", "--force"])
        .current_dir(work.path())
        .env("GLM_CACHE_DIR", &cache)
        .output()
        .expect("run glm");
    assert_ok(&out, "to stdout");
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert_eq!(printed, read_json(&file));
    assert!(!existing.exists(), "no file named '-'");

    // A reader that has gone away is no error.
    let mut child = Command::new(glm_path())
        .args(base)
        .arg("-")
        .env("GLM_CACHE_DIR", &cache)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn glm");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "closed stdout: {}", stderr(&out));
    assert!(!stderr(&out).contains("error"), "{}", stderr(&out));
}

/// Rewrites a file with the same bytes and a later modification time, as an editor or
/// a fresh download would.
fn touch(path: &Path) {
    let bytes = std::fs::read(path).expect("read");
    std::fs::write(path, bytes).expect("write");
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
    let file = std::fs::File::options().write(true).open(path).expect("open");
    file.set_modified(later).expect("set mtime");
}

fn run_folder(cache: &Path, folder: &Path, quant: Option<&str>) -> Output {
    let mut args = vec![os("run"), folder.as_os_str(), os("-p"), os("hi"), os("-n"), os("1")];
    if let Some(quant) = quant {
        args.extend([os("--quant"), os(quant)]);
    }
    let out = glm(cache, &args);
    assert_ok(&out, &format!("run {} {quant:?}", folder.display()));
    out
}

#[test]
fn a_changed_checkpoint_replaces_its_cached_conversions() {
    let work = tempfile::tempdir().expect("temp dir");
    let cache = work.path().join("cache");
    let vision = fixture_copy("glm45v-tiny", work.path());
    let other = fixture_copy("glm-tiny", work.path());
    run_folder(&cache, &other, None);
    let other_entry = names(&cache);
    assert_eq!(other_entry.len(), 2, "model and sidecar: {other_entry:?}");

    assert!(stderr(&run_folder(&cache, &vision, None)).contains("converting"));
    let first: BTreeSet<String> = names(&cache).difference(&other_entry).cloned().collect();
    assert_eq!(first.len(), 3, "model, projector, sidecar: {first:?}");
    assert!(first.iter().any(|n| n.ends_with("-BF16.gguf")), "{first:?}");
    assert!(!stderr(&run_folder(&cache, &vision, None)).contains("converting"));
    assert!(stderr(&run_folder(&cache, &vision, Some("q8_0"))).contains("converting"));
    let both: BTreeSet<String> = names(&cache).difference(&other_entry).cloned().collect();
    assert_eq!(both.len(), 6, "a second preset is a second entry: {both:?}");
    assert!(both.iter().any(|n| n.ends_with("-Q8_0.gguf")), "{both:?}");

    touch(&vision.join("config.json"));
    assert!(stderr(&run_folder(&cache, &vision, None)).contains("converting"));
    let after: BTreeSet<String> = names(&cache).difference(&other_entry).cloned().collect();
    assert_eq!(after.len(), 3, "only the new entry is left: {after:?}");
    assert!(after.is_disjoint(&both), "{after:?} vs {both:?}");
    assert!(other_entry.is_subset(&names(&cache)), "another folder's entry stays");
    let sidecar = after.iter().find(|n| n.ends_with(".source.json")).expect("sidecar");
    let record = read_json(&cache.join(sidecar));
    let source = vision.canonicalize().expect("canonical");
    assert_eq!(record["source"], source.to_string_lossy().as_ref());
    assert_eq!(record["preset"], "bf16");
}

#[test]
fn an_incomplete_cache_entry_is_made_again() {
    let work = tempfile::tempdir().expect("temp dir");
    let cache = work.path().join("cache");
    let vision = fixture_copy("glm45v-tiny", work.path());
    run_folder(&cache, &vision, None);
    let entry = names(&cache);
    // As a conversion killed after the model file but before the projector and sidecar.
    for name in entry.iter().filter(|n| !n.ends_with("-BF16.gguf")) {
        std::fs::remove_file(cache.join(name)).expect("remove");
    }
    assert!(stderr(&run_folder(&cache, &vision, None)).contains("converting"));
    assert_eq!(names(&cache), entry);
}

#[test]
fn quant_presets_key_the_cache_and_are_ignored_for_gguf_files() {
    let work = tempfile::tempdir().expect("temp dir");
    let cache = work.path().join("cache");
    let folder = fixture_copy("glm-tiny", work.path());
    let preset = work.path().join("mine.yaml");
    let yaml =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("quant-presets/q8_0.yaml")).expect("preset");
    std::fs::write(&preset, &yaml).expect("write preset");
    let preset_arg = preset.to_string_lossy().into_owned();
    run_folder(&cache, &folder, Some(&preset_arg));
    let first = names(&cache);
    assert!(first.iter().any(|n| n.ends_with("-MINE.gguf")), "{first:?}");
    std::fs::write(&preset, format!("{yaml}\n# edited\n")).expect("edit preset");
    assert!(stderr(&run_folder(&cache, &folder, Some(&preset_arg))).contains("converting"));
    assert_eq!(names(&cache).len(), 4, "an edited preset is a new entry");

    let model = converted("glm-tiny", "q8_0");
    let out = glm(
        &cache,
        &[
            os("run"),
            model.as_os_str(),
            os("--quant"),
            os("q4_0"),
            os("-p"),
            os("hi"),
            os("-n"),
            os("1"),
        ],
    );
    assert_ok(&out, "--quant with a GGUF");
    assert!(
        stderr(&out).contains("warning: --quant q4_0 is ignored"),
        "{}",
        stderr(&out)
    );
}

fn tokenize(cache: &Path, tmp: &Path, model: &Path, text: &str) -> Vec<i32> {
    let mut child = Command::new(glm_path())
        .args([os("tokenize"), model.as_os_str(), os("-")])
        .env("GLM_CACHE_DIR", cache)
        .env("TMPDIR", tmp)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn glm");
    let mut input = child.stdin.take().expect("stdin");
    std::io::Write::write_all(&mut input, text.as_bytes()).expect("write stdin");
    drop(input);
    let out = child.wait_with_output().expect("wait");
    assert_ok(&out, &format!("tokenize {} {text:?}", model.display()));
    serde_json::from_slice(&out.stdout).expect("a JSON list of ids")
}

#[test]
fn tokenize_reads_a_folder_without_converting_it() {
    let work = tempfile::tempdir().expect("temp dir");
    let cache = work.path().join("cache");
    let tmp = work.path().join("tmp");
    std::fs::create_dir(&tmp).expect("mkdir");
    for model in ["glm4moe-tiny", "glm-tiny"] {
        let gguf = converted(model, "bf16");
        let cases = read_json(&tokenization_file(model));
        let cases = cases.as_array().expect("cases");
        for case in cases {
            let text = case["text"].as_str().expect("text");
            let from_folder = tokenize(&cache, &tmp, &model_dir(model), text);
            assert_eq!(from_folder, ids(&case["ids"]), "{model}: {text:?}");
        }
        for text in [
            "Hello world",
            "[gMASK]<sop><|user|>\n你好<|assistant|>",
            "今天天气很好",
            "",
        ] {
            assert_eq!(
                tokenize(&cache, &tmp, &model_dir(model), text),
                tokenize(&cache, &tmp, &gguf, text),
                "{model}: {text:?}"
            );
        }
    }
    assert!(names(&cache).is_empty(), "nothing converted: {:?}", names(&cache));
    assert!(names(&tmp).is_empty(), "no temporary file left: {:?}", names(&tmp));
}

#[test]
fn path_errors_say_each_thing_once() {
    let work = tempfile::tempdir().expect("temp dir");
    let cache = work.path().join("cache");
    let model = bf16_model(work.path());
    let missing = work.path().join("missing.gguf");
    let missing_dir = work.path().join("missing-folder");
    let no_folder = work.path().join("nodir/out.gguf");
    // Root writes into a mode-555 folder; /proc refuses new files to everyone.
    // SAFETY: geteuid has no preconditions.
    let unwritable = if unsafe { libc::geteuid() } == 0 {
        PathBuf::from("/proc/self/out.gguf")
    } else {
        let dir = work.path().join("read-only");
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555)).expect("chmod");
        dir.join("out.gguf")
    };
    let ckpt = model_dir("glm-tiny");
    let q8 = ["--quant", "q8_0"].map(OsStr::new);
    let cases: Vec<(Vec<&OsStr>, &Path)> = vec![
        (vec![os("run"), missing.as_os_str(), os("-p"), os("x")], &missing),
        (vec![os("inspect"), missing.as_os_str()], &missing),
        (vec![os("tokenize"), missing.as_os_str(), os("x")], &missing),
        (
            [&[os("quantize"), missing.as_os_str(), os("out.gguf")][..], &q8].concat(),
            &missing,
        ),
        (vec![os("convert"), missing_dir.as_os_str()], &missing_dir),
        (vec![os("tokenize"), missing_dir.as_os_str(), os("x")], &missing_dir),
        (
            vec![os("convert"), ckpt.as_os_str(), os("-o"), no_folder.as_os_str()],
            &no_folder,
        ),
        (
            [&[os("quantize"), model.as_os_str(), no_folder.as_os_str()][..], &q8].concat(),
            &no_folder,
        ),
        (
            vec![os("convert"), ckpt.as_os_str(), os("-o"), unwritable.as_os_str()],
            &unwritable,
        ),
        (
            [&[os("quantize"), model.as_os_str(), unwritable.as_os_str()][..], &q8].concat(),
            &unwritable,
        ),
        (
            vec![
                os("logits"),
                model.as_os_str(),
                os("--tokens"),
                os("1"),
                os("-o"),
                unwritable.as_os_str(),
            ],
            &unwritable,
        ),
    ];
    for (args, path) in &cases {
        let what = format!("{args:?}");
        let err = assert_refused(&glm(&cache, args), &what, &[]);
        let shown = path.display().to_string();
        assert_eq!(err.matches(shown.as_str()).count(), 1, "{what}: {err}");
        assert!(err.matches("os error").count() <= 1, "{what}: {err}");
        assert!(!err.contains(".partial"), "{what}: {err}");
    }
}

#[test]
fn inspect_explains_a_checkpoint_folder() {
    let folder = model_dir("glm-tiny");
    let cache = tempfile::tempdir().expect("temp dir");
    let err = assert_refused(
        &glm(cache.path(), &[os("inspect"), folder.as_os_str()]),
        "inspect a checkpoint",
        &["a checkpoint folder", "inspect reads GGUF files", "glm convert"],
    );
    assert!(
        !err.contains("not a regular file") && !err.contains("not a GGUF"),
        "{err}"
    );
    let err = assert_refused(
        &glm(cache.path(), &[os("inspect"), cache.path().as_os_str()]),
        "inspect a plain folder",
        &["a folder; inspect reads GGUF files"],
    );
    assert!(!err.contains("checkpoint"), "{err}");
}

#[test]
fn a_vocabulary_only_file_is_no_model() {
    let work = tempfile::tempdir().expect("temp dir");
    let vocabulary = work.path().join("vocabulary.gguf");
    glm_convert::write_vocabulary(&model_dir("glm-tiny"), &vocabulary).expect("write the vocabulary");
    let out = glm(
        &work.path().join("cache"),
        &[os("run"), vocabulary.as_os_str(), os("-p"), os("hi"), os("-n"), os("1")],
    );
    let err = assert_refused(&out, "run a vocabulary-only file", &["vocabulary.gguf"]);
    assert!(!err.contains("panicked"), "{err}");
    let tokens = tokenize(&work.path().join("cache"), work.path(), &vocabulary, "Hello world");
    assert_eq!(tokens, [809, 78, 714]);
}
