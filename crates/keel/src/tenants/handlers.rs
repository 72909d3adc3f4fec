//! The admin API for tenants and their keys, and a tenant's own publishable
//! keys. Admin routes need `Authorization: Bearer $ADMIN_API_KEY`; the
//! publishable-key routes a tenant key. A key is returned once, at creation
//! or issue; only its hash is stored. Creating a tenant and issuing a key
//! take `Idempotency-Key` (see `ops::idempotency`).

use std::sync::Arc;

use http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::keys;
use super::publishable::{self, MAX_ACTIVE_KEYS, MAX_FILTER_BYTES, MAX_ORIGINS, MAX_PER_MINUTE};
use super::store::{
    CreatePublishableKey, CreateTenant, IssueKey, ListPublishableKeys, ListTenants, PublishableKey,
    PublishableKeys, RevokePublishableKey, RevokedPublishableKey, Tenant,
};
use crate::app::App;
use crate::ops::idempotency;
use crate::web::auth;
use crate::web::error::ErrorBody;
use crate::web::{ApiError, ApiRequest, HandlerResult, idempotent_response, json_of, list_page};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenantRequest {
    /// 1 to 200 characters.
    name: String,
    /// 1 to 63 lowercase letters, digits or inner hyphens (e.g. `joes-diner`).
    #[schema(pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    slug: String,
}

/// A created tenant and its first key, shown once.
#[derive(Serialize, ToSchema)]
pub struct CreatedTenant {
    tenant: Tenant,
    api_key: String,
}

list_page!(TenantList, tenants, Tenant);

/// A key issued to a tenant, shown once.
#[derive(Serialize, ToSchema)]
pub struct IssuedKey {
    tenant: Tenant,
    api_key: String,
    key_id: String,
    /// How many of the tenant's other keys were revoked.
    revoked: u32,
}

/// A publishable key as created: the key itself is shown this once.
#[derive(Serialize, ToSchema)]
pub struct CreatedPublishableKey {
    #[serde(flatten)]
    publishable_key: PublishableKey,
    key: String,
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
#[utoipa::path(
    post,
    path = "/api/tenants",
    tag = "tenants",
    security(("admin_key" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "1 to 255 printable ASCII characters: a retry with the same key and body replays the first response")),
    request_body = CreateTenantRequest,
    responses(
        (status = 201, description = "The tenant and its first key (shown once)", body = CreatedTenant),
        (status = 400, description = "`invalid_field`: `name` or `slug`", body = ErrorBody),
        (status = 409, description = "`conflict`: the slug is taken; `idempotency_key_reused`", body = ErrorBody),
        (status = 503, description = "`unavailable`: `Idempotency-Key` without `ENCRYPTION_KEY`", body = ErrorBody),
    )
)]
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
    idempotent_response(
        StatusCode::CREATED,
        &CreatedTenant {
            tenant: created.result.tenant,
            api_key: created.credential,
        },
        created.replayed,
    )
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
#[utoipa::path(
    get,
    path = "/api/tenants",
    tag = "tenants",
    security(("admin_key" = [])),
    params(
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "Default 50"),
        ("cursor" = Option<String>, Query, description = "The `next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "Tenants by slug, with their active key counts", body = TenantList),
        (status = 400, description = "`invalid_field`: `limit` or `cursor`", body = ErrorBody),
    )
)]
pub async fn list(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    auth::require_admin(&app, &request)?;
    let page = request.page(50, 100)?;
    let tenants = app
        .db
        .run(&ListTenants {
            limit: page.limit,
            cursor: page.cursor.as_deref(),
        })
        .await?;
    json_of(StatusCode::OK, &TenantList::from(tenants))
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IssueKeyRequest {
    /// Revoke every other key of the tenant in the same transaction.
    #[serde(default)]
    revoke_existing: bool,
}

/// `POST /api/tenants/{slug}/keys` `{"revoke_existing": true}`: a new key,
/// optionally revoking every other key of the tenant in the same transaction
/// (rotation after a leak).
#[utoipa::path(
    post,
    path = "/api/tenants/{slug}/keys",
    tag = "tenants",
    security(("admin_key" = [])),
    params(("slug" = String, Path, description = "The tenant's slug"), ("Idempotency-Key" = Option<String>, Header, description = "1 to 255 printable ASCII characters: a retry with the same key and body replays the first response")),
    request_body(content = Option<IssueKeyRequest>, description = "Optional"),
    responses(
        (status = 201, description = "The new key (shown once)", body = IssuedKey),
        (status = 404, description = "`not_found`: no tenant with that slug", body = ErrorBody),
        (status = 409, description = "`idempotency_key_reused`", body = ErrorBody),
        (status = 503, description = "`unavailable`: `Idempotency-Key` without `ENCRYPTION_KEY`", body = ErrorBody),
    )
)]
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
    idempotent_response(
        StatusCode::CREATED,
        &IssuedKey {
            tenant: record.tenant,
            api_key,
            key_id: record.key_id,
            revoked: record.revoked,
        },
        issued.replayed,
    )
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePublishableKeyRequest {
    /// 1 to 20 origins, `scheme://host[:port]`, such as `https://shop.example.com`.
    #[schema(min_items = 1, max_items = 20)]
    allowed_origins: Vec<String>,
    /// `/api/search`'s filter, `{"metadata": {...}}`, ANDed with every chat's own.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    filter: Option<serde_json::Value>,
    /// Requests per minute for the key (default 120).
    #[serde(default = "default_per_minute")]
    #[schema(minimum = 1, maximum = 100_000)]
    per_minute: u32,
    /// Requests per minute for each visitor (default 10).
    #[serde(default = "default_per_visitor_per_minute")]
    #[schema(minimum = 1, maximum = 100_000)]
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
        list_publishable_keys(app, request).await
    }
}

