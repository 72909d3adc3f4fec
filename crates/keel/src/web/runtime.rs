//! Runtime adapters. A route binary calls [`run`], which builds the app once
//! per cold start and hands the shared handler ([`super::pipeline::handle`]) to
//! whichever platform is present:
//!
//! - Vercel (`VERCEL=1` or `VERCEL_IPC_PATH`): `vercel_runtime` 2.x;
//! - AWS Lambda (`AWS_LAMBDA_RUNTIME_API`): `lambda_http`, for API Gateway REST
//!   (v1), HTTP API (v2), function URLs and ALB, with the stage prefix removed;
//! - anywhere else: a plain HTTP/1.1 server on `PORT` (default 3000).
//!
//! Each adapter only converts bodies and paths; no logic lives here.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::body::Body;
use super::error::ApiError;
use super::pipeline::handle;
use super::routing::{Route, Router};
use crate::app::App;
use crate::platform::config::Config;
use crate::platform::telemetry;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    Vercel,
    Lambda,
    Local,
}

impl Platform {
    pub fn detect(var: impl Fn(&str) -> Option<String>) -> Self {
        if var("VERCEL").as_deref() == Some("1") || var("VERCEL_IPC_PATH").is_some() {
            Platform::Vercel
        } else if var("AWS_LAMBDA_RUNTIME_API").is_some() {
            Platform::Lambda
        } else {
            Platform::Local
        }
    }
}

/// The `main` of every route binary.
pub fn run(route: Route) -> ExitCode {
    serve_blocking(Router::function(route))
}

/// Builds config, telemetry and the app, then serves `router` on the detected
/// platform until it stops.
pub fn serve_blocking(router: Router) -> ExitCode {
    router.start_warm_ups();
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let app = match App::new(config) {
            Ok(app) => app,
            Err(error) => {
                eprintln!("cannot start keel: {error:#}");
                return ExitCode::FAILURE;
            }
        };
        telemetry::init(&app.config, &app.http);
        let router = Arc::new(router);
        let platform = Platform::detect(|name| std::env::var(name).ok());
        let result = match platform {
            Platform::Vercel => vercel(app, router).await,
            Platform::Lambda => lambda(app, router).await,
            Platform::Local => {
                let address = SocketAddr::from(([127, 0, 0, 1], app.config.port));
                match TcpListener::bind(address).await {
                    Ok(listener) => {
                        tracing::info!("listening on http://{address}");
                        serve_local(listener, app, router, shutdown_signal()).await;
                        Ok(())
                    }
                    Err(error) => Err(format!("cannot listen on {address}: {error}").into()),
                }
            }
        };
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                tracing::error!(%error, ?platform, "runtime stopped");
                ExitCode::FAILURE
            }
        }
    })
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How much of an oversized body is still read, and dropped, before the 413,
/// and for how long at most: clients such as Python's urllib write the whole
/// body before reading the answer, and closing on them while they upload
/// turns the 413 into a broken pipe. Past either bound the connection closes.
const DRAIN_BYTES: usize = 16 * 1024 * 1024;
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// Reads a streamed request's body up to its route's limit, then serves it.
async fn read_and_handle<B>(
    app: Arc<App>,
    router: &Router,
    request: http::Request<B>,
    peer: Option<IpAddr>,
) -> http::Response<Body>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let (parts, body) = request.into_parts();
    let limit = router.body_limit(parts.uri.path(), parts.uri.query(), &app.config);
    let body = read_body(body, limit).await;
    handle(app, router, http::Request::from_parts(parts, body), peer).await
}

/// Reads a body, refusing more than `limit` bytes without buffering them;
/// the rest of a refused body is drained (bounded) so the client reads the 413.
async fn read_body<B>(body: B, limit: usize) -> Result<Bytes, ApiError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let mut body = std::pin::pin!(body);
    let expected = usize::try_from(body.size_hint().lower()).unwrap_or(usize::MAX);
    let mut collected = BytesMut::with_capacity(expected.min(limit));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| {
            ApiError::bad_request(
                "invalid_body",
                format!("could not read the request body: {}", error.into()),
            )
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if collected.len() + data.len() > limit {
            drain(body, DRAIN_BYTES).await;
            return Err(ApiError::payload_too_large(limit));
        }
        collected.extend_from_slice(&data);
    }
    Ok(collected.freeze())
}

