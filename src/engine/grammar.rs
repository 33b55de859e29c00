//! GBNF grammars for constrained output (`response_format` in `glm serve`).

use anyhow::{anyhow, Result};

/// The largest schema turned into a grammar: llama.cpp's converter recurses over it, and
/// the schema comes from a request.
const MAX_SCHEMA_BYTES: usize = 1 << 20;

/// A grammar whose root rule accepts exactly the JSON values `schema` (a JSON Schema)
/// describes, by llama.cpp's own converter.
pub fn json_schema_grammar(schema: &serde_json::Value) -> Result<String> {
    let text = schema.to_string();
    if text.len() > MAX_SCHEMA_BYTES {
        anyhow::bail!("the JSON schema is larger than {MAX_SCHEMA_BYTES} bytes");
    }
    // The converter is C++ that throws on schemas it does not understand; the binding
    // turns that into an error, but a panic on its side must not take the server down.
    let converted = std::panic::catch_unwind(|| llama_cpp_2::json_schema_to_grammar(&text))
        .map_err(|_| anyhow!("the JSON schema could not be turned into a grammar"))?;
    converted.map_err(|e| anyhow!("the JSON schema could not be turned into a grammar: {e}"))
}

/// A grammar for any JSON object (`response_format: {"type": "json_object"}`).
pub fn json_object_grammar() -> Result<String> {
    json_schema_grammar(&serde_json::json!({"type": "object"}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schema_becomes_a_grammar_naming_its_properties() {
        let grammar = json_schema_grammar(&serde_json::json!({
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"]
        }))
        .unwrap();
        assert!(grammar.contains("root ::="), "{grammar}");
        assert!(grammar.contains("city"), "{grammar}");
    }

    #[test]
    fn the_object_grammar_has_a_root() {
        assert!(json_object_grammar().unwrap().contains("root ::="));
    }
}
