//! Continuous batching: jobs decoded together give the text the single-sequence path
//! gives, reuse cached prompt prefixes, and stop, cancel, queue and refuse as asked.

mod common;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::*;
use glm::engine::batch::{BatchOptions, Busy, Job, JobEvent, JobHandle, JobStop, JobSummary, Scheduler, TokenLogprob};
use glm::engine::{ChatSession, ContextOptions, Engine, LoadOptions, Sampling};

const REPLY_TOKENS: usize = 24;

const PROMPTS: [&str; 5] = [
    "Hello there, how are you?",
    "Write a short poem about the sea.",
    "What is the capital of France? Answer briefly.",
    "1 2 3 4 5 6 7 8 9",
    "The quick brown fox jumps over the lazy dog.",
];

fn engine() -> Arc<Engine> {
    static ENGINE: OnceLock<Arc<Engine>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let path = converted("glm4moe-tiny", "q8_0");
            Arc::new(Engine::load(&path, &LoadOptions::default()).expect("load the tiny model"))
        })
        .clone()
}

fn context() -> ContextOptions {
    ContextOptions::with_threads(2)
}

fn scheduler(parallel: u32, queue_limit: usize) -> Scheduler {
    scheduler_with(parallel, queue_limit, context())
}

fn scheduler_with(parallel: u32, queue_limit: usize, context: ContextOptions) -> Scheduler {
    sized_scheduler(parallel, queue_limit, 512, context)
}

/// For tests that hold a sequence with an endless job while they look: the tiny model
/// fills 512 tokens in about 0.1 s, which a busy machine can pause a test for; 64k
/// tokens take it many seconds.
fn roomy_scheduler(parallel: u32, queue_limit: usize) -> Scheduler {
    sized_scheduler(parallel, queue_limit, 65536, context())
}

fn sized_scheduler(parallel: u32, queue_limit: usize, ctx_per_sequence: u32, context: ContextOptions) -> Scheduler {
    let options = BatchOptions {
        parallel,
        ctx_per_sequence,
        queue_limit,
        context,
        projector: None,
    };
    Scheduler::start(engine(), options).expect("start the scheduler")
}

fn job(prompt: &str, max_tokens: usize) -> Job {
    Job {
        prompt: engine().tokenize(prompt),
        images: Vec::new(),
        max_tokens,
        sampling: Sampling::greedy_to_the_end(),
        grammar: None,
        stop: Vec::new(),
        top_logprobs: None,
    }
}

/// The single-sequence reference: a fresh `ChatSession`, greedy.
fn single_sequence(prompt: &[i32], max_tokens: usize) -> String {
    single_sequence_with(prompt, max_tokens, &Sampling::greedy_to_the_end())
}

fn single_sequence_with(prompt: &[i32], max_tokens: usize, sampling: &Sampling) -> String {
    let engine = engine();
    let options = ContextOptions {
        ctx_size: 512,
        ..context()
    };
    let mut session = ChatSession::new(&engine, &options).expect("session");
    let mut text = String::new();
    session
        .respond(prompt, max_tokens, sampling, |piece| {
            text.push_str(piece);
            true
        })
        .expect("reply");
    text
}

#[derive(Debug)]
struct Outcome {
    started: Option<(usize, usize)>,
    text: String,
    logprobs: Vec<TokenLogprob>,
    end: Result<JobSummary, String>,
}

fn collect(mut handle: JobHandle) -> Outcome {
    let mut outcome = Outcome {
        started: None,
        text: String::new(),
        logprobs: Vec::new(),
        end: Err("no end".to_owned()),
    };
    while let Some(event) = handle.events.blocking_recv() {
        match event {
            JobEvent::Started {
                prompt_tokens,
                cached_tokens,
            } => {
                assert!(
                    outcome.started.is_none() && outcome.text.is_empty(),
                    "Started comes first, once"
                );
                outcome.started = Some((prompt_tokens, cached_tokens));
            }
            JobEvent::Text { text, logprobs } => {
                assert!(outcome.started.is_some(), "text after Started");
                outcome.text.push_str(&text);
                outcome.logprobs.extend(logprobs);
            }
            JobEvent::Finished(summary) => {
                outcome.end = Ok(summary);
                break;
            }
            JobEvent::Failed(reason) => {
                outcome.end = Err(reason);
                break;
            }
        }
    }
    outcome
}

