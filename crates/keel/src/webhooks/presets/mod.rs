//! Verification presets: how deliveries to an endpoint are proven authentic
//! and deduplicated, one per sender. `standard` is Standard Webhooks (every
//! endpoint made before presets existed); the others verify exactly as the
//! provider's official SDK does, compared in constant time, and name the
//! delivery by the provider's own id so a retry is a duplicate.

mod body_signed;
mod stripe;
mod twilio;
mod vapi;
mod vonage;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use http::HeaderMap;
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;
use subtle::ConstantTimeEq as _;
use time::format_description::well_known::Rfc3339;

use super::signatures::{self, Rejection, SECRET_PREFIX};

/// How an endpoint's deliveries are verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Verification {
    Standard,
    Vapi,
    Twilio,
    Vonage,
    Razorpay,
    Shopify,
    Woocommerce,
    Stripe,
    Github,
}

impl Verification {
    pub const ALL: [Verification; 9] = [
        Verification::Standard,
        Verification::Vapi,
        Verification::Twilio,
        Verification::Vonage,
        Verification::Razorpay,
        Verification::Shopify,
        Verification::Woocommerce,
        Verification::Stripe,
        Verification::Github,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Verification::Standard => "standard",
            Verification::Vapi => "vapi",
            Verification::Twilio => "twilio",
            Verification::Vonage => "vonage",
            Verification::Razorpay => "razorpay",
            Verification::Shopify => "shopify",
            Verification::Woocommerce => "woocommerce",
            Verification::Stripe => "stripe",
            Verification::Github => "github",
        }
    }

    /// The headers a delivery is verified by, the signature (or credential)
    /// first, as the OpenAPI document describes them.
    pub fn headers(self) -> &'static [&'static str] {
        match self {
            Verification::Standard => &["webhook-signature", "webhook-id", "webhook-timestamp"],
            Verification::Vapi => &["x-vapi-secret", "x-signature", "x-timestamp"],
            Verification::Twilio => &["x-twilio-signature"],
            Verification::Vonage => &["authorization"],
            Verification::Razorpay => &["x-razorpay-signature", "x-razorpay-event-id"],
            Verification::Shopify => &[
                "x-shopify-hmac-sha256",
                "x-shopify-topic",
                "x-shopify-shop-domain",
                "x-shopify-api-version",
                "x-shopify-webhook-id",
            ],
            Verification::Woocommerce => &[
                "x-wc-webhook-signature",
                "x-wc-webhook-topic",
                "x-wc-webhook-delivery-id",
            ],
            Verification::Stripe => &["stripe-signature"],
            Verification::Github => &["x-hub-signature-256", "x-github-delivery", "x-github-event"],
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.name() == name)
    }

    /// The provider issues the secret (Twilio's auth token, Stripe's
    /// `whsec_…`, Shopify's app secret, Vonage's signature secret) and the
    /// tenant hands it to Keel; every other sender lets you choose one, so
    /// Keel generates it.
    pub fn provider_issues_secret(self) -> bool {
        matches!(
            self,
            Verification::Twilio
                | Verification::Vonage
                | Verification::Shopify
                | Verification::Stripe
        )
    }

    /// A fresh secret for a preset whose sender lets you choose: Standard
    /// Webhooks' `whsec_` + base64 of 24 random bytes, otherwise 32 random
    /// bytes as URL-safe base64 (43 characters, pasteable into any form).
    pub fn generate_secret(self) -> String {
        let mut raw = [0u8; 32];
        rand::rng().fill_bytes(&mut raw);
        match self {
            Verification::Standard => format!(
                "{SECRET_PREFIX}{}",
                base64::engine::general_purpose::STANDARD.encode(&raw[..24])
            ),
            _ => base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw),
        }
    }

    /// Why `secret` cannot be this provider's secret, if it cannot.
    pub fn check_provider_secret(self, secret: &str) -> Result<(), String> {
        if !(8..=512).contains(&secret.len()) || !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("must be the provider's secret: 8 to 512 visible ASCII characters".into());
        }
        if self == Verification::Stripe && !secret.starts_with(SECRET_PREFIX) {
            return Err("must be the endpoint's signing secret from Stripe (whsec_…)".into());
        }
        Ok(())
    }
}

