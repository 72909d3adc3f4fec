//! The operations routes: liveness (`/api/health`, calls nothing),
//! readiness (`/api/ready`, every dependency checked concurrently within
//! `READY_CHECK_TIMEOUT_MS`), the Sentry test route, `/api/metrics`, and the
//! maintenance cron.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::anyhow;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde::Serialize;
use utoipa::ToSchema;

use super::health::{self, Check, now_rfc3339, run_check};
use super::maintenance::{self, MaintenanceReport};
use super::metrics::{self, KeelMetrics};
use super::ratelimit::Scope;
use crate::app::App;
use crate::platform::config::Environment;
use crate::web::auth;
use crate::web::error::ErrorBody;
use crate::web::error::UNAVAILABLE_RETRY_AFTER_SECS;
use crate::web::{ApiError, ApiRequest, Body, HandlerResult, json_of};

/// What `GET /api/health` answers.
#[derive(Serialize, ToSchema)]
pub struct Liveness<'a> {
    /// Always `healthy`: the process answers.
    status: &'static str,
    /// Always `keel`.
    service: &'static str,
    version: &'a str,
    /// `development`, `preview` or `production`.
    environment: &'a str,
    commit: &'a str,
    /// RFC 3339.
    timestamp: String,
}

/// What `GET /api/ready` answers, 200 or 503.
#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// Every critical check passed.
    ready: bool,
    /// By dependency: `database`, and `embeddings` when a provider is configured.
    checks: BTreeMap<&'static str, CheckReport>,
    /// RFC 3339.
    timestamp: String,
}

#[derive(Serialize, ToSchema)]
pub struct CheckReport {
    /// `ok` or `error`.
    status: &'static str,
    latency_ms: u64,
    /// Whether readiness depends on it.
    critical: bool,
    /// A short summary (never a host name or message).
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// `GET /api/health`: liveness; calls nothing, answers even in maintenance.
#[utoipa::path(
    get,
    path = "/api/health",
    tag = "operations",
    responses((status = 200, description = "The process answers", body = Liveness))
)]
pub async fn live(app: Arc<App>, _request: ApiRequest) -> HandlerResult {
    let config = &app.config;
    json_of(
        StatusCode::OK,
        &Liveness {
            status: "healthy",
            service: "keel",
            version: config.version,
            environment: config.environment.as_str(),
            commit: &config.commit,
            timestamp: now_rfc3339(),
        },
    )
}

/// `GET /api/ready`: readiness, every dependency checked concurrently
/// within `READY_CHECK_TIMEOUT_MS`.
#[utoipa::path(
    get,
    path = "/api/ready",
    tag = "operations",
    responses(
        (status = 200, description = "Every critical dependency answers", body = Readiness),
        (status = 503, description = "A critical dependency is down (with `Retry-After`)", body = Readiness),
    )
)]
pub async fn ready(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    let timeout = app.config.ready_check_timeout;
    // The database check goes first and through the caller's quota, so a
    // refused probe costs no call to the embeddings provider.
    let database = run_check(
        "database",
        true,
        timeout,
        health::check_database(&app.db, &request.rate_gate),
    )
    .await;
    if let Some(quota) = request.rate_gate.quota().filter(|q| !q.allowed) {
        return Err(ApiError::rate_limited(Scope::Anonymous, quota.clone()));
    }
    // Search degrades to keyword mode without embeddings: not critical.
    let embeddings = match &app.config.embeddings {
        Some(provider) => Some(
            run_check(
                "embeddings",
                false,
                timeout,
                health::check_embeddings(&app.http, provider),
            )
            .await,
        ),
        None => None,
    };
    let checks: Vec<Check> = std::iter::once(database).chain(embeddings).collect();

    let ready = checks.iter().all(|c| !c.critical || c.outcome.is_ok());
    let checks = checks
        .into_iter()
        .map(|check| {
            let report = CheckReport {
                status: if check.outcome.is_ok() { "ok" } else { "error" },
                latency_ms: check.latency.as_millis() as u64,
                critical: check.critical,
                error: check.outcome.err(),
            };
            (check.name, report)
        })
        .collect();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut response = json_of(
        status,
        &Readiness {
            ready,
            checks,
            timestamp: now_rfc3339(),
        },
    )?;
    if !ready {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(UNAVAILABLE_RETRY_AFTER_SECS),
        );
    }
    Ok(response)
}

/// Raises an error on purpose so operators can watch it arrive in Sentry.
/// Open in development only; deployed (preview or production), it needs the
/// admin key, since a public panic-on-demand burns instances and floods Sentry.
#[utoipa::path(
    get,
    path = "/api/test-error",
    tag = "operations",
    params(("kind" = Option<String>, Query, description = "`panic` panics instead of returning the error")),
    security((), ("admin_key" = [])),
    responses((status = 500, description = "`internal_error`: always, on purpose", body = ErrorBody))
)]
pub async fn test_error(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    if app.config.environment != Environment::Development {
        auth::require_admin(&app, &request)?;
    }
    if request.query_param("kind").as_deref() == Some("panic") {
        panic!("test panic requested through /api/test-error");
    }
    Err(ApiError::internal(
        anyhow!("this error was requested through /api/test-error")
            .context("Keel test error: Sentry is receiving events"),
    ))
}

/// `GET /api/metrics` (`Authorization: Bearer $METRICS_TOKEN`).
#[utoipa::path(
    get,
    path = "/api/metrics",
    tag = "operations",
    security(("metrics_token" = [])),
    responses((
        status = 200,
        description = "Prometheus text exposition format 0.0.4",
        content_type = "text/plain; version=0.0.4; charset=utf-8",
        body = String,
    ))
)]
pub async fn metrics(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    auth::require_secret(app.config.metrics_token.as_ref(), &request)?;
    let snapshot = app.db.run(&KeelMetrics {}).await?;
    let mut response = Response::new(Body::from(Bytes::from(metrics::exposition(
        &app.config,
        &snapshot,
    ))));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(response)
}

/// `GET /api/cron/maintenance`.
#[utoipa::path(
    get,
    path = "/api/cron/maintenance",
    tag = "cron",
    security(("cron_secret" = [])),
    responses((status = 200, description = "What the run pruned, expired and released", body = MaintenanceReport))
)]
pub async fn maintenance(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    auth::require_cron(&app, &request)?;
    let model = &app.knowledge.model;
    let report = maintenance::run(
        &app.db,
        &app.config.tasks,
        &model.name,
        model.dimensions,
        app.config.cron_time_budget,
    )
    .await?;
    tracing::info!(?report, "maintenance finished");
    json_of(StatusCode::OK, &report)
}
