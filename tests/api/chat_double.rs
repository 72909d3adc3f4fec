//! A double of OpenAI's chat completions API (`POST /v1/chat/completions`)
//! following its documented behaviour: bearer authentication; whole
//! completions; streamed `chat.completion.chunk`s (a first chunk with the
//! role, content deltas, a chunk with `finish_reason`, the usage chunk when
//! `stream_options.include_usage` asks, then `data: [DONE]`); tool-call
//! deltas; 429 with `retry-after`; 500; and the faults a real stream shows
//! (a stall mid-stream, a connection cut without `[DONE]`). It records every
//! request body, and notices a client that hangs up mid-stream.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

pub const CHAT_KEY: &str = "sk-test-chat";

/// What the double does with the next request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Streams (or returns whole) these text deltas.
    Text(Vec<String>),
    /// Streams these deltas with a pause before each.
    Slow(Vec<String>, Duration),
    /// Streams tool-call deltas and finishes with `tool_calls`.
    ToolCalls(Value),
    /// 429 with `retry-after: <seconds>`.
    RateLimited { retry_after_seconds: u64 },
    /// 500 with OpenAI's error body.
    ServerError,
    /// Streams these deltas, then says nothing more (the connection stays open).
    StallAfter(Vec<String>),
    /// Streams these deltas, then closes the connection without `[DONE]`.
    CutAfter(Vec<String>),
}

#[derive(Clone, Default)]
pub struct FakeChat {
    script: Arc<Mutex<VecDeque<Reply>>>,
    requests: Arc<Mutex<Vec<Value>>>,
    /// Streams whose reader hung up before the end.
    abandoned: Arc<AtomicUsize>,
}

impl FakeChat {
    /// Starts the double; returns it and its base URL (`.../v1`).
    pub async fn start() -> (Self, String) {
        let fake = FakeChat::default();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address: SocketAddr = listener.local_addr().unwrap();
        let server = fake.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let server = server.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |request: Request<hyper::body::Incoming>| {
                            let server = server.clone();
                            async move { Ok::<_, Infallible>(server.handle(request).await) }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (fake, format!("http://{address}/v1"))
    }

    /// Replies for the next requests, in order; then every request gets
    /// the default answer.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.script.lock().unwrap().extend(replies);
    }

    /// Every request body received.
    pub fn requests(&self) -> Vec<Value> {
        self.requests.lock().unwrap().clone()
    }

