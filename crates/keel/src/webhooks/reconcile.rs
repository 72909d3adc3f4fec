//! The `webhook.reconcile` task kind, the fallback for missed webhooks:
//! pulls an endpoint's `pull_url` through the SSRF-guarded client and
//! accepts each event it has not seen, exactly as if it had been delivered
//! (deduplicated by event id).

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use time::format_description::well_known::Rfc3339;

use super::store::AcceptWebhook;
use super::{WebhookError, endpoints, presets};
use crate::ops::ratelimit::RateGate;
use crate::platform::config::Config;
use crate::platform::db::Db;
use crate::platform::fetch::{self, FetchError, FetchLimits};
use crate::tasks::{Task, TaskError};

const PULL_TIMEOUT: Duration = Duration::from_secs(10);
const PULL_MAX_BYTES: usize = 1024 * 1024;
const PULL_MAX_REDIRECTS: usize = 3;

#[derive(Deserialize)]
struct PulledEvents {
    events: Vec<Value>,
}

pub async fn reconcile(db: &Db, config: &Config, task: Task) -> Result<(), TaskError> {
    let endpoint_id = task.payload["endpoint_id"]
        .as_str()
        .ok_or_else(|| TaskError::permanent("payload", "missing endpoint_id"))?;
    let endpoint = match endpoints::load(db, &RateGate::default(), endpoint_id).await {
        Ok(endpoint) => endpoint,
        Err(WebhookError::Call(error)) => return Err(error.into()),
        Err(error) => return Err(TaskError::permanent("endpoint", error)),
    };
    if Some(endpoint.tenant_id.as_str()) != task.tenant_id.as_deref() {
        return Err(TaskError::permanent(
            "payload",
            "the endpoint belongs to another tenant",
        ));
    }
    let Some(pull_url) = endpoint.pull_url.as_deref() else {
        return Ok(());
    };
    let limits = FetchLimits {
        timeout: PULL_TIMEOUT,
        max_bytes: PULL_MAX_BYTES,
        max_redirects: PULL_MAX_REDIRECTS,
        allow_private: config.tasks.allow_private_pull_urls,
    };
    let body = fetch::fetch("pull_url", pull_url, &limits)
        .await
        .map_err(|error| match error {
            FetchError::Refused(reason) => TaskError::Permanent(reason),
            FetchError::Failed(reason) => TaskError::Retry(reason),
        })?;
    let pulled: PulledEvents = serde_json::from_slice(&body)
        .map_err(|e| TaskError::permanent("pulled body (expected {\"events\":[…]})", e))?;
    let mut accepted = 0;
    for event in &pulled.events {
        let (Some(id), Some(kind)) = (event["id"].as_str(), event["type"].as_str()) else {
            tracing::warn!(
                endpoint = endpoint_id,
                "skipping a pulled event without id or type"
            );
            continue;
        };
        // A pulled event without a `timestamp` has no ordering key: it
        // never overwrites a document that any timed event has touched.
        let event_at = presets::event_time(event).and_then(|at| at.format(&Rfc3339).ok());
        let result = db
            .run(&AcceptWebhook {
                endpoint_id: &endpoint.id,
                webhook_id: id,
                event_type: kind,
                payload: event,
                event_at: event_at.as_deref(),
                max_webhook_bytes_per_day: config.tasks.quotas.webhook_bytes_per_day,
                max_queued_tasks: config.tasks.quotas.queued_tasks,
            })
            .await?;
        if let Some(refused) = result.refused {
            // The events accepted so far are stored; the rest come next time.
            return Err(TaskError::Retry(refused.to_string()));
        }
        accepted += u32::from(!result.duplicate);
    }
    tracing::info!(
        endpoint = endpoint_id,
        accepted,
        "reconciliation pulled missed events"
    );
    Ok(())
}
