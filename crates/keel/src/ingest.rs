//! Documents in, chunks out: `PUT /api/documents` (upsert by the tenant's own
//! ids), `GET /api/documents` (paged, with each document's embedding state)
//! and `DELETE /api/documents/{id}`.
//!
//! Chunking splits on paragraph, then sentence, then word boundaries into
//! chunks bounded in cl100k tokens (the tokenizer of OpenAI's embedding
//! models) with overlap, never inside a UTF-8 character. Each chunk is
//! embedded with its document's title as context. A document whose title and
//! content hash is unchanged is not chunked again and re-embeds nothing; a
//! changed one has its chunks replaced atomically, and chunks whose text did
//! not change keep their vectors.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use text_splitter::{ChunkConfig, TextSplitter};
use tiktoken_rs::CoreBPE;

use crate::app::App;
use crate::auth::{self, TenantRef};
use crate::config::IngestLimits;
use crate::embeddings::EmbeddingModel;
use crate::error::ApiError;
use crate::http::{ApiRequest, HandlerResult, encode_cursor, json_response};

const MAX_ID_CHARS: usize = 256;
const MAX_TITLE_CHARS: usize = 500;
const MAX_METADATA_BYTES: usize = 16 * 1024;
const MAX_URL_CHARS: usize = 2048;

/// A token-bounded, boundary-aware splitter, built on first use (loading the
/// BPE ranks takes a moment, which only the ingestion route should pay).
pub struct Chunker {
    splitter: TextSplitter<&'static CoreBPE>,
    tokenizer: &'static CoreBPE,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Chunk {
    pub content: String,
    /// SHA-256 of the embedding input (title + chunk).
    pub content_hash: String,
    pub token_count: usize,
}

impl Chunker {
    pub fn new(limits: &IngestLimits) -> Self {
        let tokenizer = tiktoken_rs::cl100k_base_singleton();
        let config = ChunkConfig::new(limits.chunk_tokens)
            .with_sizer(tokenizer)
            .with_overlap(limits.chunk_overlap)
            .expect("config validation keeps the overlap below the chunk size");
        Self {
            splitter: TextSplitter::new(config),
            tokenizer,
        }
    }

    pub fn chunk(&self, title: &str, content: &str) -> Vec<Chunk> {
        self.splitter
            .chunks(content)
            .map(|text| Chunk {
                content: text.to_owned(),
                content_hash: sha256_hex(&embedding_input(title, text)),
                token_count: self.tokenizer.encode_ordinary(text).len(),
            })
            .collect()
    }
}

