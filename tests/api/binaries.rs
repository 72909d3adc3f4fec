//! The real route binaries, started as processes the way each platform
//! starts them: locally on PORT, under Vercel's runtime, and under a Lambda
//! Runtime API (the documented protocol, served on loopback).

use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::helpers::TestDatabase;
use crate::support::serve_http;

const HEALTH_BIN: &str = env!("CARGO_BIN_EXE_health");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn health_binary(db: &TestDatabase, envs: &[(&str, String)]) -> Child {
    route_binary(HEALTH_BIN, db, envs)
}

fn route_binary(binary: &str, db: &TestDatabase, envs: &[(&str, String)]) -> Child {
    let mut command = Command::new(binary);
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &db.url)
        .current_dir(std::env::temp_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (key, value) in envs {
        command.env(key, value);
    }
    command.spawn().expect("route binary starts")
}

async fn get_when_up(url: &str, request_id: &str) -> reqwest::Response {
    keel::platform::tls::tls_config();
    let client = reqwest::Client::new();
    for _ in 0..100 {
        if let Ok(response) = client
            .get(url)
            .header("x-request-id", request_id)
            .send()
            .await
        {
            return response;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{url} never answered");
}

#[tokio::test]
async fn a_route_binary_serves_locally_on_port_and_logs_json_lines_with_the_request_id() {
    let db = TestDatabase::migrated().await;
    let port = free_port();
    let mut child = health_binary(
        &db,
        &[
            ("PORT", port.to_string()),
            ("ENVIRONMENT", "preview".into()),
            ("SLOW_REQUEST_MS", "0".into()),
            ("LOG_LEVEL", "info".into()),
        ],
    );

    let response = get_when_up(
        &format!("http://127.0.0.1:{port}/api/health"),
        "log-check-7",
    )
    .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["environment"], "preview");

    // With SLOW_REQUEST_MS=0 every request is slow: a WARN line with the span fields.
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("log-check-7") {
                return line;
            }
        }
        panic!("stdout closed before the request was logged");
    })
    .await
    .expect("request log line");
    let log: Value = serde_json::from_str(&line).expect("log lines are JSON in preview");
    assert_eq!(log["level"], "WARN");
    assert_eq!(log["message"], "slow request");
    assert_eq!(log["status"], 200);
    assert!(log["duration_ms"].is_number());
    assert_eq!(log["span"]["request_id"], "log-check-7");
    assert_eq!(log["span"]["method"], "GET");
    assert_eq!(log["span"]["path"], "/api/health");
}

#[tokio::test]
async fn a_route_binary_refuses_to_start_listing_every_configuration_problem() {
    let db = TestDatabase::migrated().await;
    let child = health_binary(
        &db,
        &[
            ("ENVIRONMENT", "staging".into()),
            ("ENCRYPTION_KEY", "short".into()),
            ("OPENAI_API_KEY", "nope".into()),
        ],
    );

    let output = child.wait_with_output().await.unwrap();

    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    for variable in ["ENVIRONMENT", "ENCRYPTION_KEY", "OPENAI_API_KEY"] {
        assert!(
            stderr.contains(&format!("{variable}: ")),
            "{variable} missing from: {stderr}"
        );
    }
}

#[tokio::test]
async fn a_route_binary_runs_under_the_vercel_runtime() {
    let db = TestDatabase::migrated().await;
    let port = free_port();
    let _child = health_binary(
        &db,
        &[
            ("VERCEL", "1".into()),
            ("VERCEL_DEV_PORT", port.to_string()),
            ("VERCEL_ENV", "preview".into()),
        ],
    );

    let response = get_when_up(&format!("http://127.0.0.1:{port}/api/health"), "vercel-1").await;

    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-request-id"], "vercel-1");
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["environment"], "preview",
        "ENVIRONMENT defaults from VERCEL_ENV"
    );
}

/// The Lambda Runtime API: hands out queued events, records responses.
#[derive(Clone, Default)]
struct RuntimeApi {
    events: Arc<Mutex<VecDeque<(String, Value)>>>,
    responses: Arc<Mutex<Vec<(String, Value)>>>,
}

