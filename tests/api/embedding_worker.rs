use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{CRON_SECRET, TestApp, openai_vars, spawn_app_with};
use crate::support::{FakeOpenAi, Scripted};

fn faq(count: usize) -> Value {
    Value::Array(
        (0..count)
            .map(|i| json!({"id": format!("faq-{i}"), "title": "FAQ", "content": format!("Question {i}: do you deliver to zone {i}? Yes.")}))
            .collect(),
    )
}

async fn app_with(openai_url: &str, extra: &[(&str, &str)]) -> TestApp {
    let extra: Vec<(String, String)> = extra
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    spawn_app_with(|_, vars| {
        openai_vars(vars, openai_url);
        vars.extend(extra);
    })
    .await
}

#[tokio::test]
async fn the_embedding_cron_needs_the_cron_secret() {
    let (_, url) = FakeOpenAi::start().await;
    let app = app_with(&url, &[]).await;

    for credential in [None, Some("wrong")] {
        let mut request = app.client.get(app.url("/api/cron/embeddings"));
        if let Some(credential) = credential {
            request = request.bearer_auth(credential);
        }
        assert_eq!(
            request.send().await.unwrap().status(),
            401,
            "{credential:?}"
        );
    }
    let ok = app
        .client
        .get(app.url("/api/cron/embeddings"))
        .bearer_auth(CRON_SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn rate_limits_and_server_errors_are_retried_and_every_chunk_is_stored_once() {
    let (openai, url) = FakeOpenAi::start().await;
    let app = app_with(
        &url,
        &[
            ("EMBEDDING_BATCH_SIZE", "4"),
            ("EMBEDDING_TIMEOUT_MS", "500"),
        ],
    )
    .await;
    let key = app.create_tenant("joes").await;
    app.put_documents(&key, faq(10)).await;
    openai.script([
        Scripted::RateLimited { retry_after_ms: 20 },
        Scripted::ServerError(500),
        Scripted::Hang(Duration::from_secs(3)),
    ]);

    let report = app.run_embedding_cron().await;

    assert_eq!(report["embedded"], 10, "{report}");
    assert_eq!(report["failed"], 0);
    assert_eq!(report["remaining"], 0);
    assert_eq!(report["batches"], 3);
    assert_eq!(
        report["provider_requests"], 6,
        "3 batches + 3 retries (429, 500, a timeout)"
    );
    assert_eq!(app.count("select count(*) from keel.embeddings").await, 10);
    assert_eq!(
        app.count("select count(distinct chunk_id) from keel.embeddings")
            .await,
        10
    );
    assert_eq!(
        app.count("select count(*) from keel.embedding_jobs").await,
        0
    );
    // Requests carried the model and dimensions OpenAI expects.
    let first = &openai.requests()[0];
    assert_eq!(first["model"], "text-embedding-3-small");
    assert_eq!(first["dimensions"], 64);
    assert_eq!(first["encoding_format"], "float");
    assert!(
        first["input"][0].as_str().unwrap().starts_with("FAQ\n\n"),
        "title goes first"
    );
}

#[tokio::test]
async fn a_poison_batch_is_retried_with_backoff_then_marked_failed_with_its_error() {
    let (openai, url) = FakeOpenAi::start().await;
    let app = app_with(
        &url,
        &[
            ("EMBEDDING_MAX_ATTEMPTS", "3"),
            ("EMBEDDING_RETRY_BASE_SECONDS", "0"),
        ],
    )
    .await;
    let key = app.create_tenant("joes").await;
    app.put_documents(&key, faq(1)).await;
    openai.always(Some(Scripted::BadRequest));

    let mut reports = Vec::new();
    for _ in 0..4 {
        reports.push(app.run_embedding_cron().await);
    }

    assert_eq!(reports[0]["retrying"], 1);
    assert_eq!(reports[1]["retrying"], 1);
    assert_eq!(reports[2]["failed"], 1, "third attempt is the last");
    assert_eq!(reports[3]["embedded"], 0);
    assert_eq!(
        openai.requests().len(),
        3,
        "a failed job is not retried forever"
    );
    let stored = app.db.connect().await;
    let row = stored
        .query_one(
            "select attempts, last_error, failed_at is not null from keel.embedding_jobs",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 3);
    assert!(
        row.get::<_, String>(1).contains("maximum context length"),
        "the provider's reason is kept"
    );
    assert!(row.get::<_, bool>(2));
    let listed: Value = app.get_json("/api/documents", &key).await;
    assert_eq!(listed["documents"][0]["embedding_state"], "failed");
}

#[tokio::test]
async fn failed_attempts_back_off_before_the_next_try() {
    let (openai, url) = FakeOpenAi::start().await;
    let app = app_with(&url, &[("EMBEDDING_RETRY_BASE_SECONDS", "3600")]).await;
    let key = app.create_tenant("joes").await;
    app.put_documents(&key, faq(1)).await;
    openai.script([Scripted::BadRequest]);

    let first = app.run_embedding_cron().await;
    let second = app.run_embedding_cron().await;

    assert_eq!(first["retrying"], 1);
    assert_eq!(second["embedded"], 0, "the job is not due yet");
    assert_eq!(openai.requests().len(), 1);
    let delay = app
        .count("select extract(epoch from run_at - now())::bigint from keel.embedding_jobs")
        .await;
    assert!(
        (1700..=3600).contains(&delay),
        "backoff with jitter: {delay}s"
    );
}

#[tokio::test]
async fn overlapping_cron_runs_never_embed_a_chunk_twice() {
    let (openai, url) = FakeOpenAi::start().await;
    let app = app_with(&url, &[("EMBEDDING_BATCH_SIZE", "5")]).await;
    let key = app.create_tenant("joes").await;
    app.put_documents(&key, faq(40)).await;

    let runs = futures::future::join_all((0..4).map(|_| app.run_embedding_cron())).await;

    let embedded: i64 = runs.iter().map(|r| r["embedded"].as_i64().unwrap()).sum();
    assert_eq!(embedded, 40);
    assert_eq!(openai.inputs_received(), 40, "no chunk was sent twice");
    assert_eq!(app.count("select count(*) from keel.embeddings").await, 40);
}

#[tokio::test]
async fn a_run_killed_mid_batch_loses_nothing_once_its_lease_expires() {
    let (_, url) = FakeOpenAi::start().await;
    let app = app_with(&url, &[]).await;
    let key = app.create_tenant("joes").await;
    app.put_documents(&key, faq(3)).await;
    // A worker claims the batch, then its function is killed before completing.
    let claimed: Value = app
        .db
        .connect()
        .await
        .query_one(
            "select public.keel_claim_embedding_jobs($1)",
            &[&json!({"model": "text-embedding-3-small", "dimensions": 64, "limit": 10, "lease_seconds": 1})],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(claimed["jobs"].as_array().unwrap().len(), 3);

    // While the lease holds, other runs leave the work alone...
    let during = app.run_embedding_cron().await;
    assert_eq!(during["embedded"], 0);
    assert_eq!(during["remaining"], 0, "nothing else to do");
    // ...and once it expires, the next run finishes it, exactly once.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let after = app.run_embedding_cron().await;

    assert_eq!(after["embedded"], 3);
    assert_eq!(app.count("select count(*) from keel.embeddings").await, 3);
    assert_eq!(
        app.count("select count(*) from keel.embedding_jobs").await,
        0
    );
}

#[tokio::test]
async fn a_tenant_embeds_its_own_backlog_on_demand_and_only_its_own() {
    let (_, url) = FakeOpenAi::start().await;
    let app = app_with(&url, &[]).await;
    let joes = app.create_tenant("joes").await;
    let clinic = app.create_tenant("clinic").await;
    app.put_documents(&joes, faq(3)).await;
    app.put_documents(&clinic, faq(2)).await;

    let response = app
        .client
        .post(app.url("/api/embeddings/generate"))
        .bearer_auth(&joes)
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 200);
    let report: Value = response.json().await.unwrap();
    assert_eq!(report["embedded"], 3);
    assert_eq!(report["remaining"], 0, "joes' backlog is done");
    assert_eq!(
        app.count("select count(*) from keel.embedding_jobs").await,
        2,
        "the clinic's jobs wait for the cron"
    );
    let unauthenticated = app
        .client
        .post(app.url("/api/embeddings/generate"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);
}
