//! The request pipeline every route gets, whatever runtime carries the
//! request: request ids, routing, CORS preflights, maintenance mode, method
//! and body checks, the rate gate, panic isolation, security headers,
//! `Server-Timing`, and one log line and span per request.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use tracing::Instrument as _;

use super::error::ApiError;
use super::request::ApiRequest;
use super::routing::{Route, Router};
use crate::app::App;
use crate::ops::ratelimit::RateGate;
use crate::platform::telemetry;

/// Serves one request end to end. Adapters pass the body already read, or the
/// error reading it produced (too large, broken connection).
pub async fn handle(
    app: Arc<App>,
    router: &Router,
    request: Request<Result<Bytes, ApiError>>,
    peer: Option<IpAddr>,
) -> Response<Bytes> {
    let started = Instant::now();
    let request_id = request_id(request.headers());
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        method = %request.method(),
        path = %request.uri().path(),
        status = tracing::field::Empty,
        duration_ms = tracing::field::Empty,
    );
    async move {
        let origin = request.headers().get(header::ORIGIN).cloned();
        let mut response = dispatch(&app, router, request, &request_id, peer).await;
        decorate(&app, &mut response, &request_id, origin.as_ref(), started);

        let status = response.status().as_u16();
        let elapsed = started.elapsed();
        let duration_ms = elapsed.as_secs_f64() * 1000.0;
        let span = tracing::Span::current();
        span.record("status", status);
        span.record("duration_ms", duration_ms);
        if elapsed >= app.config.slow_request {
            tracing::warn!(status, duration_ms, "slow request");
        } else {
            tracing::info!(status, duration_ms, "request completed");
        }
        if status >= 500 {
            // A frozen or recycled instance must not lose the event.
            telemetry::flush().await;
        }
        response
    }
    .instrument(span)
    .await
}

async fn dispatch(
    app: &Arc<App>,
    router: &Router,
    request: Request<Result<Bytes, ApiError>>,
    request_id: &str,
    peer: Option<IpAddr>,
) -> Response<Bytes> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let Some((route, params)) = router.find(&path, parts.uri.query()) else {
        return ApiError::not_found(format!("no route for {path}")).into_response(request_id);
    };

    if parts.method == Method::OPTIONS {
        return preflight(app, route, &parts.headers);
    }
    if app.config.maintenance_mode && !route.exempt_from_maintenance {
        return ApiError::maintenance().into_response(request_id);
    }
    if !route.allows(&parts.method) {
        return ApiError::method_not_allowed(route.allow_header()).into_response(request_id);
    }
    let body_limit = route.body_limit.bytes(&app.config);
    let body = match body {
        Ok(body) if body.len() > body_limit => {
            return ApiError::payload_too_large(body_limit).into_response(request_id);
        }
        Ok(body) => body,
        Err(error) => return error.into_response(request_id),
    };

    let is_head = parts.method == Method::HEAD;
    // The adapter's peer is the platform's own record of the caller (Lambda's
    // request context, the local socket); on Vercel it is the proxy's headers.
    let client_ip = peer.or_else(|| client_ip(&parts.headers));
    let rate_gate = Arc::new(RateGate::new(
        route.rate_scope,
        &app.config.rate_limits,
        client_ip,
    ));
    let api_request = ApiRequest {
        method: parts.method,
        path,
        query: parts.uri.query().map(str::to_owned),
        client_ip,
        headers: parts.headers,
        body,
        params,
        request_id: request_id.to_owned(),
        rate_gate: rate_gate.clone(),
    };
    // Run the handler as its own task so a panic becomes a 500 for this
    // request instead of taking down a warm instance serving others.
    let handler = (route.handler)(app.clone(), api_request);
    let outcome = match tokio::spawn(handler.in_current_span()).await {
        Ok(result) => result,
        Err(join_error) => Err(ApiError::internal(anyhow::anyhow!(
            "handler panicked: {join_error}"
        ))),
    };
    let mut response = outcome.unwrap_or_else(|error| error.into_response(request_id));
    if let Some(quota) = rate_gate.quota() {
        quota.insert_headers(response.headers_mut());
    }
    if is_head {
        *response.body_mut() = Bytes::new();
    }
    response
}

