//! `glm chat` in a real pseudo-terminal, driven like a person would: commands, tab
//! completion, history written and recalled, Ctrl-C during an answer and at the prompt,
//! Ctrl-D to leave.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use rexpect::session::{spawn_command, PtySession};

const PROMPT: &str = "» ";
const BRACKETED_PASTE_OFF: &str = "\u{1b}[?2004l";

fn start(model: &Path, history: &Path, extra: &[&str]) -> PtySession {
    let mut command = Command::new(env!("CARGO_BIN_EXE_glm"));
    command
        .arg("chat")
        .arg(model)
        .args(["--temp", "0", "-t", "2", "--no-think"])
        .args(extra)
        .env("GLM_HISTORY_FILE", history);
    let mut session = spawn_command(command, Some(30_000)).expect("spawn glm chat in a pty");
    session.exp_string(PROMPT).expect("first prompt");
    session
}

#[test]
fn commands_history_and_exit() {
    let model = converted("glm4moe-tiny", "q8_0");
    let dir = tempfile::tempdir().expect("temp dir");
    let history = dir.path().join("history.txt");

    let mut chat = start(&model, &history, &["-n", "8"]);
    chat.send_line("/help").expect("send");
    chat.exp_string("/regen").expect("help text");
    chat.exp_string(PROMPT).expect("prompt");
    chat.send_line("Hello there").expect("send");
    chat.exp_string(PROMPT).expect("prompt after the answer");
    chat.send_line("/stats").expect("send");
    chat.exp_string("new tokens evaluated").expect("stats");
    chat.exp_string(PROMPT).expect("prompt");
    // Tab completes a command.
    chat.send("/rea\t").expect("send");
    chat.flush().expect("flush");
    chat.exp_string("/reasoning ").expect("completed command");
    chat.send_line("hide").expect("send");
    // The line editor redraws "» " while editing, so only output printed after the
    // command ran proves that the next "» " is a fresh prompt in raw mode.
    chat.exp_string("(reasoning hidden)").expect("command ran");
    chat.exp_string(PROMPT).expect("prompt");
    // Ctrl-C at an empty prompt tells how to leave; Ctrl-D leaves.
    chat.send_control('c').expect("ctrl-c");
    chat.exp_string("Ctrl-D to leave").expect("hint");
    chat.send_control('d').expect("ctrl-d");
    chat.exp_eof().expect("exit");

    let saved = std::fs::read_to_string(&history).expect("history file written");
    for line in ["/help", "Hello there", "/stats", "/reasoning hide"] {
        assert!(saved.contains(line), "history lacks {line:?}:\n{saved}");
    }

    // A new session recalls the history with the up arrow.
    let mut chat = start(&model, &history, &["-n", "8"]);
    chat.send_control('p').expect("previous history entry");
    chat.send_line("").expect("enter");
    chat.exp_string("(reasoning hidden)").expect("the recalled command ran");
    chat.send_control('d').expect("ctrl-d");
    chat.exp_eof().expect("exit");
}

#[test]
fn ctrl_c_stops_an_answer_and_keeps_the_conversation() {
    // A model trained for a long context: the answer below fills a large one.
    let model = converted("glm4moe-tiny", "q8_0");
    let dir = tempfile::tempdir().expect("temp dir");
    let history = dir.path().join("history.txt");
    let file = dir.path().join("c.json");
    // An answer that cannot end by itself before Ctrl-C arrives.
    let mut chat = start(&model, &history, &["-n", "200000", "-c", "100000", "--ignore-eos"]);
    chat.send_line("Tell me a long story").expect("send");
    // The editor turns bracketed paste off as it hands the terminal back: from then on
    // Ctrl-C is a signal meant for the answer, even before its first token.
    chat.exp_string(BRACKETED_PASTE_OFF).expect("line accepted");
    // Usually mid-stream by now; either way the Ctrl-C is this answer's.
    std::thread::sleep(std::time::Duration::from_millis(500));
    chat.send_control('c').expect("ctrl-c");
    chat.exp_string("(interrupted)").expect("interrupted notice");
    chat.exp_string(PROMPT).expect("back at the prompt");
    chat.send_line(&format!("/save {}", file.display())).expect("send");
    chat.exp_string("saved").expect("saved");
    chat.send_control('d').expect("ctrl-d");
    chat.exp_eof().expect("exit");
    assert_eq!(
        saved_roles(&file),
        ["user", "assistant"],
        "the interrupted answer is kept"
    );
}

