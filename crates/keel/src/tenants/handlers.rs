//! The admin API for tenants and their keys, and a tenant's own publishable
//! keys. Admin routes need `Authorization: Bearer $ADMIN_API_KEY`; the
//! publishable-key routes a tenant key. A key is returned once, at creation
//! or issue; only its hash is stored. Creating a tenant and issuing a key
//! take `Idempotency-Key` (see `ops::idempotency`).

use std::sync::Arc;

use http::StatusCode;
use serde::Deserialize;
use serde_json::json;

use super::keys;
use super::publishable::{self, MAX_ACTIVE_KEYS, MAX_FILTER_BYTES, MAX_ORIGINS, MAX_PER_MINUTE};
use super::store::{
    CreatePublishableKey, CreateTenant, IssueKey, ListPublishableKeys, ListTenants,
    RevokePublishableKey,
};
use crate::app::App;
use crate::ops::idempotency;
use crate::web::auth;
use crate::web::{
    ApiError, ApiRequest, HandlerResult, idempotent_response, json_of, json_response, page_response,
};

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreatePublishableKeyRequest {
    allowed_origins: Vec<String>,
    #[serde(default)]
    filter: Option<serde_json::Value>,
    #[serde(default = "default_per_minute")]
    per_minute: u32,
    #[serde(default = "default_per_visitor_per_minute")]
    per_visitor_per_minute: u32,
}

fn default_per_minute() -> u32 {
    publishable::DEFAULT_PER_MINUTE
}

fn default_per_visitor_per_minute() -> u32 {
    publishable::DEFAULT_PER_VISITOR_PER_MINUTE
}

/// `GET` and `POST` share `/api/publishable-keys`.
pub async fn publishable_keys(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    if request.method == http::Method::POST {
        create_publishable_key(app, request).await
    } else {
        let tenant = auth::tenant(&request)?;
        let keys = tenant.run(&app.db, &ListPublishableKeys {}).await?;
        json_of(
            StatusCode::OK,
            &json!({"publishable_keys": keys.publishable_keys}),
        )
    }
}

/// `POST /api/publishable-keys` `{"allowed_origins", "filter"?, "per_minute"?,
/// "per_visitor_per_minute"?}`: a `keel_pk_` key for the tenant's chat
/// widget, shown once.
async fn create_publishable_key(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    let tenant = auth::tenant(&request)?;
    let body: CreatePublishableKeyRequest = request.json()?;
    if body.allowed_origins.is_empty() || body.allowed_origins.len() > MAX_ORIGINS {
        return Err(ApiError::invalid_field(
            "allowed_origins",
            &format!("must list 1 to {MAX_ORIGINS} origins"),
        ));
    }
    let mut origins = Vec::with_capacity(body.allowed_origins.len());
    for (index, raw) in body.allowed_origins.iter().enumerate() {
        let origin = publishable::normalise_origin(raw).ok_or_else(|| {
            ApiError::invalid_field(
                &format!("allowed_origins[{index}]"),
                "must be an origin, scheme://host[:port], such as https://shop.example.com \
                 (no path, no trailing slash, no wildcard)",
            )
        })?;
        if !origins.contains(&origin) {
            origins.push(origin);
        }
    }
    if let Some(filter) = &body.filter {
        let metadata_only = filter.as_object().is_some_and(|object| {
            object.len() == 1 && object.get("metadata").is_some_and(|m| m.is_object())
        });
        if !metadata_only || filter.to_string().len() > MAX_FILTER_BYTES {
            return Err(ApiError::invalid_field(
                "filter",
                &format!(
                    "must be /api/search's filter, {{\"metadata\": {{...}}}}, of at most {MAX_FILTER_BYTES} bytes"
                ),
            ));
        }
    }
    for (field, value) in [
        ("per_minute", body.per_minute),
        ("per_visitor_per_minute", body.per_visitor_per_minute),
    ] {
        if !(1..=MAX_PER_MINUTE).contains(&value) {
            return Err(ApiError::invalid_field(
                field,
                &format!("must be between 1 and {MAX_PER_MINUTE} requests per minute"),
            ));
        }
    }
    let key = publishable::issue();
    let created = tenant
        .run(
            &app.db,
            &CreatePublishableKey {
                new_key_hash: &key.hash,
                prefix: &key.prefix,
                allowed_origins: &origins,
                filter: body.filter.as_ref(),
                per_minute: body.per_minute,
                per_visitor_per_minute: body.per_visitor_per_minute,
                max_active: MAX_ACTIVE_KEYS,
                audit: &request.audit(&auth::tenant_actor(&request)),
            },
        )
        .await?;
    let mut response = serde_json::to_value(&created).map_err(|e| ApiError::internal(e.into()))?;
    response["key"] = json!(key.key);
    Ok(json_response(StatusCode::CREATED, &response))
}

/// `DELETE /api/publishable-keys/{id}`: the key stops working at once.
pub async fn revoke_publishable_key(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    let tenant = auth::tenant(&request)?;
    let revoked = tenant
        .run(
            &app.db,
            &RevokePublishableKey {
                id: request.param("id"),
                audit: &request.audit(&auth::tenant_actor(&request)),
            },
        )
        .await?;
    json_of(StatusCode::OK, &revoked)
}
