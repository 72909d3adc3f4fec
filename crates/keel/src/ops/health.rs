//! Health checks: readiness probes of each dependency, each bounded in
//! time, with short summaries for errors (the readiness route is public, so
//! it never reveals host names or messages; those go to the logs).

use std::future::Future;
use std::time::{Duration, Instant};

use http::StatusCode;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use super::ratelimit::{GateError, RateGate};
use crate::platform::config::EmbeddingsProviderConfig;
use crate::platform::db::{Db, SqlFunction};

/// `keel_health`: one round trip that also proves the migrations ran.
#[derive(Serialize)]
pub struct KeelHealth {}

#[derive(Deserialize)]
pub struct Probe {
    ok: bool,
}

impl SqlFunction for KeelHealth {
    const NAME: &'static str = "keel_health";
    type Output = Probe;
}

pub struct Check {
    pub name: &'static str,
    pub critical: bool,
    pub outcome: Result<(), String>,
    pub latency: Duration,
}

pub async fn run_check(
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

pub async fn check_database(db: &Db, gate: &RateGate) -> Result<(), String> {
    let probe = gate
        .run(db, &KeelHealth {})
        .await
        .map_err(|error| match error {
            GateError::Refused(..) => "rate limited".to_owned(),
            GateError::Db(error) => {
                tracing::warn!(error = %error, source = ?std::error::Error::source(&error), "database check");
                error.summary()
            }
        })?;
    if probe.ok {
        Ok(())
    } else {
        Err("unexpected probe result".to_owned())
    }
}

/// `GET {base}/models`: authenticates and reaches the provider without
/// spending tokens.
pub async fn check_embeddings(
    http: &reqwest::Client,
    provider: &EmbeddingsProviderConfig,
) -> Result<(), String> {
    let url = format!(
        "{}/models",
        provider.base_url.as_str().trim_end_matches('/')
    );
    let mut request = http.get(url);
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

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
