//! Models by what users call them: split GGUF sets by their first part, names in the
//! store and the catalogue, Hub repositories (served by a local Hub lookalike), and the
//! store's commands.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;

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
