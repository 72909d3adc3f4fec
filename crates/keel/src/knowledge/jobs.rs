//! The background embedding worker, for every tenant (the embeddings cron)
//! or one (`POST /api/embeddings/generate`). Both claim due jobs in batches
//! (`FOR UPDATE SKIP LOCKED` with a lease, so overlapping or killed runs
//! neither duplicate nor lose work), embed them, and store the vectors.
//!
//! What a failure costs depends on whose fault it is ([`FailureClass`]): an
//! input the provider refuses spends that job's attempt (a refused batch is
//! split until the bad input is found, so it fails alone); a provider that
//! is down spends nothing: the batch is given back and the model's circuit
//! opens, so no run calls the provider until the pause (its `retry-after`,
//! or a backoff growing with consecutive outages) is over. A run stops
//! before its time budget runs out, and at the first outage.
//!
//! The cron also prepares the configured model first (see [`prepare`]), so
//! a model change or rollback never makes a request do that work.

use std::time::{Duration, Instant};

use serde::Serialize;
use utoipa::ToSchema;

use super::embedder::{Embedder, EmbeddingError, FailureClass};
use super::store::{
    ClaimEmbeddingJobs, CompleteEmbeddingJobs, EmbeddedJob, FailedJob, PrepareEmbeddingModel,
    Requeued, RetryEmbeddingJobs,
};
use super::{EmbeddingModel, Knowledge, KnowledgeError};
use crate::ops::ratelimit::GateError;
use crate::platform::budget::Budget;
use crate::platform::db::{Db, SqlFunction};
use crate::tenants::TenantRef;

/// The longest the provider's circuit stays open when it gave no
/// `retry-after`: the pause doubles per consecutive outage up to this.
const OUTAGE_MAX_PAUSE: Duration = Duration::from_secs(300);
/// Chunks one step of a model's backfill scans (one bounded SQL call).
const BACKFILL_BATCH: u32 = 5_000;

