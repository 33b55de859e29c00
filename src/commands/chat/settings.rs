//! The parameters `/set` changes, as one table: name, the values it takes, and where
//! it goes. Values are checked with the same parsers and ranges as the command-line
//! flags, so `/set top-k 3.7` is an error, not a silent truncation.

use anyhow::{anyhow, bail, Context, Result};

use super::{notice, ChatState};
use crate::cli;

struct Setting {
    name: &'static str,
    aliases: &'static [&'static str],
    apply: fn(&mut ChatState, &str) -> Result<()>,
}

const SETTINGS: &[Setting] = &[
    Setting {
        name: "temp",
        aliases: &["temperature"],
        apply: |state, value| {
            state.sampling.temperature = float(cli::temperature, value)?;
            Ok(())
        },
    },
    Setting {
        name: "top-k",
        aliases: &[],
        apply: |state, value| {
            state.sampling.top_k = integer(value, 0..=i64::from(i32::MAX))?;
            Ok(())
        },
    },
    Setting {
        name: "top-p",
        aliases: &[],
        apply: |state, value| {
            state.sampling.top_p = float(cli::probability, value)?;
            Ok(())
        },
    },
    Setting {
        name: "min-p",
        aliases: &[],
        apply: |state, value| {
            state.sampling.min_p = float(cli::probability, value)?;
            Ok(())
        },
    },
    Setting {
        name: "repeat-penalty",
        aliases: &[],
        apply: |state, value| {
            state.sampling.repeat_penalty = float(cli::penalty, value)?;
            Ok(())
        },
    },
    Setting {
        name: "repeat-last-n",
        aliases: &[],
        apply: |state, value| {
            state.sampling.repeat_last_n = integer(value, -1..=i64::from(cli::MAX_CTX))?;
            Ok(())
        },
    },
    Setting {
        name: "seed",
        aliases: &[],
        apply: |state, value| {
            state.sampling.seed = value.parse().with_context(|| format!("{value:?} is not a seed"))?;
            Ok(())
        },
    },
    Setting {
        name: "max-tokens",
        aliases: &[],
        apply: |state, value| {
            state.generation.max_tokens = cli::max_tokens(value).map_err(|e| anyhow!(e))?;
            Ok(())
        },
    },
];

/// The names `/help` lists.
pub(super) fn names() -> Vec<&'static str> {
    SETTINGS.iter().map(|s| s.name).collect()
}

/// `/set <param> <value>`.
pub(super) fn set(state: &mut ChatState, argument: &str) -> Result<()> {
    let (name, value) = argument
        .split_once(char::is_whitespace)
        .context("usage: /set <param> <value>")?;
    let value = value.trim();
    let Some(setting) = SETTINGS.iter().find(|s| s.name == name || s.aliases.contains(&name)) else {
        bail!("unknown parameter {name:?} ({})", names().join(", "));
    };
    (setting.apply)(state, value).map_err(|e| anyhow!("{name}: {e}"))?;
    notice(state, &format!("({name} = {value})"));
    Ok(())
}

fn float(parse: fn(&str) -> Result<f32, String>, value: &str) -> Result<f32> {
    parse(value).map_err(|e| anyhow!(e))
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
