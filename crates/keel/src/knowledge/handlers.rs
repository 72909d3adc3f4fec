//! The knowledge routes: `PUT`/`GET /api/documents`, `DELETE
//! /api/documents/{id}`, `POST /api/search`, `POST /api/embeddings/generate`
//! and the embeddings cron.

use std::sync::Arc;
use std::time::Instant;

use http::{Method, StatusCode};
use serde_json::json;

use super::documents::{self, UpsertRequest};
use super::jobs::{self, RunReport};
use super::search::{self, SearchRequest};
use crate::app::App;
use crate::web::auth;
use crate::web::{ApiError, ApiRequest, HandlerResult, json_of, json_response, page_response};

/// `GET` and `PUT` share `/api/documents`.
pub async fn documents(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    if request.method == Method::PUT {
        upsert(app, request).await
    } else {
        list(app, request).await
    }
}

/// `PUT /api/documents` `{"documents":[…]}`.
async fn upsert(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    let tenant = auth::tenant(&request)?;
    let body: UpsertRequest = request.json()?;
    documents::validate(&body.documents, &app.knowledge.limits)?;
    let counts = documents::upsert(&app.db, &app.knowledge, &tenant, body.documents).await?;
    json_of(StatusCode::OK, &counts)
}

/// `GET /api/documents?limit=&cursor=`.
async fn list(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    let tenant = auth::tenant(&request)?;
    let page = request.page(50, 200)?;
    let documents = documents::list(
        &app.db,
        &app.knowledge,
        &tenant,
        page.limit,
        page.cursor.as_deref(),
    )
    .await?;
    page_response("documents", documents)
}

/// `DELETE /api/documents/{id}`: the document, its chunks and their vectors.
pub async fn delete(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    let tenant = auth::tenant(&request)?;
    let deleted = documents::delete(&app.db, &tenant, request.param("id")).await?;
    json_of(StatusCode::OK, &deleted)
}

/// `POST /api/search`.
pub async fn search(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    let tenant = auth::tenant(&request)?;
    let body: SearchRequest = request.json()?;
    let results = search::search(&app.db, &app.knowledge, &tenant, body).await?;
    json_of(StatusCode::OK, &results)
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
    let report = jobs::run(&app.db, &app.knowledge, None, app.config.cron_time_budget).await?;
    tracing::info!(?report, "embedding cron finished");
    report_response(report, started)
}

/// `POST /api/embeddings/generate`: the caller's own backlog, on demand.
pub async fn generate(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    let tenant = auth::tenant(&request)?;
    let started = Instant::now();
    let report = jobs::run(
        &app.db,
        &app.knowledge,
        Some(&tenant),
        app.config.cron_time_budget,
    )
    .await?;
    report_response(report, started)
}

/// `POST /api/embeddings/retry`: the caller's failed chunks, queued again
/// with a fresh set of attempts.
pub async fn retry(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    let tenant = auth::tenant(&request)?;
    let requeued = jobs::retry_failed(&app.db, &app.knowledge, &tenant).await?;
    json_of(StatusCode::OK, &requeued)
}
