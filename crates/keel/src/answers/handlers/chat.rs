//! The two routes that answer: `POST /api/chat` (the Vercel AI SDK UI
//! message stream, for `useChat` widgets, with secret or publishable keys)
//! and `POST /api/v1/chat/completions` (OpenAI-compatible, streamed or
//! whole, for OpenAI clients and voice platforms; secret keys). Everything
//! that can fail with a clean status (credentials, input, quota, retrieval,
//! the model's first token) happens before the response starts; after that,
//! failures travel inside the stream.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use serde_json::{Value, json};

use crate::answers::conversations::{ChatCaller, ChatSession, begin_chat};
use crate::answers::pipeline::{
    self, AnswerSink, Disconnected, Generation, Outcome, Prepared, Question,
};
use crate::answers::wire::{self, Chunks, CompletionsRequest, UiChatRequest};
use crate::answers::{AnswersError, Usage};
use crate::app::App;
use crate::tenants::TenantRef;
use crate::web::error::ErrorBody;
use crate::web::{ApiError, ApiRequest, Body, BodyWriter, HandlerResult, auth, json_of};

/// The header carrying a publishable-key visitor's token, both ways.
pub const VISITOR_HEADER: &str = "x-keel-visitor-token";

/// `POST /api/chat`.
#[utoipa::path(
    post,
    path = "/api/chat",
    tag = "answers",
    security(("tenant_key" = []), ("publishable_key" = [], "visitor_token" = [])),
    request_body = UiChatRequest,
    responses(
        (status = 200, description = "The answer as the Vercel AI SDK's UI message stream \
            (server-sent events: `start`, `text-delta`, `data-usage`, `finish`, then `[DONE]`); \
            a publishable key's visitor gets its token in `x-keel-visitor-token`",
            content_type = "text/event-stream", body = String,
            headers(("x-keel-visitor-token" = String, description = "A publishable key's visitor: the token to send back on its next calls"))),
        (status = 400, description = "`invalid_field`: `messages`", body = ErrorBody),
        (status = 403, description = "`forbidden`: the publishable key does not allow the request's `Origin`", body = ErrorBody),
        (status = 404, description = "`not_found`: the conversation belongs to someone else", body = ErrorBody),
        (status = 502, description = "`chat_provider_refused`: the chat model refused the request", body = ErrorBody),
        (status = 503, description = "`chat_provider_unavailable`: the chat model is down or not configured", body = ErrorBody),
    )
)]
pub async fn chat(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    let started = Instant::now();
    let caller = auth::chat_caller(&request)?;
    let body: UiChatRequest = request.json()?;
    let (sent_history, text) = body.question()?;
    // A visitor's history is what Keel stored, never what the browser sent:
    // a visitor cannot put words in the assistant's mouth.
    let publishable = matches!(caller, ChatCaller::Publishable { .. });
    let session = begin_chat(
        &app.db,
        request.rate_gate.clone(),
        &caller,
        body.id.as_deref(),
        publishable,
    )
    .await?;
    let history = if publishable {
        session
            .history
            .iter()
            .map(|m| json!({"role": m.role, "content": m.content}))
            .collect()
    } else {
        sent_history
    };
    let question = Question {
        history,
        text: text.clone(),
        filter: body.filter,
        key_filter: session.filter.clone(),
        mode: body.search_mode,
        ..Question::default()
    };
    let (prepared, generation) = prepare_and_start(&app, &session, question).await?;

    let (writer, stream) = Body::channel();
    let mut response = Response::new(stream);
    for (name, value) in wire::UI_STREAM_HEADERS {
        response.headers_mut().insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    visitor_headers(&mut response, &session);
    tokio::spawn(stream_ui(
        app, session, prepared, generation, writer, text, started,
    ));
    Ok(response)
}

/// `POST /api/v1/chat/completions`.
#[utoipa::path(
    post,
    path = "/api/v1/chat/completions",
    tag = "answers",
    security(("tenant_key" = [])),
    request_body = CompletionsRequest,
    responses(
        (status = 200, description = "OpenAI's chat completion (with Keel's `citations` and \
            `conversation_id`), or with `stream: true` its chunks as server-sent events ending \
            in `[DONE]`",
            content(
                (Object = "application/json"),
                (String = "text/event-stream"),
            )
        ),
        (status = 400, description = "`invalid_field`: `messages`", body = ErrorBody),
        (status = 404, description = "`not_found`: the conversation belongs to someone else", body = ErrorBody),
        (status = 502, description = "`chat_provider_refused`: the chat model refused the request", body = ErrorBody),
        (status = 503, description = "`chat_provider_unavailable`: the chat model is down or not configured", body = ErrorBody),
    )
)]
pub async fn completions(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    let started = Instant::now();
    let caller = auth::chat_caller(&request)?;
    if matches!(caller, ChatCaller::Publishable { .. }) {
        return Err(ApiError::forbidden(
            "publishable keys may only call /api/chat",
        ));
    }
    let body: CompletionsRequest = request.json()?;
    let (history, text) = body.question()?;
    let conversation = body.conversation_id();
    let session = begin_chat(
        &app.db,
        request.rate_gate.clone(),
        &caller,
        conversation.as_deref(),
        false,
    )
    .await?;
    let question = Question {
        history,
        text: text.clone(),
        filter: body.filter,
        key_filter: session.filter.clone(),
        tools: body.tools,
        tool_choice: body.tool_choice,
        mode: body.search_mode,
    };
    let (prepared, generation) = prepare_and_start(&app, &session, question).await?;
    let chunks = Chunks {
        id: format!("chatcmpl-{}", uuid::Uuid::now_v7().simple()),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        model: prepared.model.clone(),
    };
    if !body.stream {
        return whole_completion(app, session, prepared, generation, chunks, text, started).await;
    }
    let include_usage = body.stream_options.unwrap_or_default().include_usage;
    let (writer, stream) = Body::channel();
    let mut response = Response::new(stream);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    tokio::spawn(stream_completion(
        app,
        session,
        prepared,
        generation,
        writer,
        chunks,
        include_usage,
        text,
        started,
    ));
    Ok(response)
}

