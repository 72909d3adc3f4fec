//! Structured logs and Sentry. JSON lines in preview/production, readable
//! lines in development, level from `LOG_LEVEL`. Sentry (when `SENTRY_DSN` is
//! set) receives 5xx errors and panics tagged with the request id; events are
//! flushed before a response leaves so a frozen instance loses none.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use secrecy::ExposeSecret;
use sentry::transports::ReqwestHttpTransportOptions;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::platform::config::{Config, Environment};

static SENTRY: OnceLock<sentry::ClientInitGuard> = OnceLock::new();
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Installs logging and Sentry for this process. Safe to call more than once
/// (tests build many apps in one process): only the first call takes effect.
pub fn init(config: &Config, http: &reqwest::Client) {
    let filter: Targets = config.log_level.parse().unwrap_or_else(|_| Targets::new());
    let registry = tracing_subscriber::registry().with(filter);
    let installed = if config.environment == Environment::Development {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .compact()
                    .with_writer(std::io::stderr),
            )
            .try_init()
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stdout),
            )
            .try_init()
    };
    if installed.is_err() {
        return;
    }
    if let Some(sentry_config) = &config.sentry {
        let client = http.clone();
        let options = sentry::ClientOptions::new()
            .dsn(sentry_config.dsn.expose_secret())
            .environment(config.environment.as_str())
            .release(config.commit.clone())
            .traces_sample_rate(sentry_config.traces_sample_rate)
            .transport(move |options: &sentry::ClientOptions| {
                // Sentry builds a transport only when a DSN is set, and it is.
                let general = sentry::TransportOptions::try_from_client_options(options)
                    .expect("the Sentry DSN was validated with the configuration");
                Arc::new(
                    ReqwestHttpTransportOptions::from(general)
                        .with_client(client.clone())
                        .build(),
                ) as Arc<dyn sentry::Transport>
            });
        let guard = sentry::init(options);
        let _ = SENTRY.set(guard);
    }
    if let Some(note) = &config.database_choice_note {
        tracing::warn!("{note}");
    }
    tracing::info!(
        environment = config.environment.as_str(),
        version = config.version,
        commit = %config.commit,
        database = config.database.transport_name(),
        sentry = config.sentry.is_some(),
        "keel starting"
    );
}

/// Reports a server fault with its cause chain and the request id.
pub fn capture_error(error: &(dyn std::error::Error + 'static), request_id: &str) {
    if sentry::Hub::current().client().is_none() {
        return;
    }
    sentry::with_scope(
        |scope| scope.set_tag("request_id", request_id),
        || sentry::capture_error(error),
    );
}

/// Waits (bounded) until queued Sentry events are sent.
pub async fn flush() {
    if let Some(client) = sentry::Hub::current().client() {
        let _ = tokio::task::spawn_blocking(move || client.flush(Some(FLUSH_TIMEOUT))).await;
    }
}
