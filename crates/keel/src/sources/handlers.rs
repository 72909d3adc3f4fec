//! The sources routes: `GET`/`POST /api/sources`, `GET`/`DELETE
//! /api/sources/{id}`, `POST /api/sources/{id}/sync` and the sources cron.

use std::sync::Arc;
use std::time::Instant;

use http::{Method, StatusCode};
use serde_json::json;

use super::MAX_SOURCES_PER_TENANT;
use super::crawl::Crawler;
use super::definitions::SourceRequest;
use super::store::{CreateSource, DeleteSource, GetSource, ListSources};
use crate::app::App;
use crate::web::auth;
use crate::web::{ApiError, ApiRequest, HandlerResult, json_of, json_response};

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
    let tenant = auth::tenant(&request)?;
    if request.method == Method::POST {
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
        return Ok(json_response(StatusCode::CREATED, &created));
    }
    let sources = tenant.run(&app.db, &ListSources {}).await?;
    Ok(json_response(StatusCode::OK, &sources))
}

/// `GET` and `DELETE /api/sources/{id}`.
pub async fn source(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    let tenant = auth::tenant(&request)?;
    let id = request.param("id");
    if request.method == Method::DELETE {
        let deleted = tenant
            .run(
                &app.db,
                &DeleteSource {
                    id,
                    audit: &request.audit(&auth::tenant_actor(&request)),
                },
            )
            .await?;
        return json_of(StatusCode::OK, &deleted);
    }
    let source = tenant.run(&app.db, &GetSource { id }).await?;
    Ok(json_response(StatusCode::OK, &source))
}

/// `POST /api/sources/{id}/sync`: crawls the source now, within the cron
/// budget, and answers its progress; a cycle that does not fit is resumed
/// by the cron.
pub async fn sync(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    let tenant = auth::tenant(&request)?;
    let started = Instant::now();
    let (report, source) = crawler(&app)
        .run_now(&tenant, request.param("id"), app.config.cron_time_budget)
        .await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"run": report, "source": source, "took_ms": started.elapsed().as_millis() as u64}),
    ))
}

/// `GET /api/cron/sources`: due sources of every tenant, within the budget.
pub async fn cron(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    auth::require_cron(&app, &request)?;
    let started = Instant::now();
    let report = crawler(&app).run_due(app.config.cron_time_budget).await?;
    tracing::info!(?report, "sources cron finished");
    let mut body = serde_json::to_value(&report).map_err(|e| ApiError::internal(e.into()))?;
    body["took_ms"] = json!(started.elapsed().as_millis() as u64);
    Ok(json_response(StatusCode::OK, &body))
}
