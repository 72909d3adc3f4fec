//! The senders that sign the raw body alone with HMAC-SHA256 and name each
//! delivery in a header: Razorpay (hex, `X-Razorpay-Event-Id`), Shopify
//! (base64, `X-Shopify-Event-Id`), WooCommerce (base64,
//! `X-WC-Webhook-Delivery-ID`) and GitHub (`sha256=<hex>`,
//! `X-GitHub-Delivery`). None of them signs a time, so a replay is caught
//! by its id alone.

use base64::Engine as _;
use serde_json::{Value, json};

use super::{
    Delivery, Rejection, Verified, any_secret_matches, bounded_id, decode_hex, header, hmac_sha256,
    json_body, optional_header, rfc3339, string_field, unix_rfc3339,
};

/// Whether `presented` is the body's HMAC-SHA256 under any secret.
fn body_signed_by(secrets: &[String], presented: &[u8], body: &[u8]) -> bool {
    any_secret_matches(secrets, presented, |secret| {
        hmac_sha256(secret.as_bytes(), &[body])
    })
}

fn base64_signature(value: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .unwrap_or_default()
}

pub fn razorpay(secrets: &[String], delivery: &Delivery) -> Result<Verified, Rejection> {
    let signature = header(delivery.headers, "x-razorpay-signature")?;
    let presented = decode_hex(signature.trim()).unwrap_or_default();
    if !body_signed_by(secrets, &presented, delivery.body) {
        return Err(Rejection::Forged("X-Razorpay-Signature"));
    }
    let webhook_id = bounded_id(
        "X-Razorpay-Event-Id",
        header(delivery.headers, "x-razorpay-event-id")?,
    )?;
    let payload = json_body(delivery.body)?;
    let event_type = string_field(&payload, "event")?;
    let event_at = payload
        .get("created_at")
        .and_then(Value::as_i64)
        .and_then(unix_rfc3339);
    Ok(Verified {
        webhook_id,
        event_type,
        payload,
        event_at,
    })
}

/// Stored as `{"shop", "api_version", "data": <the body>}`: the topic is the
/// event type, and the shop names where the resource lives.
pub fn shopify(secrets: &[String], delivery: &Delivery) -> Result<Verified, Rejection> {
    let signature = header(delivery.headers, "x-shopify-hmac-sha256")?;
    if !body_signed_by(secrets, &base64_signature(signature), delivery.body) {
        return Err(Rejection::Forged("X-Shopify-Hmac-Sha256"));
    }
    let topic = bounded_id(
        "X-Shopify-Topic",
        header(delivery.headers, "x-shopify-topic")?,
    )?;
    let shop = bounded_id(
        "X-Shopify-Shop-Domain",
        header(delivery.headers, "x-shopify-shop-domain")?,
    )?;
    let api_version = bounded_id(
        "X-Shopify-API-Version",
        header(delivery.headers, "x-shopify-api-version")?,
    )?;
    let webhook_id = bounded_id(
        "X-Shopify-Webhook-Id",
        header(delivery.headers, "x-shopify-webhook-id")?,
    )?;
    // The event id is the same across every delivery of one event (the
    // webhook id too, on retries); older API versions send no event id.
    let webhook_id = match optional_header(delivery.headers, "x-shopify-event-id")? {
        Some(event) => bounded_id("X-Shopify-Event-Id", event)?,
        None => webhook_id,
    };
    let data = json_body(delivery.body)?;
    let event_at = data
        .get("updated_at")
        .and_then(Value::as_str)
        .and_then(rfc3339)
        .or(optional_header(delivery.headers, "x-shopify-triggered-at")?.and_then(rfc3339))
        // A deletion carries only the id: it happened by the time it arrived.
        .or_else(|| unix_rfc3339(delivery.now));
    Ok(Verified {
        webhook_id,
        event_type: topic,
        payload: json!({"shop": shop, "api_version": api_version, "data": data}),
        event_at,
    })
}

