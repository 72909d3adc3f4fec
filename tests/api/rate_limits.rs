//! Quotas: per tenant on tenant-key routes (per client address for keys that
//! authenticate no tenant), per client address on unauthenticated ones, per
//! endpoint and sender address on webhook intake; 429 with `Retry-After` and
//! `RateLimit-*` headers. Every request that reaches the database counts,
//! whatever it answers.

use reqwest::Response;
use serde_json::{Value, json};

use crate::helpers::{ADMIN_KEY, TestApp, client_from, error_body, spawn_app_with};

fn header(response: &Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("missing {name}"))
        .to_str()
        .unwrap()
        .to_owned()
}

fn seconds(response: &Response, name: &str) -> u64 {
    header(response, name).parse().expect("whole seconds")
}

async fn app_with_quota(variable: &'static str, per_minute: u32) -> TestApp {
    spawn_app_with(|_, vars| {
        vars.insert(variable.into(), per_minute.to_string());
    })
    .await
}

async fn keyword_search(app: &TestApp, key: &str) -> Response {
    app.search(key, json!({"query": "vegan pizza", "mode": "keyword"}))
        .await
}

#[tokio::test]
async fn searches_over_the_tenant_quota_get_429_with_retry_after_and_ratelimit_headers() {
    let app = app_with_quota("RATE_LIMIT_SEARCH_PER_MINUTE", 3).await;
    let key = app.create_tenant("shop").await;

    for remaining in [2, 1, 0] {
        let response = keyword_search(&app, &key).await;
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "ratelimit-limit"), "3");
        assert_eq!(
            header(&response, "ratelimit-remaining"),
            remaining.to_string()
        );
        assert_eq!(header(&response, "ratelimit-policy"), "3;w=60");
        assert!((1..=60).contains(&seconds(&response, "ratelimit-reset")));
    }
    let refused = keyword_search(&app, &key).await;

    assert_eq!(refused.status(), 429);
    let retry_after = seconds(&refused, "retry-after");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(seconds(&refused, "ratelimit-reset"), retry_after);
    assert_eq!(header(&refused, "ratelimit-remaining"), "0");
    assert_eq!(header(&refused, "ratelimit-limit"), "3");
    let error = error_body(refused).await;
    assert_eq!(error["code"], "rate_limited");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("3 requests per minute") && message.contains("search"),
        "{message}"
    );
    assert_eq!(
        app.count("select coalesce(sum(value), 0)::bigint from keel.counters where name = 'rate_limited_search'")
            .await,
        1
    );
}

#[tokio::test]
async fn one_tenant_using_up_its_quota_leaves_other_tenants_theirs_and_its_keys_share_one() {
    let app = app_with_quota("RATE_LIMIT_SEARCH_PER_MINUTE", 2).await;
    let shop = app.create_tenant("shop").await;
    let clinic = app.create_tenant("clinic").await;
    let rotated: Value = app
        .post_json("/api/tenants/shop/keys", ADMIN_KEY, &json!({}))
        .await
        .json()
        .await
        .unwrap();
    let second_shop_key = rotated["api_key"].as_str().unwrap();

    assert_eq!(keyword_search(&app, &shop).await.status(), 200);
    assert_eq!(keyword_search(&app, second_shop_key).await.status(), 200);

    assert_eq!(
        keyword_search(&app, &shop).await.status(),
        429,
        "the first key draws from the same tenant quota"
    );
    assert_eq!(keyword_search(&app, second_shop_key).await.status(), 429);
    let other = keyword_search(&app, &clinic).await;
    assert_eq!(other.status(), 200);
    assert_eq!(header(&other, "ratelimit-remaining"), "1");
}

#[tokio::test]
async fn a_refused_request_writes_nothing() {
    let app = app_with_quota("RATE_LIMIT_TENANT_PER_MINUTE", 1).await;
    let key = app.create_tenant("shop").await;
    let document = |id: &str| json!([{"id": id, "title": "Menu", "content": "Margherita pizza."}]);

    assert_eq!(
        app.put_documents(&key, document("menu")).await.status(),
        200
    );
    let refused = app.put_documents(&key, document("hours")).await;

    assert_eq!(refused.status(), 429);
    assert_eq!(
        app.count("select count(*) from keel.documents").await,
        1,
        "the refused document was not stored"
    );
}