async fn prepare_and_start(
    app: &App,
    session: &ChatSession,
    question: Question,
) -> Result<(Prepared, Generation), AnswersError> {
    let text = question.text.clone();
    let tenant = TenantRef::Trusted(session.tenant_id.clone());
    let prepared = pipeline::prepare(
        &app.answers,
        &app.db,
        &app.knowledge,
        &tenant,
        &session.assistant,
        question,
    )
    .await?;
    let generation = pipeline::start(&app.answers, &prepared, &text).await?;
    Ok((prepared, generation))
}

/// A publishable key's visitor gets its token back, readable by the widget
/// from the one origin its key allows.
fn visitor_headers(response: &mut Response<Body>, session: &ChatSession) {
    let headers = response.headers_mut();
    if let Some(token) = session
        .visitor_token
        .as_deref()
        .and_then(|t| HeaderValue::from_str(t).ok())
    {
        headers.insert(HeaderName::from_static(VISITOR_HEADER), token);
    }
    if let Some(origin) = session
        .allowed_origin
        .as_deref()
        .and_then(|o| HeaderValue::from_str(o).ok())
    {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("x-keel-visitor-token, x-request-id, retry-after"),
        );
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
    }
}

/// Writes server-sent events to the client.
struct EventSink {
    writer: BodyWriter,
    /// The UI stream's text part id; `None` on the completions stream.
    text_id: Option<&'static str>,
    chunks: Option<Chunks>,
}

impl EventSink {
    async fn send(&self, data: &Value) -> Result<(), Disconnected> {
        self.writer
            .send(wire::event(data))
            .await
            .map_err(|_| Disconnected)
    }

    async fn done(&self) {
        let _ = self.writer.send(wire::DONE).await;
    }
}

impl AnswerSink for EventSink {
    async fn text(&mut self, delta: &str) -> Result<(), Disconnected> {
        let event = match (&self.chunks, self.text_id) {
            (Some(chunks), _) => chunks.chunk(json!({"content": delta}), None),
            (None, id) => json!({"type": "text-delta", "id": id, "delta": delta}),
        };
        self.send(&event).await
    }

    async fn tool_calls(&mut self, calls: &Value) -> Result<(), Disconnected> {
        match &self.chunks {
            Some(chunks) => {
                self.send(&chunks.chunk(json!({"tool_calls": calls}), None))
                    .await
            }
            // The widget route offers the model no tools.
            None => Ok(()),
        }
    }

