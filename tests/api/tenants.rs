use serde_json::{Value, json};

use crate::helpers::{ADMIN_KEY, error_body, spawn_app};

#[tokio::test]
async fn an_admin_creates_a_tenant_and_gets_its_key_once_while_only_a_hash_is_stored() {
    let app = spawn_app().await;

    let response = app
        .post_json(
            "/api/tenants",
            ADMIN_KEY,
            &json!({"name": "Joe's Diner", "slug": "joes-diner"}),
        )
        .await;

    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["tenant"]["slug"], "joes-diner");
    assert_eq!(body["tenant"]["name"], "Joe's Diner");
    assert!(body["tenant"]["id"].as_str().unwrap().len() == 36);
    assert!(body["tenant"]["created_at"].is_string());
    let key = body["api_key"].as_str().unwrap();
    assert!(key.starts_with("keel_") && key.len() == 48, "{key}");

    let stored = app.db.connect().await;
    let row = stored
        .query_one("select key_hash, prefix from keel.api_keys", &[])
        .await
        .unwrap();
    let (hash, prefix): (String, String) = (row.get(0), row.get(1));
    assert_eq!(hash, keel::tenants::keys::hash_key(key));
    assert!(key.starts_with(&prefix) && prefix.len() < 16);
    let leaked = stored
        .query_one(
            "select count(*) from keel.api_keys k where row_to_json(k)::text like '%' || $1 || '%'",
            &[&&key[5..]],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(leaked, 0, "the key itself is never stored");
}

#[tokio::test]
async fn a_taken_slug_is_a_conflict() {
    let app = spawn_app().await;
    app.create_tenant("clinic").await;

    let response = app
        .post_json(
            "/api/tenants",
            ADMIN_KEY,
            &json!({"name": "Another clinic", "slug": "clinic"}),
        )
        .await;

    assert_eq!(response.status(), 409);
    let error = error_body(response).await;
    assert_eq!(error["code"], "conflict");
    assert_eq!(
        error["message"],
        "a tenant with slug \"clinic\" already exists"
    );
    assert_eq!(app.count("select count(*) from keel.tenants").await, 1);
}

#[tokio::test]
async fn bad_tenant_requests_are_refused_naming_the_field_and_store_nothing() {
    let app = spawn_app().await;
    let cases = [
        (
            json!({"name": "Shop", "slug": "Shop"}),
            "`slug` must be 1 to 63 lowercase",
            "uppercase slug",
        ),
        (
            json!({"name": "Shop", "slug": "-shop"}),
            "`slug` must be 1 to 63 lowercase",
            "leading hyphen",
        ),
        (
            json!({"name": "Shop", "slug": "s".repeat(64)}),
            "`slug` must be 1 to 63 lowercase",
            "too long",
        ),
        (
            json!({"name": "  ", "slug": "shop"}),
            "`name` must be 1 to 200 characters",
            "blank name",
        ),
        (
            json!({"slug": "shop"}),
            "missing field `name`",
            "missing name",
        ),
        (
            json!({"name": "Shop", "slug": "shop", "plan": "pro"}),
            "unknown field `plan`",
            "unknown field",
        ),
        (
            json!({"name": 7, "slug": "shop"}),
            "`name`: invalid type: integer `7`",
            "wrong type",
        ),
    ];
    for (body, message, reason) in cases {
        let response = app.post_json("/api/tenants", ADMIN_KEY, &body).await;
        assert_eq!(response.status(), 400, "{reason}");
        let error = error_body(response).await;
        assert!(
            error["message"].as_str().unwrap().contains(message),
            "{reason}: {error}"
        );
    }
    assert_eq!(app.count("select count(*) from keel.tenants").await, 0);
}

