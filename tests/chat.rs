//! `glm chat` without a terminal: one turn per line (or `"""` block) from stdin, plain
//! answers on stdout, commands and notices on stderr.

mod common;

use assert_cmd::Command;
use common::*;

fn chat(model: &std::path::Path, extra: &[&str], input: &str) -> std::process::Output {
    Command::cargo_bin("glm")
        .expect("glm binary")
        .arg("chat")
        .arg(model)
        .args(["--temp", "0", "-n", "12", "-t", "2"])
        .args(extra)
        .write_stdin(input)
        .output()
        .expect("run glm chat")
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// (evaluated, reused) prompt tokens from each `/stats`.
fn prompt_stats(stderr: &str) -> Vec<(usize, usize)> {
    stderr
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("prompt: ")?;
            let evaluated = rest.split_whitespace().next()?.parse().ok()?;
            let reused = rest.split('(').nth(1)?.split_whitespace().next()?.parse().ok()?;
            Some((evaluated, reused))
        })
        .collect()
}

#[test]
fn turns_reuse_the_kv_cache() {
    let model = converted("glm4moe-tiny", "q8_0");
    let input = "Hello there\n/stats\nWhat is two plus two?\n/stats\nAnd three?\n/stats\nThanks\n/stats\n";
    let out = chat(&model, &["--no-think"], input);
    assert!(out.status.success(), "{}", stderr(&out));
    let stats = prompt_stats(&stderr(&out));
    assert_eq!(stats.len(), 4, "{}", stderr(&out));
    assert_eq!(stats[0].1, 0, "nothing cached before the first turn");
    for (turn, pair) in stats.windows(2).enumerate() {
        let ((_, before), (evaluated, reused)) = (pair[0], pair[1]);
        assert!(
            reused > before,
            "turn {}: the cache must grow ({reused} <= {before})",
            turn + 2
        );
        // Only the new user message and the re-rendered previous answer are evaluated,
        // never the whole conversation again.
        assert!(evaluated < 48, "turn {}: {evaluated} tokens evaluated", turn + 2);
    }
    let last = stats[3];
    assert!(last.1 > last.0, "most of the prompt comes from the cache: {last:?}");
}

#[test]
fn save_then_load_round_trips_the_conversation() {
    let model = converted("glm-tiny", "q8_0");
    let dir = tempfile::tempdir().expect("temp dir");
    let first = dir.path().join("first.json");
    let second = dir.path().join("second.json");
    let input = format!(
        "/system Answer briefly.\n\"\"\"First line\nsecond line\"\"\"\n/save {}\n",
        first.display()
    );
    let out = chat(&model, &[], &input);
    assert!(out.status.success(), "{}", stderr(&out));
    let saved = read_json(&first);
    let messages = saved.as_array().expect("OpenAI messages");
    assert_eq!(messages.len(), 3);
    assert_eq!(
        messages[0],
        serde_json::json!({"role": "system", "content": "Answer briefly."})
    );
    assert_eq!(messages[1]["content"], "First line\nsecond line");
    assert_eq!(messages[2]["role"], "assistant");
    let out = chat(
        &model,
        &[],
        &format!("/load {}\n/save {}\n", first.display(), second.display()),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(read_json(&second), saved);
}

#[test]
fn regen_replaces_the_last_answer_and_set_changes_sampling() {
    let model = converted("glm-tiny", "q8_0");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("c.json");
    let input = format!("Hi\n/set temp 1.5\n/set seed 7\n/regen\n/save {}\n", file.display());
    let out = chat(&model, &[], &input);
    assert!(out.status.success(), "{}", stderr(&out));
    let messages = read_json(&file);
    assert_eq!(
        messages.as_array().expect("list").len(),
        2,
        "regen replaces, never appends"
    );
    assert_ne!(messages[1]["content"], "", "the regenerated answer is kept");
}

#[test]
fn context_overflow_drops_the_oldest_turns_with_a_notice() {
    let model = converted("glm-tiny", "q8_0");
    // llama.cpp rounds small contexts up to 256 tokens; 16 long turns do not fit.
    let turns: Vec<String> = (0..16)
        .map(|i| format!("turn {i}: the quick brown fox jumps over the lazy dog again and again"))
        .collect();
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("c.json");
    let input = format!("{}\n/save {}\n", turns.join("\n"), file.display());
    let out = chat(&model, &["--ctx-size", "64", "--system", "Be brief."], &input);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("context full: dropped the oldest"), "{err}");
    let messages = read_json(&file);
    let messages = messages.as_array().expect("list");
    assert!(messages.len() < 33, "old turns were dropped: {}", messages.len());
    assert_eq!(
        messages[0]["content"], "Be brief.",
        "the system prompt is never dropped"
    );
    let last_user = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .expect("a user turn");
    assert!(
        last_user["content"].as_str().expect("text").starts_with("turn 15"),
        "generation went on"
    );
    assert_eq!(messages.last().expect("reply")["role"], "assistant");
}

