use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{CRON_SECRET, TestApp, spawn_app, spawn_app_with};

async fn enqueue(app: &TestApp, args: Value) -> Value {
    app.db
        .connect()
        .await
        .query_one("select public.keel_enqueue_task($1)", &[&args])
        .await
        .unwrap()
        .get(0)
}

async fn task_row(app: &TestApp, id: i64) -> (String, i32, Option<String>) {
    let row = app
        .db
        .connect()
        .await
        .query_one(
            "select status, attempts, last_error from keel.tasks where id = $1",
            &[&id],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

/// A delivery whose processing task is queued, through the real intake.
async fn queued_delivery(app: &TestApp, key: &str, n: usize) {
    let (endpoint, secret) = app
        .create_webhook_endpoint(key, json!({"source": "cms"}))
        .await;
    for i in 0..n {
        let event = json!({"type": "document.upserted", "data": {"id": format!("doc-{i}"), "content": format!("Item {i}")}});
        assert_eq!(
            app.deliver(&endpoint, &secret, &format!("evt_{i}"), &event)
                .await
                .status(),
            200
        );
    }
}

#[tokio::test]
async fn enqueueing_the_same_work_twice_yields_one_task() {
    let app = spawn_app().await;

    let first = enqueue(
        &app,
        json!({"kind": "report.send", "idempotency_key": "2026-11-21"}),
    )
    .await;
    let second = enqueue(
        &app,
        json!({"kind": "report.send", "idempotency_key": "2026-11-21"}),
    )
    .await;
    let other = enqueue(
        &app,
        json!({"kind": "report.send", "idempotency_key": "2026-11-22"}),
    )
    .await;

    assert_eq!(first["created"], true);
    assert_eq!(second["created"], false);
    assert_eq!(second["id"], first["id"]);
    assert_ne!(other["id"], first["id"]);
    assert_eq!(app.count("select count(*) from keel.tasks").await, 2);
}

#[tokio::test]
async fn an_empty_queue_is_a_cheap_no_op() {
    let app = spawn_app().await;

    let report = app.run_cron("/api/cron/tasks").await;

    assert_eq!(
        report,
        json!({"ran": 0, "succeeded": 0, "failed": 0, "dead": 0, "remaining": 0})
    );
}

#[tokio::test]
async fn an_unknown_kind_is_dead_lettered_at_once_with_the_reason() {
    let app = spawn_app().await;
    let task = enqueue(&app, json!({"kind": "does.not.exist", "max_attempts": 5})).await;

    let report = app.run_cron("/api/cron/tasks").await;
    let again = app.run_cron("/api/cron/tasks").await;

    assert_eq!(report["dead"], 1);
    assert_eq!(again["ran"], 0, "not retried");
    let (status, attempts, error) = task_row(&app, task["id"].as_i64().unwrap()).await;
    assert_eq!((status.as_str(), attempts), ("dead", 1));
    assert_eq!(
        error.unwrap(),
        "no handler is registered for task kind `does.not.exist`"
    );
}

#[tokio::test]
async fn a_poison_task_ends_dead_after_max_attempts_with_its_error_visible() {
    let app = spawn_app_with(|_, vars| {
        vars.insert("ALLOW_PRIVATE_PULL_URLS".into(), "true".into());
        vars.insert("TASK_RETRY_BASE_SECONDS".into(), "0".into());
    })
    .await;
    let key = app.create_tenant("shop").await;
    // A pull URL nobody listens on: every attempt fails the same way.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (endpoint, _) = app
        .create_webhook_endpoint(
            &key,
            json!({"source": "cms", "pull_url": format!("http://{closed}/events")}),
        )
        .await;
    let tenant_id: String = app
        .db
        .connect()
        .await
        .query_one("select tenant_id::text from keel.webhook_endpoints", &[])
        .await
        .unwrap()
        .get(0);
    let task = enqueue(&app, json!({"tenant_id": tenant_id, "kind": "webhook.reconcile", "payload": {"endpoint_id": endpoint}, "max_attempts": 3})).await;

    for _ in 0..3 {
        app.run_cron("/api/cron/tasks").await;
    }

    let (status, attempts, error) = task_row(&app, task["id"].as_i64().unwrap()).await;
    assert_eq!((status.as_str(), attempts), ("dead", 3));
    assert!(error.unwrap().contains("pulling 127.0.0.1"));
    let listed: Value = app.get_json("/api/tasks?status=dead", &key).await;
    assert_eq!(listed["tasks"][0]["kind"], "webhook.reconcile");
    assert_eq!(listed["tasks"][0]["attempts"], 3);
    assert!(
        listed["tasks"][0]["last_error"]
            .as_str()
            .unwrap()
            .contains("pulling")
    );
}

#[tokio::test]
async fn a_worker_killed_mid_task_is_retried_exactly_once_more() {
    let app = spawn_app().await;
    let key = app.create_tenant("shop").await;
    queued_delivery(&app, &key, 1).await;
    // A worker claims the task, then its function is killed.
    let claim: Value = app
        .db
        .connect()
        .await
        .query_one(
            "select public.keel_claim_tasks($1)",
            &[&json!({"limit": 10, "lease_seconds": 1})],
        )
        .await
        .unwrap()
        .get(0);
    let id = claim["tasks"][0]["id"].as_i64().unwrap();

    assert_eq!(
        app.run_cron("/api/cron/tasks").await["ran"],
        0,
        "leased: left alone"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let report = app.run_cron("/api/cron/tasks").await;
    let later = app.run_cron("/api/cron/tasks").await;

    assert_eq!(report["succeeded"], 1);
    assert_eq!(later["ran"], 0);
    let (status, attempts, _) = task_row(&app, id).await;
    assert_eq!(
        (status.as_str(), attempts),
        ("succeeded", 2),
        "one attempt died, one more ran"
    );
    assert_eq!(app.count("select count(*) from keel.documents").await, 1);
}

/// A worker claims the due tasks, then its function is killed: the lease
/// is left to expire (moved into the past here rather than waited for).
async fn claim_and_die(app: &TestApp) -> Value {
    let db = app.db.connect().await;
    let claim: Value = db
        .query_one(
            "select public.keel_claim_tasks($1)",
            &[&json!({"limit": 10, "lease_seconds": 300})],
        )
        .await
        .unwrap()
        .get(0);
    db.execute(
        "update keel.tasks set lease_until = now() - interval '1 second' where status = 'running'",
        &[],
    )
    .await
    .unwrap();
    claim
}

#[tokio::test]
async fn a_task_that_keeps_killing_its_worker_is_dead_after_max_attempts() {
    let app = spawn_app().await;
    let key = app.create_tenant("shop").await;
    queued_delivery(&app, &key, 1).await;
    let id: i64 = app
        .count("update keel.tasks set max_attempts = 2 returning id")
        .await;

    assert_eq!(claim_and_die(&app).await["tasks"][0]["attempts"], 1);
    assert_eq!(claim_and_die(&app).await["tasks"][0]["attempts"], 2);
    let report = app.run_cron("/api/cron/tasks").await;

    assert_eq!(report["ran"], 0, "a third attempt is never handed out");
    let (status, attempts, error) = task_row(&app, id).await;
    assert_eq!((status.as_str(), attempts), ("dead", 2));
    assert!(error.unwrap().contains("2 of 2 attempts"));
    assert_eq!(app.count("select count(*) from keel.documents").await, 0);
    let listed: Value = app.get_json("/api/tasks?status=dead", &key).await;
    assert_eq!(listed["tasks"][0]["attempts"], 2);
    assert_eq!(listed["tasks"][0]["max_attempts"], 2);
}

#[tokio::test]
async fn a_lease_released_by_maintenance_on_the_last_attempt_is_not_run_again() {
    let app = spawn_app().await;
    let key = app.create_tenant("shop").await;
    queued_delivery(&app, &key, 1).await;
    let id: i64 = app
        .count("update keel.tasks set max_attempts = 1 returning id")
        .await;

    claim_and_die(&app).await;
    assert_eq!(
        app.run_cron("/api/cron/maintenance").await["task_leases_released"],
        1
    );
    let report = app.run_cron("/api/cron/tasks").await;

    assert_eq!(report["ran"], 0);
    let (status, attempts, _) = task_row(&app, id).await;
    assert_eq!((status.as_str(), attempts), ("dead", 1));
    assert_eq!(app.count("select count(*) from keel.documents").await, 0);
}

#[tokio::test]
async fn tenants_see_a_summary_of_internal_failures_never_the_cause_chain() {
    let app = spawn_app().await;
    let key = app.create_tenant("shop").await;
    // The database fails inside the sync with text meant for operators only.
    app.db
        .connect()
        .await
        .batch_execute(
            "create function keel.test_fail() returns trigger language plpgsql as $$
             begin
               raise exception 'could not extend file \"base/16384/2619\": No space left on device'
                 using errcode = 'XX000';
             end $$;
             create trigger test_fail before insert on keel.documents
               for each row execute function keel.test_fail();",
        )
        .await
        .unwrap();
    queued_delivery(&app, &key, 1).await;

    let report = app.run_cron("/api/cron/tasks").await;

    assert_eq!(report["failed"], 1, "{report}");
    let listed: Value = app.get_json("/api/tasks?kind=webhook.process", &key).await;
    let shown = listed["tasks"][0]["last_error"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, _, stored) = task_row(&app, listed["tasks"][0]["id"].as_i64().unwrap()).await;
    for (text, place) in [(&shown, "the API"), (&stored.unwrap(), "the stored row")] {
        assert_eq!(
            text, "the database could not complete the request",
            "{place} shows a summary"
        );
        for internal in ["base/16384", "No space", "keel_upsert_documents", "XX000"] {
            assert!(
                !text.contains(internal),
                "{place} leaks `{internal}`: {text}"
            );
        }
    }
}

#[tokio::test]
async fn overlapping_cron_runs_never_run_a_task_twice() {
    let app = spawn_app().await;
    let key = app.create_tenant("shop").await;
    queued_delivery(&app, &key, 30).await;

    let reports = futures::future::join_all((0..3).map(|_| app.run_cron("/api/cron/tasks"))).await;

    let ran: i64 = reports.iter().map(|r| r["ran"].as_i64().unwrap()).sum();
    assert_eq!(ran, 30);
    assert_eq!(
        app.count("select count(*) from keel.tasks where status = 'succeeded' and attempts = 1")
            .await,
        30
    );
    assert_eq!(app.count("select count(*) from keel.documents").await, 30);
}

#[tokio::test]
async fn maintenance_expires_prunes_and_releases_and_says_what_it_did() {
    let app = spawn_app().await;
    app.db
        .connect()
        .await
        .batch_execute(
            "insert into keel.query_cache (model, dimensions, query_hash, embedding, expires_at)
               values ('m', 3, 'old', '[1,0,0]', now() - interval '1 minute'),
                      ('m', 3, 'fresh', '[0,1,0]', now() + interval '1 hour');
             insert into keel.tasks (kind, status, finished_at) values ('x', 'succeeded', now() - interval '30 days');
             insert into keel.tasks (kind, status, finished_at) values ('x', 'succeeded', now());
             insert into keel.tasks (kind, status, attempts, lease_until, lease_token)
               values ('x', 'running', 1, now() - interval '1 minute', gen_random_uuid());",
        )
        .await
        .unwrap();

    let report = app.run_cron("/api/cron/maintenance").await;

    assert_eq!(report["query_cache_expired"], 1);
    assert_eq!(report["tasks_pruned"], 1);
    assert_eq!(report["task_leases_released"], 1);
    assert_eq!(app.count("select count(*) from keel.query_cache").await, 1);
    assert_eq!(app.count("select count(*) from keel.tasks where status = 'failed' and last_error like 'lease expired%'").await, 1);
}

#[tokio::test]
async fn cron_routes_need_the_cron_secret() {
    let app = spawn_app().await;
    for path in [
        "/api/cron/tasks",
        "/api/cron/maintenance",
        "/api/cron/embeddings",
    ] {
        assert_eq!(
            app.client.get(app.url(path)).send().await.unwrap().status(),
            401,
            "{path}"
        );
        let wrong = app
            .client
            .get(app.url(path))
            .bearer_auth(format!("{CRON_SECRET}x"))
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401, "{path}");
    }
}

#[tokio::test]
async fn tenants_see_only_their_own_tasks() {
    let app = spawn_app().await;
    let shop = app.create_tenant("shop").await;
    let clinic = app.create_tenant("clinic").await;
    queued_delivery(&app, &shop, 2).await;

    let theirs: Value = app.get_json("/api/tasks", &clinic).await;
    let mine: Value = app
        .get_json("/api/tasks?status=queued&kind=webhook.process", &shop)
        .await;
    let bad = app
        .client
        .get(app.url("/api/tasks?status=done"))
        .bearer_auth(&shop)
        .send()
        .await
        .unwrap();

    assert_eq!(theirs["tasks"], json!([]));
    assert_eq!(mine["tasks"].as_array().unwrap().len(), 2);
    assert_eq!(bad.status(), 400);
}

#[tokio::test]
async fn list_cursors_not_issued_by_the_api_are_refused_naming_the_cursor() {
    let app = spawn_app().await;
    let key = app.create_tenant("shop").await;
    let cases = [
        ("!!", "not base64"),
        ("YWJj", "base64 of `abc`, not a row id"),
    ];
    for route in ["/api/tasks", "/api/webhooks/deliveries"] {
        for (cursor, reason) in cases {
            let response = app
                .client
                .get(app.url(&format!("{route}?cursor={cursor}")))
                .bearer_auth(&key)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 400, "{route}: {reason}");
            let error = crate::helpers::error_body(response).await;
            assert!(
                error["message"].as_str().unwrap().contains("`cursor`"),
                "{route}: {reason}: {error}"
            );
        }
    }
}

#[tokio::test]
async fn tenant_b_tasks_run_in_the_first_batch_although_tenant_a_has_ten_thousand_queued() {
    let app = spawn_app().await;
    app.create_tenant("a").await;
    app.create_tenant("b").await;
    let db = app.db.connect().await;
    // Tenant A queued 10,000 tasks an hour ago; tenant B queues 10 now.
    db.batch_execute(
        "insert into keel.tasks (tenant_id, kind, run_at)
           select (select id from keel.tenants where slug = 'a'), 'report.send', now() - interval '1 hour'
           from generate_series(1, 10000);
         insert into keel.tasks (tenant_id, kind)
           select (select id from keel.tenants where slug = 'b'), 'report.send'
           from generate_series(1, 10);",
    )
    .await
    .unwrap();

    let claim: Value = db
        .query_one(
            "select public.keel_claim_tasks('{\"limit\": 20, \"lease_seconds\": 60}')",
            &[],
        )
        .await
        .unwrap()
        .get(0);

    assert_eq!(claim["tasks"].as_array().unwrap().len(), 20);
    assert_eq!(
        app.count(
            "select count(*) from keel.tasks t join keel.tenants k on k.id = t.tenant_id
             where k.slug = 'b' and t.status = 'running'"
        )
        .await,
        10,
        "every one of tenant B's tasks is in the first batch"
    );
    assert_eq!(
        app.count(
            "select count(*) from keel.tasks t join keel.tenants k on k.id = t.tenant_id
             where k.slug = 'a' and t.status = 'running'"
        )
        .await,
        10,
        "tenant A gets the rest of the batch, oldest first"
    );
}

#[tokio::test]
async fn a_tenant_with_a_full_queue_is_refused_with_task_queue_full_and_nothing_is_stored() {
    let app = spawn_app_with(|_, vars| {
        vars.insert("TENANT_MAX_QUEUED_TASKS".into(), "3".into());
    })
    .await;
    let busy = app.create_tenant("busy").await;
    let calm = app.create_tenant("calm").await;
    queued_delivery(&app, &busy, 3).await;
    let (endpoint, secret) = app
        .create_webhook_endpoint(&busy, json!({"source": "cms"}))
        .await;

    let refused = app
        .deliver(
            &endpoint,
            &secret,
            "evt_over",
            &json!({"type": "document.upserted", "data": {"id": "x", "content": "x"}}),
        )
        .await;

    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "60");
    let error = crate::helpers::error_body(refused).await;
    assert_eq!(error["code"], "task_queue_full");
    assert_eq!(
        app.count("select count(*) from keel.webhook_deliveries where webhook_id = 'evt_over'")
            .await,
        0
    );
    assert_eq!(app.count("select count(*) from keel.tasks").await, 3);
    // Another tenant is not affected, and the busy one is admitted again
    // once its queue drains.
    queued_delivery(&app, &calm, 1).await;
    app.run_cron("/api/cron/tasks").await;
    let again = app
        .deliver(
            &endpoint,
            &secret,
            "evt_over",
            &json!({"type": "document.upserted", "data": {"id": "x", "content": "x"}}),
        )
        .await;
    assert_eq!(again.status(), 200);
}

