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
