//! Answers: grounded chat over a tenant's knowledge. A question is turned
//! into a search (condensed from the conversation on follow-ups), the
//! passages found and the tenant's instructions become the prompt, and the
//! model's answer streams back with its citations ([`pipeline`]); without a
//! chat model the answer is extractive (the passages quoted). This area also
//! owns what a chat remembers and who may hold one: conversations and their
//! messages (with citations and token usage), the tenant's assistant
//! settings, and [`conversations::begin_chat`], the first call of every chat
//! request, which authenticates a tenant or publishable key and loads all a
//! turn needs in one round trip.

pub mod conversations;
pub mod extractive;
pub mod handlers;
pub mod pipeline;
pub mod prompt;
pub mod provider;
pub mod store;
pub mod wire;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ops::ratelimit::GateError;
use crate::platform::db::{DbError, DbErrorClass};

/// The longest instructions a tenant may give its assistant, in characters.
pub const MAX_INSTRUCTIONS_CHARS: usize = 8000;
/// The bounds of `max_answer_tokens`.
pub const MAX_ANSWER_TOKENS: u32 = 4096;

/// What a passage of an answer cited.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct Citation {
    pub document_id: String,
    pub title: Option<String>,
    pub chunk_index: i32,
    pub source_url: Option<String>,
    pub text: String,
}

/// Tokens one answer cost, as the provider reported them.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
}

impl std::ops::Add for Usage {
    type Output = Usage;

    fn add(self, other: Usage) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens.saturating_add(other.prompt_tokens),
            completion_tokens: self
                .completion_tokens
                .saturating_add(other.completion_tokens),
            total_tokens: self.total_tokens.saturating_add(other.total_tokens),
        }
    }
}

/// How a tenant's assistant answers (`GET`/`PUT /api/assistant`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AssistantSettings {
    /// Persona, tone, what to refuse: at most [`MAX_INSTRUCTIONS_CHARS`].
    #[serde(default)]
    #[schema(max_length = 8000)]
    pub instructions: String,
    /// `None`: the deployment's `CHAT_MODEL`.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 200, pattern = r"^\S+$")]
    pub model: Option<String>,
    /// 0 to 2.
    #[serde(default = "default_temperature", serialize_with = "serialize_shortest")]
    #[schema(minimum = 0, maximum = 2)]
    pub temperature: f32,
    /// 1 to [`MAX_ANSWER_TOKENS`].
    #[serde(default = "default_max_answer_tokens")]
    #[schema(minimum = 1, maximum = 4096)]
    pub max_answer_tokens: u32,
}

fn default_temperature() -> f32 {
    0.3
}

/// An `f32` as the decimal it was written as (0.3, not the
/// 0.30000001192092896 a widening to `f64` gives in a `serde_json::Value`).
fn serialize_shortest<S: serde::Serializer>(value: &f32, serializer: S) -> Result<S::Ok, S::Error> {
    let shortest = value
        .to_string()
        .parse::<f64>()
        .unwrap_or(f64::from(*value));
    serializer.serialize_f64(shortest)
}

fn default_max_answer_tokens() -> u32 {
    600
}

impl Default for AssistantSettings {
    fn default() -> Self {
        Self {
            instructions: String::new(),
            model: None,
            temperature: default_temperature(),
            max_answer_tokens: default_max_answer_tokens(),
        }
    }
}

impl AssistantSettings {
    /// Refuses settings out of bounds, naming the field.
    pub fn validate(&self) -> Result<(), AnswersError> {
        if self.instructions.chars().count() > MAX_INSTRUCTIONS_CHARS {
            return Err(AnswersError::invalid(
                "instructions",
                &format!("must be at most {MAX_INSTRUCTIONS_CHARS} characters"),
            ));
        }
        if let Some(model) = &self.model {
            let printable = model.chars().all(|c| !c.is_control() && !c.is_whitespace());
            if model.is_empty() || model.len() > 200 || !printable {
                return Err(AnswersError::invalid(
                    "model",
                    "must be a model name of 1 to 200 characters without spaces, or null for the deployment's CHAT_MODEL",
                ));
            }
        }
        if !(0.0..=2.0).contains(&self.temperature) {
            return Err(AnswersError::invalid(
                "temperature",
                "must be between 0 and 2",
            ));
        }
        if !(1..=MAX_ANSWER_TOKENS).contains(&self.max_answer_tokens) {
            return Err(AnswersError::invalid(
                "max_answer_tokens",
                &format!("must be between 1 and {MAX_ANSWER_TOKENS}"),
            ));
        }
        Ok(())
    }
}

/// One stored turn of a conversation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct StoredMessage {
    /// `user` or `assistant`.
    pub role: String,
    pub content: String,
    pub citations: Vec<Citation>,
    pub usage: Option<Usage>,
    pub model: Option<String>,
    /// The stream broke before the answer was complete.
    pub incomplete: bool,
    pub created_at: String,
}

/// Why an answers operation did not complete.
#[derive(Debug, thiserror::Error)]
pub enum AnswersError {
    /// A field of the caller's input fails validation; the message names it.
    #[error("`{field}` {problem}")]
    Invalid { field: String, problem: String },
    #[error(transparent)]
    Call(#[from] GateError),
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

    /// The conversation named does not exist for this caller (`P0002`).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Call(GateError::Db(db)) if db.class() == DbErrorClass::NotFound)
    }
}

impl From<DbError> for AnswersError {
    fn from(error: DbError) -> Self {
        Self::Call(GateError::Db(error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assistant_settings_out_of_bounds_name_their_field() {
        let cases: [(AssistantSettings, Option<&str>, &str); 7] = [
            (AssistantSettings::default(), None, "the defaults"),
            (
                AssistantSettings {
                    instructions: "é".repeat(MAX_INSTRUCTIONS_CHARS),
                    ..Default::default()
                },
                None,
                "8000 characters, whatever their bytes",
            ),
            (
                AssistantSettings {
                    instructions: "x".repeat(MAX_INSTRUCTIONS_CHARS + 1),
                    ..Default::default()
                },
                Some("instructions"),
                "too long",
            ),
            (
                AssistantSettings {
                    model: Some(String::new()),
                    ..Default::default()
                },
                Some("model"),
                "empty model",
            ),
            (
                AssistantSettings {
                    temperature: 2.5,
                    ..Default::default()
                },
                Some("temperature"),
                "above 2",
            ),
            (
                AssistantSettings {
                    temperature: f32::NAN,
                    ..Default::default()
                },
                Some("temperature"),
                "not a number",
            ),
            (
                AssistantSettings {
                    max_answer_tokens: 0,
                    ..Default::default()
                },
                Some("max_answer_tokens"),
                "zero tokens",
            ),
        ];
        for (settings, field, reason) in cases {
            let refused = match settings.validate() {
                Ok(()) => None,
                Err(AnswersError::Invalid { field, .. }) => Some(field),
                Err(other) => panic!("{reason}: {other}"),
            };
            assert_eq!(refused.as_deref(), field, "{reason}");
        }
    }
}