fn preflight(app: &App, route: &Route, headers: &HeaderMap) -> Response<Bytes> {
    let mut response = Response::new(Bytes::new());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let out = response.headers_mut();
    out.insert(header::VARY, HeaderValue::from_static("Origin"));
    let allowed_origin = headers
        .get(header::ORIGIN)
        .filter(|origin| origin_allowed(app, origin));
    if allowed_origin.is_some()
        && let Ok(methods) = HeaderValue::from_str(&route.allow_header())
    {
        out.insert(header::ACCESS_CONTROL_ALLOW_METHODS, methods);
        out.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(
                "authorization, content-type, x-request-id, idempotency-key, webhook-id, webhook-timestamp, webhook-signature",
            ),
        );
        out.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
    }
    response
}

fn origin_allowed(app: &App, origin: &HeaderValue) -> bool {
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    app.config
        .cors_origins
        .iter()
        .any(|allowed| allowed == "*" || allowed.eq_ignore_ascii_case(origin))
}

/// Headers every response carries, success or error.
fn decorate(
    app: &App,
    response: &mut Response<Bytes>,
    request_id: &str,
    origin: Option<&HeaderValue>,
    started: Instant,
) {
    let production = app.config.is_production();
    let headers = response.headers_mut();
    if let Ok(id) = HeaderValue::from_str(request_id) {
        headers.insert(HeaderName::from_static("x-request-id"), id);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
    );
    if production {
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=63072000; includeSubDomains; preload"),
        );
    }
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    if !app.config.cors_origins.is_empty() {
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
    }
    if let Some(origin) = origin.filter(|o| origin_allowed(app, o)) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(
                "x-request-id, retry-after, server-timing, ratelimit-limit, ratelimit-remaining, ratelimit-reset",
            ),
        );
    }
    let timing = format!("app;dur={:.1}", started.elapsed().as_secs_f64() * 1000.0);
    if let Ok(timing) = HeaderValue::from_str(&timing) {
        headers.insert(HeaderName::from_static("server-timing"), timing);
    }
}

/// Honours a caller's `x-request-id` (or Vercel's `x-vercel-id`) when it is a
/// sane token, else makes a new one.
fn request_id(headers: &HeaderMap) -> String {
    ["x-request-id", "x-vercel-id"]
        .iter()
        .filter_map(|name| headers.get(*name)?.to_str().ok())
        .map(str::trim)
        .find(|id| {
            !id.is_empty()
                && id.len() <= 128
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string())
}

/// The client address as Vercel's proxy reports it: `x-real-ip`, else the
/// first `x-forwarded-for` entry (Vercel overwrites both, so clients cannot
/// spoof them there; other platforms pass the peer instead).
fn client_ip(headers: &HeaderMap) -> Option<IpAddr> {
    if let Some(ip) = headers
        .get("x-real-ip")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
    {
        return Some(ip);
    }
    let forwarded = headers.get("x-forwarded-for")?.to_str().ok()?;
    forwarded.split(',').next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_honoured_only_when_sane() {
        let mut headers = HeaderMap::new();
        headers.insert("x-request-id", HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&headers), "abc-123");
        headers.insert("x-request-id", HeaderValue::from_static("<script>"));
        headers.insert(
            "x-vercel-id",
            HeaderValue::from_static("fra1::iad1::x7k2-1700000000000-abc"),
        );
        assert_eq!(request_id(&headers), "fra1::iad1::x7k2-1700000000000-abc");
        assert_eq!(request_id(&HeaderMap::new()).len(), 36);
    }
}
