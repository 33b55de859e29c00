//! The chat's slash commands as one table: `/help`, Tab completion and dispatch are all
//! derived from [`COMMANDS`], so they cannot disagree. Adding a command is one entry here
//! and its handler.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use super::{all_or_nothing, answer, load_projector, notice, settings, stats, ChatState};
use crate::chat::Conversation;

/// What the chat does after a command.
pub(super) enum Flow {
    Continue,
    Leave,
}

pub(super) struct SlashCommand {
    pub name: &'static str,
    /// Other names that run the same handler (completed, not listed).
    pub aliases: &'static [&'static str],
    /// The arguments as `/help` shows them.
    pub usage: &'static str,
    pub help: &'static str,
    pub run: fn(&mut ChatState, &str) -> Result<Flow>,
}

pub(super) const COMMANDS: &[SlashCommand] = &[
    SlashCommand {
        name: "help",
        aliases: &[],
        usage: "",
        help: "this help",
        run: |_, _| {
            eprintln!("{}", help_text());
            Ok(Flow::Continue)
        },
    },
    SlashCommand {
        name: "exit",
        aliases: &["quit", "bye"],
        usage: "",
        help: "leave (or Ctrl-D)",
        run: |_, _| Ok(Flow::Leave),
    },
    SlashCommand {
        name: "clear",
        aliases: &[],
        usage: "",
        help: "start a new conversation (keeps the system prompt)",
        run: clear,
    },
    SlashCommand {
        name: "system",
        aliases: &[],
        usage: "<text>",
        help: "set the system prompt (empty text removes it)",
        run: system,
    },
    SlashCommand {
        name: "think",
        aliases: &[],
        usage: "on|off",
        help: "let thinking models reason first, or answer directly",
        run: think,
    },
    SlashCommand {
        name: "reasoning",
        aliases: &[],
        usage: "show|hide",
        help: "show the model's reasoning, or hide it",
        run: reasoning,
    },
    SlashCommand {
        name: "regen",
        aliases: &[],
        usage: "",
        help: "answer the last message again",
        run: regen,
    },
    SlashCommand {
        name: "save",
        aliases: &[],
        usage: "<file>",
        help: "write the conversation as JSON (OpenAI messages)",
        run: save,
    },
    SlashCommand {
        name: "load",
        aliases: &[],
        usage: "<file>",
        help: "read a conversation saved by /save",
        run: load,
    },
    SlashCommand {
        name: "tool",
        aliases: &[],
        usage: "<json>",
        help: "give the result of the model's tool call and let it go on",
        run: tool,
    },
    SlashCommand {
        name: "image",
        aliases: &[],
        usage: "<file>",
        help: "attach an image to your next message (vision models)",
        run: image,
    },
    SlashCommand {
        name: "set",
        aliases: &[],
        usage: "[<param> <value>]",
        help: "",
        run: |state, argument| settings::set(state, argument).map(|()| Flow::Continue),
    },
    SlashCommand {
        name: "show",
        aliases: &[],
        usage: "",
        help: "the model, context, settings, thinking, reasoning and system prompt",
        run: |state, _| {
            eprintln!("{}", show(state));
            Ok(Flow::Continue)
        },
    },
    SlashCommand {
        name: "stats",
        aliases: &[],
        usage: "",
        help: "tokens and speed of the last answer",
        run: |state, _| {
            stats(state);
            Ok(Flow::Continue)
        },
    },
];

/// Runs `/name argument`.
pub(super) fn dispatch(state: &mut ChatState, command: &str) -> Result<Flow> {
    let (name, argument) = command.split_once(char::is_whitespace).unwrap_or((command, ""));
    let Some(entry) = COMMANDS.iter().find(|c| c.name == name || c.aliases.contains(&name)) else {
        bail!("unknown command /{name} (try /help)");
    };
    (entry.run)(state, argument.trim())
}

/// Every name Tab completes, with its slash.
pub(super) fn command_names() -> impl Iterator<Item = String> {
    COMMANDS
        .iter()
        .flat_map(|c| std::iter::once(c.name).chain(c.aliases.iter().copied()))
        .map(|name| format!("/{name}"))
}

/// `/help`: one line per command, then how to write several lines.
pub(super) fn help_text() -> String {
    let mut text = String::new();
    for command in COMMANDS {
        let head = format!("/{} {}", command.name, command.usage);
        let help = if command.name == "set" {
            format!(
                "{} (alone: the values and where they came from)",
                settings::names().join(", ")
            )
        } else {
            command.help.to_owned()
        };
        text.push_str(&format!("{:<22}{help}\n", head.trim_end()));
    }
    text.push_str("Multi-line input: end a line with \\ to continue it, or wrap text in \"\"\" … \"\"\".");
    text
}

fn clear(state: &mut ChatState, _: &str) -> Result<Flow> {
    state.conversation.clear();
    state.session.clear();
    notice(state, "(new conversation)");
    Ok(Flow::Continue)
}

fn system(state: &mut ChatState, argument: &str) -> Result<Flow> {
    state.conversation.system = (!argument.is_empty()).then(|| argument.to_owned());
    let done = if argument.is_empty() {
        "(system prompt removed)"
    } else {
        "(system prompt set)"
    };
    notice(state, done);
    Ok(Flow::Continue)
}

fn think(state: &mut ChatState, argument: &str) -> Result<Flow> {
    let on = match argument {
        "on" => true,
        "off" => false,
        _ => bail!("usage: /think on|off"),
    };
    state.render.extra.insert("enable_thinking".into(), on.into());
    notice(state, if on { "(thinking on)" } else { "(thinking off)" });
    Ok(Flow::Continue)
}

