//! The background embedding worker, for every tenant (the embeddings cron)
//! or one (`POST /api/embeddings/generate`). Both claim due jobs in batches
//! (`FOR UPDATE SKIP LOCKED` with a lease, so overlapping or killed runs
//! neither duplicate nor lose work), embed them, and store the vectors or
//! record the failure for a retry with backoff. A run stops before its time
//! budget runs out, and at the first batch the provider fails even after
//! retries.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::store::{ClaimEmbeddingJobs, CompleteEmbeddingJobs, EmbeddedJob, FailedJob};
use super::{Knowledge, KnowledgeError};
use crate::ops::ratelimit::GateError;
use crate::platform::budget::Budget;
use crate::platform::db::{Db, SqlFunction};
use crate::tenants::TenantRef;

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

/// Runs `F` for `tenant` (charging its quota) or across tenants.
async fn run_for<F: SqlFunction>(
    db: &Db,
    tenant: Option<&TenantRef>,
    args: &F,
) -> Result<F::Output, GateError> {
    match tenant {
        Some(tenant) => tenant.run(db, args).await,
        None => Ok(db.run(args).await?),
    }
}

/// Embeds due jobs until none are left or `budget` would be exceeded.
/// `tenant` restricts the run to one tenant's jobs.
pub async fn run(
    db: &Db,
    knowledge: &Knowledge,
    tenant: Option<&TenantRef>,
    budget: Duration,
) -> Result<RunReport, KnowledgeError> {
    let embedder = knowledge.embedder()?;
    let mut budget = Budget::new(budget);
    let model = &knowledge.model;
    let settings = &knowledge.embedding;
    let requests_before = embedder.requests_sent();
    let mut report = RunReport::default();
    while budget.has_room() {
        let batch_started = Instant::now();
        let claim = run_for(
            db,
            tenant,
            &ClaimEmbeddingJobs {
                model: &model.name,
                dimensions: model.dimensions,
                limit: settings.batch_size,
                lease_seconds: settings.lease.as_secs(),
            },
        )
        .await?;
        if claim.jobs.is_empty() {
            break;
        }
        let inputs: Vec<String> = claim.jobs.iter().map(|job| job.input.clone()).collect();
        let outcome = embedder.embed(model, &inputs, budget.deadline()).await;
        let provider_failed = outcome.is_err();
        let message = outcome.as_ref().err().map(ToString::to_string);
        let (embedded, failed) = match outcome {
            Ok(vectors) => (
                claim
                    .jobs
                    .iter()
                    .zip(vectors)
                    .map(|(job, embedding)| EmbeddedJob {
                        chunk_id: job.chunk_id,
                        embedding,
                    })
                    .collect(),
                Vec::new(),
            ),
            Err(error) => {
                tracing::warn!(%error, jobs = claim.jobs.len(), "embedding batch failed");
                let error = message.as_deref().unwrap_or_default();
                (
                    Vec::new(),
                    claim
                        .jobs
                        .iter()
                        .map(|job| FailedJob {
                            chunk_id: job.chunk_id,
                            error,
                        })
                        .collect(),
                )
            }
        };
        let completion = run_for(
            db,
            tenant,
            &CompleteEmbeddingJobs {
                model: &model.name,
                dimensions: model.dimensions,
                lease_token: &claim.lease_token,
                embedded,
                failed,
                max_attempts: settings.max_attempts,
                retry_base_seconds: settings.retry_base.as_secs_f64(),
            },
        )
        .await?;
        report.embedded += completion.stored;
        report.retrying += completion.retrying;
        report.failed += completion.failed;
        report.remaining = completion.remaining;
        report.batches += 1;
        budget.finished_round(batch_started);
        // The provider failed even after its retries: stop hammering it; the
        // jobs come back after their backoff, in a later run.
        if provider_failed {
            break;
        }
    }
    report.provider_requests = embedder.requests_sent() - requests_before;
    Ok(report)
}
