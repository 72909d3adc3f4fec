//! Twilio: `X-Twilio-Signature` = base64 HMAC-SHA1 under the auth token of
//! the full public URL followed by each POST parameter, sorted by key, as
//! key + value (a repeated key's distinct values sorted). A JSON body is
//! signed through the URL instead: its query carries `bodySHA256`, the hex
//! SHA-256 of the body, and no parameters are appended. As twilio-python's
//! `RequestValidator`, the URL verifies with and without its port (`:443`).
//! Deduplicated by `MessageSid`/`CallSid` + status; Twilio signs no time.

use std::collections::BTreeMap;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha1::Sha1;
use sha2::Sha256;
use subtle::ConstantTimeEq as _;

use super::{Delivery, Rejection, Verified, body_digest, header, json_body, optional_header};

const SIGNATURE_HEADER: &str = "x-twilio-signature";

/// The sorted parameters of a form body: each key once, its distinct values sorted.
type Params = BTreeMap<String, Vec<String>>;

pub fn verify(secrets: &[String], delivery: &Delivery) -> Result<Verified, Rejection> {
    let signature = header(delivery.headers, SIGNATURE_HEADER)?;
    let presented = base64::engine::general_purpose::STANDARD
        .decode(signature.trim())
        .map_err(|_| Rejection::Forged("X-Twilio-Signature"))?;
    let url = delivery.public_url.ok_or_else(|| {
        // Checked when the endpoint is made; here only if the setting was
        // removed since.
        Rejection::Malformed(
            "not_configured",
            "this deployment has no PUBLIC_BASE_URL, which Twilio signatures need".into(),
        )
    })?;
    let body_hash = query_value(delivery.query, "bodySHA256");
    let (params, payload) = match &body_hash {
        Some(expected) => {
            let matches: bool = body_digest(delivery.body)
                .as_bytes()
                .ct_eq(expected.as_bytes())
                .into();
            if !matches {
                return Err(Rejection::Forged("X-Twilio-Signature"));
            }
            (Params::new(), json_body(delivery.body)?)
        }
        None => {
            let params = form_params(delivery.body);
            let payload = params_json(&params);
            (params, payload)
        }
    };
    let algorithm = algorithm(delivery)?;
    let urls = signed_urls(url);
    let authentic = urls.iter().any(|url| {
        secrets.iter().any(|token| {
            let expected = twilio_signature_bytes(algorithm, token, url, &params);
            bool::from(expected.as_slice().ct_eq(&presented))
        })
    });
    if !authentic {
        return Err(Rejection::Forged("X-Twilio-Signature"));
    }
    Ok(name_event(payload, delivery))
}

/// The dedupe key and event type: a message's or call's sid and status.
fn name_event(payload: Value, delivery: &Delivery) -> Verified {
    let field = |name: &str| payload.get(name).and_then(Value::as_str).map(str::to_owned);
    let message = field("MessageSid").or_else(|| field("SmsSid"));
    let (kind, sid, status) = match (message, field("CallSid")) {
        (Some(sid), _) => (
            "message",
            Some(sid),
            field("MessageStatus").or_else(|| field("SmsStatus")),
        ),
        (None, Some(sid)) => ("call", Some(sid), field("CallStatus")),
        (None, None) => ("event", None, None),
    };
    let status = status.unwrap_or_else(|| "received".to_owned());
    let event_type = match (kind, payload.get("type").and_then(Value::as_str)) {
        ("event", Some(own)) => own.chars().take(200).collect(),
        ("event", None) => "twilio.event".to_owned(),
        _ => format!("{kind}.{}", status.to_ascii_lowercase()),
    };
    let webhook_id = match sid {
        Some(sid) => format!("{sid}:{status}"),
        None => body_digest(delivery.body),
    }
    .chars()
    .take(256)
    .collect();
    Verified {
        webhook_id,
        event_type,
        payload,
        event_at: None,
    }
}

/// The URLs Twilio may have signed for `url`: as written without its port,
/// and with its port (the scheme's default when none is written), as
/// twilio-python's `remove_port` and `add_port` make them.
pub fn signed_urls(url: &str) -> [String; 2] {
    let Some((scheme, rest)) = url.split_once("://") else {
        return [url.to_owned(), url.to_owned()];
    };
    let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(split);
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !port.is_empty() => {
            (host, Some(port))
        }
        _ => (authority, None),
    };
    let default_port = if scheme.eq_ignore_ascii_case("https") {
        "443"
    } else {
        "80"
    };
    [
        format!("{scheme}://{host}{tail}"),
        format!("{scheme}://{host}:{}{tail}", port.unwrap_or(default_port)),
    ]
}

