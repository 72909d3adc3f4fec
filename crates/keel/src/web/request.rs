//! A request as handlers see it, and the conventions every handler uses:
//! path and query parameters, bearer credentials, JSON bodies refused with a
//! message naming the field, and cursor pages.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::Method;
use http::header::{self, HeaderMap};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::ops::audit::Audit;
use crate::ops::idempotency::{self, IdempotencyKey};
use crate::ops::ratelimit::RateGate;

/// A request as handlers see it: body already read and bounded.
#[derive(Debug)]
pub struct ApiRequest {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub params: Vec<(String, String)>,
    pub request_id: String,
    pub client_ip: Option<IpAddr>,
    /// This request's quota; tenant calls and gated calls go through it.
    pub rate_gate: Arc<RateGate>,
}

impl ApiRequest {
    /// A path parameter declared in the route pattern.
    pub fn param(&self, name: &str) -> &str {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    }

    pub fn query_param(&self, name: &str) -> Option<String> {
        query_param(self.query.as_deref(), name)
    }

    /// The credential of an `Authorization: Bearer <token>` header.
    pub fn bearer_token(&self) -> Option<&str> {
        let value = self.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim())
            .filter(|t| !t.is_empty())
    }

    /// Parses a JSON body: 415 unless the content type is JSON, 400 naming the
    /// field (e.g. `documents[0].id`) and the problem otherwise.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        let content_type = self
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let mime = content_type.split(';').next().unwrap_or_default().trim();
        if !(mime.eq_ignore_ascii_case("application/json")
            || mime.to_ascii_lowercase().ends_with("+json"))
        {
            return Err(ApiError::unsupported_media_type());
        }
        if self.body.is_empty() {
            return Err(ApiError::bad_request(
                "invalid_json",
                "request body is empty; expected a JSON object",
            ));
        }
        let mut deserializer = serde_json::Deserializer::from_slice(&self.body);
        serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
            let path = error.path().to_string();
            let inner = error.into_inner();
            let message = if inner.is_syntax() || inner.is_eof() {
                format!("malformed JSON: {inner}")
            } else if path == "." {
                format!("invalid request body: {inner}")
            } else {
                format!("`{path}`: {inner}")
            };
            ApiError::bad_request("invalid_json", message)
        })
    }
}

impl ApiRequest {
    /// Who did it, from which request and address: stored with audited actions.
    pub fn audit(&self, actor: &str) -> Audit {
        Audit {
            actor: actor.to_owned(),
            request_id: self.request_id.clone(),
            ip: self.client_ip,
        }
    }

    /// The request's `Idempotency-Key`, if it sent one (400 when malformed).
    pub fn idempotency_key(&self) -> Result<Option<IdempotencyKey>, ApiError> {
        self.headers
            .get(idempotency::HEADER)
            .map(|key| {
                IdempotencyKey::new(key.as_bytes(), self.method.as_str(), &self.path, &self.body)
            })
            .transpose()
            .map_err(ApiError::from)
    }
}

/// Pagination shared by list routes: `?limit=` (1..=max) and an opaque `?cursor=`.
pub struct PageRequest {
    pub limit: u32,
    pub cursor: Option<String>,
}

impl ApiRequest {
    pub fn page(&self, default_limit: u32, max_limit: u32) -> Result<PageRequest, ApiError> {
        let limit = match self.query_param("limit") {
            None => default_limit,
            Some(raw) => match raw.parse::<u32>() {
                Ok(limit) if (1..=max_limit).contains(&limit) => limit,
                _ => {
                    return Err(ApiError::invalid_field(
                        "limit",
                        &format!("must be an integer between 1 and {max_limit}"),
                    ));
                }
            },
        };
        let cursor = match self.query_param("cursor").filter(|c| !c.is_empty()) {
            None => None,
            Some(raw) => Some(
                base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, raw)
                    .ok()
                    .and_then(|bytes| String::from_utf8(bytes).ok())
                    .ok_or_else(|| {
                        ApiError::invalid_field("cursor", "is not a cursor returned by this API")
                    })?,
            ),
        };
        Ok(PageRequest { limit, cursor })
    }

    /// [`ApiRequest::page`] for lists whose cursor is a row id.
    pub fn id_page(&self, default_limit: u32, max_limit: u32) -> Result<PageRequest, ApiError> {
        let page = self.page(default_limit, max_limit)?;
        if page
            .cursor
            .as_deref()
            .is_some_and(|c| c.parse::<i64>().is_err())
        {
            return Err(ApiError::invalid_field(
                "cursor",
                "is not a cursor returned by this API",
            ));
        }
        Ok(page)
    }
}

pub(super) fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    raw_query_param(query, name).map(decode_query_component)
}

/// A path parameter a platform rewrite moved into the query
/// (`/api/documents/:id` → `/api/document?id=:id`): it was a path segment,
/// so a `+` in it is a plus.
pub(super) fn rewritten_path_param(query: Option<&str>, name: &str) -> Option<String> {
    raw_query_param(query, name).map(decode_path_segment)
}

