//! Signed webhook intake, processing and reconciliation.
//!
//! - `POST /api/webhooks/endpoints` (tenant) registers an endpoint and shows
//!   its `whsec_` secret once; the secret is stored AES-256-GCM encrypted with
//!   `ENCRYPTION_KEY`, tagged with the key's id so keys can rotate
//!   (`ENCRYPTION_KEYS_PREVIOUS` still decrypts older secrets).
//! - `POST /api/webhooks/endpoints/{id}/secret` (tenant) rotates the secret:
//!   the new one is shown once, and the previous one keeps verifying for a
//!   grace period (default 24 h) so the sender can switch without losing
//!   deliveries.
//! - `POST /api/webhooks/{id}` verifies the Standard Webhooks signature
//!   (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256
//!   of id.timestamp.body>`, several signatures allowed during rotation) in
//!   constant time within a 5-minute tolerance, then stores the delivery and
//!   enqueues its processing in one transaction before answering 200. A
//!   redelivery of the same `webhook-id` is a duplicate and enqueues nothing;
//!   a forged, stale or malformed delivery is refused and stores nothing.
//! - The `webhook.process` task keeps a tenant's documents in sync
//!   (`document.upserted`, `document.deleted`); other events are stored for
//!   `GET /api/webhooks/deliveries`.
//! - The `webhook.reconcile` task pulls an endpoint's `pull_url` (bounded in
//!   time, size and redirects, http(s) only, public addresses only unless
//!   `ALLOW_PRIVATE_PULL_URLS` in development) and accepts the events it has
//!   not seen, the fallback for missed webhooks.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use http::StatusCode;
use rand::RngCore as _;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use url::Url;

use crate::app::App;
use crate::auth::{self, TenantRef};
use crate::error::ApiError;
use crate::http::{ApiRequest, HandlerResult, encode_cursor, json_response};
use crate::ingest::{self, DocumentInput, UpsertRequest};
use crate::ratelimit::RateGate;
use crate::tasks::{Task, TaskError};

/// Standard Webhooks' replay window.
pub const TOLERANCE_SECONDS: i64 = 5 * 60;
const SECRET_PREFIX: &str = "whsec_";
const PULL_TIMEOUT: Duration = Duration::from_secs(10);
const PULL_MAX_BYTES: usize = 1024 * 1024;
const PULL_MAX_REDIRECTS: usize = 3;
const DEFAULT_ROTATION_GRACE_SECONDS: u32 = 24 * 3600;
const MAX_ROTATION_GRACE_SECONDS: u32 = 7 * 24 * 3600;

type HmacSha256 = Hmac<Sha256>;
type EncryptionKey = secrecy::SecretBox<[u8; 32]>;

// Secrets at rest -----------------------------------------------------------------------

/// A short, non-secret name for an encryption key, stored beside each ciphertext.
pub fn key_id(key: &EncryptionKey) -> String {
    Sha256::digest([b"keel-encryption-key:".as_slice(), key.expose_secret()].concat())[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// AES-256-GCM with a random 96-bit nonce: base64(nonce ‖ ciphertext ‖ tag).
pub fn encrypt(key: &EncryptionKey, plaintext: &[u8]) -> String {
    let cipher = Aes256Gcm::new(key.expose_secret().into());
    let mut nonce = [0u8; 12];
    rand::rng().fill_bytes(&mut nonce);
    let ciphertext = cipher
        .encrypt(Nonce::from_slice(&nonce), plaintext)
        .expect("AES-GCM encryption of a short secret cannot fail");
    base64::engine::general_purpose::STANDARD.encode([nonce.as_slice(), &ciphertext].concat())
}

/// Decrypts with whichever configured key has `key_id`.
pub fn decrypt(app: &App, key_id_stored: &str, blob: &str) -> anyhow::Result<Vec<u8>> {
    let key = app
        .config
        .encryption_key
        .iter()
        .chain(&app.config.previous_encryption_keys)
        .find(|key| key_id(key) == key_id_stored)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no configured ENCRYPTION_KEY has id {key_id_stored}; add the old key to ENCRYPTION_KEYS_PREVIOUS"
            )
        })?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(blob)?;
    anyhow::ensure!(bytes.len() > 12, "ciphertext too short");
    let (nonce, ciphertext) = bytes.split_at(12);
    Aes256Gcm::new(key.expose_secret().into())
        .decrypt(Nonce::from_slice(nonce), ciphertext)
        .map_err(|_| {
            anyhow::anyhow!("the stored webhook secret does not decrypt (wrong key or tampered)")
        })
}

