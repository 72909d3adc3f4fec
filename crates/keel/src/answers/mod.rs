//! Answers: grounded chat over a tenant's knowledge. A question is turned
//! into a search (condensed from the conversation on follow-ups), the
//! passages found and the tenant's instructions become the prompt, and the
//! model's answer streams back with its citations; without a chat model the
//! answer is extractive (the passages quoted). Conversations, assistant
//! settings and who may ask (secret and publishable keys) live here too.

pub mod extractive;
pub mod handlers;
pub mod pipeline;
pub mod prompt;
pub mod provider;
pub mod wire;

use serde::{Deserialize, Serialize};

/// What a passage cited in an answer was.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Citation {
    pub document_id: String,
    pub title: Option<String>,
    pub chunk_index: i32,
    pub source_url: Option<String>,
    pub text: String,
}

/// Tokens one answer cost, as the model reported them.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
}

/// A tenant's assistant: its instructions and model settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AssistantSettings {
    pub instructions: String,
    pub model: Option<String>,
    pub temperature: f32,
    pub max_answer_tokens: u32,
}

/// Why an answer could not be given.
#[derive(Debug, thiserror::Error)]
pub enum AnswersError {
    /// A field of the caller's input fails validation; the message names it.
    #[error("`{field}` {problem}")]
    Invalid { field: String, problem: String },
    #[error(transparent)]
    Knowledge(#[from] crate::knowledge::KnowledgeError),
    /// The chat model failed before its first token, after the retries.
    #[error(transparent)]
    Provider(#[from] provider::ProviderError),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl AnswersError {
    pub fn invalid(field: &str, problem: &str) -> Self {
        Self::Invalid {
            field: field.to_owned(),
            problem: problem.to_owned(),
        }
    }
}
