use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::helpers::{TestDatabase, base_vars, spawn_app, spawn_app_on, spawn_app_with};
use crate::support::{ProxyMode, TcpProxy, start_models_endpoint};

#[tokio::test]
async fn ready_is_200_when_the_database_answers() {
    let app = spawn_app().await;

    let response = app.get("/api/ready").await;

    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["ready"], true);
    assert_eq!(body["checks"]["database"]["status"], "ok");
    assert!(body["checks"]["database"]["latency_ms"].is_u64());
    assert!(body["checks"]["database"].get("error").is_none());
    assert!(
        body["checks"].get("embeddings").is_none(),
        "no provider configured"
    );
    assert!(body["timestamp"].is_string());
}

#[tokio::test]
async fn ready_fails_fast_when_the_database_hangs_and_recovers_when_it_returns() {
    // Arrange: Keel reaches its database through a proxy the test controls.
    let db = TestDatabase::migrated().await;
    let proxy = TcpProxy::start(db.address()).await;
    let mut vars = base_vars(&db);
    vars.insert("DATABASE_URL".into(), db.url_via(proxy.address));
    vars.insert("READY_CHECK_TIMEOUT_MS".into(), "500".into());
    vars.insert("DB_TIMEOUT_MS".into(), "400".into());
    let app = spawn_app_on(db, vars).await;
    assert_eq!(app.get("/api/ready").await.status(), 200);

    // Act: the database host stops answering.
    proxy.set(ProxyMode::Stall);
    let started = Instant::now();
    let response = app.get("/api/ready").await;
    let waited = started.elapsed();

    // Assert: 503 with Retry-After, bounded by the check timeout, health unaffected.
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "5");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["ready"], false);
    assert_eq!(body["checks"]["database"]["status"], "error");
    assert!(
        body["checks"]["database"]["error"]
            .as_str()
            .unwrap()
            .contains("timed out")
    );
    assert!(waited < Duration::from_secs(3), "ready hung for {waited:?}");
    assert_eq!(app.get("/api/health").await.status(), 200);

    // The database is stopped outright: refused connections, still 503.
    proxy.set(ProxyMode::Refuse);
    assert_eq!(app.get("/api/ready").await.status(), 503);
    assert_eq!(app.get("/api/health").await.status(), 200);

    // Recovery: the same instance becomes ready again without a restart.
    proxy.set(ProxyMode::Forward);
    let mut status = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..50 {
        status = app.get("/api/ready").await.status();
        if status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        status, 200,
        "ready did not recover after the database came back"
    );
}

#[tokio::test]
async fn ready_reports_an_unmigrated_database_as_not_ready() {
    let db = TestDatabase::empty().await;
    let vars = base_vars(&db);
    let app = spawn_app_on(db, vars).await;

    let response = app.get("/api/ready").await;

    assert_eq!(response.status(), 503);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        body["checks"]["database"]["error"],
        "rejected the call (42883)"
    );
}

#[tokio::test]
async fn ready_checks_a_configured_embeddings_provider_without_depending_on_it() {
    let cases = [
        (
            StatusCode::OK,
            Duration::ZERO,
            "ok",
            None,
            "a healthy provider",
        ),
        (
            StatusCode::UNAUTHORIZED,
            Duration::ZERO,
            "error",
            Some("provider rejected the API key (401)"),
            "a revoked key",
        ),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Duration::ZERO,
            "error",
            Some("provider answered HTTP 503"),
            "an outage",
        ),
        (
            StatusCode::OK,
            Duration::from_secs(30),
            "error",
            Some("timed out after 500ms"),
            "a provider that hangs",
        ),
    ];
    for (provider_status, delay, expected, error, reason) in cases {
        let base_url = start_models_endpoint(provider_status, delay).await;
        let app = spawn_app_with(|_, vars| {
            vars.insert("OPENAI_BASE_URL".into(), base_url.clone());
            vars.insert("OPENAI_API_KEY".into(), "test-key".into());
            vars.insert("READY_CHECK_TIMEOUT_MS".into(), "500".into());
        })
        .await;

        let started = Instant::now();
        let response = app.get("/api/ready").await;

        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{reason}: ready hung"
        );
        assert_eq!(
            response.status(),
            200,
            "{reason}: embeddings are not critical"
        );
        let body: serde_json::Value = response.json().await.unwrap();
        let check = &body["checks"]["embeddings"];
        assert_eq!(check["status"], expected, "{reason}");
        assert_eq!(check["critical"], false, "{reason}");
        assert_eq!(
            check.get("error").and_then(|e| e.as_str()),
            error,
            "{reason}"
        );
    }
}
