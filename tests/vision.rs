//! GLM-4.5V-style checkpoints: the text model and the vision projector come out of one
//! conversion, and `glm run --image` feeds images through llama.cpp's libmtmd.

mod common;

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use common::*;

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

/// `glm logits --image`: the last-position logits of `text` with `image`.
fn image_logits(model: &Path, text: &str, image: &Path, extra: &[&str], out_file: &Path) -> Vec<f32> {
    Command::cargo_bin("glm")
        .expect("glm")
        .arg("logits")
        .arg(model)
        .args(["--prompt", text, "--no-think", "-t", "2"])
        .args(extra)
        .arg("--image")
        .arg(image)
        .arg("-o")
        .arg(out_file)
        .arg("--force")
        .assert()
        .success();
    floats(&read_json(out_file)["logits"][0])
}

/// The converted fixture and a 56×56 test image, both in `dir`.
fn converted_with_image(dir: &Path) -> (PathBuf, PathBuf) {
    let model = convert(dir);
    let image = dir.join("gradient.bmp");
    write_bmp(&image, 56, 56);
    (model, image)
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
    let (model, image) = converted_with_image(dir.path());
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
    let (model, image) = converted_with_image(dir.path());
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

/// Image parity: the last-position logits of a prompt with `image.png`, through our F32
/// text model and F32 projector in llama.cpp, against transformers' float32 forward with
/// its own image processor. Measured max |diff| relative to the largest logit: 3.2e-4
/// (GLM-4.5V shaped) and 1.3e-3 (GLM-4.1V shaped), the same top five in both; the
/// tolerance keeps 1.5x headroom over the worst.
const IMAGE_RELATIVE_TOLERANCE: f32 = 2e-3;

fn check_image_logits(model_name: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let model = dir.path().join(format!("{model_name}-F32.gguf"));
    Command::cargo_bin("glm")
        .expect("glm")
        .arg("convert")
        .arg(model_dir(model_name))
        .args(["--quant", "f32", "--mmproj-type", "f32", "-o"])
        .arg(&model)
        .assert()
        .success();
    let reference = reference(model_name);
    let image_case = &reference["image"];
    let text = image_case["messages"][0]["content"][1]["text"]
        .as_str()
        .expect("prompt text");
    let image = model_dir(model_name).join(image_case["image"].as_str().expect("image"));
    let exact = ["--cache-type", "f32", "--flash-attn", "off"];
    let got = image_logits(&model, text, &image, &exact, &dir.path().join("logits.json"));

    let expected = floats(&image_case["last_logits"]);
    assert_eq!(got.len(), expected.len());
    let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = got.iter().zip(&expected).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        diff <= IMAGE_RELATIVE_TOLERANCE * scale,
        "{model_name}: max |diff| {diff} exceeds {IMAGE_RELATIVE_TOLERANCE} x {scale}"
    );
    let top5 = |row: &[f32]| {
        let mut ids: Vec<usize> = (0..row.len()).collect();
        ids.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        ids.truncate(5);
        ids.sort_unstable();
        ids
    };
    let mut expected_top: Vec<usize> = image_case["top5"]
        .as_array()
        .expect("top5")
        .iter()
        .map(|v| v.as_u64().expect("id") as usize)
        .collect();
    expected_top.sort_unstable();
    assert_eq!(top5(&got), expected_top, "{model_name}: same five most likely tokens");
}

#[test]
fn glm45v_image_logits_match_transformers() {
    check_image_logits("glm45v-tiny");
}

/// GLM-4.1V's text model rotates interleaved pairs; llama.cpp's M-RoPE rotates halves, so
/// the converter re-orders q/k rows — an image prompt exercises all three sections.
#[test]
fn glm41v_image_logits_match_transformers() {
    check_image_logits("glm41v-tiny");
}

/// WebP and JPEG are read too; a lossless WebP of the reference image gives exactly the
/// PNG's logits.
#[test]
fn webp_and_jpeg_images_are_read() {
    let dir = tempfile::tempdir().expect("temp dir");
    let model = convert(dir.path());
    let png = model_dir("glm45v-tiny").join("image.png");
    let picture = image::open(&png).expect("decode png").to_rgb8();
    let webp = dir.path().join("image.webp");
    let file = std::fs::File::create(&webp).expect("create");
    image::codecs::webp::WebPEncoder::new_lossless(file)
        .encode(
            picture.as_raw(),
            picture.width(),
            picture.height(),
            image::ExtendedColorType::Rgb8,
        )
        .expect("encode webp");
    let jpeg = dir.path().join("image.jpg");
    picture.save(&jpeg).expect("encode jpeg");
    let logits = |path: &Path| {
        let out_file = dir.path().join(format!(
            "{}.json",
            path.extension().and_then(|e| e.to_str()).unwrap_or("x")
        ));
        image_logits(&model, "What is in this picture?", path, &[], &out_file)
    };
    assert_eq!(logits(&webp), logits(&png), "lossless WebP decodes to the same pixels");
    assert_eq!(logits(&jpeg).len(), logits(&png).len());
}