/// What the model sees for a chunk: its document's title, then the chunk.
pub fn embedding_input(title: &str, chunk: &str) -> String {
    if title.is_empty() {
        chunk.to_owned()
    } else {
        format!("{title}\n\n{chunk}")
    }
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The body of `PUT /api/documents`, and of a `document.upserted` webhook's `data`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpsertRequest {
    pub documents: Vec<DocumentInput>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocumentInput {
    id: String,
    #[serde(default)]
    title: String,
    content: String,
    #[serde(default)]
    metadata: Option<Value>,
    #[serde(default)]
    source_url: Option<String>,
}

impl DocumentInput {
    fn content_hash(&self) -> String {
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        sha256_hex(&format!("{}\u{0}{}", self.title, self.content))
    }
}

/// Checks every document, naming the first bad field as `documents[i].field`.
pub fn validate(documents: &[DocumentInput], limits: &IngestLimits) -> Result<(), ApiError> {
    if documents.is_empty() || documents.len() > limits.max_documents {
        return Err(ApiError::invalid_field(
            "documents",
            &format!(
                "must hold 1 to {} documents (got {})",
                limits.max_documents,
                documents.len()
            ),
        ));
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, document) in documents.iter().enumerate() {
        let field = |name: &str| format!("documents[{i}].{name}");
        let id_chars = document.id.chars().count();
        if id_chars == 0 || id_chars > MAX_ID_CHARS || document.id.chars().any(char::is_control) {
            return Err(ApiError::invalid_field(
                &field("id"),
                &format!("must be 1 to {MAX_ID_CHARS} characters without control characters"),
            ));
        }
        if let Some(first) = seen.insert(&document.id, i) {
            return Err(ApiError::invalid_field(
                &field("id"),
                &format!("repeats documents[{first}].id (\"{}\")", document.id),
            ));
        }
        if document.title.chars().count() > MAX_TITLE_CHARS {
            return Err(ApiError::invalid_field(
                &field("title"),
                &format!("must be at most {MAX_TITLE_CHARS} characters"),
            ));
        }
        if document.content.trim().is_empty() {
            return Err(ApiError::invalid_field(
                &field("content"),
                "must not be empty",
            ));
        }
        if document.content.len() > limits.max_document_bytes {
            return Err(ApiError::invalid_field(
                &field("content"),
                &format!(
                    "must be at most {} bytes (got {})",
                    limits.max_document_bytes,
                    document.content.len()
                ),
            ));
        }
        match &document.metadata {
            None | Some(Value::Object(_)) => {}
            Some(_) => {
                return Err(ApiError::invalid_field(
                    &field("metadata"),
                    "must be a JSON object",
                ));
            }
        }
        if document
            .metadata
            .as_ref()
            .map_or(0, |m| m.to_string().len())
            > MAX_METADATA_BYTES
        {
            return Err(ApiError::invalid_field(
                &field("metadata"),
                &format!("must be at most {MAX_METADATA_BYTES} bytes of JSON"),
            ));
        }
        if let Some(url) = &document.source_url {
            let valid = url.len() <= MAX_URL_CHARS
                && url::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
            if !valid {
                return Err(ApiError::invalid_field(
                    &field("source_url"),
                    "must be an absolute http(s) URL",
                ));
            }
        }
    }
    Ok(())
}

/// What an upsert did.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct UpsertCounts {
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub chunks_pending: u64,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum UpsertOutcome {
    Done(UpsertCounts),
    NeedsChunks { needs_chunks: Vec<String> },
}

/// `PUT /api/documents`.
pub async fn upsert(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    let tenant = auth::tenant(&request)?;
    let body: UpsertRequest = request.json()?;
    validate(&body.documents, &app.config.ingest)?;
    let counts = upsert_documents(&app, &tenant, body.documents).await?;
    Ok(json_response(StatusCode::OK, &json!(counts)))
}

/// Upserts validated documents for a tenant: only new or changed documents
/// are chunked, and the database writes the whole batch in one transaction.
pub async fn upsert_documents(
    app: &Arc<App>,
    tenant: &TenantRef,
    documents: Vec<DocumentInput>,
) -> Result<UpsertCounts, ApiError> {
    let documents = Arc::new(documents);
    let model = EmbeddingModel::configured(&app.config);
    let ids: Vec<&str> = documents.iter().map(|d| d.id.as_str()).collect();
    let stored: HashMap<String, String> = tenant
        .call(&app.db, "keel_document_hashes", json!({"ids": ids}))
        .await?;
    let hashes: Vec<String> = documents.iter().map(DocumentInput::content_hash).collect();
    let mut to_chunk: HashSet<String> = documents
        .iter()
        .zip(&hashes)
        .filter(|(d, hash)| stored.get(&d.id) != Some(*hash))
        .map(|(d, _)| d.id.clone())
        .collect();

    // A concurrent writer may change a document between the two calls; the
    // database then asks for its chunks and nothing is written meanwhile.
    for _ in 0..3 {
        let chunks = chunk_documents(app, &documents, &to_chunk).await?;
        let payload: Vec<Value> = documents
            .iter()
            .zip(&hashes)
            .map(|(d, hash)| {
                json!({
                    "id": d.id,
                    "title": d.title,
                    "content_hash": hash,
                    "metadata": d.metadata.clone().unwrap_or_else(|| json!({})),
                    "source_url": d.source_url,
                    "chunks": chunks.get(&d.id),
                })
            })
            .collect();
        let args = json!({
            "model": model.name,
            "dimensions": model.dimensions,
            "documents": payload,
        });
        match tenant.call(&app.db, "keel_upsert_documents", args).await? {
            UpsertOutcome::Done(counts) => return Ok(counts),
            UpsertOutcome::NeedsChunks { needs_chunks } => to_chunk.extend(needs_chunks),
        }
    }
    Err(ApiError::conflict(
        "these documents are being changed concurrently; retry the request",
    ))
}

/// Chunks the named documents off the async runtime (CPU-bound).
async fn chunk_documents(
    app: &Arc<App>,
    documents: &Arc<Vec<DocumentInput>>,
    ids: &HashSet<String>,
) -> Result<HashMap<String, Vec<Chunk>>, ApiError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let app = app.clone();
    let documents = documents.clone();
    let ids = ids.clone();
    tokio::task::spawn_blocking(move || {
        let chunker = app.chunker();
        documents
            .iter()
            .filter(|d| ids.contains(&d.id))
            .map(|d| (d.id.clone(), chunker.chunk(&d.title, &d.content)))
            .collect()
    })
    .await
    .map_err(|e| ApiError::internal(anyhow::anyhow!("chunking failed: {e}")))
}