#[tokio::test]
async fn maintenance_works_off_a_backlog_in_batches_past_locked_rows_and_still_releases_leases() {
    let app = spawn_app_with(|_, vars| {
        vars.insert("DB_TIMEOUT_MS".into(), "1500".into());
    })
    .await;
    let db = app.db.connect().await;
    db.batch_execute(
        "insert into keel.query_cache (model, dimensions, query_hash, embedding, expires_at)
           select 'm', 3, 'old-' || i, '[1,0,0]', now() - interval '1 day'
           from generate_series(1, 12000) i;
         insert into keel.rate_limit_hits (bucket, at)
           select 'tenant:x', now() - interval '1 hour' from generate_series(1, 12000);
         insert into keel.tasks (kind, status, attempts, lease_until, lease_token)
           values ('x', 'running', 1, now() - interval '1 minute', gen_random_uuid());",
    )
    .await
    .unwrap();
    // A search refreshing one expired cache entry holds its row meanwhile.
    let mut holder = app.db.connect().await;
    let lock = holder.transaction().await.unwrap();
    lock.execute(
        "select 1 from keel.query_cache where query_hash = 'old-1' for update",
        &[],
    )
    .await
    .unwrap();

    let report = app.run_cron("/api/cron/maintenance").await;

    assert_eq!(report["task_leases_released"], 1);
    assert_eq!(report["query_cache_expired"], 11999);
    assert_eq!(report["rate_limit_hits_pruned"], 12000);
    assert_eq!(report["caught_up"], true);
    assert_eq!(
        app.count("select count(*) from keel.tasks where status = 'failed'")
            .await,
        1
    );
    assert_eq!(
        app.count("select count(*) from keel.query_cache").await,
        1,
        "only the locked row is left, for the next run"
    );
    lock.rollback().await.unwrap();
    let next = app.run_cron("/api/cron/maintenance").await;
    assert_eq!(next["query_cache_expired"], 1);
}