fn summary(outcome: &Outcome) -> &JobSummary {
    outcome.end.as_ref().unwrap_or_else(|e| panic!("the job failed: {e}"))
}

fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs every prompt at once in one scheduler and compares each text with the
/// single-sequence reference.
fn check_against_single_sequence(parallel: u32, prompts: &[&str]) {
    check_in(&scheduler(parallel, prompts.len()), prompts);
}

fn check_in(scheduler: &Scheduler, prompts: &[&str]) {
    let handles: Vec<JobHandle> = prompts
        .iter()
        .map(|p| scheduler.submit(job(p, REPLY_TOKENS)).expect("submit"))
        .collect();
    let outcomes: Vec<Outcome> = handles.into_iter().map(collect).collect();
    for (prompt, outcome) in prompts.iter().zip(&outcomes) {
        let summary = summary(outcome);
        assert_eq!(summary.stop, JobStop::MaxTokens);
        assert_eq!(summary.generated_tokens, REPLY_TOKENS);
        let tokens = engine().tokenize(prompt);
        // A queued job may reuse a prefix another prompt left in its sequence.
        assert_eq!(outcome.started.map(|(n, _)| n), Some(tokens.len()));
        assert_eq!(
            outcome.text,
            single_sequence(&tokens, REPLY_TOKENS),
            "prompt {prompt:?}"
        );
    }
    let stats = scheduler.stats();
    assert_eq!(stats.requests_total, prompts.len() as u64);
    assert_eq!(stats.generated_tokens_total, (prompts.len() * REPLY_TOKENS) as u64);
    assert_eq!((stats.running, stats.queued), (0, 0));
}

#[test]
fn four_jobs_at_once_give_the_single_sequence_text() {
    check_against_single_sequence(4, &PROMPTS[..4]);
}

#[test]
fn queued_jobs_beyond_the_sequences_give_the_single_sequence_text() {
    check_against_single_sequence(2, &PROMPTS);
}

#[test]
fn prompts_evaluated_in_chunks_beside_generation_give_the_single_sequence_text() {
    // Eight tokens a step: prompts take several steps, sharing them with sampled tokens.
    let small_batches = ContextOptions {
        batch_size: 8,
        ubatch_size: 8,
        ..context()
    };
    check_in(&scheduler_with(3, 8, small_batches), &PROMPTS);
}

#[test]
fn sampled_jobs_draw_what_the_single_sequence_path_draws() {
    let sampling = Sampling {
        temperature: 0.9,
        top_k: 40,
        top_p: 0.95,
        min_p: 0.05,
        repeat_penalty: 1.1,
        repeat_last_n: 64,
        seed: 1234,
        ignore_eos: true,
    };
    let scheduler = scheduler(3, 4);
    let handles: Vec<JobHandle> = PROMPTS[..3]
        .iter()
        .map(|prompt| {
            let mut sampled = job(prompt, REPLY_TOKENS);
            sampled.sampling = sampling.clone();
            scheduler.submit(sampled).expect("submit")
        })
        .collect();
    for (prompt, handle) in PROMPTS.iter().zip(handles) {
        let tokens = engine().tokenize(prompt);
        let expected = single_sequence_with(&tokens, REPLY_TOKENS, &sampling);
        assert_ne!(
            expected,
            single_sequence(&tokens, REPLY_TOKENS),
            "sampling changes nothing"
        );
        assert_eq!(collect(handle).text, expected, "prompt {prompt:?}");
    }
}

#[test]
fn the_loop_ends_with_the_last_scheduler_and_fails_what_runs() {
    let scheduler = roomy_scheduler(1, 4);
    let clone = scheduler.clone();
    drop(scheduler);
    // The clone keeps the loop going.
    let alive = collect(clone.submit(job(PROMPTS[2], 1)).expect("submit"));
    assert_eq!(summary(&alive).generated_tokens, 1);
    let running = clone.submit(endless(PROMPTS[0])).expect("submit");
    // Behind a job of hundreds of tokens, this one still waits when the clone goes.
    let waiting = clone.submit(endless(PROMPTS[1])).expect("submit");
    drop(clone);
    let reason = collect(waiting).end.expect_err("a queued job outlived the scheduler");
    assert!(reason.contains("shutting down"), "{reason}");
    match collect(running).end {
        Err(reason) => assert!(reason.contains("shutting down"), "{reason}"),
        Ok(summary) => assert_eq!(summary.stop, JobStop::ContextFull, "it ended on its own first"),
    }
}

