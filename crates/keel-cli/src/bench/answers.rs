//! The answers rows of `keel bench load`: Keel's own time before the first
//! upstream token of an answer (authentication, retrieval, prompt assembly),
//! measured from the client sending `POST /api/v1/chat/completions` to an
//! in-process chat model double receiving the model request, which then
//! answers instantly (the model's own speed is the provider's, not Keel's);
//! and the round trip of a Vapi `search_knowledge` tool call, which a voice
//! agent's caller waits through in silence.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rand::Rng;
use serde_json::json;

use super::{Harness, percentile};

pub const CHAT_KEY: &str = "bench-chat-key";

/// A chat completions server that notes when each request arrives and
/// answers at once with a one-token stream.
#[derive(Clone, Default)]
pub struct InstantChat {
    arrived: Arc<Mutex<Option<Instant>>>,
}

impl InstantChat {
    /// Starts the double; returns it and its base URL.
    pub async fn start() -> anyhow::Result<(Self, String)> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}/v1", listener.local_addr()?);
        let double = InstantChat::default();
        let arrived = double.arrived.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let arrived = arrived.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |_: Request<hyper::body::Incoming>| {
                            *arrived.lock().unwrap() = Some(Instant::now());
                            async {
                                let chunk = json!({"id": "b", "object": "chat.completion.chunk", "created": 0, "model": "bench",
                                "choices": [{"index": 0, "delta": {"content": "ok"}, "finish_reason": "stop"}]});
                                let body = format!("data: {chunk}\n\ndata: [DONE]\n\n");
                                Ok::<_, Infallible>(
                                    Response::builder()
                                        .header("content-type", "text/event-stream")
                                        .body(Full::new(Bytes::from(body)))
                                        .unwrap(),
                                )
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok((double, base))
    }

    fn take_arrival(&self) -> Option<Instant> {
        self.arrived.lock().unwrap().take()
    }
}

/// The answers rows for the tenant of `key`, which holds `chunks` chunks.
pub async fn rows(
    harness: &Harness,
    key: &str,
    queries: &[String],
    chunks: usize,
) -> anyhow::Result<Vec<String>> {
    let mut rows = overhead_rows(harness, key, queries, chunks).await?;
    rows.push(tool_call_row(harness, key, queries, chunks).await?);
    Ok(rows)
}

/// One table row per search mode: p50 / p95 of Keel's time before the
/// model request, over `queries` asked one at a time (after a warm-up pass
/// that caches their vectors, as a voice agent's repeated questions are).
async fn overhead_rows(
    harness: &Harness,
    key: &str,
    queries: &[String],
    chunks: usize,
) -> anyhow::Result<Vec<String>> {
    let mut rows = Vec::new();
    for mode in ["vector", "hybrid"] {
        for query in queries {
            ask(harness, key, query, mode).await?;
        }
        let mut samples: Vec<Duration> = Vec::with_capacity(queries.len());
        for query in queries {
            let sent = Instant::now();
            ask(harness, key, query, mode).await?;
            let arrived = harness
                .chat
                .take_arrival()
                .ok_or_else(|| anyhow::anyhow!("the chat double got no request for {query:?}"))?;
            samples.push(arrived - sent);
        }
        rows.push(format!(
            "| answer overhead before the model ({mode} retrieval) at {chunks} chunks: p50 / p95 | {:.1} ms / {:.1} ms |",
            percentile(&mut samples, 0.5),
            percentile(&mut samples, 0.95)
        ));
    }
    Ok(rows)
}

async fn ask(harness: &Harness, key: &str, query: &str, mode: &str) -> anyhow::Result<()> {
    let response = harness
        .client
        .post(format!("{}/api/v1/chat/completions", harness.base))
        .bearer_auth(key)
        .json(
            &json!({"model": "bench", "stream": true, "search_mode": mode,
                      "messages": [{"role": "user", "content": query}]}),
        )
        .send()
        .await?;
    anyhow::ensure!(
        response.status().is_success(),
        "answer: {}",
        response.status()
    );
    response.bytes().await?;
    Ok(())
}

/// p50 / p95 of a Vapi `tool-calls` message (authenticated by its endpoint
/// secret, stored, answered by `search_knowledge` with the default hybrid
/// search) from sending to the whole reply, over `queries` after a warm-up
/// pass that caches their vectors.
async fn tool_call_row(
    harness: &Harness,
    key: &str,
    queries: &[String],
    chunks: usize,
) -> anyhow::Result<String> {
    let endpoint = harness
        .post(
            "/api/webhooks/endpoints",
            key,
            &json!({"source": "voice", "verification": "vapi"}),
        )
        .await?;
    let id = endpoint["id"].as_str().context("endpoint id")?;
    let secret = endpoint["secret"].as_str().context("endpoint secret")?;
    for query in queries {
        tool_call(harness, id, secret, query).await?;
    }
    let mut samples = Vec::with_capacity(queries.len());
    for query in queries {
        let sent = Instant::now();
        tool_call(harness, id, secret, query).await?;
        samples.push(sent.elapsed());
    }
    Ok(format!(
        "| Vapi search_knowledge tool call (hybrid) at {chunks} chunks: p50 / p95 (HTTP, warm) | {:.1} ms / {:.1} ms |",
        percentile(&mut samples, 0.5),
        percentile(&mut samples, 0.95)
    ))
}

async fn tool_call(
    harness: &Harness,
    endpoint: &str,
    secret: &str,
    query: &str,
) -> anyhow::Result<()> {
    // Each call is a new delivery: Vapi's tool call ids are unique.
    let message = json!({"message": {
        "type": "tool-calls",
        "call": {"id": "bench-call"},
        "toolCallList": [{"id": format!("call_{:016x}", rand::rng().random::<u64>()),
                          "type": "function",
                          "function": {"name": "search_knowledge", "arguments": {"query": query}}}]
    }});
    let response = harness
        .client
        .post(format!("{}/api/webhooks/{endpoint}", harness.base))
        .header("x-vapi-secret", secret)
        .json(&message)
        .send()
        .await?;
    anyhow::ensure!(
        response.status().is_success(),
        "tool call: {}",
        response.status()
    );
    let reply: serde_json::Value = response.json().await?;
    anyhow::ensure!(
        reply["results"][0]["result"].is_string(),
        "tool call answered {reply}"
    );
    Ok(())
}