// Signatures ------------------------------------------------------------------------------

/// Why a delivery was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Rejection {
    /// 400: a header or the body is not what the scheme requires.
    Malformed(&'static str, String),
    /// 401: the timestamp is outside the tolerance (a replay or a broken clock).
    Stale,
    /// 401: no signature matches.
    Forged,
}

impl From<Rejection> for ApiError {
    fn from(rejection: Rejection) -> Self {
        match rejection {
            Rejection::Malformed(code, message) => ApiError::bad_request(code, message),
            Rejection::Stale => ApiError::unauthorized_because(
                "stale_timestamp",
                "webhook-timestamp is more than 5 minutes away from now",
            ),
            Rejection::Forged => ApiError::unauthorized_because(
                "invalid_signature",
                "no webhook-signature matches this endpoint's secret",
            ),
        }
    }
}

/// The signing key inside a `whsec_<base64>` secret.
fn signing_key(secret: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix(SECRET_PREFIX)?)
        .ok()
}

fn hmac_with(key: &[u8]) -> HmacSha256 {
    <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length")
}

/// `v1,<base64>` of HMAC-SHA256 over `id.timestamp.body`, as a sender computes it.
pub fn sign(secret: &str, webhook_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = hmac_with(&signing_key(secret).unwrap_or_default());
    mac.update(format!("{webhook_id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// Verifies a delivery against `secret` at time `now` (Unix seconds).
pub fn verify(
    secret: &str,
    webhook_id: &str,
    timestamp: &str,
    signatures: &str,
    body: &[u8],
    now: i64,
) -> Result<(), Rejection> {
    let timestamp: i64 = timestamp.trim().parse().map_err(|_| {
        Rejection::Malformed(
            "invalid_header",
            "webhook-timestamp must be Unix seconds".to_owned(),
        )
    })?;
    if (now - timestamp).abs() > TOLERANCE_SECONDS {
        return Err(Rejection::Stale);
    }
    let key = signing_key(secret).ok_or(Rejection::Forged)?;
    let mut signed = Vec::with_capacity(webhook_id.len() + body.len() + 16);
    signed.extend_from_slice(format!("{webhook_id}.{timestamp}.").as_bytes());
    signed.extend_from_slice(body);
    // Every listed v1 signature is tried (senders list old and new during a
    // rotation); `verify_slice` compares in constant time.
    let matched = signatures
        .split_whitespace()
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
        .any(|candidate| {
            let mut mac = hmac_with(&key);
            mac.update(&signed);
            mac.verify_slice(&candidate).is_ok()
        });
    if matched {
        Ok(())
    } else {
        Err(Rejection::Forged)
    }
}

// Endpoints --------------------------------------------------------------------------

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
        let valid = pull_url.len() <= 2048
            && Url::parse(pull_url)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
        if !valid {
            return Err(ApiError::invalid_field(
                "pull_url",
                "must be an absolute http(s) URL",
            ));
        }
    }
    let key = encryption_key(&app)?;
    let secret = new_secret();
    let created: Value = tenant
        .call(
            &app.db,
            "keel_create_webhook_endpoint",
            json!({
                "source": body.source,
                "pull_url": body.pull_url,
                "secret_ciphertext": encrypt(key, secret.as_bytes()),
                "key_id": key_id(key),
                "audit": request.audit(&auth::tenant_actor(&request)),
            }),
        )
        .await?;
    let id = created["id"].as_str().unwrap_or_default();
    Ok(json_response(
        StatusCode::CREATED,
        &json!({
            "id": id,
            "url": format!("/api/webhooks/{id}"),
            "secret": secret,
            "source": created["source"],
            "pull_url": created["pull_url"],
            "created_at": created["created_at"],
        }),
    ))
}

fn encryption_key(app: &App) -> Result<&EncryptionKey, ApiError> {
    app.config.encryption_key.as_deref().ok_or_else(|| {
        ApiError::unavailable(
            "webhook endpoints need ENCRYPTION_KEY to be configured",
            anyhow::anyhow!("ENCRYPTION_KEY is unset"),
        )
    })
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
    if uuid::Uuid::parse_str(id).is_err() {
        return Err(ApiError::not_found("no webhook endpoint with this id"));
    }
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
    let key = encryption_key(&app)?;
    let secret = new_secret();
    let rotated: Value = tenant
        .call(
            &app.db,
            "keel_rotate_webhook_secret",
            json!({
                "id": id,
                "secret_ciphertext": encrypt(key, secret.as_bytes()),
                "key_id": key_id(key),
                "grace_seconds": body.grace_period_seconds,
                "audit": request.audit(&auth::tenant_actor(&request)),
            }),
        )
        .await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "id": rotated["id"],
            "secret": secret,
            "rotated_at": rotated["rotated_at"],
            "previous_secret_expires_at": rotated["previous_secret_expires_at"],
        }),
    ))
}

