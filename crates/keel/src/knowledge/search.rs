//! Hybrid (default), vector or keyword search over a tenant's chunks, in one
//! SQL function (`keel_search`).
//!
//! Query vectors are cached twice: in this instance's LRU (free for warm
//! instances) and in the database (shared by every instance, expiring after
//! `CACHE_TTL_SECONDS`). With `DISABLE_VECTOR_SEARCH=true`, no provider, or
//! a provider that fails, search degrades to keyword mode and says so.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lru::LruCache;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::store::{Search, SearchHit, SearchOutcome};
use super::{EmbeddingModel, Knowledge, KnowledgeError};
use crate::platform::crypto::sha256_hex;
use crate::platform::db::Db;
use crate::tenants::TenantRef;

const MAX_QUERY_CHARS: usize = 2000;
const MAX_TOP_K: i64 = 20;
/// A search waits this long at most for the provider before degrading.
const QUERY_EMBEDDING_TIMEOUT: Duration = Duration::from_secs(8);

/// This instance's LRU of query vectors, keyed by model, dimensions and query hash.
pub struct QueryCache {
    entries: Mutex<LruCache<String, Arc<Vec<f32>>>>,
}

impl QueryCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(LruCache::new(
                NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN),
            )),
        }
    }

    fn key(model: &EmbeddingModel, query_hash: &str) -> String {
        format!("{}:{}:{query_hash}", model.name, model.dimensions)
    }

    fn get(&self, model: &EmbeddingModel, query_hash: &str) -> Option<Arc<Vec<f32>>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&Self::key(model, query_hash))
            .cloned()
    }

    fn put(&self, model: &EmbeddingModel, query_hash: &str, vector: Arc<Vec<f32>>) {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .put(Self::key(model, query_hash), vector);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Hybrid,
    Vector,
    Keyword,
}

/// A search as callers ask for it (the body of `POST /api/search`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    /// What to look for: up to 2000 characters once whitespace is
    /// collapsed, not only whitespace.
    #[schema(pattern = r"\S")]
    pub query: String,
    /// How many results (default 5).
    #[serde(default = "default_top_k")]
    #[schema(minimum = 1, maximum = 20)]
    pub top_k: i64,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub min_score: Option<f64>,
    #[serde(default)]
    pub filter: Option<SearchFilter>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchFilter {
    /// Documents whose metadata contains these key/values.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
}

fn default_top_k() -> i64 {
    5
}

/// What a search found, and how.
#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResults {
    pub results: Vec<SearchHit>,
    /// The mode that ran (keyword when vector search degraded).
    pub mode: Mode,
    pub took_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub degraded: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub degraded_reason: Option<&'static str>,
}

