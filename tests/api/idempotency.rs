//! `Idempotency-Key` on the routes that create or rotate a credential: a
//! retried call that timed out gets the same key or secret, made once.

use serde_json::{Value, json};

use crate::helpers::{
    ADMIN_KEY, TestApp, TestDatabase, base_vars, error_body, spawn_app, spawn_app_on,
    spawn_app_with,
};
use crate::support::start_postgrest;

async fn post_with_key(
    app: &TestApp,
    path: &str,
    credential: &str,
    idempotency_key: &str,
    body: &Value,
) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .bearer_auth(credential)
        .header("Idempotency-Key", idempotency_key)
        .json(body)
        .send()
        .await
        .unwrap()
}

/// Status, `idempotent-replayed` and body.
async fn answer(response: reqwest::Response) -> (u16, Option<String>, Value) {
    let status = response.status().as_u16();
    let replayed = response
        .headers()
        .get("idempotent-replayed")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, replayed, response.json().await.unwrap())
}

/// Every stored idempotency row as text, to look for plaintext credentials.
async fn stored_rows(app: &TestApp) -> Vec<String> {
    app.db
        .connect()
        .await
        .query(
            "select row_to_json(k)::text from keel.idempotency_keys k",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

#[tokio::test]
async fn a_retried_tenant_creation_returns_the_same_tenant_and_key_and_stores_one_tenant() {
    let app = spawn_app().await;
    let body = json!({"name": "Joe's Diner", "slug": "joes-diner"});

    let first =
        answer(post_with_key(&app, "/api/tenants", ADMIN_KEY, "create-joes-1", &body).await).await;
    let retry =
        answer(post_with_key(&app, "/api/tenants", ADMIN_KEY, "create-joes-1", &body).await).await;

    assert_eq!(first.0, 201);
    assert_eq!(first.1, None, "the first call is no replay");
    assert_eq!(retry.0, 201);
    assert_eq!(retry.1.as_deref(), Some("true"));
    assert_eq!(retry.2, first.2, "same tenant, same api_key");
    let api_key = first.2["api_key"].as_str().unwrap();
    assert_eq!(app.count("select count(*) from keel.tenants").await, 1);
    assert_eq!(app.count("select count(*) from keel.api_keys").await, 1);
    assert_eq!(
        app.count("select count(*) from keel.audit_log where action = 'tenant.created'")
            .await,
        1
    );
    let stored = app
        .db
        .connect()
        .await
        .query_one("select key_hash from keel.api_keys", &[])
        .await
        .unwrap()
        .get::<_, String>(0);
    assert_eq!(
        stored,
        keel::tenants::keys::hash_key(api_key),
        "the replayed key is the stored one"
    );
    let rows = stored_rows(&app).await;
    assert_eq!(rows.len(), 1);
    assert!(
        !rows[0].contains(&api_key[5..]),
        "the key is stored sealed, never in plain text: {}",
        rows[0]
    );
    assert!(rows[0].contains("\"scope\":\"admin\""), "{}", rows[0]);
}

#[tokio::test]
async fn concurrent_duplicates_create_one_tenant_and_all_answer_the_same() {
    let app = spawn_app().await;
    let body = json!({"name": "Clinic", "slug": "clinic"});

    let calls = (0..6).map(|_| post_with_key(&app, "/api/tenants", ADMIN_KEY, "same-key", &body));
    let answers = futures::future::join_all(calls).await;

    let mut bodies = Vec::new();
    for response in answers {
        let (status, _, body) = answer(response).await;
        assert_eq!(status, 201, "{body}");
        bodies.push(body);
    }
    assert!(bodies.iter().all(|b| *b == bodies[0]), "{bodies:?}");
    assert_eq!(app.count("select count(*) from keel.tenants").await, 1);
    assert_eq!(app.count("select count(*) from keel.api_keys").await, 1);
}

#[tokio::test]
async fn a_reused_key_with_another_body_is_409_and_changes_nothing() {
    let app = spawn_app().await;
    let first = post_with_key(
        &app,
        "/api/tenants",
        ADMIN_KEY,
        "k-1",
        &json!({"name": "A", "slug": "shop-a"}),
    )
    .await;
    assert_eq!(first.status(), 201);

    let reused = post_with_key(
        &app,
        "/api/tenants",
        ADMIN_KEY,
        "k-1",
        &json!({"name": "B", "slug": "shop-b"}),
    )
    .await;

    assert_eq!(reused.status(), 409);
    let error = error_body(reused).await;
    assert_eq!(error["code"], "idempotency_key_reused");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("Idempotency-Key"),
        "{error}"
    );
    assert_eq!(app.count("select count(*) from keel.tenants").await, 1);
    assert_eq!(
        app.count("select count(*) from keel.tenants where slug = 'shop-b'")
            .await,
        0
    );
    assert_eq!(
        app.count("select count(*) from keel.idempotency_keys")
            .await,
        1
    );
}

#[tokio::test]
async fn a_retried_key_issue_returns_the_same_key_issued_once() {
    let app = spawn_app().await;
    let first_key = app.create_tenant("shop").await;
    let body = json!({"revoke_existing": true});

    let first = answer(
        post_with_key(
            &app,
            "/api/tenants/shop/keys",
            ADMIN_KEY,
            "rotate-after-leak",
            &body,
        )
        .await,
    )
    .await;
    let retry = answer(
        post_with_key(
            &app,
            "/api/tenants/shop/keys",
            ADMIN_KEY,
            "rotate-after-leak",
            &body,
        )
        .await,
    )
    .await;

    assert_eq!((first.0, retry.0), (201, 201));
    assert_eq!(retry.1.as_deref(), Some("true"));
    assert_eq!(retry.2, first.2);
    assert_eq!(first.2["revoked"], 1);
    let api_key = first.2["api_key"].as_str().unwrap();
    assert_ne!(api_key, first_key);
    assert_eq!(
        app.count("select count(*) from keel.api_keys where revoked_at is null")
            .await,
        1,
        "one new key, still valid: the retry revoked nothing more"
    );
    assert_eq!(app.count("select count(*) from keel.api_keys").await, 2);
    assert_eq!(
        app.count("select count(*) from keel.audit_log where action = 'key.issued'")
            .await,
        2,
        "the tenant's first key and one issue"
    );
    let listed = app.get_json("/api/tasks", api_key).await;
    assert!(
        listed["tasks"].is_array(),
        "the replayed key works: {listed}"
    );
    assert!(
        stored_rows(&app)
            .await
            .iter()
            .all(|row| !row.contains(&api_key[5..]))
    );

    let other_slug = post_with_key(
        &app,
        "/api/tenants/other/keys",
        ADMIN_KEY,
        "rotate-after-leak",
        &body,
    )
    .await;
    assert_eq!(
        other_slug.status(),
        409,
        "the same key for another tenant's path is another request"
    );
}

#[tokio::test]
async fn a_retried_endpoint_creation_returns_the_same_endpoint_and_secret() {
    let app = spawn_app().await;
    let key = app.create_tenant("shop").await;
    let body = json!({"source": "shopify"});

    let first =
        answer(post_with_key(&app, "/api/webhooks/endpoints", &key, "endpoint-1", &body).await)
            .await;
    let retry =
        answer(post_with_key(&app, "/api/webhooks/endpoints", &key, "endpoint-1", &body).await)
            .await;

    assert_eq!((first.0, retry.0), (201, 201));
    assert_eq!((first.1, retry.1.as_deref()), (None, Some("true")));
    assert_eq!(retry.2, first.2, "same id, same secret");
    assert_eq!(
        app.count("select count(*) from keel.webhook_endpoints")
            .await,
        1
    );
    let (id, secret) = (
        first.2["id"].as_str().unwrap(),
        first.2["secret"].as_str().unwrap(),
    );
    let event = json!({"type": "order.created", "data": {}});
    assert_eq!(app.deliver(id, secret, "msg_1", &event).await.status(), 200);
    let rows = stored_rows(&app).await;
    assert_eq!(rows.len(), 1);
    assert!(
        !rows[0].contains(&secret[6..]),
        "the secret is sealed: {}",
        rows[0]
    );
}

#[tokio::test]
async fn a_retried_rotation_rotates_once_and_returns_the_same_secret() {
    let app = spawn_app().await;
    let key = app.create_tenant("shop").await;
    let (endpoint, original) = app
        .create_webhook_endpoint(&key, json!({"source": "shopify"}))
        .await;
    let path = format!("/api/webhooks/endpoints/{endpoint}/secret");
    let body = json!({"grace_period_seconds": 3600});

    let first = answer(post_with_key(&app, &path, &key, "rotate-1", &body).await).await;
    let retry = answer(post_with_key(&app, &path, &key, "rotate-1", &body).await).await;

    assert_eq!((first.0, retry.0), (200, 200));
    assert_eq!(retry.1.as_deref(), Some("true"));
    assert_eq!(retry.2, first.2);
    let secret = first.2["secret"].as_str().unwrap();
    assert_eq!(
        app.count(
            "select count(*) from keel.audit_log where action = 'webhook_endpoint.secret_rotated'"
        )
        .await,
        1,
        "rotated once"
    );
    let event = json!({"type": "order.created", "data": {}});
    assert_eq!(
        app.deliver(&endpoint, secret, "msg_new", &event)
            .await
            .status(),
        200
    );
    assert_eq!(
        app.deliver(&endpoint, &original, "msg_old", &event)
            .await
            .status(),
        200,
        "the original secret is still the previous one: no second rotation pushed it out"
    );
    assert!(
        stored_rows(&app)
            .await
            .iter()
            .all(|row| !row.contains(&secret[6..]))
    );
}

#[tokio::test]
async fn another_tenant_using_the_same_key_string_gets_its_own_response() {
    let app = spawn_app().await;
    let shop = app.create_tenant("shop").await;
    let clinic = app.create_tenant("clinic").await;
    let body = json!({"source": "vapi"});

    let mine =
        answer(post_with_key(&app, "/api/webhooks/endpoints", &shop, "setup", &body).await).await;
    let theirs =
        answer(post_with_key(&app, "/api/webhooks/endpoints", &clinic, "setup", &body).await).await;

    assert_eq!((mine.0, theirs.0), (201, 201));
    assert_eq!(theirs.1, None, "not a replay of the shop's call");
    assert_ne!(theirs.2["id"], mine.2["id"]);
    assert_ne!(theirs.2["secret"], mine.2["secret"]);
    assert_eq!(
        app.count("select count(*) from keel.webhook_endpoints")
            .await,
        2
    );
    assert_eq!(
        app.count("select count(distinct tenant_id) from keel.webhook_endpoints")
            .await,
        2
    );
    let admin = post_with_key(
        &app,
        "/api/tenants",
        ADMIN_KEY,
        "setup",
        &json!({"name": "X", "slug": "x"}),
    )
    .await;
    assert_eq!(admin.status(), 201, "the admin's key space is its own");
}

#[tokio::test]
async fn malformed_keys_are_400_naming_the_header_and_store_nothing() {
    let app = spawn_app().await;
    let body = json!({"name": "Shop", "slug": "shop"});

    for bad in ["x".repeat(256), String::new()] {
        let response = post_with_key(&app, "/api/tenants", ADMIN_KEY, &bad, &body).await;
        assert_eq!(response.status(), 400, "{bad:?}");
        let error = error_body(response).await;
        assert_eq!(error["code"], "invalid_request");
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains("`Idempotency-Key`"),
            "{error}"
        );
    }
    assert_eq!(app.count("select count(*) from keel.tenants").await, 0);
}

