//! The background embedding worker: `GET /api/cron/embeddings` (all tenants,
//! `Bearer $CRON_SECRET`) and `POST /api/embeddings/generate` (the calling
//! tenant's backlog). Both claim due jobs in batches (`FOR UPDATE SKIP
//! LOCKED` with a lease, so overlapping or killed runs neither duplicate nor
//! lose work), embed them, and store the vectors or record the failure for a
//! retry with backoff. A run stops before its time budget runs out, and at
//! the first batch the provider fails even after retries.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Embedder, EmbeddingModel};
use crate::app::App;
use crate::auth::{self, TenantRef};
use crate::error::ApiError;
use crate::http::{ApiRequest, HandlerResult, json_response};

#[derive(Deserialize)]
struct Claim {
    lease_token: String,
    jobs: Vec<Job>,
}

#[derive(Deserialize)]
struct Job {
    chunk_id: i64,
    input: String,
}

#[derive(Deserialize)]
struct Completion {
    stored: u64,
    retrying: u64,
    failed: u64,
    remaining: u64,
}

/// What one run did, as the routes report it.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct RunReport {
    pub embedded: u64,
    pub retrying: u64,
    pub failed: u64,
    pub remaining: u64,
    pub batches: u64,
    pub provider_requests: u64,
}

/// Calls `function` for `tenant` (charging its quota) or across tenants.
async fn call<R: DeserializeOwned>(
    app: &App,
    tenant: Option<&TenantRef>,
    function: &'static str,
    args: Value,
) -> Result<R, ApiError> {
    match tenant {
        Some(tenant) => tenant.call(&app.db, function, args).await,
        None => Ok(app.db.call(function, &args).await?),
    }
}

/// Embeds due jobs until none are left or `budget` would be exceeded.
/// `tenant` restricts the run to one tenant's jobs.
pub async fn run(
    app: &App,
    embedder: &Embedder,
    tenant: Option<&TenantRef>,
    budget: Duration,
) -> Result<RunReport, ApiError> {
    let started = Instant::now();
    let deadline = started + budget;
    let model = EmbeddingModel::configured(&app.config);
    let settings = &app.config.embedding;
    let requests_before = embedder.requests_sent();
    let mut report = RunReport::default();
    let mut slowest_batch = Duration::ZERO;
    loop {
        // Stop while a batch as slow as the slowest so far still fits.
        if Instant::now() + slowest_batch >= deadline {
            break;
        }
        let batch_started = Instant::now();
        let claim: Claim = call(
            app,
            tenant,
            "keel_claim_embedding_jobs",
            json!({
                "model": model.name,
                "dimensions": model.dimensions,
                "limit": settings.batch_size,
                "lease_seconds": settings.lease.as_secs(),
            }),
        )
        .await?;
        if claim.jobs.is_empty() {
            break;
        }
        let inputs: Vec<String> = claim.jobs.iter().map(|job| job.input.clone()).collect();
        let outcome = embedder.embed(&model, &inputs, deadline).await;
        let provider_failed = outcome.is_err();
        let (embedded, failed) = match outcome {
            Ok(vectors) => (
                claim
                    .jobs
                    .iter()
                    .zip(vectors)
                    .map(|(job, vector)| json!({"chunk_id": job.chunk_id, "embedding": vector}))
                    .collect::<Vec<_>>(),
                Vec::new(),
            ),
            Err(error) => {
                tracing::warn!(%error, jobs = claim.jobs.len(), "embedding batch failed");
                let message = error.to_string();
                (
                    Vec::new(),
                    claim
                        .jobs
                        .iter()
                        .map(|job| json!({"chunk_id": job.chunk_id, "error": message}))
                        .collect(),
                )
            }
        };
        let completion: Completion = call(
            app,
            tenant,
            "keel_complete_embedding_jobs",
            json!({
                "model": model.name,
                "dimensions": model.dimensions,
                "lease_token": claim.lease_token,
                "embedded": embedded,
                "failed": failed,
                "max_attempts": settings.max_attempts,
                "retry_base_seconds": settings.retry_base.as_secs_f64(),
            }),
        )
        .await?;
        report.embedded += completion.stored;
        report.retrying += completion.retrying;
        report.failed += completion.failed;
        report.remaining = completion.remaining;
        report.batches += 1;
        slowest_batch = slowest_batch.max(batch_started.elapsed());
        // The provider failed even after its retries: stop hammering it; the
        // jobs come back after their backoff, in a later run.
        if provider_failed {
            break;
        }
    }
    report.provider_requests = embedder.requests_sent() - requests_before;
    Ok(report)
}

fn embedder(app: &App) -> Result<&Embedder, ApiError> {
    app.embedder.as_ref().ok_or_else(|| {
        ApiError::unavailable(
            "no embeddings provider is configured",
            anyhow::anyhow!("OPENAI_API_KEY and OPENAI_BASE_URL are both unset"),
        )
    })
}

fn report_response(report: RunReport, started: Instant) -> HandlerResult {
    let mut body = serde_json::to_value(&report).map_err(|e| ApiError::internal(e.into()))?;
    body["took_ms"] = json!(started.elapsed().as_millis() as u64);
    Ok(json_response(StatusCode::OK, &body))
}

/// `GET /api/cron/embeddings`: every tenant's backlog, within the cron budget.
pub async fn cron(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    auth::require_cron(&app, &request)?;
    let started = Instant::now();
    let report = run(&app, embedder(&app)?, None, app.config.cron_time_budget).await?;
    tracing::info!(?report, "embedding cron finished");
    report_response(report, started)
}

/// `POST /api/embeddings/generate`: the caller's own backlog, on demand.
pub async fn generate(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    let tenant = auth::tenant(&request)?;
    let started = Instant::now();
    let report = run(
        &app,
        embedder(&app)?,
        Some(&tenant),
        app.config.cron_time_budget,
    )
    .await?;
    report_response(report, started)
}