/// The terminal joins lines ending in `\` as a script does (`tests/chat.rs` checks the
/// piped side with the same text), and `/system` says what it did.
#[test]
fn line_continuation_and_system_prompt_notices() {
    let model = converted("glm4moe-tiny", "q8_0");
    let dir = tempfile::tempdir().expect("temp dir");
    let history = dir.path().join("history.txt");
    let file = dir.path().join("c.json");
    let mut chat = start(&model, &history, &["-n", "4"]);
    chat.send_line("/system Be brief.").expect("send");
    chat.exp_string("(system prompt set)").expect("set notice");
    chat.exp_string(PROMPT).expect("prompt");
    chat.send_line("/system").expect("send");
    chat.exp_string("(system prompt removed)").expect("removed notice");
    chat.exp_string(PROMPT).expect("prompt");
    chat.send_line("first \\").expect("send");
    // rexpect reads the "… " prompt byte by byte; the editor handing the terminal back
    // after each line is plain ASCII.
    chat.exp_string(BRACKETED_PASTE_OFF).expect("first line accepted");
    chat.send_line("second").expect("send");
    chat.exp_string(BRACKETED_PASTE_OFF).expect("message accepted");
    chat.exp_string(PROMPT).expect("prompt after the answer");
    chat.send_line(&format!("/save {}", file.display())).expect("send");
    chat.exp_string("saved").expect("saved");
    chat.send_control('d').expect("ctrl-d");
    chat.exp_eof().expect("exit");
    let saved = read_json(&file);
    assert_eq!(
        saved[0],
        serde_json::json!({"role": "user", "content": "first \nsecond"})
    );
}

/// A long prompt shows its progress, and Ctrl-C during its evaluation stops it and
/// leaves the conversation as it was: the message is not kept.
#[test]
fn ctrl_c_during_prompt_evaluation_keeps_the_conversation_as_it_was() {
    let model = converted("glm4moe-tiny", "q8_0");
    let dir = tempfile::tempdir().expect("temp dir");
    let history = dir.path().join("history.txt");
    let loaded = dir.path().join("long.json");
    let saved = dir.path().join("after.json");
    let words = ["alpha", "beta", "gamma", "delta", "river", "stone", "cloud", "green"];
    let long: Vec<&str> = (0..12_000).map(|i| words[(i * 7 + i / 3) % words.len()]).collect();
    let conversation = serde_json::json!([
        {"role": "user", "content": long.join(" ")},
        {"role": "assistant", "content": "Noted."},
    ]);
    std::fs::write(&loaded, conversation.to_string()).expect("write conversation");
    let mut chat = start(&model, &history, &["-n", "4", "-c", "40960"]);
    chat.send_line(&format!("/load {}", loaded.display())).expect("send");
    chat.exp_string(PROMPT).expect("loaded");
    chat.send_line("And now?").expect("send");
    chat.exp_regex(r"prompt: [0-9]+/[0-9]+ tokens, [0-9.]+ tok/s")
        .expect("a progress line");
    chat.send_control('c').expect("ctrl-c");
    chat.exp_string("(interrupted before the answer").expect("notice");
    chat.exp_string(PROMPT).expect("back at the prompt");
    chat.send_line(&format!("/save {}", saved.display())).expect("send");
    chat.exp_string("saved").expect("saved");
    chat.send_control('d').expect("ctrl-d");
    chat.exp_eof().expect("exit");
    let contents = |path: &Path| -> Vec<String> {
        let messages: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("JSON");
        let messages = messages.as_array().expect("a list").iter();
        messages
            .map(|m| m["content"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(contents(&saved), contents(&loaded), "the interrupted message was kept");
}

/// With stdout redirected to a file, the prompts and the editor's escape codes stay on
/// the terminal and the file gets the answers only.
#[test]
fn redirected_answers_hold_no_prompts_or_escape_codes() {
    let model = converted("glm4moe-tiny", "q8_0");
    let dir = tempfile::tempdir().expect("temp dir");
    let answers = dir.path().join("answers.txt");
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(r#"exec "$0" chat "$1" --temp 0 -t 2 --no-think -n 8 > "$2""#)
        .arg(env!("CARGO_BIN_EXE_glm"))
        .arg(&model)
        .arg(&answers)
        .env("GLM_HISTORY_FILE", dir.path().join("history.txt"));
    let mut chat = spawn_command(command, Some(30_000)).expect("spawn");
    chat.exp_string(PROMPT).expect("the prompt, on the terminal");
    chat.send_line("Hello there").expect("send");
    chat.exp_string(PROMPT).expect("the next prompt");
    chat.send_control('d').expect("ctrl-d");
    chat.exp_eof().expect("exit");
    let written = std::fs::read_to_string(&answers).expect("answers");
    assert!(!written.trim().is_empty(), "no answer in the file");
    assert!(!written.contains('\u{1b}') && !written.contains(PROMPT), "{written:?}");
}

/// `glm run MODEL` without a prompt, at a terminal, is a chat (as `ollama run MODEL`).
#[test]
fn run_without_a_prompt_at_a_terminal_is_a_chat() {
    let model = converted("glm4moe-tiny", "q8_0");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut command = Command::new(env!("CARGO_BIN_EXE_glm"));
    command
        .arg("run")
        .arg(&model)
        .args(["--temp", "0", "-t", "2", "--no-think", "-n", "4"])
        .env("GLM_HISTORY_FILE", dir.path().join("history.txt"));
    let mut chat = spawn_command(command, Some(30_000)).expect("spawn glm run in a pty");
    chat.exp_string(PROMPT).expect("a chat prompt");
    chat.send_line("/show").expect("send");
    chat.exp_string("max-tokens").expect("the chat's settings");
    chat.exp_string("4 (set)").expect("the run flags carried over");
    chat.send_line("/bye").expect("send");
    chat.exp_eof().expect("exit");
}
