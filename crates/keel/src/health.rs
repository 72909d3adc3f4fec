//! Liveness (`/api/health`), readiness (`/api/ready`) and the Sentry test
//! route (`/api/test-error`).
//!
//! Liveness calls nothing. Readiness runs every dependency check concurrently,
//! each bounded by `READY_CHECK_TIMEOUT_MS`, so a dead dependency can never
//! make it hang; it answers 503 with `Retry-After` unless every critical check
//! passes. Check errors are short summaries: this route is public, so it
//! never reveals host names or messages (those go to the logs).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use http::{HeaderValue, StatusCode, header};
use secrecy::ExposeSecret;
use serde_json::{Map, Value, json};

use crate::app::App;
use crate::config::secret_matches;
use crate::error::{ApiError, UNAVAILABLE_RETRY_AFTER_SECS};
use crate::http::{ApiRequest, HandlerResult, json_response};
use crate::ratelimit::{GateError, RateGate, Scope};

pub async fn live(app: Arc<App>, _request: ApiRequest) -> HandlerResult {
    let config = &app.config;
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "status": "healthy",
            "service": "keel",
            "version": config.version,
            "environment": config.environment.as_str(),
            "commit": config.commit,
            "timestamp": now_rfc3339(),
        }),
    ))
}

struct Check {
    name: &'static str,
    critical: bool,
    outcome: Result<(), String>,
    latency: Duration,
}

async fn run_check(
    name: &'static str,
    critical: bool,
    timeout: Duration,
    check: impl Future<Output = Result<(), String>>,
) -> Check {
    let started = Instant::now();
    let outcome = match tokio::time::timeout(timeout, check).await {
        Ok(outcome) => outcome,
        Err(_) => Err(format!("timed out after {}ms", timeout.as_millis())),
    };
    if let Err(error) = &outcome {
        tracing::warn!(check = name, %error, "readiness check failed");
    }
    Check {
        name,
        critical,
        outcome,
        latency: started.elapsed(),
    }
}

pub async fn ready(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    let timeout = app.config.ready_check_timeout;
    // The database check goes first and through the caller's quota, so a
    // refused probe costs no call to the embeddings provider.
    let database = run_check(
        "database",
        true,
        timeout,
        check_database(&app, &request.rate_gate),
    )
    .await;
    if let Some(quota) = request.rate_gate.quota().filter(|q| !q.allowed) {
        return Err(ApiError::rate_limited(Scope::Anonymous, quota.clone()));
    }
    // Search degrades to keyword mode without embeddings: not critical.
    let embeddings = match &app.config.embeddings {
        Some(_) => Some(run_check("embeddings", false, timeout, check_embeddings(&app)).await),
        None => None,
    };
    let checks: Vec<Check> = std::iter::once(database).chain(embeddings).collect();

    let ready = checks.iter().all(|c| !c.critical || c.outcome.is_ok());
    let mut body = Map::new();
    for check in &checks {
        let mut entry = json!({
            "status": if check.outcome.is_ok() { "ok" } else { "error" },
            "latency_ms": check.latency.as_millis() as u64,
            "critical": check.critical,
        });
        if let Err(error) = &check.outcome {
            entry["error"] = Value::String(error.clone());
        }
        body.insert(check.name.to_owned(), entry);
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut response = json_response(
        status,
        &json!({ "ready": ready, "checks": body, "timestamp": now_rfc3339() }),
    );
    if !ready {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(UNAVAILABLE_RETRY_AFTER_SECS),
        );
    }
    Ok(response)
}

async fn check_database(app: &App, gate: &RateGate) -> Result<(), String> {
    let probe: Value = gate
        .call(&app.db, "keel_health", json!({}))
        .await
        .map_err(|error| match error {
            GateError::Refused(..) => "rate limited".to_owned(),
            GateError::Db(error) => {
                tracing::warn!(error = %error, source = ?std::error::Error::source(&error), "database check");
                error.summary()
            }
        })?;
    match probe.get("ok") {
        Some(Value::Bool(true)) => Ok(()),
        _ => Err("unexpected probe result".to_owned()),
    }
}

/// `GET {base}/models`: authenticates and reaches the provider without
/// spending tokens.
async fn check_embeddings(app: &App) -> Result<(), String> {
    let provider = app.config.embeddings.as_ref().ok_or("not configured")?;
    let url = format!(
        "{}/models",
        provider.base_url.as_str().trim_end_matches('/')
    );
    let mut request = app.http.get(url);
    if let Some(key) = &provider.api_key {
        request = request.bearer_auth(key.expose_secret());
    }
    let response = request.send().await.map_err(|error| {
        if error.is_timeout() {
            "timed out".to_owned()
        } else {
            "unreachable".to_owned()
        }
    })?;
    match response.status() {
        status if status.is_success() => Ok(()),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(format!(
            "provider rejected the API key ({})",
            response.status().as_u16()
        )),
        status => Err(format!("provider answered HTTP {}", status.as_u16())),
    }
}

/// Raises an error on purpose so operators can watch it arrive in Sentry.
/// Open outside production; in production it needs the admin key.
pub async fn test_error(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    if app.config.is_production() {
        let authorised = match (&app.config.admin_api_key, request.bearer_token()) {
            (Some(key), Some(token)) => secret_matches(token, key),
            _ => false,
        };
        if !authorised {
            return Err(ApiError::unauthorized());
        }
    }
    if request.query_param("kind").as_deref() == Some("panic") {
        panic!("test panic requested through /api/test-error");
    }
    Err(ApiError::internal(
        anyhow!("this error was requested through /api/test-error")
            .context("Keel test error: Sentry is receiving events"),
    ))
}

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
