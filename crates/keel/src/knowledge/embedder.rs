//! The client for OpenAI's `/embeddings` API (or any compatible server, such
//! as `keel serve`'s local model).
//!
//! The client batches by both limits OpenAI documents (at most 2,048 inputs
//! and 300,000 tokens a request) and retries 408/409/429/5xx, timeouts and
//! connection failures with exponential backoff and jitter, honouring
//! `retry-after-ms` and `retry-after`, always within the caller's deadline.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::Rng as _;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;

use super::EmbeddingModel;
use crate::platform::config::Config;
use crate::platform::tokens;

/// OpenAI: at most 2,048 inputs per request.
pub const MAX_INPUTS_PER_REQUEST: usize = 2048;
/// OpenAI: at most 300,000 tokens summed over a request's inputs.
pub const MAX_TOKENS_PER_REQUEST: usize = 300_000;
/// The longest pause Keel accepts from a `retry-after` header.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum EmbeddingError {
    #[error("the provider rate-limited every attempt (429) after {attempts} attempts")]
    RateLimited {
        attempts: u32,
        /// The provider's `retry-after` on the last attempt.
        retry_after: Option<Duration>,
    },
    #[error("the provider failed with HTTP {status} after {attempts} attempts")]
    ServerError {
        status: u16,
        attempts: u32,
        retry_after: Option<Duration>,
    },
    #[error("the provider timed out after {attempts} attempts")]
    Timeout { attempts: u32 },
    #[error("the provider was unreachable after {attempts} attempts")]
    Unreachable { attempts: u32 },
    #[error("the provider rejected the request (HTTP {status}): {message}")]
    Rejected { status: u16, message: String },
    #[error("unexpected provider response: {0}")]
    Protocol(String),
    #[error("no time left before the deadline to ask the provider")]
    Deadline,
}

/// Whose fault a failed request was, which decides what happens to its jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// The provider refused these inputs (400, 413, 422): one of them is
    /// bad; splitting the batch finds which.
    Input,
    /// The provider answered something unusable for these inputs: their
    /// jobs spend an attempt.
    Unusable,
    /// The provider is unavailable to everyone (unreachable, timeouts, 429,
    /// 5xx) or refuses this deployment (401, 403, 404: a key or model to
    /// fix): nothing is wrong with the inputs, which wait without spending
    /// an attempt.
    Outage,
    /// The run's time ran out before the provider could answer.
    OutOfTime,
}

impl EmbeddingError {
    pub fn class(&self) -> FailureClass {
        match self {
            Self::Rejected {
                status: 400 | 413 | 422,
                ..
            } => FailureClass::Input,
            Self::Protocol(_) => FailureClass::Unusable,
            Self::Deadline => FailureClass::OutOfTime,
            Self::Rejected { .. }
            | Self::RateLimited { .. }
            | Self::ServerError { .. }
            | Self::Timeout { .. }
            | Self::Unreachable { .. } => FailureClass::Outage,
        }
    }

    /// How long the provider asked to be left alone, if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after, .. } | Self::ServerError { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }
}

/// What one attempt came to.
enum AttemptError {
    Retry {
        error: EmbeddingError,
        after: Option<Duration>,
    },
    Fatal(EmbeddingError),
}

/// The embeddings client, built once per cold start.
pub struct Embedder {
    http: reqwest::Client,
    endpoint: String,
    api_key: Option<SecretString>,
    max_retries: u32,
    request_timeout: Duration,
    requests: AtomicU64,
}

#[derive(Deserialize)]
struct EmbeddingResponse {
    data: Vec<EmbeddingDatum>,
}

#[derive(Deserialize)]
struct EmbeddingDatum {
    index: usize,
    embedding: Vec<f32>,
}

impl Embedder {
    /// `None` when no provider is configured.
    pub fn from_config(config: &Config, http: &reqwest::Client) -> Option<Self> {
        let provider = config.embeddings.as_ref()?;
        Some(Self {
            http: http.clone(),
            endpoint: format!(
                "{}/embeddings",
                provider.base_url.as_str().trim_end_matches('/')
            ),
            api_key: provider.api_key.clone(),
            max_retries: config.embedding.max_retries,
            request_timeout: config.embedding.request_timeout,
            requests: AtomicU64::new(0),
        })
    }

