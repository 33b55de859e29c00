//! GLM-4.5V-style checkpoints: the text model and the vision projector come out of one
//! conversion, and `glm run --image` feeds images through llama.cpp's libmtmd.

mod common;

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use common::*;

/// A 24-bit BMP (a format llama.cpp's image loader reads) with a colour gradient.
fn write_bmp(path: &Path, width: u32, height: u32) {
    let row = (width * 3).div_ceil(4) * 4;
    let size = 54 + row * height;
    let mut bytes = Vec::with_capacity(size as usize);
    bytes.extend(b"BM");
    bytes.extend(size.to_le_bytes());
    bytes.extend([0u8; 4]);
    bytes.extend(54u32.to_le_bytes());
    bytes.extend(40u32.to_le_bytes());
    bytes.extend((width as i32).to_le_bytes());
    bytes.extend((height as i32).to_le_bytes());
    bytes.extend(1u16.to_le_bytes());
    bytes.extend(24u16.to_le_bytes());
    bytes.extend([0u8; 24]);
    for y in 0..height {
        for x in 0..width {
            bytes.extend([(x * 255 / width) as u8, (y * 255 / height) as u8, 128]);
        }
        bytes.extend(vec![0u8; (row - width * 3) as usize]);
    }
    std::fs::write(path, bytes).expect("write image");
}

/// Converts the fixture once into `dir`: text model + projector.
fn convert(dir: &Path) -> PathBuf {
    let text = dir.join("glm45v-tiny-Q8_0.gguf");
    Command::cargo_bin("glm")
        .expect("glm")
        .arg("convert")
        .arg(model_dir("glm45v-tiny"))
        .args(["--quant", "q8_0", "-o"])
        .arg(&text)
        .assert()
        .success();
    assert!(
        dir.join("glm45v-tiny-mmproj-F16.gguf").is_file(),
        "projector written beside the model"
    );
    text
}

fn run(model: &Path, extra: &[&str]) -> std::process::Output {
    Command::cargo_bin("glm")
        .expect("glm")
        .arg("run")
        .arg(model)
        .args([
            "-p",
            "What is in the picture?",
            "--no-think",
            "--temp",
            "0",
            "-n",
            "8",
            "-t",
            "2",
        ])
        .args(extra)
        .output()
        .expect("run")
}

fn prompt_tokens(out: &std::process::Output) -> usize {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.starts_with("prompt: "))
        .unwrap_or_else(|| panic!("no stats: {stderr}"));
    line["prompt: ".len()..]
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a count")
}

#[test]
fn images_go_through_the_projector() {
    let dir = tempfile::tempdir().expect("temp dir");
    let model = convert(dir.path());
    let image = dir.path().join("gradient.bmp");
    write_bmp(&image, 56, 56);
    let text_only = run(&model, &[]);
    assert!(
        text_only.status.success(),
        "{}",
        String::from_utf8_lossy(&text_only.stderr)
    );
    let one = run(&model, &["--image", image.to_str().expect("path")]);
    assert!(one.status.success(), "{}", String::from_utf8_lossy(&one.stderr));
    let two = run(
        &model,
        &[
            "--image",
            image.to_str().expect("path"),
            "--image",
            image.to_str().expect("path"),
        ],
    );
    assert!(two.status.success(), "{}", String::from_utf8_lossy(&two.stderr));
    let (base, with_one, with_two) = (prompt_tokens(&text_only), prompt_tokens(&one), prompt_tokens(&two));
    assert!(with_one > base, "the image adds tokens: {with_one} vs {base}");
    assert_eq!(with_two - with_one, with_one - base, "each image costs the same");
}

#[test]
fn broken_images_and_missing_projectors_fail_cleanly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let model = convert(dir.path());
    let bad = dir.path().join("broken.png");
    std::fs::write(&bad, b"this is not a png at all").expect("write");
    let out = run(&model, &["--image", bad.to_str().expect("path")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("broken.png"), "{stderr}");
    let missing = run(&model, &["--image", "/nonexistent/cat.jpg"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/cat.jpg"));

    let alone = tempfile::tempdir().expect("temp dir");
    let lonely = alone.path().join("model.gguf");
    std::fs::copy(&model, &lonely).expect("copy");
    let image = alone.path().join("i.bmp");
    write_bmp(&image, 56, 56);
    let out = run(&lonely, &["--image", image.to_str().expect("path")]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no vision projector"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `/image` in `glm chat` attaches an image to the next message; it stays part of the
/// conversation (and of `/save`).
#[test]
fn chat_image_command_attaches_images() {
    let dir = tempfile::tempdir().expect("temp dir");
    let model = convert(dir.path());
    let image = dir.path().join("gradient.bmp");
    write_bmp(&image, 56, 56);
    let saved = dir.path().join("c.json");
    let input = format!(
        "/image {}\nWhat is in the picture?\nAnd its colours?\n/save {}\n",
        image.display(),
        saved.display()
    );
    let out = Command::cargo_bin("glm")
        .expect("glm")
        .arg("chat")
        .arg(&model)
        .args(["--no-think", "--temp", "0", "-n", "6", "-t", "2"])
        .write_stdin(input)
        .output()
        .expect("chat");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let messages = read_json(&saved);
    let first = &messages[0]["content"];
    assert_eq!(first[0]["type"], "image");
    assert_eq!(first[0]["image"], image.display().to_string());
    assert_eq!(first[1]["text"], "What is in the picture?");
    assert_eq!(saved_roles(&saved), ["user", "assistant", "user", "assistant"]);

    let out = Command::cargo_bin("glm")
        .expect("glm")
        .arg("chat")
        .arg(&model)
        .write_stdin("/image /nonexistent/photo.png\n")
        .output()
        .expect("chat");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/photo.png"));
}