/// What a delivery brings: its headers and body as received, the time, and
/// for Twilio the URL it signed (from `PUBLIC_BASE_URL`).
pub struct Delivery<'a> {
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
    /// The request's query string as the sender wrote it (Twilio signs it).
    pub query: Option<&'a str>,
    /// `PUBLIC_BASE_URL` + `/api/webhooks/{id}` + the query, when configured.
    pub public_url: Option<&'a str>,
    /// Unix seconds.
    pub now: i64,
}

/// A delivery proven authentic (or WooCommerce's unsigned creation ping).
#[derive(Debug, PartialEq)]
pub struct Verified {
    /// The dedupe key: a redelivery with the same one is a duplicate.
    pub webhook_id: String,
    pub event_type: String,
    pub payload: Value,
    /// The ordering key (RFC 3339), when the delivery carries a time.
    pub event_at: Option<String>,
}

/// Replay window of every preset that signs a timestamp.
pub const TOLERANCE_SECONDS: i64 = signatures::TOLERANCE_SECONDS;

/// Verifies `delivery` against any of the endpoint's `secrets` (the current
/// one, then the previous one during a rotation's grace period).
pub fn verify(
    verification: Verification,
    secrets: &[String],
    delivery: &Delivery,
) -> Result<Verified, Rejection> {
    match verification {
        Verification::Standard => standard(secrets, delivery),
        Verification::Vapi => vapi::verify(secrets, delivery),
        Verification::Twilio => twilio::verify(secrets, delivery),
        Verification::Vonage => vonage::verify(secrets, delivery),
        Verification::Stripe => stripe::verify(secrets, delivery),
        Verification::Razorpay => body_signed::razorpay(secrets, delivery),
        Verification::Shopify => body_signed::shopify(secrets, delivery),
        Verification::Woocommerce => body_signed::woocommerce(secrets, delivery),
        Verification::Github => body_signed::github(secrets, delivery),
    }
}

/// Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature`
/// and a JSON body with a string `type`.
fn standard(secrets: &[String], delivery: &Delivery) -> Result<Verified, Rejection> {
    let webhook_id = bounded_id("webhook-id", header(delivery.headers, "webhook-id")?)?;
    let timestamp = header(delivery.headers, "webhook-timestamp")?;
    let signature = header(delivery.headers, "webhook-signature")?;
    signatures::verify(
        secrets,
        &webhook_id,
        timestamp,
        signature,
        delivery.body,
        delivery.now,
    )?;
    let sent_at = timestamp.trim().parse::<i64>().ok().and_then(unix_rfc3339);
    let payload = json_body(delivery.body)?;
    let event_type = string_field(&payload, "type")?;
    let event_at = event_time(&payload)
        .and_then(|at| at.format(&Rfc3339).ok())
        .or(sent_at);
    Ok(Verified {
        webhook_id,
        event_type,
        payload,
        event_at,
    })
}

// Shared by the presets -------------------------------------------------------

type HmacSha256 = Hmac<Sha256>;

/// HMAC-SHA256 of the concatenated `parts` under `key`.
fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// Whether any secret's MAC equals `presented`, each compared in constant
/// time (the number of secrets is no secret).
fn any_secret_matches<const N: usize>(
    secrets: &[String],
    presented: &[u8],
    mac: impl Fn(&str) -> [u8; N],
) -> bool {
    secrets
        .iter()
        .any(|secret| bool::from(mac(secret).as_slice().ct_eq(presented)))
}

fn header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a str, Rejection> {
    optional_header(headers, name)?.ok_or_else(|| {
        Rejection::Malformed("missing_header", format!("the {name} header is required"))
    })
}

fn optional_header<'a>(
    headers: &'a HeaderMap,
    name: &'static str,
) -> Result<Option<&'a str>, Rejection> {
    headers
        .get(name)
        .map(|value| {
            value.to_str().map_err(|_| {
                Rejection::Malformed("invalid_header", format!("the {name} header is not text"))
            })
        })
        .transpose()
}

