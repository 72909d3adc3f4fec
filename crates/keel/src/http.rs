//! HTTP conventions every route gets for free, whatever runtime carries the
//! request: routing by path pattern, request ids, maintenance mode, CORS,
//! method and body checks, JSON parsing that names the offending field,
//! security headers, `Server-Timing`, one log line and span per request, and
//! panic isolation. Handlers are written once against `http` types.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use serde::de::DeserializeOwned;
use tracing::Instrument as _;

use crate::app::App;
use crate::error::ApiError;
use crate::ratelimit::{RateGate, Scope};

pub type HandlerResult = Result<Response<Bytes>, ApiError>;
pub type HandlerFuture = Pin<Box<dyn Future<Output = HandlerResult> + Send>>;
pub type Handler = fn(Arc<App>, ApiRequest) -> HandlerFuture;

/// One route: a path pattern such as `/api/tenants/{slug}/keys`, the methods
/// it answers, and its handler.
#[derive(Clone)]
pub struct Route {
    pub path: &'static str,
    pub methods: &'static [Method],
    pub handler: Handler,
    /// Liveness must answer even in maintenance mode.
    pub exempt_from_maintenance: bool,
    /// The quota requests to this route draw from (none: not limited).
    pub rate_scope: Option<Scope>,
}

impl Route {
    pub const fn new(path: &'static str, methods: &'static [Method], handler: Handler) -> Self {
        Self {
            path,
            methods,
            handler,
            exempt_from_maintenance: false,
            rate_scope: None,
        }
    }

    pub const fn rate_limited(mut self, scope: Scope) -> Self {
        self.rate_scope = Some(scope);
        self
    }

    pub const fn exempt_from_maintenance(mut self) -> Self {
        self.exempt_from_maintenance = true;
        self
    }

    fn allows(&self, method: &Method) -> bool {
        self.methods.contains(method)
            || (method == Method::HEAD && self.methods.contains(&Method::GET))
    }

    fn allow_header(&self) -> String {
        let mut methods: Vec<&str> = self.methods.iter().map(Method::as_str).collect();
        methods.push("OPTIONS");
        methods.join(", ")
    }

    /// Matches `path` segment by segment; `{name}` captures one segment.
    fn match_path(&self, path: &str) -> Option<Vec<(String, String)>> {
        let mut params = Vec::new();
        let mut pattern = self.path.trim_end_matches('/').split('/');
        let mut actual = path.trim_end_matches('/').split('/');
        loop {
            match (pattern.next(), actual.next()) {
                (None, None) => return Some(params),
                (Some(p), Some(a)) if p.starts_with('{') && p.ends_with('}') && !a.is_empty() => {
                    params.push((p[1..p.len() - 1].to_owned(), percent_decode(a)));
                }
                (Some(p), Some(a)) if p == a => {}
                _ => return None,
            }
        }
    }
}

/// The routes one process serves: every route (dev server) or one route (a
/// deployed function).
pub struct Router {
    routes: Vec<Route>,
    /// A deployed function answers for its one route whatever path the
    /// platform forwards (rewrites may pass path parameters as query string).
    single_function: bool,
}

impl Router {
    pub fn all(routes: Vec<Route>) -> Self {
        Self {
            routes,
            single_function: false,
        }
    }

    pub fn function(route: Route) -> Self {
        Self {
            routes: vec![route],
            single_function: true,
        }
    }

    fn find(&self, path: &str, query: Option<&str>) -> Option<(&Route, Vec<(String, String)>)> {
        if let Some(found) = self
            .routes
            .iter()
            .find_map(|route| route.match_path(path).map(|params| (route, params)))
        {
            return Some(found);
        }
        if self.single_function {
            let route = &self.routes[0];
            let params = pattern_params(route.path)
                .filter_map(|name| query_param(query, name).map(|value| (name.to_owned(), value)))
                .collect();
            return Some((route, params));
        }
        None
    }
}

fn pattern_params(pattern: &str) -> impl Iterator<Item = &str> {
    pattern
        .split('/')
        .filter(|s| s.starts_with('{') && s.ends_with('}'))
        .map(|s| &s[1..s.len() - 1])
}

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
    pub fn audit(&self, actor: &str) -> serde_json::Value {
        serde_json::json!({
            "actor": actor,
            "request_id": self.request_id,
            "ip": self.client_ip.map(|ip| ip.to_string()),
        })
    }
}

/// Pagination shared by list routes: `?limit=` (1..=max) and an opaque `?cursor=`.
pub struct Page {
    pub limit: u32,
    pub cursor: Option<String>,
}

impl ApiRequest {
    pub fn page(&self, default_limit: u32, max_limit: u32) -> Result<Page, ApiError> {
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
        Ok(Page { limit, cursor })
    }

    /// [`ApiRequest::page`] for lists whose cursor is a row id.
    pub fn id_page(&self, default_limit: u32, max_limit: u32) -> Result<Page, ApiError> {
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

/// Makes a position opaque for `next_cursor`.
pub fn encode_cursor(position: &str) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, position)
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(key) == name).then(|| percent_decode(value))
    })
}

fn percent_decode(raw: &str) -> String {
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
            (b'+', None) => {
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

/// A JSON response with the given status.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Bytes> {
    let mut response = Response::new(Bytes::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

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
            crate::telemetry::flush().await;
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
    let body = match body {
        Ok(body) if body.len() > app.config.max_body_bytes => {
            return ApiError::payload_too_large(app.config.max_body_bytes)
                .into_response(request_id);
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

    fn noop(_: Arc<App>, _: ApiRequest) -> HandlerFuture {
        Box::pin(async { Ok(Response::new(Bytes::new())) })
    }

    #[test]
    fn path_patterns_capture_segments_and_decode_them() {
        let route = Route::new("/api/tenants/{slug}/keys", &[Method::POST], noop);
        assert_eq!(
            route.match_path("/api/tenants/joe%27s-diner/keys"),
            Some(vec![("slug".to_owned(), "joe's-diner".to_owned())])
        );
        assert_eq!(route.match_path("/api/tenants//keys"), None);
        assert_eq!(route.match_path("/api/tenants/a/keys/extra"), None);
        assert!(route.match_path("/api/tenants/a/keys/").is_some());
    }

    #[test]
    fn a_function_takes_path_parameters_from_the_query_when_rewritten() {
        let router = Router::function(Route::new(
            "/api/tenants/{slug}/keys",
            &[Method::POST],
            noop,
        ));
        let (_, params) = router
            .find("/api/tenant-keys", Some("slug=acme&x=1"))
            .unwrap();
        assert_eq!(params, vec![("slug".to_owned(), "acme".to_owned())]);
        let all = Router::all(vec![Route::new("/api/health", &[Method::GET], noop)]);
        assert!(all.find("/api/nope", None).is_none());
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
            let json: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
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
        assert_eq!(percent_decode("a%20b"), "a b");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("caf%C3%A9"), "café");
    }
}
