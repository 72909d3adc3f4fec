//! The knowledge SQL functions Keel calls (migrations/0002, 0006, 0011), one typed
//! binding each.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::chunker::Chunk;
use super::search::Mode;
use crate::platform::db::{Page, SqlFunction};

/// `keel_document_hashes`: the stored content hash of each named document.
#[derive(Serialize)]
pub struct DocumentHashes<'a> {
    pub ids: Vec<&'a str>,
}

impl SqlFunction for DocumentHashes<'_> {
    const NAME: &'static str = "keel_document_hashes";
    type Output = HashMap<String, String>;
}

/// `keel_upsert_documents`: the whole batch in one transaction.
#[derive(Serialize)]
pub struct UpsertDocuments<'a> {
    pub model: &'a str,
    pub dimensions: u32,
    pub documents: Vec<DocumentRow<'a>>,
}

#[derive(Serialize)]
pub struct DocumentRow<'a> {
    pub id: &'a str,
    pub title: &'a str,
    pub content_hash: &'a str,
    #[serde(serialize_with = "object_or_empty")]
    pub metadata: Option<&'a Value>,
    pub source_url: Option<&'a str>,
    /// Present for documents whose content changed (or is new).
    pub chunks: Option<&'a Vec<Chunk>>,
}

fn object_or_empty<S: Serializer>(value: &Option<&Value>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(value) => value.serialize(s),
        None => Map::new().serialize(s),
    }
}

/// What an upsert did.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct UpsertCounts {
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub chunks_pending: u64,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub enum UpsertOutcome {
    Done(UpsertCounts),
    /// A concurrent writer changed these documents: chunk them and retry.
    NeedsChunks {
        needs_chunks: Vec<String>,
    },
}

impl SqlFunction for UpsertDocuments<'_> {
    const NAME: &'static str = "keel_upsert_documents";
    type Output = UpsertOutcome;
}

/// `keel_list_documents`: a page of documents by id.
#[derive(Serialize)]
pub struct ListDocuments<'a> {
    pub limit: u32,
    pub cursor: Option<&'a str>,
    pub model: &'a str,
    pub dimensions: u32,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DocumentSummary {
    pub id: String,
    pub title: String,
    #[schema(value_type = Object)]
    pub metadata: Value,
    pub source_url: Option<String>,
    /// `pending`, `embedded` or `failed`, for the configured model.
    pub embedding_state: String,
    pub chunks: u64,
    pub updated_at: String,
}

impl SqlFunction for ListDocuments<'_> {
    const NAME: &'static str = "keel_list_documents";
    type Output = Page<DocumentSummary>;
}

/// `keel_delete_document`: the document, its chunks and vectors.
#[derive(Serialize)]
pub struct DeleteDocument<'a> {
    pub id: &'a str,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeletedDocument {
    pub deleted: String,
    pub chunks_deleted: u64,
}

impl SqlFunction for DeleteDocument<'_> {
    const NAME: &'static str = "keel_delete_document";
    type Output = DeletedDocument;
}

/// `keel_claim_embedding_jobs`: due jobs under a new lease.
#[derive(Serialize)]
pub struct ClaimEmbeddingJobs<'a> {
    pub model: &'a str,
    pub dimensions: u32,
    pub limit: u32,
    pub lease_seconds: u64,
    /// Only jobs due by then: the run's first `claimed_at`, so a job the
    /// run rescheduled waits for a later run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub due_before: Option<&'a str>,
}

#[derive(Deserialize)]
pub struct EmbeddingClaim {
    pub lease_token: String,
    pub jobs: Vec<EmbeddingJob>,
    /// The database's time of the claim.
    pub claimed_at: String,
    /// Set (and `jobs` empty) while the provider's circuit is open.
    #[serde(default)]
    pub paused_until: Option<String>,
}

#[derive(Deserialize)]
pub struct EmbeddingJob {
    pub chunk_id: i64,
    /// The text the model sees (title and chunk).
    pub input: String,
}

impl SqlFunction for ClaimEmbeddingJobs<'_> {
    const NAME: &'static str = "keel_claim_embedding_jobs";
    type Output = EmbeddingClaim;
}

