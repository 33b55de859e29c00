//! The parameters `/set` changes, as one table: name, the values it takes, and where
//! it goes. Values are checked with the same parsers and ranges as the command-line
//! flags, so `/set top-k 3.7` is an error, not a silent truncation.

use anyhow::{anyhow, bail, Context, Result};

use super::{notice, ChatState};
use crate::cli;

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
        value: Value::Integer(0, i32::MAX as i64, |s| &mut s.sampling.top_k),
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
            Value::Count(field) => field(state).to_string(),
        }
    }

    /// Checks `text` and stores it.
    fn apply(&self, state: &mut ChatState, text: &str) -> Result<()> {
        match self {
            Value::Float(parse, field) => *field(state) = parse(text).map_err(|e| anyhow!(e))?,
            Value::Integer(low, high, field) => *field(state) = integer(text, *low..=*high)?,
            Value::Seed(field) => *field(state) = text.parse().with_context(|| format!("{text:?} is not a seed"))?,
            Value::Count(field) => *field(state) = cli::max_tokens(text).map_err(|e| anyhow!(e))?,
        }
        Ok(())
    }
}

/// The names `/help` lists.
pub(super) fn names() -> Vec<&'static str> {
    SETTINGS.iter().map(|s| s.name).collect()
}

/// `/set <param> <value>`; `/set` alone lists the values and where each came from.
pub(super) fn set(state: &mut ChatState, argument: &str) -> Result<()> {
    if argument.trim().is_empty() {
        for setting in SETTINGS {
            let value = setting.value.show(state);
            let source = state
                .sampling_sources
                .of(setting.name)
                .map_or(String::new(), |s| format!(" ({})", s.describe()));
            eprintln!("{:<15} {value}{source}", setting.name);
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
    notice(state, &format!("({} = {value})", setting.name));
    Ok(())
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
}
