//! The webhook routes: `POST /api/webhooks/endpoints`, `POST
//! /api/webhooks/endpoints/{id}/secret`, `GET /api/webhooks/deliveries` and
//! intake at `POST /api/webhooks/{id}`.

use std::sync::Arc;

use http::StatusCode;
use serde::Deserialize;
use serde_json::json;
use url::Url;

use super::endpoints::{self, DEFAULT_ROTATION_GRACE_SECONDS, MAX_ROTATION_GRACE_SECONDS};
use super::intake;
use super::store::ListWebhookDeliveries;
use crate::app::App;
use crate::web::auth;
use crate::web::{
    ApiError, ApiRequest, HandlerResult, idempotent_response, json_response, page_response,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateEndpoint {
    source: String,
    #[serde(default)]
    pull_url: Option<String>,
}

/// `POST /api/webhooks/endpoints` `{"source","pull_url"}`.
pub async fn create_endpoint(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    let tenant = auth::tenant(&request)?;
    let body: CreateEndpoint = request.json()?;
    let source_ok = (1..=64).contains(&body.source.len())
        && body
            .source
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !source_ok {
        return Err(ApiError::invalid_field(
            "source",
            "must be 1 to 64 lowercase letters, digits, - or _ (e.g. vapi, shopify)",
        ));
    }
    if let Some(pull_url) = &body.pull_url {
        let parsed = Url::parse(pull_url).ok().filter(|_| pull_url.len() <= 2048);
        let valid = parsed
            .as_ref()
            .is_some_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
        if !valid {
            return Err(ApiError::invalid_field(
                "pull_url",
                "must be an absolute http(s) URL",
            ));
        }
        // The URL is stored, listed and audited as it is: a credential in
        // it would sit there in plain text.
        if parsed.is_some_and(|u| !u.username().is_empty() || u.password().is_some()) {
            return Err(ApiError::invalid_field(
                "pull_url",
                "must not carry credentials (user:password@); serve the events at a URL that \
                 needs none, such as one with an unguessable path",
            ));
        }
    }
    let idempotency_key = request.idempotency_key()?;
    let outcome = endpoints::create(
        &app.db,
        &app.config,
        &tenant,
        &body.source,
        body.pull_url.as_deref(),
        &request.audit(&auth::tenant_actor(&request)),
        idempotency_key.as_ref(),
    )
    .await?;
    let (created, secret) = (outcome.result, outcome.credential);
    Ok(idempotent_response(
        StatusCode::CREATED,
        &json!({
            "id": created.id,
            "url": format!("/api/webhooks/{}", created.id),
            "secret": secret,
            "source": created.source,
            "pull_url": created.pull_url,
            "created_at": created.created_at,
        }),
        outcome.replayed,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateSecret {
    #[serde(default = "default_rotation_grace")]
    grace_period_seconds: u32,
}

fn default_rotation_grace() -> u32 {
    DEFAULT_ROTATION_GRACE_SECONDS
}

/// `POST /api/webhooks/endpoints/{id}/secret` `{"grace_period_seconds"}`
/// (optional body): a new signing secret, shown once.
pub async fn rotate_secret(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    let tenant = auth::tenant(&request)?;
    let id = request.param("id");
    endpoints::check_id(id)?;
    let body = if request.body.is_empty() {
        RotateSecret {
            grace_period_seconds: DEFAULT_ROTATION_GRACE_SECONDS,
        }
    } else {
        request.json()?
    };
    if body.grace_period_seconds > MAX_ROTATION_GRACE_SECONDS {
        return Err(ApiError::invalid_field(
            "grace_period_seconds",
            &format!("must be between 0 and {MAX_ROTATION_GRACE_SECONDS} (7 days)"),
        ));
    }
    let idempotency_key = request.idempotency_key()?;
    let outcome = endpoints::rotate(
        &app.db,
        &app.config,
        &tenant,
        id,
        body.grace_period_seconds,
        &request.audit(&auth::tenant_actor(&request)),
        idempotency_key.as_ref(),
    )
    .await?;
    let (rotated, secret) = (outcome.result, outcome.credential);
    Ok(idempotent_response(
        StatusCode::OK,
        &json!({
            "id": rotated.id,
            "secret": secret,
            "rotated_at": rotated.rotated_at,
            "previous_secret_expires_at": rotated.previous_secret_expires_at,
        }),
        outcome.replayed,
    ))
}

/// `POST /api/webhooks/{id}`.
pub async fn receive(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    let accepted = intake::receive(
        &app.db,
        &app.config,
        &request.rate_gate,
        request.param("id"),
        &request.headers,
        &request.body,
    )
    .await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"received": true, "duplicate": accepted.duplicate}),
    ))
}

/// Payload bytes one deliveries page may carry: responses stay under
/// Vercel's 4.5 MB cut with room for the rows' other fields.
const DELIVERIES_PAGE_MAX_BYTES: u64 = 3_500_000;

/// `GET /api/webhooks/deliveries?limit=&cursor=`, oldest first.
pub async fn list_deliveries(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    let tenant = auth::tenant(&request)?;
    let page = request.id_page(50, 200)?;
    let deliveries = tenant
        .run(
            &app.db,
            &ListWebhookDeliveries {
                limit: page.limit,
                cursor: page.cursor.as_deref(),
                max_bytes: DELIVERIES_PAGE_MAX_BYTES,
            },
        )
        .await?;
    page_response("deliveries", deliveries)
}
