//! The wire formats of the chat routes: what a Vercel AI SDK `useChat`
//! widget sends and reads (the UI message stream protocol v1), and what an
//! OpenAI client or a voice platform's "custom LLM" sends and reads (chat
//! completions, streamed as `chat.completion.chunk`s or whole).

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use utoipa::ToSchema;

use super::{AnswersError, Citation, Usage};
use crate::knowledge::search::Mode;

/// Messages a request may carry.
pub const MAX_MESSAGES: usize = 200;
/// The longest question, in characters.
pub const MAX_QUESTION_CHARS: usize = 4_000;
/// The longest earlier message, in characters: the prompt budget drops old
/// turns, but counting a turn's tokens must itself stay cheap.
pub const MAX_MESSAGE_CHARS: usize = 32_000;

/// Headers of a UI message stream response (the `ai` package's
/// `UI_MESSAGE_STREAM_HEADERS`).
pub const UI_STREAM_HEADERS: [(&str, &str); 3] = [
    ("content-type", "text/event-stream"),
    ("x-vercel-ai-ui-message-stream", "v1"),
    ("x-accel-buffering", "no"),
];

/// One server-sent event carrying `data`.
pub fn event(data: &Value) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}

/// The last event of both streams.
pub const DONE: &str = "data: [DONE]\n\n";

/// `POST /api/chat`, as `useChat` (`DefaultChatTransport`) sends it; the
/// widget's extra `body` fields may add `filter` and `search_mode`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct UiChatRequest {
    /// The conversation's id (`useChat`'s chat id); a new one starts a conversation.
    pub id: Option<String>,
    /// The chat so far; the last message is the user's question.
    pub messages: Vec<UiMessage>,
    /// `/api/search`'s metadata filter, ANDed with the publishable key's.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub filter: Option<Map<String, Value>>,
    /// Keel's: how to search (default hybrid).
    #[serde(default)]
    pub search_mode: Mode,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct UiMessage {
    /// `user`, `assistant` or `system`.
    pub role: String,
    /// The UI message parts; the `text` parts are read.
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub parts: Vec<Value>,
}

impl UiMessage {
    /// The message's text parts, joined.
    pub fn text(&self) -> String {
        self.parts
            .iter()
            .filter(|part| part["type"] == "text")
            .filter_map(|part| part["text"].as_str())
            .collect::<Vec<_>>()
            .join("")
    }
}

impl UiChatRequest {
    /// The question (the last message, which must be the user's) and the
    /// turns before it as chat messages.
    pub fn question(&self) -> Result<(Vec<Value>, String), AnswersError> {
        check_count(self.messages.len())?;
        let Some((last, earlier)) = self.messages.split_last() else {
            return Err(AnswersError::invalid(
                "messages",
                "must hold at least one message",
            ));
        };
        if last.role != "user" {
            return Err(AnswersError::invalid(
                "messages",
                "the last message must be the user's",
            ));
        }
        for (index, message) in earlier.iter().enumerate() {
            check_length(index, message.text().chars().count())?;
        }
        let history = earlier
            .iter()
            .filter(|m| matches!(m.role.as_str(), "user" | "assistant"))
            .map(|m| json!({"role": m.role, "content": m.text()}))
            .filter(|m| m["content"] != "")
            .collect();
        Ok((history, checked_question(last.text())?))
    }
}