    async fn closed(&self) {
        self.writer.closed().await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn stream_ui(
    app: Arc<App>,
    session: ChatSession,
    prepared: Prepared,
    generation: Generation,
    writer: BodyWriter,
    question: String,
    started: Instant,
) {
    let mut sink = EventSink {
        writer,
        text_id: Some("text-1"),
        chunks: None,
    };
    let metadata = json!({
        "conversationId": session.conversation_id,
        "model": prepared.model,
        "visitorToken": session.visitor_token,
    });
    let message_id = format!("msg_{}", uuid::Uuid::now_v7().simple());
    let mut opening = vec![
        json!({"type": "start", "messageId": message_id, "messageMetadata": metadata}),
        json!({"type": "start-step"}),
    ];
    opening.extend(wire::ui_sources(&prepared.citations));
    opening.push(json!({"type": "text-start", "id": "text-1"}));
    let mut outcome = Outcome::default();
    let mut opened = true;
    for part in &opening {
        if sink.send(part).await.is_err() {
            opened = false;
            break;
        }
    }
    if opened {
        outcome = pipeline::generate(generation, &mut sink).await;
    } else {
        outcome.incomplete = true;
        outcome.disconnected = true;
    }
    let usage =
        pipeline::conclude(&app.db, &session, &prepared, &question, &outcome, started).await;
    if outcome.disconnected {
        return;
    }
    let mut closing = vec![json!({"type": "text-end", "id": "text-1"})];
    if let Some(error) = &outcome.error {
        closing.push(
            json!({"type": "error", "errorText": format!("the answer was interrupted: {error}")}),
        );
    }
    closing.push(json!({"type": "data-usage", "data": usage_data(usage, &prepared.model)}));
    closing.push(json!({"type": "finish-step"}));
    let reason = if outcome.error.is_some() {
        "error"
    } else {
        wire::ui_finish_reason(&outcome.finish_reason)
    };
    closing.push(json!({"type": "finish", "finishReason": reason}));
    for part in &closing {
        if sink.send(part).await.is_err() {
            return;
        }
    }
    sink.done().await;
}

fn usage_data(usage: Usage, model: &str) -> Value {
    json!({
        "model": model,
        "promptTokens": usage.prompt_tokens,
        "completionTokens": usage.completion_tokens,
        "totalTokens": usage.total_tokens,
    })
}

#[allow(clippy::too_many_arguments)]
async fn stream_completion(
    app: Arc<App>,
    session: ChatSession,
    prepared: Prepared,
    generation: Generation,
    writer: BodyWriter,
    chunks: Chunks,
    include_usage: bool,
    question: String,
    started: Instant,
) {
    // The first chunk carries the role, and Keel's extras clients may ignore.
    let mut first = chunks.chunk(json!({"role": "assistant", "content": ""}), None);
    first["citations"] = json!(prepared.citations);
    first["conversation_id"] = json!(session.conversation_id);
    let mut sink = EventSink {
        writer,
        text_id: None,
        chunks: Some(chunks),
    };
    let outcome = match sink.send(&first).await {
        Ok(()) => pipeline::generate(generation, &mut sink).await,
        Err(Disconnected) => Outcome {
            incomplete: true,
            disconnected: true,
            ..Outcome::default()
        },
    };
    let usage =
        pipeline::conclude(&app.db, &session, &prepared, &question, &outcome, started).await;
    if outcome.disconnected {
        return;
    }
    let chunks = sink.chunks.take().expect("the completions sink has chunks");
    let mut closing = Vec::new();
    match &outcome.error {
        Some(error) => closing.push(Chunks::error(
            &format!("the answer was interrupted: {error}"),
            "chat_provider_unavailable",
        )),
        None => {
            let reason = Some(outcome.finish_reason.as_str())
                .filter(|r| !r.is_empty())
                .unwrap_or("stop");
            closing.push(chunks.chunk(json!({}), Some(reason)));
            if include_usage {
                closing.push(chunks.usage(usage));
            }
        }
    }
    for event in &closing {
        if sink.send(event).await.is_err() {
            return;
        }
    }
    sink.done().await;
}

/// Collects a whole answer for a non-streamed completion.
struct Collector {
    tool_calls: Vec<Value>,
}

impl AnswerSink for Collector {
    async fn text(&mut self, _delta: &str) -> Result<(), Disconnected> {
        Ok(())
    }

    async fn tool_calls(&mut self, calls: &Value) -> Result<(), Disconnected> {
        wire::merge_tool_calls(&mut self.tool_calls, calls);
        Ok(())
    }

    async fn closed(&self) {
        std::future::pending::<()>().await;
    }
}

async fn whole_completion(
    app: Arc<App>,
    session: ChatSession,
    prepared: Prepared,
    generation: Generation,
    chunks: Chunks,
    question: String,
    started: Instant,
) -> HandlerResult {
    let mut collector = Collector {
        tool_calls: Vec::new(),
    };
    let outcome = pipeline::generate(generation, &mut collector).await;
    let usage =
        pipeline::conclude(&app.db, &session, &prepared, &question, &outcome, started).await;
    if let Some(error) = outcome.error {
        return Err(ApiError::from(error));
    }
    let mut message =
        json!({"role": "assistant", "content": Some(outcome.text).filter(|t| !t.is_empty())});
    if !collector.tool_calls.is_empty() {
        message["tool_calls"] = json!(collector.tool_calls);
    }
    let reason = Some(outcome.finish_reason.as_str())
        .filter(|r| !r.is_empty())
        .unwrap_or("stop");
    json_of(
        StatusCode::OK,
        &json!({
            "id": chunks.id,
            "object": "chat.completion",
            "created": chunks.created,
            "model": chunks.model,
            "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": reason}],
            "usage": usage,
            "citations": prepared.citations,
            "conversation_id": session.conversation_id,
        }),
    )
}