/// The MAC Twilio signs with: HMAC-SHA1 under the auth token, unless the
/// delivery names a SharedKey's algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    HmacSha1,
    HmacSha256,
}

/// `algorithm=` of `X-Twilio-Webhooks-Signature-Settings`; HMAC-SHA1 when
/// absent, and refused when Twilio names one this version does not know
/// (as the SDK fails validation).
fn algorithm(delivery: &Delivery) -> Result<Algorithm, Rejection> {
    let settings =
        optional_header(delivery.headers, "x-twilio-webhooks-signature-settings")?.unwrap_or("");
    let named = settings.split(',').find_map(|part| {
        let (name, value) = part.split_once('=')?;
        (name.trim() == "algorithm" && !value.trim().is_empty()).then(|| value.trim())
    });
    match named.map(str::to_ascii_uppercase).as_deref() {
        None | Some("HMAC_SHA1") => Ok(Algorithm::HmacSha1),
        Some("HMAC_SHA256") => Ok(Algorithm::HmacSha256),
        Some(_) => Err(Rejection::Forged("X-Twilio-Signature")),
    }
}

fn twilio_signature_bytes(
    algorithm: Algorithm,
    token: &str,
    url: &str,
    params: &Params,
) -> Vec<u8> {
    fn sign<M: Mac + hmac::digest::KeyInit>(token: &str, url: &str, params: &Params) -> Vec<u8> {
        let mut mac = <M as hmac::digest::KeyInit>::new_from_slice(token.as_bytes())
            .expect("HMAC takes any key length");
        mac.update(url.as_bytes());
        for (key, values) in params {
            for value in values {
                mac.update(key.as_bytes());
                mac.update(value.as_bytes());
            }
        }
        mac.finalize().into_bytes().to_vec()
    }
    match algorithm {
        Algorithm::HmacSha1 => sign::<Hmac<Sha1>>(token, url, params),
        Algorithm::HmacSha256 => sign::<Hmac<Sha256>>(token, url, params),
    }
}

/// `X-Twilio-Signature` for a form post of `params` to `url`, as Twilio
/// computes it.
pub fn twilio_signature(
    algorithm: Algorithm,
    token: &str,
    url: &str,
    params: &[(&str, &str)],
) -> String {
    let params = sorted_params(
        params
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned())),
    );
    base64::engine::general_purpose::STANDARD
        .encode(twilio_signature_bytes(algorithm, token, url, &params))
}

fn form_params(body: &[u8]) -> Params {
    sorted_params(
        url::form_urlencoded::parse(body)
            .map(|(key, value)| (key.into_owned(), value.into_owned())),
    )
}

/// Each key once, with its distinct values sorted, as Twilio signs them.
fn sorted_params(pairs: impl Iterator<Item = (String, String)>) -> Params {
    let mut params = Params::new();
    for (key, value) in pairs {
        params.entry(key).or_default().push(value);
    }
    for values in params.values_mut() {
        values.sort();
        values.dedup();
    }
    params
}

/// The form as JSON: a key once → its value, a repeated key → its values.
fn params_json(params: &Params) -> Value {
    let object: Map<String, Value> = params
        .iter()
        .map(|(key, values)| {
            let value = match values.as_slice() {
                [one] => Value::String(one.clone()),
                many => Value::Array(many.iter().cloned().map(Value::String).collect()),
            };
            (key.clone(), value)
        })
        .collect();
    Value::Object(object)
}