/// `POST /api/v1/chat/completions`: OpenAI's body, plus Keel's optional
/// `filter`, `search_mode` and `conversation_id` (Vapi's `call.id` names the
/// conversation when no `conversation_id` is given).
#[derive(Debug, Deserialize, ToSchema)]
pub struct CompletionsRequest {
    /// Ignored: the tenant's assistant settings pick the model.
    #[serde(default)]
    pub model: Option<String>,
    /// OpenAI's chat messages; the last user message is the question.
    #[schema(value_type = Vec<Object>)]
    pub messages: Vec<Value>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub tools: Option<Value>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub tool_choice: Option<Value>,
    /// `/api/search`'s metadata filter.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub filter: Option<Map<String, Value>>,
    /// Names the conversation the turn is stored in.
    #[serde(default)]
    pub conversation_id: Option<String>,
    /// Vapi's call: its `id` names the conversation without `conversation_id`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub call: Option<Value>,
    #[serde(default)]
    pub search_mode: Mode,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

const ROLES: &[&str] = &["system", "developer", "user", "assistant", "tool"];

impl CompletionsRequest {
    /// The caller's messages are the conversation (OpenAI semantics): the
    /// question is the last user message's text; every message before the
    /// last one passes to the model as it came, tool turns included.
    pub fn question(&self) -> Result<(Vec<Value>, String), AnswersError> {
        check_count(self.messages.len())?;
        for (index, message) in self.messages.iter().enumerate() {
            let role = message["role"].as_str().unwrap_or_default();
            if !ROLES.contains(&role) {
                return Err(AnswersError::invalid(
                    &format!("messages[{index}].role"),
                    "must be system, developer, user, assistant or tool",
                ));
            }
            check_length(index, message["content"].to_string().chars().count())?;
        }
        if let Some(tools) = &self.tools
            && !tools.is_array()
        {
            return Err(AnswersError::invalid(
                "tools",
                "must be an array of tool definitions",
            ));
        }
        let Some(last_user) = self.messages.iter().rposition(|m| m["role"] == "user") else {
            return Err(AnswersError::invalid(
                "messages",
                "must hold a user message",
            ));
        };
        let question = text_of(&self.messages[last_user]["content"]);
        let mut history = self.messages.clone();
        // The question travels last; turns after it (tool results) stay in order before it.
        history.remove(last_user);
        Ok((history, checked_question(question)?))
    }

    /// The conversation this request continues, if the caller named one.
    pub fn conversation_id(&self) -> Option<String> {
        self.conversation_id
            .clone()
            .or_else(|| self.call.as_ref()?["id"].as_str().map(str::to_owned))
    }
}

fn check_count(count: usize) -> Result<(), AnswersError> {
    if count > MAX_MESSAGES {
        return Err(AnswersError::invalid(
            "messages",
            &format!("must hold at most {MAX_MESSAGES} messages"),
        ));
    }
    Ok(())
}

fn check_length(index: usize, chars: usize) -> Result<(), AnswersError> {
    if chars > MAX_MESSAGE_CHARS {
        return Err(AnswersError::invalid(
            &format!("messages[{index}].content"),
            &format!("must be at most {MAX_MESSAGE_CHARS} characters"),
        ));
    }
    Ok(())
}

fn checked_question(text: String) -> Result<String, AnswersError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(AnswersError::invalid(
            "messages",
            "the user's last message has no text",
        ));
    }
    if text.chars().count() > MAX_QUESTION_CHARS {
        return Err(AnswersError::invalid(
            "messages",
            &format!("the user's last message must be at most {MAX_QUESTION_CHARS} characters"),
        ));
    }
    Ok(text.to_owned())
}

/// A message's text: a string, or the text of its content parts.
fn text_of(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter(|part| part["type"] == "text")
            .filter_map(|part| part["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// The UI stream's source parts: a URL when the passage has one, else the
/// document by title.
pub fn ui_sources(citations: &[Citation]) -> Vec<Value> {
    citations
        .iter()
        .enumerate()
        .map(|(index, citation)| {
            let source_id = (index + 1).to_string();
            let title = citation.title.clone().unwrap_or_else(|| citation.document_id.clone());
            match &citation.source_url {
                Some(url) => json!({"type": "source-url", "sourceId": source_id, "url": url, "title": title}),
                None => json!({"type": "source-document", "sourceId": source_id, "mediaType": "text/plain", "title": title}),
            }
        })
        .collect()
}

/// The UI stream's `finishReason` for the model's.
pub fn ui_finish_reason(reason: &str) -> &'static str {
    match reason {
        "stop" => "stop",
        "length" => "length",
        "content_filter" => "content-filter",
        "tool_calls" => "tool-calls",
        _ => "other",
    }
}

/// Chunks of one streamed chat completion.
pub struct Chunks {
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl Chunks {
    pub fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
        })
    }

    /// The last chunk when `stream_options.include_usage` asked for it.
    pub fn usage(&self, usage: Usage) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage,
        })
    }

    /// An error after the stream started, as OpenAI streams one.
    pub fn error(message: &str, code: &str) -> Value {
        json!({"error": {"message": message, "type": "server_error", "code": code}})
    }
}

