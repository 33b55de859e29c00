//! What a user may name as a model, parsed: a path, or a name (`glm-4.7-flash`,
//! `ORG/NAME`), with an optional preset (`:q8_0`) and, for Hub repositories, a revision
//! (`@v1.0`, `@<commit>`).

use std::path::{Path, PathBuf};

/// A model reference as typed, split into its parts (nothing looked up yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// A GGUF file or checkpoint folder (it exists, or it can only be a path).
    Path(PathBuf),
    Name {
        /// A store or catalogue name, or `ORG/NAME`.
        name: String,
        preset: Option<String>,
        revision: Option<String>,
    },
}

impl Reference {
    pub fn parse(text: &str) -> Result<Reference, String> {
        let path = Path::new(text);
        if path.exists() || looks_like_a_path(text) {
            return Ok(Reference::Path(path.to_path_buf()));
        }
        let (rest, revision) = match text.rsplit_once('@') {
            Some((rest, revision)) => (rest, Some(checked_part(revision, text, "revision")?)),
            None => (text, None),
        };
        let (name, preset) = match rest.rsplit_once(':') {
            Some((name, preset)) => (name, Some(checked_part(preset, text, "preset")?)),
            None => (rest, None),
        };
        check_name(name, text)?;
        if revision.is_some() && !name.contains('/') {
            return Err(format!("{text}: a revision (@...) needs a Hub repository, ORG/NAME"));
        }
        Ok(Reference::Name {
            name: name.to_owned(),
            preset,
            revision,
        })
    }
}

/// Text that names a file rather than a model: `./x`, `/x`, `~/x`, `x.gguf`, or more than
/// one `/`.
fn looks_like_a_path(text: &str) -> bool {
    text.starts_with(['.', '/', '~'])
        || text.to_ascii_lowercase().ends_with(".gguf")
        || text.matches('/').count() > 1
        || text.contains('\\')
}

/// Hub names: letters, digits, `-`, `_`, `.`; one optional `/` between two of them.
fn check_name(name: &str, text: &str) -> Result<(), String> {
    let parts: Vec<&str> = name.split('/').collect();
    let valid = |part: &&str| {
        !part.is_empty()
            && !part.starts_with('.')
            && part.len() <= 96
            && part.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    if parts.len() > 2 || !parts.iter().all(valid) {
        return Err(format!(
            "{text}: no such file, and not a model name (NAME, ORG/NAME, with :PRESET and @REVISION)"
        ));
    }
    Ok(())
}

fn checked_part(part: &str, text: &str, what: &str) -> Result<String, String> {
    let valid =
        !part.is_empty() && part.len() <= 128 && part.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !valid {
        return Err(format!("{text}: {part:?} is not a {what}"));
    }
    Ok(part.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> (String, Option<String>, Option<String>) {
        match Reference::parse(text) {
            Ok(Reference::Name { name, preset, revision }) => (name, preset, revision),
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn names_presets_and_revisions() {
        assert_eq!(name("glm-4.7-flash"), ("glm-4.7-flash".into(), None, None));
        assert_eq!(
            name("glm-4.7-flash:q8_0"),
            ("glm-4.7-flash".into(), Some("q8_0".into()), None)
        );
        assert_eq!(
            name("zai-org/GLM-4.5-Air:Q4_K_M@v1.0"),
            ("zai-org/GLM-4.5-Air".into(), Some("Q4_K_M".into()), Some("v1.0".into()))
        );
        assert_eq!(name("unsloth/GLM-4.7-Flash-GGUF@main").2, Some("main".into()));
    }

    #[test]
    fn paths_stay_paths_and_nonsense_is_refused() {
        for text in ["./model.gguf", "/tmp/x", "~/m", "model.GGUF", "a/b/c"] {
            assert_eq!(
                Reference::parse(text),
                Ok(Reference::Path(PathBuf::from(text))),
                "{text}"
            );
        }
        for bad in [
            "a b",
            "org/",
            "x:",
            "x@y",
            "org/name@",
            "org/name:q4 k",
            "org/na*me",
            "org/.hidden",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad}");
        }
        assert!(Reference::parse("glm@main").unwrap_err().contains("ORG/NAME"));
    }
}
