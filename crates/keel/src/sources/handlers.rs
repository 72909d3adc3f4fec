//! The sources routes: `GET`/`POST /api/sources`, `GET`/`DELETE
//! /api/sources/{id}`, `POST /api/sources/{id}/sync` and the sources cron.

use std::sync::Arc;
use std::time::Instant;

use http::{Method, StatusCode};
use serde::Serialize;
use utoipa::ToSchema;

use super::MAX_SOURCES_PER_TENANT;
use super::crawl::{Crawler, RunReport};
use super::definitions::SourceRequest;
use super::store::{
    CreateSource, DeleteSource, DeletedSource, GetSource, ListSources, Source, SourceList,
};
use crate::app::App;
use crate::web::auth;
use crate::web::error::ErrorBody;
use crate::web::{ApiRequest, HandlerResult, json_of};

fn crawler(app: &App) -> Crawler<'_> {
    Crawler {
        db: &app.db,
        knowledge: &app.knowledge,
        settings: &app.config.sources,
        allow_private: app.config.tasks.allow_private_pull_urls,
    }
}

/// `GET` and `POST` share `/api/sources`.
pub async fn sources(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    if request.method == Method::POST {
        create(app, request).await
    } else {
        list(app, request).await
    }
}

/// `GET` and `DELETE` share `/api/sources/{id}`.
pub async fn source(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    if request.method == Method::DELETE {
        delete(app, request).await
    } else {
        read(app, request).await
    }
}

/// `POST /api/sources`: a website or sitemap crawled on a schedule.
#[utoipa::path(
    post,
    path = "/api/sources",
    tag = "sources",
    security(("tenant_key" = [])),
    request_body = SourceRequest,
    responses(
        (status = 201, description = "The source; its first crawl starts with the next cron run or `POST /api/sources/{id}/sync`", body = Source),
        (status = 400, description = "`invalid_field`: `type`, `url`, `schedule`, `include`, `exclude` or `max_pages`", body = ErrorBody),
        (status = 409, description = "`conflict`: a source with that URL exists, or the tenant has 50 sources", body = ErrorBody),
    )
)]
pub async fn create(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    let tenant = auth::tenant(&request)?;
    let source = request.json::<SourceRequest>()?.validate()?;
    let created = tenant
        .run(
            &app.db,
            &CreateSource {
                kind: source.kind,
                url: &source.url,
                host: &source.host,
                schedule: source.schedule,
                include: &source.include,
                exclude: &source.exclude,
                max_pages: source.max_pages,
                max_sources: MAX_SOURCES_PER_TENANT,
                audit: &request.audit(&auth::tenant_actor(&request)),
            },
        )
        .await?;
    json_of(StatusCode::CREATED, &created)
}

/// `GET /api/sources`: the tenant's sources (at most 50), oldest first.
#[utoipa::path(
    get,
    path = "/api/sources",
    tag = "sources",
    security(("tenant_key" = [])),
    responses((status = 200, description = "Every source of the tenant with its progress", body = SourceList))
)]
pub async fn list(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    let tenant = auth::tenant(&request)?;
    let sources = tenant.run(&app.db, &ListSources {}).await?;
    json_of(StatusCode::OK, &sources)
}

/// `GET /api/sources/{id}`: one source, its current crawl and its last.
#[utoipa::path(
    get,
    path = "/api/sources/{id}",
    tag = "sources",
    security(("tenant_key" = [])),
    params(("id" = String, Path, description = "The source's id")),
    responses(
        (status = 200, description = "The source", body = Source),
        (status = 404, description = "`not_found`: the tenant has no such source", body = ErrorBody),
    )
)]
pub async fn read(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    let tenant = auth::tenant(&request)?;
    let source = tenant
        .run(
            &app.db,
            &GetSource {
                id: request.param("id"),
            },
        )
        .await?;
    json_of(StatusCode::OK, &source)
}

/// `DELETE /api/sources/{id}`: the source, its pages and their documents.
#[utoipa::path(
    delete,
    path = "/api/sources/{id}",
    tag = "sources",
    security(("tenant_key" = [])),
    params(("id" = String, Path, description = "The source's id")),
    responses(
        (status = 200, description = "Deleted, with the number of documents removed", body = DeletedSource),
        (status = 404, description = "`not_found`: the tenant has no such source", body = ErrorBody),
    )
)]
pub async fn delete(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    let tenant = auth::tenant(&request)?;
    let deleted = tenant
        .run(
            &app.db,
            &DeleteSource {
                id: request.param("id"),
                audit: &request.audit(&auth::tenant_actor(&request)),
            },
        )
        .await?;
    json_of(StatusCode::OK, &deleted)
}

/// What `POST /api/sources/{id}/sync` did.
#[derive(Serialize, ToSchema)]
pub struct SyncRun {
    run: RunReport,
    /// The source after the run; `null` when another run took it over.
    source: Option<Source>,
    took_ms: u64,
}

/// `POST /api/sources/{id}/sync`: crawls the source now, within the cron
/// budget, and answers its progress; a cycle that does not fit is resumed
/// by the cron.
#[utoipa::path(
    post,
    path = "/api/sources/{id}/sync",
    tag = "sources",
    security(("tenant_key" = [])),
    params(("id" = String, Path, description = "The source's id")),
    responses(
        (status = 200, description = "What the run did and where the source stands", body = SyncRun),
        (status = 404, description = "`not_found`: the tenant has no such source", body = ErrorBody),
        (status = 409, description = "`conflict`: another run is crawling the source", body = ErrorBody),
    )
)]
pub async fn sync(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    let tenant = auth::tenant(&request)?;
    let started = Instant::now();
    let (run, source) = crawler(&app)
        .run_now(&tenant, request.param("id"), app.config.cron_time_budget)
        .await?;
    json_of(
        StatusCode::OK,
        &SyncRun {
            run,
            source,
            took_ms: started.elapsed().as_millis() as u64,
        },
    )
}

/// What a sources cron run did.
#[derive(Serialize, ToSchema)]
pub struct SourcesCronRun {
    #[serde(flatten)]
    report: RunReport,
    took_ms: u64,
}

/// `GET /api/cron/sources`: due sources of every tenant, within the budget.
#[utoipa::path(
    get,
    path = "/api/cron/sources",
    tag = "cron",
    security(("cron_secret" = [])),
    responses((status = 200, description = "What the run crawled and left for the next one", body = SourcesCronRun))
)]
pub async fn cron(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    auth::require_cron(&app, &request)?;
    let started = Instant::now();
    let report = crawler(&app).run_due(app.config.cron_time_budget).await?;
    tracing::info!(?report, "sources cron finished");
    json_of(
        StatusCode::OK,
        &SourcesCronRun {
            report,
            took_ms: started.elapsed().as_millis() as u64,
        },
    )
}
