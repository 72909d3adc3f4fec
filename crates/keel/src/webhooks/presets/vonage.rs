//! Vonage: `Authorization: Bearer <JWT>`, HS256 under the account's
//! signature secret (what vonage-jwt's `verify_signature` checks), whose
//! `payload_hash` claim is the hex SHA-256 of the body and whose `iat` is
//! within the replay window, as Vonage's webhook guide asks. Deduplicated
//! by the message (or call) uuid and its status, else the token's `jti`.

use base64::Engine as _;
use serde_json::Value;
use subtle::ConstantTimeEq as _;

use super::{
    Delivery, Rejection, TOLERANCE_SECONDS, Verified, any_secret_matches, body_digest, event_time,
    header, hmac_sha256, json_body, unix_rfc3339,
};
use time::format_description::well_known::Rfc3339;

const FORGED: Rejection = Rejection::Forged("Authorization bearer token");

/// The claims of an HS256 JWT signed with one of `secrets`.
fn verified_claims(token: &str, secrets: &[String]) -> Result<Value, Rejection> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let (signed, signature) = token.rsplit_once('.').ok_or(FORGED)?;
    let (header, claims) = signed.split_once('.').ok_or(FORGED)?;
    if claims.contains('.') {
        return Err(FORGED);
    }
    let header: Value = b64
        .decode(header)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or(FORGED)?;
    // Only HS256, whatever the token claims (no `none`, no key confusion).
    if header.get("alg").and_then(Value::as_str) != Some("HS256") {
        return Err(FORGED);
    }
    let signature = b64.decode(signature).map_err(|_| FORGED)?;
    if !any_secret_matches(secrets, &signature, |secret| {
        hmac_sha256(secret.as_bytes(), &[signed.as_bytes()])
    }) {
        return Err(FORGED);
    }
    b64.decode(claims)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .filter(Value::is_object)
        .ok_or(FORGED)
}

pub fn verify(secrets: &[String], delivery: &Delivery) -> Result<Verified, Rejection> {
    let authorization = header(delivery.headers, "authorization")?;
    let token = authorization
        .strip_prefix("Bearer ")
        .or_else(|| authorization.strip_prefix("bearer "))
        .ok_or_else(|| {
            Rejection::Malformed(
                "invalid_header",
                "Authorization must be `Bearer <JWT>`".to_owned(),
            )
        })?
        .trim();
    if token.len() > 4096 {
        return Err(Rejection::Malformed(
            "invalid_header",
            "the Authorization token must be at most 4096 bytes".to_owned(),
        ));
    }
    let claims = verified_claims(token, secrets)?;
    let hash = claims
        .get("payload_hash")
        .and_then(Value::as_str)
        .ok_or(FORGED)?;
    if !bool::from(body_digest(delivery.body).as_bytes().ct_eq(hash.as_bytes())) {
        return Err(FORGED);
    }
    let issued_at = claims.get("iat").and_then(Value::as_i64).ok_or(FORGED)?;
    if (delivery.now - issued_at).abs() > TOLERANCE_SECONDS {
        return Err(Rejection::Stale("the token's iat"));
    }
    if claims
        .get("exp")
        .and_then(Value::as_i64)
        .is_some_and(|exp| exp < delivery.now)
    {
        return Err(Rejection::Stale("the token's exp"));
    }
    let payload = json_body(delivery.body)?;
    let field = |name: &str| payload.get(name).and_then(Value::as_str);
    let status = field("status");
    let (kind, id) = match (field("message_uuid"), field("uuid")) {
        (Some(message), _) => ("message", Some(message)),
        (None, Some(call)) => ("call", Some(call)),
        (None, None) => ("event", None),
    };
    let event_type = match (kind, status) {
        ("event", _) => "vonage.event".to_owned(),
        ("message", None) => "message.inbound".to_owned(),
        (kind, Some(status)) => format!("{kind}.{status}"),
        (kind, None) => format!("{kind}.event"),
    };
    let webhook_id = match (id, claims.get("jti").and_then(Value::as_str)) {
        (Some(id), _) => format!("{id}:{}", status.unwrap_or("inbound")),
        (None, Some(jti)) => jti.to_owned(),
        (None, None) => body_digest(delivery.body),
    }
    .chars()
    .take(256)
    .collect();
    let event_at = event_time(&payload)
        .and_then(|at| at.format(&Rfc3339).ok())
        .or_else(|| unix_rfc3339(issued_at));
    Ok(Verified {
        webhook_id,
        event_type: event_type.chars().take(200).collect(),
        payload,
        event_at,
    })
}

#[cfg(test)]
mod tests {
    use http::HeaderMap;

    use super::*;

    /// vonage-python-sdk `jwt/tests/test_verify_jwt.py`.
    const SDK_TOKEN: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJPbmxpbmUgSldUIEJ1aWxkZXIiLCJpYXQiOjE2OTc2MzQ2ODAsImV4cCI6MzMyNTQ1NDA4MjgsImF1ZCI6IiIsInN1YiI6IiJ9.88vJc3I2HhuqEDixHXVhc9R30tA6U_HQHZTC29y6CGM";
    const SDK_SECRET: &str = "qwertyuiopasdfghjklzxcvbnm123456";

    #[test]
    fn the_sdks_test_token_verifies_with_its_secret_only() {
        let claims = verified_claims(SDK_TOKEN, &[SDK_SECRET.to_owned()]).unwrap();
        assert_eq!(claims["iat"], 1697634680);
        assert_eq!(
            verified_claims(SDK_TOKEN, &["asdf".to_owned()]),
            Err(FORGED),
            "the SDK test's invalid secret"
        );
    }

    #[test]
    fn a_delivery_needs_the_body_hash_and_a_recent_iat() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "authorization",
            format!("Bearer {SDK_TOKEN}").parse().unwrap(),
        );
        let delivery = Delivery {
            headers: &headers,
            body: b"{}",
            query: None,
            public_url: None,
            now: 1697634680,
        };
        // The SDK's token signs no payload_hash: nothing ties it to a body.
        assert_eq!(verify(&[SDK_SECRET.to_owned()], &delivery), Err(FORGED));
    }

    #[test]
    fn tokens_of_another_algorithm_are_forged() {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let none = format!(
            "{}.{}.",
            b64.encode(r#"{"alg":"none"}"#),
            b64.encode(r#"{"iat":1}"#)
        );
        assert_eq!(
            verified_claims(&none, &[SDK_SECRET.to_owned()]),
            Err(FORGED)
        );
        assert_eq!(
            verified_claims("a.b", &[SDK_SECRET.to_owned()]),
            Err(FORGED)
        );
    }
}
