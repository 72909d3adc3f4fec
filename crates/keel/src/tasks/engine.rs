//! The queue engine: claims due tasks under a lease and runs each through
//! the kind registered for it until the time budget is spent. A task whose
//! worker died is claimed again once its lease expires (unless that was its
//! last attempt: the claim then dead-letters it, migrations/0013), failures back off
//! exponentially with jitter, and a task out of attempts (or of an unknown
//! kind) is `dead` with its last error kept.

use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::Instrument as _;
use utoipa::ToSchema;

use super::store::{ClaimTasks, CompleteTask, TaskBacklog};
use super::{TaskError, TaskKind};
use crate::platform::budget::Budget;
use crate::platform::db::{Db, DbError};

/// Tasks claimed per round trip; they run concurrently.
const CLAIM_BATCH: u32 = 8;

#[derive(Debug, Default, Serialize, PartialEq, Eq, ToSchema)]
#[schema(as = TaskRunReport)]
pub struct RunReport {
    pub ran: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub dead: u64,
    pub remaining: u64,
}

/// Runs due tasks with `kinds` until none are left or the budget would be
/// exceeded; `context` is handed to every task.
pub async fn run<C: Clone + Send + 'static>(
    db: &Db,
    context: C,
    kinds: &[TaskKind<C>],
    budget: Duration,
    retry_base: Duration,
) -> Result<RunReport, DbError> {
    // The lease outlives the run: only a dead worker's tasks are taken over.
    let lease = budget + Duration::from_secs(60);
    let mut budget = Budget::new(budget);
    let deadline = budget.deadline();
    let mut report = RunReport::default();
    loop {
        if !budget.has_room() {
            report.remaining = db.run(&TaskBacklog {}).await?.due;
            return Ok(report);
        }
        let round = Instant::now();
        let claim = db
            .run(&ClaimTasks {
                limit: CLAIM_BATCH,
                lease_seconds: lease.as_secs(),
            })
            .await?;
        if claim.tasks.is_empty() {
            return Ok(report);
        }
        let runs = claim.tasks.into_iter().map(|task| {
            let context = context.clone();
            let kind = kinds.iter().find(|kind| kind.name == task.kind);
            async move {
                let id = task.id;
                let outcome = match kind {
                    None => Err(TaskError::Permanent(format!(
                        "no handler is registered for task kind `{}`",
                        task.kind
                    ))),
                    Some(kind) => {
                        let remaining = deadline.saturating_duration_since(Instant::now());
                        // Spawned: a panicking handler fails its task, not the run.
                        // Its span puts the task on every log line it writes.
                        let span = tracing::warn_span!("task", id, kind = kind.name);
                        let running = tokio::spawn(
                            tokio::time::timeout(remaining, (kind.run)(context, task))
                                .instrument(span.clone()),
                        );
                        match running.await {
                            Ok(Ok(outcome)) => outcome,
                            Ok(Err(_)) => Err(TaskError::Retry(
                                "timed out at the end of the cron run".to_owned(),
                            )),
                            Err(join) => span.in_scope(|| {
                                Err(TaskError::internal(
                                    true,
                                    "the task stopped unexpectedly",
                                    &format!("handler panicked: {join}"),
                                ))
                            }),
                        }
                    }
                };
                (id, outcome)
            }
        });
        for (id, outcome) in futures::future::join_all(runs).await {
            let (status, error) = match &outcome {
                Ok(()) => ("succeeded", None),
                Err(TaskError::Retry(error)) => ("failed", Some(error.as_str())),
                Err(TaskError::Busy(error)) => ("deferred", Some(error.as_str())),
                Err(TaskError::Permanent(error)) => ("dead", Some(error.as_str())),
            };
            if let Some(error) = error {
                tracing::warn!(task = id, status, error, "task did not succeed");
            }
            let recorded = db
                .run(&CompleteTask {
                    id,
                    lease_token: &claim.lease_token,
                    outcome: status,
                    error,
                    retry_base_seconds: retry_base.as_secs_f64(),
                })
                .await?;
            report.ran += 1;
            match recorded.status.as_deref() {
                _ if !recorded.recorded => {}
                Some("succeeded") => report.succeeded += 1,
                Some("dead") => report.dead += 1,
                _ => report.failed += 1,
            }
        }
        budget.finished_round(round);
    }
}
