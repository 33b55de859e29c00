//! The flags people bring from llama.cpp and ollama: each spelling is checked to do
//! exactly what glm's own does (same output, same tokens), not only to be accepted.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::*;

fn glm(args: &[&str]) -> Output {
    glm_with_stdin(args, None)
}

fn glm_with_stdin(args: &[&str], stdin: Option<&str>) -> Output {
    output_with_stdin(Command::new(env!("CARGO_BIN_EXE_glm")).args(args), stdin)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ok(args: &[&str]) -> Output {
    let out = glm(args);
    assert!(out.status.success(), "glm {args:?} failed: {}", stderr(&out));
    out
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// Greedy answers depend only on the prompt: every way of naming the model and giving
/// the prompt must give the same text.
#[test]
fn model_and_prompt_spellings_give_the_same_answer() {
    let model = converted("glm4moe-tiny", "q8_0");
    let model = path(&model);
    let dir = tempfile::tempdir().expect("temp dir");
    let prompt_file = dir.path().join("prompt.txt");
    std::fs::write(&prompt_file, "Hello there").expect("write prompt");
    let common = ["-n", "12", "--temp", "0", "--no-think", "-t", "2"];
    let answer = |args: &[&str], stdin: Option<&str>| {
        let mut all = vec!["run"];
        all.extend_from_slice(args);
        all.extend_from_slice(&common);
        let out = glm_with_stdin(&all, stdin);
        assert!(out.status.success(), "glm {all:?}: {}", stderr(&out));
        stdout(&out)
    };
    let reference = answer(&[model, "-p", "Hello there"], None);
    assert!(!reference.trim().is_empty(), "no answer");
    let spellings: [(&[&str], Option<&str>); 6] = [
        (&["-m", model, "-p", "Hello there"], None),
        (&[model, "Hello there"], None),
        (&[model, "Hello", "there"], None),
        (&["-m", model, "Hello", "there"], None),
        (&[model, "-f", path(&prompt_file)], None),
        (&[model], Some("Hello there")),
    ];
    for (args, stdin) in spellings {
        assert_eq!(answer(args, stdin), reference, "glm run {args:?} answered differently");
    }
    let other = answer(&[model, "-p", "Something else entirely"], None);
    assert_ne!(
        other, reference,
        "the prompt must matter for this check to mean anything"
    );
}

#[test]
fn llama_cpp_spellings_of_generation_flags() {
    let model = converted("glm4moe-tiny", "q8_0");
    let model = path(&model);
    let base = ["run", model, "-p", "Hi", "--no-think", "-t", "2"];
    let run = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        ok(&args)
    };
    // -s is the seed, as in llama.cpp (it was --system before).
    let seeded = stdout(&run(&["-s", "7", "--temp", "1.5", "-n", "16"]));
    assert_eq!(seeded, stdout(&run(&["--seed", "7", "--temp", "1.5", "-n", "16"])));
    // -sys and --system-prompt are the system prompt.
    let system = stdout(&run(&["-sys", "Answer in French.", "--temp", "0", "-n", "12"]));
    assert_eq!(
        system,
        stdout(&run(&[
            "--system-prompt",
            "Answer in French.",
            "--temp",
            "0",
            "-n",
            "12"
        ]))
    );
    assert_eq!(
        system,
        stdout(&run(&["--system", "Answer in French.", "--temp", "0", "-n", "12"]))
    );
    assert_ne!(
        system,
        stdout(&run(&["--temp", "0", "-n", "12"])),
        "the system prompt must matter"
    );
    // --n-predict is -n.
    let counted = stderr(&run(&["--n-predict", "5", "--temp", "0", "--ignore-eos"]));
    assert!(counted.contains("generation: 5 tokens"), "{counted}");
}

/// `--seed -1` asks for a random seed; `-v` prints the one used, and giving it back
/// repeats the answer.
#[test]
fn a_random_seed_is_printed_with_verbose_and_repeats_the_answer() {
    let model = converted("glm4moe-tiny", "q8_0");
    let model = path(&model);
    let args = [
        "run",
        model,
        "-p",
        "Hi",
        "--no-think",
        "-t",
        "2",
        "--temp",
        "1.5",
        "-n",
        "16",
    ];
    let mut first = args.to_vec();
    first.extend(["--seed", "-1", "-v"]);
    let out = ok(&first);
    let log = stderr(&out);
    let seed = log
        .lines()
        .find_map(|l| l.strip_prefix("seed: "))
        .unwrap_or_else(|| panic!("no seed line in: {log}"));
    // -v also shows llama.cpp's own log.
    assert!(log.contains("llama_context"), "no llama.cpp log with -v");
    let mut again = args.to_vec();
    again.extend(["--seed", seed]);
    assert_eq!(
        stdout(&ok(&again)),
        stdout(&out),
        "seed {seed} did not repeat the answer"
    );
    // Without -v there is neither.
    let quiet = stderr(&ok(&again));
    assert!(!quiet.contains("seed:") && !quiet.contains("llama_context"), "{quiet}");
}

/// `-n -1` generates until the model ends its turn or the context is full; with
/// `--ignore-eos` that is the context, exactly.
#[test]
fn no_token_limit_runs_to_the_end_of_the_context() {
    let model = converted("glm4moe-tiny", "q8_0");
    let out = ok(&[
        "run",
        path(&model),
        "-p",
        "Hi",
        "--no-think",
        "-n",
        "-1",
        "-c",
        "256",
        "--ignore-eos",
        "--temp",
        "0",
        "--no-mtp",
        "-t",
        "2",
    ]);
    let log = stderr(&out);
    let number_after = |label: &str| -> usize {
        let rest = &log[log.find(label).unwrap_or_else(|| panic!("no {label:?} in {log}")) + label.len()..];
        rest.split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .expect("a number")
    };
    let (prompt, generated) = (number_after("prompt: "), number_after("generation: "));
    assert_eq!(prompt + generated, 256, "{log}");
    assert!(log.contains("stopped: context full"), "{log}");
}

/// The thinking switch in all its spellings renders the same prompt tokens, and so do
/// the ways of giving `logits` its prompt.
#[test]
fn thinking_switch_spellings_render_the_same_prompt() {
    let model = converted("glm47flash-tiny", "q8_0");
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("logits.json");
    let tokens = |args: &[&str]| {
        let mut all = vec!["logits", "-o", path(&out), "--force", "-t", "2"];
        all.extend_from_slice(args);
        ok(&all);
        ids(&read_json(&out)["tokens"])
    };
    let model = path(&model);
    let off = tokens(&[model, "-p", "Hi", "--no-think"]);
    assert_eq!(tokens(&[model, "-p", "Hi", "--think=false"]), off);
    assert_eq!(tokens(&[model, "-p", "Hi", "--reasoning-budget", "0"]), off);
    assert_eq!(tokens(&[model, "--prompt", "Hi", "--no-think"]), off);
    assert_eq!(tokens(&["-m", model, "Hi", "--no-think"]), off);
    assert_eq!(tokens(&[model, "Hi", "--no-think"]), off);
    let on = tokens(&[model, "-p", "Hi", "--think"]);
    assert_ne!(
        on, off,
        "thinking must change the prompt for this check to mean anything"
    );
    assert_eq!(tokens(&[model, "-p", "Hi", "--think=true"]), on);
}

/// Where the reasoning goes: stderr (default), nowhere (`--hidethinking`, ollama's
/// spelling), or inline with its tags (`--reasoning-format none`, llama.cpp's).
#[test]
fn reasoning_display_spellings() {
    // This fixture's template opens `<think>` in the prompt, so the whole answer of a
    // few tokens is reasoning.
    let model = converted("glm47flash-tiny", "q8_0");
    let model = path(&model);
    let base = [
        "run", model, "-p", "Hi", "--temp", "0", "-n", "6", "-t", "2", "--no-mtp",
    ];
    let run = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        ok(&args)
    };
    let apart = run(&[]);
    assert!(stdout(&apart).trim().is_empty(), "reasoning leaked to stdout");
    let reasoning = stderr(&apart).lines().next().unwrap_or_default().to_owned();
    assert!(
        !reasoning.is_empty() && !reasoning.starts_with("prompt:"),
        "{}",
        stderr(&apart)
    );
    for hide in ["--hidethinking", "--hide-reasoning"] {
        let hidden = run(&[hide]);
        assert!(stdout(&hidden).trim().is_empty());
        assert!(stderr(&hidden).starts_with("prompt:"), "{hide}: {}", stderr(&hidden));
    }
    let inline = stdout(&run(&["--reasoning-format", "none"]));
    assert_eq!(inline.trim_end(), format!("<think>{reasoning}</think>"));
}

