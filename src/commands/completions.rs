//! `glm completions SHELL`: clap_complete's script from the CLI's definition, plus, for
//! bash, zsh and fish, the names `glm models --names` prints as candidates for the model
//! argument (next to files). clap_complete's scripts are static, so that part is shell
//! code of our own; PowerShell and Elvish get the static script only.

use anyhow::{Context, Result};
use clap_complete::Shell;

/// The commands whose first argument (or `-m`) is a model.
const MODEL_COMMANDS: &str = "run chat logits bench tokenize";

pub fn run(shell: Shell) -> Result<()> {
    print!("{}", script(shell)?);
    Ok(())
}

/// The whole script for `shell`.
pub fn script(shell: Shell) -> Result<String> {
    let mut command = crate::cli::command();
    let mut bytes = Vec::new();
    clap_complete::generate(shell, &mut command, "glm", &mut bytes);
    let generated = String::from_utf8(bytes).context("clap_complete wrote a script that is not UTF-8")?;
    Ok(match shell {
        Shell::Bash => format!("{generated}\n{}", bash_models()),
        Shell::Zsh => zsh_with_models(&generated),
        Shell::Fish => format!("{generated}\n{}", fish_models()),
        _ => generated,
    })
}

/// Wraps clap_complete's `_glm`: where the model goes (right after the command, or after
/// `-m`), model names join the file names.
fn bash_models() -> String {
    format!(
        r#"# Model names (`glm models --names`) for the model argument.
_glm_with_models() {{
    _glm "$@"
    local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="${{COMP_WORDS[COMP_CWORD-1]}}" i at=0
    for (( i = 1; i < COMP_CWORD; i++ )); do
        case "${{COMP_WORDS[i]}}" in
            -*) ;;
            *) at=$i; break ;;
        esac
    done
    case " {MODEL_COMMANDS} " in
        *" ${{COMP_WORDS[at]}} "*) ;;
        *) return 0 ;;
    esac
    if [[ $at -gt 0 && ( $COMP_CWORD -eq $((at + 1)) || "$prev" == "-m" || "$prev" == "--model" ) && "$cur" != -* ]]; then
        compopt -o filenames 2>/dev/null
        COMPREPLY+=( $(compgen -W "$(glm models --names 2>/dev/null)" -- "$cur") $(compgen -f -- "$cur") )
    fi
}}
complete -F _glm_with_models -o bashdefault -o default glm
"#
    )
}

/// clap_complete's script with the model arguments completed by `_glm_models` (model
/// names and files) instead of files alone.
fn zsh_with_models(generated: &str) -> String {
    let function = r#"(( $+functions[_glm_models] )) ||
_glm_models() {
    local -a models
    models=(${(f)"$(glm models --names 2>/dev/null)"})
    _alternative 'models:model:compadd -a models' 'files:file:_files'
}

"#;
    let mut script = String::with_capacity(generated.len() + function.len());
    for line in generated.lines() {
        let is_model = ["'::model_positional -- ", "':model -- "]
            .iter()
            .any(|p| line.starts_with(p))
            || line.contains("]:MODEL:_files'");
        match (is_model, line.rsplit_once(":_files'")) {
            (true, Some((head, tail))) => script.push_str(&format!("{head}:_glm_models'{tail}")),
            _ => {
                if line.starts_with("if [ \"$funcstack[1]\" = \"_glm\" ]") {
                    script.push_str(function);
                }
                script.push_str(line);
            }
        }
        script.push('\n');
    }
    script
}

/// Model names after the command's name or `-m`, next to clap_complete's file names.
fn fish_models() -> String {
    format!(
        r#"# Model names (`glm models --names`) for the model argument.
function __fish_glm_completing_model
    set -l words (commandline -opc)
    test (count $words) -eq 2; and contains -- $words[2] {MODEL_COMMANDS}
end
complete -c glm -n __fish_glm_completing_model -a "(glm models --names 2>/dev/null)"
complete -c glm -n "__fish_glm_using_subcommand {MODEL_COMMANDS}" -s m -l model -r -a "(glm models --names 2>/dev/null)"
"#
    )
}
