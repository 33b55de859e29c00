//! The config file (`GLM_CONFIG`): its values act as flags the command line did not give,
//! a model's entry beats the top level, a flag beats both, and a bad file stops the run
//! with one line naming the file and the problem. Also `glm config` and `glm completions`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::*;

/// A config file in its own folder, removed with it.
struct ConfigFile {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl ConfigFile {
    fn new(text: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, text).expect("write config");
        ConfigFile { _dir: dir, path }
    }

    /// A path in a folder of its own where no file exists yet.
    fn missing() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("glm").join("config.yaml");
        ConfigFile { _dir: dir, path }
    }
}

fn glm(config: &ConfigFile, args: &[&str], stdin: Option<&str>) -> Output {
    glm_env(config, args, stdin, &[])
}

fn glm_env(config: &ConfigFile, args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_glm"));
    command
        .args(args)
        .env("GLM_CONFIG", &config.path)
        .envs(env.iter().copied());
    output_with_stdin(&mut command, stdin)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn model() -> String {
    converted("glm4moe-tiny", "q8_0")
        .to_str()
        .expect("UTF-8 path")
        .to_owned()
}

/// `glm run MODEL -p hi -n 8 ARGS` under `config`: its answer and its prompt's length.
fn answer(config: &ConfigFile, args: &[&str]) -> (String, String) {
    let model = model();
    let mut all = vec!["run", model.as_str(), "-p", "hi", "-n", "8", "-t", "2"];
    all.extend_from_slice(args);
    let out = glm(config, &all, None);
    assert!(out.status.success(), "glm {all:?} failed: {}", stderr(&out));
    let err = stderr(&out);
    let prompt = err
        .lines()
        .find_map(|line| line.strip_prefix("prompt: "))
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_else(|| panic!("no summary line in: {err}"))
        .to_owned();
    (stdout(&out), prompt)
}

fn greedy() -> (String, String) {
    answer(&ConfigFile::missing(), &["--temp", "0"])
}

/// A hot temperature with a fixed seed: an answer that differs from the greedy one (the
/// tests below rely on that to tell which value won).
const HOT: &str = "temp: 100\ntop_k: 0\ntop_p: 1\nmin_p: 0\nseed: 7\n";

#[test]
fn config_temp_and_seed_act_as_the_flags() {
    let config = ConfigFile::new("temp: 0\nseed: 5\n");
    let first = answer(&config, &[]);
    assert_eq!(first, answer(&config, &[]));
    assert_eq!(first, greedy());
    let hot = ConfigFile::new(HOT);
    assert_eq!(
        answer(&hot, &[]),
        answer(&hot, &[]),
        "a seed from the file repeats the answer"
    );
    assert_ne!(answer(&hot, &[]), greedy(), "the file's temperature is used");
}

#[test]
fn a_flag_beats_the_file() {
    let config = ConfigFile::new(HOT);
    assert_eq!(answer(&config, &["--temp", "0"]), greedy());
}

#[test]
fn a_model_entry_beats_the_top_level() {
    let config = ConfigFile::new(&format!("{HOT}models:\n  {:?}:\n    temp: 0\n", model()));
    assert_eq!(answer(&config, &[]), greedy());
    let other = ConfigFile::new(&format!("{HOT}models:\n  some-other-model:\n    temp: 0\n"));
    assert_ne!(answer(&other, &[]), greedy());
}

#[test]
fn system_prompt_and_think_from_the_file_act_as_the_flags() {
    let config = ConfigFile::new("temp: 0\nsystem_prompt: You are a pirate. Answer in rhymes.\n");
    let by_flag = answer(
        &ConfigFile::missing(),
        &["--temp", "0", "--system-prompt", "You are a pirate. Answer in rhymes."],
    );
    assert_eq!(answer(&config, &[]), by_flag);
    assert_ne!(by_flag.1, greedy().1, "the system prompt lengthens the prompt");
    let no_think = ConfigFile::new("temp: 0\nthink: false\n");
    let by_flag = answer(&ConfigFile::missing(), &["--temp", "0", "--no-think"]);
    assert_eq!(answer(&no_think, &[]), by_flag);
    assert_ne!(by_flag.1, answer(&no_think, &["--think"]).1, "--think beats the file");
    let think = ConfigFile::new("temp: 0\nthink: true\n");
    assert_eq!(
        answer(&think, &["--reasoning-budget", "0"]),
        by_flag,
        "a flag beats the file"
    );
}

/// One line on stderr, nothing on stdout, a failure status: the run never started.
fn refused(config: &ConfigFile) -> String {
    let model = model();
    let out = glm(config, &["run", &model, "-p", "hi", "-n", "8"], None);
    assert!(!out.status.success(), "ran with a bad config file");
    assert!(stdout(&out).is_empty(), "generated: {}", stdout(&out));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    assert!(err.contains(config.path.to_str().expect("path")), "{err}");
    err
}

#[test]
fn malformed_yaml_names_the_file_line_and_reason() {
    let err = refused(&ConfigFile::new("temp: 0\ntop_k: 1: 2\n"));
    assert!(
        err.contains("config.yaml:2:") && err.contains("mapping values are not allowed"),
        "{err}"
    );
    let err = refused(&ConfigFile::new("temp: 0\nseed: [1, 2]\n"));
    assert!(err.contains("config.yaml:2:7: seed: invalid type: sequence"), "{err}");
    let err = refused(&ConfigFile::new("temp: 0\ntemp: 1\n"));
    assert!(err.contains("config.yaml:1:1: duplicate field `temp`"), "{err}");
}

#[test]
fn an_unknown_key_is_named() {
    let err = refused(&ConfigFile::new("temp: 0\ntemperature: 1\n"));
    assert!(err.contains("config.yaml:2:1: unknown field `temperature`"), "{err}");
    let err = refused(&ConfigFile::new("models:\n  x:\n    tmep: 1\n"));
    assert!(err.contains("unknown field `tmep`"), "{err}");
}

#[test]
fn a_bad_value_names_the_key_and_the_range() {
    let err = refused(&ConfigFile::new("temp: -1\n"));
    assert!(err.ends_with("config.yaml: temp: -1 is outside 0..=100\n"), "{err}");
    // Also in the entry of a model this run does not use.
    let err = refused(&ConfigFile::new("models:\n  glm-4.7-flash:\n    top_p: 2\n"));
    assert!(
        err.ends_with("config.yaml: models.glm-4.7-flash.top_p: 2 is outside 0..=1\n"),
        "{err}"
    );
    let err = refused(&ConfigFile::new("gpu_layers: some\n"));
    assert!(
        err.contains("config.yaml: gpu_layers: \"some\" is not a layer count"),
        "{err}"
    );
    let err = refused(&ConfigFile::new("ctx_size: 0\n"));
    assert!(err.contains("config.yaml: ctx_size: 0 is not in 1..="), "{err}");
}

#[test]
fn commands_that_run_no_model_ignore_a_bad_file() {
    let config = ConfigFile::new("temp: [\n");
    let out = glm(&config, &["presets"], None);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn chat_set_says_which_values_came_from_the_file() {
    let config = ConfigFile::new("temp: 0.5\ntop_k: 7\nseed: 3\nmax_tokens: 9\n");
    let model = model();
    let out = glm(&config, &["chat", &model, "--top-k", "5", "-t", "2"], Some("/set\n"));
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    let line = |name: &str| {
        err.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no {name} in {err}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(line("temp"), "temp 0.5 (config file)");
    assert_eq!(line("top-k"), "top-k 5 (set)");
    assert_eq!(line("seed"), "seed 3 (config file)");
    assert_eq!(line("max-tokens"), "max-tokens 9 (config file)");
    assert!(line("top-p").ends_with("default)"), "{}", line("top-p"));
}

#[test]
fn config_path_and_show() {
    let missing = ConfigFile::missing();
    let out = glm(&missing, &["config", "path"], None);
    assert!(out.status.success());
    assert_eq!(stdout(&out).trim(), missing.path.to_str().expect("path"));
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
    let out = glm(&missing, &["config", "show"], None);
    assert!(
        out.status.success() && stdout(&out).contains("no config file"),
        "{}",
        stdout(&out)
    );

    let config = ConfigFile::new("temp: 0.3 # cool\n");
    let out = glm(&config, &["config", "path"], None);
    assert!(
        stderr(&out).contains("exists") && !stderr(&out).contains("not"),
        "{}",
        stderr(&out)
    );
    let out = glm(&config, &["config", "show"], None);
    assert!(
        out.status.success() && stdout(&out).contains("temp: 0.3 # cool"),
        "{}",
        stdout(&out)
    );
    let out = glm(&ConfigFile::new("temp: 300\n"), &["config", "show"], None);
    assert!(
        !out.status.success() && stderr(&out).contains("temp: 300 is outside"),
        "{}",
        stderr(&out)
    );
}

/// An editor script that replaces the file it is given with `text`.
fn editor(dir: &Path, text: &str) -> PathBuf {
    let script = dir.join("editor.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\ncp \"$1\" \"$1.before\"\nprintf '{text}' > \"$1\"\n"),
    )
    .expect("script");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    script
}

#[test]
fn config_edit_creates_the_file_and_checks_it() {
    let tools = tempfile::tempdir().expect("temp dir");
    let config = ConfigFile::missing();
    let good = editor(tools.path(), "temp: 0\\n");
    let env = [("VISUAL", ""), ("EDITOR", good.to_str().expect("path"))];
    let out = glm_env(&config, &["config", "edit"], None, &env);
    assert!(out.status.success(), "{}", stderr(&out));
    let template = std::fs::read_to_string(config.path.with_extension("yaml.before")).expect("template");
    assert!(
        template.contains("# temp:") && template.contains("# models:"),
        "{template}"
    );
    assert_eq!(std::fs::read_to_string(&config.path).expect("edited"), "temp: 0\n");

    let bad = editor(tools.path(), "top_k: -4\\n");
    let env = [("VISUAL", bad.to_str().expect("path")), ("EDITOR", "false")];
    let out = glm_env(&config, &["config", "edit"], None, &env);
    assert!(!out.status.success(), "an invalid file was accepted");
    assert!(stderr(&out).contains("top_k: -4 is not in 0..="), "{}", stderr(&out));
}

#[test]
fn completion_scripts_name_the_commands_and_flags() {
    let config = ConfigFile::missing();
    for shell in ["bash", "zsh", "fish", "powershell"] {
        let out = glm(&config, &["completions", shell], None);
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        let script = stdout(&out);
        for word in ["chat", "convert", "completions", "config", "ctx-size", "max-tokens"] {
            assert!(script.contains(word), "{shell}: no {word}");
        }
        if shell != "powershell" {
            assert!(
                script.contains("glm models --names 2>/dev/null"),
                "{shell}: no model names"
            );
        }
        let checker = match shell {
            "bash" => "bash",
            "zsh" => "zsh",
            "fish" => "fish",
            _ => continue,
        };
        let installed = Command::new("which").arg(checker).stdout(Stdio::null()).status();
        if shell != "bash" && !installed.is_ok_and(|s| s.success()) {
            continue;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join(format!("glm.{shell}"));
        std::fs::write(&file, &script).expect("write script");
        let check = Command::new(checker)
            .arg("-n")
            .arg(&file)
            .output()
            .expect("run the shell");
        assert!(
            check.status.success(),
            "{checker} -n: {}",
            String::from_utf8_lossy(&check.stderr)
        );
    }
}

#[test]
fn the_bash_script_offers_model_names_where_the_model_goes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let fake = dir.path().join("glm");
    std::fs::write(
        &fake,
        "#!/bin/sh\n[ \"$1 $2\" = 'models --names' ] && echo glm-4.7-flash\n",
    )
    .expect("fake glm");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let out = glm(&ConfigFile::missing(), &["completions", "bash"], None);
    let script = dir.path().join("glm.bash");
    std::fs::write(&script, stdout(&out)).expect("script");
    let complete = |words: &str| {
        let test = format!(
            "source {script:?}; COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}}-1)); \
             _glm_with_models glm \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; \
             echo \"${{COMPREPLY[*]}}\""
        );
        let path = format!("{}:{}", dir.path().display(), std::env::var("PATH").unwrap_or_default());
        let out = Command::new("bash")
            .args(["-c", &test])
            .current_dir(dir.path())
            .env("PATH", path)
            .output()
            .expect("bash");
        stdout(&out)
    };
    assert!(complete("glm run glm-4").contains("glm-4.7-flash"));
    assert!(complete("glm chat -m glm-4").contains("glm-4.7-flash"));
    assert!(
        !complete("glm run x glm-4").contains("glm-4.7-flash"),
        "a prompt is no model"
    );
    assert!(complete("glm run --ctx").contains("--ctx-size"));
}

/// A config file that is a device, a FIFO or larger than any config is refused in one
/// line, without blocking or reading it all.
#[test]
fn config_files_that_are_not_files_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let fifo = dir.path().join("config.fifo");
    let status = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(status.success());
    let huge = dir.path().join("huge.yaml");
    std::fs::write(&huge, format!("# {}\n", "x".repeat(2 << 20))).expect("write");
    for (path, reason) in [
        (PathBuf::from("/dev/zero"), "not a regular file"),
        (fifo, "FIFO"),
        (huge, "larger than"),
    ] {
        let config = ConfigFile {
            _dir: tempfile::tempdir().expect("temp dir"),
            path,
        };
        let err = refused(&config);
        assert!(err.contains(reason), "{err}");
    }
}