#[test]
fn a_negative_number_is_a_value_for_every_flag() {
    let model = converted("glm4moe-tiny", "q8_0");
    // Each takes -1 as a value (accepted or refused by its own check, never as "unexpected
    // argument" with clap's hint to write `-- -1`).
    for (flag, accepted) in [
        ("--repeat-last-n", true),
        ("--seed", true),
        ("-n", true),
        ("--reasoning-budget", true),
        ("--top-k", false),
        ("-c", false),
        ("-t", false),
        ("--temp", false),
        ("--repeat-penalty", false),
    ] {
        let mut args = vec!["run", path(&model), "-p", "Hi", "-c", "256", flag, "-1"];
        if flag != "-n" {
            args.extend(["-n", "2"]);
        }
        let out = glm(&args);
        let log = stderr(&out);
        assert!(
            !log.contains("-- -1") && !log.contains("unexpected argument"),
            "{flag}: {log}"
        );
        assert_eq!(out.status.success(), accepted, "{flag}: {log}");
    }
}

#[test]
fn help_is_grouped_with_the_prompt_first() {
    let help = stdout(&ok(&["run", "--help"]));
    let position = |heading: &str| {
        help.find(&format!("\n{heading}:\n"))
            .unwrap_or_else(|| panic!("no {heading:?} section in:\n{help}"))
    };
    let order = [
        "Prompt", "Model", "Hardware", "Context", "Sampling", "Output", "Drafting",
    ]
    .map(position);
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "sections out of order: {order:?}"
    );
    let prompt_flag = help.find("-p, --prompt").expect("-p in help");
    assert!(prompt_flag < position("Model"), "-p should be near the top");
}