#[test]
fn unknown_commands_and_bad_files_fail_cleanly() {
    let model = converted("glm-tiny", "q8_0");
    let out = chat(&model, &[], "/bogus\n");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("unknown command /bogus"));
    let out = chat(&model, &[], "/load /nonexistent/conversation.json\n");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("/nonexistent/conversation.json"));
}

/// (role, content) of every message of a saved conversation.
fn saved_messages(path: &std::path::Path) -> Vec<(String, serde_json::Value)> {
    read_json(path)
        .as_array()
        .expect("a list of messages")
        .iter()
        .map(|m| (m["role"].as_str().unwrap_or("").to_owned(), m["content"].clone()))
        .collect()
}

fn user_contents(path: &std::path::Path) -> Vec<serde_json::Value> {
    saved_messages(path)
        .into_iter()
        .filter(|(role, _)| role == "user")
        .map(|(_, content)| content)
        .collect()
}

/// A script goes on after a failed command or turn, reports each on stderr, and exits
/// with status 1 at the end.
#[test]
fn scripts_go_on_after_an_error_and_fail_at_the_end() {
    let model = converted("glm-tiny", "q8_0");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("c.json");
    let out = chat(&model, &[], &format!("/bogus\nHello\n/save {}\n", file.display()));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("error: unknown command /bogus"), "{err}");
    assert!(err.contains("1 of the commands and messages"), "{err}");
    assert_eq!(
        saved_roles(&file),
        ["user", "assistant"],
        "the turn after the error ran"
    );
    assert_eq!(user_contents(&file), ["Hello"]);
}

#[test]
fn a_message_that_does_not_fit_is_forgotten() {
    let model = converted("glm-tiny", "q8_0");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("c.json");
    let long = "the quick brown fox jumps over the lazy dog ".repeat(60);
    let input = format!("Hello\n{long}\nShort one\n/save {}\n", file.display());
    let out = chat(&model, &["--ctx-size", "64"], &input);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("does not fit in the context"), "{err}");
    assert_eq!(saved_roles(&file), ["user", "assistant", "user", "assistant"]);
    assert_eq!(
        user_contents(&file),
        ["Hello", "Short one"],
        "the long message is not kept"
    );
}

/// `/tool` and `/regen` that fail leave the conversation as it was: the tool result is
/// not kept, and the reply `/regen` took away comes back.
#[test]
fn failed_tool_and_regen_turns_are_undone() {
    let model = converted("glm-tiny", "q8_0");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("c.json");
    let long = "the quick brown fox jumps over the lazy dog ".repeat(60);
    let input = format!(
        "Hello\n/tool {long}\n/system {long}\n/regen\n/system\n/save {}\n",
        file.display()
    );
    let out = chat(&model, &["--ctx-size", "64"], &input);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.matches("does not fit in the context").count(), 2, "{err}");
    assert!(err.contains("2 of the commands"), "{err}");
    assert_eq!(saved_roles(&file), ["user", "assistant"], "{err}");
}

