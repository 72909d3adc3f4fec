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

use super::body::Body;
use super::error::ApiError;
use super::request::ApiRequest;
use super::routing::{Route, Router};
use crate::app::App;
use crate::ops::ratelimit::RateGate;
use crate::platform::config::ClientIpSource;
use crate::platform::telemetry;

/// Serves one request end to end. Adapters pass the body already read, or the
/// error reading it produced (too large, broken connection).
pub async fn handle(
    app: Arc<App>,
    router: &Router,
    request: Request<Result<Bytes, ApiError>>,
    peer: Option<IpAddr>,
) -> Response<Body> {
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
        let publishable = router
            .find(request.uri().path(), request.uri().query())
            .is_some_and(|(route, _)| route.publishable);
        let mut response = dispatch(&app, router, request, &request_id, peer).await;
        let cors = Cors {
            origin: origin.as_ref(),
            publishable,
        };
        decorate(&app, &mut response, &request_id, cors, started);

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
) -> Response<Body> {
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
    let client_ip = client_ip(app.config.client_ip_source, peer, &parts.headers);
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
        *response.body_mut() = Body::empty();
    }
    response
}

/// A preflight carries no credential, so a publishable route answers it for
/// any origin: the request itself is refused (403) unless its key lists
/// the origin.
fn preflight(app: &App, route: &Route, headers: &HeaderMap) -> Response<Body> {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let out = response.headers_mut();
    out.insert(header::VARY, HeaderValue::from_static("Origin"));
    let allowed_origin = headers
        .get(header::ORIGIN)
        .filter(|origin| route.publishable || origin_allowed(app, origin));
    if allowed_origin.is_some()
        && let Ok(methods) = HeaderValue::from_str(&route.allow_header())
    {
        out.insert(header::ACCESS_CONTROL_ALLOW_METHODS, methods);
        out.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(
                "authorization, content-type, x-request-id, idempotency-key, webhook-id, webhook-timestamp, webhook-signature, x-keel-visitor-token",
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

/// The request's `Origin`, and whether its route takes publishable keys.
struct Cors<'a> {
    origin: Option<&'a HeaderValue>,
    publishable: bool,
}

/// Headers every response carries, success or error.
fn decorate(
    app: &App,
    response: &mut Response<Body>,
    request_id: &str,
    cors: Cors<'_>,
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
    // A route serving a page (the dev server's public/ files) names what the
    // page may load; API answers load nothing.
    headers
        .entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(
            "default-src 'none'; frame-ancestors 'none'",
        ));
    if production {
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=63072000; includeSubDomains; preload"),
        );
    }
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    if !app.config.cors_origins.is_empty() || cors.publishable {
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
    }
    // Publishable routes let any origin read their answers: Keel uses no
    // cookies, so a page can only act with a key it holds, and the database
    // has already refused (403) a key used from an origin not on its list.
    if let Some(origin) = cors
        .origin
        .filter(|o| cors.publishable || origin_allowed(app, o))
    {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(
                "x-request-id, retry-after, server-timing, ratelimit-limit, ratelimit-remaining, ratelimit-reset, x-keel-visitor-token",
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

/// The client's address, taken only from whom `source` says to believe:
/// the adapter's peer (the platform's own record: Lambda's request context,
/// the local socket), Vercel's headers (which its edge overwrites), or the
/// entry of `x-forwarded-for` the outermost trusted proxy appended.
fn client_ip(source: ClientIpSource, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    match source {
        ClientIpSource::Peer => peer,
        ClientIpSource::Vercel => header("x-real-ip")
            .and_then(|v| v.trim().parse().ok())
            .or_else(|| {
                header("x-forwarded-for")?
                    .split(',')
                    .next()?
                    .trim()
                    .parse()
                    .ok()
            }),
        ClientIpSource::ForwardedFor { hops } => {
            // Several x-forwarded-for headers are one list, in order.
            let entries: Vec<&str> = headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .collect();
            let index = entries.len().checked_sub(usize::from(hops))?;
            entries[index].parse().ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_address_comes_only_from_the_configured_source() {
        let peer: Option<IpAddr> = Some("192.0.2.10".parse().unwrap());
        let alb = ClientIpSource::ForwardedFor { hops: 1 };
        let two = ClientIpSource::ForwardedFor { hops: 2 };
        type Case = (
            ClientIpSource,
            Option<IpAddr>,
            &'static [(&'static str, &'static str)],
            Option<&'static str>,
            &'static str,
        );
        let cases: [Case; 9] = [
            (
                ClientIpSource::Peer,
                peer,
                &[("x-real-ip", "198.51.100.1")],
                Some("192.0.2.10"),
                "the socket, not a header",
            ),
            (
                ClientIpSource::Peer,
                None,
                &[("x-forwarded-for", "198.51.100.1")],
                None,
                "no peer: unknown, not the header",
            ),
            (
                ClientIpSource::Vercel,
                None,
                &[("x-real-ip", "203.0.113.9")],
                Some("203.0.113.9"),
                "Vercel overwrites x-real-ip",
            ),
            (
                ClientIpSource::Vercel,
                None,
                &[("x-forwarded-for", "203.0.113.9")],
                Some("203.0.113.9"),
                "or x-forwarded-for",
            ),
            (
                alb,
                None,
                &[("x-forwarded-for", "198.51.100.1, 203.0.113.9")],
                Some("203.0.113.9"),
                "the entry the ALB appended",
            ),
            (
                alb,
                peer,
                &[
                    ("x-forwarded-for", "198.51.100.1"),
                    ("x-forwarded-for", "203.0.113.9"),
                ],
                Some("203.0.113.9"),
                "repeated headers are one list",
            ),
            (
                two,
                None,
                &[("x-forwarded-for", "198.51.100.1, 203.0.113.9, 10.0.0.5")],
                Some("203.0.113.9"),
                "CDN then ALB",
            ),
            (
                two,
                None,
                &[("x-forwarded-for", "203.0.113.9")],
                None,
                "fewer entries than trusted hops: forged or misconfigured",
            ),
            (
                alb,
                None,
                &[("x-forwarded-for", "198.51.100.1, not-an-ip")],
                None,
                "garbage where the proxy writes",
            ),
        ];
        for (source, peer, headers, expected, reason) in cases {
            let mut map = HeaderMap::new();
            for (name, value) in headers {
                map.append(*name, HeaderValue::from_static(value));
            }
            assert_eq!(
                client_ip(source, peer, &map),
                expected.map(|ip| ip.parse().unwrap()),
                "{reason}"
            );
        }
    }

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
