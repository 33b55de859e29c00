//! The user's config file: defaults for the flags of the commands that run a model,
//! top-level and per model. The values become clap default values (see
//! `cli::parse`), so a flag beats them and each goes through the flag's own parser.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Far more than any hand-written config; a larger file is a mistake.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// The commands whose flags the file gives defaults for. `glm convert --quant` is
/// deliberately not among them: `preset` is the preset of conversions for running.
pub const CONFIGURED_COMMANDS: [&str; 4] = ["run", "chat", "logits", "bench"];

/// A file key and the clap argument id it gives a default for.
pub struct Key {
    pub name: &'static str,
    pub arg: &'static str,
    get: fn(&Settings) -> &Option<Scalar>,
}

pub const KEYS: [Key; 14] = [
    Key {
        name: "preset",
        arg: "quant",
        get: |s| &s.preset,
    },
    Key {
        name: "threads",
        arg: "threads",
        get: |s| &s.threads,
    },
    Key {
        name: "gpu_layers",
        arg: "gpu_layers",
        get: |s| &s.gpu_layers,
    },
    Key {
        name: "ctx_size",
        arg: "ctx_size",
        get: |s| &s.ctx_size,
    },
    Key {
        name: "temp",
        arg: "temp",
        get: |s| &s.temp,
    },
    Key {
        name: "top_k",
        arg: "top_k",
        get: |s| &s.top_k,
    },
    Key {
        name: "top_p",
        arg: "top_p",
        get: |s| &s.top_p,
    },
    Key {
        name: "min_p",
        arg: "min_p",
        get: |s| &s.min_p,
    },
    Key {
        name: "repeat_penalty",
        arg: "repeat_penalty",
        get: |s| &s.repeat_penalty,
    },
    Key {
        name: "repeat_last_n",
        arg: "repeat_last_n",
        get: |s| &s.repeat_last_n,
    },
    Key {
        name: "seed",
        arg: "seed",
        get: |s| &s.seed,
    },
    Key {
        name: "max_tokens",
        arg: "max_tokens",
        get: |s| &s.max_tokens,
    },
    Key {
        name: "system_prompt",
        arg: "system",
        get: |s| &s.system_prompt,
    },
    Key {
        name: "think",
        arg: "think",
        get: |s| &s.think,
    },
];

/// One level of the file: the top level, or one model's entry under `models:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    preset: Option<Scalar>,
    threads: Option<Scalar>,
    gpu_layers: Option<Scalar>,
    ctx_size: Option<Scalar>,
    temp: Option<Scalar>,
    top_k: Option<Scalar>,
    top_p: Option<Scalar>,
    min_p: Option<Scalar>,
    repeat_penalty: Option<Scalar>,
    repeat_last_n: Option<Scalar>,
    seed: Option<Scalar>,
    max_tokens: Option<Scalar>,
    system_prompt: Option<Scalar>,
    think: Option<Scalar>,
    /// Only read at the top level; [`Config::load`] refuses it inside a model's entry.
    models: Option<BTreeMap<String, Settings>>,
}

impl Settings {
    /// The keys this level sets, with their values as flag text.
    fn entries(&self) -> impl Iterator<Item = (&'static Key, &str)> {
        KEYS.iter()
            .filter_map(move |key| (key.get)(self).as_ref().map(|value| (key, value.0.as_str())))
    }
}

