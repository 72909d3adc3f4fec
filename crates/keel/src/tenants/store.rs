//! The tenant SQL functions Keel calls (migrations/0002, 0014), one typed
//! binding each.

use serde::{Deserialize, Serialize};

use crate::ops::audit::Audit;
use crate::ops::idempotency::{Claim, Idempotent};
use crate::platform::db::{Page, SqlFunction};

#[derive(Debug, Serialize, Deserialize)]
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