/// Folds streamed `tool_calls` deltas into whole calls, by `index`: the
/// first delta carries the id, type and name, later ones more arguments.
pub fn merge_tool_calls(calls: &mut Vec<Value>, deltas: &Value) {
    for delta in deltas.as_array().into_iter().flatten() {
        let index = delta["index"].as_u64().unwrap_or(calls.len() as u64) as usize;
        if index >= calls.len() {
            if index > MAX_MESSAGES {
                continue;
            }
            calls.resize(
                index + 1,
                json!({"id": "", "type": "function", "function": {"name": "", "arguments": ""}}),
            );
        }
        let call = &mut calls[index];
        if let Some(id) = delta["id"].as_str() {
            call["id"] = json!(id);
        }
        if let Some(kind) = delta["type"].as_str() {
            call["type"] = json!(kind);
        }
        for field in ["name", "arguments"] {
            if let Some(part) = delta["function"][field].as_str() {
                let whole = format!(
                    "{}{part}",
                    call["function"][field].as_str().unwrap_or_default()
                );
                call["function"][field] = json!(whole);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_use_chat_body_gives_the_question_and_the_turns_before_it() {
        let body: UiChatRequest = serde_json::from_value(json!({
            "id": "chat-1", "trigger": "submit-message", "messageId": null,
            "messages": [
                {"id": "1", "role": "user", "parts": [{"type": "text", "text": "Vegan options?"}]},
                {"id": "2", "role": "assistant", "parts": [{"type": "step-start"}, {"type": "text", "text": "Falafel [1]."}]},
                {"id": "3", "role": "user", "parts": [{"type": "text", "text": "and gluten-free?"}]},
            ]
        }))
        .unwrap();
        let (history, question) = body.question().unwrap();
        assert_eq!(question, "and gluten-free?");
        assert_eq!(
            history,
            vec![
                json!({"role": "user", "content": "Vegan options?"}),
                json!({"role": "assistant", "content": "Falafel [1]."}),
            ]
        );
    }

    #[test]
    fn bad_chat_bodies_name_the_problem() {
        let cases = [
            (json!({"messages": []}), "messages", "no message at all"),
            (
                json!({"messages": [{"role": "assistant", "parts": [{"type": "text", "text": "hi"}]}]}),
                "messages",
                "the widget must end with the user's turn",
            ),
            (
                json!({"messages": [{"role": "user", "parts": [{"type": "file", "url": "x"}]}]}),
                "messages",
                "a question without text",
            ),
            (
                json!({"messages": [{"role": "user", "parts": [{"type": "text", "text": "x".repeat(MAX_QUESTION_CHARS + 1)}]}]}),
                "messages",
                "a question too long to search",
            ),
            (
                json!({"messages": [
                    {"role": "assistant", "parts": [{"type": "text", "text": "x".repeat(MAX_MESSAGE_CHARS + 1)}]},
                    {"role": "user", "parts": [{"type": "text", "text": "and?"}]}
                ]}),
                "messages[0].content",
                "an earlier turn too long to count cheaply",
            ),
        ];
        for (body, field, reason) in cases {
            let body: UiChatRequest = serde_json::from_value(body).unwrap();
            match body.question() {
                Err(AnswersError::Invalid { field: f, .. }) => assert_eq!(f, field, "{reason}"),
                other => panic!("{reason}: {other:?}"),
            }
        }
    }

    #[test]
    fn completions_keep_tool_turns_and_take_the_last_user_message() {
        let body: CompletionsRequest = serde_json::from_value(json!({
            "model": "whatever-the-client-says",
            "messages": [
                {"role": "system", "content": "You are Ava."},
                {"role": "user", "content": [{"type": "text", "text": "Book a table"}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "book", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "booked"},
            ],
            "call": {"id": "call-42"}
        }))
        .unwrap();
        let (history, question) = body.question().unwrap();
        assert_eq!(question, "Book a table");
        assert_eq!(history.len(), 3);
        assert_eq!(history[2]["role"], "tool");
        assert_eq!(body.conversation_id().as_deref(), Some("call-42"));
        let bad: CompletionsRequest =
            serde_json::from_value(json!({"messages": [{"role": "wizard", "content": "x"}]}))
                .unwrap();
        assert!(
            matches!(bad.question(), Err(AnswersError::Invalid { field, .. }) if field == "messages[0].role")
        );
    }

    #[test]
    fn tool_call_deltas_merge_into_whole_calls() {
        let mut calls = Vec::new();
        merge_tool_calls(
            &mut calls,
            &json!([{"index": 0, "id": "call_1", "type": "function", "function": {"name": "book", "arguments": "{\"pe"}}]),
        );
        merge_tool_calls(
            &mut calls,
            &json!([{"index": 0, "function": {"arguments": "ople\":2}"}}]),
        );
        assert_eq!(
            calls,
            vec![
                json!({"id": "call_1", "type": "function", "function": {"name": "book", "arguments": "{\"people\":2}"}})
            ]
        );
    }
}
