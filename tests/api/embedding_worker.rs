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
        .get_authorized("/api/cron/embeddings", CRON_SECRET)
        .await;
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

/// Moves the clock of the embedding worker past every pause and backoff:
/// jobs become due and the provider circuit closes, as if minutes passed.
async fn skip_ahead(app: &TestApp) {
    app.db
        .connect()
        .await
        .batch_execute(
            "update keel.embedding_jobs set run_at = now() - interval '1 second' where run_at > now();
             update keel.embedding_models set paused_until = now() - interval '1 second' where paused_until > now();",
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_provider_outage_longer_than_every_backoff_fails_nothing_and_all_is_embedded_once_it_is_back()
 {
    let (openai, url) = FakeOpenAi::start().await;
    let app = app_with(
        &url,
        &[
            ("EMBEDDING_BATCH_SIZE", "4"),
            ("EMBEDDING_MAX_ATTEMPTS", "2"),
            ("EMBEDDING_MAX_RETRIES", "0"),
            ("EMBEDDING_TIMEOUT_MS", "200"),
        ],
    )
    .await;
    let joes = app.create_tenant("joes").await;
    let clinic = app.create_tenant("clinic").await;
    app.put_documents(&joes, faq(6)).await;
    app.put_documents(&clinic, faq(5)).await;

    // The provider is down: 503s, then it stops answering, then it
    // rate-limits everyone with retry-after. Crons keep running every minute
    // and the clock moves past every backoff, many times over.
    let outage = [
        Scripted::ServerError(503),
        Scripted::Hang(Duration::from_secs(2)),
        Scripted::RateLimitedFor {
            retry_after_seconds: 45,
        },
    ];
    for answer in outage {
        openai.always(Some(answer.clone()));
        for _ in 0..4 {
            let report = app.run_embedding_cron().await;
            assert_eq!(report["embedded"], 0, "{report}");
            assert_eq!(
                report["failed"], 0,
                "a transient failure fails nothing: {report}"
            );
            assert!(
                report["paused_until"].is_string(),
                "the circuit opens: {report}"
            );
            // While the circuit is open, the provider is left alone.
            let sent = openai.requests().len();
            let paused = app.run_embedding_cron().await;
            assert_eq!(paused["provider_requests"], 0, "{paused}");
            assert_eq!(openai.requests().len(), sent);
            skip_ahead(&app).await;
        }
    }
    // The provider's own retry-after decides the pause.
    openai.always(Some(Scripted::RateLimitedFor {
        retry_after_seconds: 45,
    }));
    app.run_embedding_cron().await;
    let pause = app
        .count("select extract(epoch from paused_until - now())::bigint from keel.embedding_models")
        .await;
    assert!((40..=45).contains(&pause), "paused for {pause}s");
    // Meanwhile the work stays visible as pending, never failed.
    assert_eq!(
        app.count("select count(*) from keel.embedding_jobs where failed_at is null")
            .await,
        11
    );
    let listed: Value = app.get_json("/api/documents", &joes).await;
    assert!(
        listed["documents"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["embedding_state"] == "pending"),
        "{listed}"
    );

    // The provider is back: the next runs catch up by themselves.
    openai.always(None);
    skip_ahead(&app).await;
    let mut embedded = 0;
    for _ in 0..3 {
        let report = app.run_embedding_cron().await;
        embedded += report["embedded"].as_i64().unwrap();
        assert_eq!(report["failed"], 0, "{report}");
    }

    assert_eq!(embedded, 11, "every chunk of every tenant, exactly once");
    assert_eq!(app.count("select count(*) from keel.embeddings").await, 11);
    assert_eq!(
        app.count("select count(distinct chunk_id) from keel.embeddings")
            .await,
        11
    );
    assert_eq!(
        app.count("select count(*) from keel.embedding_jobs").await,
        0,
        "nothing pending, nothing failed"
    );
    assert_eq!(
        app.count("select coalesce(sum(value), 0)::bigint from keel.counters where name = 'embeddings_stored'")
            .await,
        11
    );
    for key in [&joes, &clinic] {
        let listed: Value = app.get_json("/api/documents", key).await;
        assert!(
            listed["documents"]
                .as_array()
                .unwrap()
                .iter()
                .all(|d| d["embedding_state"] == "embedded"),
            "{listed}"
        );
    }
}

#[tokio::test]
async fn an_input_the_provider_rejects_fails_alone_and_the_rest_of_its_batch_is_embedded() {
    let (openai, url) = FakeOpenAi::start().await;
    let app = app_with(
        &url,
        &[
            ("EMBEDDING_BATCH_SIZE", "8"),
            ("EMBEDDING_MAX_ATTEMPTS", "2"),
            ("EMBEDDING_RETRY_BASE_SECONDS", "0"),
        ],
    )
    .await;
    let joes = app.create_tenant("joes").await;
    let clinic = app.create_tenant("clinic").await;
    app.put_documents(&joes, faq(4)).await;
    app.put_documents(
        &clinic,
        json!([{"id": "huge", "title": "Poison", "content": "An input the provider refuses."}]),
    )
    .await;
    openai.reject_inputs_containing("refuses");

    let first = app.run_embedding_cron().await;
    let second = app.run_embedding_cron().await;

    assert_eq!(
        first["embedded"], 4,
        "the other tenant's chunks are embedded: {first}"
    );
    assert_eq!(first["retrying"], 1, "{first}");
    assert_eq!(second["failed"], 1, "{second}");
    assert_eq!(app.count("select count(*) from keel.embeddings").await, 4);
    let failed: String = app
        .db
        .connect()
        .await
        .query_one(
            "select d.external_id from keel.embedding_jobs j join keel.chunks c on c.id = j.chunk_id
             join keel.documents d on d.id = c.document_id where j.failed_at is not null",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(failed, "huge");
    let listed: Value = app.get_json("/api/documents", &joes).await;
    assert!(
        listed["documents"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["embedding_state"] == "embedded"),
        "{listed}"
    );
}

#[tokio::test]
async fn a_tenant_requeues_its_failed_chunks_by_retrying_or_by_uploading_them_again() {
    let (openai, url) = FakeOpenAi::start().await;
    let app = app_with(
        &url,
        &[
            ("EMBEDDING_MAX_ATTEMPTS", "1"),
            ("EMBEDDING_RETRY_BASE_SECONDS", "0"),
        ],
    )
    .await;
    let joes = app.create_tenant("joes").await;
    let clinic = app.create_tenant("clinic").await;
    app.put_documents(&joes, faq(2)).await;
    app.put_documents(&clinic, faq(1)).await;
    openai.always(Some(Scripted::BadRequest));
    let report = app.run_embedding_cron().await;
    assert_eq!(report["failed"], 3, "{report}");
    openai.always(None);

    // Uploading an unchanged document again queues its failed chunk again.
    let again = app
        .put_documents(&joes, json!([faq(1)[0].clone()]))
        .await
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(again["unchanged"], 1, "{again}");
    assert_eq!(again["chunks_pending"], 1, "{again}");
    let failed = "select count(*) from keel.embedding_jobs where failed_at is not null";
    assert_eq!(app.count(failed).await, 2);

    // Retrying requeues the rest of the caller's failed chunks, and only its own.
    let retried = app
        .client
        .post(app.url("/api/embeddings/retry"))
        .bearer_auth(&joes)
        .send()
        .await
        .unwrap();
    assert_eq!(retried.status(), 200);
    let retried: Value = retried.json().await.unwrap();
    assert_eq!(retried["requeued"], 1, "{retried}");
    assert_eq!(
        app.count(failed).await,
        1,
        "the clinic's job is its own business"
    );
    let listed: Value = app.get_json("/api/documents", &joes).await;
    assert!(
        listed["documents"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["embedding_state"] == "pending"),
        "{listed}"
    );

    let report = app.run_embedding_cron().await;
    assert_eq!(report["embedded"], 2, "{report}");
    let listed: Value = app.get_json("/api/documents", &joes).await;
    assert!(
        listed["documents"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["embedding_state"] == "embedded"),
        "{listed}"
    );
    let unauthenticated = app
        .client
        .post(app.url("/api/embeddings/retry"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);
}
