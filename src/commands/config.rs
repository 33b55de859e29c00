//! `glm config path|show|edit`.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};

use crate::cli::ConfigCommand;
use crate::config::{self, Config};

pub fn run(command: &ConfigCommand) -> Result<()> {
    let path = config::path().context("no config folder is known for this user; set GLM_CONFIG to a file")?;
    match command {
        ConfigCommand::Path => show_path(&path),
        ConfigCommand::Show => show(&path),
        ConfigCommand::Edit => edit(&path),
    }
}

fn show_path(path: &Path) -> Result<()> {
    println!("{}", path.display());
    if path.exists() {
        eprintln!("(the file exists)");
    } else {
        eprintln!("(the file does not exist; `glm config edit` creates it)");
    }
    Ok(())
}

fn show(path: &Path) -> Result<()> {
    let Some(config) = checked(path)? else {
        println!("# no config file at {} (`glm config edit` creates one)", path.display());
        return Ok(());
    };
    let text = config.text();
    println!("# {}", path.display());
    print!("{text}");
    if !text.ends_with('\n') {
        println!();
    }
    Ok(())
}

fn edit(path: &Path) -> Result<()> {
    if !path.exists() {
        create_from_template(path)?;
    }
    let editor = editor();
    let mut words = editor.split_whitespace();
    let program = words.next().context("$VISUAL/$EDITOR is empty")?;
    let status = std::process::Command::new(program)
        .args(words)
        .arg(path)
        .status()
        .with_context(|| format!("starting the editor {editor:?}"))?;
    if !status.success() {
        bail!(
            "the editor {editor:?} failed ({status}); {} is left as it is",
            path.display()
        );
    }
    checked(path)?;
    eprintln!("{}: ok", path.display());
    Ok(())
}

/// `$VISUAL`, else `$EDITOR`, else vi, as Unix tools choose.
fn editor() -> String {
    ["VISUAL", "EDITOR"]
        .into_iter()
        .filter_map(std::env::var_os)
        .map(|value| value.to_string_lossy().into_owned())
        .find(|value| !value.trim().is_empty())
        .unwrap_or_else(|| "vi".to_owned())
}

fn create_from_template(path: &Path) -> Result<()> {
    if let Some(folder) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(folder).with_context(|| format!("{}: cannot create the folder", folder.display()))?;
    }
    // Through the project's checked writes: never through a dangling link or onto a
    // device, and never half-written.
    glm_convert::files::check_output(path, &[], false)?;
    Ok(glm_convert::files::write_bytes(path, config::TEMPLATE.as_bytes())?)
}

/// The file loaded and checked like a run would; its problem as the error.
fn checked(path: &Path) -> Result<Option<Config>> {
    Config::load_from(path, &crate::cli::command()).map_err(|e| anyhow!(e))
}