/// `keel_complete_embedding_jobs`: stores vectors, schedules retries,
/// gives back jobs the provider never judged, opens or closes the circuit.
#[derive(Serialize)]
pub struct CompleteEmbeddingJobs<'a> {
    pub model: &'a str,
    pub dimensions: u32,
    pub lease_token: &'a str,
    pub embedded: Vec<EmbeddedJob>,
    /// Rejected inputs: each spends an attempt.
    pub failed: Vec<FailedJob<'a>>,
    /// Chunk ids given back without spending an attempt.
    pub deferred: Vec<i64>,
    pub deferred_error: Option<&'a str>,
    /// The provider is down: open the circuit.
    pub outage: bool,
    /// The provider's `retry-after`, which then sets the pause.
    pub retry_after_seconds: Option<f64>,
    pub outage_base_seconds: f64,
    pub outage_max_seconds: f64,
    pub max_attempts: u32,
    pub retry_base_seconds: f64,
}

#[derive(Serialize)]
pub struct EmbeddedJob {
    pub chunk_id: i64,
    pub embedding: Vec<f32>,
}

#[derive(Serialize)]
pub struct FailedJob<'a> {
    pub chunk_id: i64,
    pub error: &'a str,
}

#[derive(Deserialize)]
pub struct Completion {
    pub stored: u64,
    pub retrying: u64,
    pub failed: u64,
    pub deferred: u64,
    /// Until when the circuit is open, when this completion opened it.
    pub paused_until: Option<String>,
    pub remaining: u64,
}

impl SqlFunction for CompleteEmbeddingJobs<'_> {
    const NAME: &'static str = "keel_complete_embedding_jobs";
    type Output = Completion;
}

/// `keel_prepare_embedding_model`: one bounded step of making the configured
/// model current (after a change or a rollback), creating its index and
/// queueing its backfill.
#[derive(Serialize)]
pub struct PrepareEmbeddingModel<'a> {
    pub model: &'a str,
    pub dimensions: u32,
    /// Chunks the step may scan.
    pub limit: u32,
}

#[derive(Debug, Deserialize)]
pub struct ModelPreparation {
    /// The model became current again (a change or a rollback to it).
    pub activated: bool,
    pub index_created: bool,
    pub queued: u64,
    /// The backfill has covered every chunk.
    pub done: bool,
}

impl SqlFunction for PrepareEmbeddingModel<'_> {
    const NAME: &'static str = "keel_prepare_embedding_model";
    type Output = ModelPreparation;
}

/// `keel_retry_embedding_jobs`: the caller's failed jobs, queued again.
#[derive(Serialize)]
pub struct RetryEmbeddingJobs<'a> {
    pub model: &'a str,
    pub dimensions: u32,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Requeued {
    pub requeued: u64,
}

impl SqlFunction for RetryEmbeddingJobs<'_> {
    const NAME: &'static str = "keel_retry_embedding_jobs";
    type Output = Requeued;
}

/// `keel_search`: one round trip that picks the model, asks for a query
/// vector when it has none cached, and ranks.
#[derive(Serialize)]
pub struct Search<'a> {
    pub mode: Mode,
    pub query: &'a str,
    pub top_k: i64,
    pub min_score: Option<f64>,
    pub filter: &'a Map<String, Value>,
    pub model: &'a str,
    pub dimensions: u32,
    pub model_chosen: bool,
    pub query_hash: &'a str,
    pub cache_ttl_seconds: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedding: Option<Arc<Vec<f32>>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub cache_hit: bool,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub enum SearchOutcome {
    Results { results: Vec<SearchHit> },
    NeedsEmbedding { needs_embedding: bool },
    UseModel { use_model: UseModel },
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SearchHit {
    pub document_id: String,
    pub title: String,
    pub chunk_index: i64,
    pub content: String,
    pub score: f64,
    #[schema(value_type = Object)]
    pub metadata: Value,
    pub source_url: Option<String>,
}

#[derive(Deserialize)]
pub struct UseModel {
    pub model: String,
    pub dimensions: u32,
}

impl SqlFunction for Search<'_> {
    const NAME: &'static str = "keel_search";
    type Output = SearchOutcome;
}
