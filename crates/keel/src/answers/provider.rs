//! The chat model: any OpenAI-compatible chat completions API, streamed as
//! server-sent `chat.completion.chunk`s. A request that fails before its
//! first token (429 honouring `retry-after`, 5xx, a timeout, a stream that
//! breaks before saying anything) is retried; once a token has arrived
//! nothing is retried, because the client has already read it. Dropping a
//! [`CompletionStream`] closes the connection, which cancels the upstream
//! generation: nobody pays for tokens nobody reads.

use std::collections::VecDeque;
use std::time::Duration;

use rand::Rng as _;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use secrecy::{ExposeSecret as _, SecretString};
use serde::Serialize;
use serde_json::Value;
use url::Url;

use super::Usage;
use crate::platform::config::{AnswerSettings, ChatProviderConfig};

/// The most of an error body read, to name the provider's reason.
const MAX_ERROR_BODY: usize = 16 * 1024;
/// The most one server-sent event may hold before the stream counts as broken.
const MAX_EVENT_BYTES: usize = 1024 * 1024;

pub struct ChatProvider {
    http: reqwest::Client,
    endpoint: Url,
    api_key: Option<SecretString>,
    max_retries: u32,
    first_token_timeout: Duration,
    stall_timeout: Duration,
    max_retry_after: Duration,
}

/// One chat completions request, as the API takes it.
#[derive(Debug, Serialize)]
pub struct CompletionRequest<'a> {
    pub model: &'a str,
    pub messages: &'a [Value],
    pub temperature: f32,
    pub max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tools: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<&'a Value>,
}

/// The request on the wire: streamed with a final usage chunk, or whole.
#[derive(Serialize)]
struct WireRequest<'a> {
    #[serde(flatten)]
    request: &'a CompletionRequest<'a>,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<Value>,
}

/// What a stream says, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum ProviderEvent {
    Text(String),
    /// `choices[0].delta.tool_calls` exactly as the model sent them.
    ToolCalls(Value),
    Finish(String),
    Usage(Usage),
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("the chat provider is rate limiting")]
    RateLimited { retry_after: Option<Duration> },
    #[error("the chat provider refused the request ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("the chat provider is unavailable: {0}")]
    Unavailable(String),
    #[error("the chat provider's stream broke: {0}")]
    Broken(String),
    #[error("the chat provider said nothing for {0:?}")]
    Stalled(Duration),
}

impl ProviderError {
    /// Worth another attempt, if nothing has reached the client yet.
    fn retryable(&self) -> bool {
        !matches!(self, ProviderError::Refused { .. })
    }
}

impl ChatProvider {
    pub fn new(
        config: &ChatProviderConfig,
        settings: &AnswerSettings,
        http: &reqwest::Client,
    ) -> Self {
        let mut endpoint = config.base_url.clone();
        if !endpoint.path().ends_with('/') {
            endpoint.set_path(&format!("{}/", endpoint.path()));
        }
        let endpoint = endpoint
            .join("chat/completions")
            .unwrap_or_else(|_| config.base_url.clone());
        Self {
            http: http.clone(),
            endpoint,
            api_key: config.api_key.clone(),
            max_retries: settings.max_retries,
            first_token_timeout: settings.first_token_timeout,
            stall_timeout: settings.stall_timeout,
            max_retry_after: settings.max_retry_after,
        }
    }

    /// Opens a streamed completion and waits for its first token, retrying
    /// whatever failed before it.
    pub async fn stream(
        &self,
        request: &CompletionRequest<'_>,
    ) -> Result<CompletionStream, ProviderError> {
        let wire = WireRequest {
            request,
            stream: true,
            stream_options: Some(serde_json::json!({"include_usage": true})),
        };
        let mut attempt = 0;
        loop {
            let outcome = async {
                let response = self.send(&wire).await?;
                let mut stream = CompletionStream::new(response, self.stall_timeout);
                match tokio::time::timeout(self.first_token_timeout, stream.next()).await {
                    Ok(Ok(Some(first))) => {
                        stream.pending.push_front(first);
                        Ok(stream)
                    }
                    Ok(Ok(None)) => Err(ProviderError::Broken(
                        "the stream ended before any token".into(),
                    )),
                    Ok(Err(error)) => Err(error),
                    Err(_) => Err(ProviderError::Stalled(self.first_token_timeout)),
                }
            }
            .await;
            match outcome {
                Ok(stream) => return Ok(stream),
                Err(error) => attempt = self.wait_before_retry(error, attempt).await?,
            }
        }
    }

