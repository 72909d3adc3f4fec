//! Documents in, chunks out: upserts by the tenant's own ids, listing with
//! each document's embedding state, and deletion.
//!
//! A document whose title and content hash is unchanged is not chunked
//! again and re-embeds nothing; a changed one has its chunks replaced
//! atomically, and chunks whose text did not change keep their vectors.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::chunker::Chunk;
use super::store::{
    DeleteDocument, DeletedDocument, DocumentHashes, DocumentRow, DocumentSummary, ListDocuments,
    UpsertCounts, UpsertDocuments, UpsertOutcome,
};
use super::{Knowledge, KnowledgeError};
use crate::platform::config::IngestLimits;
use crate::platform::crypto::sha256_hex;
use crate::platform::db::{Db, Page};
use crate::tenants::TenantRef;

const MAX_ID_CHARS: usize = 256;
const MAX_TITLE_CHARS: usize = 500;
const MAX_METADATA_BYTES: usize = 16 * 1024;
const MAX_URL_CHARS: usize = 2048;

/// The body of `PUT /api/documents`, and of a `document.upserted` webhook's `data`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpsertRequest {
    /// 1 to `MAX_DOCUMENTS_PER_REQUEST` documents.
    #[schema(min_items = 1)]
    pub documents: Vec<DocumentInput>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DocumentInput {
    /// Yours: 1 to 256 characters; an existing id is replaced.
    pub id: String,
    /// At most 500 characters.
    #[serde(default)]
    pub title: String,
    pub content: String,
    /// A JSON object of at most 16 KiB, matched by search filters.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// An absolute http(s) URL of at most 2048 characters.
    #[serde(default)]
    pub source_url: Option<String>,
}

impl DocumentInput {
    pub fn content_hash(&self) -> String {
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        sha256_hex(format!("{}\u{0}{}", self.title, self.content))
    }
}

/// Checks every document, naming the first bad field as `documents[i].field`.
pub fn validate(documents: &[DocumentInput], limits: &IngestLimits) -> Result<(), KnowledgeError> {
    if documents.is_empty() || documents.len() > limits.max_documents {
        return Err(KnowledgeError::invalid(
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
            return Err(KnowledgeError::invalid(
                &field("id"),
                &format!("must be 1 to {MAX_ID_CHARS} characters without control characters"),
            ));
        }
        if let Some(first) = seen.insert(&document.id, i) {
            return Err(KnowledgeError::invalid(
                &field("id"),
                &format!("repeats documents[{first}].id (\"{}\")", document.id),
            ));
        }
        if document.title.chars().count() > MAX_TITLE_CHARS {
            return Err(KnowledgeError::invalid(
                &field("title"),
                &format!("must be at most {MAX_TITLE_CHARS} characters"),
            ));
        }
        if document.content.trim().is_empty() {
            return Err(KnowledgeError::invalid(
                &field("content"),
                "must not be empty",
            ));
        }
        if document.content.len() > limits.max_document_bytes {
            return Err(KnowledgeError::invalid(
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
                return Err(KnowledgeError::invalid(
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
            return Err(KnowledgeError::invalid(
                &field("metadata"),
                &format!("must be at most {MAX_METADATA_BYTES} bytes of JSON"),
            ));
        }
        if let Some(url) = &document.source_url {
            let valid = url.len() <= MAX_URL_CHARS
                && url::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
            if !valid {
                return Err(KnowledgeError::invalid(
                    &field("source_url"),
                    "must be an absolute http(s) URL",
                ));
            }
        }
    }
    Ok(())
}

/// Upserts validated documents for a tenant: only new or changed documents
/// are chunked, and the database writes the whole batch in one transaction.
pub async fn upsert(
    db: &Db,
    knowledge: &Arc<Knowledge>,
    tenant: &TenantRef,
    documents: Vec<DocumentInput>,
) -> Result<UpsertCounts, KnowledgeError> {
    let documents = Arc::new(documents);
    let ids: Vec<&str> = documents.iter().map(|d| d.id.as_str()).collect();
    let stored = tenant.run(db, &DocumentHashes { ids }).await?;
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
        let chunks = chunk_documents(knowledge, &documents, &to_chunk).await?;
        let rows: Vec<DocumentRow> = documents
            .iter()
            .zip(&hashes)
            .map(|(d, hash)| DocumentRow {
                id: &d.id,
                title: &d.title,
                content_hash: hash,
                metadata: d.metadata.as_ref(),
                source_url: d.source_url.as_deref(),
                chunks: chunks.get(&d.id),
            })
            .collect();
        let args = UpsertDocuments {
            model: &knowledge.model.name,
            dimensions: knowledge.model.dimensions,
            documents: rows,
        };
        match tenant.run(db, &args).await? {
            UpsertOutcome::Done(counts) => return Ok(counts),
            UpsertOutcome::NeedsChunks { needs_chunks } => to_chunk.extend(needs_chunks),
        }
    }
    Err(KnowledgeError::Contended)
}

/// Chunks the named documents off the async runtime (CPU-bound).
async fn chunk_documents(
    knowledge: &Arc<Knowledge>,
    documents: &Arc<Vec<DocumentInput>>,
    ids: &HashSet<String>,
) -> Result<HashMap<String, Vec<Chunk>>, KnowledgeError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let knowledge = knowledge.clone();
    let documents = documents.clone();
    let ids = ids.clone();
    tokio::task::spawn_blocking(move || {
        let chunker = knowledge.chunker();
        documents
            .iter()
            .filter(|d| ids.contains(&d.id))
            .map(|d| (d.id.clone(), chunker.chunk(&d.title, &d.content)))
            .collect()
    })
    .await
    .map_err(|e| KnowledgeError::Internal(anyhow::anyhow!("chunking failed: {e}")))
}

/// One page of a tenant's documents, by id, with their embedding state.
pub async fn list(
    db: &Db,
    knowledge: &Knowledge,
    tenant: &TenantRef,
    limit: u32,
    cursor: Option<&str>,
) -> Result<Page<DocumentSummary>, KnowledgeError> {
    let args = ListDocuments {
        limit,
        cursor,
        model: &knowledge.model.name,
        dimensions: knowledge.model.dimensions,
    };
    Ok(tenant.run(db, &args).await?)
}

/// Deletes one document of a tenant with its chunks and vectors; not found
/// (`P0002`) when it does not exist.
pub async fn delete(
    db: &Db,
    tenant: &TenantRef,
    id: &str,
) -> Result<DeletedDocument, KnowledgeError> {
    Ok(tenant.run(db, &DeleteDocument { id }).await?)
}

/// The body of a `document.upserted` event: the documents API's body
/// (`{"documents":[…]}`) or one document; field paths name the problem.
pub fn parse_documents(data: &Value) -> Result<Vec<DocumentInput>, KnowledgeError> {
    let parsed = if data.get("documents").is_some() {
        serde_path_to_error::deserialize::<_, UpsertRequest>(data.clone()).map(|r| r.documents)
    } else {
        serde_path_to_error::deserialize::<_, DocumentInput>(data.clone()).map(|d| vec![d])
    };
    parsed.map_err(|e| KnowledgeError::invalid(&e.path().to_string(), &e.into_inner().to_string()))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::knowledge::chunker::tests::limits;

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
            assert!(
                matches!(error, KnowledgeError::Invalid { .. }),
                "{reason}: a 400 naming the field"
            );
            let text = error.to_string();
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
