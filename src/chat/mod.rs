//! The chat layer: conversation rendering through the model's own Jinja chat template.
//! Pure Rust, testable without a model.

pub mod template;

pub use template::{ChatTemplate, RenderOptions};