/// An id the sender chose, as a dedupe key: 1 to 256 characters.
fn bounded_id(name: &str, value: &str) -> Result<String, Rejection> {
    let value = value.trim();
    if value.is_empty() || value.len() > 256 {
        return Err(Rejection::Malformed(
            "invalid_header",
            format!("{name} must be 1 to 256 characters"),
        ));
    }
    Ok(value.to_owned())
}

fn json_body(body: &[u8]) -> Result<Value, Rejection> {
    serde_json::from_slice(body)
        .map_err(|e| Rejection::Malformed("invalid_payload", format!("the body is not JSON: {e}")))
}

/// A non-empty string field of at most 200 characters (an event type).
fn string_field(payload: &Value, field: &str) -> Result<String, Rejection> {
    payload
        .get(field)
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty() && t.len() <= 200)
        .map(str::to_owned)
        .ok_or_else(|| {
            Rejection::Malformed(
                "invalid_payload",
                format!("the body must be a JSON object with a string `{field}`"),
            )
        })
}

/// The bytes of a lowercase hex string, if it is one: the SDKs compare the
/// hex text itself, so an uppercase copy is not the same signature.
fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    let lowercase = hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !lowercase || !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

fn unix_rfc3339(seconds: i64) -> Option<String> {
    time::OffsetDateTime::from_unix_timestamp(seconds)
        .ok()?
        .format(&Rfc3339)
        .ok()
}

/// An RFC 3339 time as given, once it parses.
fn rfc3339(text: &str) -> Option<String> {
    time::OffsetDateTime::parse(text, &Rfc3339)
        .ok()?
        .format(&Rfc3339)
        .ok()
}

/// Lowercase hex of SHA-256: the dedupe key of a delivery that names itself
/// nowhere else.
fn body_digest(body: &[u8]) -> String {
    crate::platform::crypto::sha256_hex(body)
}

/// An event's own time, its `timestamp`: RFC 3339 or Unix seconds. Events
/// are applied in this order (see `processing`); a sender whose events carry
/// no timestamp is ordered by when it signed each delivery.
pub fn event_time(event: &Value) -> Option<time::OffsetDateTime> {
    match event.get("timestamp")? {
        Value::String(text) => time::OffsetDateTime::parse(text, &Rfc3339).ok(),
        Value::Number(number) => time::OffsetDateTime::from_unix_timestamp(number.as_i64()?).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_has_a_name_that_parses_back() {
        for verification in Verification::ALL {
            assert_eq!(Verification::parse(verification.name()), Some(verification));
            assert_eq!(
                serde_json::to_value(verification).unwrap(),
                verification.name()
            );
        }
        assert_eq!(Verification::parse("Stripe"), None);
    }

    #[test]
    fn generated_secrets_are_long_random_and_shaped_for_their_sender() {
        let standard = Verification::Standard.generate_secret();
        assert!(standard.starts_with("whsec_") && standard.len() == 38);
        let github = Verification::Github.generate_secret();
        assert_eq!(github.len(), 43);
        assert_ne!(github, Verification::Github.generate_secret());
    }

    #[test]
    fn provider_secrets_are_checked_for_shape_only() {
        // (preset, secret, accepted, reason)
        let cases = [
            (
                Verification::Stripe,
                "whsec_abc123def456",
                true,
                "Stripe's own",
            ),
            (
                Verification::Stripe,
                "sk_live_abc123def456",
                false,
                "an API key, not the signing secret",
            ),
            (
                Verification::Twilio,
                "12345678901234567890123456789012",
                true,
                "an auth token",
            ),
            (Verification::Twilio, "short", false, "too short"),
            (
                Verification::Shopify,
                "has a space inside",
                false,
                "whitespace",
            ),
            (Verification::Vonage, &"x".repeat(513), false, "too long"),
        ];
        for (verification, secret, accepted, reason) in cases {
            assert_eq!(
                verification.check_provider_secret(secret).is_ok(),
                accepted,
                "{reason}"
            );
        }
    }
}