    /// Only the streamed requests (the answers, not the condensing calls).
    pub fn streamed_requests(&self) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| r["stream"] == true)
            .collect()
    }

    pub fn abandoned_streams(&self) -> usize {
        self.abandoned.load(Ordering::SeqCst)
    }

    async fn handle(&self, request: Request<hyper::body::Incoming>) -> Response<BoxBody> {
        let authorized = request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            == Some(&format!("Bearer {CHAT_KEY}"));
        let body = request
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        if !authorized {
            return whole(
                401,
                json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}}),
            );
        }
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        self.requests.lock().unwrap().push(body.clone());
        let streamed = body["stream"] == true;
        let reply = self
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| default_reply(&body));
        let model = body["model"].as_str().unwrap_or("gpt-4o-mini").to_owned();
        match reply {
            Reply::RateLimited {
                retry_after_seconds,
            } => {
                let mut response = whole(
                    429,
                    json!({"error": {"message": "Rate limit reached for gpt-4o-mini", "type": "requests", "param": null, "code": "rate_limit_exceeded"}}),
                );
                response.headers_mut().insert(
                    "retry-after",
                    retry_after_seconds.to_string().parse().unwrap(),
                );
                response
            }
            Reply::ServerError => whole(
                500,
                json!({"error": {"message": "The server had an error while processing your request.", "type": "server_error", "param": null, "code": null}}),
            ),
            Reply::Text(deltas) if !streamed => {
                let text = deltas.concat();
                whole(
                    200,
                    json!({
                        "id": "chatcmpl-double", "object": "chat.completion", "created": 1, "model": model,
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": null, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25}
                    }),
                )
            }
            reply => self.stream(
                reply,
                model,
                body["stream_options"]["include_usage"] == true,
            ),
        }
    }

    fn stream(&self, reply: Reply, model: String, include_usage: bool) -> Response<BoxBody> {
        let (sender, receiver) = mpsc::channel::<Bytes>(4);
        let abandoned = self.abandoned.clone();
        tokio::spawn(async move {
            let chunk = |delta: Value, finish: Value| {
                let chunk = json!({"id": "chatcmpl-double", "object": "chat.completion.chunk", "created": 1, "model": model,
                    "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]});
                Bytes::from(format!("data: {chunk}\n\n"))
            };
            let send = |bytes: Bytes| {
                let sender = sender.clone();
                let abandoned = abandoned.clone();
                async move {
                    if sender.send(bytes).await.is_err() {
                        abandoned.fetch_add(1, Ordering::SeqCst);
                        return false;
                    }
                    true
                }
            };
            if !send(chunk(
                json!({"role": "assistant", "content": ""}),
                Value::Null,
            ))
            .await
            {
                return;
            }
            let (deltas, pause, ending) = match reply {
                Reply::Text(deltas) => (deltas, Duration::ZERO, "stop"),
                Reply::Slow(deltas, pause) => (deltas, pause, "stop"),
                Reply::StallAfter(deltas) => (deltas, Duration::ZERO, "stall"),
                Reply::CutAfter(deltas) => (deltas, Duration::ZERO, "cut"),
                Reply::ToolCalls(calls) => {
                    let _ = send(chunk(json!({"tool_calls": calls}), Value::Null)).await
                        && send(chunk(json!({}), json!("tool_calls"))).await
                        && send(Bytes::from("data: [DONE]\n\n")).await;
                    return;
                }
                _ => unreachable!("whole replies are not streamed"),
            };
            for delta in deltas {
                tokio::time::sleep(pause).await;
                if !send(chunk(json!({"content": delta}), Value::Null)).await {
                    return;
                }
            }
            match ending {
                "stall" => {
                    // Keep the connection open, silent, until the reader leaves.
                    sender.closed().await;
                    abandoned.fetch_add(1, Ordering::SeqCst);
                }
                "cut" => {}
                _ => {
                    let _ = send(chunk(json!({}), json!("stop"))).await
                        && (!include_usage
                            || send(Bytes::from(format!(
                                "data: {}\n\n",
                                json!({"id": "chatcmpl-double", "object": "chat.completion.chunk", "created": 1, "model": model, "choices": [], "usage": {"prompt_tokens": 120, "completion_tokens": 12, "total_tokens": 132}})
                            )))
                            .await)
                        && send(Bytes::from("data: [DONE]\n\n")).await;
                }
            }
        });
        let frames = futures::stream::unfold(receiver, |mut receiver| async move {
            receiver
                .recv()
                .await
                .map(|bytes| (Ok::<_, Infallible>(Frame::data(bytes)), receiver))
        });
        Response::builder()
            .status(200)
            .header("content-type", "text/event-stream")
            .body(BoxBody::new(StreamBody::new(frames)))
            .unwrap()
    }
}

type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

fn whole(status: u16, body: Value) -> Response<BoxBody> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(BoxBody::new(Full::new(Bytes::from(body.to_string()))))
        .unwrap()
}

/// Without a script: a condensing call gets the conversation's user turns
/// joined (so a test can see which history it read); an answer gets a short
/// text citing passage 1.
fn default_reply(body: &Value) -> Reply {
    if body["stream"] == true {
        return Reply::Text(vec!["According to our menu, ".into(), "yes [1].".into()]);
    }
    let users: Vec<&str> = body["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["role"] == "user" || m["role"] == "assistant")
        .filter_map(|m| m["content"].as_str())
        .collect();
    Reply::Text(vec![users.join(" ")])
}