#[tokio::test]
async fn admin_routes_need_the_admin_key() {
    let app = spawn_app().await;
    let tenant_key = app.create_tenant("shop").await;
    let requests = [
        (reqwest::Method::GET, "/api/tenants"),
        (reqwest::Method::POST, "/api/tenants"),
        (reqwest::Method::POST, "/api/tenants/shop/keys"),
    ];

    for (method, path) in requests {
        for credential in [
            None,
            Some("wrong-admin-key-0123456789abcdef0123"),
            Some(tenant_key.as_str()),
        ] {
            let mut request = app
                .client
                .request(method.clone(), app.url(path))
                .json(&json!({}));
            if let Some(credential) = credential {
                request = request.bearer_auth(credential);
            }
            let response = request.send().await.unwrap();
            assert_eq!(
                response.status(),
                401,
                "{method} {path} with {credential:?}"
            );
        }
    }
}

#[tokio::test]
async fn tenants_are_listed_in_pages() {
    let app = spawn_app().await;
    for slug in ["alpha", "bravo", "charlie"] {
        app.create_tenant(slug).await;
    }

    let mut slugs = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = app.url("/api/tenants?limit=2");
        if let Some(cursor) = &cursor {
            url.push_str(&format!("&cursor={cursor}"));
        }
        let body: Value = app
            .client
            .get(url)
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for tenant in body["tenants"].as_array().unwrap() {
            slugs.push(tenant["slug"].as_str().unwrap().to_owned());
            assert_eq!(tenant["active_keys"], 1);
        }
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(slugs, ["alpha", "bravo", "charlie"]);

    let response = app.get_authorized("/api/tenants?limit=0", ADMIN_KEY).await;
    assert_eq!(response.status(), 400);
    assert!(
        error_body(response).await["message"]
            .as_str()
            .unwrap()
            .starts_with("`limit`")
    );
}

#[tokio::test]
async fn a_new_key_can_revoke_the_old_ones() {
    let app = spawn_app().await;
    let old_key = app.create_tenant("bistro").await;
    let search = json!({"query": "menu", "mode": "keyword"});
    assert_eq!(app.search(&old_key, search.clone()).await.status(), 200);

    // A second key without revoking: both work.
    let second: Value = app
        .client
        .post(app.url("/api/tenants/bistro/keys"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let second_key = second["api_key"].as_str().unwrap().to_owned();
    assert_eq!(second["revoked"], 0);
    assert_eq!(app.search(&old_key, search.clone()).await.status(), 200);

    // Rotation after a leak: a third key revokes the other two.
    let response = app
        .post_json(
            "/api/tenants/bistro/keys",
            ADMIN_KEY,
            &json!({"revoke_existing": true}),
        )
        .await;
    assert_eq!(response.status(), 201);
    let third: Value = response.json().await.unwrap();
    assert_eq!(third["revoked"], 2);
    assert_eq!(third["tenant"]["slug"], "bistro");
    let new_key = third["api_key"].as_str().unwrap();

    assert_eq!(app.search(&old_key, search.clone()).await.status(), 401);
    assert_eq!(app.search(&second_key, search.clone()).await.status(), 401);
    assert_eq!(app.search(new_key, search).await.status(), 200);
}

#[tokio::test]
async fn issuing_a_key_for_an_unknown_tenant_is_404() {
    let app = spawn_app().await;

    let response = app
        .client
        .post(app.url("/api/tenants/nobody/keys"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 404);
    assert_eq!(
        error_body(response).await["message"],
        "no tenant with slug \"nobody\""
    );
    assert_eq!(app.count("select count(*) from keel.api_keys").await, 0);
}

#[tokio::test]
async fn missing_unknown_and_revoked_keys_get_the_same_401() {
    let app = spawn_app().await;
    let revoked = app.create_tenant("cafe").await;
    app.post_json(
        "/api/tenants/cafe/keys",
        ADMIN_KEY,
        &json!({"revoke_existing": true}),
    )
    .await;
    let unknown = keel::tenants::keys::issue_key().key;

    let mut bodies = Vec::new();
    for key in [
        None,
        Some("not-a-keel-key"),
        Some(unknown.as_str()),
        Some(revoked.as_str()),
    ] {
        let mut request = app.client.get(app.url("/api/documents"));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{key:?}");
        let mut error = error_body(response).await;
        error["request_id"] = Value::Null;
        bodies.push(error);
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "{bodies:?}");
}