#[test]
fn a_prompt_extending_an_earlier_one_reuses_its_cache() {
    let scheduler = scheduler(2, 4);
    let first = collect(scheduler.submit(job(PROMPTS[0], REPLY_TOKENS)).expect("submit"));
    summary(&first);
    let text = format!("{}{} And one more question?", PROMPTS[0], first.text);
    let tokens = engine().tokenize(&text);
    let second = collect(scheduler.submit(job(&text, REPLY_TOKENS)).expect("submit"));
    let (prompt_tokens, cached) = second.started.expect("started");
    assert_eq!(prompt_tokens, tokens.len());
    assert!(cached > 0, "no prefix reused");
    assert!(cached < tokens.len());
    assert_eq!(summary(&second).cached_tokens, cached);
    assert_eq!(second.text, single_sequence(&tokens, REPLY_TOKENS));
    // The same prompt again: all but its last token come from the cache.
    let third = collect(scheduler.submit(job(&text, REPLY_TOKENS)).expect("submit"));
    assert_eq!(third.started, Some((tokens.len(), tokens.len() - 1)));
    assert_eq!(third.text, second.text);
}

fn endless(prompt: &str) -> Job {
    job(prompt, 1_000_000)
}

#[test]
fn a_dropped_handle_frees_its_sequence_at_once() {
    let scheduler = roomy_scheduler(1, 4);
    let mut handle = scheduler.submit(endless(PROMPTS[1])).expect("submit");
    while let Some(event) = handle.events.blocking_recv() {
        if matches!(event, JobEvent::Text { .. }) {
            break;
        }
    }
    assert_eq!(scheduler.stats().running, 1);
    drop(handle);
    wait_for("the sequence to be freed", || scheduler.stats().running == 0);
    let room = scheduler.ctx_per_sequence() as u64 - engine().tokenize(PROMPTS[1]).len() as u64;
    assert!(
        scheduler.stats().generated_tokens_total < room,
        "the job ran to the end of its context"
    );
    let next = collect(scheduler.submit(job(PROMPTS[2], 4)).expect("submit"));
    assert_eq!(summary(&next).generated_tokens, 4);
}

