//! The knowledge routes: `PUT`/`GET /api/documents`, `DELETE
//! /api/documents/{id}`, `POST /api/search`, `POST /api/embeddings/generate`
//! and the embeddings cron.

use std::sync::Arc;
use std::time::Instant;

use http::{Method, StatusCode};
use serde::Serialize;
use utoipa::ToSchema;

use super::documents::{self, UpsertRequest};
use super::jobs::{self, RunReport};
use super::search::{self, SearchRequest, SearchResults};
use super::store::{DeletedDocument, DocumentSummary, Requeued, UpsertCounts};
use crate::app::App;
use crate::web::auth;
use crate::web::error::ErrorBody;
use crate::web::{ApiRequest, HandlerResult, json_of, list_page};

/// `GET` and `PUT` share `/api/documents`.
pub async fn documents(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    if request.method == Method::PUT {
        upsert(app, request).await
    } else {
        list(app, request).await
    }
}

list_page!(DocumentList, documents, DocumentSummary);

/// What an embedding run did, and how long it took.
#[derive(Serialize, ToSchema)]
pub struct EmbeddingRun {
    #[serde(flatten)]
    report: RunReport,
    took_ms: u64,
}

/// `PUT /api/documents` `{"documents":[…]}`.
#[utoipa::path(
    put,
    path = "/api/documents",
    tag = "knowledge",
    security(("tenant_key" = [])),
    request_body = UpsertRequest,
    responses(
        (status = 200, description = "What the upsert did; new chunks wait for embedding", body = UpsertCounts),
        (status = 400, description = "`invalid_field`: `documents`, or `documents[i].<field>`", body = ErrorBody),
        (status = 409, description = "`conflict`: a concurrent writer kept changing the same documents", body = ErrorBody),
    )
)]
pub async fn upsert(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    let tenant = auth::tenant(&request)?;
    let body: UpsertRequest = request.json()?;
    documents::validate(&body.documents, &app.knowledge.limits)?;
    let counts = documents::upsert(&app.db, &app.knowledge, &tenant, body.documents).await?;
    json_of(StatusCode::OK, &counts)
}

/// `GET /api/documents?limit=&cursor=`.
#[utoipa::path(
    get,
    path = "/api/documents",
    tag = "knowledge",
    security(("tenant_key" = [])),
    params(
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 200, description = "Default 50"),
        ("cursor" = Option<String>, Query, description = "The `next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "Documents by id, with their embedding state", body = DocumentList),
        (status = 400, description = "`invalid_field`: `limit` or `cursor`", body = ErrorBody),
    )
)]
pub async fn list(app: Arc<App>, request: ApiRequest) -> HandlerResult {
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
    json_of(StatusCode::OK, &DocumentList::from(documents))
}

/// `DELETE /api/documents/{id}`: the document, its chunks and their vectors.
#[utoipa::path(
    delete,
    path = "/api/documents/{id}",
    tag = "knowledge",
    security(("tenant_key" = [])),
    params(("id" = String, Path, description = "The document's id")),
    responses(
        (status = 200, description = "Deleted", body = DeletedDocument),
        (status = 400, description = "`invalid_field`: `id`", body = ErrorBody),
        (status = 404, description = "`not_found`: no document of the tenant with that id", body = ErrorBody),
    )
)]
pub async fn delete(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    let tenant = auth::tenant(&request)?;
    let deleted = documents::delete(&app.db, &tenant, request.param("id")).await?;
    json_of(StatusCode::OK, &deleted)
}

/// `POST /api/search`.
#[utoipa::path(
    post,
    path = "/api/search",
    tag = "knowledge",
    security(("tenant_key" = [])),
    request_body = SearchRequest,
    responses(
        (status = 200, description = "The best chunks; keyword results when vector search degraded", body = SearchResults),
        (status = 400, description = "`invalid_field`: `query`, `top_k`, `min_score` or `filter`", body = ErrorBody),
    )
)]
pub async fn search(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    let tenant = auth::tenant(&request)?;
    let body: SearchRequest = request.json()?;
    let results = search::search(&app.db, &app.knowledge, &tenant, body).await?;
    json_of(StatusCode::OK, &results)
}

fn report_response(report: RunReport, started: Instant) -> HandlerResult {
    json_of(
        StatusCode::OK,
        &EmbeddingRun {
            report,
            took_ms: started.elapsed().as_millis() as u64,
        },
    )
}

/// `GET /api/cron/embeddings`: every tenant's backlog, within the cron budget.
#[utoipa::path(
    get,
    path = "/api/cron/embeddings",
    tag = "cron",
    security(("cron_secret" = [])),
    responses(
        (status = 200, description = "What the run embedded, retried and left", body = EmbeddingRun),
        (status = 503, description = "`unavailable`: no embeddings provider configured", body = ErrorBody),
    )
)]
pub async fn cron(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    auth::require_cron(&app, &request)?;
    let started = Instant::now();
    let report = jobs::run(&app.db, &app.knowledge, None, app.config.cron_time_budget).await?;
    tracing::info!(?report, "embedding cron finished");
    report_response(report, started)
}

/// `POST /api/embeddings/generate`: the caller's own backlog, on demand.
#[utoipa::path(
    post,
    path = "/api/embeddings/generate",
    tag = "knowledge",
    security(("tenant_key" = [])),
    responses(
        (status = 200, description = "What the run embedded, retried and left", body = EmbeddingRun),
        (status = 503, description = "`unavailable`: no embeddings provider configured", body = ErrorBody),
    )
)]
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
#[utoipa::path(
    post,
    path = "/api/embeddings/retry",
    tag = "knowledge",
    security(("tenant_key" = [])),
    responses((status = 200, description = "How many failed chunks were queued again", body = Requeued))
)]
pub async fn retry(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    let tenant = auth::tenant(&request)?;
    let requeued = jobs::retry_failed(&app.db, &app.knowledge, &tenant).await?;
    json_of(StatusCode::OK, &requeued)
}