    /// A whole (not streamed) completion: its text and usage.
    pub async fn complete(
        &self,
        request: &CompletionRequest<'_>,
    ) -> Result<(String, Usage), ProviderError> {
        let wire = WireRequest {
            request,
            stream: false,
            stream_options: None,
        };
        let mut attempt = 0;
        loop {
            let outcome = async {
                let response = self.send(&wire).await?;
                let body = tokio::time::timeout(self.first_token_timeout, response.bytes())
                    .await
                    .map_err(|_| ProviderError::Stalled(self.first_token_timeout))?
                    .map_err(|e| ProviderError::Broken(e.to_string()))?;
                let body: Value = serde_json::from_slice(&body).map_err(|e| {
                    ProviderError::Broken(format!("the completion is not JSON: {e}"))
                })?;
                let text = body["choices"][0]["message"]["content"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let usage = serde_json::from_value(body["usage"].clone()).unwrap_or_default();
                Ok((text, usage))
            }
            .await;
            match outcome {
                Ok(done) => return Ok(done),
                Err(error) => attempt = self.wait_before_retry(error, attempt).await?,
            }
        }
    }

    /// Sleeps before attempt `attempt + 1`, or gives the error back when it
    /// is final: not retryable, out of attempts, or asking to wait too long.
    async fn wait_before_retry(
        &self,
        error: ProviderError,
        attempt: u32,
    ) -> Result<u32, ProviderError> {
        if !error.retryable() || attempt >= self.max_retries {
            return Err(error);
        }
        let wait = match &error {
            ProviderError::RateLimited {
                retry_after: Some(wait),
            } if *wait > self.max_retry_after => {
                return Err(error);
            }
            ProviderError::RateLimited {
                retry_after: Some(wait),
            } => *wait,
            _ => {
                let base = Duration::from_millis(250 << attempt.min(5));
                base + Duration::from_millis(
                    rand::rng().random_range(0..=base.as_millis() as u64 / 2),
                )
            }
        };
        tracing::warn!(%error, attempt, wait_ms = wait.as_millis() as u64, "chat request failed before its first token; retrying");
        tokio::time::sleep(wait).await;
        Ok(attempt + 1)
    }

    /// One POST, its status classified.
    async fn send(&self, body: &WireRequest<'_>) -> Result<reqwest::Response, ProviderError> {
        let mut request = self.http.post(self.endpoint.clone()).json(body);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key.expose_secret());
        }
        let response = tokio::time::timeout(self.first_token_timeout, request.send())
            .await
            .map_err(|_| ProviderError::Stalled(self.first_token_timeout))?
            .map_err(|e| ProviderError::Unavailable(without_url(e)))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = retry_after(response.headers());
        let message = error_message(response).await;
        Err(match status {
            StatusCode::TOO_MANY_REQUESTS => ProviderError::RateLimited { retry_after },
            status if status.is_server_error() => {
                ProviderError::Unavailable(format!("{}: {message}", status.as_u16()))
            }
            status => ProviderError::Refused {
                status: status.as_u16(),
                message,
            },
        })
    }
}

/// A transport error without its URL (which may carry a key in a query).
fn without_url(error: reqwest::Error) -> String {
    error.without_url().to_string()
}

/// `retry-after-ms` (OpenAI's) or `retry-after` in seconds.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = |name| headers.get(name)?.to_str().ok()?.trim().parse::<f64>().ok();
    value("retry-after-ms")
        .map(|ms| Duration::from_secs_f64((ms / 1000.0).clamp(0.0, 3600.0)))
        .or_else(|| {
            value(RETRY_AFTER.as_str()).map(|s| Duration::from_secs_f64(s.clamp(0.0, 3600.0)))
        })
}

/// The provider's `error.message`, or the start of its body.
async fn error_message(response: reqwest::Response) -> String {
    let body = response.bytes().await.unwrap_or_default();
    let body = &body[..body.len().min(MAX_ERROR_BODY)];
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|json| json["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(300).collect())
}

/// The events of one streamed completion.
pub struct CompletionStream {
    response: reqwest::Response,
    stall_timeout: Duration,
    buffer: Vec<u8>,
    pending: VecDeque<ProviderEvent>,
    done: bool,
}

impl CompletionStream {
    fn new(response: reqwest::Response, stall_timeout: Duration) -> Self {
        Self {
            response,
            stall_timeout,
            buffer: Vec::new(),
            pending: VecDeque::new(),
            done: false,
        }
    }

    /// The next event; `None` once the provider said `[DONE]`. A stream
    /// that ends without `[DONE]`, or stays silent past the stall timeout,
    /// is broken.
    pub async fn next(&mut self) -> Result<Option<ProviderEvent>, ProviderError> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Ok(Some(event));
            }
            if self.done {
                return Ok(None);
            }
            if let Some(block) = take_event_block(&mut self.buffer) {
                self.done = parse_event_block(&block, &mut self.pending)?;
                continue;
            }
            if self.buffer.len() > MAX_EVENT_BYTES {
                return Err(ProviderError::Broken("an event exceeds 1 MiB".into()));
            }
            let chunk = tokio::time::timeout(self.stall_timeout, self.response.chunk())
                .await
                .map_err(|_| ProviderError::Stalled(self.stall_timeout))?
                .map_err(|e| ProviderError::Broken(without_url(e)))?;
            match chunk {
                Some(bytes) => self.buffer.extend_from_slice(&bytes),
                None => {
                    return Err(ProviderError::Broken(
                        "the stream ended without [DONE]".into(),
                    ));
                }
            }
        }
    }
}

