//! The fault suite: the real stack (Keel's routes, Postgres, the task queue,
//! the embedding worker) under the failures production sees: the database
//! stopped and restarted in the middle of a cron run, a worker killed while
//! holding leases, overlapping cron runs, and the embeddings provider
//! failing throughout. Each story ends with every chunk embedded exactly
//! once and every task's effect applied exactly once, read from the stored
//! rows. The database is "stopped" by cutting the TCP proxy this test's app
//! talks through (each test has its own database), never the shared server.
//! Time is simulated: an expired lease is a lease rewritten into the past.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{
    CRON_SECRET, TestApp, TestDatabase, base_vars, openai_vars, spawn_app_on, spawn_app_with,
};
use crate::support::{
    FakeOpenAi, ProxyMode, Scripted, TcpProxy, bag_of_words, json_reply, serve_http,
};

const DOCUMENTS: usize = 24;

fn documents(prefix: &str) -> Value {
    Value::Array(
        (0..DOCUMENTS)
            .map(|i| json!({"id": format!("{prefix}-{i}"), "title": "FAQ",
                            "content": format!("Question {i}: do you deliver to zone {i}? Yes, within {i} hours.")}))
            .collect(),
    )
}

/// An app whose database connections go through `proxy`, and the proxy.
async fn app_behind_proxy(
    customise: impl FnOnce(&mut std::collections::HashMap<String, String>),
) -> (TestApp, Arc<TcpProxy>) {
    let db = TestDatabase::migrated().await;
    let proxy = Arc::new(TcpProxy::start(db.address()).await);
    let mut vars = base_vars(&db);
    vars.insert("DATABASE_URL".into(), db.url_via(proxy.address));
    vars.insert("DB_TIMEOUT_MS".into(), "2000".into());
    vars.insert("TASK_RETRY_BASE_SECONDS".into(), "0".into());
    vars.insert("EMBEDDING_RETRY_BASE_SECONDS".into(), "0".into());
    customise(&mut vars);
    (spawn_app_on(db, vars).await, proxy)
}

/// Runs a cron route, tolerating the 5xx of a run the database left.
async fn try_cron(app: &TestApp, path: &str) -> Option<Value> {
    let response = app
        .client
        .get(app.url(path))
        .bearer_auth(CRON_SECRET)
        .send()
        .await
        .unwrap();
    if response.status() == 200 {
        Some(response.json().await.unwrap())
    } else {
        None
    }
}

/// Every lease still held is a dead worker's: let it expire (rewrite time).
async fn expire_leases(app: &TestApp) {
    app.db
        .connect()
        .await
        .batch_execute(
            "update keel.tasks set lease_until = now() - interval '1 second' where status = 'running';
             update keel.embedding_jobs set lease_until = now() - interval '1 second' where lease_until is not null;",
        )
        .await
        .unwrap();
}

/// Runs `path` until a run finds nothing to do (the database may need a
/// moment to be reachable again after a restart).
async fn drain(app: &TestApp, path: &str, nothing_left: impl Fn(&Value) -> bool) {
    for _ in 0..40 {
        match try_cron(app, path).await {
            Some(report) if nothing_left(&report) => return,
            Some(_) => {}
            None => {
                // The run died with the database: its leases are a dead worker's.
                tokio::time::sleep(Duration::from_millis(100)).await;
                expire_leases(app).await;
            }
        }
    }
    panic!("{path} never drained");
}

async fn drain_tasks(app: &TestApp) {
    drain(app, "/api/cron/tasks", |r| r["ran"] == 0).await;
}

async fn drain_embeddings(app: &TestApp) {
    drain(app, "/api/cron/embeddings", |r| {
        r["embedded"] == 0 && r["remaining"] == 0
    })
    .await;
}

