//! Successful responses: JSON bodies and cursor pages.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde::Serialize;

use super::body::Body;
use super::error::ApiError;
use super::routing::HandlerResult;
use crate::ops::idempotency::REPLAYED_HEADER;

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
pub fn idempotent_response<T: Serialize>(
    status: StatusCode,
    body: &T,
    replayed: bool,
) -> HandlerResult {
    let mut response = json_of(status, body)?;
    if replayed {
        response
            .headers_mut()
            .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// Any value as a JSON response with `status`.
pub fn json_of<T: Serialize>(status: StatusCode, body: &T) -> HandlerResult {
    let body = serde_json::to_value(body).map_err(|e| ApiError::internal(e.into()))?;
    Ok(json_response(status, &body))
}

/// Declares a list route's response type, `{"<items>": [...],
/// "next_cursor": <opaque cursor or null>}`, built from a database
/// [`Page`](crate::platform::db::Page)
/// with `From`: `list_page!(TenantList, tenants, Tenant);`.
macro_rules! list_page {
    ($name:ident, $items:ident, $item:ty) => {
        #[derive(serde::Serialize, utoipa::ToSchema)]
        pub struct $name {
            pub $items: Vec<$item>,
            /// Opaque: pass it as `?cursor=` for the next page; `null` on the last page.
            pub next_cursor: Option<String>,
        }

        impl From<$crate::platform::db::Page<$item>> for $name {
            fn from(page: $crate::platform::db::Page<$item>) -> Self {
                Self {
                    next_cursor: page
                        .next_cursor
                        .as_deref()
                        .map($crate::web::response::encode_cursor),
                    $items: page.items,
                }
            }
        }
    };
}
pub(crate) use list_page;

/// Makes a position opaque for `next_cursor`.
pub fn encode_cursor(position: &str) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, position)
}
