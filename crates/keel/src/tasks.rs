//! The durable task queue (in Postgres) and the cron functions that run it.
//!
//! A task has a kind, an optional tenant, a JSON payload, a status
//! (`queued|running|succeeded|failed|dead`), attempts out of a maximum, a due
//! time and a lease. `GET /api/cron/tasks` claims due tasks `FOR UPDATE SKIP
//! LOCKED` under a lease and runs them through the handler registered for
//! their kind ([`HANDLERS`]) until its time budget is spent: a task whose
//! worker died is claimed again once its lease expires, failures back off
//! exponentially with jitter, and a task out of attempts (or of an unknown
//! kind) is `dead` with its last error kept. `GET /api/cron/maintenance`
//! expires caches, prunes old rows (rate-limit hits, a replaced embedding
//! model's vectors a day after the change), releases stale leases and
//! schedules webhook reconciliation. `GET /api/tasks` lists the caller's tasks.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::app::App;
use crate::auth::{self, TenantRef};
use crate::embeddings::EmbeddingModel;
use crate::error::ApiError;
use crate::http::{ApiRequest, HandlerResult, encode_cursor, json_response};
use crate::webhooks;

/// Tasks claimed per round trip; they run concurrently.
const CLAIM_BATCH: u32 = 8;
/// How long a replaced embedding model's vectors outlive the change, so it can
/// be rolled back without re-embedding.
const REPLACED_MODEL_ROLLBACK_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// Rows of each kind one maintenance run may delete: bounded work per run.
const PRUNE_BATCH: u32 = 50_000;

/// A claimed task, as its handler sees it.
#[derive(Debug, Clone, Deserialize)]
pub struct Task {
    pub id: i64,
    pub tenant_id: Option<String>,
    pub kind: String,
    pub payload: Value,
    pub attempts: u32,
    pub max_attempts: u32,
}

impl Task {
    /// The task's tenant, as read from the queue (trusted: never client input).
    pub fn tenant(&self) -> Result<TenantRef, TaskError> {
        self.tenant_id
            .clone()
            .map(TenantRef::Trusted)
            .ok_or_else(|| TaskError::Permanent("this task kind needs a tenant".to_owned()))
    }
}

/// Why a task did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// Worth another attempt after a backoff (a dependency was down).
    #[error("{0}")]
    Retry(String),
    /// Retrying cannot help (bad payload, unknown kind): dead-letter now.
    #[error("{0}")]
    Permanent(String),
}

impl From<ApiError> for TaskError {
    fn from(error: ApiError) -> Self {
        if error.status().is_client_error() {
            TaskError::Permanent(error.to_string())
        } else {
            TaskError::Retry(error.to_string())
        }
    }
}

pub type TaskFuture = Pin<Box<dyn Future<Output = Result<(), TaskError>> + Send>>;
pub type TaskHandler = fn(Arc<App>, Task) -> TaskFuture;

/// Every task kind Keel knows how to run.
pub const HANDLERS: &[(&str, TaskHandler)] = &[
    ("webhook.process", |app, task| {
        Box::pin(webhooks::process_delivery(app, task))
    }),
    ("webhook.reconcile", |app, task| {
        Box::pin(webhooks::reconcile(app, task))
    }),
];

fn handler_for(kind: &str) -> Option<TaskHandler> {
    HANDLERS
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, handler)| *handler)
}

#[derive(Deserialize)]
struct Claim {
    lease_token: String,
    tasks: Vec<Task>,
}

#[derive(Deserialize)]
struct Recorded {
    recorded: bool,
    status: Option<String>,
}

#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct RunReport {
    pub ran: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub dead: u64,
    pub remaining: u64,
}