    /// HTTP requests sent to the provider so far (retries included).
    pub fn requests_sent(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Embeds `inputs` in order, in as few requests as the limits allow.
    pub async fn embed(
        &self,
        model: &EmbeddingModel,
        inputs: &[String],
        deadline: Instant,
    ) -> Result<Vec<Vec<f32>>, EmbeddingError> {
        let mut vectors = Vec::with_capacity(inputs.len());
        for batch in batches(inputs, MAX_INPUTS_PER_REQUEST, MAX_TOKENS_PER_REQUEST) {
            vectors.extend(self.embed_batch(model, &inputs[batch], deadline).await?);
        }
        Ok(vectors)
    }

    async fn embed_batch(
        &self,
        model: &EmbeddingModel,
        inputs: &[String],
        deadline: Instant,
    ) -> Result<Vec<Vec<f32>>, EmbeddingError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(EmbeddingError::Deadline);
            }
            let timeout = self.request_timeout.min(remaining);
            let error = match self.attempt(model, inputs, timeout, attempt).await {
                Ok(vectors) => return Ok(vectors),
                Err(AttemptError::Fatal(error)) => return Err(error),
                Err(AttemptError::Retry { error, after }) => (error, after),
            };
            if attempt > self.max_retries {
                return Err(error.0);
            }
            let pause = error.1.unwrap_or_else(|| backoff(attempt));
            if Instant::now() + pause >= deadline {
                return Err(error.0);
            }
            tracing::warn!(attempt, pause_ms = pause.as_millis() as u64, error = %error.0, "retrying embeddings request");
            tokio::time::sleep(pause).await;
        }
    }

    async fn attempt(
        &self,
        model: &EmbeddingModel,
        inputs: &[String],
        timeout: Duration,
        attempt: u32,
    ) -> Result<Vec<Vec<f32>>, AttemptError> {
        let mut body = json!({"model": model.name, "input": inputs, "encoding_format": "float"});
        if model.accepts_dimensions() {
            body["dimensions"] = json!(model.dimensions);
        }
        let mut request = self.http.post(&self.endpoint).timeout(timeout).json(&body);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key.expose_secret());
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        let response = request
            .send()
            .await
            .map_err(|e| transport_error(e, attempt))?;
        let status = response.status();
        if !status.is_success() {
            let after = retry_after(response.headers());
            let body = response.bytes().await.unwrap_or_default();
            return Err(status_error(status, &body, after, attempt));
        }
        let parsed: EmbeddingResponse = response
            .json()
            .await
            .map_err(|e| transport_error(e, attempt))?;
        let mut data = parsed.data;
        data.sort_by_key(|d| d.index);
        let in_order = data.iter().enumerate().all(|(i, d)| d.index == i);
        if data.len() != inputs.len() || !in_order {
            return Err(AttemptError::Fatal(EmbeddingError::Protocol(format!(
                "{} vectors for {} inputs",
                data.len(),
                inputs.len()
            ))));
        }
        if let Some(wrong) = data
            .iter()
            .find(|d| d.embedding.len() != model.dimensions as usize)
        {
            return Err(AttemptError::Fatal(EmbeddingError::Protocol(format!(
                "{} dimensions where {} were configured for {}",
                wrong.embedding.len(),
                model.dimensions,
                model.name
            ))));
        }
        Ok(data.into_iter().map(|d| d.embedding).collect())
    }
}

fn transport_error(error: reqwest::Error, attempts: u32) -> AttemptError {
    let error = if error.is_timeout() {
        EmbeddingError::Timeout { attempts }
    } else if error.is_decode() || error.is_body() {
        EmbeddingError::Protocol("the response body could not be read".to_owned())
    } else {
        EmbeddingError::Unreachable { attempts }
    };
    AttemptError::Retry { error, after: None }
}