/// A turn that fails after the oldest messages were dropped to make room (here: a loaded
/// image the text-only model cannot place) puts every message back.
#[test]
fn a_failed_turn_brings_back_the_dropped_messages() {
    let model = converted("glm4moe-tiny", "q8_0");
    let dir = tempfile::tempdir().expect("temp dir");
    let loaded = dir.path().join("loaded.json");
    let saved = dir.path().join("saved.json");
    let mut messages: Vec<serde_json::Value> = (0..24)
        .map(|i| {
            let role = if i % 2 == 0 { "user" } else { "assistant" };
            serde_json::json!({"role": role, "content": format!("message {i}: the quick brown fox jumps over the lazy dog")})
        })
        .collect();
    messages.push(serde_json::json!({"role": "user", "content": [
        {"type": "image", "image": "/nonexistent/photo.png"},
        {"type": "text", "text": "What is this?"}
    ]}));
    messages.push(serde_json::json!({"role": "assistant", "content": "A photo."}));
    std::fs::write(&loaded, serde_json::Value::from(messages).to_string()).expect("write");
    let input = format!("/load {}\nAnd now?\n/save {}\n", loaded.display(), saved.display());
    let out = chat(&model, &["-c", "256", "--no-think"], &input);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("(context full: dropped"), "room was made first: {err}");
    assert!(err.contains("error: "), "{err}");
    assert_eq!(read_json(&saved), read_json(&loaded), "{err}");
}

/// `/image` on a text-only model says why at once, and the chat goes on without it.
#[test]
fn image_without_a_projector_is_refused_at_once() {
    let model = converted("glm4moe-tiny", "q8_0");
    let dir = tempfile::tempdir().expect("temp dir");
    let picture = dir.path().join("picture.png");
    std::fs::write(&picture, b"not read: refused before").expect("write");
    let file = dir.path().join("c.json");
    let input = format!("/image {}\nHello\n/save {}\n", picture.display(), file.display());
    let out = chat(&model, &["--no-think"], &input);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let refusal = err
        .lines()
        .find(|l| l.contains("/image") || l.contains("images"))
        .unwrap_or("");
    assert!(refusal.contains("cannot take images"), "{err}");
    assert!(refusal.contains("no vision projector"), "the reason: {err}");
    assert_eq!(saved_roles(&file), ["user", "assistant"], "{err}");
    assert_eq!(user_contents(&file), ["Hello"], "no image went with the message");
    assert_eq!(
        err.matches("error: ").count(),
        2,
        "refused once, and the summary: {err}"
    );
}

#[test]
fn piped_lines_continue_after_a_backslash_like_at_the_terminal() {
    let model = converted("glm-tiny", "q8_0");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("c.json");
    let input = format!("first \\\nsecond\nthird\n/save {}\n", file.display());
    let out = chat(&model, &[], &input);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(user_contents(&file), ["first \nsecond", "third"]);
}

#[test]
fn exit_quit_and_bye_all_leave() {
    let model = converted("glm-tiny", "q8_0");
    let dir = tempfile::tempdir().expect("temp dir");
    for command in ["exit", "quit", "bye"] {
        let file = dir.path().join(format!("{command}.json"));
        let out = chat(&model, &[], &format!("/{command}\n/save {}\n", file.display()));
        assert!(out.status.success(), "/{command}: {}", stderr(&out));
        assert!(!file.exists(), "/{command} left before /save");
    }
}

#[test]
fn set_refuses_what_the_flags_refuse() {
    let model = converted("glm-tiny", "q8_0");
    let input = "/set top-p 2\n/set temp -1\n/set repeat-penalty 0\n/set top-k 3.5\n/set min-p 0.5\n/show\n";
    let out = chat(&model, &[], input);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for refusal in [
        "error: top-p: 2 is outside 0..=1",
        "error: temp: -1 is outside 0..=100",
        "error: repeat-penalty: must be above 0",
        "error: top-k: \"3.5\" is not a whole number",
        "4 of the commands",
    ] {
        assert!(err.contains(refusal), "{refusal:?} in {err}");
    }
    assert!(err.contains("\ntemp            0 (set)\n"), "unchanged: {err}");
    assert!(err.contains("\nmin-p           0.5 (set)\n"), "{err}");
}