/// A large quota is counted as exactly as a small one, concurrent requests
/// included, while the bucket's log stays a bounded number of rows (0028
/// folds it into one row per second), so the check costs the same at any limit.
#[tokio::test]
async fn a_large_quota_counts_every_request_exactly_and_keeps_its_log_short() {
    const LIMIT: usize = 450;
    const CONCURRENT: usize = 400;
    let app = app_with_quota("RATE_LIMIT_SEARCH_PER_MINUTE", LIMIT as u32).await;
    let key = app.create_tenant("shop").await;

    let workers = (0..8).map(|_| async {
        let mut statuses = Vec::new();
        for _ in 0..CONCURRENT / 8 {
            statuses.push(keyword_search(&app, &key).await.status());
        }
        statuses
    });
    let statuses: Vec<_> = futures::future::join_all(workers)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(
        app.count("select coalesce(sum(hits), 0)::bigint from keel.rate_limit_hits")
            .await,
        CONCURRENT as i64,
        "folding neither loses nor duplicates a concurrent request"
    );
    let rows = app.count("select count(*) from keel.rate_limit_hits").await;
    assert!(rows < 200, "{rows} rows for {CONCURRENT} requests");

    for remaining in (0..LIMIT - CONCURRENT).rev() {
        let response = keyword_search(&app, &key).await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            header(&response, "ratelimit-remaining"),
            remaining.to_string()
        );
    }
    let refused = keyword_search(&app, &key).await;
    assert_eq!(refused.status(), 429);
    let retry_after = seconds(&refused, "retry-after");
    assert!((1..=61).contains(&retry_after), "{retry_after}");
}

/// Folding moves a hit to the end of its second, never earlier: a folded hit
/// is never forgotten before its window is over.
#[tokio::test]
async fn folded_hits_count_until_the_end_of_their_second() {
    let app = spawn_app_with(|_, _| {}).await;
    let db = app.db.connect().await;
    db.batch_execute(
        "create temp table seeded as
           select date_trunc('second', clock_timestamp()) - interval '9.7 seconds' as at;
         insert into keel.rate_limit_hits (bucket, at)
           select 'test:fold', seeded.at from seeded, generate_series(1, 130);",
    )
    .await
    .unwrap();

    let quota: String = db
        .query_one("select keel.take_quota('test:fold', 1000, 60)::text", &[])
        .await
        .unwrap()
        .get(0);

    let quota: Value = serde_json::from_str(&quota).unwrap();
    assert_eq!(quota["allowed"], true);
    assert_eq!(quota["remaining"], 1000 - 131);
    let reset = quota["reset"].as_i64().unwrap();
    assert!((50..=51).contains(&reset), "{reset}");
    let folded = db
        .query_one(
            "select count(*), sum(hits)::bigint,
                    count(*) filter (where h.hits = 130
                                       and h.at = date_trunc('second', s.at) + interval '1 second')
             from keel.rate_limit_hits h, seeded s where h.bucket = 'test:fold'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            folded.get::<_, i64>(0),
            folded.get::<_, i64>(1),
            folded.get::<_, i64>(2)
        ),
        (2, 131, 1),
        "the 130 seeded hits in one row at the end of their second, the new hit in its own"
    );
}

#[tokio::test]
async fn quota_returns_once_counted_requests_leave_the_one_minute_window() {
    let app = app_with_quota("RATE_LIMIT_SEARCH_PER_MINUTE", 1).await;
    let key = app.create_tenant("shop").await;
    assert_eq!(keyword_search(&app, &key).await.status(), 200);
    assert_eq!(keyword_search(&app, &key).await.status(), 429);

    // Age the counted request past the window instead of sleeping a minute.
    app.db
        .connect()
        .await
        .execute(
            "update keel.rate_limit_hits set at = at - interval '61 seconds'",
            &[],
        )
        .await
        .unwrap();

    let response = keyword_search(&app, &key).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "ratelimit-remaining"), "0");
}

