use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{METRICS_TOKEN, TestApp, error_body, maybe_json, spawn_app, spawn_app_with};
use crate::support::{json_reply, serve_http};

fn upserted(id: &str, content: &str) -> Value {
    json!({"type": "document.upserted", "timestamp": "2026-11-21T10:00:00Z",
           "data": {"documents": [{"id": id, "title": "Menu", "content": content}]}})
}

async fn tenant_with_endpoint(app: &TestApp) -> (String, String, String) {
    let key = app.create_tenant("shop").await;
    let (endpoint, secret) = app
        .create_webhook_endpoint(&key, json!({"source": "shopify"}))
        .await;
    (key, endpoint, secret)
}

#[tokio::test]
async fn an_endpoint_shows_its_secret_once_and_stores_it_encrypted() {
    let app = spawn_app().await;
    let key = app.create_tenant("shop").await;

    let response = app
        .post_json("/api/webhooks/endpoints", &key, &json!({"source": "vapi"}))
        .await;

    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    let id = body["id"].as_str().unwrap();
    let secret = body["secret"].as_str().unwrap();
    assert_eq!(body["url"], format!("/api/webhooks/{id}"));
    assert!(secret.starts_with("whsec_") && secret.len() > 30);
    let stored = app.db.connect().await;
    let row = stored
        .query_one(
            "select secret_ciphertext, key_id, source from keel.webhook_endpoints",
            &[],
        )
        .await
        .unwrap();
    let ciphertext: String = row.get(0);
    assert!(!ciphertext.contains(&secret[6..]), "stored encrypted");
    assert_eq!(row.get::<_, String>(1).len(), 8, "with the key's id");
    assert_eq!(row.get::<_, String>(2), "vapi");
    let unauthenticated = app
        .client
        .post(app.url("/api/webhooks/endpoints"))
        .json(&json!({"source": "vapi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);
    let bad = app
        .post_json("/api/webhooks/endpoints", &key, &json!({"source": "Vapi!"}))
        .await;
    assert_eq!(bad.status(), 400);
    assert!(
        error_body(bad).await["message"]
            .as_str()
            .unwrap()
            .starts_with("`source`")
    );
}

#[tokio::test]
async fn a_signed_delivery_is_stored_before_the_200_then_synced_through_the_queue() {
    let app = spawn_app().await;
    let (key, endpoint, secret) = tenant_with_endpoint(&app).await;

    let response = app
        .deliver(
            &endpoint,
            &secret,
            "msg_1",
            &upserted("menu", "Vegan chili every Friday."),
        )
        .await;

    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"received": true, "duplicate": false})
    );
    assert_eq!(
        app.count("select count(*) from keel.webhook_deliveries where status = 'queued'")
            .await,
        1
    );
    assert_eq!(
        app.count(
            "select count(*) from keel.tasks where kind = 'webhook.process' and status = 'queued'"
        )
        .await,
        1
    );

    let report = app.run_cron("/api/cron/tasks").await;

    assert_eq!(
        report,
        json!({"ran": 1, "succeeded": 1, "failed": 0, "dead": 0, "remaining": 0})
    );
    let documents: Value = app.get_json("/api/documents", &key).await;
    assert_eq!(documents["documents"][0]["id"], "menu");
    assert_eq!(
        app.count("select count(*) from keel.webhook_deliveries where status = 'processed'")
            .await,
        1
    );

    // A later event deletes it.
    app.deliver(
        &endpoint,
        &secret,
        "msg_2",
        &json!({"type": "document.deleted", "data": {"id": "menu"}}),
    )
    .await;
    app.run_cron("/api/cron/tasks").await;
    assert_eq!(app.count("select count(*) from keel.documents").await, 0);
}

#[tokio::test]
async fn a_redelivery_is_a_duplicate_and_enqueues_nothing() {
    let app = spawn_app().await;
    let (_, endpoint, secret) = tenant_with_endpoint(&app).await;
    let event = upserted("menu", "Soup of the day.");
    app.deliver(&endpoint, &secret, "msg_1", &event).await;

    let again = app.deliver(&endpoint, &secret, "msg_1", &event).await;

    assert_eq!(again.status(), 200);
    assert_eq!(again.json::<Value>().await.unwrap()["duplicate"], true);
    assert_eq!(
        app.count("select count(*) from keel.webhook_deliveries")
            .await,
        1
    );
    assert_eq!(app.count("select count(*) from keel.tasks").await, 1);
}

