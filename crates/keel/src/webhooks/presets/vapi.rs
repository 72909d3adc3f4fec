//! Vapi server messages (`{"message": {"type", "call", …}}`), authenticated
//! either by `X-Vapi-Secret` equal to the endpoint's secret (Vapi's server
//! URL secret) or by an HMAC credential: `x-signature` = hex HMAC-SHA256 of
//! `{x-timestamp}.{body}`, with `x-timestamp` within the replay window.
//! Deduplicated by call id + message type + what tells that type's
//! messages of one call apart (tool-call ids, status, time).

use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;

use super::{
    Delivery, Rejection, TOLERANCE_SECONDS, Verified, any_secret_matches, body_digest, decode_hex,
    header, hmac_sha256, json_body, optional_header, unix_rfc3339,
};

pub fn verify(secrets: &[String], delivery: &Delivery) -> Result<Verified, Rejection> {
    match optional_header(delivery.headers, "x-vapi-secret")? {
        Some(presented) => {
            // Hashed first, so neither content nor length leaks through timing.
            let presented = Sha256::digest(presented.as_bytes());
            let authentic = secrets
                .iter()
                .any(|secret| bool::from(Sha256::digest(secret.as_bytes()).ct_eq(&presented)));
            if !authentic {
                return Err(Rejection::Forged("X-Vapi-Secret"));
            }
        }
        None => verify_hmac(secrets, delivery)?,
    }
    name_message(json_body(delivery.body)?, delivery.body)
}

/// Vapi's HMAC credential. `x-timestamp` is Unix seconds or milliseconds.
fn verify_hmac(secrets: &[String], delivery: &Delivery) -> Result<(), Rejection> {
    let Some(signature) = optional_header(delivery.headers, "x-signature")? else {
        return Err(Rejection::Malformed(
            "missing_header",
            "the X-Vapi-Secret header (or x-signature and x-timestamp) is required".to_owned(),
        ));
    };
    let timestamp = header(delivery.headers, "x-timestamp")?.trim();
    let seconds = timestamp
        .parse::<i64>()
        .map(|t| if t > 100_000_000_000 { t / 1000 } else { t })
        .map_err(|_| {
            Rejection::Malformed(
                "invalid_header",
                "x-timestamp must be Unix seconds or milliseconds".to_owned(),
            )
        })?;
    if (delivery.now - seconds).abs() > TOLERANCE_SECONDS {
        return Err(Rejection::Stale("x-timestamp"));
    }
    let presented = decode_hex(signature.trim()).ok_or(Rejection::Forged("x-signature"))?;
    let authentic = any_secret_matches(secrets, &presented, |secret| {
        hmac_sha256(
            secret.as_bytes(),
            &[timestamp.as_bytes(), b".", delivery.body],
        )
    });
    if authentic {
        Ok(())
    } else {
        Err(Rejection::Forged("x-signature"))
    }
}

fn name_message(payload: Value, body: &[u8]) -> Result<Verified, Rejection> {
    let message = &payload["message"];
    let event_type = message
        .get("type")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty() && t.len() <= 200)
        .ok_or_else(|| {
            Rejection::Malformed(
                "invalid_payload",
                "the body must be a Vapi server message: {\"message\": {\"type\": …}}".to_owned(),
            )
        })?
        .to_owned();
    let call = message["call"]["id"].as_str().unwrap_or("-");
    let timestamp = message.get("timestamp").and_then(Value::as_i64);
    let distinct = match event_type.as_str() {
        "tool-calls" => tool_call_ids(message).join(","),
        "status-update" => message["status"].as_str().unwrap_or_default().to_owned(),
        "end-of-call-report" => String::new(),
        _ => timestamp
            .map(|t| t.to_string())
            .unwrap_or_else(|| body_digest(body)),
    };
    let webhook_id: String = format!("{call}:{event_type}:{distinct}")
        .chars()
        .take(256)
        .collect();
    // Vapi stamps messages in milliseconds.
    let event_at = timestamp.and_then(|ms| unix_rfc3339(ms / 1000));
    Ok(Verified {
        webhook_id,
        event_type,
        payload,
        event_at,
    })
}

fn tool_call_ids(message: &Value) -> Vec<&str> {
    message["toolCallList"]
        .as_array()
        .map(|calls| calls.iter().filter_map(|c| c["id"].as_str()).collect())
        .unwrap_or_default()
}