#[test]
fn show_tells_the_model_context_settings_and_prompt() {
    let model = converted("glm4moe-tiny", "q8_0");
    let input = "/show\n/system Be brief.\n/think on\n/reasoning hide\n/show\n/system\n/show\n";
    let out = chat(&model, &["--seed", "5", "-c", "512", "--no-think"], input);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let shows: Vec<&str> = err.split("model          ").skip(1).collect();
    assert_eq!(shows.len(), 3, "{err}");
    let first = shows[0];
    assert!(first.starts_with(&format!(" {} (glm4moe", model.display())), "{first}");
    for line in [
        "context         512 tokens",
        "temp            0 (set)",
        "seed            5 (set)",
        "max-tokens      12 (set)",
        "thinking        off",
        "reasoning       shown",
        "system prompt   (none)",
    ] {
        assert!(first.contains(line), "{line:?} in {first}");
    }
    let top_k = first.lines().find(|l| l.starts_with("top-k")).expect("top-k line");
    assert!(top_k.ends_with("default)"), "{top_k}");
    assert!(shows[1].contains("system prompt   \"Be brief.\""), "{}", shows[1]);
    assert!(shows[1].contains("thinking        on"), "{}", shows[1]);
    assert!(shows[1].contains("reasoning       hidden"), "{}", shows[1]);
    assert!(shows[2].contains("system prompt   (none)"), "removed: {}", shows[2]);
}

#[test]
fn the_seed_is_saved_and_loaded_unless_one_is_chosen() {
    let model = converted("glm-tiny", "q8_0");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("c.json");
    let out = chat(&model, &["--seed", "4321"], &format!("Hi\n/save {}\n", file.display()));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(read_json(&file)[1]["seed"], 4321, "the reply keeps its seed");

    let show_seed = |extra: &[&str]| {
        let out = chat(&model, extra, &format!("/load {}\n/show\n", file.display()));
        assert!(out.status.success(), "{}", stderr(&out));
        let err = stderr(&out);
        err.lines()
            .find(|l| l.starts_with("seed "))
            .map(str::to_owned)
            .unwrap_or(err)
    };
    assert_eq!(show_seed(&[]), "seed            4321 (saved chat)");
    assert_eq!(show_seed(&["--seed", "5"]), "seed            5 (set)", "the flag wins");
}

/// Like `glm run`: when the reader of stdout goes away, the chat ends quietly.
#[test]
fn a_closed_stdout_ends_the_chat_quietly() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let model = converted("glm-tiny", "q8_0");
    let mut child = Command::new(env!("CARGO_BIN_EXE_glm"))
        .arg("chat")
        .arg(&model)
        .args(["--temp", "0", "-n", "12", "-t", "2", "--ignore-eos"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn glm chat");
    drop(child.stdout.take());
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"Hello\nAgain\nOnce more\n").expect("write the script");
    drop(stdin);
    let out = child.wait_with_output().expect("wait");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("error"), "{err}");
}

#[test]
fn tool_results_continue_the_conversation() {
    let model = converted("glm4moe-tiny", "q8_0");
    let dir = tempfile::tempdir().expect("temp dir");
    let tools = dir.path().join("tools.json");
    std::fs::write(
        &tools,
        r#"[{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]"#,
    )
    .expect("tools");
    let file = dir.path().join("c.json");
    let input = format!("Weather in Paris?\n/tool {{\"temp\": 21}}\n/save {}\n", file.display());
    let out = chat(
        &model,
        &["--no-think", "--tools", tools.to_str().expect("path")],
        &input,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(saved_roles(&file), ["user", "assistant", "tool", "assistant"]);
    assert_eq!(read_json(&file)[2]["content"], "{\"temp\":21}");
}

/// Trimming a long loaded conversation to a small context takes a few renders, not one
/// per dropped exchange.
#[test]
fn a_long_saved_conversation_loads_and_trims_quickly() {
    let model = converted("glm4moe-tiny", "q8_0");
    let dir = tempfile::tempdir().expect("temp dir");
    let saved = dir.path().join("long.json");
    let messages: Vec<serde_json::Value> = (0..4000)
        .map(|i| {
            let role = if i % 2 == 0 { "user" } else { "assistant" };
            serde_json::json!({"role": role, "content": format!("message {i} with some words in it")})
        })
        .collect();
    std::fs::write(&saved, serde_json::Value::from(messages).to_string()).expect("write");
    let input = format!("/load {}\nAnd now?\n", saved.display());
    let started = std::time::Instant::now();
    let out = chat(&model, &["-c", "256", "--no-think"], &input);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("(context full: dropped"), "{}", stderr(&out));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "loading took {:?}",
        started.elapsed()
    );
}