/// `GET /api/publishable-keys`: the tenant's live keys, newest first.
#[utoipa::path(
    get,
    path = "/api/publishable-keys",
    tag = "publishable keys",
    security(("tenant_key" = [])),
    responses((status = 200, description = "The live keys (never the keys themselves)", body = PublishableKeys))
)]
pub async fn list_publishable_keys(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    let tenant = auth::tenant(&request)?;
    let keys = tenant.run(&app.db, &ListPublishableKeys {}).await?;
    json_of(StatusCode::OK, &keys)
}

/// `POST /api/publishable-keys` `{"allowed_origins", "filter"?, "per_minute"?,
/// "per_visitor_per_minute"?}`: a `keel_pk_` key for the tenant's chat
/// widget, shown once. Takes `Idempotency-Key`.
#[utoipa::path(
    post,
    path = "/api/publishable-keys",
    tag = "publishable keys",
    security(("tenant_key" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "1 to 255 printable ASCII characters: a retry with the same key and body replays the first response")),
    request_body = CreatePublishableKeyRequest,
    responses(
        (status = 201, description = "The key (shown once) and its settings", body = CreatedPublishableKey),
        (status = 400, description = "`invalid_field`: `allowed_origins`, `filter`, `per_minute` or `per_visitor_per_minute`", body = ErrorBody),
        (status = 409, description = "`conflict`: too many live keys; `idempotency_key_reused`", body = ErrorBody),
        (status = 503, description = "`unavailable`: `Idempotency-Key` without `ENCRYPTION_KEY`", body = ErrorBody),
    )
)]
pub async fn create_publishable_key(app: Arc<App>, request: ApiRequest) -> HandlerResult {
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
    let idempotency_key = request.idempotency_key()?;
    let key = publishable::issue();
    let idempotency = idempotency::claim(idempotency_key.as_ref(), &app.config, &key.key)?;
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
                idempotency,
            },
        )
        .await?
        .resolve(&app.config, key.key)?;
    idempotent_response(
        StatusCode::CREATED,
        &CreatedPublishableKey {
            publishable_key: created.result,
            key: created.credential,
        },
        created.replayed,
    )
}

/// `DELETE /api/publishable-keys/{id}`: the key stops working at once.
#[utoipa::path(
    delete,
    path = "/api/publishable-keys/{id}",
    tag = "publishable keys",
    security(("tenant_key" = [])),
    params(("id" = String, Path, description = "The key's id")),
    responses(
        (status = 200, description = "Revoked", body = RevokedPublishableKey),
        (status = 404, description = "`not_found`: no live key of the tenant with that id", body = ErrorBody),
    )
)]
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