fn raw_query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (decode_query_component(key) == name).then_some(value)
    })
}

/// A query-string key or value (`application/x-www-form-urlencoded`):
/// `+` is a space there, and only there.
pub(super) fn decode_query_component(raw: &str) -> String {
    percent_decode(raw, true)
}

/// A path segment: `+` is a literal plus (RFC 3986); only `%XX` is decoded.
pub(super) fn decode_path_segment(raw: &str) -> String {
    percent_decode(raw, false)
}

fn percent_decode(raw: &str, plus_is_space: bool) -> String {
    fn hex(byte: u8) -> Option<u8> {
        (byte as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%' && i + 2 < bytes.len())
            .then(|| Some(hex(bytes[i + 1])? << 4 | hex(bytes[i + 2])?))
            .flatten();
        match (bytes[i], escaped) {
            (_, Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'+', None) if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            (byte, None) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn request_with(content_type: Option<&str>, body: &str) -> ApiRequest {
        let mut headers = HeaderMap::new();
        if let Some(content_type) = content_type {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_str(content_type).unwrap(),
            );
        }
        ApiRequest {
            method: Method::POST,
            path: "/api/search".to_owned(),
            query: None,
            headers,
            body: Bytes::from(body.to_owned()),
            params: Vec::new(),
            request_id: "r".to_owned(),
            client_ip: None,
            rate_gate: Default::default(),
        }
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Search {
        query: String,
        top_k: u8,
        filter: Option<Filter>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Filter {
        tags: Vec<String>,
    }

    #[test]
    fn json_bodies_are_refused_with_a_message_naming_the_problem() {
        let cases = [
            (
                Some("text/plain"),
                r#"{"query":"x","top_k":5}"#,
                415,
                "unsupported_media_type",
                "request body must be JSON",
                "not JSON",
            ),
            (
                None,
                r#"{"query":"x","top_k":5}"#,
                415,
                "unsupported_media_type",
                "request body must be JSON",
                "no content type",
            ),
            (
                Some("application/json"),
                "",
                400,
                "invalid_json",
                "request body is empty",
                "empty body",
            ),
            (
                Some("application/json"),
                r#"{"query":"x","#,
                400,
                "invalid_json",
                "malformed JSON: EOF while parsing",
                "truncated",
            ),
            (
                Some("application/json"),
                r#"{"query":"x","top_k":"five"}"#,
                400,
                "invalid_json",
                "`top_k`: invalid type: string \"five\", expected u8",
                "wrong type names the field",
            ),
            (
                Some("application/json"),
                r#"{"query":"x","top_k":5,"filter":{"tags":[1]}}"#,
                400,
                "invalid_json",
                "`filter.tags[0]`: invalid type: integer `1`",
                "nested path",
            ),
            (
                Some("application/json"),
                r#"{"top_k":5}"#,
                400,
                "invalid_json",
                "missing field `query`",
                "missing field",
            ),
        ];
        for (content_type, body, status, code, message, reason) in cases {
            let error = request_with(content_type, body)
                .json::<Search>()
                .unwrap_err();
            assert_eq!(error.status().as_u16(), status, "{reason}");
            assert_eq!(error.code(), code, "{reason}");
            let response = error.into_response("r");
            let json: serde_json::Value =
                serde_json::from_slice(response.body().as_full().unwrap()).unwrap();
            let text = json["error"]["message"].as_str().unwrap();
            assert!(text.contains(message), "{reason}: {text}");
        }
    }

    #[test]
    fn json_bodies_with_a_json_content_type_parse() {
        for content_type in [
            "application/json",
            "application/json; charset=utf-8",
            "application/merge-patch+json",
        ] {
            let search: Search = request_with(Some(content_type), r#"{"query":"vegan","top_k":5}"#)
                .json()
                .unwrap();
            assert_eq!(search.query, "vegan");
        }
    }

    #[test]
    fn bearer_tokens_are_read_case_insensitively() {
        let mut request = request_with(None, "");
        for (value, expected) in [
            ("Bearer abc", Some("abc")),
            ("bearer abc", Some("abc")),
            ("Basic abc", None),
            ("Bearer ", None),
        ] {
            request
                .headers
                .insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
            assert_eq!(request.bearer_token(), expected, "{value}");
        }
    }

    #[test]
    fn percent_decoding_handles_truncated_escapes() {
        for decode in [decode_query_component, decode_path_segment] {
            assert_eq!(decode("a%20b"), "a b");
            assert_eq!(decode("100%"), "100%");
            assert_eq!(decode("%zz"), "%zz");
            assert_eq!(decode("caf%C3%A9"), "café");
            assert_eq!(decode("a%2Bb"), "a+b");
        }
        assert_eq!(decode_query_component("a+b"), "a b", "form encoding");
        assert_eq!(
            decode_path_segment("a+b"),
            "a+b",
            "a path has no form encoding"
        );
    }
}