#[test]
fn cancel_finishes_the_job_as_cancelled() {
    let scheduler = roomy_scheduler(1, 4);
    let mut handle = scheduler.submit(endless(PROMPTS[1])).expect("submit");
    let waiting = scheduler.submit(job(PROMPTS[2], 4)).expect("submit");
    assert_eq!(scheduler.stats().queued, 1);
    while let Some(event) = handle.events.blocking_recv() {
        if matches!(event, JobEvent::Text { .. }) {
            break;
        }
    }
    handle.cancel();
    let cancelled = loop {
        match handle.events.blocking_recv().expect("an end") {
            JobEvent::Finished(summary) => break summary,
            JobEvent::Text { .. } => {}
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(cancelled.stop, JobStop::Cancelled);
    assert!(cancelled.generated_tokens >= 1);
    let next = collect(waiting);
    assert_eq!(summary(&next).generated_tokens, 4);
}

#[test]
fn a_full_queue_refuses_with_busy() {
    let scheduler = roomy_scheduler(1, 1);
    let _running = scheduler.submit(endless(PROMPTS[0])).expect("first runs");
    let _waiting = scheduler.submit(endless(PROMPTS[1])).expect("second waits");
    match scheduler.submit(job(PROMPTS[2], 4)) {
        Err(busy) => assert_eq!(busy, Busy { queued: 1 }),
        Ok(_) => panic!("a third job was accepted"),
    }
}

#[test]
fn a_stop_string_ends_the_text_before_it() {
    let scheduler = scheduler(2, 4);
    let full = collect(scheduler.submit(job(PROMPTS[4], REPLY_TOKENS)).expect("submit")).text;
    let chars: Vec<(usize, char)> = full.char_indices().collect();
    assert!(chars.len() >= 8, "too little text to cut: {full:?}");
    let (from, to) = (chars[chars.len() / 2].0, chars[chars.len() / 2 + 3].0);
    let stop = full[from..to].to_owned();
    let expected = &full[..full.find(&stop).expect("the stop string is in the text")];
    let mut stopped = job(PROMPTS[4], REPLY_TOKENS);
    stopped.stop = vec!["never appears \u{1}".to_owned(), stop.clone()];
    let outcome = collect(scheduler.submit(stopped).expect("submit"));
    assert_eq!(summary(&outcome).stop, JobStop::StopString(stop));
    assert_eq!(outcome.text, expected);
}

#[test]
fn a_grammar_constrains_the_text_and_a_bad_one_fails_alone() {
    let scheduler = scheduler(3, 4);
    let mut yes_no = job(PROMPTS[2], 10);
    yes_no.grammar = Some(r#"root ::= "yes" | "no""#.to_owned());
    let mut broken = job(PROMPTS[2], 10);
    broken.grammar = Some(r#"root ::= "yes"#.to_owned());
    let other = scheduler.submit(job(PROMPTS[0], REPLY_TOKENS)).expect("submit");
    let yes_no = scheduler.submit(yes_no).expect("submit");
    let broken = collect(scheduler.submit(broken).expect("submit"));
    assert!(broken.end.is_err(), "an invalid grammar was accepted: {broken:?}");
    let yes_no = collect(yes_no);
    assert!(yes_no.text == "yes" || yes_no.text == "no", "{:?}", yes_no.text);
    assert_eq!(summary(&yes_no).stop, JobStop::EndOfTurn);
    let other = collect(other);
    assert_eq!(
        other.text,
        single_sequence(&engine().tokenize(PROMPTS[0]), REPLY_TOKENS)
    );
}

#[test]
fn generation_stops_at_max_tokens_and_at_a_full_context() {
    let scheduler = scheduler(2, 4);
    let n_ctx = scheduler.ctx_per_sequence() as usize;
    assert!(n_ctx >= 512 && n_ctx.is_multiple_of(256), "{n_ctx}");
    let none = collect(scheduler.submit(job(PROMPTS[0], 0)).expect("submit"));
    assert_eq!(
        (summary(&none).stop.clone(), none.text.as_str()),
        (JobStop::MaxTokens, "")
    );
    let long: Vec<i32> = engine().tokenize(&PROMPTS[3].repeat(200))[..n_ctx - 5].to_vec();
    let mut filling = endless("");
    filling.prompt = long.clone();
    let full = collect(scheduler.submit(filling).expect("submit"));
    assert_eq!(summary(&full).stop, JobStop::ContextFull);
    assert_eq!(summary(&full).generated_tokens, 5);
    let mut too_long = endless("");
    too_long.prompt = engine().tokenize(&PROMPTS[3].repeat(200))[..n_ctx].to_vec();
    let refused = collect(scheduler.submit(too_long).expect("submit"));
    let reason = refused.end.expect_err("a prompt as long as the context was accepted");
    assert!(reason.contains(&n_ctx.to_string()), "{reason}");
}

#[test]
fn logprobs_are_log_probabilities_of_the_chosen_and_best_tokens() {
    let scheduler = scheduler(2, 4);
    let mut asked = job(PROMPTS[1], 12);
    asked.top_logprobs = Some(5);
    let outcome = collect(scheduler.submit(asked).expect("submit"));
    assert_eq!(outcome.logprobs.len(), summary(&outcome).generated_tokens);
    for token in &outcome.logprobs {
        assert_eq!(token.top.len(), 5);
        assert!(token.logprob <= 0.0);
        assert!(token.top.windows(2).all(|w| w[0].1 >= w[1].1), "{token:?}");
        assert!(token.top.iter().all(|(_, l)| *l <= 0.0));
        assert_eq!((&token.top[0].0, token.top[0].1), (&token.text, token.logprob));
    }
    let plain = collect(scheduler.submit(job(PROMPTS[1], 12)).expect("submit"));
    assert_eq!(plain.text, outcome.text);
    assert!(plain.logprobs.is_empty());
}

/// A job's sequence is free by the time the job hears it finished: a client that reads
/// `stats` (or sends its next request) right after the answer never finds it busy.
#[test]
fn a_finished_job_has_freed_its_sequence() {
    let scheduler = scheduler(1, 0);
    for round in 0..20 {
        let outcome = collect(scheduler.submit(job("Hello", 2)).expect("submit"));
        assert_eq!(summary(&outcome).generated_tokens, 2);
        assert_eq!(
            scheduler.stats().running,
            0,
            "round {round}: still running after Finished"
        );
        // With no queue, the next job is refused unless the sequence is free already.
        let next = scheduler.submit(job("Hi", 1));
        assert!(next.is_ok(), "round {round}: the sequence was not free");
        collect(next.expect("checked"));
    }
}