impl RuntimeApi {
    async fn handle(self, request: Request<Bytes>) -> Response<Bytes> {
        let path = request.uri().path().to_owned();
        if path == "/2018-06-01/runtime/invocation/next" {
            loop {
                let next = self.events.lock().unwrap().pop_front();
                if let Some((id, event)) = next {
                    let deadline = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_millis()
                        + 30_000;
                    return Response::builder()
                        .header("lambda-runtime-aws-request-id", id)
                        .header("lambda-runtime-deadline-ms", deadline.to_string())
                        .header(
                            "lambda-runtime-invoked-function-arn",
                            "arn:aws:lambda:eu-west-1:123456789012:function:health",
                        )
                        .header(
                            "lambda-runtime-trace-id",
                            "Root=1-5759e988-bd862e3fe1be46a994272793",
                        )
                        .header("content-type", "application/json")
                        .body(Bytes::from(event.to_string()))
                        .unwrap();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let id = path
            .strip_prefix("/2018-06-01/runtime/invocation/")
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_default()
            .to_owned();
        let body: Value = serde_json::from_slice(request.body()).unwrap_or(Value::Null);
        self.responses
            .lock()
            .unwrap()
            .push((format!("{id}:{}", path.rsplit('/').next().unwrap()), body));
        Response::builder()
            .status(StatusCode::ACCEPTED)
            .body(Bytes::new())
            .unwrap()
    }
}

fn rest_v1_event(stage: &str, path: &str) -> Value {
    json!({
        "resource": "/{proxy+}",
        "path": path,
        "httpMethod": "GET",
        "headers": {"x-request-id": "lambda-v1", "x-forwarded-for": "203.0.113.9"},
        "multiValueHeaders": {"x-request-id": ["lambda-v1"], "x-forwarded-for": ["203.0.113.9"]},
        "queryStringParameters": null,
        "multiValueQueryStringParameters": null,
        "pathParameters": {"proxy": path.trim_start_matches('/')},
        "stageVariables": null,
        "requestContext": {
            "accountId": "123456789012", "resourceId": "abc123", "stage": stage,
            "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef", "resourcePath": "/{proxy+}",
            "httpMethod": "GET", "apiId": "1234567890", "path": format!("/{stage}{path}"),
            "identity": {"sourceIp": "203.0.113.9", "userAgent": "curl/8"}
        },
        "body": null,
        "isBase64Encoded": false
    })
}

fn http_v2_event(stage: &str, raw_path: &str, request_id: &str) -> Value {
    json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": raw_path,
        "rawQueryString": "",
        "headers": {"x-request-id": request_id, "user-agent": "curl/8"},
        "requestContext": {
            "accountId": "123456789012", "apiId": "api-id", "domainName": "id.execute-api.eu-west-1.amazonaws.com",
            "domainPrefix": "id", "requestId": "id", "routeKey": "$default", "stage": stage,
            "time": "12/Mar/2020:19:03:58 +0000", "timeEpoch": 1583348638390i64,
            "http": {"method": "GET", "path": raw_path, "protocol": "HTTP/1.1", "sourceIp": "203.0.113.9", "userAgent": "curl/8"}
        },
        "isBase64Encoded": false
    })
}

#[tokio::test]
async fn a_route_binary_answers_rest_http_api_and_function_url_events_on_lambda() {
    let db = TestDatabase::migrated().await;
    let runtime = RuntimeApi::default();
    runtime.events.lock().unwrap().extend([
        ("rest-v1".to_owned(), rest_v1_event("prod", "/api/health")),
        (
            "http-v2".to_owned(),
            http_v2_event("prod", "/prod/api/health", "lambda-v2"),
        ),
        (
            "function-url".to_owned(),
            http_v2_event("$default", "/api/health", "lambda-url"),
        ),
        (
            "unknown-path".to_owned(),
            http_v2_event("$default", "/api/elsewhere", "lambda-404"),
        ),
    ]);
    let api = runtime.clone();
    let address = serve_http(move |request| api.clone().handle(request)).await;
    let _child = health_binary(
        &db,
        &[
            ("AWS_LAMBDA_RUNTIME_API", address.to_string()),
            ("AWS_LAMBDA_FUNCTION_NAME", "health".into()),
            ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".into()),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128".into()),
            ("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/health".into()),
            ("AWS_LAMBDA_LOG_STREAM_NAME", "stream".into()),
        ],
    );