/// Whitespace-normalised, so "vegan  options" and "vegan options" share a vector.
fn query_hash(query: &str) -> String {
    sha256_hex(query.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// Runs `request` over `tenant`'s chunks.
pub async fn search(
    db: &Db,
    knowledge: &Knowledge,
    tenant: &TenantRef,
    request: SearchRequest,
) -> Result<SearchResults, KnowledgeError> {
    let started = Instant::now();
    let query = request.query.trim();
    if query.is_empty() || query.chars().count() > MAX_QUERY_CHARS {
        return Err(KnowledgeError::invalid(
            "query",
            &format!("must be 1 to {MAX_QUERY_CHARS} characters"),
        ));
    }
    if !(1..=MAX_TOP_K).contains(&request.top_k) {
        return Err(KnowledgeError::invalid(
            "top_k",
            &format!("must be between 1 and {MAX_TOP_K}"),
        ));
    }
    if request.min_score.is_some_and(|s| !s.is_finite()) {
        return Err(KnowledgeError::invalid(
            "min_score",
            "must be a finite number",
        ));
    }
    let filter = request.filter.and_then(|f| f.metadata).unwrap_or_default();

    let mut mode = request.mode;
    let mut degraded: Option<&'static str> = None;
    if mode != Mode::Keyword {
        if knowledge.search.disable_vector {
            degraded = Some("vector search is disabled (DISABLE_VECTOR_SEARCH)");
        } else if knowledge.embedder.is_none() {
            degraded = Some("no embeddings provider is configured");
        }
        if degraded.is_some() {
            mode = Mode::Keyword;
        }
    }

    let hash = query_hash(query);
    let mut model = knowledge.model.clone();
    let mut model_chosen = false;
    let mut fresh_vector: Option<Arc<Vec<f32>>> = None;
    // At most: a model switch, then a cache miss, then the search itself.
    for _ in 0..4 {
        let (embedding, cache_hit) = match mode {
            Mode::Keyword => (None, false),
            _ => match fresh_vector.take() {
                Some(vector) => (Some(vector), false),
                None => {
                    let cached = knowledge.query_cache.get(&model, &hash);
                    let hit = cached.is_some();
                    (cached, hit)
                }
            },
        };
        let args = Search {
            mode,
            query,
            top_k: request.top_k,
            min_score: request.min_score,
            filter: &filter,
            model: &model.name,
            dimensions: model.dimensions,
            model_chosen,
            query_hash: &hash,
            cache_ttl_seconds: knowledge.search.cache_ttl.as_secs(),
            embedding,
            cache_hit,
        };
        match tenant.run(db, &args).await? {
            SearchOutcome::Results { results } => {
                return Ok(SearchResults {
                    results,
                    mode,
                    took_ms: started.elapsed().as_millis() as u64,
                    degraded: degraded.map(|_| true),
                    degraded_reason: degraded,
                });
            }
            SearchOutcome::UseModel { use_model } => {
                model = EmbeddingModel {
                    name: use_model.model,
                    dimensions: use_model.dimensions,
                };
                model_chosen = true;
            }
            SearchOutcome::NeedsEmbedding { needs_embedding } => {
                debug_assert!(needs_embedding);
                let deadline = Instant::now() + QUERY_EMBEDDING_TIMEOUT;
                let embedded = match &knowledge.embedder {
                    Some(embedder) => embedder
                        .embed(&model, &[query.to_owned()], deadline)
                        .await
                        .map_err(|e| e.to_string()),
                    None => Err("no embeddings provider is configured".to_owned()),
                };
                match embedded {
                    Ok(mut vectors) => {
                        let vector = Arc::new(vectors.remove(0));
                        knowledge.query_cache.put(&model, &hash, vector.clone());
                        fresh_vector = Some(vector);
                    }
                    Err(error) => {
                        tracing::warn!(%error, "query embedding failed; degrading to keyword search");
                        degraded = Some("the embeddings provider is unavailable");
                        mode = Mode::Keyword;
                    }
                }
            }
        }
    }
    Err(KnowledgeError::Internal(anyhow::anyhow!(
        "keel_search did not settle on a model and a vector"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_hashes_ignore_whitespace_differences_only() {
        assert_eq!(query_hash("vegan  options "), query_hash("vegan options"));
        assert_ne!(query_hash("vegan options"), query_hash("Vegan options"));
    }

    #[test]
    fn the_lru_forgets_the_least_recently_used_query() {
        let cache = QueryCache::new(2);
        let model = EmbeddingModel {
            name: "m".into(),
            dimensions: 2,
        };
        for hash in ["a", "b"] {
            cache.put(&model, hash, Arc::new(vec![1.0, 0.0]));
        }
        assert!(cache.get(&model, "a").is_some());
        cache.put(&model, "c", Arc::new(vec![0.0, 1.0]));
        assert!(
            cache.get(&model, "b").is_none(),
            "b was least recently used"
        );
        assert!(cache.get(&model, "a").is_some());
        let other = EmbeddingModel {
            name: "m".into(),
            dimensions: 3,
        };
        assert!(
            cache.get(&other, "a").is_none(),
            "keys include the dimensions"
        );
    }
}
