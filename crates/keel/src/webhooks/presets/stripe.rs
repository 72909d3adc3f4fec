//! Stripe: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=…]`, each `v1` the hex
//! HMAC-SHA256 of `{t}.{body}` under the `whsec_…` string itself (its UTF-8
//! bytes, not decoded); any `v1` may match, then `t` must be within 300 s
//! in the past, in that order, as stripe-python's `WebhookSignature`.
//! Deduplicated by the event's `id`.

use serde_json::Value;
use subtle::{Choice, ConstantTimeEq as _};

use super::{
    Delivery, Rejection, TOLERANCE_SECONDS, Verified, decode_hex, header, hmac_sha256, json_body,
    string_field, unix_rfc3339,
};

const HEADER: &str = "stripe-signature";
/// A rotation lists two `v1` entries and Stripe adds a `v0` in test mode;
/// anything far longer is not from Stripe.
const MAX_HEADER_BYTES: usize = 2048;

pub fn verify(secrets: &[String], delivery: &Delivery) -> Result<Verified, Rejection> {
    let signature = header(delivery.headers, HEADER)?;
    if signature.len() > MAX_HEADER_BYTES {
        return Err(Rejection::Malformed(
            "invalid_header",
            format!("Stripe-Signature must be at most {MAX_HEADER_BYTES} bytes"),
        ));
    }
    let entries: Vec<(&str, &str)> = signature
        .split(',')
        .filter_map(|item| item.split_once('='))
        .collect();
    let timestamp = entries
        .iter()
        .find(|(key, _)| *key == "t")
        .and_then(|(_, t)| t.parse::<i64>().ok())
        .ok_or_else(|| {
            Rejection::Malformed(
                "invalid_header",
                "Stripe-Signature must carry t=<Unix seconds>".to_owned(),
            )
        })?;
    let candidates: Vec<Vec<u8>> = entries
        .iter()
        .filter(|(key, _)| *key == "v1")
        .filter_map(|(_, hex)| decode_hex(hex))
        .collect();
    let prefix = format!("{timestamp}.");
    let authentic = secrets.iter().any(|secret| {
        let expected = hmac_sha256(secret.as_bytes(), &[prefix.as_bytes(), delivery.body]);
        // Every candidate is compared in constant time.
        candidates
            .iter()
            .fold(Choice::from(0), |found, candidate| {
                found | expected.as_slice().ct_eq(candidate)
            })
            .into()
    });
    if !authentic {
        return Err(Rejection::Forged("Stripe-Signature"));
    }
    if timestamp < delivery.now - TOLERANCE_SECONDS {
        return Err(Rejection::Stale("Stripe-Signature's t="));
    }
    let payload = json_body(delivery.body)?;
    let webhook_id = string_field(&payload, "id")?;
    let event_type = string_field(&payload, "type")?;
    let event_at = payload
        .get("created")
        .and_then(Value::as_i64)
        .and_then(unix_rfc3339);
    Ok(Verified {
        webhook_id,
        event_type,
        payload,
        event_at,
    })
}

#[cfg(test)]
mod tests {
    use http::HeaderMap;

    use super::*;
    use crate::platform::crypto::hex;

    const SECRET: &str = "whsec_test_secret";

    fn signed(t: i64, body: &str) -> String {
        format!(
            "t={t},v1={}",
            hex(&hmac_sha256(
                SECRET.as_bytes(),
                &[format!("{t}.{body}").as_bytes()]
            ))
        )
    }

    #[test]
    fn deliveries_are_judged_as_stripe_python_judges_them() {
        let now = 1_700_000_000;
        let body = r#"{"id":"evt_1","type":"checkout.session.completed","created":1700000000}"#;
        // (Stripe-Signature, body, expected, reason)
        let cases: Vec<(String, &str, Result<(), Rejection>, &str)> = vec![
            (signed(now, body), body, Ok(()), "authentic"),
            (
                format!("t={now},v1=00,v0=ab,{}", &signed(now, body)[13..]),
                body,
                Ok(()),
                "any v1 may match",
            ),
            (
                signed(now, body),
                &body[..body.len() - 1],
                Err(Rejection::Forged("Stripe-Signature")),
                "tampered",
            ),
            (
                signed(now - 301, body),
                body,
                Err(Rejection::Stale("Stripe-Signature's t=")),
                "stale",
            ),
            (
                signed(now, body).replace("v1=", "v2="),
                body,
                Err(Rejection::Forged("Stripe-Signature")),
                "no v1 signature",
            ),
        ];
        for (signature, body, expected, reason) in cases {
            let mut headers = HeaderMap::new();
            headers.insert(HEADER, signature.parse().unwrap());
            let delivery = Delivery {
                headers: &headers,
                body: body.as_bytes(),
                query: None,
                public_url: None,
                now,
            };
            let outcome = verify(&[SECRET.to_owned()], &delivery);
            assert_eq!(
                outcome.as_ref().map(|_| ()).map_err(Clone::clone),
                expected,
                "{reason}"
            );
            if let Ok(verified) = outcome {
                assert_eq!(verified.webhook_id, "evt_1");
                assert_eq!(verified.event_at.as_deref(), Some("2023-11-14T22:13:20Z"));
            }
        }
    }
}
