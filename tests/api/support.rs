//! Loopback servers the tests put around Keel: a TCP proxy that can cut or
//! stall the database, a PostgREST emulator over the real Postgres, and
//! doubles of the paid APIs (Sentry ingestion, OpenAI's `/models`) that follow
//! their documented behaviour.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Serves `handler` over HTTP/1.1 on a random loopback port.
pub async fn serve_http<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Bytes>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Bytes>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                        let handler = handler.clone();
                        async move {
                            let (parts, body) = request.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let response = handler(Request::from_parts(parts, body)).await;
                            Ok::<_, std::convert::Infallible>(response.map(Full::new))
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    address
}

pub fn json_reply(status: StatusCode, body: Value) -> Response<Bytes> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Bytes::from(body.to_string()))
        .unwrap()
}

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    Forward,
    /// Closes every connection, like a stopped server.
    Refuse,
    /// Accepts and holds connections without a byte through, like a dead host.
    Stall,
}

/// A TCP proxy in front of Postgres that a test can cut and restore.
pub struct TcpProxy {
    pub address: SocketAddr,
    mode: watch::Sender<ProxyMode>,
}

impl TcpProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (mode, _) = watch::channel(ProxyMode::Forward);
        let modes = mode.clone();
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let mut changes = modes.subscribe();
                let current = *changes.borrow_and_update();
                tokio::spawn(async move {
                    match current {
                        ProxyMode::Refuse => drop(client),
                        ProxyMode::Stall => {
                            // Hold the socket until the mode changes, then drop it.
                            let _ = changes.changed().await;
                            drop(client);
                        }
                        ProxyMode::Forward => {
                            let Ok(server) = TcpStream::connect(upstream).await else {
                                return;
                            };
                            let (mut client, mut server) = (client, server);
                            tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                                // Any change of mode severs live connections.
                                _ = changes.changed() => {}
                            }
                        }
                    }
                });
            }
        });
        Self { address, mode }
    }

    pub fn set(&self, mode: ProxyMode) {
        self.mode.send_replace(mode);
    }
}

/// A stand-in for Sentry's ingestion endpoint that records every envelope.
#[derive(Clone, Default)]
pub struct FakeSentry {
    envelopes: Arc<Mutex<Vec<String>>>,
}

impl FakeSentry {
    pub async fn start() -> (Self, String) {
        let sentry = FakeSentry::default();
        let recorder = sentry.clone();
        let address = serve_http(move |request: Request<Bytes>| {
            let recorder = recorder.clone();
            async move {
                if request.uri().path() == "/api/42/envelope/" {
                    recorder
                        .envelopes
                        .lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(request.body()).into_owned());
                }
                json_reply(StatusCode::OK, json!({"id": "0"}))
            }
        })
        .await;
        (sentry, format!("http://public@{address}/42"))
    }

    pub fn envelopes(&self) -> Vec<String> {
        self.envelopes.lock().unwrap().clone()
    }
}

/// PostgREST's RPC behaviour over the real test database: the role comes from
/// the key (service_role JWT or sb_secret_ key; a JWT without Authorization
/// runs as anon), the body is the function's single jsonb argument, results
/// come back bare and errors as `{"code","message","details","hint"}` with
/// PostgREST's documented statuses.
pub async fn start_postgrest(database_url: String, service_key: String) -> SocketAddr {
    serve_http(move |request: Request<Bytes>| {
        let database_url = database_url.clone();
        let service_key = service_key.clone();
        async move { postgrest_rpc(request, &database_url, &service_key).await }
    })
    .await
}

async fn postgrest_rpc(
    request: Request<Bytes>,
    database_url: &str,
    service_key: &str,
) -> Response<Bytes> {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    if header("apikey").as_deref() != Some(service_key) {
        return json_reply(
            StatusCode::UNAUTHORIZED,
            json!({"message": "Invalid API key", "hint": "Double check your Supabase `anon` or `service_role` API key."}),
        );
    }
    let role = if service_key.starts_with("sb_secret_") {
        match header("authorization") {
            None => "service_role",
            Some(auth) if auth == format!("Bearer {service_key}") => "service_role",
            Some(_) => {
                return json_reply(
                    StatusCode::UNAUTHORIZED,
                    json!({"code": "PGRST301", "message": "Expected 3 parts in JWT; got 1", "details": null, "hint": null}),
                );
            }
        }
    } else if header("authorization") == Some(format!("Bearer {service_key}")) {
        "service_role"
    } else {
        "anon"
    };
    let Some(function) = request.uri().path().strip_prefix("/rest/v1/rpc/") else {
        return json_reply(
            StatusCode::NOT_FOUND,
            json!({"code": "PGRST125", "message": "Invalid path specified in request URL"}),
        );
    };
    if !function
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return json_reply(
            StatusCode::NOT_FOUND,
            json!({"code": "PGRST202", "message": "Could not find the function"}),
        );
    }
    let args: Value = match serde_json::from_slice(request.body()) {
        Ok(args) => args,
        Err(_) => {
            return json_reply(
                StatusCode::BAD_REQUEST,
                json!({"code": "PGRST102", "message": "Empty or invalid json", "details": null, "hint": null}),
            );
        }
    };
    let mut client = super::helpers::connect(database_url).await;
    let transaction = client.transaction().await.unwrap();
    transaction
        .batch_execute(&format!("set local role {role}"))
        .await
        .unwrap();
    let sql = format!("select public.{function}($1::jsonb)");
    let result = transaction.query_one(&sql, &[&args]).await;
    match result {
        Ok(row) => {
            transaction.commit().await.unwrap();
            let value: Option<Value> = row.get(0);
            json_reply(StatusCode::OK, value.unwrap_or(Value::Null))
        }
        Err(error) => {
            let Some(db) = error.as_db_error() else {
                return json_reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"code": "PGRST000", "message": "Database connection error"}),
                );
            };
            let code = db.code().code().to_owned();
            if code == "42883" {
                return json_reply(
                    StatusCode::NOT_FOUND,
                    json!({"code": "PGRST202", "message": format!("Could not find the function public.{function} without parameters in the schema cache"), "details": null, "hint": null}),
                );
            }
            json_reply(
                postgrest_status(&code, role),
                json!({"code": code, "message": db.message(), "details": db.detail(), "hint": db.hint()}),
            )
        }
    }
}