/// Reads and drops up to `bytes` more of `body`, for at most [`DRAIN_TIME`].
async fn drain<B>(mut body: std::pin::Pin<&mut B>, bytes: usize)
where
    B: hyper::body::Body<Data = Bytes>,
{
    let drained = async {
        let mut left = bytes;
        while let Some(Ok(frame)) = body.frame().await {
            let Ok(data) = frame.into_data() else {
                continue;
            };
            match left.checked_sub(data.len()) {
                Some(rest) => left = rest,
                None => return false,
            }
        }
        true
    };
    if !matches!(tokio::time::timeout(DRAIN_TIME, drained).await, Ok(true)) {
        tracing::debug!("stopped draining an oversized body; the connection closes");
    }
}

async fn vercel(app: Arc<App>, router: Arc<Router>) -> Result<(), BoxError> {
    let service = vercel_runtime::service_fn(move |request: vercel_runtime::Request| {
        let app = app.clone();
        let router = router.clone();
        async move {
            let response = read_and_handle(app, &router, request, None).await;
            Ok::<_, vercel_runtime::Error>(response.map(|body| {
                // Buffered and streamed bodies alike: Vercel streams what
                // the function writes (`supportsResponseStreaming`).
                vercel_runtime::ResponseBody(body.map_err(|never| match never {}).boxed())
            }))
        }
    });
    vercel_runtime::run(service).await
}

async fn lambda(app: Arc<App>, router: Arc<Router>) -> Result<(), BoxError> {
    // A streaming route's function is invoked in response-streaming mode
    // (a function URL with `InvokeMode: RESPONSE_STREAM`, or a REST API with
    // `responseTransferMode: STREAM`); every other function answers whole,
    // which every API Gateway flavour accepts.
    if router.streams() {
        let service = lambda_http::service_fn(move |request: lambda_http::Request| {
            let (app, router) = (app.clone(), router.clone());
            async move { Ok::<_, lambda_http::Error>(lambda_handle(app, &router, request).await) }
        });
        lambda_http::run_with_streaming_response(service).await
    } else {
        let service = lambda_http::service_fn(move |request: lambda_http::Request| {
            let (app, router) = (app.clone(), router.clone());
            async move {
                let response = lambda_handle(app, &router, request).await;
                Ok::<_, lambda_http::Error>(to_lambda_response(response).await)
            }
        });
        lambda_http::run(service).await
    }
}

/// Serves one Lambda event: the path without its REST API stage, the client
/// address from the request context.
async fn lambda_handle(
    app: Arc<App>,
    router: &Router,
    request: lambda_http::Request,
) -> http::Response<Body> {
    let (stage, peer) = lambda_context(&request);
    let (mut parts, body) = request.into_parts();
    let body = Bytes::from(body.to_vec());
    let path = strip_stage(parts.uri.path(), stage.as_deref());
    parts.uri = with_path(&parts.uri, &path);
    handle(
        app,
        router,
        http::Request::from_parts(parts, Ok(body)),
        peer,
    )
    .await
}

fn lambda_context(request: &lambda_http::Request) -> (Option<String>, Option<IpAddr>) {
    use lambda_http::RequestExt as _;
    use lambda_http::request::RequestContext;
    match request.request_context_ref() {
        Some(RequestContext::ApiGatewayV1(ctx)) => (
            ctx.stage.clone(),
            ctx.identity
                .source_ip
                .as_deref()
                .and_then(|ip| ip.parse().ok()),
        ),
        Some(RequestContext::ApiGatewayV2(ctx)) => (
            ctx.stage.clone(),
            ctx.http.source_ip.as_deref().and_then(|ip| ip.parse().ok()),
        ),
        // An ALB appends the address it saw to the client's own
        // x-forwarded-for: only the last entry is not the client's choice.
        Some(RequestContext::Alb(_)) => (
            None,
            request
                .headers()
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit(',').next())
                .and_then(|ip| ip.trim().parse().ok()),
        ),
        _ => (None, None),
    }
}

/// `lambda_http` prefixes REST API paths with their stage (`/prod/api/health`);
/// routes are declared without it.
pub fn strip_stage(path: &str, stage: Option<&str>) -> String {
    match stage {
        Some(stage) if !stage.is_empty() && stage != "$default" => {
            let prefix = format!("/{stage}");
            match path.strip_prefix(&prefix) {
                Some("") => "/".to_owned(),
                Some(rest) if rest.starts_with('/') => rest.to_owned(),
                _ => path.to_owned(),
            }
        }
        _ => path.to_owned(),
    }
}