fn query_value(query: Option<&str>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

#[cfg(test)]
mod tests {
    use http::HeaderMap;

    use super::*;

    const TOKEN: &str = "12345";
    const URL: &str = "https://mycompany.com/myapp.php?foo=1&bar=2";
    const PARAMS: [(&str, &str); 5] = [
        ("CallSid", "CA1234567890ABCDE"),
        ("Caller", "+14158675309"),
        ("Digits", "1234"),
        ("From", "+14158675309"),
        ("To", "+18005551212"),
    ];

    #[test]
    fn twilios_published_example_signature() {
        // twilio-python tests/unit/test_request_validator.py
        assert_eq!(
            twilio_signature(Algorithm::HmacSha1, TOKEN, URL, &PARAMS),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        );
        assert_eq!(
            twilio_signature(
                Algorithm::HmacSha1,
                TOKEN,
                "https://mycompany.com:443/myapp.php?foo=1&bar=2",
                &PARAMS
            ),
            "kvajT1Ptam85bY51eRf/AJRuM3w="
        );
    }

    fn delivery<'a>(headers: &'a HeaderMap, body: &'a [u8], url: &'a str) -> Delivery<'a> {
        Delivery {
            headers,
            body,
            query: url.split_once('?').map(|(_, q)| q),
            public_url: Some(url),
            now: 0,
        }
    }

    #[test]
    fn the_example_verifies_with_or_without_the_port() {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(PARAMS)
            .finish();
        for (signature, url, reason) in [
            (
                "RSOYDt4T1cUTdK1PDd93/VVr8B8=",
                URL,
                "signed and configured without a port",
            ),
            (
                "kvajT1Ptam85bY51eRf/AJRuM3w=",
                URL,
                "signed with :443, configured without",
            ),
            (
                "RSOYDt4T1cUTdK1PDd93/VVr8B8=",
                "https://mycompany.com:443/myapp.php?foo=1&bar=2",
                "signed without, configured with :443",
            ),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(SIGNATURE_HEADER, signature.parse().unwrap());
            let verified = verify(
                &[TOKEN.to_owned()],
                &delivery(&headers, body.as_bytes(), url),
            )
            .unwrap_or_else(|e| panic!("{reason}: {e:?}"));
            assert_eq!(verified.webhook_id, "CA1234567890ABCDE:received");
            assert_eq!(verified.event_type, "call.received");
            assert_eq!(verified.payload["Digits"], "1234");
        }
    }

    #[test]
    fn a_json_body_is_signed_through_its_hash_in_the_url() {
        let body = br#"{"MessageSid":"SM1","MessageStatus":"delivered"}"#;
        let url = format!(
            "https://keel.example/api/webhooks/x?bodySHA256={}",
            body_digest(body)
        );
        let mut headers = HeaderMap::new();
        headers.insert(
            SIGNATURE_HEADER,
            twilio_signature(Algorithm::HmacSha1, TOKEN, &url, &[])
                .parse()
                .unwrap(),
        );
        let verified = verify(&[TOKEN.to_owned()], &delivery(&headers, body, &url)).unwrap();
        assert_eq!(verified.event_type, "message.delivered");
        assert_eq!(
            verify(
                &[TOKEN.to_owned()],
                &delivery(
                    &headers,
                    br#"{"MessageSid":"SM2","MessageStatus":"delivered"}"#,
                    &url
                )
            ),
            Err(Rejection::Forged("X-Twilio-Signature")),
            "another body under the signed hash"
        );
    }

    #[test]
    fn a_shared_key_delivery_is_verified_with_the_algorithm_it_names() {
        let body = "MessageSid=SM1&SmsStatus=received&Body=hi";
        let params = [
            ("MessageSid", "SM1"),
            ("SmsStatus", "received"),
            ("Body", "hi"),
        ];
        // (settings header, signed with, accepted, reason)
        let cases = [
            (
                "key=webhooks_sharedkey_1,algorithm=HMAC_SHA256",
                Algorithm::HmacSha256,
                true,
                "SHA-256 as named",
            ),
            (
                "key=webhooks_sharedkey_1,algorithm=HMAC_SHA256",
                Algorithm::HmacSha1,
                false,
                "SHA-1 where SHA-256 is named",
            ),
            (
                "key=webhooks_sharedkey_1",
                Algorithm::HmacSha1,
                true,
                "no algorithm: the legacy SHA-1",
            ),
            (
                "key=webhooks_sharedkey_1,algorithm=HMAC_SHA512",
                Algorithm::HmacSha256,
                false,
                "an algorithm Keel does not know",
            ),
        ];
        for (settings, algorithm, accepted, reason) in cases {
            let mut headers = HeaderMap::new();
            headers.insert(
                "x-twilio-webhooks-signature-settings",
                settings.parse().unwrap(),
            );
            headers.insert(
                SIGNATURE_HEADER,
                twilio_signature(algorithm, TOKEN, URL, &params)
                    .parse()
                    .unwrap(),
            );
            let outcome = verify(
                &[TOKEN.to_owned()],
                &delivery(&headers, body.as_bytes(), URL),
            );
            assert_eq!(outcome.is_ok(), accepted, "{reason}: {outcome:?}");
        }
    }

    #[test]
    fn repeated_keys_sign_their_sorted_distinct_values() {
        assert_eq!(
            twilio_signature(
                Algorithm::HmacSha1,
                TOKEN,
                URL,
                &[("Media", "b"), ("Media", "a"), ("Media", "b")]
            ),
            twilio_signature(
                Algorithm::HmacSha1,
                TOKEN,
                URL,
                &[("Media", "a"), ("Media", "b")]
            ),
        );
        assert_eq!(
            form_params(b"Media=b&Media=a&Media=b")["Media"],
            vec!["a".to_owned(), "b".to_owned()]
        );
    }
}
