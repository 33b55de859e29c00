//! The parameters `/set` changes, as one table: name, the values it takes, and where
//! it goes. Values are checked with the same parsers and ranges as the command-line
//! flags, so `/set top-k 3.7` is an error, not a silent truncation.

use anyhow::{anyhow, bail, Context, Result};

use super::{notice, ChatState};
use crate::cli::{self, GenerationArgs, MAX_TOP_K};

struct Setting {
    name: &'static str,
    aliases: &'static [&'static str],
    value: Value,
}

/// Where in the chat's state a setting lives.
type Field<T> = for<'a, 'e> fn(&'a mut ChatState<'e>) -> &'a mut T;

/// What a setting holds, how its text is checked, and where it goes.
enum Value {
    Float(fn(&str) -> Result<f32, String>, Field<f32>),
    Integer(i64, i64, Field<i32>),
    Seed(Field<u32>),
    Count(Field<usize>),
}

const SETTINGS: &[Setting] = &[
    Setting {
        name: "temp",
        aliases: &["temperature"],
        value: Value::Float(cli::temperature, |s| &mut s.sampling.temperature),
    },
    Setting {
        name: "top-k",
        aliases: &[],
        value: Value::Integer(0, MAX_TOP_K, |s| &mut s.sampling.top_k),
    },
    Setting {
        name: "top-p",
        aliases: &[],
        value: Value::Float(cli::probability, |s| &mut s.sampling.top_p),
    },
    Setting {
        name: "min-p",
        aliases: &[],
        value: Value::Float(cli::probability, |s| &mut s.sampling.min_p),
    },
    Setting {
        name: "repeat-penalty",
        aliases: &[],
        value: Value::Float(cli::penalty, |s| &mut s.sampling.repeat_penalty),
    },
    Setting {
        name: "repeat-last-n",
        aliases: &[],
        value: Value::Integer(-1, cli::MAX_CTX as i64, |s| &mut s.sampling.repeat_last_n),
    },
    Setting {
        name: "seed",
        aliases: &[],
        value: Value::Seed(|s| &mut s.sampling.seed),
    },
    Setting {
        name: "max-tokens",
        aliases: &[],
        value: Value::Count(|s| &mut s.generation.max_tokens),
    },
];

impl Value {
    /// The current value, as `/set` would take it.
    fn show(&self, state: &mut ChatState) -> String {
        match self {
            Value::Float(_, field) => field(state).to_string(),
            Value::Integer(_, _, field) => field(state).to_string(),
            Value::Seed(field) => field(state).to_string(),
            Value::Count(field) => match *field(state) {
                usize::MAX => "-1 (no limit)".to_owned(),
                count => count.to_string(),
            },
        }
    }

    /// Checks `text` and stores it.
    fn apply(&self, state: &mut ChatState, text: &str) -> Result<()> {
        match self {
            Value::Float(parse, field) => *field(state) = parse(text).map_err(|e| anyhow!(e))?,
            Value::Integer(low, high, field) => *field(state) = integer(text, *low..=*high)?,
            Value::Seed(field) => {
                *field(state) = crate::commands::sampling::drawn_seed(cli::seed(text).map_err(|e| anyhow!(e))?)
            }
            Value::Count(field) => *field(state) = cli::max_tokens(text).map_err(|e| anyhow!(e))?,
        }
        Ok(())
    }
}

/// The names `/help` lists.
pub(super) fn names() -> Vec<&'static str> {
    SETTINGS.iter().map(|s| s.name).collect()
}

const CONFIG: &str = crate::commands::sampling::Source::Config.describe();

/// Where the settings without a model default (seed, max-tokens) came from; the
/// sampling values keep theirs in [`super::super::SamplingSources`].
pub(super) struct OtherSources(Vec<(&'static str, &'static str)>);

impl OtherSources {
    pub(super) fn from_flags(args: &GenerationArgs) -> Self {
        let chosen = args.seed.is_some_and(|seed| seed != cli::RANDOM_SEED);
        let seed = match (chosen, args.from_config.contains(&"seed")) {
            (false, _) => "random",
            (true, true) => CONFIG,
            (true, false) => "set",
        };
        let max_tokens = if args.from_config.contains(&"max_tokens") {
            CONFIG
        } else if Some(args.max_tokens) == default_max_tokens() {
            "glm default"
        } else {
            "set"
        };
        Self(vec![("seed", seed), ("max-tokens", max_tokens)])
    }

    fn of(&self, name: &str) -> Option<&'static str> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
    }

    fn record(&mut self, name: &'static str, source: &'static str) {
        match self.0.iter_mut().find(|(n, _)| *n == name) {
            Some(entry) => entry.1 = source,
            None => self.0.push((name, source)),
        }
    }
}

/// glm's `--max-tokens` default, read from the flag's definition so the two cannot drift.
fn default_max_tokens() -> Option<usize> {
    let command = <GenerationArgs as clap::Args>::augment_args(clap::Command::new("chat"));
    let flag = command.get_arguments().find(|a| a.get_id() == "max_tokens")?;
    flag.get_default_values().first()?.to_str()?.parse().ok()
}