    let responses = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if runtime.responses.lock().unwrap().len() >= 4 {
                return runtime.responses.lock().unwrap().clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the function answered every event");

    for (id, request_id) in [
        ("rest-v1", "lambda-v1"),
        ("http-v2", "lambda-v2"),
        ("function-url", "lambda-url"),
    ] {
        let (_, response) = responses
            .iter()
            .find(|(key, _)| key == &format!("{id}:response"))
            .unwrap_or_else(|| panic!("no response to {id}: {responses:?}"));
        assert_eq!(response["statusCode"], 200, "{id}: {response}");
        let body: Value = serde_json::from_str(response["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["status"], "healthy", "{id}");
        assert_eq!(
            response["isBase64Encoded"], false,
            "{id}: JSON goes back as text"
        );
        // REST (v1) answers carry multiValueHeaders, HTTP API (v2) plain headers.
        let request_id_header = response["headers"]["x-request-id"]
            .as_str()
            .or(response["multiValueHeaders"]["x-request-id"][0].as_str());
        assert_eq!(request_id_header, Some(request_id), "{id}: {response}");
    }
    // A deployed function answers for its one route whatever path arrives.
    let (_, other) = responses
        .iter()
        .find(|(key, _)| key == "unknown-path:response")
        .unwrap();
    assert_eq!(other["statusCode"], 200);
}

/// `HTTP_PROXY` in a function's environment (set by a platform, a layer, or
/// an attacker who can set one variable) must not route tenant pulls
/// through a proxy that resolves and reaches what the SSRF guard refused.
#[tokio::test]
async fn pulls_never_go_through_a_proxy_named_in_the_environment() {
    let app = crate::helpers::spawn_app_with(|_, vars| {
        vars.insert("ALLOW_PRIVATE_PULL_URLS".into(), "true".into());
    })
    .await;
    let key = app.create_tenant("shop").await;
    let pulled = Arc::new(Mutex::new(0));
    let counter = pulled.clone();
    let pull = serve_http(move |_| {
        *counter.lock().unwrap() += 1;
        async { crate::support::json_reply(StatusCode::OK, json!({"events": []})) }
    })
    .await;
    let proxied = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = proxied.clone();
    let proxy = serve_http(move |request: Request<Bytes>| {
        seen.lock().unwrap().push(request.uri().to_string());
        async { crate::support::json_reply(StatusCode::OK, json!({"events": []})) }
    })
    .await;
    app.create_webhook_endpoint(
        &key,
        json!({"source": "cms", "pull_url": format!("http://{pull}/events")}),
    )
    .await;
    app.run_cron("/api/cron/maintenance").await;
    let port = free_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_tasks"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(crate::helpers::base_vars(&app.db))
        .env("PORT", port.to_string())
        .env("ALLOW_PRIVATE_PULL_URLS", "true")
        .env("HTTP_PROXY", format!("http://{proxy}"))
        .env("http_proxy", format!("http://{proxy}"))
        .env("ALL_PROXY", format!("http://{proxy}"))
        .current_dir(std::env::temp_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let _child = command.spawn().expect("tasks binary starts");

    keel::platform::tls::tls_config();
    let url = format!("http://127.0.0.1:{port}/api/cron/tasks");
    let mut report = None;
    for _ in 0..100 {
        if let Ok(response) = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(&url)
            .bearer_auth(crate::helpers::CRON_SECRET)
            .send()
            .await
        {
            report = Some(response.json::<Value>().await.unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let report = report.expect("the tasks binary answered");
    assert_eq!(report["succeeded"], 1, "{report}");
    assert_eq!(*proxied.lock().unwrap(), Vec::<String>::new());
    assert_eq!(*pulled.lock().unwrap(), 1);
}

/// The anonymous quota a Vercel function takes for two addresses.
async fn two_ready_calls_on_vercel(first_ip: &str, second_ip: &str) -> Vec<u16> {
    let db = TestDatabase::migrated().await;
    let port = free_port();
    let _child = route_binary(
        env!("CARGO_BIN_EXE_ready"),
        &db,
        &[
            ("VERCEL", "1".into()),
            ("VERCEL_DEV_PORT", port.to_string()),
            ("RATE_LIMIT_ANONYMOUS_PER_MINUTE", "1".into()),
        ],
    );
    let url = format!("http://127.0.0.1:{port}/api/ready");
    get_when_up(&format!("http://127.0.0.1:{port}/api/health"), "up").await;
    let client = reqwest::Client::new();
    let mut statuses = Vec::new();
    for ip in [first_ip, second_ip] {
        let response = client
            .get(&url)
            .header("x-real-ip", ip)
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    statuses
}

#[tokio::test]
async fn an_ipv6_client_is_one_client_across_its_whole_slash_64() {
    // Any IPv6 host is handed a /64: per-address buckets would give it 2^64 quotas.
    assert_eq!(
        two_ready_calls_on_vercel("2001:db8:1:2::1", "2001:db8:1:2:ffff::9").await,
        [200, 429]
    );
    assert_eq!(
        two_ready_calls_on_vercel("2001:db8:1:2::1", "2001:db8:1:3::1").await,
        [200, 200],
        "another /64 is another client"
    );
}

/// An Application Load Balancer event, which carries no source address:
/// the ALB appends the address it saw to whatever `x-forwarded-for` came in.
fn alb_event(forwarded_for: &str) -> Value {
    json!({
        "requestContext": {"elb": {"targetGroupArn": "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/keel/abc"}},
        "httpMethod": "GET",
        "path": "/api/ready",
        "queryStringParameters": {},
        "headers": {"x-forwarded-for": forwarded_for, "x-amzn-trace-id": "Root=1-5759e988-bd862e3fe1be46a994272793"},
        "body": "",
        "isBase64Encoded": false
    })
}

/// Runs the ready function on Lambda behind an ALB, one event per forged
/// first `x-forwarded-for` entry from the same real client, and returns each
/// response.
async fn ready_behind_an_alb(envs: &[(&str, String)]) -> Vec<Value> {
    let db = TestDatabase::migrated().await;
    let runtime = RuntimeApi::default();
    runtime.events.lock().unwrap().extend(
        ["198.51.100.1", "198.51.100.2", "198.51.100.3"]
            .iter()
            .enumerate()
            .map(|(n, forged)| {
                (
                    format!("alb-{n}"),
                    alb_event(&format!("{forged}, 203.0.113.9")),
                )
            }),
    );
    let api = runtime.clone();
    let address = serve_http(move |request| api.clone().handle(request)).await;
    let mut envs = envs.to_vec();
    envs.extend([
        ("AWS_LAMBDA_RUNTIME_API", address.to_string()),
        ("AWS_LAMBDA_FUNCTION_NAME", "ready".into()),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".into()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128".into()),
        ("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/ready".into()),
        ("AWS_LAMBDA_LOG_STREAM_NAME", "stream".into()),
        ("RATE_LIMIT_ANONYMOUS_PER_MINUTE", "1".into()),
    ]);
    let _child = route_binary(env!("CARGO_BIN_EXE_ready"), &db, &envs);

    let responses = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if runtime.responses.lock().unwrap().len() >= 3 {
                return runtime.responses.lock().unwrap().clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the function answered every event");
    (0..3)
        .map(|n| {
            responses
                .iter()
                .find(|(key, _)| key == &format!("alb-{n}:response"))
                .unwrap_or_else(|| panic!("no response to alb-{n}: {responses:?}"))
                .1
                .clone()
        })
        .collect()
}

#[tokio::test]
async fn behind_a_load_balancer_a_forged_forwarded_for_buys_no_fresh_quota() {
    // By default (the ALB's appended entry is the peer), and when told that
    // one trusted proxy appends the address it saw.
    for envs in [
        vec![],
        vec![("CLIENT_IP_SOURCE", "x-forwarded-for:1".to_owned())],
    ] {
        let responses = ready_behind_an_alb(&envs).await;

        let statuses: Vec<_> = responses.iter().map(|r| r["statusCode"].clone()).collect();
        assert_eq!(statuses, [200, 429, 429], "one client, one quota: {envs:?}");
    }
}

/// A tenant with a menu, on a fresh database, and the chat double scripted
/// to answer slowly: three deltas 300 ms apart, so a buffered response would
/// show as one late write.
async fn slow_answer_setup() -> (crate::helpers::TestApp, String, String) {
    use crate::chat_double::{FakeChat, Reply};
    let app = crate::helpers::spawn_app().await;
    let key = app.create_tenant("luigis").await;
    app.put_documents(
        &key,
        json!([{"id": "menu", "title": "Menu", "content": "Vegan options: falafel bowl and lentil soup."}]),
    )
    .await;
    let (chat, chat_url) = FakeChat::start().await;
    let deltas = ["Falafel ", "bowl ", "[1]."].map(str::to_owned).to_vec();
    // The double serves for as long as the test's runtime runs.
    chat.script([Reply::Slow(deltas, Duration::from_millis(300))]);
    (app, key, chat_url)
}

fn chat_env(chat_url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("CHAT_BASE_URL", chat_url.to_owned()),
        ("CHAT_API_KEY", crate::chat_double::CHAT_KEY.to_owned()),
        ("ENCRYPTION_KEY", "5e".repeat(32)),
    ]
}

fn widget_question() -> Value {
    json!({"id": "conv-1", "messages": [{"id": "m1", "role": "user", "parts": [{"type": "text", "text": "vegan options?"}]}]})
}

/// When each piece of a streamed body arrived, relative to the first.
fn spread(arrivals: &[(std::time::Instant, Bytes)], needle: &str) -> Duration {
    let first = arrivals
        .iter()
        .find(|(_, bytes)| String::from_utf8_lossy(bytes).contains(needle))
        .map(|(at, _)| *at)
        .unwrap_or_else(|| panic!("{needle} never arrived"));
    arrivals.last().unwrap().0 - first
}

#[tokio::test]
async fn the_chat_function_streams_under_the_vercel_runtime_as_the_model_speaks() {
    let (app, key, chat_url) = slow_answer_setup().await;
    let port = free_port();
    let mut envs = chat_env(&chat_url);
    envs.extend([
        ("VERCEL", "1".into()),
        ("VERCEL_DEV_PORT", port.to_string()),
    ]);
    let _child = route_binary(env!("CARGO_BIN_EXE_chat"), &app.db, &envs);
    get_when_up(&format!("http://127.0.0.1:{port}/api/health"), "up").await;

    let mut response = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/api/chat"))
        .bearer_auth(&key)
        .json(&widget_question())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-vercel-ai-ui-message-stream"], "v1");
    let mut arrivals = Vec::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        arrivals.push((std::time::Instant::now(), chunk));
    }

    let text: String = arrivals
        .iter()
        .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
        .collect();
    assert!(
        text.contains("\"delta\":\"Falafel \"") && text.ends_with("data: [DONE]\n\n"),
        "{text}"
    );
    assert!(
        spread(&arrivals, "Falafel ") >= Duration::from_millis(450),
        "the first words arrived with the last: the body was buffered"
    );
}

/// A Lambda Runtime API for a function in response-streaming mode: hands out
/// one event and records the streamed response's headers and each piece of
/// its body as it arrives.
#[derive(Clone, Default)]
struct StreamingRuntimeApi {
    event: Arc<Mutex<Option<Value>>>,
    mode: Arc<Mutex<Option<String>>>,
    arrivals: Arc<Mutex<Vec<(std::time::Instant, Bytes)>>>,
    done: Arc<tokio::sync::Notify>,
}

impl StreamingRuntimeApi {
    async fn start(event: Value) -> (Self, std::net::SocketAddr) {
        use http_body_util::BodyExt as _;
        let api = StreamingRuntimeApi::default();
        *api.event.lock().unwrap() = Some(event);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = api.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let server = server.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |request: Request<hyper::body::Incoming>| {
                            let server = server.clone();
                            async move {
                                let path = request.uri().path().to_owned();
                                if path.ends_with("/invocation/next") {
                                    let event = server.event.lock().unwrap().take();
                                    let Some(event) = event else {
                                        // One event only: the next poll waits for ever.
                                        std::future::pending::<()>().await;
                                        unreachable!();
                                    };
                                    let deadline = std::time::SystemTime::now()
                                        .duration_since(std::time::UNIX_EPOCH)
                                        .unwrap()
                                        .as_millis()
                                        + 30_000;
                                    return Ok::<_, std::convert::Infallible>(
                                    Response::builder()
                                        .header("lambda-runtime-aws-request-id", "stream-1")
                                        .header("lambda-runtime-deadline-ms", deadline.to_string())
                                        .header("lambda-runtime-invoked-function-arn", "arn:aws:lambda:eu-west-1:123456789012:function:chat")
                                        .header("content-type", "application/json")
                                        .body(http_body_util::Full::new(Bytes::from(event.to_string())))
                                        .unwrap(),
                                );
                                }
                                *server.mode.lock().unwrap() = request
                                    .headers()
                                    .get("lambda-runtime-function-response-mode")
                                    .and_then(|v| v.to_str().ok())
                                    .map(str::to_owned);
                                let mut body = request.into_body();
                                while let Some(Ok(frame)) = body.frame().await {
                                    if let Ok(data) = frame.into_data() {
                                        server
                                            .arrivals
                                            .lock()
                                            .unwrap()
                                            .push((std::time::Instant::now(), data));
                                    }
                                }
                                server.done.notify_one();
                                Ok(Response::builder()
                                    .status(202)
                                    .body(http_body_util::Full::new(Bytes::new()))
                                    .unwrap())
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (api, address)
    }
}

#[tokio::test]
async fn the_chat_function_streams_on_lambda_in_response_streaming_mode() {
    let (app, key, chat_url) = slow_answer_setup().await;
    // A function URL invocation (payload 2.0), as InvokeMode RESPONSE_STREAM delivers it.
    let event = json!({
        "version": "2.0", "routeKey": "$default", "rawPath": "/api/chat", "rawQueryString": "",
        "headers": {"authorization": format!("Bearer {key}"), "content-type": "application/json", "x-request-id": "lambda-stream"},
        "requestContext": {
            "accountId": "123456789012", "apiId": "url-id", "domainName": "url-id.lambda-url.eu-west-1.on.aws",
            "domainPrefix": "url-id", "requestId": "id", "routeKey": "$default", "stage": "$default",
            "time": "12/Mar/2020:19:03:58 +0000", "timeEpoch": 1583348638390i64,
            "http": {"method": "POST", "path": "/api/chat", "protocol": "HTTP/1.1", "sourceIp": "203.0.113.9", "userAgent": "widget"}
        },
        "body": widget_question().to_string(),
        "isBase64Encoded": false
    });
    let (runtime, address) = StreamingRuntimeApi::start(event).await;
    let mut envs = chat_env(&chat_url);
    envs.extend([
        ("AWS_LAMBDA_RUNTIME_API", address.to_string()),
        ("AWS_LAMBDA_FUNCTION_NAME", "chat".into()),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".into()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512".into()),
        ("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/chat".into()),
        ("AWS_LAMBDA_LOG_STREAM_NAME", "stream".into()),
    ]);
    let _child = route_binary(env!("CARGO_BIN_EXE_chat"), &app.db, &envs);

    tokio::time::timeout(Duration::from_secs(20), runtime.done.notified())
        .await
        .expect("the function streamed a response");

    assert_eq!(runtime.mode.lock().unwrap().as_deref(), Some("streaming"));
    let arrivals = runtime.arrivals.lock().unwrap().clone();
    let whole: Vec<u8> = arrivals.iter().flat_map(|(_, b)| b.to_vec()).collect();
    // The HTTP integration response: a JSON prelude, eight NUL bytes, the body.
    let split = whole
        .windows(8)
        .position(|w| w == [0u8; 8])
        .expect("the prelude's NUL separator");
    let prelude: Value = serde_json::from_slice(&whole[..split]).unwrap();
    assert_eq!(prelude["statusCode"], 200, "{prelude}");
    assert_eq!(prelude["headers"]["content-type"], "text/event-stream");
    assert_eq!(prelude["headers"]["x-vercel-ai-ui-message-stream"], "v1");
    let body = String::from_utf8_lossy(&whole[split + 8..]).into_owned();
    assert!(
        body.contains("\"delta\":\"Falafel \"") && body.ends_with("data: [DONE]\n\n"),
        "{body}"
    );
    assert!(
        spread(&arrivals, "Falafel ") >= Duration::from_millis(450),
        "the first words arrived with the last: the body was buffered"
    );
}