/// Every chunk has exactly one vector and no job is left.
async fn assert_every_chunk_embedded_once(app: &TestApp) {
    let chunks = app.count("select count(*) from keel.chunks").await;
    assert!(chunks >= DOCUMENTS as i64);
    assert_eq!(
        app.count("select count(*) from keel.embeddings").await,
        chunks,
        "one vector per chunk: none lost, none duplicated"
    );
    assert_eq!(
        app.count("select count(distinct chunk_id) from keel.embeddings")
            .await,
        chunks
    );
    assert_eq!(
        app.count("select count(*) from keel.embedding_jobs").await,
        0,
        "no job left pending or failed"
    );
}

/// Every task succeeded, each delivery was processed once, and the
/// documents are exactly the ones the events carried.
async fn assert_every_task_applied_once(app: &TestApp, deliveries: i64) {
    let unfinished: Vec<String> = app
        .db
        .connect()
        .await
        .query(
            "select kind || ' ' || status || ' ' || coalesce(last_error, '') from keel.tasks where status <> 'succeeded'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(
        unfinished.is_empty(),
        "every task succeeded: {unfinished:?}"
    );
    assert_eq!(
        app.count("select count(*) from keel.webhook_deliveries")
            .await,
        deliveries,
        "each event stored once"
    );
    assert_eq!(
        app.count("select count(*) from keel.webhook_deliveries where status = 'processed'")
            .await,
        deliveries
    );
    assert_eq!(
        app.count("select count(*) from keel.tasks where kind = 'webhook.process'")
            .await,
        deliveries,
        "one processing task per event"
    );
    assert_eq!(
        app.count("select count(*) from keel.documents").await,
        deliveries,
        "each event's document applied once"
    );
}

/// Delivers one `document.upserted` event per document.
async fn deliver_all(app: &TestApp, key: &str) {
    let (endpoint, secret) = app
        .create_webhook_endpoint(key, json!({"source": "cms"}))
        .await;
    for document in documents("pushed").as_array().unwrap() {
        let id = document["id"].as_str().unwrap();
        let event = json!({"type": "document.upserted", "data": document});
        assert_eq!(
            app.deliver(&endpoint, &secret, &format!("evt_{id}"), &event)
                .await
                .status(),
            200
        );
    }
}