#[tokio::test]
async fn unauthenticated_routes_are_limited_per_client_address() {
    let app = app_with_quota("RATE_LIMIT_ANONYMOUS_PER_MINUTE", 2).await;
    let first = client_from("127.0.0.2");
    let second = client_from("127.0.0.3");
    let ready = |client: &reqwest::Client| client.get(app.url("/api/ready")).send();

    assert_eq!(ready(&first).await.unwrap().status(), 200);
    assert_eq!(ready(&first).await.unwrap().status(), 200);
    let refused = ready(&first).await.unwrap();

    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(error_body(refused).await["code"], "rate_limited");
    let other = ready(&second).await.unwrap();
    assert_eq!(other.status(), 200, "another address has its own quota");
    assert_eq!(header(&other, "ratelimit-remaining"), "1");
    assert!(
        app.get("/api/health").await.status().is_success(),
        "liveness is never limited"
    );
}

#[tokio::test]
async fn webhook_intake_is_limited_per_endpoint_and_sender_address_and_refusals_store_nothing() {
    let app = app_with_quota("RATE_LIMIT_WEBHOOK_PER_MINUTE", 1).await;
    let key = app.create_tenant("shop").await;
    let (endpoint, secret) = app
        .create_webhook_endpoint(&key, json!({"source": "shopify"}))
        .await;
    let event = json!({"type": "order.created", "data": {"id": 1}});

    assert_eq!(
        app.deliver(&endpoint, &secret, "msg_1", &event)
            .await
            .status(),
        200
    );
    let refused = app.deliver(&endpoint, &secret, "msg_2", &event).await;

    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(
        app.count("select count(*) from keel.webhook_deliveries")
            .await,
        1
    );
    assert_eq!(
        app.count("select coalesce(sum(value), 0)::bigint from keel.counters where name = 'rate_limited_webhook'")
            .await,
        1
    );
}

#[tokio::test]
async fn admin_cron_and_bad_credentials_do_not_draw_from_tenant_quotas() {
    let app = app_with_quota("RATE_LIMIT_SEARCH_PER_MINUTE", 1).await;
    let key = app.create_tenant("shop").await;
    let forged = format!("keel_{}", "A".repeat(43));
    let attacker = client_from("127.0.0.2");

    for _ in 0..3 {
        let response = attacker
            .post(app.url("/api/search"))
            .bearer_auth(&forged)
            .json(&json!({"query": "pizza", "mode": "keyword"}))
            .send()
            .await
            .unwrap();
        assert!([401, 429].contains(&response.status().as_u16()));
        app.run_cron("/api/cron/tasks").await;
    }
    let response = keyword_search(&app, &key).await;

    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "ratelimit-remaining"), "0");
}

