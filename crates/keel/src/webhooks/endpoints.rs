//! Webhook endpoints: created by a tenant with a `whsec_` secret shown once
//! and stored sealed under `ENCRYPTION_KEY` (tagged with the key's id so
//! keys can rotate), and rotated with a grace period during which the
//! previous secret still verifies.

use base64::Engine as _;
use rand::RngCore as _;

use super::WebhookError;
use super::signatures::SECRET_PREFIX;
use super::store::{
    CreateWebhookEndpoint, CreatedEndpoint, EndpointCreation, EndpointRecord, RotateWebhookSecret,
    RotatedSecret, WebhookEndpoint,
};
use crate::ops::audit::Audit;
use crate::ops::idempotency::{self, IdempotencyKey, Outcome};
use crate::ops::ratelimit::RateGate;
use crate::platform::config::Config;
use crate::platform::crypto::{self, EncryptionKey};
use crate::platform::db::Db;
use crate::tenants::TenantRef;

pub const DEFAULT_ROTATION_GRACE_SECONDS: u32 = 24 * 3600;
pub const MAX_ROTATION_GRACE_SECONDS: u32 = 7 * 24 * 3600;

/// A new endpoint of `tenant` and its secret, shown to the caller once; one
/// with a `pull_url` is refused past `TENANT_MAX_PULL_ENDPOINTS`. With an
/// idempotency key already used for the same request, the endpoint and
/// secret that request made.
pub async fn create(
    db: &Db,
    config: &Config,
    tenant: &TenantRef,
    source: &str,
    pull_url: Option<&str>,
    audit: &Audit,
    idempotency_key: Option<&IdempotencyKey>,
) -> Result<Outcome<CreatedEndpoint>, WebhookError> {
    let secret = new_secret();
    let sealed = crypto::seal(encryption_key(config)?, secret.as_bytes());
    let idempotency = idempotency::claim(idempotency_key, config, &secret)?;
    let outcome = tenant
        .run(
            db,
            &CreateWebhookEndpoint {
                source,
                pull_url,
                secret_ciphertext: &sealed.ciphertext,
                key_id: &sealed.key_id,
                max_pull_endpoints: config.tasks.quotas.pull_endpoints,
                audit,
                idempotency,
            },
        )
        .await?
        .resolve(config, secret)?;
    match outcome.result {
        EndpointCreation::Created(created) => Ok(Outcome {
            result: created,
            credential: outcome.credential,
            replayed: outcome.replayed,
        }),
        EndpointCreation::Refused { refused } => Err(WebhookError::OverQuota(refused)),
    }
}

/// A new secret for the tenant's endpoint `id`; the previous one verifies
/// for `grace_seconds` more. With an idempotency key already used for the
/// same request, that rotation's secret (and no second rotation).
pub async fn rotate(
    db: &Db,
    config: &Config,
    tenant: &TenantRef,
    id: &str,
    grace_seconds: u32,
    audit: &Audit,
    idempotency_key: Option<&IdempotencyKey>,
) -> Result<Outcome<RotatedSecret>, WebhookError> {
    check_id(id)?;
    let secret = new_secret();
    let sealed = crypto::seal(encryption_key(config)?, secret.as_bytes());
    let idempotency = idempotency::claim(idempotency_key, config, &secret)?;
    let rotated = tenant
        .run(
            db,
            &RotateWebhookSecret {
                id,
                secret_ciphertext: &sealed.ciphertext,
                key_id: &sealed.key_id,
                grace_seconds,
                audit,
                idempotency,
            },
        )
        .await?
        .resolve(config, secret)?;
    Ok(rotated)
}

/// Endpoint ids are UUIDs: anything else names no endpoint, without asking
/// the database.
pub fn check_id(id: &str) -> Result<(), WebhookError> {
    uuid::Uuid::parse_str(id)
        .map(|_| ())
        .map_err(|_| WebhookError::UnknownEndpoint)
}

/// The endpoint `id`; through `gate`, so intake is charged to the caller.
pub async fn load(db: &Db, gate: &RateGate, id: &str) -> Result<EndpointRecord, WebhookError> {
    check_id(id)?;
    Ok(gate.run(db, &WebhookEndpoint { id }).await?)
}

/// The secrets a delivery may be signed with: the current one, then the
/// previous one during its grace period.
pub fn secrets(config: &Config, endpoint: &EndpointRecord) -> Result<Vec<String>, WebhookError> {
    let previous = endpoint
        .previous_key_id
        .as_deref()
        .zip(endpoint.previous_secret_ciphertext.as_deref());
    std::iter::once((
        endpoint.key_id.as_str(),
        endpoint.secret_ciphertext.as_str(),
    ))
    .chain(previous)
    .map(|(key_id, ciphertext)| {
        crypto::open(config.decryption_keys(), key_id, ciphertext)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .map_err(|source| WebhookError::Secret {
                endpoint: endpoint.id.clone(),
                source,
            })
    })
    .collect()
}

fn encryption_key(config: &Config) -> Result<&EncryptionKey, WebhookError> {
    config
        .encryption_key
        .as_deref()
        .ok_or(WebhookError::NoEncryptionKey)
}

/// A Standard Webhooks secret: `whsec_` + base64 of 24 random bytes.
fn new_secret() -> String {
    let mut raw = [0u8; 24];
    rand::rng().fill_bytes(&mut raw);
    format!(
        "{SECRET_PREFIX}{}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}
