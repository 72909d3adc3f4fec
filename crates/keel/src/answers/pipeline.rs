//! The answer pipeline, the same for every route that answers: a follow-up
//! condensed into a standalone search query, hybrid search over the
//! tenant's knowledge (under the caller's and the key's filters), the prompt,
//! then the answer streamed into a sink as it arrives — from the chat model,
//! or quoted from the passages when none is configured.

use std::future::Future;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Map, Value, json};

use super::conversations::{ChatSession, RecordedTurn, record_turn};
use super::provider::{
    ChatProvider, CompletionRequest, CompletionStream, ProviderError, ProviderEvent,
};
use super::{AnswersError, AssistantSettings, Citation, Usage, extractive, prompt};
use crate::knowledge::Knowledge;
use crate::knowledge::search::{self, Mode, SearchFilter, SearchRequest};
use crate::platform::config::Config;
use crate::platform::db::{Db, SqlFunction};
use crate::tenants::TenantRef;

/// The most of the conversation the condensing call reads.
const CONDENSE_TURNS: usize = 6;
const MAX_QUERY_CHARS: usize = 500;
const CONDENSE_INSTRUCTIONS: &str = "Rewrite the user's last message as one standalone search query \
for the business's knowledge base, resolving references to earlier messages (\"they\", \"and on \
Sundays?\"). Reply with the query only, no quotes, no explanation.";

/// The answers area's state, built once per cold start.
pub struct Answers {
    provider: Option<ChatProvider>,
    default_model: String,
    prompt_tokens: usize,
    passages: i64,
}

impl Answers {
    pub fn new(config: &Config, http: &reqwest::Client) -> Self {
        Self {
            provider: config
                .chat
                .as_ref()
                .map(|chat| ChatProvider::new(chat, &config.answers, http)),
            default_model: config.answers.model.clone(),
            prompt_tokens: config.answers.prompt_tokens,
            passages: config.answers.passages,
        }
    }

    /// The model that answers for a tenant with `settings`.
    pub fn model(&self, settings: &AssistantSettings) -> String {
        match &self.provider {
            None => extractive::MODEL.to_owned(),
            Some(_) => settings
                .model
                .clone()
                .unwrap_or_else(|| self.default_model.clone()),
        }
    }
}

/// One question, as a route read it.
#[derive(Debug, Clone, Default)]
pub struct Question {
    /// The conversation before the question, oldest first, as chat
    /// completions messages (user, assistant, tool, system).
    pub history: Vec<Value>,
    pub text: String,
    /// The caller's metadata filter.
    pub filter: Option<Map<String, Value>>,
    /// A publishable key's own filter (`{"metadata": {…}}`, as
    /// `/api/search` takes it), which the caller cannot loosen.
    pub key_filter: Option<Value>,
    pub tools: Option<Value>,
    pub tool_choice: Option<Value>,
    /// How to search: hybrid unless the caller asks otherwise.
    pub mode: Mode,
}

/// Everything decided before the model speaks.
#[derive(Debug)]
pub struct Prepared {
    pub query: String,
    pub citations: Vec<Citation>,
    pub messages: Vec<Value>,
    pub model: String,
    pub temperature: f32,
    pub max_tokens: u32,
    pub tools: Option<Value>,
    pub tool_choice: Option<Value>,
    /// What condensing the question cost.
    pub usage: Usage,
    /// Retrieval and prompt assembly: Keel's own time before the model.
    pub overhead: Duration,
}

/// Condenses, searches and builds the prompt.
pub async fn prepare(
    answers: &Answers,
    db: &Db,
    knowledge: &Knowledge,
    tenant: &TenantRef,
    settings: &AssistantSettings,
    question: Question,
) -> Result<Prepared, AnswersError> {
    let text = question.text.trim();
    if text.is_empty() {
        return Err(AnswersError::invalid(
            "messages",
            "the last message must be a user message with text",
        ));
    }
    let (query, usage) = condense(answers, settings, &question.history, text).await;
    let started = Instant::now();
    let filter = merged_filter(question.filter, question.key_filter)?;
    let found = search::search(
        db,
        knowledge,
        tenant,
        SearchRequest {
            query: query.clone(),
            top_k: answers.passages,
            mode: question.mode,
            min_score: None,
            filter: filter.map(|metadata| SearchFilter {
                metadata: Some(metadata),
            }),
        },
    )
    .await?;
    let citations: Vec<Citation> = found
        .results
        .into_iter()
        .map(|hit| Citation {
            document_id: hit.document_id,
            title: Some(hit.title).filter(|t| !t.is_empty()),
            chunk_index: i32::try_from(hit.chunk_index).unwrap_or(i32::MAX),
            source_url: hit.source_url,
            text: hit.content,
        })
        .collect();
    let system = prompt::system_message(&settings.instructions, &citations);
    let mut turns = question.history;
    turns.push(json!({"role": "user", "content": text}));
    let messages = prompt::assemble(system, &turns, answers.prompt_tokens);
    Ok(Prepared {
        query,
        citations,
        messages,
        model: answers.model(settings),
        temperature: settings.temperature,
        max_tokens: settings.max_answer_tokens,
        tools: question.tools,
        tool_choice: question.tool_choice,
        usage,
        overhead: started.elapsed(),
    })
}

