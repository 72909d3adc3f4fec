//! A tenant's knowledge: documents chunked on ingestion, chunks embedded in
//! the background by an OpenAI-compatible provider, and hybrid search over
//! them (with a query-vector cache).

pub mod chunker;
pub mod documents;
pub mod embedder;
pub mod handlers;
pub mod jobs;
pub mod search;
pub mod store;

use std::sync::OnceLock;

use crate::ops::ratelimit::GateError;
use crate::platform::config::{Config, EmbeddingSettings, IngestLimits, SearchSettings};
use crate::platform::db::DbErrorClass;
use chunker::Chunker;
use embedder::Embedder;
use search::QueryCache;

/// A model and the vector size it produces.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EmbeddingModel {
    pub name: String,
    pub dimensions: u32,
}

impl EmbeddingModel {
    pub fn configured(config: &Config) -> Self {
        Self {
            name: config.embedding.model.clone(),
            dimensions: config.embedding.dimensions,
        }
    }

    /// Only the text-embedding-3 family accepts `dimensions`.
    fn accepts_dimensions(&self) -> bool {
        self.name.starts_with("text-embedding-3")
    }
}

/// The knowledge area's state, built once per cold start: its settings, the
/// embeddings client, this instance's query-vector LRU and (on first use)
/// the chunker.
pub struct Knowledge {
    pub model: EmbeddingModel,
    pub limits: IngestLimits,
    pub embedding: EmbeddingSettings,
    pub search: SearchSettings,
    /// `None` when no provider is configured.
    pub embedder: Option<Embedder>,
    pub query_cache: QueryCache,
    chunker: OnceLock<Chunker>,
}

impl Knowledge {
    pub fn new(config: &Config, http: &reqwest::Client) -> Self {
        Self {
            model: EmbeddingModel::configured(config),
            limits: config.ingest.clone(),
            embedding: config.embedding.clone(),
            search: config.search.clone(),
            embedder: Embedder::from_config(config, http),
            query_cache: QueryCache::new(config.search.lru_size),
            chunker: OnceLock::new(),
        }
    }

    /// The chunker, built by the first request that needs it (loading the
    /// BPE ranks takes a moment, which only ingestion should pay).
    pub fn chunker(&self) -> &Chunker {
        self.chunker.get_or_init(|| Chunker::new(&self.limits))
    }

    /// The embeddings client, or [`KnowledgeError::NoProvider`].
    pub fn embedder(&self) -> Result<&Embedder, KnowledgeError> {
        self.embedder.as_ref().ok_or(KnowledgeError::NoProvider)
    }
}

/// Why a knowledge operation did not complete.
#[derive(Debug, thiserror::Error)]
pub enum KnowledgeError {
    /// A field of the caller's input fails validation; the message names it.
    #[error("`{field}` {problem}")]
    Invalid { field: String, problem: String },
    #[error("these documents are being changed concurrently; retry the request")]
    Contended,
    #[error("no embeddings provider is configured")]
    NoProvider,
    #[error(transparent)]
    Call(#[from] GateError),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl KnowledgeError {
    pub fn invalid(field: &str, problem: &str) -> Self {
        Self::Invalid {
            field: field.to_owned(),
            problem: problem.to_owned(),
        }
    }

    /// The record named does not exist (`P0002` from the database).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Call(GateError::Db(db)) if db.class() == DbErrorClass::NotFound)
    }
}
