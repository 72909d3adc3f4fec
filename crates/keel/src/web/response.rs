//! Successful responses: JSON bodies and cursor pages.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde::Serialize;
use serde_json::{Map, Value};

use super::body::Body;
use super::error::ApiError;
use super::routing::HandlerResult;
use crate::ops::idempotency::REPLAYED_HEADER;
use crate::platform::db::Page;

/// A JSON response with the given status.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    let mut response = Response::new(Body::from(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The response of a route taking `Idempotency-Key`: a replay of an
/// earlier call's response says so in `idempotent-replayed: true`.
pub fn idempotent_response(
    status: StatusCode,
    body: &serde_json::Value,
    replayed: bool,
) -> Response<Body> {
    let mut response = json_response(status, body);
    if replayed {
        response
            .headers_mut()
            .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    }
    response
}

/// Any value as a JSON response with `status`.
pub fn json_of<T: Serialize>(status: StatusCode, body: &T) -> HandlerResult {
    let body = serde_json::to_value(body).map_err(|e| ApiError::internal(e.into()))?;
    Ok(json_response(status, &body))
}

/// A list page as every list route answers it: `{"<key>": [...],
/// "next_cursor": <opaque cursor or null>}`.
pub fn page_response<T: Serialize>(key: &str, page: Page<T>) -> HandlerResult {
    let mut body = Map::new();
    let items = serde_json::to_value(page.items).map_err(|e| ApiError::internal(e.into()))?;
    body.insert(key.to_owned(), items);
    body.insert(
        "next_cursor".to_owned(),
        page.next_cursor.as_deref().map(encode_cursor).into(),
    );
    Ok(json_response(StatusCode::OK, &Value::Object(body)))
}

/// Makes a position opaque for `next_cursor`.
pub fn encode_cursor(position: &str) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, position)
}