/// https://postgrest.org/en/stable/references/errors.html#http-status-codes
fn postgrest_status(code: &str, role: &str) -> StatusCode {
    match code {
        "23503" | "23505" => StatusCode::CONFLICT,
        "P0001" => StatusCode::BAD_REQUEST,
        "42501" if role == "anon" => StatusCode::UNAUTHORIZED,
        "42501" => StatusCode::FORBIDDEN,
        "42P01" => StatusCode::NOT_FOUND,
        _ if code.starts_with("08") || code.starts_with("53") => StatusCode::SERVICE_UNAVAILABLE,
        _ if [
            "25", "2D", "38", "39", "3B", "40", "54", "55", "57", "58", "F0", "HV", "P0", "XX",
        ]
        .iter()
        .any(|class| code.starts_with(class)) =>
        {
            StatusCode::INTERNAL_SERVER_ERROR
        }
        _ => StatusCode::BAD_REQUEST,
    }
}

/// An OpenAI-compatible `/v1/models` that answers with `status` after `delay`.
pub async fn start_models_endpoint(status: StatusCode, delay: std::time::Duration) -> String {
    let address = serve_http(move |request: Request<Bytes>| async move {
        tokio::time::sleep(delay).await;
        if request.uri().path() != "/v1/models" {
            return json_reply(StatusCode::NOT_FOUND, json!({"error": {"message": "not found"}}));
        }
        if status == StatusCode::UNAUTHORIZED {
            return json_reply(
                status,
                json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "code": "invalid_api_key"}}),
            );
        }
        json_reply(status, json!({"object": "list", "data": [{"id": "text-embedding-3-small", "object": "model"}]}))
    })
    .await;
    format!("http://{address}/v1")
}

/// One scripted answer of the fake OpenAI server.
#[derive(Debug, Clone)]
pub enum Scripted {
    /// 429 with `retry-after-ms`, as OpenAI rate limits.
    RateLimited { retry_after_ms: u64 },
    /// A 5xx, as during an incident.
    ServerError(u16),
    /// 429 with `retry-after` in seconds, as a provider's gateway says it.
    RateLimitedFor { retry_after_seconds: u64 },
    /// A 400 naming the problem, as for an input that is too long.
    BadRequest,
    /// Accepts the connection, then says nothing for this long.
    Hang(std::time::Duration),
}

/// OpenAI's `POST /v1/embeddings` and `GET /v1/models`, following the
/// documented request and response shapes and errors. Vectors are
/// deterministic bags of words (so texts sharing words are near each other),
/// unit length, of the requested `dimensions`. Scripted answers are served
/// first, in order; then every request succeeds (or fails, if `always`).
#[derive(Clone, Default)]
pub struct FakeOpenAi {
    script: Arc<Mutex<VecDeque<Scripted>>>,
    always: Arc<Mutex<Option<Scripted>>>,
    requests: Arc<Mutex<Vec<Value>>>,
    rejects: Arc<Mutex<Option<String>>>,
}

impl FakeOpenAi {
    pub async fn start() -> (Self, String) {
        let fake = FakeOpenAi::default();
        let server = fake.clone();
        let address = serve_http(move |request| server.clone().handle(request)).await;
        (fake, format!("http://{address}/v1"))
    }

    pub fn script(&self, answers: impl IntoIterator<Item = Scripted>) {
        self.script.lock().unwrap().extend(answers);
    }

    pub fn always(&self, answer: Option<Scripted>) {
        *self.always.lock().unwrap() = answer;
    }

