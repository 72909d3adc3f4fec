//! Standard Webhooks signatures: `webhook-id`, `webhook-timestamp` (±5
//! minutes) and `webhook-signature: v1,<base64 HMAC-SHA256 of
//! id.timestamp.body>` (several allowed during a rotation), compared in
//! constant time.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::{Choice, ConstantTimeEq as _};

/// Standard Webhooks' replay window.
pub const TOLERANCE_SECONDS: i64 = 5 * 60;
pub(super) const SECRET_PREFIX: &str = "whsec_";

type HmacSha256 = Hmac<Sha256>;

/// Why a delivery was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// 400: a header or the body is not what the scheme requires.
    Malformed(&'static str, String),
    /// 401: the signed time (named) is outside the tolerance (a replay or a
    /// broken clock).
    Stale(&'static str),
    /// 401: the signature (named) matches no secret of the endpoint.
    Forged(&'static str),
}

const FORGED: Rejection = Rejection::Forged("webhook-signature");

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

/// At most this many entries in `webhook-signature`: a rotation lists two.
pub const MAX_SIGNATURES: usize = 8;
/// At most this many bytes of `webhook-signature` (eight entries of any
/// version fit well within it).
pub const MAX_SIGNATURE_HEADER_BYTES: usize = 2048;

/// Verifies a delivery against any of `secrets` at time `now` (Unix
/// seconds). The cost is bounded whatever the sender lists: the header is
/// refused past [`MAX_SIGNATURE_HEADER_BYTES`] or [`MAX_SIGNATURES`] entries,
/// and each secret's MAC over the body is computed once, then compared in
/// constant time with each listed `v1` signature.
pub fn verify(
    secrets: &[String],
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
        return Err(Rejection::Stale("webhook-timestamp"));
    }
    let candidates = candidates(signatures)?;
    if candidates.is_empty() {
        return Err(FORGED);
    }
    let prefix = format!("{webhook_id}.{timestamp}.");
    let matched = secrets.iter().filter_map(|s| signing_key(s)).any(|key| {
        let mut mac = hmac_with(&key);
        mac.update(prefix.as_bytes());
        mac.update(body);
        let expected = mac.finalize().into_bytes();
        // Every candidate is compared in constant time, so the time says
        // nothing about which one matched.
        let found = candidates.iter().fold(Choice::from(0), |found, candidate| {
            found | expected.as_slice().ct_eq(candidate)
        });
        bool::from(found)
    });
    if matched { Ok(()) } else { Err(FORGED) }
}

/// The `v1` signatures listed in a `webhook-signature` header, once it is
/// within the caps; entries of other versions count towards them too.
fn candidates(signatures: &str) -> Result<Vec<[u8; 32]>, Rejection> {
    if signatures.len() > MAX_SIGNATURE_HEADER_BYTES {
        return Err(Rejection::Malformed(
            "invalid_header",
            format!("webhook-signature must be at most {MAX_SIGNATURE_HEADER_BYTES} bytes"),
        ));
    }
    let entries: Vec<&str> = signatures.split_whitespace().collect();
    if entries.len() > MAX_SIGNATURES {
        return Err(Rejection::Malformed(
            "invalid_header",
            format!("webhook-signature must list at most {MAX_SIGNATURES} signatures"),
        ));
    }
    Ok(entries
        .into_iter()
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
        .filter_map(|bytes| <[u8; 32]>::try_from(bytes.as_slice()).ok())
        .collect())
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
                &[SECRET.to_owned()],
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
    fn any_of_the_endpoints_secrets_verifies_during_a_rotation() {
        let body = br#"{"type":"call.ended"}"#;
        let now = 1_700_000_000;
        let previous = "whsec_b3RoZXItc2VjcmV0LW90aGVyLXNlY3JldA==";
        let secrets = [SECRET.to_owned(), previous.to_owned()];
        for (secret, reason) in [(SECRET, "current secret"), (previous, "previous secret")] {
            let signature = sign(secret, "msg_1", now, body);
            assert_eq!(
                verify(&secrets, "msg_1", &now.to_string(), &signature, body, now),
                Ok(()),
                "{reason}"
            );
        }
        assert_eq!(
            verify(
                &[],
                "msg_1",
                &now.to_string(),
                &sign(SECRET, "msg_1", now, body),
                body,
                now
            ),
            Err(FORGED),
            "no secret, no match"
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
                Err(FORGED),
                "another endpoint's secret",
            ),
            (
                "msg_1",
                now.to_string(),
                good.clone(),
                br#"{"type":"call.started"}"#,
                Err(FORGED),
                "tampered body",
            ),
            (
                "msg_2",
                now.to_string(),
                good.clone(),
                body,
                Err(FORGED),
                "signature replayed under another id",
            ),
            (
                "msg_1",
                (now - 301).to_string(),
                sign(SECRET, "msg_1", now - 301, body),
                body,
                Err(Rejection::Stale("webhook-timestamp")),
                "a replay after 5 minutes",
            ),
            (
                "msg_1",
                (now + 301).to_string(),
                sign(SECRET, "msg_1", now + 301, body),
                body,
                Err(Rejection::Stale("webhook-timestamp")),
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
                Err(FORGED),
                "unknown scheme version",
            ),
            (
                "msg_1",
                now.to_string(),
                "v1,not-base64!".into(),
                body,
                Err(FORGED),
                "garbage signature",
            ),
            (
                "msg_1",
                now.to_string(),
                format!("{} {good}", ["v1,AAAA"; 7].join(" ")),
                body,
                Ok(()),
                "eight entries, the last authentic",
            ),
            (
                "msg_1",
                now.to_string(),
                format!("{} {good}", ["v1,"; 8].join(" ")),
                body,
                Err(Rejection::Malformed(
                    "invalid_header",
                    "webhook-signature must list at most 8 signatures".into(),
                )),
                "a ninth entry, even an authentic one",
            ),
            (
                "msg_1",
                now.to_string(),
                format!("{good} v1a,{}", "A".repeat(2048)),
                body,
                Err(Rejection::Malformed(
                    "invalid_header",
                    "webhook-signature must be at most 2048 bytes".into(),
                )),
                "a header over 2 KiB",
            ),
        ];
        for (id, timestamp, signatures, body, expected, reason) in cases {
            assert_eq!(
                verify(&[SECRET.to_owned()], id, &timestamp, &signatures, body, now),
                expected,
                "{reason}"
            );
        }
    }
}
