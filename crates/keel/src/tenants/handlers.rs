//! The admin API for tenants and their keys. Every route needs
//! `Authorization: Bearer $ADMIN_API_KEY`. A tenant's key is returned once,
//! at creation or issue; only its hash is stored. Creating a tenant and
//! issuing a key take `Idempotency-Key` (see `ops::idempotency`).

use std::sync::Arc;

use http::StatusCode;
use serde::Deserialize;
use serde_json::json;

use super::keys;
use super::store::{CreateTenant, IssueKey, ListTenants};
use crate::app::App;
use crate::ops::idempotency;
use crate::web::auth;
use crate::web::{ApiError, ApiRequest, HandlerResult, idempotent_response, page_response};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTenantRequest {
    name: String,
    slug: String,
}

/// `GET` and `POST` share `/api/tenants`.
pub async fn tenants(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    if request.method == http::Method::POST {
        create(app, request).await
    } else {
        list(app, request).await
    }
}

/// `POST /api/tenants` `{"name","slug"}`: the tenant and its first key.
async fn create(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    auth::require_admin(&app, &request)?;
    let body: CreateTenantRequest = request.json()?;
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::invalid_field(
            "name",
            "must be 1 to 200 characters",
        ));
    }
    if !valid_slug(&body.slug) {
        return Err(ApiError::invalid_field(
            "slug",
            "must be 1 to 63 lowercase letters, digits or inner hyphens (e.g. joes-diner)",
        ));
    }
    let idempotency_key = request.idempotency_key()?;
    let key = keys::issue_key();
    let idempotency = idempotency::claim(idempotency_key.as_ref(), &app.config, &key.key)?;
    let created = app
        .db
        .run(&CreateTenant {
            name,
            slug: &body.slug,
            key_hash: &key.hash,
            key_prefix: &key.prefix,
            audit: &request.audit("admin"),
            idempotency,
        })
        .await?
        .resolve(&app.config, key.key)?;
    Ok(idempotent_response(
        StatusCode::CREATED,
        &json!({"tenant": created.result.tenant, "api_key": created.credential}),
        created.replayed,
    ))
}

/// Slugs appear in URLs: lowercase letters, digits and inner hyphens, 1 to 63.
fn valid_slug(slug: &str) -> bool {
    (1..=63).contains(&slug.len())
        && slug
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !slug.starts_with('-')
        && !slug.ends_with('-')
}

/// `GET /api/tenants?limit=&cursor=`.
async fn list(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    auth::require_admin(&app, &request)?;
    let page = request.page(50, 100)?;
    let tenants = app
        .db
        .run(&ListTenants {
            limit: page.limit,
            cursor: page.cursor.as_deref(),
        })
        .await?;
    page_response("tenants", tenants)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct IssueKeyRequest {
    #[serde(default)]
    revoke_existing: bool,
}

/// `POST /api/tenants/{slug}/keys` `{"revoke_existing": true}`: a new key,
/// optionally revoking every other key of the tenant in the same transaction
/// (rotation after a leak).
pub async fn issue_key(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    auth::require_admin(&app, &request)?;
    let body: IssueKeyRequest = if request.body.is_empty() {
        IssueKeyRequest::default()
    } else {
        request.json()?
    };
    let slug = request.param("slug");
    if !valid_slug(slug) {
        return Err(ApiError::not_found(format!(
            "no tenant with slug \"{slug}\""
        )));
    }
    let idempotency_key = request.idempotency_key()?;
    let key = keys::issue_key();
    let idempotency = idempotency::claim(idempotency_key.as_ref(), &app.config, &key.key)?;
    let issued = app
        .db
        .run(&IssueKey {
            slug,
            key_hash: &key.hash,
            key_prefix: &key.prefix,
            revoke_existing: body.revoke_existing,
            audit: &request.audit("admin"),
            idempotency,
        })
        .await?
        .resolve(&app.config, key.key)?;
    let (record, api_key) = (issued.result, issued.credential);
    Ok(idempotent_response(
        StatusCode::CREATED,
        &json!({
            "tenant": record.tenant,
            "api_key": api_key,
            "key_id": record.key_id,
            "revoked": record.revoked,
        }),
        issued.replayed,
    ))
}