/// What one run did, as the routes report it.
#[derive(Debug, Default, Serialize, PartialEq, Eq, ToSchema)]
#[schema(as = EmbeddingRunReport)]
pub struct RunReport {
    pub embedded: u64,
    pub retrying: u64,
    pub failed: u64,
    /// Jobs given back unjudged (an outage, or the budget ran out).
    pub deferred: u64,
    pub remaining: u64,
    pub batches: u64,
    pub provider_requests: u64,
    /// Jobs the configured model's backfill queued in this run (cron only).
    pub backfill_queued: u64,
    /// Set while the provider's circuit is open: no call before then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused_until: Option<String>,
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

/// Makes the configured model current and queues its backfill, in bounded
/// steps while `budget` has room: after a change, and after a rollback to a
/// model seen before (whose chunks may have lost its vectors). Returns the
/// jobs queued.
pub async fn prepare(
    db: &Db,
    knowledge: &Knowledge,
    budget: &mut Budget,
) -> Result<u64, KnowledgeError> {
    let mut queued = 0;
    while budget.has_room() {
        let started = Instant::now();
        let step = db
            .run(&PrepareEmbeddingModel {
                model: &knowledge.model.name,
                dimensions: knowledge.model.dimensions,
                limit: BACKFILL_BATCH,
            })
            .await
            .map_err(GateError::from)?;
        if step.activated || step.index_created {
            tracing::info!(model = %knowledge.model.name, ?step, "embedding model prepared");
        }
        queued += step.queued;
        budget.finished_round(started);
        if step.done {
            break;
        }
    }
    Ok(queued)
}

/// `POST /api/embeddings/retry`: the tenant's failed jobs, queued again.
pub async fn retry_failed(
    db: &Db,
    knowledge: &Knowledge,
    tenant: &TenantRef,
) -> Result<Requeued, KnowledgeError> {
    Ok(tenant
        .run(
            db,
            &RetryEmbeddingJobs {
                model: &knowledge.model.name,
                dimensions: knowledge.model.dimensions,
            },
        )
        .await?)
}

/// What the provider made of one input.
enum Verdict {
    Embedded(Vec<f32>),
    Rejected(String),
    /// Not judged: the provider was down or time ran out first.
    Untried,
}

/// Embeds `inputs`, splitting a refused batch in halves until each refused
/// input is alone. Stops at an outage or the deadline, returning why.
async fn embed_isolating(
    embedder: &Embedder,
    model: &EmbeddingModel,
    inputs: &[String],
    deadline: Instant,
) -> (Vec<Verdict>, Option<EmbeddingError>) {
    let mut verdicts: Vec<Verdict> = inputs.iter().map(|_| Verdict::Untried).collect();
    let mut ranges = Vec::new();
    ranges.push(0..inputs.len());
    while let Some(range) = ranges.pop() {
        let error = match embedder
            .embed(model, &inputs[range.clone()], deadline)
            .await
        {
            Ok(vectors) => {
                for (i, vector) in range.zip(vectors) {
                    verdicts[i] = Verdict::Embedded(vector);
                }
                continue;
            }
            Err(error) => error,
        };
        match error.class() {
            FailureClass::Input if range.len() > 1 => {
                let middle = range.start + range.len() / 2;
                ranges.push(middle..range.end);
                ranges.push(range.start..middle);
            }
            FailureClass::Input | FailureClass::Unusable => {
                let message = error.to_string();
                for i in range {
                    verdicts[i] = Verdict::Rejected(message.clone());
                }
            }
            FailureClass::Outage | FailureClass::OutOfTime => return (verdicts, Some(error)),
        }
    }
    (verdicts, None)
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
    if tenant.is_none() {
        // Preparing (an index build on a large table, a lock) may fail or
        // time out; the jobs already queued are still worth embedding, and
        // the next run prepares again.
        match prepare(db, knowledge, &mut budget).await {
            Ok(queued) => report.backfill_queued = queued,
            Err(error) => {
                tracing::error!(%error, model = %model.name, "preparing the embedding model failed")
            }
        }
    }
    let mut due_before: Option<String> = None;
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
                due_before: due_before.as_deref(),
            },
        )
        .await?;
        due_before.get_or_insert(claim.claimed_at);
        if let Some(until) = claim.paused_until {
            report.paused_until = Some(until);
            break;
        }
        if claim.jobs.is_empty() {
            break;
        }
        let inputs: Vec<String> = claim.jobs.iter().map(|job| job.input.clone()).collect();
        let (verdicts, stopped) =
            embed_isolating(embedder, model, &inputs, budget.deadline()).await;
        let mut embedded = Vec::new();
        let mut rejected = Vec::new();
        let mut deferred = Vec::new();
        for (job, verdict) in claim.jobs.iter().zip(verdicts) {
            match verdict {
                Verdict::Embedded(embedding) => embedded.push(EmbeddedJob {
                    chunk_id: job.chunk_id,
                    embedding,
                }),
                Verdict::Rejected(error) => rejected.push((job.chunk_id, error)),
                Verdict::Untried => deferred.push(job.chunk_id),
            }
        }
        if !rejected.is_empty() {
            tracing::warn!(error = %rejected[0].1, jobs = rejected.len(), "the provider rejected inputs");
        }
        let stop_message = stopped.as_ref().map(ToString::to_string);
        if let Some(error) = &stopped {
            tracing::warn!(%error, jobs = deferred.len(), "embedding batch deferred");
        }
        let completion = run_for(
            db,
            tenant,
            &CompleteEmbeddingJobs {
                model: &model.name,
                dimensions: model.dimensions,
                lease_token: &claim.lease_token,
                embedded,
                failed: rejected
                    .iter()
                    .map(|(chunk_id, error)| FailedJob {
                        chunk_id: *chunk_id,
                        error,
                    })
                    .collect(),
                deferred,
                deferred_error: stop_message.as_deref(),
                outage: stopped
                    .as_ref()
                    .is_some_and(|e| e.class() == FailureClass::Outage),
                retry_after_seconds: stopped
                    .as_ref()
                    .and_then(EmbeddingError::retry_after)
                    .map(|pause| pause.as_secs_f64()),
                outage_base_seconds: settings.retry_base.as_secs_f64(),
                outage_max_seconds: OUTAGE_MAX_PAUSE.as_secs_f64(),
                max_attempts: settings.max_attempts,
                retry_base_seconds: settings.retry_base.as_secs_f64(),
            },
        )
        .await?;
        report.embedded += completion.stored;
        report.retrying += completion.retrying;
        report.failed += completion.failed;
        report.deferred += completion.deferred;
        report.remaining = completion.remaining;
        report.batches += 1;
        if completion.paused_until.is_some() {
            report.paused_until = completion.paused_until;
        }
        budget.finished_round(batch_started);
        // The provider is down (or time is up): stop; the circuit, or the
        // next run, decides when to try again.
        if stopped.is_some() {
            break;
        }
    }
    report.provider_requests = embedder.requests_sent() - requests_before;
    Ok(report)
}
