//! Answer settings: the chat model provider (`CHAT_*`, configured apart from
//! embeddings because locally those come from a model that cannot chat),
//! and how much an answer may cost: retries, timeouts, prompt budget.

use std::time::Duration;

use secrecy::SecretString;
use url::Url;

use super::knowledge::OPENAI_DEFAULT_BASE_URL;
use super::vars::Vars;

/// An OpenAI-compatible chat completions server.
#[derive(Debug, Clone)]
pub struct ChatProviderConfig {
    pub base_url: Url,
    pub api_key: Option<SecretString>,
}

#[derive(Debug, Clone)]
pub struct AnswerSettings {
    /// `CHAT_MODEL`: what answers when a tenant names no model.
    pub model: String,
    /// Retries of a request that failed before its first token.
    pub max_retries: u32,
    /// How long to wait for the response headers and for the first token.
    pub first_token_timeout: Duration,
    /// How long a started stream may stay silent before it counts as broken.
    pub stall_timeout: Duration,
    /// The longest `retry-after` honoured; a longer wait fails now.
    pub max_retry_after: Duration,
    /// Tokens of instructions, passages and history sent with a question.
    pub prompt_tokens: usize,
    /// Passages retrieved for a question.
    pub passages: i64,
}

impl Vars<'_> {
    /// `CHAT_BASE_URL`/`CHAT_API_KEY`; without them, OpenAI itself when the
    /// embeddings settings are OpenAI's (`OPENAI_API_KEY` and no
    /// `OPENAI_BASE_URL`); otherwise none: answers are extractive.
    pub(super) fn chat_provider(&mut self, production: bool) -> Option<ChatProviderConfig> {
        let base = self.url("CHAT_BASE_URL");
        if production && base.as_ref().is_some_and(|url| url.scheme() != "https") {
            self.problem(
                "CHAT_BASE_URL",
                "must be https in production: the API key and conversations travel with every call",
            );
        }
        let base_set = self.optional("CHAT_BASE_URL").is_some();
        let key = self.optional("CHAT_API_KEY").map(str::to_owned);
        if base_set || key.is_some() {
            let base_url = match base {
                Some(url) => url,
                None if base_set => return None,
                None => Url::parse(OPENAI_DEFAULT_BASE_URL).expect("constant URL parses"),
            };
            return Some(ChatProviderConfig {
                base_url,
                api_key: key.map(SecretString::from),
            });
        }
        let openai_key = self.optional("OPENAI_API_KEY")?;
        if self.optional("OPENAI_BASE_URL").is_some() {
            return None;
        }
        Some(ChatProviderConfig {
            base_url: Url::parse(OPENAI_DEFAULT_BASE_URL).expect("constant URL parses"),
            api_key: Some(SecretString::from(openai_key.to_owned())),
        })
    }

    pub(super) fn answer_settings(&mut self) -> AnswerSettings {
        let prompt_tokens = self.parsed("CHAT_PROMPT_TOKENS", 6_000usize);
        if !(1_000..=120_000).contains(&prompt_tokens) {
            self.problem("CHAT_PROMPT_TOKENS", "must be between 1000 and 120000");
        }
        let passages = self.parsed("CHAT_PASSAGES", 5i64);
        if !(1..=20).contains(&passages) {
            self.problem("CHAT_PASSAGES", "must be between 1 and 20");
        }
        AnswerSettings {
            model: self
                .optional("CHAT_MODEL")
                .unwrap_or("gpt-4o-mini")
                .to_owned(),
            max_retries: self.parsed("CHAT_MAX_RETRIES", 2u32),
            first_token_timeout: Duration::from_millis(
                self.parsed("CHAT_FIRST_TOKEN_TIMEOUT_MS", 15_000u64).max(1),
            ),
            stall_timeout: Duration::from_millis(
                self.parsed("CHAT_STALL_TIMEOUT_MS", 20_000u64).max(1),
            ),
            max_retry_after: Duration::from_secs(
                self.parsed("CHAT_MAX_RETRY_AFTER_SECONDS", 10u64),
            ),
            prompt_tokens,
            passages: passages.clamp(1, 20),
        }
    }
}