fn with_path(uri: &http::Uri, path: &str) -> http::Uri {
    let path_and_query = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = path_and_query.parse().ok();
    http::Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
}

/// A whole body in the shape API Gateway expects: text for JSON and text,
/// base64-encoded binary otherwise.
async fn to_lambda_response(response: http::Response<Body>) -> http::Response<lambda_http::Body> {
    let (parts, body) = response.into_parts();
    let body = body.collect().await;
    let textual = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json") || ct.starts_with("text/"));
    let body = if body.is_empty() {
        lambda_http::Body::Empty
    } else if textual {
        match String::from_utf8(body.to_vec()) {
            Ok(text) => lambda_http::Body::Text(text),
            Err(error) => lambda_http::Body::Binary(error.into_bytes()),
        }
    } else {
        lambda_http::Body::Binary(body.to_vec())
    };
    http::Response::from_parts(parts, body)
}

/// Serves `router` over HTTP/1.1 on `listener` until `shutdown` resolves, then
/// lets in-flight requests finish.
pub async fn serve_local(
    listener: TcpListener,
    app: Arc<App>,
    router: Arc<Router>,
    shutdown: impl Future<Output = ()>,
) {
    let connections = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let app = app.clone();
        let router = router.clone();
        let service =
            hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let app = app.clone();
                let router = router.clone();
                async move {
                    let response = read_and_handle(app, &router, request, Some(peer.ip())).await;
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
        let connection = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service);
        let connection = connections.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection closed with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(std::time::Duration::from_secs(10), connections.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("gave up waiting for in-flight requests");
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_platform_is_detected_vercel_first() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(
            Platform::detect(env(&[("VERCEL", "1"), ("AWS_LAMBDA_RUNTIME_API", "x")])),
            Platform::Vercel
        );
        assert_eq!(
            Platform::detect(env(&[("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9001")])),
            Platform::Lambda
        );
        assert_eq!(Platform::detect(env(&[])), Platform::Local);
    }

    #[test]
    fn behind_an_alb_the_client_is_the_address_the_load_balancer_appended() {
        use lambda_http::aws_lambda_events::alb::AlbTargetGroupRequestContext;
        use lambda_http::request::RequestContext;
        // An ALB appends the address it saw to whatever x-forwarded-for the
        // client sent, so only the last entry is not the client's to choose.
        let request = |forwarded: Option<&str>| {
            let mut builder = http::Request::builder()
                .extension(RequestContext::Alb(AlbTargetGroupRequestContext::default()));
            if let Some(forwarded) = forwarded {
                builder = builder.header("x-forwarded-for", forwarded);
            }
            builder.body(lambda_http::Body::Empty).unwrap()
        };
        let cases = [
            (
                Some("6.6.6.6, 203.0.113.9"),
                Some("203.0.113.9"),
                "a spoofed first entry is ignored",
            ),
            (
                Some("203.0.113.9"),
                Some("203.0.113.9"),
                "no proxy before the ALB",
            ),
            (Some("6.6.6.6, not-an-ip"), None, "an unreadable last entry"),
            (None, None, "no header"),
        ];
        for (forwarded, expected, reason) in cases {
            let (stage, peer) = lambda_context(&request(forwarded));
            assert_eq!(stage, None, "{reason}");
            assert_eq!(peer, expected.map(|ip| ip.parse().unwrap()), "{reason}");
        }
    }

    #[test]
    fn the_rest_api_stage_prefix_is_removed_from_paths() {
        let cases = [
            (
                "/prod/api/health",
                Some("prod"),
                "/api/health",
                "REST API stage prefix",
            ),
            (
                "/api/health",
                Some("prod"),
                "/api/health",
                "custom domain without the stage",
            ),
            (
                "/api/health",
                Some("$default"),
                "/api/health",
                "HTTP API default stage",
            ),
            (
                "/production/api/health",
                Some("prod"),
                "/production/api/health",
                "prefix must end at a segment",
            ),
            ("/prod", Some("prod"), "/", "stage root"),
            ("/api/health", None, "/api/health", "function URL"),
        ];
        for (path, stage, expected, reason) in cases {
            assert_eq!(strip_stage(path, stage), expected, "{reason}");
        }
    }
}