/// A YAML scalar kept as the text a flag would carry (`0.7`, `auto`, `true`).
#[derive(Debug)]
struct Scalar(String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl serde::de::Visitor<'_> for ScalarVisitor {
    type Value = Scalar;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a number, a text or true/false")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Scalar, E> {
        Ok(Scalar(v.to_string()))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Scalar, E> {
        Ok(Scalar(v.to_string()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Scalar, E> {
        Ok(Scalar(v.to_string()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Scalar, E> {
        Ok(Scalar(v.to_string()))
    }

    fn visit_str<E>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar(v.to_owned()))
    }
}

/// A loaded, checked config file.
#[derive(Debug)]
pub struct Config {
    path: PathBuf,
    settings: Settings,
    /// The file as read, for `glm config show`.
    text: String,
}

/// Where the file is: `GLM_CONFIG`, else `<config dir>/glm/config.yaml`.
pub fn path() -> Option<PathBuf> {
    match std::env::var_os("GLM_CONFIG") {
        Some(path) if !path.is_empty() => Some(PathBuf::from(path)),
        _ => dirs::config_dir().map(|dir| dir.join("glm").join("config.yaml")),
    }
}

impl Config {
    /// The file at [`path`], checked against the flags of `command` (the whole CLI);
    /// `None` when there is no file. Errors are one line naming the file.
    pub fn load(command: &clap::Command) -> Result<Option<Config>, String> {
        let Some(path) = path() else {
            return Ok(None);
        };
        Self::load_from(&path, command)
    }

    pub fn load_from(path: &Path, command: &clap::Command) -> Result<Option<Config>, String> {
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", path.display())),
            Ok(_) => {}
        }
        let text = glm_convert::files::read_text_limited(path, MAX_CONFIG_BYTES).map_err(|e| e.to_string())?;
        let config = Config {
            path: path.to_owned(),
            settings: parse(path, &text)?,
            text,
        };
        config.check(command)?;
        Ok(Some(config))
    }

    /// The file's text as it was checked.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Every value of the file, also those of models not used now, through the flag's
    /// parser: a bad file stops every run, not only the runs of the model it names.
    fn check(&self, command: &clap::Command) -> Result<(), String> {
        let flags = command
            .find_subcommand("run")
            .ok_or("the CLI has no `run` command to check the config file against")?;
        let top = self
            .settings
            .entries()
            .map(|(key, value)| (key.name.to_owned(), key, value));
        let models = self.settings.models.iter().flatten();
        let per_model = models.clone().flat_map(|(model, settings)| {
            settings
                .entries()
                .map(move |(key, value)| (format!("models.{model}.{}", key.name), key, value))
        });
        for (name, key, value) in top.chain(per_model) {
            check_value(flags, key.arg, value)
                .map_err(|reason| format!("{}: {name}: {reason}", self.path.display()))?;
        }
        match models.into_iter().find(|(_, s)| s.models.is_some()) {
            Some((model, _)) => Err(format!(
                "{}: models.{model}.models: a model's entry cannot hold models of its own",
                self.path.display()
            )),
            None => Ok(()),
        }
    }

    /// The defaults for a run of `model` (as typed on the command line): the model's
    /// entry beats the top level. Pairs of clap argument id and flag text.
    pub fn defaults_for(&self, model: Option<&str>) -> Vec<(&'static str, &str)> {
        let entry = model.and_then(|m| self.settings.models.as_ref()?.get(m));
        KEYS.iter()
            .filter_map(|key| {
                let value = entry
                    .and_then(|e| (key.get)(e).as_ref())
                    .or_else(|| (key.get)(&self.settings).as_ref())?;
                Some((key.arg, value.0.as_str()))
            })
            .collect()
    }
}

/// The YAML, or its first problem as `FILE:LINE:COLUMN: reason`. An empty or
/// all-comment file sets nothing.
fn parse(path: &Path, text: &str) -> Result<Settings, String> {
    let parsed: Result<Option<Settings>, _> = serde_norway::from_str(text);
    match parsed {
        Ok(settings) => Ok(settings.unwrap_or_default()),
        Err(e) => Err(yaml_error(path, &e)),
    }
}

fn yaml_error(path: &Path, error: &serde_norway::Error) -> String {
    let text = error.to_string().replace('\n', " ");
    match error.location() {
        Some(at) => {
            let suffix = format!(" at line {} column {}", at.line(), at.column());
            let reason = text.replacen(&suffix, "", 1);
            format!("{}:{}:{}: {reason}", path.display(), at.line(), at.column())
        }
        None => format!("{}: {text}", path.display()),
    }
}

/// `value` through the value parser of `flags`' argument `arg`; the reason when it is
/// refused, as the flag's own message says it.
fn check_value(flags: &clap::Command, arg: &str, value: &str) -> Result<(), String> {
    let arg = flags
        .get_arguments()
        .find(|a| a.get_id() == arg)
        .ok_or_else(|| format!("no flag takes this value (`{arg}` is unknown)"))?;
    // The flag alone, without the relations (conflicts, requirements) of its command.
    let alone = clap::Arg::new("value")
        .long("value")
        .value_parser(arg.get_value_parser().clone());
    let checker = clap::Command::new("config").arg(alone).no_binary_name(true);
    checker
        .try_get_matches_from([format!("--value={value}")])
        .map(drop)
        .map_err(|e| clap_reason(&e, value))
}

/// The reason of a clap value error without clap's framing (`invalid value … for …`).
fn clap_reason(error: &clap::Error, value: &str) -> String {
    if let Some(source) = std::error::Error::source(error) {
        return source.to_string();
    }
    let valid = error.get(clap::error::ContextKind::ValidValue);
    match valid {
        Some(clap::error::ContextValue::Strings(values)) => {
            format!("{value:?} is not one of {}", values.join(", "))
        }
        _ => format!("{value:?} is not a valid value"),
    }
}

/// What `glm config edit` writes into a new file: every key, commented out.
pub const TEMPLATE: &str = "\
# glm's config file: defaults for the flags of glm run, chat, logits and bench.
# A flag on the command line beats a value here; a model's entry under `models:` beats
# the top level; both beat the model's own defaults (general.sampling.*) and glm's.
# Remove the `#` of a line to use it.

# preset: q8_0             # --quant: preset for checkpoint folders converted for running
# threads: 8               # --threads
# gpu_layers: auto         # --gpu-layers (-ngl): a number, auto or all
# ctx_size: 8192           # --ctx-size
# temp: 0.7                # --temp
# top_k: 40                # --top-k
# top_p: 0.95              # --top-p
# min_p: 0.05              # --min-p
# repeat_penalty: 1.0      # --repeat-penalty
# repeat_last_n: 64        # --repeat-last-n
# seed: -1                 # --seed (-1: a fresh one each run)
# max_tokens: 1024         # --max-tokens (-1: no limit)
# system_prompt: You are a helpful assistant.
# think: true              # --think / --no-think

# models:                  # keyed by the model as typed on the command line
#   glm-4.7-flash:
#     temp: 1.0
#   /models/GLM-4.5-Air-Q4_K_M.gguf:
#     ctx_size: 32768
#     think: false
";

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Option<Config>, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, text).map_err(|e| e.to_string())?;
        Config::load_from(&path, &crate::cli::command())
    }

    #[test]
    fn every_key_names_a_flag_of_run() {
        let command = crate::cli::command();
        let run = command.find_subcommand("run").expect("run");
        for key in &KEYS {
            assert!(
                run.get_arguments().any(|a| a.get_id() == key.arg),
                "{} has no flag",
                key.name
            );
        }
    }

    #[test]
    fn the_template_sets_nothing_and_its_example_is_valid() {
        let config = load(TEMPLATE).expect("template").expect("file");
        assert!(config.defaults_for(None).is_empty());
        let uncommented: String = TEMPLATE
            .lines()
            .filter_map(|line| line.strip_prefix("# "))
            .filter(|line| line.contains(':') && !line.starts_with("glm") && !line.starts_with("A flag"))
            .map(|line| format!("{line}\n"))
            .collect();
        let config = load(&uncommented).expect("the example loads").expect("file");
        assert_eq!(config.defaults_for(None).len(), KEYS.len());
    }

    #[test]
    fn a_model_entry_beats_the_top_level() {
        let config = load("temp: 0.5\nseed: 3\nmodels:\n  m.gguf:\n    temp: 0\n")
            .expect("loads")
            .expect("file");
        assert!(config.defaults_for(Some("m.gguf")).contains(&("temp", "0")));
        assert!(config.defaults_for(Some("m.gguf")).contains(&("seed", "3")));
        assert!(config.defaults_for(Some("other")).contains(&("temp", "0.5")));
    }

    #[test]
    fn bad_values_name_the_key_and_the_reason() {
        let error = load("models:\n  x:\n    top_p: 2\n").expect_err("top_p 2");
        assert!(
            error.ends_with("config.yaml: models.x.top_p: 2 is outside 0..=1"),
            "{error}"
        );
        let error = load("think: maybe\n").expect_err("think maybe");
        assert!(error.contains("think: \"maybe\""), "{error}");
        let error = load("models:\n  x:\n    models: {}\n").expect_err("nested");
        assert!(error.contains("models.x.models"), "{error}");
    }

    #[test]
    fn yaml_errors_carry_the_line() {
        let error = load("temp: 1\ntmep: 2\n").expect_err("unknown key");
        assert!(error.contains("config.yaml:2:1: unknown field `tmep`"), "{error}");
        let error = load("temp: [1\n").expect_err("broken");
        assert!(error.contains("config.yaml:"), "{error}");
    }
}
