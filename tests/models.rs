//! Models by what users call them: split GGUF sets by their first part, names in the
//! store and the catalogue, Hub repositories (served by a local Hub lookalike), and the
//! store's commands.

mod common;
#[path = "common/hub_server.rs"]
mod hub_server;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use hub_server::{Fault, HubServer, RepoSpec};

fn glm(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_glm"));
    command.args(args);
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("run glm")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// A split set loads through its first part and answers exactly as the whole file.
#[test]
fn a_split_model_runs_from_its_first_part() {
    let whole = converted("glm4moe-tiny", "q8_0");
    let dir = tempfile::tempdir().expect("temp dir");
    let parts = split_gguf(&whole, dir.path(), "tiny-Q8_0", 3);
    let answer = |model: &Path| {
        let out = glm(
            &[
                "run",
                path(model),
                "-p",
                "Hello",
                "-n",
                "12",
                "--temp",
                "0",
                "--no-think",
                "-t",
                "2",
            ],
            &[],
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let expected = answer(&whole);
    assert!(!expected.trim().is_empty());
    assert_eq!(answer(&parts[0]), expected);

    // A missing part is named; nothing reaches llama.cpp.
    std::fs::remove_file(&parts[2]).expect("remove part");
    let out = glm(&["run", path(&parts[0]), "-p", "Hello", "-n", "2"], &[]);
    let log = text(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(log.lines().count(), 1, "{log}");
    assert!(log.contains("tiny-Q8_0-00003-of-00003.gguf"), "{log}");
    // A part of another set is refused.
    std::fs::copy(&parts[1], &parts[2]).expect("copy part");
    let out = glm(&["run", path(&parts[0]), "-p", "Hello", "-n", "2"], &[]);
    assert!(text(&out.stderr).contains("not part 3 of 3"), "{}", text(&out.stderr));
}

/// A user's machine for one test: its own Hugging Face cache, store and folder conversion
/// cache, and (when given) a Hub.
struct Machine {
    dir: tempfile::TempDir,
    endpoint: Option<String>,
}

impl Machine {
    fn new(server: Option<&HubServer>) -> Machine {
        Machine {
            dir: tempfile::tempdir().expect("temp dir"),
            endpoint: server.map(HubServer::endpoint),
        }
    }

    fn hf_cache(&self) -> PathBuf {
        self.dir.path().join("hf").join("hub")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_glm"));
        command
            .args(args)
            .env("HF_HOME", self.dir.path().join("hf"))
            .env("HF_HUB_CACHE", self.hf_cache())
            .env("GLM_MODELS", self.dir.path().join("store"))
            .env("GLM_CACHE_DIR", self.dir.path().join("cache"))
            .env_remove("HF_TOKEN")
            .env_remove("HF_HUB_OFFLINE");
        match &self.endpoint {
            Some(endpoint) => command.env("HF_ENDPOINT", endpoint),
            // Nothing listens there: a test without a Hub fails if glm asks one.
            None => command.env("HF_ENDPOINT", "http://127.0.0.1:9"),
        };
        command
    }

    fn glm(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run glm")
    }

    fn ok(&self, args: &[&str]) -> Output {
        let out = self.glm(args);
        assert!(out.status.success(), "glm {args:?}: {}", text(&out.stderr));
        out
    }

    fn offline(&self, args: &[&str]) -> Output {
        self.command(args).env("HF_HUB_OFFLINE", "1").output().expect("run glm")
    }
}

const GREEDY: [&str; 9] = ["-p", "Hello", "-n", "12", "--temp", "0", "--no-think", "-t", "2"];

/// `glm run MODEL` with the greedy arguments.
fn greedy_answer(machine: &Machine, model: &str) -> String {
    let mut args = vec!["run", model];
    args.extend(GREEDY);
    text(&machine.ok(&args).stdout)
}

fn local_answer(model: &Path) -> String {
    greedy_answer(&Machine::new(None), path(model))
}

/// The acceptance path: a safetensors repository is downloaded, converted, stored and
/// run; the second run needs no network; `glm models` lists it and `rm` removes it.
#[test]
fn a_hub_repository_is_pulled_converted_and_then_runs_offline() {
    let server = HubServer::fixture("zai-org/GLM-Tiny-MoE", "glm4moe-tiny");
    let machine = Machine::new(Some(&server));
    let expected = local_answer(&converted("glm4moe-tiny", "q8_0"));
    assert_eq!(greedy_answer(&machine, "zai-org/GLM-Tiny-MoE:q8_0"), expected);
    let asked = server.request_count();
    let mut args = vec!["run", "zai-org/GLM-Tiny-MoE:q8_0"];
    args.extend(GREEDY);
    let again = machine.offline(&args);
    assert_eq!(text(&again.stdout), expected, "{}", text(&again.stderr));
    assert_eq!(server.request_count(), asked, "the second run asked the Hub");

    let listed = text(&machine.ok(&["models"]).stdout);
    assert!(
        listed.contains("zai-org/GLM-Tiny-MoE:q8_0") && listed.contains("glm4moe"),
        "{listed}"
    );
    let which = text(&machine.ok(&["which", "zai-org/GLM-Tiny-MoE:q8_0"]).stdout);
    assert!(which.starts_with("store: zai-org/GLM-Tiny-MoE:q8_0"), "{which}");
    let removed = text(&machine.ok(&["models", "rm", "zai-org/GLM-Tiny-MoE:q8_0"]).stdout);
    assert!(
        removed.starts_with("removed zai-org/GLM-Tiny-MoE:q8_0 (") && removed.contains("MiB freed"),
        "{removed}"
    );
    assert!(text(&machine.ok(&["models", "--names"]).stdout)
        .lines()
        .all(|l| !l.contains("GLM-Tiny-MoE")));
    // The download stays in the Hugging Face cache: pulling again converts, not downloads.
    let served = server.download_count();
    machine.ok(&["pull", "zai-org/GLM-Tiny-MoE:q8_0"]);
    assert_eq!(server.download_count(), served, "files were downloaded twice");
}

/// A catalogue name stands for its repository; the store then knows it by that name.
#[test]
fn a_catalogue_name_pulls_its_repository() {
    let server = HubServer::fixture("zai-org/GLM-4.7-Flash", "glm47flash-tiny");
    let machine = Machine::new(Some(&server));
    let pulled = text(&machine.ok(&["pull", "glm-4.7-flash:q8_0"]).stdout);
    assert!(pulled.starts_with("glm-4.7-flash:q8_0 → "), "{pulled}");
    let expected = local_answer(&converted("glm47flash-tiny", "q8_0"));
    assert_eq!(greedy_answer(&machine, "glm-4.7-flash"), expected);
    let shown = text(&machine.ok(&["models", "show", "glm-4.7-flash"]).stdout);
    assert!(
        shown.contains("zai-org/GLM-4.7-Flash at main") && shown.contains("deepseek2"),
        "{shown}"
    );
    let which = text(&machine.ok(&["which", "glm-4.5-air"]).stdout);
    assert!(
        which.contains("catalogue: glm-4.5-air → zai-org/GLM-4.5-Air"),
        "{which}"
    );
}

/// A repository of GGUF files is used where the Hugging Face cache keeps it: the file of
/// the preset, all parts of a split set.
#[test]
fn a_gguf_repository_is_used_as_it_is() {
    let q8 = converted("glm4moe-tiny", "q8_0");
    let dir = tempfile::tempdir().expect("temp dir");
    let parts = split_gguf(&converted("glm4moe-tiny", "f16"), dir.path(), "Tiny-F16", 2);
    let read = |p: &Path| std::fs::read(p).expect("read");
    let server = HubServer::start(vec![RepoSpec::new(
        "someone/Tiny-GGUF",
        vec![
            ("Tiny-Q8_0.gguf", read(&q8)),
            ("F16/Tiny-F16-00001-of-00002.gguf", read(&parts[0])),
            ("F16/Tiny-F16-00002-of-00002.gguf", read(&parts[1])),
            ("README.md", b"# tiny".to_vec()),
        ],
    )]);
    let machine = Machine::new(Some(&server));
    assert_eq!(greedy_answer(&machine, "someone/Tiny-GGUF:Q8_0"), local_answer(&q8));
    assert_eq!(
        greedy_answer(&machine, "someone/Tiny-GGUF:f16"),
        local_answer(&converted("glm4moe-tiny", "f16"))
    );
    assert!(
        server.downloads("someone/Tiny-GGUF", "README.md").is_empty(),
        "fetched what is not needed"
    );
    let missing = machine.glm(&["pull", "someone/Tiny-GGUF:q4_k_m"]);
    let log = text(&missing.stderr);
    assert!(log.contains("no GGUF file for Q4_K_M") && log.contains("Q8_0"), "{log}");
    let removed = text(&machine.ok(&["models", "rm", "someone/Tiny-GGUF:q8_0"]).stdout);
    assert!(removed.contains("stay in the Hugging Face cache"), "{removed}");
}

/// Files `huggingface_hub` downloaded are used as they are, offline.
#[test]
fn the_hugging_face_cache_is_shared_with_huggingface_hub() {
    let machine = Machine::new(None);
    let repo = machine.hf_cache().join("models--zai-org--GLM-Tiny");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).expect("mkdir");
    std::fs::create_dir_all(repo.join("blobs")).expect("mkdir");
    for (i, entry) in std::fs::read_dir(model_dir("glm-tiny")).expect("fixture").enumerate() {
        let entry = entry.expect("entry");
        let blob = format!("{i:040x}");
        std::fs::copy(entry.path(), repo.join("blobs").join(&blob)).expect("copy");
        std::os::unix::fs::symlink(format!("../../blobs/{blob}"), snapshot.join(entry.file_name())).expect("link");
    }
    std::fs::create_dir_all(repo.join("refs")).expect("mkdir");
    std::fs::write(repo.join("refs").join("main"), commit).expect("ref");
    let which = text(&machine.ok(&["which", "zai-org/GLM-Tiny"]).stdout);
    assert!(
        which.contains("Hugging Face cache: zai-org/GLM-Tiny at 0123456789"),
        "{which}"
    );
    let mut args = vec!["run", "zai-org/GLM-Tiny:q8_0"];
    args.extend(GREEDY);
    let out = machine.offline(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), local_answer(&converted("glm-tiny", "q8_0")));
}

/// Failures are one line each, naming the repository and what to do.
#[test]
fn hub_failures_are_one_line_each() {
    let server = HubServer::fixture("zai-org/GLM-Tiny", "glm-tiny");
    let machine = Machine::new(Some(&server));
    let line = |out: Output| {
        assert!(!out.status.success());
        let log = text(&out.stderr);
        assert_eq!(log.lines().count(), 1, "{log}");
        log
    };
    let missing = line(machine.glm(&["pull", "zai-org/No-Such-Model"]));
    assert!(
        missing.contains("zai-org/No-Such-Model") && missing.contains("404"),
        "{missing}"
    );
    let offline = line(machine.offline(&["run", "zai-org/GLM-Tiny", "-p", "hi"]));
    assert!(offline.contains("HF_HUB_OFFLINE"), "{offline}");
    server.require_token("secret");
    let gated = line(machine.glm(&["pull", "zai-org/GLM-Tiny"]));
    assert!(
        gated.contains("zai-org/GLM-Tiny") && gated.contains("HF_TOKEN"),
        "{gated}"
    );
    let unknown = line(machine.glm(&["run", "glm-5-ultra", "-p", "hi"]));
    assert!(
        unknown.contains("glm-5-ultra") && unknown.contains("glm-4.7-flash"),
        "{unknown}"
    );
    // With the token, the same pull works.
    let out = machine
        .command(&["pull", "zai-org/GLM-Tiny:q8_0"])
        .env("HF_TOKEN", "secret")
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// A transfer cut short is resumed, and a corrupt file is refused and never used.
#[test]
fn cut_and_corrupt_downloads() {
    let server = HubServer::fixture("zai-org/GLM-Tiny", "glm-tiny");
    server.set_fault("zai-org/GLM-Tiny", "model.safetensors", Fault::CutOnce(100_000));
    let machine = Machine::new(Some(&server));
    machine.ok(&["pull", "zai-org/GLM-Tiny:q8_0"]);
    let transfers = server.downloads("zai-org/GLM-Tiny", "model.safetensors");
    assert!(transfers.len() >= 2, "{transfers:?}");
    let size = server.repo("zai-org/GLM-Tiny").file("model.safetensors").len() as u64;
    assert_eq!(
        server.bytes_served("zai-org/GLM-Tiny", "model.safetensors"),
        size,
        "not resumed"
    );

    let server = HubServer::fixture("zai-org/GLM-Tiny", "glm-tiny");
    server.set_fault("zai-org/GLM-Tiny", "model.safetensors", Fault::Corrupt);
    let machine = Machine::new(Some(&server));
    let out = machine.glm(&["run", "zai-org/GLM-Tiny:q8_0", "-p", "hi"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("does not match"), "{}", text(&out.stderr));
    assert!(text(&machine.ok(&["models", "--names"]).stdout)
        .lines()
        .all(|l| !l.contains("GLM-Tiny")));
}

/// Two pulls of one model at once download each file once and both succeed.
#[test]
fn concurrent_pulls_download_once() {
    let server = HubServer::fixture("zai-org/GLM-Tiny", "glm-tiny");
    server.slow_down(std::time::Duration::from_millis(20));
    let machine = Machine::new(Some(&server));
    let children: Vec<_> = (0..2)
        .map(|_| {
            machine
                .command(&["pull", "zai-org/GLM-Tiny:q8_0"])
                .spawn()
                .expect("spawn")
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().expect("wait");
        assert!(out.status.success());
    }
    for (name, _) in &server.repo("zai-org/GLM-Tiny").files {
        let count = server.downloads("zai-org/GLM-Tiny", name).len();
        assert!(count <= 1, "{name} downloaded {count} times");
    }
    let listed = text(&machine.ok(&["models"]).stdout);
    assert_eq!(
        listed.lines().filter(|l| l.contains("zai-org/GLM-Tiny:q8_0")).count(),
        1,
        "{listed}"
    );
}

/// A vision repository's projector comes with the model (F16 preferred, the others not
/// downloaded), and images go through it as with local files.
#[test]
fn a_vision_repository_brings_its_projector() {
    let dir = tempfile::tempdir().expect("temp dir");
    let local = dir.path().join("V-Q8_0.gguf");
    let convert = Machine::new(None).glm(&[
        "convert",
        path(&model_dir("glm45v-tiny")),
        "--quant",
        "q8_0",
        "-o",
        path(&local),
    ]);
    assert!(convert.status.success(), "{}", text(&convert.stderr));
    let projector = std::fs::read(dir.path().join("glm45v-tiny-mmproj-F16.gguf")).expect("projector");
    let server = HubServer::start(vec![RepoSpec::new(
        "zai-org/Tiny-V-GGUF",
        vec![
            ("Tiny-V-Q8_0.gguf", std::fs::read(&local).expect("model")),
            // Other bytes than the F16 one: the server tells downloads apart by hash.
            ("mmproj-F32.gguf", [projector.as_slice(), b"f32"].concat()),
            ("mmproj-F16.gguf", projector),
        ],
    )]);
    let machine = Machine::new(Some(&server));
    let image = dir.path().join("image.bmp");
    write_bmp(&image, 56, 56);
    let logits = |model: &str, out: &Path| {
        machine.ok(&[
            "logits",
            model,
            "-p",
            "What is this?",
            "--image",
            path(&image),
            "-o",
            path(out),
            "-t",
            "2",
        ]);
        read_json(out)
    };
    let by_name = logits("zai-org/Tiny-V-GGUF:q8_0", &dir.path().join("by-name.json"));
    let by_path = logits(path(&local), &dir.path().join("by-path.json"));
    assert_eq!(by_name, by_path);
    assert!(server.downloads("zai-org/Tiny-V-GGUF", "mmproj-F32.gguf").is_empty());
    let shown = text(&machine.ok(&["models", "show", "zai-org/Tiny-V-GGUF"]).stdout);
    assert!(
        shown.contains("vision projector") && shown.contains("mmproj-F16.gguf"),
        "{shown}"
    );
    // --hf-cache also removes the downloaded files, and says so in the bytes freed.
    let removed = text(
        &machine
            .ok(&["models", "rm", "zai-org/Tiny-V-GGUF", "--hf-cache"])
            .stdout,
    );
    assert!(
        removed.contains("KiB freed") || removed.contains("MiB freed"),
        "{removed}"
    );
    let blobs = machine.hf_cache().join("models--zai-org--Tiny-V-GGUF").join("blobs");
    let left: Vec<_> = std::fs::read_dir(&blobs)
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(left.iter().all(|e| e.file_name().len() != 64), "blobs left: {left:?}");
}

/// `glm models prune` removes conversions made by another glm version and conversions of
/// checkpoint folders that are gone, and keeps the rest.
#[test]
fn prune_removes_what_can_no_longer_be_right() {
    let server = HubServer::fixture("zai-org/GLM-Tiny", "glm-tiny");
    let machine = Machine::new(Some(&server));
    machine.ok(&["pull", "zai-org/GLM-Tiny:q8_0"]);
    machine.ok(&["pull", "zai-org/GLM-Tiny:f16"]);
    let record = machine.dir.path().join("store/zai-org--GLM-Tiny/Q8_0/entry.json");
    let edited = std::fs::read_to_string(&record).expect("entry").replace(
        &format!("\"glm\": \"{}\"", env!("CARGO_PKG_VERSION")),
        "\"glm\": \"0.0.1\"",
    );
    assert!(edited.contains("0.0.1"), "{edited}");
    std::fs::write(&record, edited).expect("write entry");
    let folder = fixture_copy("glm-tiny", machine.dir.path());
    machine.ok(&["run", path(&folder), "-p", "hi", "-n", "2", "--no-think"]);
    std::fs::remove_dir_all(&folder).expect("remove folder");
    let pruned = text(&machine.ok(&["models", "prune"]).stdout);
    assert!(
        pruned.contains("removed zai-org/GLM-Tiny:q8_0 (converted by glm 0.0.1)"),
        "{pruned}"
    );
    assert!(pruned.contains("checkpoint folder changed or is gone"), "{pruned}");
    let listed = text(&machine.ok(&["models"]).stdout);
    assert!(
        !listed.contains("GLM-Tiny:q8_0") && listed.contains("GLM-Tiny:f16"),
        "{listed}"
    );
}