#[tokio::test]
async fn postgres_restarting_in_the_middle_of_an_embedding_run_loses_and_duplicates_nothing() {
    // A provider that, answering its second request, sees the database stop.
    let requests = Arc::new(AtomicUsize::new(0));
    let proxy_slot: Arc<std::sync::OnceLock<Arc<TcpProxy>>> = Arc::default();
    let provider = {
        let (requests, proxy_slot) = (requests.clone(), proxy_slot.clone());
        serve_http(move |request: hyper::Request<bytes::Bytes>| {
            let (requests, proxy_slot) = (requests.clone(), proxy_slot.clone());
            async move {
                let body: Value = serde_json::from_slice(request.body()).unwrap_or_default();
                if requests.fetch_add(1, Ordering::SeqCst) == 1 {
                    proxy_slot.get().unwrap().set(ProxyMode::Refuse);
                }
                let data: Vec<Value> = body["input"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .enumerate()
                    .map(|(index, text)| {
                        json!({"object": "embedding", "index": index,
                        "embedding": bag_of_words(text.as_str().unwrap(), 64)})
                    })
                    .collect();
                json_reply(
                    hyper::StatusCode::OK,
                    json!({"object": "list", "data": data, "model": body["model"],
                           "usage": {"prompt_tokens": 1, "total_tokens": 1}}),
                )
            }
        })
        .await
    };
    let (app, proxy) = app_behind_proxy(|vars| {
        openai_vars(vars, &format!("http://{provider}/v1"));
        vars.insert("EMBEDDING_BATCH_SIZE".into(), "4".into());
    })
    .await;
    proxy_slot.set(proxy.clone()).ok();
    let key = app.create_tenant("joes").await;
    assert_eq!(
        app.put_documents(&key, documents("faq")).await.status(),
        200
    );

    // The run stops when the database does, in the middle of its batches.
    assert!(try_cron(&app, "/api/cron/embeddings").await.is_none());
    assert!(
        app.count("select count(*) from keel.embedding_jobs").await > 0,
        "the run was cut short"
    );
    proxy.set(ProxyMode::Forward);
    expire_leases(&app).await;
    drain_embeddings(&app).await;

    assert_every_chunk_embedded_once(&app).await;
}

#[tokio::test]
async fn postgres_restarting_in_the_middle_of_a_task_run_loses_and_duplicates_nothing() {
    // A reconciliation pull during which the database stops (once).
    let proxy_slot: Arc<std::sync::OnceLock<Arc<TcpProxy>>> = Arc::default();
    let pulled: Vec<Value> = documents("pulled")
        .as_array()
        .unwrap()
        .iter()
        .map(|d| json!({"id": format!("evt_{}", d["id"].as_str().unwrap()), "type": "document.upserted", "data": d}))
        .collect();
    let stopped = Arc::new(AtomicBool::new(false));
    let pull = {
        let (proxy_slot, stopped) = (proxy_slot.clone(), stopped.clone());
        serve_http(move |_| {
            let (proxy_slot, pulled, stopped) =
                (proxy_slot.clone(), pulled.clone(), stopped.clone());
            async move {
                if let Some(proxy) = proxy_slot.get()
                    && !stopped.swap(true, Ordering::SeqCst)
                {
                    proxy.set(ProxyMode::Refuse);
                }
                json_reply(hyper::StatusCode::OK, json!({"events": pulled}))
            }
        })
        .await
    };
    let (app, proxy) = app_behind_proxy(|vars| {
        vars.insert("ALLOW_PRIVATE_PULL_URLS".into(), "true".into());
    })
    .await;
    let key = app.create_tenant("shop").await;
    deliver_all(&app, &key).await;
    app.create_webhook_endpoint(
        &key,
        json!({"source": "cms", "pull_url": format!("http://{pull}/events")}),
    )
    .await;
    assert_eq!(
        try_cron(&app, "/api/cron/maintenance").await.unwrap()["reconciliations_enqueued"],
        1
    );
    proxy_slot.set(proxy.clone()).ok();

    // The run claims the reconciliation with the first deliveries; the
    // database stops while it pulls, and the run dies with it.
    assert!(try_cron(&app, "/api/cron/tasks").await.is_none());
    assert!(stopped.load(Ordering::SeqCst));
    assert!(
        app.count("select count(*) from keel.tasks where status = 'running'")
            .await
            > 0,
        "tasks were left mid-run"
    );
    proxy.set(ProxyMode::Forward);
    expire_leases(&app).await;
    drain_tasks(&app).await;

    assert_every_task_applied_once(&app, 2 * DOCUMENTS as i64).await;
    assert_eq!(
        app.count("select count(*) from keel.tasks where kind = 'webhook.reconcile'")
            .await,
        1
    );
}

#[tokio::test]
async fn a_worker_killed_while_holding_leases_loses_and_duplicates_nothing() {
    let (openai, url) = FakeOpenAi::start().await;
    let app = spawn_app_with(|_, vars| {
        openai_vars(vars, &url);
        vars.insert("TASK_RETRY_BASE_SECONDS".into(), "0".into());
    })
    .await;
    let key = app.create_tenant("shop").await;
    deliver_all(&app, &key).await;
    let db = app.db.connect().await;

    // A worker claims every task, then dies; its leases hold until they expire.
    db.query_one(
        "select public.keel_claim_tasks('{\"limit\": 1000, \"lease_seconds\": 600}')",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(
        try_cron(&app, "/api/cron/tasks").await.unwrap()["ran"],
        0,
        "leases hold"
    );
    expire_leases(&app).await;
    drain_tasks(&app).await;

    // A worker claims every embedding job, then dies.
    db.batch_execute(
        "update keel.embedding_jobs set lease_token = gen_random_uuid(), lease_until = now() + interval '10 minutes'",
    )
    .await
    .unwrap();
    assert_eq!(
        try_cron(&app, "/api/cron/embeddings").await.unwrap()["embedded"],
        0,
        "leases hold"
    );
    expire_leases(&app).await;
    drain_embeddings(&app).await;

    assert_every_task_applied_once(&app, DOCUMENTS as i64).await;
    assert_every_chunk_embedded_once(&app).await;
    assert_eq!(
        app.count("select count(*) from keel.tasks where attempts <> 2")
            .await,
        0,
        "each task ran once more, by the next worker"
    );
    assert_eq!(
        openai.inputs_received() as i64,
        app.count("select count(*) from keel.chunks").await,
        "each chunk sent to the provider once"
    );
}

#[tokio::test]
async fn overlapping_cron_runs_neither_lose_nor_duplicate_work() {
    let (openai, url) = FakeOpenAi::start().await;
    let app = spawn_app_with(|_, vars| {
        openai_vars(vars, &url);
        vars.insert("EMBEDDING_BATCH_SIZE".into(), "4".into());
    })
    .await;
    let key = app.create_tenant("shop").await;
    deliver_all(&app, &key).await;

    let (first, second) = tokio::join!(
        try_cron(&app, "/api/cron/tasks"),
        try_cron(&app, "/api/cron/tasks")
    );
    let ran = first.unwrap()["ran"].as_u64().unwrap() + second.unwrap()["ran"].as_u64().unwrap();
    assert_eq!(
        ran, DOCUMENTS as u64,
        "each task ran by exactly one of the runs"
    );
    let (first, second) = tokio::join!(
        try_cron(&app, "/api/cron/embeddings"),
        try_cron(&app, "/api/cron/embeddings")
    );
    let embedded = first.unwrap()["embedded"].as_u64().unwrap()
        + second.unwrap()["embedded"].as_u64().unwrap();

    let chunks = app.count("select count(*) from keel.chunks").await;
    assert_eq!(embedded as i64, chunks);
    assert_every_task_applied_once(&app, DOCUMENTS as i64).await;
    assert_every_chunk_embedded_once(&app).await;
    assert_eq!(
        app.count("select count(*) from keel.tasks where attempts <> 1")
            .await,
        0
    );
    assert_eq!(
        openai.inputs_received() as i64,
        chunks,
        "no chunk was sent to the provider twice"
    );
}

#[tokio::test]
async fn a_provider_failing_throughout_a_run_loses_and_duplicates_nothing() {
    let (openai, url) = FakeOpenAi::start().await;
    let app = spawn_app_with(|_, vars| {
        openai_vars(vars, &url);
        vars.insert("EMBEDDING_RETRY_BASE_SECONDS".into(), "0".into());
        vars.insert("EMBEDDING_MAX_ATTEMPTS".into(), "100".into());
        vars.insert("EMBEDDING_BATCH_SIZE".into(), "8".into());
    })
    .await;
    let key = app.create_tenant("shop").await;
    deliver_all(&app, &key).await;
    openai.always(Some(Scripted::ServerError(500)));

    // Tasks and an embedding run while every provider call fails.
    drain_tasks(&app).await;
    let failing = try_cron(&app, "/api/cron/embeddings").await.unwrap();
    assert_eq!(failing["embedded"], 0);
    assert_eq!(app.count("select count(*) from keel.embeddings").await, 0);
    assert_eq!(
        app.count("select count(*) from keel.embedding_jobs where failed_at is not null")
            .await,
        0,
        "an outage is retried, not given up on"
    );

    openai.always(None);
    drain_embeddings(&app).await;

    assert_every_task_applied_once(&app, DOCUMENTS as i64).await;
    assert_every_chunk_embedded_once(&app).await;
}
