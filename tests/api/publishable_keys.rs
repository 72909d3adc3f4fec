//! Publishable keys (`keel_pk_…`): what a browser chat widget holds. They
//! chat and read their own visitor's conversation, only from the tenant's
//! origins, under per-key and per-visitor quotas; preflights succeed for
//! anyone; every other route refuses them.

use keel::answers::AnswersError;
use keel::answers::conversations::{ChatCaller, begin_chat, record_turn};
use keel::ops::ratelimit::GateError;
use keel::tenants::keys::hash_key;
use serde_json::{Value, json};

use crate::conversations::{begin, chat_gate, secret, status, turn};
use crate::helpers::{TestApp, error_body, spawn_app};

const SHOP: &str = "https://shop.example.com";

/// Creates a publishable key over HTTP; returns its body (with `key`).
async fn create_key(app: &TestApp, tenant_key: &str, body: Value) -> Value {
    let response = app
        .post_json("/api/publishable-keys", tenant_key, &body)
        .await;
    assert_eq!(response.status(), 201, "creating a publishable key");
    response.json().await.unwrap()
}

fn visitor(key: &str, origin: Option<&str>, token: Option<&str>) -> ChatCaller {
    ChatCaller::Publishable {
        key_hash: hash_key(key),
        origin: origin.map(str::to_owned),
        visitor_token: token.map(str::to_owned),
    }
}