#[tokio::test]
async fn forged_stale_and_malformed_deliveries_are_refused_and_store_nothing() {
    let app = spawn_app().await;
    let (_, endpoint, secret) = tenant_with_endpoint(&app).await;
    let body = upserted("menu", "x").to_string();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let sign = |id: &str, ts: i64, body: &str| {
        keel::webhooks::signatures::sign(&secret, id, ts, body.as_bytes())
    };
    let other_secret = "whsec_c29tZW9uZS1lbHNlcy1zZWNyZXQtMTIzNDU2";
    // (headers, body, status, code, reason)
    type Case<'a> = (Vec<(&'a str, String)>, String, u16, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec![
                ("webhook-id", "m".into()),
                ("webhook-timestamp", now.to_string()),
                (
                    "webhook-signature",
                    keel::webhooks::signatures::sign(other_secret, "m", now, body.as_bytes()),
                ),
            ],
            body.clone(),
            401,
            "invalid_signature",
            "signed with another secret",
        ),
        (
            vec![
                ("webhook-id", "m".into()),
                ("webhook-timestamp", now.to_string()),
                ("webhook-signature", sign("m", now, &body)),
            ],
            body.replace("menu", "mennu"),
            401,
            "invalid_signature",
            "body tampered in transit",
        ),
        (
            vec![
                ("webhook-id", "m".into()),
                ("webhook-timestamp", (now - 600).to_string()),
                ("webhook-signature", sign("m", now - 600, &body)),
            ],
            body.clone(),
            401,
            "stale_timestamp",
            "a replay ten minutes later",
        ),
        (
            vec![
                ("webhook-timestamp", now.to_string()),
                ("webhook-signature", sign("m", now, &body)),
            ],
            body.clone(),
            400,
            "missing_header",
            "no webhook-id",
        ),
        (
            vec![
                ("webhook-id", "m".into()),
                ("webhook-signature", sign("m", now, &body)),
            ],
            body.clone(),
            400,
            "missing_header",
            "no webhook-timestamp",
        ),
        (
            vec![
                ("webhook-id", "m".into()),
                ("webhook-timestamp", "soon".into()),
                ("webhook-signature", sign("m", now, &body)),
            ],
            body.clone(),
            400,
            "invalid_header",
            "timestamp not a number",
        ),
        (
            vec![
                ("webhook-id", "m".into()),
                ("webhook-timestamp", now.to_string()),
                ("webhook-signature", sign("m", now, "not json")),
            ],
            "not json".into(),
            400,
            "invalid_payload",
            "authentic but not JSON",
        ),
        (
            vec![
                ("webhook-id", "m".into()),
                ("webhook-timestamp", now.to_string()),
                ("webhook-signature", sign("m", now, "{}")),
            ],
            "{}".into(),
            400,
            "invalid_payload",
            "no event type",
        ),
    ];
    for (headers, body, status, code, reason) in cases {
        let mut request = app
            .client
            .post(app.url(&format!("/api/webhooks/{endpoint}")))
            .body(body);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{reason}");
        assert_eq!(error_body(response).await["code"], code, "{reason}");
    }
    let unknown = app
        .deliver(
            "00000000-0000-0000-0000-000000000000",
            &secret,
            "m",
            &upserted("a", "b"),
        )
        .await;
    assert_eq!(unknown.status(), 404);
    assert_eq!(
        app.deliver("not-a-uuid", &secret, "m", &upserted("a", "b"))
            .await
            .status(),
        404
    );

    assert_eq!(
        app.count("select count(*) from keel.webhook_deliveries")
            .await,
        0
    );
    assert_eq!(app.count("select count(*) from keel.tasks").await, 0);
    assert_eq!(app.count("select coalesce(sum(value), 0)::bigint from keel.counters where name = 'webhooks_rejected'").await, 8);
}

