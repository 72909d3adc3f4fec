use crate::helpers::{error_body, spawn_app_with};
use crate::support::FakeSentry;

#[tokio::test]
async fn a_test_error_reaches_sentry_with_its_request_id_before_the_response() {
    let (sentry, dsn) = FakeSentry::start().await;
    let app = spawn_app_with(|_, vars| {
        vars.insert("SENTRY_DSN".into(), dsn);
    })
    .await;

    let response = app
        .client
        .get(app.url("/api/test-error"))
        .header("x-request-id", "sentry-check-1")
        .send()
        .await
        .unwrap();

    // The client sees an opaque 500...
    assert_eq!(response.status(), 500);
    let raw = response.text().await.unwrap();
    assert!(
        !raw.contains("Sentry is receiving events"),
        "cause leaked: {raw}"
    );
    let body: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(body["error"]["code"], "internal_error");
    assert_eq!(body["error"]["request_id"], "sentry-check-1");
    // ...while Sentry already holds the event with the cause chain and request id.
    let envelopes = sentry.envelopes();
    let event = envelopes
        .iter()
        .find(|e| e.contains("sentry-check-1"))
        .unwrap_or_else(|| panic!("no event tagged with the request id in {envelopes:?}"));
    assert!(event.contains("Keel test error: Sentry is receiving events"));
    assert!(event.contains("requested through /api/test-error"));
    assert!(event.contains(r#""environment":"development""#));
}

#[tokio::test]
async fn a_panicking_handler_becomes_a_500_reported_to_sentry() {
    let (sentry, dsn) = FakeSentry::start().await;
    let app = spawn_app_with(|_, vars| {
        vars.insert("SENTRY_DSN".into(), dsn);
    })
    .await;

    let response = app
        .client
        .get(app.url("/api/test-error?kind=panic"))
        .header("x-request-id", "panic-check-1")
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 500);
    assert_eq!(error_body(response).await["code"], "internal_error");
    let envelopes = sentry.envelopes();
    assert!(
        envelopes
            .iter()
            .any(|e| e.contains("panic-check-1") && e.contains("test panic requested")),
        "{envelopes:?}"
    );
    // The instance survives the panic.
    assert_eq!(app.get("/api/health").await.status(), 200);
}

#[tokio::test]
async fn outside_development_the_test_error_needs_the_admin_key() {
    let admin_key = "k".repeat(40);
    // A preview deployment is public too: `?kind=panic` on demand is a
    // free way to burn instances and flood Sentry.
    for environment in ["production", "preview"] {
        let app = spawn_app_with(|db, vars| {
            crate::helpers::production_vars(db, vars);
            vars.insert("ENVIRONMENT".into(), environment.into());
            vars.insert("ADMIN_API_KEY".into(), admin_key.clone());
        })
        .await;

        let cases = [
            (None, "", 401, "no credentials"),
            (
                None,
                "?kind=panic",
                401,
                "no credentials, asking for a panic",
            ),
            (Some("k".repeat(39)), "", 401, "a near miss"),
            (Some(admin_key.clone()), "", 500, "the admin key"),
            (
                Some(admin_key.clone()),
                "?kind=panic",
                500,
                "the admin key, panicking",
            ),
        ];
        for (key, query, status, reason) in cases {
            let mut request = app.client.get(app.url(&format!("/api/test-error{query}")));
            if let Some(key) = key {
                request = request.bearer_auth(key);
            }
            let response = request.send().await.unwrap();
            assert_eq!(
                response.status().as_u16(),
                status,
                "{environment}: {reason}"
            );
        }
    }
}