    /// Answers 400 to every request with an input containing `needle`, as
    /// OpenAI does for one input over the model's context length.
    pub fn reject_inputs_containing(&self, needle: &str) {
        *self.rejects.lock().unwrap() = Some(needle.to_owned());
    }

    /// Bodies of every `/v1/embeddings` request received, failures included.
    pub fn requests(&self) -> Vec<Value> {
        self.requests.lock().unwrap().clone()
    }

    /// Inputs embedded successfully or not, over all requests.
    pub fn inputs_received(&self) -> usize {
        self.requests()
            .iter()
            .map(|r| r["input"].as_array().map_or(1, Vec::len))
            .sum()
    }

    async fn handle(self, request: Request<Bytes>) -> Response<Bytes> {
        if request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            != Some("Bearer sk-test")
        {
            return json_reply(
                StatusCode::UNAUTHORIZED,
                json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}}),
            );
        }
        if request.uri().path() == "/v1/models" {
            return json_reply(
                StatusCode::OK,
                json!({"object": "list", "data": [{"id": "text-embedding-3-small", "object": "model"}]}),
            );
        }
        let body: Value = serde_json::from_slice(request.body()).unwrap_or(Value::Null);
        self.requests.lock().unwrap().push(body.clone());
        let scripted = self
            .script
            .lock()
            .unwrap()
            .pop_front()
            .or_else(|| self.always.lock().unwrap().clone());
        match scripted {
            Some(Scripted::RateLimited { retry_after_ms }) => {
                return Response::builder()
                    .status(429)
                    .header("content-type", "application/json")
                    .header("retry-after-ms", retry_after_ms.to_string())
                    .header("x-ratelimit-remaining-requests", "0")
                    .body(Bytes::from(json!({"error": {"message": "Rate limit reached for text-embedding-3-small", "type": "requests", "param": null, "code": "rate_limit_exceeded"}}).to_string()))
                    .unwrap();
            }
            Some(Scripted::RateLimitedFor {
                retry_after_seconds,
            }) => {
                return Response::builder()
                    .status(429)
                    .header("content-type", "application/json")
                    .header("retry-after", retry_after_seconds.to_string())
                    .body(Bytes::from(json!({"error": {"message": "Rate limit reached", "type": "requests", "param": null, "code": "rate_limit_exceeded"}}).to_string()))
                    .unwrap();
            }
            Some(Scripted::ServerError(status)) => {
                return json_reply(
                    StatusCode::from_u16(status).unwrap(),
                    json!({"error": {"message": "The server had an error while processing your request.", "type": "server_error", "param": null, "code": null}}),
                );
            }
            Some(Scripted::BadRequest) => {
                return json_reply(
                    StatusCode::BAD_REQUEST,
                    json!({"error": {"message": "This model's maximum context length is 8192 tokens.", "type": "invalid_request_error", "param": "input", "code": null}}),
                );
            }
            Some(Scripted::Hang(duration)) => tokio::time::sleep(duration).await,
            None => {}
        }
        let inputs: Vec<String> = match &body["input"] {
            Value::String(text) => vec![text.clone()],
            Value::Array(items) => items
                .iter()
                .filter_map(|i| i.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        let dimensions = body["dimensions"].as_u64().unwrap_or(1536) as usize;
        let rejected = self.rejects.lock().unwrap().clone();
        if let Some(needle) = rejected
            && inputs.iter().any(|input| input.contains(&needle))
        {
            return json_reply(
                StatusCode::BAD_REQUEST,
                json!({"error": {"message": "This model's maximum context length is 8192 tokens.", "type": "invalid_request_error", "param": "input", "code": null}}),
            );
        }
        if inputs.is_empty() || inputs.len() > 2048 {
            return json_reply(
                StatusCode::BAD_REQUEST,
                json!({"error": {"message": "'input' is invalid", "type": "invalid_request_error", "param": "input", "code": null}}),
            );
        }
        let data: Vec<Value> = inputs
            .iter()
            .enumerate()
            .map(|(index, text)| json!({"object": "embedding", "index": index, "embedding": bag_of_words(text, dimensions)}))
            .collect();
        json_reply(
            StatusCode::OK,
            json!({"object": "list", "data": data, "model": body["model"], "usage": {"prompt_tokens": 1, "total_tokens": 1}}),
        )
    }
}

/// A unit vector counting (crudely stemmed) words into `dimensions` buckets.
pub fn bag_of_words(text: &str, dimensions: usize) -> Vec<f32> {
    use sha2::Digest as _;
    let mut vector = vec![0f32; dimensions];
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.len() > 2)
    {
        let word = word.to_lowercase();
        let stem = word.strip_suffix('s').unwrap_or(&word);
        let digest = sha2::Sha256::digest(stem.as_bytes());
        let bucket = u64::from_le_bytes(digest[..8].try_into().unwrap()) as usize % dimensions;
        vector[bucket] += 1.0;
    }
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        vector.iter_mut().for_each(|x| *x /= norm);
    } else {
        vector[0] = 1.0;
    }
    vector
}
