//! Intake of one delivery: verified against the endpoint's secrets, then
//! stored with its processing enqueued in one transaction (before the 200),
//! or refused having stored nothing.

use http::HeaderMap;
use serde_json::Value;
use time::format_description::well_known::Rfc3339;

use super::signatures::Rejection;
use super::store::{AcceptWebhook, Accepted, CountWebhookRejection, EndpointRecord};
use super::{WebhookError, endpoints, signatures};
use crate::ops::ratelimit::{GateError, RateGate};
use crate::platform::config::Config;
use crate::platform::db::Db;

/// A delivery proven authentic.
struct Verified {
    webhook_id: String,
    event_type: String,
    payload: Value,
    /// The ordering key: the event's own `timestamp`, else `webhook-timestamp`.
    event_at: String,
}

/// Verifies and stores a delivery to `endpoint_id`. The endpoint lookup goes
/// through `gate`, which charges the caller's quota.
pub async fn receive(
    db: &Db,
    config: &Config,
    gate: &RateGate,
    endpoint_id: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Accepted, WebhookError> {
    let endpoint = endpoints::load(db, gate, endpoint_id).await?;
    match verify(config, &endpoint, headers, body) {
        Ok(event) => {
            let accepted = db
                .run(&AcceptWebhook {
                    endpoint_id: &endpoint.id,
                    webhook_id: &event.webhook_id,
                    event_type: &event.event_type,
                    payload: &event.payload,
                    event_at: Some(&event.event_at),
                    max_webhook_bytes_per_day: config.tasks.quotas.webhook_bytes_per_day,
                    max_queued_tasks: config.tasks.quotas.queued_tasks,
                })
                .await
                .map_err(GateError::from)?;
            match accepted.refused {
                Some(refused) => Err(WebhookError::OverQuota(refused)),
                None => Ok(accepted),
            }
        }
        Err(error) => {
            // Counted for metrics; the delivery itself is not stored.
            if let Err(count_error) = db.run(&CountWebhookRejection {}).await {
                tracing::warn!(error = %count_error, "could not count a webhook rejection");
            }
            Err(error)
        }
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a str, Rejection> {
    let value = headers.get(name).ok_or_else(|| {
        Rejection::Malformed("missing_header", format!("the {name} header is required"))
    })?;
    value.to_str().map_err(|_| {
        Rejection::Malformed("invalid_header", format!("the {name} header is not text"))
    })
}

/// The delivery's id, event type and JSON payload, once it is proven authentic.
fn verify(
    config: &Config,
    endpoint: &EndpointRecord,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Verified, WebhookError> {
    let webhook_id = header(headers, "webhook-id")?.trim();
    if webhook_id.is_empty() || webhook_id.len() > 256 {
        return Err(Rejection::Malformed(
            "invalid_header",
            "webhook-id must be 1 to 256 characters".to_owned(),
        )
        .into());
    }
    let timestamp = header(headers, "webhook-timestamp")?;
    let signatures = header(headers, "webhook-signature")?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let secrets = endpoints::secrets(config, endpoint)?;
    signatures::verify(&secrets, webhook_id, timestamp, signatures, body, now)?;
    let sent_at = timestamp
        .trim()
        .parse::<i64>()
        .ok()
        .and_then(|seconds| time::OffsetDateTime::from_unix_timestamp(seconds).ok());
    let payload: Value = serde_json::from_slice(body).map_err(|e| {
        Rejection::Malformed("invalid_payload", format!("the body is not JSON: {e}"))
    })?;
    let event_type = payload
        .get("type")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty() && t.len() <= 200)
        .ok_or_else(|| {
            Rejection::Malformed(
                "invalid_payload",
                "the body must be a JSON object with a string `type`".to_owned(),
            )
        })?
        .to_owned();
    let event_at = event_time(&payload)
        .or(sent_at)
        .and_then(|at| at.format(&Rfc3339).ok())
        .ok_or_else(|| {
            Rejection::Malformed(
                "invalid_header",
                "webhook-timestamp must be Unix seconds".to_owned(),
            )
        })?;
    Ok(Verified {
        webhook_id: webhook_id.to_owned(),
        event_type,
        payload,
        event_at,
    })
}

/// An event's own time, its `timestamp`: RFC 3339 or Unix seconds. Events
/// are applied in this order (see `processing`); a sender whose events carry
/// no timestamp is ordered by when it signed each delivery.
pub fn event_time(event: &Value) -> Option<time::OffsetDateTime> {
    match event.get("timestamp")? {
        Value::String(text) => time::OffsetDateTime::parse(text, &Rfc3339).ok(),
        Value::Number(number) => time::OffsetDateTime::from_unix_timestamp(number.as_i64()?).ok(),
        _ => None,
    }
}