#[derive(Deserialize)]
struct EndpointRecord {
    id: String,
    tenant_id: String,
    secret_ciphertext: String,
    key_id: String,
    /// Set while a rotated-out secret is within its grace period.
    previous_secret_ciphertext: Option<String>,
    previous_key_id: Option<String>,
    pull_url: Option<String>,
}

/// The endpoint `id`; through `gate`, so intake is charged to the caller's address.
async fn load_endpoint(app: &App, gate: &RateGate, id: &str) -> Result<EndpointRecord, ApiError> {
    if uuid::Uuid::parse_str(id).is_err() {
        return Err(ApiError::not_found("no webhook endpoint with this id"));
    }
    Ok(gate
        .call(&app.db, "keel_webhook_endpoint", json!({"id": id}))
        .await?)
}

/// The secrets a delivery may be signed with: the current one, then the
/// previous one during its grace period.
fn endpoint_secrets(app: &App, endpoint: &EndpointRecord) -> Result<Vec<String>, ApiError> {
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
        let bytes = decrypt(app, key_id, ciphertext)
            .map_err(|e| ApiError::internal(e.context(format!("endpoint {}", endpoint.id))))?;
        String::from_utf8(bytes).map_err(|e| ApiError::internal(e.into()))
    })
    .collect()
}

// Intake -------------------------------------------------------------------------------

fn header<'a>(request: &'a ApiRequest, name: &'static str) -> Result<&'a str, Rejection> {
    let value = request.headers.get(name).ok_or_else(|| {
        Rejection::Malformed("missing_header", format!("the {name} header is required"))
    })?;
    value.to_str().map_err(|_| {
        Rejection::Malformed("invalid_header", format!("the {name} header is not text"))
    })
}

#[derive(Deserialize)]
struct Accepted {
    duplicate: bool,
}