/// `POST /api/search` from `client` with `key`.
async fn search_from(app: &TestApp, client: &reqwest::Client, key: &str) -> Response {
    client
        .post(app.url("/api/search"))
        .bearer_auth(key)
        .json(&json!({"query": "vegan pizza", "mode": "keyword"}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn forged_tenant_keys_are_counted_per_client_address_until_429() {
    let app = app_with_quota("RATE_LIMIT_SEARCH_PER_MINUTE", 2).await;
    let key = app.create_tenant("shop").await;
    let attacker = client_from("127.0.0.2");
    let bystander = client_from("127.0.0.3");
    let forged = format!("keel_{}", "A".repeat(43));

    assert_eq!(search_from(&app, &attacker, &forged).await.status(), 401);
    assert_eq!(search_from(&app, &attacker, &forged).await.status(), 401);
    let refused = search_from(&app, &attacker, &forged).await;

    assert_eq!(refused.status(), 429, "guessing keys is not unlimited");
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(error_body(refused).await["code"], "rate_limited");
    assert_eq!(
        search_from(&app, &bystander, &forged).await.status(),
        401,
        "another address has its own count"
    );
    let tenant = search_from(&app, &attacker, &key).await;
    assert_eq!(
        tenant.status(),
        200,
        "the tenant's own quota is untouched by the guesses"
    );
    assert_eq!(header(&tenant, "ratelimit-remaining"), "1");
}

#[tokio::test]
async fn requests_answered_404_still_consume_the_tenant_quota() {
    let app = app_with_quota("RATE_LIMIT_TENANT_PER_MINUTE", 2).await;
    let key = app.create_tenant("shop").await;
    let delete = || {
        app.client
            .delete(app.url("/api/documents/no-such-document"))
            .bearer_auth(&key)
            .send()
    };

    let first = delete().await.unwrap();
    assert_eq!(first.status(), 404);
    assert_eq!(header(&first, "ratelimit-remaining"), "1");
    assert_eq!(delete().await.unwrap().status(), 404);
    let refused = delete().await.unwrap();

    assert_eq!(refused.status(), 429);
    assert_eq!(
        app.count("select count(*) from keel.rate_limit_hits").await,
        2
    );
}

async fn deliver_unsigned(app: &TestApp, client: &reqwest::Client, endpoint: &str) -> Response {
    client
        .post(app.url(&format!("/api/webhooks/{endpoint}")))
        .header("webhook-id", "msg_1")
        .header("webhook-timestamp", "1700000000")
        .header("webhook-signature", "v1,AAAA")
        .body(r#"{"type":"call.ended"}"#)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn deliveries_to_an_unknown_endpoint_are_counted_until_429() {
    let app = app_with_quota("RATE_LIMIT_WEBHOOK_PER_MINUTE", 2).await;
    let unknown = "6f1c2a9e-0000-4000-8000-000000000000";

    assert_eq!(
        deliver_unsigned(&app, &app.client, unknown).await.status(),
        404
    );
    assert_eq!(
        deliver_unsigned(&app, &app.client, unknown).await.status(),
        404
    );
    let refused = deliver_unsigned(&app, &app.client, unknown).await;

    assert_eq!(
        refused.status(),
        429,
        "probing endpoint ids is not unlimited"
    );
    assert_eq!(error_body(refused).await["code"], "rate_limited");
}

#[tokio::test]
async fn one_tenants_burst_from_a_shared_sender_address_leaves_other_tenants_deliveries_alone() {
    let app = app_with_quota("RATE_LIMIT_WEBHOOK_PER_MINUTE", 2).await;
    let shop = app.create_tenant("shop").await;
    let clinic = app.create_tenant("clinic").await;
    let (shop_endpoint, shop_secret) = app
        .create_webhook_endpoint(&shop, json!({"source": "vapi"}))
        .await;
    let (clinic_endpoint, clinic_secret) = app
        .create_webhook_endpoint(&clinic, json!({"source": "vapi"}))
        .await;
    let event = json!({"type": "call.ended", "data": {"id": 1}});

    // The provider sends every customer's events from one address (here
    // the test client's).
    for id in ["msg_1", "msg_2"] {
        assert_eq!(
            app.deliver(&shop_endpoint, &shop_secret, id, &event)
                .await
                .status(),
            200
        );
    }
    assert_eq!(
        app.deliver(&shop_endpoint, &shop_secret, "msg_3", &event)
            .await
            .status(),
        429,
        "the shop's endpoint is over its quota"
    );

    assert_eq!(
        app.deliver(&clinic_endpoint, &clinic_secret, "msg_1", &event)
            .await
            .status(),
        200,
        "the clinic's deliveries from the same address still pass"
    );
}

#[tokio::test]
async fn forged_deliveries_from_another_address_cannot_use_up_an_endpoints_quota() {
    let app = app_with_quota("RATE_LIMIT_WEBHOOK_PER_MINUTE", 2).await;
    let key = app.create_tenant("shop").await;
    let (endpoint, secret) = app
        .create_webhook_endpoint(&key, json!({"source": "vapi"}))
        .await;
    let attacker = client_from("127.0.0.2");

    assert_eq!(
        deliver_unsigned(&app, &attacker, &endpoint).await.status(),
        401
    );
    assert_eq!(
        deliver_unsigned(&app, &attacker, &endpoint).await.status(),
        401
    );
    assert_eq!(
        deliver_unsigned(&app, &attacker, &endpoint).await.status(),
        429,
        "the forger is limited"
    );

    let event = json!({"type": "call.ended", "data": {"id": 1}});
    assert_eq!(
        app.deliver(&endpoint, &secret, "msg_1", &event)
            .await
            .status(),
        200,
        "the real sender, from its own address, is not"
    );
}
