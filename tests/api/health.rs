use crate::helpers::{error_body, spawn_app, spawn_app_with};

#[tokio::test]
async fn health_reports_service_version_environment_commit_and_time() {
    let app = spawn_app().await;

    let response = app.get("/api/health").await;

    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["service"], "keel");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(body["environment"], "development");
    assert!(!body["commit"].as_str().unwrap().is_empty());
    let timestamp = body["timestamp"].as_str().unwrap();
    let parsed =
        time::OffsetDateTime::parse(timestamp, &time::format_description::well_known::Rfc3339)
            .expect("timestamp is RFC 3339");
    assert_eq!(parsed.offset(), time::UtcOffset::UTC);
}

#[tokio::test]
async fn health_reports_the_deployed_commit_from_vercel() {
    let app = spawn_app_with(|_, vars| {
        vars.insert("VERCEL_GIT_COMMIT_SHA".into(), "0123abcd".into());
    })
    .await;

    let body: serde_json::Value = app.get("/api/health").await.json().await.unwrap();

    assert_eq!(body["commit"], "0123abcd");
}

#[tokio::test]
async fn maintenance_mode_answers_503_everywhere_except_health() {
    let app = spawn_app_with(|_, vars| {
        vars.insert("MAINTENANCE_MODE".into(), "true".into());
    })
    .await;

    assert_eq!(app.get("/api/health").await.status(), 200);
    for path in ["/api/ready", "/api/test-error"] {
        let response = app.get(path).await;
        assert_eq!(response.status(), 503, "{path}");
        assert_eq!(response.headers()["retry-after"], "300", "{path}");
        let error = error_body(response).await;
        assert_eq!(error["code"], "maintenance", "{path}");
        assert!(error["message"].as_str().unwrap().contains("maintenance"));
    }
}