/// Runs due tasks until none are left or the budget would be exceeded.
pub async fn run(app: &Arc<App>, budget: Duration) -> Result<RunReport, ApiError> {
    let deadline = Instant::now() + budget;
    // The lease outlives the run: only a dead worker's tasks are taken over.
    let lease = budget + Duration::from_secs(60);
    let mut report = RunReport::default();
    let mut slowest = Duration::ZERO;
    loop {
        if Instant::now() + slowest >= deadline {
            let backlog: Value = app.db.call("keel_task_backlog", &json!({})).await?;
            report.remaining = backlog["due"].as_u64().unwrap_or(0);
            return Ok(report);
        }
        let round = Instant::now();
        let claim: Claim = app
            .db
            .call(
                "keel_claim_tasks",
                &json!({"limit": CLAIM_BATCH, "lease_seconds": lease.as_secs()}),
            )
            .await?;
        if claim.tasks.is_empty() {
            return Ok(report);
        }
        let runs = claim.tasks.into_iter().map(|task| {
            let app = app.clone();
            async move {
                let id = task.id;
                let outcome = match handler_for(&task.kind) {
                    None => Err(TaskError::Permanent(format!(
                        "no handler is registered for task kind `{}`",
                        task.kind
                    ))),
                    Some(handler) => {
                        let remaining = deadline.saturating_duration_since(Instant::now());
                        // Spawned: a panicking handler fails its task, not the run.
                        let running = tokio::spawn(tokio::time::timeout(
                            remaining,
                            handler(app.clone(), task),
                        ));
                        match running.await {
                            Ok(Ok(outcome)) => outcome,
                            Ok(Err(_)) => Err(TaskError::Retry(
                                "timed out at the end of the cron run".to_owned(),
                            )),
                            Err(join) => Err(TaskError::Retry(format!("handler panicked: {join}"))),
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
                Err(TaskError::Permanent(error)) => ("dead", Some(error.as_str())),
            };
            if let Some(error) = error {
                tracing::warn!(task = id, status, error, "task did not succeed");
            }
            let recorded: Recorded = app
                .db
                .call(
                    "keel_complete_task",
                    &json!({
                        "id": id,
                        "lease_token": claim.lease_token,
                        "outcome": status,
                        "error": error,
                        "retry_base_seconds": app.config.tasks.retry_base.as_secs_f64(),
                    }),
                )
                .await?;
            report.ran += 1;
            match recorded.status.as_deref() {
                _ if !recorded.recorded => {}
                Some("succeeded") => report.succeeded += 1,
                Some("dead") => report.dead += 1,
                _ => report.failed += 1,
            }
        }
        slowest = slowest.max(round.elapsed());
    }
}

/// `GET /api/cron/tasks`.
pub async fn cron(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    auth::require_cron(&app, &request)?;
    let report = run(&app, app.config.cron_time_budget).await?;
    if report.ran > 0 {
        tracing::info!(?report, "task cron finished");
    }
    Ok(json_response(StatusCode::OK, &json!(report)))
}

/// `GET /api/cron/maintenance`.
pub async fn maintenance(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    auth::require_cron(&app, &request)?;
    let settings = &app.config.tasks;
    // Reconciliation runs once per hour per endpoint, however often this is called.
    let window = time::OffsetDateTime::now_utc().unix_timestamp() / 3600;
    let mut report: Value = app
        .db
        .call(
            "keel_maintenance",
            &json!({
                "task_retention_days": settings.task_retention_days,
                "delivery_retention_days": settings.delivery_retention_days,
                "window": window.to_string(),
            }),
        )
        .await?;
    let model = EmbeddingModel::configured(&app.config);
    for pruned in [
        app.db.call("keel_prune_rate_limits", &json!({})).await?,
        app.db
            .call::<_, Value>(
                "keel_prune_replaced_vectors",
                &json!({
                    "model": model.name,
                    "dimensions": model.dimensions,
                    "after_seconds": REPLACED_MODEL_ROLLBACK_WINDOW.as_secs(),
                    "limit": PRUNE_BATCH,
                }),
            )
            .await?,
    ] {
        if let (Some(report), Value::Object(pruned)) = (report.as_object_mut(), pruned) {
            report.extend(pruned);
        }
    }
    tracing::info!(%report, "maintenance finished");
    Ok(json_response(StatusCode::OK, &report))
}

const STATUSES: &[&str] = &["queued", "running", "succeeded", "failed", "dead"];

#[derive(Deserialize)]
struct TaskPage {
    tasks: Vec<Value>,
    next_cursor: Option<String>,
}

/// `GET /api/tasks?status=&kind=&limit=&cursor=`: the caller's tasks, newest first.
pub async fn list(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    let tenant = auth::tenant(&request)?;
    let page = request.id_page(50, 200)?;
    let status = request.query_param("status").filter(|s| !s.is_empty());
    if let Some(status) = &status
        && !STATUSES.contains(&status.as_str())
    {
        return Err(ApiError::invalid_field(
            "status",
            "must be one of queued, running, succeeded, failed, dead",
        ));
    }
    let result: TaskPage = tenant
        .call(
            &app.db,
            "keel_list_tasks",
            json!({
                "status": status,
                "kind": request.query_param("kind").filter(|k| !k.is_empty()),
                "limit": page.limit,
                "cursor": page.cursor,
            }),
        )
        .await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "tasks": result.tasks,
            "next_cursor": result.next_cursor.as_deref().map(encode_cursor),
        }),
    ))
}
