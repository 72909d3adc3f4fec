//! The task routes: `GET /api/tasks` (a tenant's tasks) and the tasks cron.

use std::sync::Arc;

use http::StatusCode;

use super::TaskKind;
use super::engine::{self, RunReport};
use super::store::{ListTasks, TaskSummary};
use crate::app::App;
use crate::web::auth;
use crate::web::error::ErrorBody;
use crate::web::{ApiError, ApiRequest, HandlerResult, json_of, list_page};

const STATUSES: &[&str] = &["queued", "running", "succeeded", "failed", "dead"];

list_page!(TaskList, tasks, TaskSummary);

/// `GET /api/cron/tasks`: runs due tasks of the registered `kinds`.
#[utoipa::path(
    get,
    path = "/api/cron/tasks",
    tag = "cron",
    security(("cron_secret" = [])),
    responses((status = 200, description = "What the run did", body = RunReport))
)]
pub async fn cron(
    app: Arc<App>,
    request: ApiRequest,
    kinds: &[TaskKind<Arc<App>>],
) -> HandlerResult {
    auth::require_cron(&app, &request)?;
    let report = engine::run(
        &app.db,
        app.clone(),
        kinds,
        app.config.cron_time_budget,
        app.config.tasks.retry_base,
    )
    .await?;
    if report.ran > 0 {
        tracing::info!(?report, "task cron finished");
    }
    json_of(StatusCode::OK, &report)
}

/// `GET /api/tasks?status=&kind=&limit=&cursor=`: the caller's tasks, newest first.
#[utoipa::path(
    get,
    path = "/api/tasks",
    tag = "tasks",
    security(("tenant_key" = [])),
    params(
        ("status" = Option<String>, Query, description = "`queued`, `running`, `succeeded`, `failed` or `dead`"),
        ("kind" = Option<String>, Query, description = "A task kind, such as `webhook.process`"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 200, description = "Default 50"),
        ("cursor" = Option<String>, Query, description = "The `next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "The tenant's tasks, newest first", body = TaskList),
        (status = 400, description = "`invalid_field`: `status`, `limit` or `cursor`", body = ErrorBody),
    )
)]
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
    let kind = request.query_param("kind").filter(|k| !k.is_empty());
    let tasks = tenant
        .run(
            &app.db,
            &ListTasks {
                status: status.as_deref(),
                kind: kind.as_deref(),
                limit: page.limit,
                cursor: page.cursor.as_deref(),
            },
        )
        .await?;
    json_of(StatusCode::OK, &TaskList::from(tasks))
}