/// `POST /api/webhooks/{id}`.
pub async fn receive(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    let endpoint = load_endpoint(&app, &request.rate_gate, request.param("id")).await?;
    match verified_event(&app, &endpoint, &request) {
        Ok((webhook_id, event_type, payload)) => {
            let accepted: Accepted = app
                .db
                .call(
                    "keel_accept_webhook",
                    &json!({
                        "endpoint_id": endpoint.id,
                        "webhook_id": webhook_id,
                        "event_type": event_type,
                        "payload": payload,
                    }),
                )
                .await?;
            Ok(json_response(
                StatusCode::OK,
                &json!({"received": true, "duplicate": accepted.duplicate}),
            ))
        }
        Err(rejection) => {
            // Counted for metrics; the delivery itself is not stored.
            if let Err(error) = app
                .db
                .call::<_, Value>("keel_count_webhook_rejection", &json!({}))
                .await
            {
                tracing::warn!(%error, "could not count a webhook rejection");
            }
            Err(rejection)
        }
    }
}

/// The delivery's id, event type and JSON payload, once it is proven authentic.
fn verified_event(
    app: &App,
    endpoint: &EndpointRecord,
    request: &ApiRequest,
) -> Result<(String, String, Value), ApiError> {
    let webhook_id = header(request, "webhook-id")?.trim();
    if webhook_id.is_empty() || webhook_id.len() > 256 {
        return Err(Rejection::Malformed(
            "invalid_header",
            "webhook-id must be 1 to 256 characters".to_owned(),
        )
        .into());
    }
    let timestamp = header(request, "webhook-timestamp")?;
    let signatures = header(request, "webhook-signature")?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut verdict = Err(Rejection::Forged);
    for secret in endpoint_secrets(app, endpoint)? {
        verdict = verify(
            &secret,
            webhook_id,
            timestamp,
            signatures,
            &request.body,
            now,
        );
        if !matches!(verdict, Err(Rejection::Forged)) {
            break;
        }
    }
    verdict?;
    let payload: Value = serde_json::from_slice(&request.body).map_err(|e| {
        ApiError::bad_request("invalid_payload", format!("the body is not JSON: {e}"))
    })?;
    let event_type = payload
        .get("type")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty() && t.len() <= 200)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_payload",
                "the body must be a JSON object with a string `type`",
            )
        })?
        .to_owned();
    Ok((webhook_id.to_owned(), event_type, payload))
}

// Deliveries ---------------------------------------------------------------------------

#[derive(Deserialize)]
struct DeliveryPage {
    deliveries: Vec<Value>,
    next_cursor: Option<String>,
}

/// `GET /api/webhooks/deliveries?limit=&cursor=`, oldest first.
pub async fn list_deliveries(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    let tenant = auth::tenant(&request)?;
    let page = request.id_page(50, 200)?;
    let result: DeliveryPage = tenant
        .call(
            &app.db,
            "keel_list_webhook_deliveries",
            json!({"limit": page.limit, "cursor": page.cursor}),
        )
        .await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "deliveries": result.deliveries,
            "next_cursor": result.next_cursor.as_deref().map(encode_cursor),
        }),
    ))
}

// Processing (task `webhook.process`) ---------------------------------------------------

#[derive(Deserialize)]
struct Delivery {
    id: i64,
    event_type: String,
    payload: Value,
}

fn permanent(what: &str, error: impl std::fmt::Display) -> TaskError {
    TaskError::Permanent(format!("{what}: {error}"))
}

pub async fn process_delivery(app: Arc<App>, task: Task) -> Result<(), TaskError> {
    let tenant = task.tenant()?;
    let delivery_id = task.payload["delivery_id"]
        .as_i64()
        .ok_or_else(|| permanent("payload", "missing delivery_id"))?;
    let delivery: Option<Delivery> = app
        .db
        .call(
            "keel_webhook_delivery",
            &tenant.with(json!({"id": delivery_id})),
        )
        .await
        .map_err(|e| TaskError::from(ApiError::from(e)))?;
    // Pruned by retention in the meantime: nothing left to do.
    let Some(delivery) = delivery else {
        return Ok(());
    };
    let data = &delivery.payload["data"];
    let outcome = match delivery.event_type.as_str() {
        "document.upserted" => sync_upsert(&app, &tenant, data).await.map(|()| "processed"),
        "document.deleted" => sync_delete(&app, &tenant, data).await.map(|()| "processed"),
        _ => Ok("stored"),
    };
    let status = match &outcome {
        Ok(status) => *status,
        Err(TaskError::Permanent(_)) => "failed",
        Err(TaskError::Retry(_)) => return outcome.map(|_| ()),
    };
    app.db
        .call::<_, Value>(
            "keel_finish_webhook_delivery",
            &tenant.with(json!({"id": delivery.id, "status": status})),
        )
        .await
        .map_err(|e| TaskError::from(ApiError::from(e)))?;
    outcome.map(|_| ())
}

