//! `POST /api/search`: hybrid (default), vector or keyword search over the
//! caller's chunks, in one SQL function (`keel_search`, migrations/0002).
//!
//! Query vectors are cached twice: in this instance's LRU (free for warm
//! instances) and in the database (shared by every instance, expiring after
//! `CACHE_TTL_SECONDS`). With `DISABLE_VECTOR_SEARCH=true`, no provider, or
//! a provider that fails, search degrades to keyword mode and says so.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::StatusCode;
use lru::LruCache;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::app::App;
use crate::auth;
use crate::embeddings::EmbeddingModel;
use crate::error::ApiError;
use crate::http::{ApiRequest, HandlerResult, json_response};

const MAX_QUERY_CHARS: usize = 2000;
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Hybrid,
    Vector,
    Keyword,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchRequest {
    query: String,
    #[serde(default = "default_top_k")]
    top_k: i64,
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    min_score: Option<f64>,
    #[serde(default)]
    filter: Option<SearchFilter>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchFilter {
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
}

fn default_top_k() -> i64 {
    5
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SearchOutcome {
    Results { results: Vec<Value> },
    NeedsEmbedding { needs_embedding: bool },
    UseModel { use_model: UseModel },
}

#[derive(Deserialize)]
struct UseModel {
    model: String,
    dimensions: u32,
}

/// Whitespace-normalised, so "vegan  options" and "vegan options" share a vector.
fn query_hash(query: &str) -> String {
    let normalised = query.split_whitespace().collect::<Vec<_>>().join(" ");
    Sha256::digest(normalised.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub async fn search(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    let started = Instant::now();
    let tenant = auth::tenant(&request)?;
    let body: SearchRequest = request.json()?;
    let query = body.query.trim();
    if query.is_empty() || query.chars().count() > MAX_QUERY_CHARS {
        return Err(ApiError::invalid_field(
            "query",
            &format!("must be 1 to {MAX_QUERY_CHARS} characters"),
        ));
    }
    if !(1..=20).contains(&body.top_k) {
        return Err(ApiError::invalid_field("top_k", "must be between 1 and 20"));
    }
    if body.min_score.is_some_and(|s| !s.is_finite()) {
        return Err(ApiError::invalid_field(
            "min_score",
            "must be a finite number",
        ));
    }
    let metadata = body.filter.and_then(|f| f.metadata).unwrap_or_default();

    let mut mode = body.mode;
    let mut degraded: Option<&'static str> = None;
    if mode != Mode::Keyword {
        if app.config.search.disable_vector {
            degraded = Some("vector search is disabled (DISABLE_VECTOR_SEARCH)");
        } else if app.embedder.is_none() {
            degraded = Some("no embeddings provider is configured");
        }
        if degraded.is_some() {
            mode = Mode::Keyword;
        }
    }

    let hash = query_hash(query);
    let mut model = EmbeddingModel::configured(&app.config);
    let mut model_chosen = false;
    let mut fresh_vector: Option<Arc<Vec<f32>>> = None;
    // At most: a model switch, then a cache miss, then the search itself.
    for _ in 0..4 {
        let mut args = json!({
            "mode": mode,
            "query": query,
            "top_k": body.top_k,
            "min_score": body.min_score,
            "filter": metadata,
            "model": model.name,
            "dimensions": model.dimensions,
            "model_chosen": model_chosen,
            "query_hash": hash,
            "cache_ttl_seconds": app.config.search.cache_ttl.as_secs(),
        });
        if mode != Mode::Keyword {
            if let Some(vector) = fresh_vector.take() {
                args["embedding"] = json!(*vector);
            } else if let Some(vector) = app.query_cache.get(&model, &hash) {
                args["embedding"] = json!(*vector);
                args["cache_hit"] = json!(true);
            }
        }
        match tenant
            .call::<SearchOutcome>(&app.db, "keel_search", args)
            .await?
        {
            SearchOutcome::Results { results } => {
                let mut body = json!({
                    "results": results,
                    "mode": mode,
                    "took_ms": started.elapsed().as_millis() as u64,
                });
                if let Some(reason) = degraded {
                    body["degraded"] = json!(true);
                    body["degraded_reason"] = json!(reason);
                }
                return Ok(json_response(StatusCode::OK, &body));
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
                let embedded = match &app.embedder {
                    Some(embedder) => embedder
                        .embed(&model, &[query.to_owned()], deadline)
                        .await
                        .map_err(|e| e.to_string()),
                    None => Err("no embeddings provider is configured".to_owned()),
                };
                match embedded {
                    Ok(mut vectors) => {
                        let vector = Arc::new(vectors.remove(0));
                        app.query_cache.put(&model, &hash, vector.clone());
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
    Err(ApiError::internal(anyhow::anyhow!(
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
