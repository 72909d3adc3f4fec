//! Intake of one delivery: verified against the endpoint's secrets, then
//! stored with its processing enqueued in one transaction (before the 200),
//! or refused having stored nothing.

use http::HeaderMap;

use super::presets::{self, Delivery, Verification, Verified};
use super::store::{AcceptWebhook, Accepted, CountWebhookRejection};
use super::{WebhookError, endpoints};
use crate::ops::ratelimit::{GateError, RateGate};
use crate::platform::config::Config;
use crate::platform::db::Db;

/// A delivery as it arrived at `POST /api/webhooks/{endpoint_id}`.
pub struct Arrival<'a> {
    pub endpoint_id: &'a str,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
    /// The request's query string, if any.
    pub query: Option<&'a str>,
}

/// A delivery stored (or found to be a duplicate), with what it said.
pub struct Received {
    /// The endpoint's tenant, whose knowledge answers a sender that waits.
    pub tenant_id: String,
    pub verification: Verification,
    pub event: Verified,
    pub accepted: Accepted,
}

/// Verifies and stores a delivery. The endpoint lookup goes through `gate`,
/// which charges the caller's quota.
pub async fn receive(
    db: &Db,
    config: &Config,
    gate: &RateGate,
    arrival: &Arrival<'_>,
) -> Result<Received, WebhookError> {
    let endpoint = endpoints::load(db, gate, arrival.endpoint_id).await?;
    let verified = endpoints::secrets(config, &endpoint).and_then(|secrets| {
        let public_url = public_url(config, arrival);
        let delivery = Delivery {
            headers: arrival.headers,
            body: arrival.body,
            query: arrival.query,
            public_url: public_url.as_deref(),
            now: time::OffsetDateTime::now_utc().unix_timestamp(),
        };
        Ok(presets::verify(endpoint.verification, &secrets, &delivery)?)
    });
    match verified {
        Ok(event) => {
            let accepted = db
                .run(&AcceptWebhook {
                    endpoint_id: &endpoint.id,
                    webhook_id: &event.webhook_id,
                    event_type: &event.event_type,
                    payload: &event.payload,
                    event_at: event.event_at.as_deref(),
                    max_webhook_bytes_per_day: config.tasks.quotas.webhook_bytes_per_day,
                    max_queued_tasks: config.tasks.quotas.queued_tasks,
                })
                .await
                .map_err(GateError::from)?;
            match accepted.refused {
                Some(refused) => Err(WebhookError::OverQuota(refused)),
                None => Ok(Received {
                    tenant_id: endpoint.tenant_id,
                    verification: endpoint.verification,
                    event,
                    accepted,
                }),
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

/// The URL a sender that signs it (Twilio) was given:
/// `PUBLIC_BASE_URL/api/webhooks/{id}` and the query it added. Behind
/// Vercel the request arrives rewritten to `/api/webhook?id={id}&…`, so the
/// path is rebuilt and the rewrite's `id` left out.
fn public_url(config: &Config, arrival: &Arrival) -> Option<String> {
    let base = config.public_base_url.as_ref()?;
    let mut url = format!(
        "{}/api/webhooks/{}",
        base.as_str().trim_end_matches('/'),
        arrival.endpoint_id
    );
    let rewrite = format!("id={}", arrival.endpoint_id);
    let query: Vec<&str> = arrival
        .query
        .unwrap_or_default()
        .split('&')
        .filter(|part| !part.is_empty() && *part != rewrite)
        .collect();
    if !query.is_empty() {
        url.push('?');
        url.push_str(&query.join("&"));
    }
    Some(url)
}