/// `data` is the documents API's body (`{"documents":[…]}`) or one document.
async fn sync_upsert(app: &Arc<App>, tenant: &TenantRef, data: &Value) -> Result<(), TaskError> {
    let documents = if data.get("documents").is_some() {
        serde_path_to_error::deserialize::<_, UpsertRequest>(data.clone())
            .map_err(|e| permanent("document.upserted data", e))?
            .documents
    } else {
        vec![
            serde_path_to_error::deserialize::<_, DocumentInput>(data.clone())
                .map_err(|e| permanent("document.upserted data", e))?,
        ]
    };
    ingest::validate(&documents, &app.config.ingest)?;
    ingest::upsert_documents(app, tenant, documents).await?;
    Ok(())
}

/// `data` is `{"id"}` or `{"ids":[…]}`; deleting what is already gone is fine.
async fn sync_delete(app: &App, tenant: &TenantRef, data: &Value) -> Result<(), TaskError> {
    let ids: Vec<&str> = match (data.get("id"), data.get("ids")) {
        (Some(Value::String(id)), _) => vec![id.as_str()],
        (_, Some(Value::Array(ids))) => ids.iter().filter_map(Value::as_str).collect(),
        _ => return Err(permanent("document.deleted data", "needs `id` or `ids`")),
    };
    for id in ids {
        match ingest::delete_document(app, tenant, id).await {
            Ok(_) => {}
            Err(error) if error.status() == StatusCode::NOT_FOUND => {}
            Err(error) => return Err(error.into()),
        }
    }
    Ok(())
}

// Reconciliation (task `webhook.reconcile`) ----------------------------------------------

/// Addresses a pull URL may reach: public unicast only.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT
                || (a == 192 && b == 0 && v4.octets()[2] == 0) // IETF protocol assignments
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link local
                || first == 0x2001 && v6.segments()[1] == 0x0db8) // documentation
        }
    }
}

