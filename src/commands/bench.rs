//! `glm bench`: prompt processing (ppN) and generation (tgN) speed with llama-bench's
//! method: random tokens, an empty cache for every run, one warm-up run, then
//! `--repetitions` timed runs reported as mean ± standard deviation of tokens/s. The
//! tokens go through the same session code as `run` and `chat`.

use std::fmt::Write as _;

use anyhow::Result;
use serde_json::json;

use crate::cli::{BenchArgs, BenchFormat};
use crate::engine::{ChatSession, ContextOptions, DraftOptions, Engine, Sampling};

/// One test: `n_prompt` tokens evaluated, or `n_gen` tokens generated.
#[derive(Debug, Clone, Copy)]
struct Test {
    n_prompt: u32,
    n_gen: u32,
}

impl Test {
    fn name(self) -> String {
        if self.n_gen == 0 {
            format!("pp{}", self.n_prompt)
        } else {
            format!("tg{}", self.n_gen)
        }
    }
}

/// Timed runs of one test, in tokens per second.
struct Measured {
    test: Test,
    samples: Vec<f64>,
}

impl Measured {
    fn mean(&self) -> f64 {
        self.samples.iter().sum::<f64>() / self.samples.len().max(1) as f64
    }

    /// Sample standard deviation, as llama-bench reports it.
    fn stddev(&self) -> f64 {
        if self.samples.len() < 2 {
            return 0.0;
        }
        let mean = self.mean();
        let squares: f64 = self.samples.iter().map(|s| (s - mean).powi(2)).sum();
        (squares / (self.samples.len() - 1) as f64).sqrt()
    }
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let tests: Vec<Test> = args
        .n_prompt
        .iter()
        .filter(|&&n| n > 0)
        .map(|&n_prompt| Test { n_prompt, n_gen: 0 })
        .chain(
            args.n_gen
                .iter()
                .filter(|&&n| n > 0)
                .map(|&n_gen| Test { n_prompt: 0, n_gen }),
        )
        .collect();
    if tests.is_empty() {
        anyhow::bail!("nothing to measure: every -p and -n is 0");
    }
    let mut context = super::context_options(&args.model.context, None);
    if args.mtp {
        context.draft = Some(DraftOptions {
            always: true,
            ..DraftOptions::default()
        });
    }
    // Every test gets a context of exactly its size, as llama-bench does.
    let largest = tests.iter().map(|t| t.n_prompt + t.n_gen + 1).max().unwrap_or(16);
    let mut model_args = super::load_options(&args.model.placement, &args.model.context);
    model_args.ctx_size = context.ctx_size.max(largest);
    model_args.load_mtp = args.mtp;
    let path = crate::model_source::resolve(&args.model.model, args.model.quant.as_deref())?;
    super::prepare_backend(&args.model.placement)?;
    if args.model.context.dry_run {
        let mut planned = context.clone();
        planned.ctx_size = model_args.ctx_size;
        println!(
            "{}\n{}",
            path.display(),
            crate::engine::plan(&path, &model_args, &planned)?
        );
        return Ok(());
    }
    let engine = Engine::load(&path, &model_args)?;
    let mut results = Vec::new();
    for test in tests {
        let measured = measure(&engine, &context, test, args.repetitions)?;
        if args.output == BenchFormat::Md && results.is_empty() {
            print!("{}", markdown_header());
        }
        if args.output == BenchFormat::Md {
            print!("{}", markdown_row(&engine, &path, &context, &measured));
        }
        if args.output == BenchFormat::Jsonl {
            println!("{}", record(&engine, &path, &context, &measured));
        }
        results.push(measured);
    }
    match args.output {
        BenchFormat::Json => {
            let records: Vec<_> = results.iter().map(|m| record(&engine, &path, &context, m)).collect();
            println!("{}", serde_json::to_string_pretty(&records)?);
        }
        BenchFormat::Csv => print!("{}", csv(&path, &context, &results)),
        BenchFormat::Md | BenchFormat::Jsonl => {}
    }
    Ok(())
}