#[derive(Deserialize)]
struct DocumentPage {
    documents: Vec<Value>,
    next_cursor: Option<String>,
}

/// `GET /api/documents?limit=&cursor=`.
pub async fn list(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    let tenant = auth::tenant(&request)?;
    let page = request.page(50, 200)?;
    let model = EmbeddingModel::configured(&app.config);
    let result: DocumentPage = tenant
        .call(
            &app.db,
            "keel_list_documents",
            json!({
                "limit": page.limit,
                "cursor": page.cursor,
                "model": model.name,
                "dimensions": model.dimensions,
            }),
        )
        .await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "documents": result.documents,
            "next_cursor": result.next_cursor.as_deref().map(encode_cursor),
        }),
    ))
}

/// `GET` and `PUT` share `/api/documents`.
pub async fn documents(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    if request.method == http::Method::PUT {
        upsert(app, request).await
    } else {
        list(app, request).await
    }
}

/// `DELETE /api/documents/{id}`: the document, its chunks and their vectors.
pub async fn delete(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    let tenant = auth::tenant(&request)?;
    let deleted = delete_document(&app, &tenant, request.param("id")).await?;
    Ok(json_response(StatusCode::OK, &deleted))
}

/// Deletes one document of a tenant; 404 (`P0002`) when it does not exist.
pub async fn delete_document(app: &App, tenant: &TenantRef, id: &str) -> Result<Value, ApiError> {
    tenant
        .call(&app.db, "keel_delete_document", json!({"id": id}))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> IngestLimits {
        IngestLimits {
            max_documents: 3,
            max_document_bytes: 1000,
            chunk_tokens: 60,
            chunk_overlap: 10,
        }
    }

    #[test]
    fn chunks_are_token_bounded_overlapping_and_keep_utf8_intact() {
        let chunker = Chunker::new(&limits());
        let paragraph =
            "Our kitchen serves falafel, hummus and crème brûlée. 🌱 Vegan dishes are marked. ";
        let content = paragraph.repeat(20);

        let chunks = chunker.chunk("Menu", &content);

        assert!(chunks.len() > 3, "{} chunks", chunks.len());
        for chunk in &chunks {
            assert!(chunk.token_count <= 60, "{} tokens", chunk.token_count);
            assert!(
                content.contains(&chunk.content),
                "chunks are slices of the text"
            );
            assert_eq!(
                chunk.content_hash,
                sha256_hex(&format!("Menu\n\n{}", chunk.content))
            );
        }
        // Overlap: consecutive chunks share text.
        let (first, second) = (&chunks[0].content, &chunks[1].content);
        let tail: String = first
            .chars()
            .rev()
            .take(15)
            .collect::<String>()
            .chars()
            .rev()
            .collect();
        assert!(
            second.contains(tail.trim()),
            "no overlap between {first:?} and {second:?}"
        );
    }

    #[test]
    fn chunks_prefer_paragraph_boundaries() {
        let chunker = Chunker::new(&limits());
        let content = format!(
            "{}\n\n{}",
            "Opening hours are nine to five on weekdays.", "Parking is free behind the building."
        );
        let chunks = chunker.chunk("", &content);
        assert_eq!(chunks.len(), 1, "short text stays one chunk");
        let long = format!(
            "{}\n\n{}",
            "alpha beta gamma delta. ".repeat(10),
            "omega psi chi phi. ".repeat(10)
        );
        let chunks = chunker.chunk("", &long);
        assert!(
            chunks
                .iter()
                .all(|c| !(c.content.contains("alpha") && c.content.contains("omega")))
        );
    }

    fn document(id: &str) -> DocumentInput {
        DocumentInput {
            id: id.to_owned(),
            title: String::new(),
            content: "Some content".to_owned(),
            metadata: None,
            source_url: None,
        }
    }

    #[test]
    fn bad_documents_are_refused_naming_the_field() {
        let cases: Vec<(Vec<DocumentInput>, &str, &str)> = vec![
            (
                vec![],
                "`documents` must hold 1 to 3 documents (got 0)",
                "an empty batch",
            ),
            (
                (0..4).map(|i| document(&i.to_string())).collect(),
                "`documents` must hold 1 to 3",
                "too many",
            ),
            (
                vec![document("")],
                "`documents[0].id` must be 1 to 256",
                "empty id",
            ),
            (
                vec![document("a\nb")],
                "`documents[0].id` must be 1 to 256",
                "control characters",
            ),
            (
                vec![document("a"), document("a")],
                "`documents[1].id` repeats documents[0].id",
                "duplicate ids",
            ),
            (
                vec![DocumentInput {
                    content: "  ".into(),
                    ..document("a")
                }],
                "`documents[0].content` must not be empty",
                "blank content",
            ),
            (
                vec![DocumentInput {
                    content: "x".repeat(1001),
                    ..document("a")
                }],
                "`documents[0].content` must be at most 1000 bytes (got 1001)",
                "too long",
            ),
            (
                vec![DocumentInput {
                    metadata: Some(json!([1])),
                    ..document("a")
                }],
                "`documents[0].metadata` must be a JSON object",
                "metadata array",
            ),
            (
                vec![DocumentInput {
                    source_url: Some("ftp://x".into()),
                    ..document("a")
                }],
                "`documents[0].source_url` must be an absolute http(s) URL",
                "bad scheme",
            ),
            (
                vec![DocumentInput {
                    title: "t".repeat(501),
                    ..document("a")
                }],
                "`documents[0].title` must be at most 500",
                "long title",
            ),
        ];
        for (documents, message, reason) in cases {
            let error = validate(&documents, &limits()).unwrap_err();
            let response = error.into_response("r");
            assert_eq!(response.status(), 400, "{reason}");
            let body: Value = serde_json::from_slice(response.body()).unwrap();
            let text = body["error"]["message"].as_str().unwrap();
            assert!(text.starts_with(message), "{reason}: {text}");
        }
    }

    #[test]
    fn the_content_hash_covers_title_and_content_but_not_metadata() {
        let a = document("a");
        let retitled = DocumentInput {
            title: "New".into(),
            ..document("a")
        };
        let tagged = DocumentInput {
            metadata: Some(json!({"tag": 1})),
            ..document("a")
        };
        assert_ne!(a.content_hash(), retitled.content_hash());
        assert_eq!(a.content_hash(), tagged.content_hash());
    }
}