fn reasoning(state: &mut ChatState, argument: &str) -> Result<Flow> {
    state.show_reasoning = match argument {
        "show" => true,
        "hide" => false,
        _ => bail!("usage: /reasoning show|hide"),
    };
    let shown = if state.show_reasoning {
        "(reasoning shown)"
    } else {
        "(reasoning hidden)"
    };
    notice(state, shown);
    Ok(Flow::Continue)
}

fn regen(state: &mut ChatState, _: &str) -> Result<Flow> {
    all_or_nothing(state, |state| {
        if !state.conversation.pop_reply() {
            bail!("nothing to answer again");
        }
        answer(state)
    })?;
    Ok(Flow::Continue)
}

fn save(state: &mut ChatState, argument: &str) -> Result<Flow> {
    let path = path_argument(argument, "/save <file>")?;
    let mut inputs = vec![state.model_path.as_path()];
    inputs.extend(state.projector_path.as_deref());
    state.conversation.save(&path, &inputs)?;
    let count = state.conversation.messages().len();
    notice(state, &format!("(saved {count} messages to {})", path.display()));
    Ok(Flow::Continue)
}

fn load(state: &mut ChatState, argument: &str) -> Result<Flow> {
    let path = path_argument(argument, "/load <file>")?;
    state.conversation = Conversation::load(&path)?;
    let count = state.conversation.messages().len();
    notice(state, &format!("(loaded {count} messages from {})", path.display()));
    settings::restore_seed(state, state.conversation.last_seed());
    Ok(Flow::Continue)
}

fn tool(state: &mut ChatState, argument: &str) -> Result<Flow> {
    if argument.is_empty() {
        bail!("usage: /tool <result as JSON or text>");
    }
    all_or_nothing(state, |state| {
        state.conversation.push_tool_result(argument);
        answer(state)
    })?;
    Ok(Flow::Continue)
}

fn image(state: &mut ChatState, argument: &str) -> Result<Flow> {
    let path = path_argument(argument, "/image <file>")?;
    match std::fs::metadata(&path) {
        Ok(meta) if meta.is_file() => {}
        Ok(_) => bail!("{}: not a regular file", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!("{}: no such image file", path.display()),
        Err(e) => bail!("{}: {e}", path.display()),
    }
    // Told now, not after the next message is typed and sent.
    load_projector(state).context("this model cannot take images")?;
    notice(
        state,
        &format!("(image {} goes with your next message)", path.display()),
    );
    state.pending_images.push(path);
    Ok(Flow::Continue)
}

/// `/show`: what the chat runs with.
fn show(state: &mut ChatState) -> String {
    let mut lines = vec![
        format!("{:<15} {}", "model", model_description(state)),
        format!("{:<15} {} tokens", "context", state.session.n_ctx()),
    ];
    lines.extend(settings::lines(state));
    let thinking = match state.render.extra.get("enable_thinking").and_then(|v| v.as_bool()) {
        Some(true) => "on",
        Some(false) => "off",
        None => "the template's default",
    };
    let reasoning = match (state.show_reasoning, state.inline_reasoning) {
        (false, _) => "hidden",
        (true, true) => "shown in the answer",
        (true, false) => "shown",
    };
    let system = state
        .conversation
        .system
        .as_ref()
        .map_or("(none)".to_owned(), |text| format!("{text:?}"));
    lines.push(format!("{:<15} {thinking}", "thinking"));
    lines.push(format!("{:<15} {reasoning}", "reasoning"));
    lines.push(format!("{:<15} {system}", "system prompt"));
    if let Some(path) = state.projector.as_ref().and(state.projector_path.as_ref()) {
        lines.push(format!("{:<15} {}", "projector", path.display()));
    }
    for image in &state.pending_images {
        lines.push(format!("{:<15} {} (with the next message)", "image", image.display()));
    }
    lines.join("\n")
}

/// The model's path, architecture and name (as its metadata gives them).
fn model_description(state: &ChatState) -> String {
    let about: Vec<String> = ["general.architecture", "general.name"]
        .iter()
        .filter_map(|key| state.engine.metadata(key))
        .collect();
    let path = state.model_path.display();
    if about.is_empty() {
        return path.to_string();
    }
    format!("{path} ({})", about.join(", "))
}

fn path_argument(argument: &str, usage: &str) -> Result<PathBuf> {
    if argument.is_empty() {
        bail!("usage: {usage}");
    }
    Ok(PathBuf::from(argument))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_lists_every_command_once_and_completion_knows_aliases() {
        let help = help_text();
        for command in COMMANDS {
            let listed = help
                .lines()
                .filter(|l| l.split_whitespace().next() == Some(&format!("/{}", command.name)))
                .count();
            assert_eq!(listed, 1, "/{} in:\n{help}", command.name);
        }
        let names: Vec<String> = command_names().collect();
        assert!(names.contains(&"/quit".to_owned()));
        assert!(names.contains(&"/image".to_owned()));
        assert!(help.contains("temp, top-k"), "{help}");
    }

    /// The README's chat section names every command (aliases too) and `/set` parameter.
    #[test]
    fn the_readme_lists_every_command_and_setting() {
        let readme = include_str!("../../../README.md");
        for name in command_names() {
            assert!(readme.contains(&format!("`{name}")), "{name}");
        }
        for name in settings::names() {
            assert!(readme.contains(name), "/set {name}");
        }
    }
}
