//! Sampling settings from four places, in order: the user's flags, the config file (whose
//! values arrive as flags, marked in `GenerationArgs::from_config`), the defaults the
//! model's authors ship (`general.sampling.*`, written by `glm convert` from
//! `generation_config.json`), and glm's own defaults. Each value remembers where it came
//! from, for `/set` and the run's summary.

use crate::cli::{self, GenerationArgs};
use crate::engine::{Engine, Sampling};

/// Where a sampling value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Flag,
    Config,
    Model,
    Builtin,
}

impl Source {
    pub const fn describe(self) -> &'static str {
        match self {
            Source::Flag => "set",
            Source::Config => "config file",
            Source::Model => "model default",
            Source::Builtin => "glm default",
        }
    }
}

/// One sampling setting: its `/set` name, the model's metadata key, how a value in the
/// file is checked (like the flag's, so a NaN or a huge top-k in a file is ignored), and
/// glm's default.
struct SamplingDefault {
    name: &'static str,
    /// The flag's clap id, as `GenerationArgs::from_config` lists it.
    arg: &'static str,
    key: &'static str,
    check: fn(&str) -> Option<f64>,
    builtin: f64,
}

/// The settings models may give defaults for, in `Sampling` order.
const DEFAULTS: [SamplingDefault; 6] = [
    SamplingDefault {
        name: "temp",
        arg: "temp",
        key: "general.sampling.temp",
        check: |text| cli::temperature(text).ok().map(f64::from),
        builtin: 0.8,
    },
    SamplingDefault {
        name: "top-k",
        arg: "top_k",
        key: "general.sampling.top_k",
        check: |text| {
            text.parse::<i32>()
                .ok()
                .filter(|k| (0..=1 << 24).contains(k))
                .map(f64::from)
        },
        builtin: 40.0,
    },
    SamplingDefault {
        name: "top-p",
        arg: "top_p",
        key: "general.sampling.top_p",
        check: |text| cli::probability(text).ok().map(f64::from),
        builtin: 0.95,
    },
    SamplingDefault {
        name: "min-p",
        arg: "min_p",
        key: "general.sampling.min_p",
        check: |text| cli::probability(text).ok().map(f64::from),
        builtin: 0.05,
    },
    SamplingDefault {
        name: "repeat-penalty",
        arg: "repeat_penalty",
        key: "general.sampling.penalty_repeat",
        check: |text| cli::penalty(text).ok().map(f64::from),
        builtin: 1.0,
    },
    SamplingDefault {
        name: "repeat-last-n",
        arg: "repeat_last_n",
        key: "general.sampling.penalty_last_n",
        check: |text| text.parse::<i32>().ok().filter(|n| *n >= -1).map(f64::from),
        builtin: 64.0,
    },
];

/// Where each of [`DEFAULTS`] came from, by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SamplingSources(Vec<(&'static str, Source)>);

impl SamplingSources {
    pub fn of(&self, name: &str) -> Option<Source> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
    }

    /// After `/set name`, the value is the user's.
    pub fn set_by_user(&mut self, name: &str) {
        if let Some(entry) = self.0.iter_mut().find(|(n, _)| *n == name) {
            entry.1 = Source::Flag;
        }
    }
}

/// The sampling for a run: flags (and the config file) first, then the model's defaults,
/// then glm's.
pub fn sampling(args: &GenerationArgs, engine: &Engine) -> (Sampling, SamplingSources) {
    let flags = [
        args.temp.map(f64::from),
        args.top_k.map(f64::from),
        args.top_p.map(f64::from),
        args.min_p.map(f64::from),
        args.repeat_penalty.map(f64::from),
        args.repeat_last_n.map(f64::from),
    ];
    let (values, sources) = resolve(&flags, &args.from_config, engine);
    let seed = drawn_seed(args.seed.unwrap_or(cli::RANDOM_SEED));
    (with_values(values, seed, args.ignore_eos), SamplingSources(sources))
}

/// A sampling from the [`DEFAULTS`]-ordered values.
fn with_values(values: [f64; 6], seed: u32, ignore_eos: bool) -> Sampling {
    Sampling {
        temperature: values[0] as f32,
        top_k: values[1] as i32,
        top_p: values[2] as f32,
        min_p: values[3] as f32,
        repeat_penalty: values[4] as f32,
        repeat_last_n: values[5] as i32,
        seed,
        ignore_eos,
    }
}

/// The sampling when no flag or config file speaks: the model's defaults, then glm's
/// (`glm serve`, whose requests set their own values on top).
pub fn default_sampling(engine: &Engine) -> Sampling {
    let (values, _) = resolve(&[None; 6], &[], engine);
    with_values(values, fresh_seed(), false)
}

/// Each of [`DEFAULTS`]: the flag's value, else the model's, else glm's.
fn resolve(flags: &[Option<f64>; 6], from_config: &[&str], engine: &Engine) -> ([f64; 6], Vec<(&'static str, Source)>) {
    let mut values = [0.0; 6];
    let mut sources = Vec::new();
    for (i, (flag, default)) in flags.iter().zip(&DEFAULTS).enumerate() {
        let in_file = engine.metadata(default.key).and_then(|text| (default.check)(&text));
        let (value, source) = match (flag, in_file) {
            (Some(v), _) if from_config.contains(&default.arg) => (*v, Source::Config),
            (Some(v), _) => (*v, Source::Flag),
            (None, Some(v)) => (v, Source::Model),
            (None, None) => (default.builtin, Source::Builtin),
        };
        values[i] = value;
        sources.push((default.name, source));
    }
    (values, sources)
}

/// The seed to sample with: `seed` itself, or a fresh one for [`cli::RANDOM_SEED`].
pub fn drawn_seed(seed: u32) -> u32 {
    if seed == cli::RANDOM_SEED {
        fresh_seed()
    } else {
        seed
    }
}

/// A seed from the clock; never [`cli::RANDOM_SEED`], which would read as "random" when
/// a saved seed is given back.
fn fresh_seed() -> u32 {
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() ^ d.as_secs() as u32);
    clock % cli::RANDOM_SEED
}
