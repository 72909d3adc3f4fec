//! The admin API for tenants (a restaurant, a shop, a clinic) and their API
//! keys. Every route needs `Authorization: Bearer $ADMIN_API_KEY`. A tenant's
//! key is returned once, at creation or issue; only its hash is stored.

use std::sync::Arc;

use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::app::App;
use crate::auth;
use crate::error::ApiError;
use crate::http::{ApiRequest, HandlerResult, encode_cursor, json_response};

#[derive(Debug, Serialize, Deserialize)]
pub struct Tenant {
    pub id: String,
    pub slug: String,
    pub name: String,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active_keys: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTenantRequest {
    name: String,
    slug: String,
}

#[derive(Deserialize)]
struct CreatedTenant {
    tenant: Tenant,
}

pub async fn create(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    auth::require_admin(&app, &request)?;
    let body: CreateTenantRequest = request.json()?;
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::invalid_field(
            "name",
            "must be 1 to 200 characters",
        ));
    }
    validate_slug(&body.slug)?;
    let key = auth::issue_key();
    let created: CreatedTenant = app
        .db
        .call(
            "keel_create_tenant",
            &json!({
                "name": name,
                "slug": body.slug,
                "key_hash": key.hash,
                "key_prefix": key.prefix,
                "audit": request.audit("admin"),
            }),
        )
        .await?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"tenant": created.tenant, "api_key": key.key}),
    ))
}

/// Slugs appear in URLs: lowercase letters, digits and inner hyphens, 1 to 63.
fn validate_slug(slug: &str) -> Result<(), ApiError> {
    let valid = (1..=63).contains(&slug.len())
        && slug
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !slug.starts_with('-')
        && !slug.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err(ApiError::invalid_field(
            "slug",
            "must be 1 to 63 lowercase letters, digits or inner hyphens (e.g. joes-diner)",
        ))
    }
}

#[derive(Deserialize)]
struct TenantPage {
    tenants: Vec<Tenant>,
    next_cursor: Option<String>,
}

pub async fn list(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    auth::require_admin(&app, &request)?;
    let page = request.page(50, 100)?;
    let result: TenantPage = app
        .db
        .call(
            "keel_list_tenants",
            &json!({"limit": page.limit, "cursor": page.cursor}),
        )
        .await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "tenants": result.tenants,
            "next_cursor": result.next_cursor.as_deref().map(encode_cursor),
        }),
    ))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct IssueKeyRequest {
    #[serde(default)]
    revoke_existing: bool,
}

#[derive(Deserialize)]
struct IssuedKey {
    tenant: Tenant,
    key_id: String,
    revoked: u32,
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
    validate_slug(slug)
        .map_err(|_| ApiError::not_found(format!("no tenant with slug \"{slug}\"")))?;
    let key = auth::issue_key();
    let issued: IssuedKey = app
        .db
        .call(
            "keel_issue_key",
            &json!({
                "slug": slug,
                "key_hash": key.hash,
                "key_prefix": key.prefix,
                "revoke_existing": body.revoke_existing,
                "audit": request.audit("admin"),
            }),
        )
        .await?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({
            "tenant": issued.tenant,
            "api_key": key.key,
            "key_id": issued.key_id,
            "revoked": issued.revoked,
        }),
    ))
}
