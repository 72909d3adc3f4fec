use crate::helpers::{error_body, spawn_app, spawn_app_with};

const ALLOWED_ORIGIN: &str = "https://widget.example.com";

#[tokio::test]
async fn every_response_carries_a_request_id_and_security_headers() {
    let app = spawn_app().await;

    for path in ["/api/health", "/api/nope"] {
        let response = app.get(path).await;
        let headers = response.headers();
        let request_id = headers["x-request-id"].to_str().unwrap();
        assert_eq!(request_id.len(), 36, "{path}: generated ids are UUIDs");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(headers["x-frame-options"], "DENY", "{path}");
        assert_eq!(headers["referrer-policy"], "no-referrer", "{path}");
        assert_eq!(headers["cache-control"], "no-store", "{path}");
        assert!(
            headers["server-timing"]
                .to_str()
                .unwrap()
                .starts_with("app;dur="),
            "{path}"
        );
        assert!(
            headers.get("strict-transport-security").is_none(),
            "{path}: no HSTS in development"
        );
    }
}

#[tokio::test]
async fn a_callers_request_id_is_echoed_in_headers_and_error_bodies() {
    let app = spawn_app().await;

    let response = app
        .client
        .get(app.url("/api/nope"))
        .header("x-request-id", "call-42-from-voice-agent")
        .send()
        .await
        .unwrap();

    assert_eq!(
        response.headers()["x-request-id"],
        "call-42-from-voice-agent"
    );
    let error = error_body(response).await;
    assert_eq!(error["request_id"], "call-42-from-voice-agent");
}

#[tokio::test]
async fn production_responses_carry_hsts() {
    let app = spawn_app_with(crate::helpers::production_vars).await;

    let response = app.get("/api/health").await;

    assert_eq!(
        response.headers()["strict-transport-security"],
        "max-age=63072000; includeSubDomains; preload"
    );
}

#[tokio::test]
async fn unknown_paths_get_a_json_404() {
    let app = spawn_app().await;

    let response = app.get("/api/does-not-exist").await;

    assert_eq!(response.status(), 404);
    assert_eq!(response.headers()["content-type"], "application/json");
    let error = error_body(response).await;
    assert_eq!(error["code"], "not_found");
    assert_eq!(error["message"], "no route for /api/does-not-exist");
}

#[tokio::test]
async fn a_wrong_method_gets_405_with_allow() {
    let app = spawn_app().await;

    let response = app
        .client
        .delete(app.url("/api/health"))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "GET, OPTIONS");
    assert_eq!(error_body(response).await["code"], "method_not_allowed");
}

#[tokio::test]
async fn head_is_answered_like_get_without_a_body() {
    let app = spawn_app().await;

    let response = app
        .client
        .head(app.url("/api/health"))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 200);
    assert!(response.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_body_over_the_limit_gets_413_without_being_buffered() {
    let app = spawn_app_with(|_, vars| {
        vars.insert("MAX_BODY_BYTES".into(), "1024".into());
    })
    .await;

    let response = app
        .client
        .get(app.url("/api/health"))
        .header("content-type", "application/json")
        .body(vec![b' '; 4096])
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 413);
    let error = error_body(response).await;
    assert_eq!(error["code"], "payload_too_large");
    assert_eq!(
        error["message"],
        "request body exceeds the limit of 1024 bytes"
    );
}

#[tokio::test]
async fn a_client_still_uploading_a_body_over_the_limit_reads_the_413() {
    // Clients such as Python's urllib write the whole body before reading
    // the answer: closing on them mid-upload turns the 413 into a broken pipe.
    let app = spawn_app_with(|_, vars| {
        vars.insert("MAX_BODY_BYTES".into(), "1024".into());
    })
    .await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let body_len = 4 * 1024 * 1024;

    let response = tokio::task::spawn_blocking(move || {
        use std::io::{Read as _, Write as _};
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        let head = format!(
            "GET /api/health HTTP/1.1\r\nhost: keel\r\ncontent-type: application/json\r\ncontent-length: {body_len}\r\nconnection: close\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).unwrap();
        stream
            .write_all(&vec![b' '; body_len])
            .expect("the server takes the whole upload");
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .expect("the answer arrives");
        response
    })
    .await
    .unwrap();

    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(
        response.contains(r#""code":"payload_too_large""#),
        "{response}"
    );
}

async fn cors_app() -> crate::helpers::TestApp {
    spawn_app_with(|_, vars| {
        vars.insert(
            "CORS_ORIGINS".into(),
            format!("{ALLOWED_ORIGIN}, http://localhost:5173"),
        );
    })
    .await
}

#[tokio::test]
async fn a_preflight_from_an_allowed_origin_gets_204_with_methods_and_headers() {
    let app = cors_app().await;

    let response = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/api/health"))
        .header("origin", ALLOWED_ORIGIN)
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "authorization")
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 204);
    let headers = response.headers();
    assert_eq!(headers["access-control-allow-origin"], ALLOWED_ORIGIN);
    assert_eq!(headers["access-control-allow-methods"], "GET, OPTIONS");
    assert!(
        headers["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("authorization")
    );
    assert!(headers.get_all("vary").iter().any(|v| v == "Origin"));
}

#[tokio::test]
async fn a_disallowed_origin_gets_no_cors_headers() {
    let app = cors_app().await;

    for method in [reqwest::Method::OPTIONS, reqwest::Method::GET] {
        let response = app
            .client
            .request(method.clone(), app.url("/api/health"))
            .header("origin", "https://evil.example.net")
            .header("access-control-request-method", "GET")
            .send()
            .await
            .unwrap();

        let headers = response.headers();
        assert!(
            headers.get("access-control-allow-origin").is_none(),
            "{method}"
        );
        assert!(
            headers.get("access-control-allow-methods").is_none(),
            "{method}"
        );
        assert!(
            headers.get_all("vary").iter().any(|v| v == "Origin"),
            "{method}"
        );
    }
}

#[tokio::test]
async fn a_simple_request_from_an_allowed_origin_is_allowed_to_read_the_response() {
    let app = cors_app().await;

    let response = app
        .client
        .get(app.url("/api/health"))
        .header("origin", "http://localhost:5173")
        .send()
        .await
        .unwrap();

    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "http://localhost:5173"
    );
    assert!(
        response.headers()["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .contains("x-request-id")
    );
}