/// Removes and returns the first complete event (up to a blank line).
fn take_event_block(buffer: &mut Vec<u8>) -> Option<String> {
    let end = buffer.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let end_crlf = buffer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4));
    let (at, len) = match (end, end_crlf) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b)?,
    };
    let block: Vec<u8> = buffer.drain(..at + len).take(at).collect();
    Some(String::from_utf8_lossy(&block).into_owned())
}

/// Reads one server-sent event into `events`; true when it is `[DONE]`.
fn parse_event_block(
    block: &str,
    events: &mut VecDeque<ProviderEvent>,
) -> Result<bool, ProviderError> {
    let data: Vec<&str> = block
        .lines()
        .filter_map(|line| line.trim_end_matches('\r').strip_prefix("data:"))
        .map(|data| data.strip_prefix(' ').unwrap_or(data))
        .collect();
    if data.is_empty() {
        return Ok(false); // a comment or keep-alive
    }
    let data = data.join("\n");
    if data.trim() == "[DONE]" {
        return Ok(true);
    }
    let chunk: Value = serde_json::from_str(&data)
        .map_err(|e| ProviderError::Broken(format!("an event is not JSON: {e}")))?;
    if let Some(error) = chunk.get("error") {
        let message = error["message"]
            .as_str()
            .unwrap_or("the provider reported an error");
        return Err(ProviderError::Broken(message.to_owned()));
    }
    let choice = &chunk["choices"][0];
    if let Some(text) = choice["delta"]["content"].as_str()
        && !text.is_empty()
    {
        events.push_back(ProviderEvent::Text(text.to_owned()));
    }
    if let Some(calls) = choice["delta"].get("tool_calls").filter(|c| c.is_array()) {
        events.push_back(ProviderEvent::ToolCalls(calls.clone()));
    }
    if let Some(reason) = choice["finish_reason"].as_str() {
        events.push_back(ProviderEvent::Finish(reason.to_owned()));
    }
    if let Some(usage) = chunk.get("usage").filter(|u| u.is_object())
        && let Ok(usage) = serde_json::from_value(usage.clone())
    {
        events.push_back(ProviderEvent::Usage(usage));
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(stream: &str) -> (Vec<ProviderEvent>, bool) {
        let mut buffer = stream.as_bytes().to_vec();
        let mut events = VecDeque::new();
        let mut done = false;
        while let Some(block) = take_event_block(&mut buffer) {
            done |= parse_event_block(&block, &mut events).unwrap();
        }
        (events.into(), done)
    }

    #[test]
    fn openai_chunks_become_text_finish_and_usage_events() {
        let stream = concat!(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n",
            ": keep-alive\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Yes, \"},\"finish_reason\":null}]}\r\n\r\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2,\"total_tokens\":11}}\n\n",
            "data: [DONE]\n\n",
        );
        let (events, done) = parse(stream);
        assert!(done);
        assert_eq!(
            events,
            vec![
                ProviderEvent::Text("Yes, ".into()),
                ProviderEvent::Finish("stop".into()),
                ProviderEvent::Usage(Usage {
                    prompt_tokens: 9,
                    completion_tokens: 2,
                    total_tokens: 11
                }),
            ]
        );
    }

    #[test]
    fn tool_call_deltas_pass_through_untouched() {
        let call = r#"[{"index":0,"id":"call_1","type":"function","function":{"name":"book","arguments":""}}]"#;
        let stream = format!("data: {{\"choices\":[{{\"delta\":{{\"tool_calls\":{call}}}}}]}}\n\n");
        let (events, _) = parse(&stream);
        assert_eq!(
            events,
            vec![ProviderEvent::ToolCalls(
                serde_json::from_str(call).unwrap()
            )]
        );
    }

    #[test]
    fn an_error_event_mid_stream_breaks_it() {
        let mut events = VecDeque::new();
        let error = parse_event_block(r#"data: {"error":{"message":"overloaded"}}"#, &mut events);
        assert!(matches!(error, Err(ProviderError::Broken(m)) if m == "overloaded"));
    }

    #[test]
    fn retry_after_reads_openai_milliseconds_then_seconds() {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", "2".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        headers.insert("retry-after-ms", "150".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(150)));
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }

    #[test]
    fn an_incomplete_event_waits_for_its_blank_line() {
        let mut buffer = b"data: {\"choices\":[]}\n".to_vec();
        assert!(take_event_block(&mut buffer).is_none());
        buffer.extend_from_slice(b"\n");
        assert!(take_event_block(&mut buffer).is_some());
        assert!(buffer.is_empty());
    }
}
