//! Who may call what: the admin key, the cron secret, and tenant API keys.
//!
//! Shared secrets (admin, cron) are compared in constant time. Tenant keys are
//! `keel_` followed by 32 random bytes (base64url); only their SHA-256 is
//! stored, and the database resolves a key hash to its tenant inside every
//! tenant function (see migrations/0002), so authenticating costs no extra
//! round trip and a lookup by hash reveals nothing about the key through timing.

use std::sync::Arc;

use base64::Engine as _;
use rand::RngCore as _;
use secrecy::SecretString;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::app::App;
use crate::config::secret_matches;
use crate::db::Db;
use crate::error::ApiError;
use crate::http::ApiRequest;
use crate::ratelimit::RateGate;

const KEY_PREFIX: &str = "keel_";
/// `keel_` + 43 base64url characters (32 bytes).
const KEY_LENGTH: usize = KEY_PREFIX.len() + 43;

/// A freshly issued tenant key: shown to the caller once, stored as a hash.
pub struct IssuedKey {
    pub key: String,
    pub hash: String,
    /// Enough of the key to tell keys apart in listings, not enough to use it.
    pub prefix: String,
}

pub fn issue_key() -> IssuedKey {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let key = format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    IssuedKey {
        hash: hash_key(&key),
        prefix: key[..KEY_PREFIX.len() + 6].to_owned(),
        key,
    }
}

pub fn hash_key(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The hash of the caller's tenant key. A missing or malformed key is refused
/// here without touching the database; whether a well-formed key is valid is
/// decided by the database function the handler calls.
pub fn tenant_key_hash(request: &ApiRequest) -> Result<String, ApiError> {
    match request.bearer_token() {
        Some(key) if key.len() == KEY_LENGTH && key.starts_with(KEY_PREFIX) => Ok(hash_key(key)),
        _ => Err(ApiError::unauthorized()),
    }
}

/// The audit actor for a tenant request: the key's public prefix, never the key.
pub fn tenant_actor(request: &ApiRequest) -> String {
    match request.bearer_token() {
        Some(key) if key.len() == KEY_LENGTH && key.starts_with(KEY_PREFIX) => {
            format!("tenant-key:{}", &key[..KEY_PREFIX.len() + 6])
        }
        _ => "tenant".to_owned(),
    }
}

/// Whose data a database call acts on. HTTP handlers only ever build `Key`
/// from the caller's credential (with [`tenant`]); `Trusted` carries a tenant
/// id read from the database itself (a task's owner), never one a client
/// supplied.
#[derive(Debug, Clone)]
pub enum TenantRef {
    /// A caller's key hash, and the request's quota its first call charges.
    Key {
        hash: String,
        gate: Arc<RateGate>,
    },
    Trusted(String),
}

/// The tenant a request acts for, by its key (see [`tenant_key_hash`]).
pub fn tenant(request: &ApiRequest) -> Result<TenantRef, ApiError> {
    Ok(TenantRef::Key {
        hash: tenant_key_hash(request)?,
        gate: request.rate_gate.clone(),
    })
}

impl TenantRef {
    /// `args` with the tenant reference the SQL functions resolve.
    pub fn with(&self, mut args: serde_json::Value) -> serde_json::Value {
        match self {
            TenantRef::Key { hash, .. } => args["key_hash"] = hash.clone().into(),
            TenantRef::Trusted(id) => args["tenant_id"] = id.clone().into(),
        }
        args
    }

    /// Calls `public.<function>` for this tenant. A key's first call takes
    /// the request from the tenant's quota in the same round trip.
    pub async fn call<R: DeserializeOwned>(
        &self,
        db: &Db,
        function: &'static str,
        args: serde_json::Value,
    ) -> Result<R, ApiError> {
        let args = self.with(args);
        match self {
            TenantRef::Key { gate, .. } => Ok(gate.call(db, function, args).await?),
            TenantRef::Trusted(_) => Ok(db.call(function, &args).await?),
        }
    }
}

/// Admin routes: `Authorization: Bearer $ADMIN_API_KEY`. Without a
/// configured key, admin routes are closed.
pub fn require_admin(app: &App, request: &ApiRequest) -> Result<(), ApiError> {
    require_secret(app.config.admin_api_key.as_ref(), request)
}

/// Cron routes: `Authorization: Bearer $CRON_SECRET`, as Vercel Cron sends it.
pub fn require_cron(app: &App, request: &ApiRequest) -> Result<(), ApiError> {
    require_secret(app.config.cron_secret.as_ref(), request)
}

fn require_secret(expected: Option<&SecretString>, request: &ApiRequest) -> Result<(), ApiError> {
    match (expected, request.bearer_token()) {
        (Some(expected), Some(presented)) if secret_matches(presented, expected) => Ok(()),
        _ => Err(ApiError::unauthorized()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_keys_are_unique_well_formed_and_stored_only_as_hashes() {
        let first = issue_key();
        let second = issue_key();
        assert_ne!(first.key, second.key);
        assert_eq!(first.key.len(), KEY_LENGTH);
        assert!(first.key.starts_with("keel_"));
        assert_eq!(first.hash, hash_key(&first.key));
        assert_eq!(first.hash.len(), 64);
        assert!(!first.hash.contains(&first.key[5..]));
        assert!(first.key.starts_with(&first.prefix));
    }
}
