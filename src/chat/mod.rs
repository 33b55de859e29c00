//! The chat layer: conversation rendering through the model's own Jinja chat template.
//! Pure Rust, testable without a model.

pub mod conversation;
pub mod template;
pub mod thinking;
pub mod tool_calls;

pub use conversation::Conversation;
pub use template::{ChatTemplate, RenderOptions};
pub use thinking::{prompt_opens_thinking, Segment, ThinkingSplitter};
pub use tool_calls::ToolCall;