/// GETs `url` with the pull limits, re-checking every redirect's target and
/// pinning the connection to the address that was checked.
async fn fetch_bounded(app: &App, url: &str) -> Result<Vec<u8>, TaskError> {
    let mut current = Url::parse(url).map_err(|e| permanent("pull_url", e))?;
    for _ in 0..=PULL_MAX_REDIRECTS {
        if !matches!(current.scheme(), "http" | "https") {
            return Err(permanent("pull_url", "only http and https are allowed"));
        }
        let host = current
            .host_str()
            .ok_or_else(|| permanent("pull_url", "no host"))?
            .to_owned();
        let port = current.port_or_known_default().unwrap_or(443);
        let addresses: Vec<SocketAddr> =
            tokio::net::lookup_host((host.trim_matches(['[', ']']), port))
                .await
                .map_err(|e| TaskError::Retry(format!("cannot resolve {host}: {e}")))?
                .collect();
        let address = *addresses
            .first()
            .ok_or_else(|| TaskError::Retry(format!("{host} has no address")))?;
        if !app.config.tasks.allow_private_pull_urls && !addresses.iter().all(|a| is_public(a.ip()))
        {
            return Err(permanent(
                "pull_url",
                format!("{host} resolves to a private or loopback address"),
            ));
        }
        let client = reqwest::Client::builder()
            .use_preconfigured_tls((*crate::app::tls_config()).clone())
            .redirect(reqwest::redirect::Policy::none())
            .timeout(PULL_TIMEOUT)
            .resolve(&host, address)
            .build()
            .map_err(|e| TaskError::Retry(e.to_string()))?;
        let mut response = client
            .get(current.clone())
            .send()
            .await
            .map_err(|e| TaskError::Retry(format!("pulling {host}: {}", e.without_url())))?;
        if response.status().is_redirection() {
            let location = response
                .headers()
                .get(http::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .ok_or_else(|| permanent("pull_url", "a redirect without Location"))?;
            current = current
                .join(location)
                .map_err(|e| permanent("redirect", e))?;
            continue;
        }
        if !response.status().is_success() {
            return Err(TaskError::Retry(format!(
                "{host} answered HTTP {}",
                response.status().as_u16()
            )));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| TaskError::Retry(format!("reading from {host}: {}", e.without_url())))?
        {
            if body.len() + chunk.len() > PULL_MAX_BYTES {
                return Err(permanent("pull_url", "the response is larger than 1 MiB"));
            }
            body.extend_from_slice(&chunk);
        }
        return Ok(body);
    }
    Err(permanent(
        "pull_url",
        format!("more than {PULL_MAX_REDIRECTS} redirects"),
    ))
}

#[derive(Deserialize)]
struct PulledEvents {
    events: Vec<Value>,
}

/// Pulls the endpoint's events and accepts the ones not seen yet, exactly as
/// if they had been delivered (deduplicated by event id).
pub async fn reconcile(app: Arc<App>, task: Task) -> Result<(), TaskError> {
    let endpoint_id = task.payload["endpoint_id"]
        .as_str()
        .ok_or_else(|| permanent("payload", "missing endpoint_id"))?;
    let endpoint = load_endpoint(&app, &RateGate::default(), endpoint_id).await?;
    if Some(endpoint.tenant_id.as_str()) != task.tenant_id.as_deref() {
        return Err(permanent(
            "payload",
            "the endpoint belongs to another tenant",
        ));
    }
    let Some(pull_url) = endpoint.pull_url.as_deref() else {
        return Ok(());
    };
    let body = fetch_bounded(&app, pull_url).await?;
    let pulled: PulledEvents = serde_json::from_slice(&body)
        .map_err(|e| permanent("pulled body (expected {\"events\":[…]})", e))?;
    let mut accepted = 0;
    for event in pulled.events {
        let (Some(id), Some(kind)) = (event["id"].as_str(), event["type"].as_str()) else {
            tracing::warn!(
                endpoint = endpoint_id,
                "skipping a pulled event without id or type"
            );
            continue;
        };
        let result: Accepted = app
            .db
            .call(
                "keel_accept_webhook",
                &json!({"endpoint_id": endpoint.id, "webhook_id": id, "event_type": kind, "payload": event}),
            )
            .await
            .map_err(|e| TaskError::from(ApiError::from(e)))?;
        accepted += u32::from(!result.duplicate);
    }
    tracing::info!(
        endpoint = endpoint_id,
        accepted,
        "reconciliation pulled missed events"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn the_standard_webhooks_reference_signature_verifies() {
        // The example from the Standard Webhooks specification.
        let body = br#"{"test": 2432232314}"#;
        let signature = sign(SECRET, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert_eq!(
            verify(
                SECRET,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                "1614265330",
                &signature,
                body,
                1614265330
            ),
            Ok(())
        );
    }

    #[test]
    fn deliveries_are_refused_for_each_way_they_can_be_wrong() {
        let body = br#"{"type":"call.ended"}"#;
        let now = 1_700_000_000;
        let good = sign(SECRET, "msg_1", now, body);
        let other_secret = sign(
            "whsec_b3RoZXItc2VjcmV0LW90aGVyLXNlY3JldA==",
            "msg_1",
            now,
            body,
        );
        // (webhook-id, webhook-timestamp, webhook-signature, body, expected, reason)
        type Case<'a> = (
            &'a str,
            String,
            String,
            &'a [u8],
            Result<(), Rejection>,
            &'a str,
        );
        let cases: Vec<Case> = vec![
            (
                "msg_1",
                now.to_string(),
                good.clone(),
                body,
                Ok(()),
                "authentic",
            ),
            (
                "msg_1",
                now.to_string(),
                format!("v1,AAAA {good}"),
                body,
                Ok(()),
                "old and new signatures during rotation",
            ),
            (
                "msg_1",
                now.to_string(),
                other_secret,
                body,
                Err(Rejection::Forged),
                "another endpoint's secret",
            ),
            (
                "msg_1",
                now.to_string(),
                good.clone(),
                br#"{"type":"call.started"}"#,
                Err(Rejection::Forged),
                "tampered body",
            ),
            (
                "msg_2",
                now.to_string(),
                good.clone(),
                body,
                Err(Rejection::Forged),
                "signature replayed under another id",
            ),
            (
                "msg_1",
                (now - 301).to_string(),
                sign(SECRET, "msg_1", now - 301, body),
                body,
                Err(Rejection::Stale),
                "a replay after 5 minutes",
            ),
            (
                "msg_1",
                (now + 301).to_string(),
                sign(SECRET, "msg_1", now + 301, body),
                body,
                Err(Rejection::Stale),
                "from the future",
            ),
            (
                "msg_1",
                "yesterday".into(),
                good.clone(),
                body,
                Err(Rejection::Malformed(
                    "invalid_header",
                    "webhook-timestamp must be Unix seconds".into(),
                )),
                "timestamp not a number",
            ),
            (
                "msg_1",
                now.to_string(),
                good.replace("v1,", "v2,"),
                body,
                Err(Rejection::Forged),
                "unknown scheme version",
            ),
            (
                "msg_1",
                now.to_string(),
                "v1,not-base64!".into(),
                body,
                Err(Rejection::Forged),
                "garbage signature",
            ),
        ];
        for (id, timestamp, signatures, body, expected, reason) in cases {
            assert_eq!(
                verify(SECRET, id, &timestamp, &signatures, body, now),
                expected,
                "{reason}"
            );
        }
    }

    #[test]
    fn secrets_round_trip_through_encryption_and_fail_on_tampering() {
        let key = EncryptionKey::new(Box::new([9u8; 32]));
        let blob = encrypt(&key, b"whsec_secret");
        assert_ne!(
            blob,
            encrypt(&key, b"whsec_secret"),
            "a fresh nonce each time"
        );
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&blob)
            .unwrap();
        let (nonce, ciphertext) = bytes.split_at(12);
        let cipher = Aes256Gcm::new(key.expose_secret().into());
        assert_eq!(
            cipher
                .decrypt(Nonce::from_slice(nonce), ciphertext)
                .unwrap(),
            b"whsec_secret"
        );
        let mut tampered = ciphertext.to_vec();
        tampered[0] ^= 1;
        assert!(
            cipher
                .decrypt(Nonce::from_slice(nonce), tampered.as_slice())
                .is_err()
        );
        assert_eq!(key_id(&key).len(), 8);
        assert_ne!(
            key_id(&key),
            key_id(&EncryptionKey::new(Box::new([8u8; 32])))
        );
    }

    #[test]
    fn only_public_addresses_may_be_pulled_from() {
        let cases = [
            ("93.184.216.34", true),
            ("2606:4700::1111", true),
            ("127.0.0.1", false),
            ("10.1.2.3", false),
            ("172.16.0.1", false),
            ("192.168.1.1", false),
            ("169.254.169.254", false),
            ("100.64.0.1", false),
            ("0.0.0.0", false),
            ("::1", false),
            ("fd00::1", false),
            ("fe80::1", false),
            ("::ffff:127.0.0.1", false),
        ];
        for (ip, public) in cases {
            assert_eq!(is_public(ip.parse().unwrap()), public, "{ip}");
        }
    }
}