/// The caller's filter ANDed with the key's: the key's keys win, so a
/// visitor cannot widen what a publishable key may read.
fn merged_filter(
    caller: Option<Map<String, Value>>,
    key: Option<Value>,
) -> Result<Option<Map<String, Value>>, AnswersError> {
    let key = match key {
        None | Some(Value::Null) => None,
        Some(Value::Object(map)) => Some(map),
        Some(_) => {
            return Err(AnswersError::Internal(anyhow::anyhow!(
                "a key's filter is not an object"
            )));
        }
    };
    Ok(match (caller, key) {
        (None, key) => key,
        (caller, None) => caller,
        (Some(mut caller), Some(key)) => {
            caller.extend(key);
            Some(caller)
        }
    })
}

/// The standalone search query for `text`: the text itself on a first turn;
/// on a follow-up, the model's rewrite (one short call), or without a model
/// the previous question and this one together.
async fn condense(
    answers: &Answers,
    settings: &AssistantSettings,
    history: &[Value],
    text: &str,
) -> (String, Usage) {
    let earlier: Vec<&Value> = history
        .iter()
        .filter(|m| {
            matches!(m["role"].as_str(), Some("user" | "assistant")) && m["content"].is_string()
        })
        .collect();
    let Some(previous_question) = earlier
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .and_then(|m| m["content"].as_str())
    else {
        return (text.to_owned(), Usage::default());
    };
    let Some(provider) = &answers.provider else {
        return (
            bounded(&format!("{previous_question} {text}")),
            Usage::default(),
        );
    };
    let mut messages = vec![json!({"role": "system", "content": CONDENSE_INSTRUCTIONS})];
    let recent = earlier.len().saturating_sub(CONDENSE_TURNS);
    messages.extend(earlier[recent..].iter().map(|m| {
        json!({"role": m["role"], "content": bounded(m["content"].as_str().unwrap_or_default())})
    }));
    messages.push(json!({"role": "user", "content": text}));
    let model = answers.model(settings);
    let request = CompletionRequest {
        model: &model,
        messages: &messages,
        temperature: 0.0,
        max_tokens: 64,
        tools: None,
        tool_choice: None,
    };
    match provider.complete(&request).await {
        Ok((query, usage)) if !query.trim().is_empty() => (bounded(query.trim()), usage),
        Ok((_, usage)) => (text.to_owned(), usage),
        Err(error) => {
            tracing::warn!(%error, "condensing the follow-up failed; searching for it as asked");
            (
                bounded(&format!("{previous_question} {text}")),
                Usage::default(),
            )
        }
    }
}

fn bounded(text: &str) -> String {
    text.chars().take(MAX_QUERY_CHARS).collect()
}

/// Where an answer's text comes from.
pub enum Generation {
    Model(CompletionStream),
    Extractive(Vec<String>),
}

/// Starts the answer: opens the model's stream and waits for its first
/// token (retrying what fails before it), or composes the extractive answer.
/// A failure here comes before anything was sent to the client.
pub async fn start(
    answers: &Answers,
    prepared: &Prepared,
    question_text: &str,
) -> Result<Generation, AnswersError> {
    let Some(provider) = &answers.provider else {
        return Ok(Generation::Extractive(extractive::answer(
            question_text,
            &prepared.citations,
            prepared.tools.is_some(),
        )));
    };
    let request = CompletionRequest {
        model: &prepared.model,
        messages: &prepared.messages,
        temperature: prepared.temperature,
        max_tokens: prepared.max_tokens,
        tools: prepared.tools.as_ref(),
        tool_choice: prepared.tool_choice.as_ref(),
    };
    Ok(Generation::Model(provider.stream(&request).await?))
}

/// The client went away; nothing more can be sent.
#[derive(Debug)]
pub struct Disconnected;

/// Where an answer streams to: a route's wire format.
pub trait AnswerSink: Send {
    fn text(&mut self, delta: &str) -> impl Future<Output = Result<(), Disconnected>> + Send;
    fn tool_calls(
        &mut self,
        calls: &Value,
    ) -> impl Future<Output = Result<(), Disconnected>> + Send;
    /// Resolves once the client has gone.
    fn closed(&self) -> impl Future<Output = ()> + Send;
}