#[tokio::test]
async fn other_events_are_stored_and_listed_for_integrations() {
    let app = spawn_app().await;
    let (key, endpoint, secret) = tenant_with_endpoint(&app).await;
    for i in 0..3 {
        app.deliver(
            &endpoint,
            &secret,
            &format!("call_{i}"),
            &json!({"type": "call.ended", "data": {"call": i}}),
        )
        .await;
    }
    app.run_cron("/api/cron/tasks").await;

    let first: Value = app.get_json("/api/webhooks/deliveries?limit=2", &key).await;
    let cursor = first["next_cursor"].as_str().unwrap();
    let second: Value = app
        .get_json(
            &format!("/api/webhooks/deliveries?limit=2&cursor={cursor}"),
            &key,
        )
        .await;

    let deliveries: Vec<&Value> = first["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .chain(second["deliveries"].as_array().unwrap())
        .collect();
    assert_eq!(deliveries.len(), 3);
    assert_eq!(second["next_cursor"], Value::Null);
    for (i, delivery) in deliveries.iter().enumerate() {
        assert_eq!(delivery["webhook_id"], format!("call_{i}"));
        assert_eq!(delivery["endpoint_id"], endpoint);
        assert_eq!(delivery["event_type"], "call.ended");
        assert_eq!(delivery["status"], "stored");
        assert_eq!(delivery["payload"]["data"]["call"], i);
        assert!(delivery["received_at"].is_string());
    }
    // Another tenant sees none of them.
    let other = app.create_tenant("other").await;
    let theirs: Value = app.get_json("/api/webhooks/deliveries", &other).await;
    assert_eq!(theirs["deliveries"], json!([]));
}

#[tokio::test]
async fn five_hundred_concurrent_deliveries_are_all_stored_exactly_once() {
    let app = spawn_app_with(|_, vars| {
        vars.insert("DB_POOL_SIZE".into(), "16".into());
    })
    .await;
    let (_, endpoint, secret) = tenant_with_endpoint(&app).await;
    // 500 distinct events, a fifth of them redelivered at the same moment.
    let sends = (0..600).map(|i| {
        let id = format!("evt_{}", i % 500);
        let (app, endpoint, secret) = (&app, &endpoint, &secret);
        async move {
            app.deliver(
                endpoint,
                secret,
                &id,
                &json!({"type": "order.paid", "data": {"n": i % 500}}),
            )
            .await
            .status()
        }
    });

    let statuses = futures::future::join_all(sends).await;

    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(
        app.count("select count(*) from keel.webhook_deliveries")
            .await,
        500
    );
    assert_eq!(
        app.count("select count(distinct webhook_id) from keel.webhook_deliveries")
            .await,
        500
    );
    assert_eq!(app.count("select count(*) from keel.tasks").await, 500);
}

#[tokio::test]
async fn pull_urls_holding_credentials_or_no_web_address_are_refused_and_store_nothing() {
    let app = spawn_app().await;
    let key = app.create_tenant("shop").await;
    let cases = [
        (
            "https://cms:s3cret-pass@cms.example.com/events",
            "a password would be stored and audited in plain text",
        ),
        (
            "https://s3cret-token@cms.example.com/events",
            "a token as user name, likewise",
        ),
        (
            "https://:s3cret-pass@cms.example.com/events",
            "a password without a user name",
        ),
        ("ftp://cms.example.com/events", "not http(s)"),
        ("/events", "not absolute"),
    ];
    for (pull_url, reason) in cases {
        let response = app
            .post_json(
                "/api/webhooks/endpoints",
                &key,
                &json!({"source": "cms", "pull_url": pull_url}),
            )
            .await;

        assert_eq!(response.status(), 400, "{reason}");
        let error = error_body(response).await;
        assert_eq!(error["code"], "invalid_field", "{reason}");
        let message = error["message"].as_str().unwrap();
        assert!(message.starts_with("`pull_url`"), "{reason}: {message}");
        assert!(!message.contains("s3cret"), "{reason}: echoed: {message}");
    }
    assert_eq!(
        app.count("select count(*) from keel.webhook_endpoints")
            .await,
        0
    );
    assert_eq!(
        app.count("select count(*) from keel.audit_log where details::text like '%s3cret%'")
            .await,
        0
    );
}

/// A pull endpoint listing the source's recent events.
async fn pull_server(events: Value) -> String {
    let address = serve_http(move |_| {
        let events = events.clone();
        async move { json_reply(hyper::StatusCode::OK, json!({"events": events})) }
    })
    .await;
    format!("http://{address}/events")
}

#[tokio::test]
async fn reconciliation_pulls_the_events_webhooks_missed_exactly_once() {
    let app = spawn_app_with(|_, vars| {
        vars.insert("ALLOW_PRIVATE_PULL_URLS".into(), "true".into());
    })
    .await;
    let key = app.create_tenant("shop").await;
    let delivered = upserted("menu", "Delivered by webhook.");
    let missed = upserted("hours", "Open at noon; this webhook never arrived.");
    let pull_url = pull_server(json!([
        {"id": "evt_delivered", "type": delivered["type"], "data": delivered["data"]},
        {"id": "evt_missed", "type": missed["type"], "data": missed["data"]},
    ]))
    .await;
    let (endpoint, secret) = app
        .create_webhook_endpoint(&key, json!({"source": "cms", "pull_url": pull_url}))
        .await;
    app.deliver(&endpoint, &secret, "evt_delivered", &delivered)
        .await;

    let maintenance = app.run_cron("/api/cron/maintenance").await;
    assert_eq!(maintenance["reconciliations_enqueued"], 1);
    assert_eq!(
        app.run_cron("/api/cron/maintenance").await["reconciliations_enqueued"],
        0,
        "once per window"
    );
    app.run_cron("/api/cron/tasks").await; // reconcile, process the delivered event
    app.run_cron("/api/cron/tasks").await; // process the pulled event

    assert_eq!(
        app.count("select count(*) from keel.webhook_deliveries")
            .await,
        2
    );
    assert_eq!(
        app.count("select count(*) from keel.webhook_deliveries where webhook_id = 'evt_missed'")
            .await,
        1
    );
    assert_eq!(
        app.count("select count(*) from keel.documents").await,
        2,
        "the missed document arrived"
    );
    assert_eq!(
        app.count("select count(*) from keel.tasks where status <> 'succeeded'")
            .await,
        0
    );
}

#[tokio::test]
async fn pull_urls_reaching_private_addresses_are_refused_unless_allowed_in_development() {
    let app = spawn_app().await;
    let key = app.create_tenant("shop").await;
    let pull_url = pull_server(json!([])).await;
    app.create_webhook_endpoint(&key, json!({"source": "cms", "pull_url": pull_url}))
        .await;

    app.run_cron("/api/cron/maintenance").await;
    let report = app.run_cron("/api/cron/tasks").await;

    assert_eq!(report["dead"], 1, "{report}");
    let error: String = app
        .db
        .connect()
        .await
        .query_one(
            "select last_error from keel.tasks where kind = 'webhook.reconcile'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(error.contains("private or loopback address"), "{error}");
    tokio::time::sleep(Duration::from_millis(1)).await;
}

async fn rotate(
    app: &TestApp,
    key: &str,
    endpoint: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let request = app
        .client
        .post(app.url(&format!("/api/webhooks/endpoints/{endpoint}/secret")))
        .bearer_auth(key);
    maybe_json(request, body).send().await.unwrap()
}

#[tokio::test]
async fn a_rotated_secret_is_shown_once_and_the_old_one_verifies_until_its_grace_period_ends() {
    let app = spawn_app().await;
    let (key, endpoint, old_secret) = tenant_with_endpoint(&app).await;
    let event = json!({"type": "order.created", "data": {}});

    let response = rotate(
        &app,
        &key,
        &endpoint,
        Some(json!({"grace_period_seconds": 3600})),
    )
    .await;

    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let new_secret = body["secret"].as_str().unwrap();
    assert!(new_secret.starts_with("whsec_") && new_secret != old_secret);
    assert_eq!(body["id"], endpoint.as_str());
    assert!(body["previous_secret_expires_at"].is_string());
    let status =
        async |secret: &str, id: &str| app.deliver(&endpoint, secret, id, &event).await.status();
    assert_eq!(status(new_secret, "msg_new").await, 200);
    assert_eq!(
        status(&old_secret, "msg_old").await,
        200,
        "the sender may not have switched yet"
    );

    app.db
        .connect()
        .await
        .execute(
            "update keel.webhook_endpoints set previous_secret_expires_at = now() - interval '1 second'",
            &[],
        )
        .await
        .unwrap();
    let late = app
        .deliver(&endpoint, &old_secret, "msg_late", &event)
        .await;

    assert_eq!(late.status(), 401);
    assert_eq!(error_body(late).await["code"], "invalid_signature");
    assert_eq!(status(new_secret, "msg_new_2").await, 200);
    assert_eq!(
        app.count("select count(*) from keel.webhook_deliveries")
            .await,
        3
    );
}

#[tokio::test]
async fn rotating_with_no_grace_period_retires_the_old_secret_at_once() {
    let app = spawn_app().await;
    let (key, endpoint, old_secret) = tenant_with_endpoint(&app).await;
    let event = json!({"type": "order.created", "data": {}});

    let rotated: Value = rotate(
        &app,
        &key,
        &endpoint,
        Some(json!({"grace_period_seconds": 0})),
    )
    .await
    .json()
    .await
    .unwrap();

    let new_secret = rotated["secret"].as_str().unwrap();
    assert_eq!(
        app.deliver(&endpoint, &old_secret, "msg_old", &event)
            .await
            .status(),
        401
    );
    assert_eq!(
        app.deliver(&endpoint, new_secret, "msg_new", &event)
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn only_the_owning_tenant_can_rotate_an_endpoints_secret() {
    let app = spawn_app().await;
    let (_, endpoint, secret) = tenant_with_endpoint(&app).await;
    let other = app.create_tenant("clinic").await;

    let response = rotate(&app, &other, &endpoint, None).await;

    assert_eq!(response.status(), 404);
    assert_eq!(error_body(response).await["code"], "not_found");
    let event = json!({"type": "order.created", "data": {}});
    assert_eq!(
        app.deliver(&endpoint, &secret, "msg_1", &event)
            .await
            .status(),
        200,
        "the secret is unchanged"
    );
}

#[tokio::test]
async fn bad_rotation_requests_are_refused_naming_the_problem() {
    let app = spawn_app().await;
    let (key, endpoint, _) = tenant_with_endpoint(&app).await;
    let cases = [
        (
            json!({"grace_period_seconds": 604_801}),
            "grace_period_seconds",
            "longer than 7 days",
        ),
        (
            json!({"grace_period_seconds": -1}),
            "grace_period_seconds",
            "negative",
        ),
        (
            json!({"grace_period_seconds": "1d"}),
            "grace_period_seconds",
            "not a number",
        ),
        (json!({"grace": 60}), "grace", "unknown field"),
    ];
    for (body, field, reason) in cases {
        let response = rotate(&app, &key, &endpoint, Some(body)).await;
        assert_eq!(response.status(), 400, "{reason}");
        let message = error_body(response).await["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(message.contains(field), "{reason}: {message}");
    }
    let unknown = rotate(&app, &key, "not-a-uuid", None).await;
    assert_eq!(
        unknown.status(),
        404,
        "a malformed id is an unknown endpoint"
    );
    assert_eq!(
        app.count(
            "select count(*) from keel.webhook_endpoints where secret_rotated_at is not null"
        )
        .await,
        0
    );
}

fn upserted_at(id: &str, content: &str, timestamp: &str) -> Value {
    json!({"type": "document.upserted", "timestamp": timestamp,
           "data": {"documents": [{"id": id, "title": "Menu", "content": content}]}})
}

async fn content_of(app: &TestApp, id: &str) -> Option<String> {
    app.db
        .connect()
        .await
        .query_opt(
            "select string_agg(c.content, ' ' order by c.chunk_index) from keel.documents d
             join keel.chunks c on c.document_id = d.id where d.external_id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .and_then(|row| row.get(0))
}

#[tokio::test]
async fn an_event_waiting_for_another_delivery_never_runs_out_of_attempts() {
    // The default backoff, with each wait then cut short below: a backoff of
    // 0 would make the waiting task due again at once, and each cron run
    // would retry it until its whole time budget was spent.
    let app = spawn_app_with(|_, vars| {
        vars.insert("METRICS_TOKEN".into(), METRICS_TOKEN.into());
    })
    .await;
    let (_, endpoint, secret) = tenant_with_endpoint(&app).await;
    let event = upserted_at("menu", "Menu of 11:00.", "2026-11-21T11:00:00Z");
    app.deliver(&endpoint, &secret, "evt_11", &event).await;
    // Another delivery is applying an older menu, and holds it for an hour.
    let db = app.db.connect().await;
    db.execute(
        "insert into keel.document_event_order (tenant_id, document_id, event_at, delivery_id, deleted, applying_until)
         select tenant_id, 'menu', '2026-11-21T10:00:00Z', -1, false, now() + interval '1 hour'
         from keel.webhook_endpoints",
        &[],
    )
    .await
    .unwrap();

    // More rounds than the task has attempts (5): each one waits.
    for _ in 0..8 {
        app.run_cron("/api/cron/tasks").await;
        db.execute("update keel.tasks set run_at = now()", &[])
            .await
            .unwrap();
    }
    let waiting = db
        .query_one("select status, attempts, last_error from keel.tasks", &[])
        .await
        .unwrap();
    assert_eq!(waiting.get::<_, String>(0), "failed", "retried, not dead");
    assert_eq!(waiting.get::<_, i32>(1), 0, "waiting used no attempt");
    assert!(
        waiting
            .get::<_, String>(2)
            .contains("another delivery is applying document(s) menu")
    );
    assert_eq!(content_of(&app, "menu").await, None);
    // Operators see the waits apart from failures.
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("keel_tasks_finished_total{outcome=\"deferred\"} 8"),
        "{metrics}"
    );
    assert!(
        metrics.contains("keel_tasks_finished_total{outcome=\"failed\"} 0"),
        "{metrics}"
    );

    // The other delivery's lease ends: the event applies.
    db.execute(
        "update keel.document_event_order set applying_until = now() - interval '1 second'",
        &[],
    )
    .await
    .unwrap();
    app.run_cron("/api/cron/tasks").await;
    assert_eq!(
        content_of(&app, "menu").await.as_deref(),
        Some("Menu of 11:00.")
    );
    assert_eq!(
        app.count("select count(*) from keel.tasks where status = 'succeeded'")
            .await,
        1
    );
}

#[tokio::test]
async fn an_older_event_processed_after_a_newer_one_does_not_overwrite_it() {
    let app = spawn_app().await;
    let (_, endpoint, secret) = tenant_with_endpoint(&app).await;
    let newer = upserted_at("menu", "Autumn menu: pumpkin soup.", "2026-11-21T12:00:00Z");
    let older = upserted_at("menu", "Summer menu: gazpacho.", "2026-11-21T09:00:00Z");
    app.deliver(&endpoint, &secret, "evt_newer", &newer).await;
    app.run_cron("/api/cron/tasks").await;

    // The older event arrives late (a retrying sender, a slow task).
    app.deliver(&endpoint, &secret, "evt_older", &older).await;
    let report = app.run_cron("/api/cron/tasks").await;

    assert_eq!(
        report["succeeded"], 1,
        "skipping a stale event is a success"
    );
    assert_eq!(
        content_of(&app, "menu").await.as_deref(),
        Some("Autumn menu: pumpkin soup.")
    );
    assert_eq!(
        app.count("select count(*) from keel.webhook_deliveries where status = 'processed'")
            .await,
        2
    );
}

#[tokio::test]
async fn a_replayed_older_upsert_cannot_resurrect_a_deleted_document() {
    let app = spawn_app_with(|_, vars| {
        vars.insert("ALLOW_PRIVATE_PULL_URLS".into(), "true".into());
    })
    .await;
    let key = app.create_tenant("shop").await;
    let created = upserted_at("menu", "Soup.", "2026-11-21T09:00:00Z");
    let deleted = json!({"type": "document.deleted", "timestamp": "2026-11-21T10:00:00Z", "data": {"id": "menu"}});
    // The sender's event log: the pull endpoint lists the creation under an
    // id the webhook delivery did not use (as when a webhook was missed and
    // later retried under a new id).
    let pull_url = pull_server(json!([
        {"id": "evt_created_replayed", "type": "document.upserted",
         "timestamp": created["timestamp"], "data": created["data"]},
    ]))
    .await;
    let (endpoint, secret) = app
        .create_webhook_endpoint(&key, json!({"source": "cms", "pull_url": pull_url}))
        .await;
    app.deliver(&endpoint, &secret, "evt_created", &created)
        .await;
    app.run_cron("/api/cron/tasks").await;
    app.deliver(&endpoint, &secret, "evt_deleted", &deleted)
        .await;
    app.run_cron("/api/cron/tasks").await;
    assert_eq!(app.count("select count(*) from keel.documents").await, 0);

    app.run_cron("/api/cron/maintenance").await; // schedules the reconciliation
    app.run_cron("/api/cron/tasks").await; // pulls the replayed creation
    app.run_cron("/api/cron/tasks").await; // processes it

    assert_eq!(
        app.count("select count(*) from keel.webhook_deliveries where webhook_id = 'evt_created_replayed' and status = 'processed'")
            .await,
        1
    );
    assert_eq!(
        app.count("select count(*) from keel.documents").await,
        0,
        "the tombstone keeps it deleted"
    );
    assert_eq!(
        app.count("select count(*) from keel.tasks where status <> 'succeeded'")
            .await,
        0
    );
}

#[tokio::test]
async fn concurrent_events_for_one_document_end_with_the_newest() {
    let app = spawn_app_with(|_, vars| {
        vars.insert("TASK_RETRY_BASE_SECONDS".into(), "0".into());
    })
    .await;
    let (_, endpoint, secret) = tenant_with_endpoint(&app).await;
    for hour in 10..16 {
        let event = upserted_at(
            "menu",
            &format!("Menu of {hour}:00."),
            &format!("2026-11-21T{hour}:00:00Z"),
        );
        app.deliver(&endpoint, &secret, &format!("evt_{hour}"), &event)
            .await;
    }

    // The batch runs them all at once; any that had to wait retries.
    for _ in 0..10 {
        if app.run_cron("/api/cron/tasks").await["ran"] == 0 {
            break;
        }
    }

    assert_eq!(
        content_of(&app, "menu").await.as_deref(),
        Some("Menu of 15:00.")
    );
    assert_eq!(
        app.count("select count(*) from keel.tasks where status = 'succeeded'")
            .await,
        6
    );
}

#[tokio::test]
async fn a_tenant_over_its_daily_webhook_bytes_is_refused_with_webhook_quota_exceeded() {
    let app = spawn_app_with(|_, vars| {
        vars.insert("TENANT_WEBHOOK_BYTES_PER_DAY".into(), "1000".into());
    })
    .await;
    let (_, endpoint, secret) = tenant_with_endpoint(&app).await;
    let event = upserted("menu", &"x".repeat(300));
    for i in 0..2 {
        let accepted = app
            .deliver(&endpoint, &secret, &format!("evt_{i}"), &event)
            .await;
        assert_eq!(accepted.status(), 200);
    }

    let refused = app.deliver(&endpoint, &secret, "evt_2", &event).await;

    assert_eq!(refused.status(), 429);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=86_400).contains(&retry_after),
        "until the next UTC day"
    );
    assert_eq!(error_body(refused).await["code"], "webhook_quota_exceeded");
    assert_eq!(
        app.count("select count(*) from keel.webhook_deliveries")
            .await,
        2
    );
    // A redelivery of an accepted event is still just a duplicate.
    let again = app.deliver(&endpoint, &secret, "evt_0", &event).await;
    assert_eq!(again.status(), 200);
    // Another tenant has its own quota.
    let other = app.create_tenant("other").await;
    let (other_endpoint, other_secret) = app
        .create_webhook_endpoint(&other, json!({"source": "cms"}))
        .await;
    assert_eq!(
        app.deliver(&other_endpoint, &other_secret, "evt_0", &event)
            .await
            .status(),
        200
    );
    // Tomorrow (simulated by moving today's usage to yesterday) it is admitted.
    app.db
        .connect()
        .await
        .execute("update keel.tenant_daily_usage set day = day - 1", &[])
        .await
        .unwrap();
    assert_eq!(
        app.deliver(&endpoint, &secret, "evt_2", &event)
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn pull_endpoints_past_the_quota_are_refused_with_pull_endpoint_limit() {
    let app = spawn_app_with(|_, vars| {
        vars.insert("TENANT_MAX_PULL_ENDPOINTS".into(), "2".into());
    })
    .await;
    let key = app.create_tenant("shop").await;
    let pulling = json!({"source": "cms", "pull_url": "https://cms.example.com/events"});
    app.create_webhook_endpoint(&key, pulling.clone()).await;
    app.create_webhook_endpoint(&key, pulling.clone()).await;

    let refused = app
        .post_json("/api/webhooks/endpoints", &key, &pulling)
        .await;

    assert_eq!(refused.status(), 409);
    assert_eq!(error_body(refused).await["code"], "pull_endpoint_limit");
    assert_eq!(
        app.count("select count(*) from keel.webhook_endpoints")
            .await,
        2
    );
    // Push-only endpoints cost no pulls and are not counted.
    app.create_webhook_endpoint(&key, json!({"source": "vapi"}))
        .await;
}

#[tokio::test]
async fn a_deliveries_page_stays_under_four_megabytes_and_the_cursor_reaches_every_delivery() {
    let app = spawn_app().await;
    let (key, endpoint, secret) = tenant_with_endpoint(&app).await;
    // Five deliveries just under the 1 MiB intake limit: 4.5 MB in all.
    for i in 0..5 {
        let event = json!({"type": "call.ended", "transcript": format!("{i}").repeat(900_000)});
        assert_eq!(
            app.deliver(&endpoint, &secret, &format!("call_{i}"), &event)
                .await
                .status(),
            200
        );
    }

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let path = match &cursor {
            Some(cursor) => format!("/api/webhooks/deliveries?limit=200&cursor={cursor}"),
            None => "/api/webhooks/deliveries?limit=200".to_owned(),
        };
        let response = app
            .client
            .get(app.url(&path))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body = response.bytes().await.unwrap();
        assert!(body.len() <= 4_000_000, "a page of {} bytes", body.len());
        let page: Value = serde_json::from_slice(&body).unwrap();
        for delivery in page["deliveries"].as_array().unwrap() {
            assert!(delivery["payload"]["transcript"].is_string());
            seen.push(delivery["webhook_id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }

    assert_eq!(seen, ["call_0", "call_1", "call_2", "call_3", "call_4"]);
}

#[tokio::test]
async fn a_payload_over_the_page_bound_is_listed_without_its_payload_and_the_page_continues() {
    // An operator may raise the intake limit up to the general body limit.
    let app = spawn_app_with(|_, vars| {
        vars.insert(
            "WEBHOOK_MAX_BODY_BYTES".into(),
            (4 * 1024 * 1024).to_string(),
        );
    })
    .await;
    let (key, endpoint, secret) = tenant_with_endpoint(&app).await;
    let huge = json!({"type": "call.ended", "transcript": "x".repeat(3_700_000)});
    let small = json!({"type": "call.ended", "transcript": "Thanks, bye."});
    app.deliver(&endpoint, &secret, "call_huge", &huge).await;
    app.deliver(&endpoint, &secret, "call_small", &small).await;

    let first: Value = app.get_json("/api/webhooks/deliveries", &key).await;
    let cursor = first["next_cursor"].as_str().unwrap();
    let second: Value = app
        .get_json(&format!("/api/webhooks/deliveries?cursor={cursor}"), &key)
        .await;

    let listed = &first["deliveries"][0];
    assert_eq!(first["deliveries"].as_array().unwrap().len(), 1);
    assert_eq!(listed["webhook_id"], "call_huge");
    assert_eq!(listed["payload"], Value::Null);
    assert!(listed["payload_bytes"].as_u64().unwrap() > 3_700_000);
    assert_eq!(second["deliveries"][0]["webhook_id"], "call_small");
    assert_eq!(second["deliveries"][0]["payload"], small);
    assert_eq!(second["next_cursor"], Value::Null);
}

/// Sends `body` to `endpoint` with the given `webhook-signature` header,
/// stamped now under `webhook_id`.
async fn deliver_signed_as(
    app: &TestApp,
    endpoint: &str,
    webhook_id: &str,
    now: i64,
    signature: &str,
    body: Vec<u8>,
) -> reqwest::Response {
    app.client
        .post(app.url(&format!("/api/webhooks/{endpoint}")))
        .header("content-type", "application/json")
        .header("webhook-id", webhook_id)
        .header("webhook-timestamp", now.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_forged_delivery_with_a_large_body_and_thousands_of_signatures_is_refused_and_stores_nothing()
 {
    // Each `v1,` entry used to cost a full HMAC over the body: 20,000 of
    // them over 4 MB kept a core busy for 45 s before the 401.
    let app = spawn_app().await;
    let (_, endpoint, _) = tenant_with_endpoint(&app).await;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let body = format!(
        r#"{{"type":"call.ended","data":"{}"}}"#,
        "x".repeat(900 * 1024)
    );
    let signatures = vec!["v1,"; 5_000].join(" ");

    let response =
        deliver_signed_as(&app, &endpoint, "msg_flood", now, &signatures, body.into()).await;

    assert_eq!(response.status(), 400);
    let error = error_body(response).await;
    assert_eq!(error["code"], "invalid_header");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("webhook-signature"),
        "{error}"
    );
    assert_eq!(
        app.count("select count(*) from keel.webhook_deliveries")
            .await,
        0
    );
    assert_eq!(app.count("select count(*) from keel.tasks").await, 0);
}

#[tokio::test]
async fn signature_headers_are_capped_in_entries_and_size() {
    let app = spawn_app().await;
    let (_, endpoint, secret) = tenant_with_endpoint(&app).await;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let body = upserted("menu", "Margherita").to_string();
    let good = |id: &str| keel::webhooks::signatures::sign(&secret, id, now, body.as_bytes());
    let decoy = "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let other_version = format!("v1a,{}", "A".repeat(86));
    // (webhook-id, webhook-signature, status, reason)
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "msg_1",
            [vec![decoy; 7], vec![good("msg_1").as_str()]]
                .concat()
                .join(" "),
            200,
            "eight signatures (a rotation needs two) are still compared",
        ),
        (
            "msg_2",
            [vec![decoy; 8], vec![good("msg_2").as_str()]]
                .concat()
                .join(" "),
            400,
            "a ninth signature is refused, even when it is the authentic one",
        ),
        (
            "msg_3",
            [
                vec![other_version.as_str(); 8],
                vec![good("msg_3").as_str()],
            ]
            .concat()
            .join(" "),
            400,
            "entries of other versions count towards the cap too",
        ),
        (
            "msg_4",
            format!("{} v2,{}", good("msg_4"), "A".repeat(4096)),
            400,
            "a header over 2 KiB is refused whatever it holds",
        ),
    ];
    for (id, signatures, status, reason) in cases {
        let response =
            deliver_signed_as(&app, &endpoint, id, now, &signatures, body.clone().into()).await;
        assert_eq!(response.status().as_u16(), status, "{reason}");
        if status == 400 {
            assert_eq!(
                error_body(response).await["code"],
                "invalid_header",
                "{reason}"
            );
        }
    }
    assert_eq!(
        app.count("select count(*) from keel.webhook_deliveries")
            .await,
        1,
        "only the delivery within the caps was stored"
    );
}

#[tokio::test]
async fn intake_has_its_own_smaller_body_limit() {
    let app = spawn_app_with(|_, vars| {
        vars.insert("WEBHOOK_MAX_BODY_BYTES".into(), "2048".into());
    })
    .await;
    let (key, endpoint, secret) = tenant_with_endpoint(&app).await;
    let big = upserted("menu", &"Margherita pizza. ".repeat(200));
    assert!(big.to_string().len() > 2048);

    let refused = app.deliver(&endpoint, &secret, "msg_big", &big).await;

    assert_eq!(refused.status(), 413);
    let error = error_body(refused).await;
    assert_eq!(error["code"], "payload_too_large");
    assert_eq!(
        error["message"],
        "request body exceeds the limit of 2048 bytes"
    );
    assert_eq!(
        app.count("select count(*) from keel.webhook_deliveries")
            .await,
        0
    );
    let small = upserted("menu", "Margherita pizza.");
    assert_eq!(
        app.deliver(&endpoint, &secret, "msg_small", &small)
            .await
            .status(),
        200
    );
    assert_eq!(
        app.put_documents(&key, big["data"]["documents"].clone())
            .await
            .status(),
        200,
        "other routes keep MAX_BODY_BYTES"
    );
}