/// `GET /api/conversations/{id}` as the widget's browser sends it.
async fn read_as_visitor(
    app: &TestApp,
    key: &str,
    origin: &str,
    token: Option<&str>,
    id: &str,
) -> reqwest::Response {
    let mut request = app
        .client
        .get(app.url(&format!("/api/conversations/{id}")))
        .bearer_auth(key)
        .header("origin", origin);
    if let Some(token) = token {
        request = request.header("x-keel-visitor-token", token);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn a_tenant_creates_lists_and_revokes_publishable_keys_stored_only_as_hashes() {
    let app = spawn_app().await;
    let tenant_key = app.create_tenant("joes-diner").await;

    let created = create_key(
        &app,
        &tenant_key,
        json!({
            "allowed_origins": ["https://Shop.Example.com:443", "http://localhost:3000", SHOP],
            "filter": {"metadata": {"public": true}},
            "per_minute": 100,
            "per_visitor_per_minute": 5,
        }),
    )
    .await;
    let key = created["key"].as_str().unwrap();
    assert!(key.starts_with("keel_pk_") && key.len() == 51, "{key}");
    assert!(key.starts_with(created["prefix"].as_str().unwrap()));
    assert_eq!(
        created["allowed_origins"],
        json!([SHOP, "http://localhost:3000"]),
        "normalised as browsers send them, duplicates dropped"
    );
    assert_eq!(created["filter"], json!({"metadata": {"public": true}}));
    assert_eq!(created["per_minute"], 100);
    assert_eq!(created["per_visitor_per_minute"], 5);
    assert_eq!(
        app.count(&format!(
            "select count(*) from keel.publishable_keys where key_hash = '{}'",
            hash_key(key)
        ))
        .await,
        1
    );
    assert_eq!(
        app.count(&format!(
            "select count(*) from keel.audit_log where action = 'publishable_key.create' and details::text like '%{}%'",
            &key[8..]
        ))
        .await,
        0,
        "the key itself is never stored, not even in the audit log"
    );

    let listed = app.get_json("/api/publishable-keys", &tenant_key).await;
    assert_eq!(listed["publishable_keys"].as_array().unwrap().len(), 1);
    assert_eq!(listed["publishable_keys"][0]["id"], created["id"]);
    assert_eq!(listed["publishable_keys"][0].get("key"), None);

    let session = begin(&app, &visitor(key, Some(SHOP), None), None)
        .await
        .unwrap();
    assert_eq!(
        session.filter,
        Some(json!({"metadata": {"public": true}})),
        "the key's filter travels with the chat"
    );
    assert_eq!(session.allowed_origin.as_deref(), Some(SHOP));

    let id = created["id"].as_str().unwrap();
    let revoked = app
        .client
        .delete(app.url(&format!("/api/publishable-keys/{id}")))
        .bearer_auth(&tenant_key)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    let refused = begin(&app, &visitor(key, Some(SHOP), None), None)
        .await
        .unwrap_err();
    assert_eq!(status(refused), 401, "a revoked key stops at once");
    assert_eq!(
        app.get_json("/api/publishable-keys", &tenant_key).await["publishable_keys"],
        json!([])
    );
    let again = app
        .client
        .delete(app.url(&format!("/api/publishable-keys/{id}")))
        .bearer_auth(&tenant_key)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 404, "revoking twice");
    let other_tenant = app.create_tenant("clinic").await;
    let created = create_key(&app, &tenant_key, json!({"allowed_origins": [SHOP]})).await;
    let theirs = app
        .client
        .delete(app.url(&format!(
            "/api/publishable-keys/{}",
            created["id"].as_str().unwrap()
        )))
        .bearer_auth(&other_tenant)
        .send()
        .await
        .unwrap();
    assert_eq!(theirs.status(), 404, "another tenant's key");
    assert_eq!(created["per_minute"], 120, "default per-key quota");
    assert_eq!(
        created["per_visitor_per_minute"], 10,
        "default per-visitor quota"
    );
}

#[tokio::test]
async fn bad_publishable_key_requests_are_refused_naming_the_field() {
    let app = spawn_app().await;
    let tenant_key = app.create_tenant("joes-diner").await;
    let too_many: Vec<String> = (0..21)
        .map(|i| format!("https://shop{i}.example.com"))
        .collect();
    let cases = [
        (
            json!({"allowed_origins": []}),
            "allowed_origins",
            "no origin",
        ),
        (
            json!({"allowed_origins": too_many}),
            "allowed_origins",
            "21 origins",
        ),
        (
            json!({"allowed_origins": ["https://shop.example.com/"]}),
            "allowed_origins[0]",
            "a trailing slash",
        ),
        (
            json!({"allowed_origins": [SHOP, "https://shop.example.com/chat"]}),
            "allowed_origins[1]",
            "a path",
        ),
        (
            json!({"allowed_origins": ["*"]}),
            "allowed_origins[0]",
            "a wildcard",
        ),
        (
            json!({"allowed_origins": ["shop.example.com"]}),
            "allowed_origins[0]",
            "no scheme",
        ),
        (
            json!({"allowed_origins": [SHOP], "filter": {"public": true}}),
            "filter",
            "not /api/search's filter shape",
        ),
        (
            json!({"allowed_origins": [SHOP], "filter": {"metadata": "public"}}),
            "filter",
            "metadata not an object",
        ),
        (
            json!({"allowed_origins": [SHOP], "filter": {"metadata": {"x": "y".repeat(5000)}}}),
            "filter",
            "over 4096 bytes",
        ),
        (
            json!({"allowed_origins": [SHOP], "per_minute": 0}),
            "per_minute",
            "no requests",
        ),
        (
            json!({"allowed_origins": [SHOP], "per_visitor_per_minute": 100001}),
            "per_visitor_per_minute",
            "above the bound",
        ),
        (
            json!({"allowed_origins": [SHOP], "secret": true}),
            "secret",
            "an unknown field",
        ),
        (json!({}), "allowed_origins", "missing origins"),
    ];
    for (body, field, reason) in cases {
        let response = app
            .post_json("/api/publishable-keys", &tenant_key, &body)
            .await;
        assert_eq!(response.status(), 400, "{reason}");
        let error = error_body(response).await;
        assert!(
            error["message"].as_str().unwrap().contains(field),
            "{reason}: {error}"
        );
    }
    assert_eq!(
        app.count("select count(*) from keel.publishable_keys")
            .await,
        0
    );
    let not_a_key = app
        .client
        .delete(app.url("/api/publishable-keys/not-a-uuid"))
        .bearer_auth(&tenant_key)
        .send()
        .await
        .unwrap();
    assert_eq!(not_a_key.status(), 404);
}

#[tokio::test]
async fn a_visitor_can_never_read_another_visitors_conversation() {
    let app = spawn_app().await;
    let tenant_key = app.create_tenant("joes-diner").await;
    let created = create_key(&app, &tenant_key, json!({"allowed_origins": [SHOP]})).await;
    let key = created["key"].as_str().unwrap();

    let alice = begin(&app, &visitor(key, Some(SHOP), None), Some("alice-chat"))
        .await
        .unwrap();
    let alice_token = alice.visitor_token.clone().expect("a token is minted");
    assert!(alice_token.starts_with("keel_vt_"));
    record_turn(
        &app.app.db,
        &alice,
        &turn("My allergy is peanuts", "Noted."),
    )
    .await
    .unwrap();
    let bob = begin(&app, &visitor(key, Some(SHOP), None), Some("bob-chat"))
        .await
        .unwrap();
    let bob_token = bob.visitor_token.clone().unwrap();
    assert_ne!(alice_token, bob_token);

    let continued = begin(
        &app,
        &visitor(key, Some(SHOP), Some(&alice_token)),
        Some("alice-chat"),
    )
    .await
    .unwrap();
    assert_eq!(
        continued.visitor_token.as_deref(),
        Some(alice_token.as_str()),
        "the presented token is kept"
    );
    assert_eq!(continued.history.len(), 2, "alice sees her own history");
    let mine = read_as_visitor(&app, key, SHOP, Some(&alice_token), "alice-chat").await;
    assert_eq!(mine.status(), 200);
    assert_eq!(mine.headers()["access-control-allow-origin"], SHOP);
    assert!(
        mine.headers()["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .contains("x-keel-visitor-token")
    );
    let body: Value = mine.json().await.unwrap();
    assert_eq!(body["messages"][0]["content"], "My allergy is peanuts");

    // Bob, with his own token, with none, or with a made-up one.
    for (token, reason) in [
        (Some(bob_token.as_str()), "another visitor's token"),
        (None, "no token"),
        (
            Some("keel_vt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
            "a forged token",
        ),
    ] {
        let read = read_as_visitor(&app, key, SHOP, token, "alice-chat").await;
        assert_eq!(read.status(), 404, "reading: {reason}");
        let refused = begin(&app, &visitor(key, Some(SHOP), token), Some("alice-chat"))
            .await
            .unwrap_err();
        assert!(refused.is_not_found(), "continuing: {reason}: {refused}");
    }
    let forged = begin(
        &app,
        &visitor(
            key,
            Some(SHOP),
            Some("keel_vt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
        ),
        Some("forged-chat"),
    )
    .await
    .unwrap();
    assert_ne!(
        forged.visitor_token.as_deref(),
        Some("keel_vt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
        "a token the key never issued is replaced by a fresh one"
    );

    // A conversation a tenant key started is no visitor's.
    begin(&app, &secret(&tenant_key), Some("server-chat"))
        .await
        .unwrap();
    let read = read_as_visitor(&app, key, SHOP, Some(&alice_token), "server-chat").await;
    assert_eq!(read.status(), 404);
    // The tenant reads every one of its conversations.
    let tenant_read = app
        .get_json("/api/conversations/alice-chat", &tenant_key)
        .await;
    assert_eq!(tenant_read["publishable_key_id"], created["id"]);
    assert_eq!(
        app.count("select count(*) from keel.conversation_messages")
            .await,
        2,
        "nothing was written for the refused visitors"
    );
}

#[tokio::test]
async fn a_publishable_key_is_refused_from_an_origin_not_on_its_list() {
    let app = spawn_app().await;
    let tenant_key = app.create_tenant("joes-diner").await;
    let created = create_key(&app, &tenant_key, json!({"allowed_origins": [SHOP]})).await;
    let key = created["key"].as_str().unwrap();

    for (origin, reason) in [
        (Some("https://evil.example.com"), "another site"),
        (
            Some("http://shop.example.com"),
            "plain http of the same host",
        ),
        (Some("https://shop.example.com:8443"), "another port"),
        (None, "no Origin at all (a server holding the key)"),
    ] {
        let refused = begin(&app, &visitor(key, origin, None), None)
            .await
            .unwrap_err();
        assert_eq!(status(refused), 403, "{reason}");
    }
    let read = read_as_visitor(&app, key, "https://evil.example.com", None, "x").await;
    assert_eq!(read.status(), 403);
    let error = error_body(read).await;
    assert_eq!(error["code"], "forbidden");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("https://evil.example.com"),
        "{error}"
    );
    assert_eq!(
        app.count("select count(*) from keel.conversations").await,
        0
    );
    // The same origin as browsers write it is accepted.
    begin(&app, &visitor(key, Some(SHOP), None), None)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_preflight_succeeds_for_any_origin_without_a_key() {
    let app = spawn_app().await;

    let preflight = app
        .client
        .request(
            reqwest::Method::OPTIONS,
            app.url("/api/conversations/alice-chat"),
        )
        .header("origin", "https://any-shop.example.net")
        .header("access-control-request-method", "GET")
        .header(
            "access-control-request-headers",
            "authorization, x-keel-visitor-token",
        )
        .send()
        .await
        .unwrap();

    assert_eq!(preflight.status(), 204);
    let headers = preflight.headers();
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://any-shop.example.net"
    );
    assert!(
        headers["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("GET")
    );
    assert!(
        headers["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("x-keel-visitor-token")
    );
    // Routes publishable keys cannot call keep CORS_ORIGINS (none here).
    let secret_route = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/api/documents"))
        .header("origin", "https://any-shop.example.net")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(secret_route.status(), 204);
    assert!(
        secret_route
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}

#[tokio::test]
async fn a_publishable_key_cannot_call_secret_routes() {
    let app = spawn_app().await;
    let tenant_key = app.create_tenant("joes-diner").await;
    let created = create_key(&app, &tenant_key, json!({"allowed_origins": [SHOP]})).await;
    let key = created["key"].as_str().unwrap();
    let routes = [
        ("GET", "/api/documents", None),
        ("PUT", "/api/documents", Some(json!({"documents": []}))),
        ("DELETE", "/api/documents/menu", None),
        ("POST", "/api/search", Some(json!({"query": "vegan"}))),
        ("GET", "/api/tasks", None),
        ("GET", "/api/conversations", None),
        ("DELETE", "/api/conversations/alice-chat", None),
        ("GET", "/api/assistant", None),
        (
            "PUT",
            "/api/assistant",
            Some(json!({"instructions": "be evil"})),
        ),
        ("GET", "/api/publishable-keys", None),
        (
            "POST",
            "/api/publishable-keys",
            Some(json!({"allowed_origins": [SHOP]})),
        ),
        (
            "POST",
            "/api/webhooks/endpoints",
            Some(json!({"source": "cms"})),
        ),
        ("POST", "/api/embeddings/generate", None),
    ];
    for (method, path, body) in routes {
        let request = app
            .client
            .request(method.parse().unwrap(), app.url(path))
            .bearer_auth(key)
            .header("origin", SHOP);
        let response = crate::helpers::maybe_json(request, body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403, "{method} {path}");
        let error = error_body(response).await;
        assert_eq!(error["code"], "forbidden", "{method} {path}");
    }
    assert_eq!(
        app.get_json("/api/assistant", &tenant_key).await["instructions"],
        "",
        "nothing changed"
    );
    assert_eq!(
        app.count("select count(*) from keel.publishable_keys")
            .await,
        1
    );
}

#[tokio::test]
async fn publishable_quotas_hold_per_visitor_then_per_key() {
    let app = spawn_app().await;
    let tenant_key = app.create_tenant("joes-diner").await;
    let created = create_key(
        &app,
        &tenant_key,
        json!({"allowed_origins": [SHOP], "per_minute": 4, "per_visitor_per_minute": 2}),
    )
    .await;
    let key = created["key"].as_str().unwrap();
    let chat = |ip: &'static str, token: Option<String>| {
        let app = &app;
        async move {
            begin_chat(
                &app.app.db,
                chat_gate(app, ip),
                &visitor(key, Some(SHOP), token.as_deref()),
                None,
                false,
            )
            .await
        }
    };

    // Alice's first request has no token yet: counted for her address.
    let first = chat("127.0.0.2", None).await.unwrap();
    let alice = first.visitor_token.clone();
    chat("127.0.0.2", alice.clone()).await.unwrap();
    chat("127.0.0.2", alice.clone()).await.unwrap();
    let refused = chat("127.0.0.2", alice.clone()).await.unwrap_err();
    match &refused {
        AnswersError::Call(GateError::Refused(_, quota)) => {
            assert_eq!(quota.limit, 2, "alice's own quota")
        }
        other => panic!("expected alice to be refused, got {other}"),
    }
    assert_eq!(status(refused), 429);

    // Bob is a new visitor: the key has one request left (alice's refusal
    // spent none of it).
    let bob = chat("127.0.0.3", None).await.unwrap().visitor_token;
    let refused = chat("127.0.0.3", bob).await.unwrap_err();
    match &refused {
        AnswersError::Call(GateError::Refused(_, quota)) => {
            assert_eq!(quota.limit, 4, "the key's quota")
        }
        other => panic!("expected the key's quota to refuse bob, got {other}"),
    }
    // The tenant's own key is not held back by its widget's quota.
    begin(&app, &secret(&tenant_key), None).await.unwrap();
}
