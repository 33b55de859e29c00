//! `glm run` in a real pseudo-terminal: the prompt-evaluation progress line, Ctrl-C during
//! prompt evaluation and during generation, and escape sequences only where a terminal
//! takes them.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use rexpect::process::wait::WaitStatus;
use rexpect::session::{spawn_command, PtySession};

/// The shell's status for Ctrl-C (128 + SIGINT).
const INTERRUPTED: i32 = 130;

fn start(args: &[&str], env: &[(&str, &str)]) -> PtySession {
    let mut command = Command::new(env!("CARGO_BIN_EXE_glm"));
    command
        .arg("run")
        .args(args)
        .env_remove("NO_COLOR")
        .env("TERM", "xterm");
    for (key, value) in env {
        command.env(key, value);
    }
    spawn_command(command, Some(60_000)).expect("spawn glm run in a pty")
}

fn exit_code(session: &mut PtySession) -> Option<i32> {
    match session.process.wait() {
        Ok(WaitStatus::Exited(_, code)) => Some(code),
        _ => None,
    }
}

/// A prompt file of this many words, in the fixture tokenizer about 2.2 tokens each.
fn long_prompt(dir: &Path, words: usize) -> std::path::PathBuf {
    let vocabulary = ["alpha", "beta", "gamma", "delta", "river", "stone", "cloud", "green"];
    let text: Vec<&str> = (0..words)
        .map(|i| vocabulary[(i * 7 + i / 3) % vocabulary.len()])
        .collect();
    let path = dir.join("prompt.txt");
    std::fs::write(&path, text.join(" ")).expect("write prompt");
    path
}

#[test]
fn a_long_prompt_shows_progress_and_ctrl_c_stops_it() {
    let model = converted("glm4moe-tiny", "q8_0");
    let dir = tempfile::tempdir().expect("temp dir");
    // Tens of seconds of evaluation on one thread: Ctrl-C must not wait for it.
    let prompt = long_prompt(dir.path(), 12_000);
    let args = [
        model.to_str().expect("path"),
        "-f",
        prompt.to_str().expect("path"),
        "--raw",
        "-c",
        "40960",
        "-t",
        "1",
        "-n",
        "4",
    ];
    let mut run = start(&args, &[]);
    run.exp_regex(r"prompt: [0-9]+/[0-9]+ tokens, [0-9.]+ tok/s")
        .expect("a progress line");
    let started = std::time::Instant::now();
    run.send_control('c').expect("ctrl-c");
    run.exp_string("(interrupted during prompt evaluation)")
        .expect("notice");
    run.exp_eof().expect("exit");
    assert!(started.elapsed().as_secs() < 10, "Ctrl-C took {:?}", started.elapsed());
    assert_eq!(exit_code(&mut run), Some(INTERRUPTED));
}

#[test]
fn ctrl_c_during_generation_ends_the_line_and_prints_the_stats() {
    let model = converted("glm4moe-tiny", "q8_0");
    let args = [
        model.to_str().expect("path"),
        "-p",
        "Tell me a long story",
        "-n",
        "-1",
        "-c",
        "65536",
        "--ignore-eos",
        "--no-think",
        "-t",
        "2",
    ];
    let mut run = start(&args, &[]);
    // Let the answer stream for a moment.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    run.send_control('c').expect("ctrl-c");
    let (before, _) = run.exp_regex(r"prompt: [0-9]+ tokens").expect("the stats line");
    assert!(before.ends_with('\n'), "the answer's line was not ended: {before:?}");
    run.exp_string("stopped: interrupted").expect("the reason");
    let tail = run.exp_eof().expect("exit");
    assert!(tail.is_empty() || !tail.contains("error"), "{tail}");
    assert_eq!(exit_code(&mut run), Some(INTERRUPTED));
}

/// Reasoning goes to stderr dimmed on a terminal, but not with NO_COLOR or TERM=dumb.
#[test]
fn escape_codes_follow_the_terminal_conventions() {
    // This fixture's template opens `<think>`: the answer is all reasoning (stderr).
    let model = converted("glm47flash-tiny", "q8_0");
    let args = [
        model.to_str().expect("path"),
        "-p",
        "Hi",
        "--temp",
        "0",
        "-n",
        "6",
        "-t",
        "2",
    ];
    let output = |env: &[(&str, &str)]| {
        let mut run = start(&args, env);
        let text = run.exp_eof().expect("exit");
        assert_eq!(exit_code(&mut run), Some(0), "{text}");
        text
    };
    let styled = output(&[]);
    assert!(
        styled.contains("\u{1b}[2m"),
        "no dim reasoning on a terminal: {styled:?}"
    );
    for env in [[("NO_COLOR", "1")], [("TERM", "dumb")]] {
        let plain = output(&env);
        assert!(!plain.contains('\u{1b}'), "{env:?}: escape codes in {plain:?}");
        assert!(plain.contains("stopped: max tokens"), "{plain}");
    }
}
