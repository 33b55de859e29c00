//! Soak: 200 piped chat turns on a tiny model with a small context, so the oldest turns
//! are dropped again and again. Peak memory must not grow with the number of turns. In a
//! test binary of its own, with one test: peak memory is read with
//! `getrusage(RUSAGE_CHILDREN)`, which covers every child of the process.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use common::*;

/// Runs `glm chat` with `turns` questions and returns (stderr, seconds).
fn chat_turns(model: &Path, turns: usize) -> (String, f64) {
    let input: String = (0..turns)
        .map(|i| format!("Question number {i}: what comes next?\n"))
        .collect();
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_glm"))
        .arg("chat")
        .arg(model)
        .args(["--temp", "0", "-n", "8", "-t", "2", "-c", "128", "--no-think"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn glm chat");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("feed");
    let output = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stderr}");
    (stderr, started.elapsed().as_secs_f64())
}

/// The largest resident set of any child waited for so far, in KiB.
fn children_peak_kib() -> i64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage struct.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) }, 0);
    usage.ru_maxrss
}

#[test]
fn two_hundred_turns_with_many_drops_keep_memory_flat() {
    let model = converted("glm4moe-tiny", "q8_0");
    let (short, short_seconds) = chat_turns(&model, 20);
    let after_short = children_peak_kib();
    let (long, long_seconds) = chat_turns(&model, 200);
    let after_long = children_peak_kib();
    let drops = long.matches("(context full: dropped").count();
    eprintln!(
        "soak: 20 turns peak {after_short} KiB in {short_seconds:.1} s; 200 turns peak {after_long} KiB in {long_seconds:.1} s; {drops} context trims"
    );
    assert!(short.contains("(context full"), "the small context must fill: {short}");
    assert!(drops >= 100, "most turns must trim the context: {drops}");
    // The 200-turn run may not need more than a little above the 20-turn one.
    assert!(
        after_long - after_short < 8 * 1024,
        "peak memory grew from {after_short} KiB to {after_long} KiB"
    );
}