fn status_error(
    status: StatusCode,
    body: &[u8],
    after: Option<Duration>,
    attempts: u32,
) -> AttemptError {
    match status.as_u16() {
        429 => AttemptError::Retry {
            error: EmbeddingError::RateLimited {
                attempts,
                retry_after: after,
            },
            after,
        },
        408 | 409 | 500..=599 => AttemptError::Retry {
            error: EmbeddingError::ServerError {
                status: status.as_u16(),
                attempts,
                retry_after: after,
            },
            after,
        },
        code => {
            // OpenAI's error body: {"error":{"message","type","param","code"}}.
            let message = serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| "no error message".to_owned());
            AttemptError::Fatal(EmbeddingError::Rejected {
                status: code,
                message: message.chars().take(300).collect(),
            })
        }
    }
}

/// `retry-after-ms` (OpenAI) wins over `retry-after` (seconds); both capped.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let header = |name: &str| headers.get(name)?.to_str().ok()?.trim().parse::<f64>().ok();
    let pause = header("retry-after-ms")
        .map(|ms| ms / 1000.0)
        .or_else(|| header("retry-after"))
        .filter(|secs| secs.is_finite() && *secs >= 0.0)?;
    Some(Duration::from_secs_f64(pause).min(MAX_RETRY_AFTER))
}

/// 0.5 s doubling to at most 8 s, minus up to 25 % jitter (as OpenAI's SDKs do).
fn backoff(attempt: u32) -> Duration {
    let base = (0.5 * 2f64.powi(attempt.saturating_sub(1) as i32)).min(8.0);
    let jitter = 1.0 - rand::rng().random::<f64>() * 0.25;
    Duration::from_secs_f64(base * jitter)
}

/// Splits `inputs` into ranges within both per-request limits. Tokens are
/// counted with cl100k_base, the tokenizer of OpenAI's embedding models,
/// unless the inputs' bytes already fit: a search's query never loads it.
pub fn batches(
    inputs: &[String],
    max_inputs: usize,
    max_tokens: usize,
) -> Vec<std::ops::Range<usize>> {
    if !inputs.is_empty()
        && inputs.len() <= max_inputs
        && tokens::surely_within(inputs.iter().map(String::as_str), max_tokens)
    {
        return std::iter::once(0..inputs.len()).collect();
    }
    let mut ranges = Vec::new();
    let (mut start, mut tokens) = (0, 0);
    for (i, input) in inputs.iter().enumerate() {
        let count = tokens::count(input);
        if i > start && (i - start == max_inputs || tokens + count > max_tokens) {
            ranges.push(start..i);
            start = i;
            tokens = 0;
        }
        tokens += count;
    }
    if start < inputs.len() {
        ranges.push(start..inputs.len());
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_respect_both_the_input_and_the_token_limit() {
        let inputs: Vec<String> = (0..10).map(|i| format!("word{i} ").repeat(100)).collect();
        let tokens_each = tokens::count(&inputs[0]);

        let by_count = batches(&inputs, 4, usize::MAX);
        assert_eq!(by_count, vec![0..4, 4..8, 8..10]);

        let by_tokens = batches(&inputs, 2048, tokens_each * 3 + 1);
        assert_eq!(by_tokens, vec![0..3, 3..6, 6..9, 9..10]);

        assert!(batches(&[], 4, 100).is_empty());
    }

    #[test]
    fn retry_after_ms_wins_and_long_pauses_are_capped() {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", "2".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        headers.insert("retry-after-ms", "150".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(150)));
        headers.remove("retry-after-ms");
        headers.insert("retry-after", "86400".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(MAX_RETRY_AFTER));
    }

    #[test]
    fn backoff_grows_to_eight_seconds_with_jitter() {
        for (attempt, max) in [(1, 0.5), (2, 1.0), (3, 2.0), (6, 8.0), (12, 8.0)] {
            let pause = backoff(attempt).as_secs_f64();
            assert!(
                pause <= max && pause >= max * 0.75,
                "attempt {attempt}: {pause}"
            );
        }
    }
}