/// Stored as `{"source", "data": <the body>}` (`source` is the shop's site).
/// The unsigned ping WooCommerce sends when a webhook is saved
/// (`webhook_id=<n>`, form-encoded) is stored as a `ping`, once per webhook.
pub fn woocommerce(secrets: &[String], delivery: &Delivery) -> Result<Verified, Rejection> {
    let Some(signature) = optional_header(delivery.headers, "x-wc-webhook-signature")? else {
        return creation_ping(delivery.body).ok_or_else(|| {
            Rejection::Malformed(
                "missing_header",
                "the X-WC-Webhook-Signature header is required".to_owned(),
            )
        });
    };
    if !body_signed_by(secrets, &base64_signature(signature), delivery.body) {
        return Err(Rejection::Forged("X-WC-Webhook-Signature"));
    }
    let topic = bounded_id(
        "X-WC-Webhook-Topic",
        header(delivery.headers, "x-wc-webhook-topic")?,
    )?;
    let webhook_id = bounded_id(
        "X-WC-Webhook-Delivery-ID",
        header(delivery.headers, "x-wc-webhook-delivery-id")?,
    )?;
    let source = optional_header(delivery.headers, "x-wc-webhook-source")?
        .map(|s| s.chars().take(2048).collect::<String>());
    let data = json_body(delivery.body)?;
    // WooCommerce's GMT times carry no offset.
    let event_at = data
        .get("date_modified_gmt")
        .and_then(Value::as_str)
        .and_then(|t| rfc3339(&format!("{t}Z")))
        // A deletion carries only the id: it happened by the time it arrived.
        .or_else(|| unix_rfc3339(delivery.now));
    Ok(Verified {
        webhook_id,
        event_type: topic,
        payload: json!({"source": source, "data": data}),
        event_at,
    })
}

/// `webhook_id=<digits>` and nothing else.
fn creation_ping(body: &[u8]) -> Option<Verified> {
    let id = std::str::from_utf8(body)
        .ok()?
        .strip_prefix("webhook_id=")?;
    if id.is_empty() || id.len() > 20 || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(Verified {
        webhook_id: format!("ping:{id}"),
        event_type: "ping".to_owned(),
        payload: json!({"webhook_id": id}),
        event_at: None,
    })
}

/// The event type is `X-GitHub-Event`, with the payload's `action` when it
/// has one (`issues.opened`).
pub fn github(secrets: &[String], delivery: &Delivery) -> Result<Verified, Rejection> {
    let signature = header(delivery.headers, "x-hub-signature-256")?;
    let presented = signature
        .trim()
        .strip_prefix("sha256=")
        .and_then(decode_hex)
        .unwrap_or_default();
    if !body_signed_by(secrets, &presented, delivery.body) {
        return Err(Rejection::Forged("X-Hub-Signature-256"));
    }
    let webhook_id = bounded_id(
        "X-GitHub-Delivery",
        header(delivery.headers, "x-github-delivery")?,
    )?;
    let event = bounded_id(
        "X-GitHub-Event",
        header(delivery.headers, "x-github-event")?,
    )?;
    let payload = json_body(delivery.body)?;
    let event_type = match payload.get("action").and_then(Value::as_str) {
        Some(action) => format!("{event}.{action}"),
        None => event,
    }
    .chars()
    .take(200)
    .collect();
    Ok(Verified {
        webhook_id,
        event_type,
        payload,
        event_at: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::crypto::hex;

    #[test]
    fn githubs_published_example_signature() {
        // docs.github.com, "Validating webhook deliveries".
        let mac = hmac_sha256(b"It's a Secret to Everybody", &[b"Hello, World!"]);
        assert_eq!(
            hex(&mac),
            "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }

    #[test]
    fn razorpays_published_example_signature() {
        // razorpay-python's checkout-form test: the same HMAC-SHA256 as webhooks.
        let mac = hmac_sha256(b"key_secret", &[b"fake_order_id|fake_payment_id"]);
        assert_eq!(
            hex(&mac),
            "b2335e3b0801106b84a7faff035df56ecffde06918c9ddd1f0fafbb37a51cc89"
        );
    }

    #[test]
    fn only_a_bare_webhook_id_form_is_a_creation_ping() {
        assert_eq!(
            creation_ping(b"webhook_id=12").unwrap().webhook_id,
            "ping:12"
        );
        for body in [
            &b"webhook_id="[..],
            b"webhook_id=12&x=1",
            b"{}",
            b"webhook_id=-1",
        ] {
            assert_eq!(creation_ping(body), None);
        }
    }
}