#[test]
fn settings_that_cannot_work_are_said_before_loading() {
    let model = converted("glm4moe-tiny", "q8_0");
    let model = path(&model);
    // A context below llama.cpp's step is raised, with a notice.
    let log = stderr(&ok(&["run", model, "-p", "Hi", "-n", "2", "-c", "100", "--no-think"]));
    assert!(log.contains("--ctx-size 100 is raised to 256"), "{log}");
    // A prompt longer than the context is an error, not a truncation.
    let long = "word ".repeat(400);
    let out = glm(&["run", model, "-p", &long, "-c", "256", "--no-think"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("the context holds 256"), "{}", stderr(&out));
    // Layers for a GPU on a build without one: a warning, and the run goes on.
    let log = stderr(&ok(&["run", model, "-p", "Hi", "-n", "2", "-ngl", "99", "--no-think"]));
    assert!(log.contains("warning: --gpu-layers has no effect"), "{log}");
    let log = stderr(&ok(&["run", model, "-p", "Hi", "-n", "2", "--no-think"]));
    assert!(!log.contains("warning"), "{log}");
}

/// A reader that goes away (`glm run ... | head -c 1`) ends the run quietly, exit 0.
#[test]
fn a_closed_pipe_ends_run_quietly() {
    use std::io::Read;
    let model = converted("glm4moe-tiny", "q8_0");
    let mut child = Command::new(env!("CARGO_BIN_EXE_glm"))
        .args([
            "run",
            path(&model),
            "-p",
            "Hi",
            "-n",
            "-1",
            "-c",
            "8192",
            "--ignore-eos",
            "--no-think",
            "-t",
            "2",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn glm");
    let mut first = [0u8; 1];
    child
        .stdout
        .take()
        .expect("stdout")
        .read_exact(&mut first)
        .expect("some output");
    // The pipe's read end is dropped above: the next write fails with EPIPE.
    let out = child.wait_with_output().expect("wait");
    let log = stderr(&out);
    assert!(out.status.success(), "{:?}: {log}", out.status);
    assert!(!log.contains("error"), "{log}");
    assert!(log.contains("stopped: output closed"), "{log}");
}
