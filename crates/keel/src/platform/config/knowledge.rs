//! Knowledge settings: the embeddings provider (`OPENAI_*`), the embedding
//! model and its worker, ingestion limits and chunk sizes, and search.

use std::time::Duration;

use secrecy::SecretString;
use url::Url;

use super::vars::Vars;

pub const OPENAI_DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";

/// An OpenAI-compatible embeddings server.
#[derive(Debug, Clone)]
pub struct EmbeddingsProviderConfig {
    pub base_url: Url,
    pub api_key: Option<SecretString>,
}

/// The embedding model and how hard to try.
#[derive(Debug, Clone)]
pub struct EmbeddingSettings {
    pub model: String,
    pub dimensions: u32,
    /// Retries of one provider request (429, 5xx, timeouts).
    pub max_retries: u32,
    pub request_timeout: Duration,
    /// Chunks claimed and sent per provider request (≤ 2,048, OpenAI's limit).
    pub batch_size: u32,
    /// Attempts of one chunk's job before it is marked failed.
    pub max_attempts: u32,
    pub lease: Duration,
    pub retry_base: Duration,
}

#[derive(Debug, Clone)]
pub struct IngestLimits {
    pub max_documents: usize,
    pub max_document_bytes: usize,
    pub chunk_tokens: usize,
    pub chunk_overlap: usize,
}

#[derive(Debug, Clone)]
pub struct SearchSettings {
    pub cache_ttl: Duration,
    pub lru_size: usize,
    pub disable_vector: bool,
}

impl Vars<'_> {
    pub(super) fn embeddings(&mut self, production: bool) -> Option<EmbeddingsProviderConfig> {
        let custom_base = self.url("OPENAI_BASE_URL");
        if production
            && custom_base
                .as_ref()
                .is_some_and(|url| url.scheme() != "https")
        {
            self.problem(
                "OPENAI_BASE_URL",
                "must be https in production: the API key and tenants' text travel with every call",
            );
        }
        let base_set = self.optional("OPENAI_BASE_URL").is_some();
        let api_key = self.optional("OPENAI_API_KEY").map(str::to_owned);
        // OpenAI's own keys start with sk-; compatible servers use their own formats.
        if let Some(key) = &api_key
            && !base_set
            && !key.starts_with("sk-")
        {
            self.problem(
                "OPENAI_API_KEY",
                "must start with `sk-` (or set OPENAI_BASE_URL for a compatible server)",
            );
        }
        if production && api_key.is_none() && !base_set {
            self.problem(
                "OPENAI_API_KEY",
                "is required in production (or set OPENAI_BASE_URL for a compatible server)",
            );
        }
        if api_key.is_none() && !base_set {
            return None;
        }
        let base_url = match custom_base {
            Some(url) => url,
            None if base_set => return None,
            None => Url::parse(OPENAI_DEFAULT_BASE_URL).expect("constant URL parses"),
        };
        Some(EmbeddingsProviderConfig {
            base_url,
            api_key: api_key.map(SecretString::from),
        })
    }

    pub(super) fn embedding_settings(&mut self) -> EmbeddingSettings {
        let model = self
            .optional("EMBEDDING_MODEL")
            .unwrap_or("text-embedding-3-small")
            .to_owned();
        let dimensions = self.parsed("EMBEDDING_DIMENSIONS", 1536u32);
        // pgvector's HNSW indexes `vector` columns up to 2,000 dimensions.
        if !(1..=2000).contains(&dimensions) {
            self.problem("EMBEDDING_DIMENSIONS", "must be between 1 and 2000");
        }
        let batch_size = self.parsed("EMBEDDING_BATCH_SIZE", 256u32);
        if !(1..=2048).contains(&batch_size) {
            self.problem(
                "EMBEDDING_BATCH_SIZE",
                "must be between 1 and 2048 (OpenAI's limit)",
            );
        }
        let max_attempts = self.parsed("EMBEDDING_MAX_ATTEMPTS", 5u32);
        if max_attempts == 0 {
            self.problem("EMBEDDING_MAX_ATTEMPTS", "must be at least 1");
        }
        EmbeddingSettings {
            model,
            dimensions,
            max_retries: self.parsed("EMBEDDING_MAX_RETRIES", 4u32),
            request_timeout: Duration::from_millis(self.parsed("EMBEDDING_TIMEOUT_MS", 30_000u64)),
            batch_size: batch_size.clamp(1, 2048),
            max_attempts: max_attempts.max(1),
            lease: Duration::from_secs(self.parsed("EMBEDDING_LEASE_SECONDS", 120u64).max(1)),
            retry_base: Duration::from_secs(self.parsed("EMBEDDING_RETRY_BASE_SECONDS", 30u64)),
        }
    }

    pub(super) fn ingest_limits(&mut self) -> IngestLimits {
        let limits = IngestLimits {
            max_documents: self.parsed("MAX_DOCUMENTS_PER_REQUEST", 100usize).max(1),
            max_document_bytes: self.parsed("MAX_DOCUMENT_BYTES", 1_000_000usize).max(1),
            chunk_tokens: self.parsed("CHUNK_TOKENS", 400usize),
            chunk_overlap: self.parsed("CHUNK_OVERLAP_TOKENS", 50usize),
        };
        // One chunk plus its title must fit OpenAI's 8,192-token input limit.
        if !(50..=8000).contains(&limits.chunk_tokens) {
            self.problem("CHUNK_TOKENS", "must be between 50 and 8000");
        }
        if limits.chunk_overlap >= limits.chunk_tokens {
            self.problem("CHUNK_OVERLAP_TOKENS", "must be smaller than CHUNK_TOKENS");
        }
        limits
    }

    pub(super) fn search_settings(&mut self) -> SearchSettings {
        SearchSettings {
            cache_ttl: Duration::from_secs(self.parsed("CACHE_TTL_SECONDS", 86_400u64)),
            lru_size: self.parsed("QUERY_CACHE_SIZE", 1_000usize).max(1),
            disable_vector: self.flag("DISABLE_VECTOR_SEARCH"),
        }
    }
}
