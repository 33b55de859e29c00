//! The GLM family by short name, as `ollama run glm-4.7-flash` users type it: each name is
//! a Hugging Face repository with its architecture, size and the preset glm converts it
//! with unless told otherwise. A table, so adding a model is one entry.

/// One model of the catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatalogueEntry {
    pub name: &'static str,
    /// `ORG/NAME` on the Hub (safetensors, converted once by glm).
    pub repo: &'static str,
    /// The Hugging Face `architectures` name.
    pub architecture: &'static str,
    /// Parameters, as the model card gives them (total and active for MoE models).
    pub parameters: &'static str,
    pub preset: &'static str,
}

const fn entry(
    name: &'static str,
    repo: &'static str,
    architecture: &'static str,
    parameters: &'static str,
) -> CatalogueEntry {
    CatalogueEntry {
        name,
        repo,
        architecture,
        parameters,
        preset: DEFAULT_PRESET,
    }
}

/// What a safetensors repository is converted with unless the reference names a preset:
/// the usual size/quality balance of llama.cpp users.
pub const DEFAULT_PRESET: &str = "q4_k_m";

pub const CATALOGUE: &[CatalogueEntry] = &[
    entry("glm-4.7", "zai-org/GLM-4.7", "Glm4MoeForCausalLM", "355B-A32B"),
    entry(
        "glm-4.7-flash",
        "zai-org/GLM-4.7-Flash",
        "Glm4MoeLiteForCausalLM",
        "30B-A3B",
    ),
    entry("glm-4.6", "zai-org/GLM-4.6", "Glm4MoeForCausalLM", "355B-A32B"),
    entry("glm-4.5", "zai-org/GLM-4.5", "Glm4MoeForCausalLM", "355B-A32B"),
    entry("glm-4.5-air", "zai-org/GLM-4.5-Air", "Glm4MoeForCausalLM", "106B-A12B"),
    entry(
        "glm-4.5v",
        "zai-org/GLM-4.5V",
        "Glm4vMoeForConditionalGeneration",
        "108B-A12B",
    ),
    entry(
        "glm-4.6v-flash",
        "zai-org/GLM-4.6V-Flash",
        "Glm4vForConditionalGeneration",
        "10B",
    ),
    entry(
        "glm-4.1v-9b-thinking",
        "zai-org/GLM-4.1V-9B-Thinking",
        "Glm4vForConditionalGeneration",
        "10B",
    ),
    entry("glm-4-32b-0414", "zai-org/GLM-4-32B-0414", "Glm4ForCausalLM", "32B"),
    entry("glm-4-9b-0414", "zai-org/GLM-4-9B-0414", "Glm4ForCausalLM", "9B"),
    entry("glm-z1-32b-0414", "zai-org/GLM-Z1-32B-0414", "Glm4ForCausalLM", "32B"),
    entry("glm-z1-9b-0414", "zai-org/GLM-Z1-9B-0414", "Glm4ForCausalLM", "9B"),
    entry("glm-4-9b-chat-hf", "zai-org/glm-4-9b-chat-hf", "GlmForCausalLM", "9B"),
];

/// The catalogue entry called `name` (case does not matter).
pub fn find(name: &str) -> Option<&'static CatalogueEntry> {
    CATALOGUE.iter().find(|e| e.name.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_lowercase_and_repos_look_like_repos() {
        for (i, e) in CATALOGUE.iter().enumerate() {
            assert_eq!(e.name, e.name.to_lowercase());
            assert!(CATALOGUE[i + 1..].iter().all(|o| o.name != e.name), "{}", e.name);
            assert_eq!(e.repo.split('/').count(), 2, "{}", e.repo);
        }
        assert_eq!(find("GLM-4.7-Flash").map(|e| e.repo), Some("zai-org/GLM-4.7-Flash"));
        assert!(find("glm-5").is_none());
    }

    #[test]
    fn the_readme_lists_the_catalogue() {
        let readme = include_str!("../../README.md");
        for e in CATALOGUE {
            let row = format!(
                "| `{}` | [{}](https://huggingface.co/{}) | `{}` | {} |",
                e.name, e.repo, e.repo, e.architecture, e.parameters
            );
            assert!(readme.contains(&row), "README lacks: {row}");
        }
    }

    /// Each architecture in the catalogue is one the converter knows.
    #[test]
    fn every_architecture_is_supported() {
        let supported = glm_convert::arch::supported();
        for e in CATALOGUE {
            assert!(supported.contains(&e.architecture), "{}: {}", e.name, e.architecture);
        }
    }
}
