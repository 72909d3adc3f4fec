//! The tenant SQL functions Keel calls (migrations/0002, 0014, 0015), one typed
//! binding each.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ops::audit::Audit;
use crate::ops::idempotency::{Claim, Idempotent};
use crate::platform::db::{Page, SqlFunction};

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Tenant {
    pub id: String,
    pub slug: String,
    pub name: String,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active_keys: Option<u32>,
}

/// `keel_create_tenant`: the tenant and its first key, audited.
#[derive(Serialize)]
pub struct CreateTenant<'a> {
    pub name: &'a str,
    pub slug: &'a str,
    pub key_hash: &'a str,
    pub key_prefix: &'a str,
    pub audit: &'a Audit,
    /// With `Idempotency-Key`: the claim, holding the sealed `api_key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency: Option<Claim>,
}

#[derive(Debug, Deserialize)]
pub struct CreatedTenant {
    pub tenant: Tenant,
}

impl SqlFunction for CreateTenant<'_> {
    const NAME: &'static str = "keel_create_tenant";
    type Output = Idempotent<CreatedTenant>;
}

/// `keel_list_tenants`: tenants by slug, with their active key counts.
#[derive(Serialize)]
pub struct ListTenants<'a> {
    pub limit: u32,
    pub cursor: Option<&'a str>,
}

impl SqlFunction for ListTenants<'_> {
    const NAME: &'static str = "keel_list_tenants";
    type Output = Page<Tenant>;
}

/// `keel_issue_key`: a new key for the tenant `slug`, optionally revoking
/// every other one in the same transaction.
#[derive(Serialize)]
pub struct IssueKey<'a> {
    pub slug: &'a str,
    pub key_hash: &'a str,
    pub key_prefix: &'a str,
    pub revoke_existing: bool,
    pub audit: &'a Audit,
    /// With `Idempotency-Key`: the claim, holding the sealed `api_key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency: Option<Claim>,
}

#[derive(Debug, Deserialize)]
pub struct IssuedKeyRecord {
    pub tenant: Tenant,
    pub key_id: String,
    pub revoked: u32,
}

impl SqlFunction for IssueKey<'_> {
    const NAME: &'static str = "keel_issue_key";
    type Output = Idempotent<IssuedKeyRecord>;
}

/// A publishable key as listed (never the key itself).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PublishableKey {
    pub id: String,
    pub prefix: String,
    pub allowed_origins: Vec<String>,
    /// `/api/search`'s filter shape, `{"metadata": {...}}`, ANDed with
    /// every chat request's own.
    #[schema(value_type = Option<Object>)]
    pub filter: Option<serde_json::Value>,
    pub per_minute: u32,
    pub per_visitor_per_minute: u32,
    pub created_at: String,
}

/// `keel_create_publishable_key`: a key for the caller's tenant, audited;
/// refused (409) past `max_active` live keys.
#[derive(Serialize)]
pub struct CreatePublishableKey<'a> {
    pub new_key_hash: &'a str,
    pub prefix: &'a str,
    pub allowed_origins: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter: Option<&'a serde_json::Value>,
    pub per_minute: u32,
    pub per_visitor_per_minute: u32,
    pub max_active: u32,
    pub audit: &'a Audit,
    /// With `Idempotency-Key`: the claim, holding the sealed key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency: Option<Claim>,
}

impl SqlFunction for CreatePublishableKey<'_> {
    const NAME: &'static str = "keel_create_publishable_key";
    type Output = Idempotent<PublishableKey>;
}

/// `keel_list_publishable_keys`: the tenant's live keys, newest first.
#[derive(Serialize)]
pub struct ListPublishableKeys {}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PublishableKeys {
    pub publishable_keys: Vec<PublishableKey>,
}

impl SqlFunction for ListPublishableKeys {
    const NAME: &'static str = "keel_list_publishable_keys";
    type Output = PublishableKeys;
}

/// `keel_revoke_publishable_key`: 404 unless a live key of the tenant.
#[derive(Serialize)]
pub struct RevokePublishableKey<'a> {
    pub id: &'a str,
    pub audit: &'a Audit,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RevokedPublishableKey {
    pub id: String,
    pub revoked_at: String,
}

impl SqlFunction for RevokePublishableKey<'_> {
    const NAME: &'static str = "keel_revoke_publishable_key";
    type Output = RevokedPublishableKey;
}