/// How an answer ended.
#[derive(Debug, Default)]
pub struct Outcome {
    pub text: String,
    pub usage: Usage,
    pub finish_reason: String,
    /// Stopped before the model finished: a broken or stalled stream, or a
    /// client that hung up.
    pub incomplete: bool,
    pub error: Option<ProviderError>,
    pub disconnected: bool,
    pub first_token_at: Option<Instant>,
}

/// Streams the answer into `sink` to its end, the first failure, or the
/// client's departure (which drops the model's stream, cancelling it).
pub async fn generate<S: AnswerSink>(generation: Generation, sink: &mut S) -> Outcome {
    let mut outcome = Outcome::default();
    match generation {
        Generation::Extractive(lines) => {
            for line in lines {
                outcome.first_token_at.get_or_insert_with(Instant::now);
                outcome.text.push_str(&line);
                if sink.text(&line).await.is_err() {
                    outcome.disconnected = true;
                    outcome.incomplete = true;
                    return outcome;
                }
            }
            outcome.finish_reason = "stop".into();
        }
        Generation::Model(mut stream) => loop {
            let next = tokio::select! {
                next = stream.next() => Some(next),
                () = sink.closed() => None,
            };
            let sent = match next {
                None => Err(Disconnected),
                Some(Ok(Some(ProviderEvent::Text(delta)))) => {
                    outcome.first_token_at.get_or_insert_with(Instant::now);
                    outcome.text.push_str(&delta);
                    sink.text(&delta).await
                }
                Some(Ok(Some(ProviderEvent::ToolCalls(calls)))) => {
                    outcome.first_token_at.get_or_insert_with(Instant::now);
                    sink.tool_calls(&calls).await
                }
                Some(Ok(Some(ProviderEvent::Finish(reason)))) => {
                    outcome.finish_reason = reason;
                    Ok(())
                }
                Some(Ok(Some(ProviderEvent::Usage(usage)))) => {
                    outcome.usage = usage;
                    Ok(())
                }
                Some(Ok(None)) => break,
                Some(Err(error)) => {
                    tracing::warn!(%error, "the answer stream broke");
                    outcome.error = Some(error);
                    outcome.incomplete = true;
                    break;
                }
            };
            if sent.is_err() {
                tracing::info!("the client left mid-answer; the model's stream is cancelled");
                outcome.disconnected = true;
                outcome.incomplete = true;
                break;
            }
        },
    }
    outcome
}

/// `keel_chat_observe`: one answer's tokens and time to first token, into
/// the counters `/api/metrics` reports.
#[derive(Serialize)]
struct ChatObserve {
    prompt_tokens: u32,
    completion_tokens: u32,
    ttft_seconds: Option<f64>,
}

impl SqlFunction for ChatObserve {
    const NAME: &'static str = "keel_chat_observe";
    type Output = Value;
}

/// After an answer, complete or not: the question and the answer stored
/// with their citations and usage (the partial answer marked incomplete),
/// and the metrics counted. Returns what the answer cost in all, the
/// condensing call included. Failures are logged: the client already has
/// the answer.
pub async fn conclude(
    db: &Db,
    session: &ChatSession,
    prepared: &Prepared,
    question: &str,
    outcome: &Outcome,
    started: Instant,
) -> Usage {
    let usage = prepared.usage + outcome.usage;
    let turn = RecordedTurn {
        user: question.to_owned(),
        answer: outcome.text.clone(),
        citations: prepared.citations.clone(),
        usage,
        model: prepared.model.clone(),
        incomplete: outcome.incomplete,
    };
    let observe = ChatObserve {
        prompt_tokens: usage.prompt_tokens,
        completion_tokens: usage.completion_tokens,
        ttft_seconds: outcome
            .first_token_at
            .map(|at| at.duration_since(started).as_secs_f64()),
    };
    let (recorded, observed) = tokio::join!(record_turn(db, session, &turn), db.run(&observe));
    if let Err(error) = recorded {
        tracing::error!(%error, conversation = %session.conversation_id, "storing the answer failed");
    }
    if let Err(error) = observed {
        tracing::warn!(%error, "counting the answer's metrics failed");
    }
    usage
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keys_filter_wins_over_the_callers() {
        let caller = json!({"public": false, "lang": "en"}).as_object().cloned();
        let merged = merged_filter(caller, Some(json!({"public": true})))
            .unwrap()
            .unwrap();
        assert_eq!(Value::Object(merged), json!({"public": true, "lang": "en"}));
        let only_key = merged_filter(None, Some(json!({"public": true}))).unwrap();
        assert_eq!(only_key.map(Value::Object), Some(json!({"public": true})));
        assert_eq!(merged_filter(None, None).unwrap(), None);
    }
}