fn source(state: &ChatState, name: &str) -> &'static str {
    state
        .sampling_sources
        .of(name)
        .map(|s| s.describe())
        .or_else(|| state.other_sources.of(name))
        .unwrap_or("glm default")
}

/// One line per setting: its value and where the value came from.
pub(super) fn lines(state: &mut ChatState) -> Vec<String> {
    SETTINGS
        .iter()
        .map(|setting| {
            let value = setting.value.show(state);
            format!("{:<15} {value} ({})", setting.name, source(state, setting.name))
        })
        .collect()
}

/// `/set <param> <value>`; `/set` alone lists the values and where each came from.
pub(super) fn set(state: &mut ChatState, argument: &str) -> Result<()> {
    if argument.trim().is_empty() {
        for line in lines(state) {
            eprintln!("{line}");
        }
        return Ok(());
    }
    let (name, value) = argument
        .split_once(char::is_whitespace)
        .context("usage: /set <param> <value>")?;
    let value = value.trim();
    let Some(setting) = SETTINGS.iter().find(|s| s.name == name || s.aliases.contains(&name)) else {
        bail!("unknown parameter {name:?} ({})", names().join(", "));
    };
    setting.value.apply(state, value).map_err(|e| anyhow!("{name}: {e}"))?;
    state.sampling_sources.set_by_user(setting.name);
    let drawn = setting.name == "seed" && cli::seed(value) == Ok(cli::RANDOM_SEED);
    state
        .other_sources
        .record(setting.name, if drawn { "random" } else { "set" });
    notice(state, &format!("({} = {value})", setting.name));
    Ok(())
}

/// After `/load`: the seed of the saved replies, unless the user chose one.
pub(super) fn restore_seed(state: &mut ChatState, seed: Option<u32>) {
    let chosen = matches!(state.other_sources.of("seed"), Some("set" | CONFIG));
    let Some(seed) = seed.filter(|_| !chosen) else {
        return;
    };
    state.sampling.seed = seed;
    state.other_sources.record("seed", "saved chat");
    notice(state, &format!("(seed = {seed}, from the saved chat)"));
}

fn integer(value: &str, range: std::ops::RangeInclusive<i64>) -> Result<i32> {
    match value.parse::<i64>() {
        Ok(v) if range.contains(&v) => i32::try_from(v).map_err(|e| anyhow!(e)),
        _ => bail!("{value:?} is not a whole number in {}..={}", range.start(), range.end()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_refuse_fractions_and_ranges() {
        assert!(integer("3.7", 0..=10).is_err());
        assert!(integer("11", 0..=10).is_err());
        assert_eq!(integer("-1", -1..=10).unwrap(), -1);
    }

    #[test]
    fn every_setting_is_listed() {
        assert_eq!(names().len(), SETTINGS.len());
        assert!(names().contains(&"max-tokens"));
    }

    /// Whole-number settings accept exactly what their flags accept, at both ends.
    #[test]
    fn integer_settings_take_what_the_flags_take() {
        let flags = <GenerationArgs as clap::Args>::augment_args(clap::Command::new("glm"));
        for setting in SETTINGS {
            let Value::Integer(low, high, _) = setting.value else {
                continue;
            };
            for value in [low - 1, low, high, high + 1] {
                let flag = format!("--{}={value}", setting.name);
                let by_flag = flags.clone().try_get_matches_from(["glm", flag.as_str()]).is_ok();
                let by_set = integer(&value.to_string(), low..=high).is_ok();
                assert_eq!(by_set, by_flag, "{flag}");
            }
        }
    }

    #[test]
    fn seed_and_max_tokens_sources_follow_the_flags() {
        use clap::FromArgMatches;
        let flags = <GenerationArgs as clap::Args>::augment_args(clap::Command::new("glm"));
        let matches = flags.try_get_matches_from(["glm"]).expect("no flags");
        let without_flags = GenerationArgs::from_arg_matches(&matches).expect("defaults");
        assert_eq!(default_max_tokens(), Some(without_flags.max_tokens));
        assert_eq!(
            OtherSources::from_flags(&without_flags).of("max-tokens"),
            Some("glm default")
        );
        let flags = <GenerationArgs as clap::Args>::augment_args(clap::Command::new("glm"));
        let matches = flags
            .try_get_matches_from(["glm", "-n", "7", "--seed", "3"])
            .expect("flags");
        let sources = OtherSources::from_flags(&GenerationArgs::from_arg_matches(&matches).expect("args"));
        assert_eq!(
            (sources.of("max-tokens"), sources.of("seed")),
            (Some("set"), Some("set"))
        );
    }

    #[test]
    fn seed_and_max_tokens_from_the_config_file_say_so() {
        use clap::FromArgMatches;
        let flags = <GenerationArgs as clap::Args>::augment_args(clap::Command::new("glm"));
        let matches = flags
            .try_get_matches_from(["glm", "-n", "7", "--seed", "3"])
            .expect("flags");
        let mut args = GenerationArgs::from_arg_matches(&matches).expect("args");
        args.from_config = vec!["seed"];
        let sources = OtherSources::from_flags(&args);
        assert_eq!(
            (sources.of("max-tokens"), sources.of("seed")),
            (Some("set"), Some("config file"))
        );
    }
}