/// One warm-up run, then `repetitions` timed ones, each from an empty cache.
fn measure(engine: &Engine, options: &ContextOptions, test: Test, repetitions: u32) -> Result<Measured> {
    let mut options = options.clone();
    options.ctx_size = options.ctx_size.max(test.n_prompt + test.n_gen + 1);
    let mut session = ChatSession::new(engine, &options)?;
    let greedy = Sampling::greedy_to_the_end();
    let tokens = random_tokens(engine.n_vocab(), test.n_prompt.max(1) as usize);
    let mut samples = Vec::new();
    for run in 0..=repetitions {
        session.clear();
        let stats = session.respond(&tokens, test.n_gen as usize, &greedy, |_| true)?;
        if run > 0 {
            samples.push(if test.n_gen == 0 {
                stats.prompt_rate()
            } else {
                stats.generation_rate()
            });
        }
    }
    Ok(Measured { test, samples })
}

/// Token ids spread over the vocabulary (a fixed sequence, so runs are comparable).
fn random_tokens(n_vocab: usize, count: usize) -> Vec<i32> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..count)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 33) % n_vocab.max(1) as u64) as i32
        })
        .collect()
}

fn model_name(path: &std::path::Path) -> String {
    path.file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}

fn markdown_header() -> String {
    "| model | size | params | threads | n_batch | n_ubatch | test | t/s |\n\
     | ----- | ---: | -----: | ------: | ------: | -------: | ---: | --: |\n"
        .to_owned()
}

fn markdown_row(engine: &Engine, path: &std::path::Path, context: &ContextOptions, m: &Measured) -> String {
    let (size, parameters) = engine.size_and_parameters();
    let mut row = String::new();
    let _ = writeln!(
        row,
        "| {} | {:.2} GiB | {:.2} B | {} | {} | {} | {} | {:.2} ± {:.2} |",
        model_name(path),
        size as f64 / (1u64 << 30) as f64,
        parameters as f64 / 1e9,
        context.threads,
        context.batch_size,
        context.ubatch_size,
        m.test.name(),
        m.mean(),
        m.stddev()
    );
    row
}

/// A record with llama-bench's JSON field names, so the two compare directly.
fn record(engine: &Engine, path: &std::path::Path, context: &ContextOptions, m: &Measured) -> serde_json::Value {
    let (size, parameters) = engine.size_and_parameters();
    json!({
        "model_filename": path.display().to_string(),
        "model_type": model_name(path),
        "model_size": size,
        "model_n_params": parameters,
        "n_threads": context.threads,
        "n_batch": context.batch_size,
        "n_ubatch": context.ubatch_size,
        "mtp": context.draft.is_some(),
        "n_prompt": m.test.n_prompt,
        "n_gen": m.test.n_gen,
        "avg_ts": m.mean(),
        "stddev_ts": m.stddev(),
        "samples_ts": m.samples,
    })
}

fn csv(path: &std::path::Path, context: &ContextOptions, results: &[Measured]) -> String {
    let mut out = String::from("model_filename,n_threads,n_batch,n_ubatch,n_prompt,n_gen,avg_ts,stddev_ts\n");
    for m in results {
        let _ = writeln!(
            out,
            "\"{}\",{},{},{},{},{},{:.6},{:.6}",
            path.display().to_string().replace('"', "\"\""),
            context.threads,
            context.batch_size,
            context.ubatch_size,
            m.test.n_prompt,
            m.test.n_gen,
            m.mean(),
            m.stddev()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stddev_is_the_sample_deviation() {
        let m = Measured {
            test: Test { n_prompt: 1, n_gen: 0 },
            samples: vec![2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0],
        };
        assert_eq!(m.mean(), 5.0);
        assert!((m.stddev() - 2.138_089_935).abs() < 1e-6);
    }

    #[test]
    fn tokens_stay_in_the_vocabulary() {
        assert!(random_tokens(100, 1000).iter().all(|&t| (0..100).contains(&t)));
    }
}