#[tokio::test]
async fn without_encryption_key_a_keyed_request_is_503_and_an_unkeyed_one_works() {
    let app = spawn_app_with(|_, vars| {
        vars.remove("ENCRYPTION_KEY");
    })
    .await;
    let body = json!({"name": "Shop", "slug": "shop"});

    let keyed = post_with_key(&app, "/api/tenants", ADMIN_KEY, "k", &body).await;

    assert_eq!(keyed.status(), 503);
    let error = error_body(keyed).await;
    assert_eq!(error["code"], "unavailable");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("ENCRYPTION_KEY"),
        "{error}"
    );
    assert_eq!(app.count("select count(*) from keel.tenants").await, 0);
    assert_eq!(
        app.post_json("/api/tenants", ADMIN_KEY, &body)
            .await
            .status(),
        201
    );
}

#[tokio::test]
async fn maintenance_prunes_keys_past_their_24_hours() {
    let app = spawn_app().await;
    for (key, slug) in [("old", "old-shop"), ("new", "new-shop")] {
        let response = post_with_key(
            &app,
            "/api/tenants",
            ADMIN_KEY,
            key,
            &json!({"name": slug, "slug": slug}),
        )
        .await;
        assert_eq!(response.status(), 201);
    }
    app.db
        .connect()
        .await
        .execute(
            "update keel.idempotency_keys set created_at = now() - interval '25 hours' where key = 'old'",
            &[],
        )
        .await
        .unwrap();

    let report = app.run_cron("/api/cron/maintenance").await;

    assert_eq!(report["idempotency_keys_pruned"], 1, "{report}");
    assert_eq!(report["caught_up"], true);
    let left: Vec<String> = app
        .db
        .connect()
        .await
        .query("select key from keel.idempotency_keys", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(left, ["new"]);
}

#[tokio::test]
async fn retries_replay_through_postgrest_too() {
    let db = TestDatabase::migrated().await;
    let service_key = "sb_secret_test_0123456789abcdef";
    let postgrest = start_postgrest(db.url.clone(), service_key.to_owned()).await;
    let mut vars = base_vars(&db);
    vars.remove("DATABASE_URL");
    vars.insert("SUPABASE_URL".into(), format!("http://{postgrest}"));
    vars.insert("SUPABASE_SERVICE_ROLE_KEY".into(), service_key.into());
    let app = spawn_app_on(db, vars).await;
    assert_eq!(app.app.db.transport_name(), "postgrest");
    let tenant = json!({"name": "Shop", "slug": "shop"});

    let first = answer(post_with_key(&app, "/api/tenants", ADMIN_KEY, "t", &tenant).await).await;
    let retry = answer(post_with_key(&app, "/api/tenants", ADMIN_KEY, "t", &tenant).await).await;
    assert_eq!(
        (first.0, retry.0, retry.1.as_deref()),
        (201, 201, Some("true"))
    );
    assert_eq!(retry.2, first.2);
    let key = first.2["api_key"].as_str().unwrap();
    let endpoint = json!({"source": "vapi"});
    let made =
        answer(post_with_key(&app, "/api/webhooks/endpoints", key, "e", &endpoint).await).await;
    let again =
        answer(post_with_key(&app, "/api/webhooks/endpoints", key, "e", &endpoint).await).await;
    assert_eq!(
        (made.0, again.0, again.1.as_deref()),
        (201, 201, Some("true"))
    );
    assert_eq!(again.2, made.2);
    let reused = post_with_key(
        &app,
        "/api/webhooks/endpoints",
        key,
        "e",
        &json!({"source": "shopify"}),
    )
    .await;
    assert_eq!(reused.status(), 409);
    assert_eq!(error_body(reused).await["code"], "idempotency_key_reused");
    assert_eq!(app.count("select count(*) from keel.tenants").await, 1);
    assert_eq!(
        app.count("select count(*) from keel.webhook_endpoints")
            .await,
        1
    );
}
