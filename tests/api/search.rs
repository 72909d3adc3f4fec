use std::collections::HashMap;

use serde_json::{Value, json};

use crate::helpers::{
    TestApp, error_body, openai_vars, spawn_app_with, spawn_app_with_local_model,
};
use crate::support::{FakeOpenAi, Scripted, bag_of_words};

/// A restaurant's menu and FAQ, and a clinic's unrelated documents.
async fn restaurant_and_clinic(app: &TestApp) -> (String, String) {
    let restaurant = app.create_tenant("joes-diner").await;
    let clinic = app.create_tenant("city-clinic").await;
    let menu_and_faq = json!([
        {"id": "menu-2024", "title": "Dinner menu", "metadata": {"kind": "menu"},
         "content": "Starters: tomato soup, chicken wings with blue cheese.\n\nMains: ribeye steak with fries, grilled salmon with butter sauce.\n\nDesserts: chocolate cake, cheesecake."},
        {"id": "faq-diet", "title": "FAQ: dietary needs", "metadata": {"kind": "faq"},
         "content": "Do you have vegan options? Yes: our chickpea curry, falafel wrap and grilled vegetable platter are fully plant-based and made without any animal products."},
        {"id": "faq-hours", "title": "FAQ: opening hours", "metadata": {"kind": "faq"},
         "content": "We are open from noon to 11pm, Tuesday to Sunday. Closed on Mondays."},
        {"id": "faq-parking", "title": "FAQ: parking", "metadata": {"kind": "faq"},
         "content": "Free parking is available behind the building after 6pm."}
    ]);
    let clinic_docs = json!([
        {"id": "vaccines", "title": "Vaccination schedule", "content": "Flu shots are given every autumn; book with reception. Vegan patients can ask about gelatin-free vaccines."},
        {"id": "billing", "title": "Billing", "content": "Invoices are sent monthly. Insurance claims take two weeks."}
    ]);
    assert_eq!(
        app.put_documents(&restaurant, menu_and_faq).await.status(),
        200
    );
    assert_eq!(app.put_documents(&clinic, clinic_docs).await.status(), 200);
    let report = app.run_embedding_cron().await;
    assert_eq!(report["remaining"], 0, "{report}");
    (restaurant, clinic)
}

async fn results(app: &TestApp, key: &str, body: Value) -> Value {
    let response = app.search(key, body).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn document_ids(body: &Value) -> Vec<String> {
    body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["document_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn vegan_options_are_answered_by_the_right_chunk_with_the_local_model() {
    let app = spawn_app_with_local_model(|_| {}).await;
    let (restaurant, _) = restaurant_and_clinic(&app).await;

    for mode in ["hybrid", "vector", "keyword"] {
        let body = results(
            &app,
            &restaurant,
            json!({"query": "vegan options", "mode": mode, "top_k": 3}),
        )
        .await;

        assert_eq!(body["mode"], mode);
        assert!(body["took_ms"].is_u64());
        let top = &body["results"][0];
        assert_eq!(top["document_id"], "faq-diet", "{mode}: {body}");
        assert_eq!(top["title"], "FAQ: dietary needs");
        assert_eq!(top["chunk_index"], 0);
        assert!(top["content"].as_str().unwrap().contains("chickpea curry"));
        assert_eq!(top["metadata"], json!({"kind": "faq"}));
        assert!(top["score"].as_f64().unwrap() > 0.0);
        assert!(
            !document_ids(&body).contains(&"vaccines".to_owned()),
            "{mode}: another tenant's chunk"
        );
    }

    // Semantics, not words: no document says "plant-based meals" or "meat-free".
    let body = results(
        &app,
        &restaurant,
        json!({"query": "meat-free dishes", "mode": "vector", "top_k": 1}),
    )
    .await;
    assert_eq!(document_ids(&body), ["faq-diet"]);
}

#[tokio::test]
async fn search_survives_a_flaky_openai_compatible_provider() {
    let (openai, url) = FakeOpenAi::start().await;
    let app = spawn_app_with(|_, vars| openai_vars(vars, &url)).await;
    openai.script([
        Scripted::RateLimited { retry_after_ms: 10 },
        Scripted::ServerError(500),
    ]);
    let (restaurant, _) = restaurant_and_clinic(&app).await;
    openai.script([Scripted::ServerError(502)]);

    let body = results(&app, &restaurant, json!({"query": "vegan options"})).await;

    assert_eq!(body["mode"], "hybrid");
    assert!(body.get("degraded").is_none(), "{body}");
    assert_eq!(body["results"][0]["document_id"], "faq-diet");
}

#[tokio::test]
async fn search_never_returns_another_tenants_chunks() {
    let (_, url) = FakeOpenAi::start().await;
    let app = spawn_app_with(|_, vars| openai_vars(vars, &url)).await;
    let (restaurant, clinic) = restaurant_and_clinic(&app).await;

    for mode in ["hybrid", "vector", "keyword"] {
        // The clinic asks about the restaurant's words; it must see only its own.
        let body = results(
            &app,
            &clinic,
            json!({"query": "vegan chickpea curry parking", "mode": mode, "top_k": 20}),
        )
        .await;
        let ids = document_ids(&body);
        assert!(
            ids.iter().all(|id| id == "vaccines" || id == "billing"),
            "{mode}: {ids:?}"
        );
        let body = results(
            &app,
            &restaurant,
            json!({"query": "vaccines insurance invoices", "mode": mode, "top_k": 20}),
        )
        .await;
        assert!(
            !document_ids(&body)
                .iter()
                .any(|id| id == "vaccines" || id == "billing"),
            "{mode}"
        );
    }
}

#[tokio::test]
async fn metadata_filters_and_min_score_narrow_the_results() {
    let (_, url) = FakeOpenAi::start().await;
    let app = spawn_app_with(|_, vars| openai_vars(vars, &url)).await;
    let (restaurant, _) = restaurant_and_clinic(&app).await;

    let body = results(
        &app,
        &restaurant,
        json!({"query": "salmon", "filter": {"metadata": {"kind": "faq"}}, "top_k": 20}),
    )
    .await;
    assert!(
        document_ids(&body).iter().all(|id| id.starts_with("faq-")),
        "{body}"
    );

    let body = results(
        &app,
        &restaurant,
        json!({"query": "vegan options", "mode": "vector", "min_score": 0.99, "top_k": 20}),
    )
    .await;
    assert!(
        body["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["score"].as_f64().unwrap() >= 0.99)
    );
}

#[tokio::test]
async fn bad_search_requests_name_the_field() {
    let (_, url) = FakeOpenAi::start().await;
    let app = spawn_app_with(|_, vars| openai_vars(vars, &url)).await;
    let key = app.create_tenant("shop").await;
    let cases = [
        (
            json!({"query": "x", "top_k": 0}),
            "`top_k` must be between 1 and 20",
            "top_k too small",
        ),
        (
            json!({"query": "x", "top_k": 21}),
            "`top_k` must be between 1 and 20",
            "top_k too large",
        ),
        (
            json!({"query": "x", "top_k": "5"}),
            "`top_k`: invalid type: string",
            "top_k as a string",
        ),
        (
            json!({"query": "  "}),
            "`query` must be 1 to 2000 characters",
            "blank query",
        ),
        (
            json!({"query": "x".repeat(2001)}),
            "`query` must be 1 to 2000 characters",
            "long query",
        ),
        (
            json!({"query": "x", "mode": "semantic"}),
            "`mode`: unknown variant `semantic`",
            "unknown mode",
        ),
        (
            json!({"query": "x", "filter": {"metadata": ["kind"]}}),
            "`filter.metadata`: invalid type: sequence",
            "filter not an object",
        ),
        (json!({"top_k": 5}), "missing field `query`", "no query"),
    ];
    for (body, message, reason) in cases {
        let response = app.search(&key, body).await;
        assert_eq!(response.status(), 400, "{reason}");
        let error = error_body(response).await;
        assert!(
            error["message"].as_str().unwrap().contains(message),
            "{reason}: {error}"
        );
    }
}

#[tokio::test]
async fn disabled_vector_search_degrades_to_keyword_and_says_so() {
    let (openai, url) = FakeOpenAi::start().await;
    let app = spawn_app_with(|_, vars| {
        openai_vars(vars, &url);
        vars.insert("DISABLE_VECTOR_SEARCH".into(), "true".into());
    })
    .await;
    let key = app.create_tenant("joes").await;
    app.put_documents(
        &key,
        json!([{"id": "faq", "content": "Vegan options: chickpea curry."}]),
    )
    .await;

    let body = results(
        &app,
        &key,
        json!({"query": "vegan options", "mode": "vector"}),
    )
    .await;

    assert_eq!(body["mode"], "keyword");
    assert_eq!(body["degraded"], true);
    assert_eq!(
        body["degraded_reason"],
        "vector search is disabled (DISABLE_VECTOR_SEARCH)"
    );
    assert_eq!(body["results"][0]["document_id"], "faq");
    assert!(openai.requests().is_empty(), "no provider call");
}

#[tokio::test]
async fn a_failing_provider_degrades_search_to_keyword_instead_of_failing() {
    let (openai, url) = FakeOpenAi::start().await;
    let app = spawn_app_with(|_, vars| {
        openai_vars(vars, &url);
        vars.insert("EMBEDDING_MAX_RETRIES".into(), "1".into());
    })
    .await;
    let (restaurant, _) = restaurant_and_clinic(&app).await;
    openai.always(Some(Scripted::ServerError(503)));

    let body = results(&app, &restaurant, json!({"query": "vegan options"})).await;

    assert_eq!(body["mode"], "keyword");
    assert_eq!(body["degraded"], true);
    assert_eq!(
        body["degraded_reason"],
        "the embeddings provider is unavailable"
    );
    assert_eq!(body["results"][0]["document_id"], "faq-diet");
}

#[tokio::test]
async fn query_vectors_are_cached_in_the_instance_and_in_the_database() {
    let (openai, url) = FakeOpenAi::start().await;
    let app = spawn_app_with(|_, vars| openai_vars(vars, &url)).await;
    let (restaurant, _) = restaurant_and_clinic(&app).await;
    let calls = openai.requests().len();

    results(&app, &restaurant, json!({"query": "vegan options"})).await;
    results(&app, &restaurant, json!({"query": "vegan  options "})).await;
    assert_eq!(
        openai.requests().len(),
        calls + 1,
        "the second search used the LRU"
    );

    // A cold instance (new process, empty LRU) on the same database hits the shared cache.
    let cold = crate::helpers::spawn_app_on(
        crate::helpers::TestDatabase {
            url: app.db.url.clone(),
        },
        {
            let mut vars = crate::helpers::base_vars(&app.db);
            openai_vars(&mut vars, &url);
            vars
        },
    )
    .await;
    let body = results(&cold, &restaurant, json!({"query": "vegan options"})).await;
    assert_eq!(body["results"][0]["document_id"], "faq-diet");
    assert_eq!(
        openai.requests().len(),
        calls + 1,
        "no provider call on a database cache hit"
    );
    assert_eq!(app.count("select coalesce(sum(value), 0)::bigint from keel.counters where name = 'query_cache_misses'").await, 1);
    assert_eq!(app.count("select coalesce(sum(value), 0)::bigint from keel.counters where name = 'query_cache_hits'").await, 2);
    assert_eq!(app.count("select count(*) from keel.query_cache").await, 1);
}

#[tokio::test]
async fn a_small_tenant_among_many_still_gets_top_k_results() {
    let (_, url) = FakeOpenAi::start().await;
    let app = spawn_app_with(|_, vars| openai_vars(vars, &url)).await;
    let small = app.create_tenant("small").await;
    let big = app.create_tenant("big").await;
    let small_docs: Vec<Value> = (0..8).map(|i| json!({"id": format!("s{i}"), "content": format!("Small shop note number {i} about opening hours.")})).collect();
    app.put_documents(&small, Value::Array(small_docs)).await;
    app.put_documents(&big, json!([{"id": "seed", "content": "seed"}]))
        .await;
    app.run_embedding_cron().await;
    // Thousands of the big tenant's vectors crowd the HNSW graph around the query.
    app.db
        .connect()
        .await
        .batch_execute(
            "insert into keel.documents (tenant_id, external_id, content_hash)
               select t.id, 'bulk', 'x' from keel.tenants t where t.slug = 'big';
             insert into keel.chunks (tenant_id, document_id, chunk_index, content, content_hash, token_count, search_vector)
               select d.tenant_id, d.id, g, 'opening hours', 'x', 2, to_tsvector('opening hours')
               from keel.documents d, generate_series(1, 5000) g where d.external_id = 'bulk';
             insert into keel.embeddings (chunk_id, model, dimensions, tenant_id, embedding)
               select c.id, 'text-embedding-3-small', 64, c.tenant_id,
                      (select array_agg(random())::real[] from generate_series(1, 64) where c.id > 0)::extensions.vector
               from keel.chunks c join keel.documents d on d.id = c.document_id where d.external_id = 'bulk';
             analyze keel.embeddings;",
        )
        .await
        .unwrap();

    let body = results(
        &app,
        &small,
        json!({"query": "opening hours", "mode": "vector", "top_k": 5}),
    )
    .await;

    assert_eq!(body["results"].as_array().unwrap().len(), 5, "{body}");
    assert!(document_ids(&body).iter().all(|id| id.starts_with('s')));
}

/// The vector ranking runs a statement it prepares once per database session
/// (0029); one left under its name by anything else is replaced, not run.
#[tokio::test]
async fn the_vector_ranking_never_runs_a_statement_someone_else_prepared_under_its_name() {
    let (_, url) = FakeOpenAi::start().await;
    let app = spawn_app_with(|_, vars| openai_vars(vars, &url)).await;
    restaurant_and_clinic(&app).await;
    let mut session = app.db.connect().await;
    // A session that would otherwise cache generic plans.
    session
        .batch_execute("set plan_cache_mode = force_generic_plan")
        .await
        .unwrap();
    let rank =
        "select keel.rank_vector(e.tenant_id, e.model, e.dimensions, e.embedding, '{}', 5)::text
                from keel.embeddings e order by e.chunk_id limit 1";
    let ranked: String = session.query_one(rank, &[]).await.unwrap().get(0);
    // Planned for each search (custom plans), so small tenants keep their
    // exact ranking; never a cached generic plan.
    let prepared = "select name, custom_plans, generic_plans from pg_prepared_statements
                    where name like 'keel\\_rank\\_vector\\_%'";
    let rows = session.query(prepared, &[]).await.unwrap();
    assert_eq!(rows.len(), 1, "one statement, prepared on first use");
    let name: String = rows[0].get(0);
    for _ in 0..6 {
        let same: String = session.query_one(rank, &[]).await.unwrap().get(0);
        assert_eq!(same, ranked);
    }
    let rows = session.query(prepared, &[]).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].get::<_, i64>(1), rows[0].get::<_, i64>(2)),
        (7, 0),
        "the one statement, reused and planned for each search"
    );
    let transaction = session.transaction().await.unwrap();
    transaction.query_one(rank, &[]).await.unwrap();
    let mode: String = transaction
        .query_one("select current_setting('plan_cache_mode')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        mode, "force_generic_plan",
        "the session's setting comes back"
    );
    transaction.commit().await.unwrap();

    session
        .batch_execute(&format!(
            "deallocate {name};
             prepare {name}(extensions.vector, uuid, int) as
               select '[{{\"chunk_id\": -1, \"score\": 1}}]'::jsonb"
        ))
        .await
        .unwrap();
    let again: String = session.query_one(rank, &[]).await.unwrap().get(0);

    assert_eq!(again, ranked);
    assert!(!again.contains("-1"), "{again}");
}

#[tokio::test]
async fn a_model_change_reembeds_in_the_background_while_search_serves_the_old_vectors_then_retires_them()
 {
    let (openai, url) = FakeOpenAi::start().await;
    let app = spawn_app_with(|_, vars| openai_vars(vars, &url)).await;
    let (restaurant, _) = restaurant_and_clinic(&app).await;

    // The deployment switches to another model (another vector size).
    let switched = crate::helpers::spawn_app_on(
        crate::helpers::TestDatabase {
            url: app.db.url.clone(),
        },
        {
            let mut vars = crate::helpers::base_vars(&app.db);
            openai_vars(&mut vars, &url);
            vars.insert("EMBEDDING_MODEL".into(), "text-embedding-3-large".into());
            vars.insert("EMBEDDING_DIMENSIONS".into(), "32".into());
            vars
        },
    )
    .await;
    let first_switch_request = openai.requests().len();

    // Before any new vector exists, search still answers with the old model's vectors.
    let body = results(
        &switched,
        &restaurant,
        json!({"query": "chickpea curry falafel", "mode": "vector"}),
    )
    .await;
    assert_eq!(body["mode"], "vector");
    assert!(body.get("degraded").is_none(), "{body}");
    assert_eq!(body["results"][0]["document_id"], "faq-diet");
    let query_request = &openai.requests()[first_switch_request];
    assert_eq!(
        query_request["model"], "text-embedding-3-small",
        "the query is embedded with the serving model"
    );
    assert_eq!(query_request["dimensions"], 64);

    // Until the new model covers a tenant, search counts each model's vectors
    // of the tenant to choose; from then on it knows without counting.
    let covered = |model: &str, dimensions: u32| {
        format!(
            "select count(*) from keel.tenants t
             where keel.model_covers_tenant(t.id, '{model}', {dimensions})"
        )
    };
    assert_eq!(app.count(&covered("text-embedding-3-large", 32)).await, 0);

    // The cron re-embeds every chunk with the new model, each under its own HNSW index.
    let report = switched.run_embedding_cron().await;
    assert_eq!(report["embedded"], 6, "{report}");
    assert_eq!(app.count(&covered("text-embedding-3-large", 32)).await, 2);
    assert_eq!(
        app.count(&covered("text-embedding-3-small", 64)).await,
        0,
        "a replaced model covers no tenant, though its vectors are all there"
    );
    assert_eq!(
        app.count("select count(*) from pg_indexes where indexname like 'embeddings_hnsw_%'")
            .await,
        2
    );
    assert_eq!(
        app.count(
            "select count(*) from pg_class where relname like 'embeddings_hnsw_%'
             and reloptions @> array['m=16', 'ef_construction=200']"
        )
        .await,
        2,
        "each model's graph is built with a candidate list of 200, which keeps a topic ingested early reachable"
    );
    let body = results(
        &switched,
        &restaurant,
        json!({"query": "chickpea curry falafel", "mode": "vector"}),
    )
    .await;
    assert_eq!(body["results"][0]["document_id"], "faq-diet");
    let last = openai.requests().last().unwrap().clone();
    assert_eq!(
        last["model"], "text-embedding-3-large",
        "once complete, the new model serves"
    );
    assert_eq!(last["dimensions"], 32);

    // Maintenance keeps the old vectors for a day (a change may be rolled
    // back), then deletes them.
    let old_vectors = "select count(*) from keel.embeddings where model = 'text-embedding-3-small'";
    let kept = switched.run_cron("/api/cron/maintenance").await;
    assert_eq!(kept["replaced_vectors_pruned"], 0, "{kept}");
    assert_eq!(app.count(old_vectors).await, 6);
    app.db
        .connect()
        .await
        .execute(
            "update keel.embedding_models set prepared_at = now() - interval '25 hours'",
            &[],
        )
        .await
        .unwrap();
    let pruned = switched.run_cron("/api/cron/maintenance").await;
    assert_eq!(pruned["replaced_vectors_pruned"], 6, "{pruned}");
    assert_eq!(app.count(old_vectors).await, 0);
    assert_eq!(
        app.count("select count(*) from keel.embeddings").await,
        6,
        "the serving model's vectors stay"
    );
    let body = results(
        &switched,
        &restaurant,
        json!({"query": "chickpea curry falafel", "mode": "vector"}),
    )
    .await;
    assert_eq!(body["results"][0]["document_id"], "faq-diet");
}

/// The same database served by a deployment configured with another model.
async fn deployment_with_model(
    app: &TestApp,
    openai_url: &str,
    model: &str,
    dimensions: u32,
) -> TestApp {
    let mut vars = crate::helpers::base_vars(&app.db);
    openai_vars(&mut vars, openai_url);
    vars.insert("EMBEDDING_MODEL".into(), model.into());
    vars.insert("EMBEDDING_DIMENSIONS".into(), dimensions.to_string());
    crate::helpers::spawn_app_on(
        crate::helpers::TestDatabase {
            url: app.db.url.clone(),
        },
        vars,
    )
    .await
}

/// Both tenants' vector searches find the right document.
async fn both_answer(app: &TestApp, restaurant: &str, clinic: &str) {
    let body = results(
        app,
        restaurant,
        json!({"query": "chickpea curry falafel", "mode": "vector"}),
    )
    .await;
    assert_eq!(body["results"][0]["document_id"], "faq-diet", "{body}");
    let body = results(
        app,
        clinic,
        json!({"query": "insurance claims invoices", "mode": "vector"}),
    )
    .await;
    assert_eq!(body["results"][0]["document_id"], "billing", "{body}");
}

/// Simulates the day after each model change.
async fn a_day_passes(app: &TestApp) {
    app.db
        .connect()
        .await
        .execute(
            "update keel.embedding_models set prepared_at = prepared_at - interval '25 hours'",
            &[],
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn rolling_a_model_change_back_after_a_day_never_leaves_search_empty() {
    let (_, url) = FakeOpenAi::start().await;
    let small = spawn_app_with(|_, vars| openai_vars(vars, &url)).await;
    let (restaurant, clinic) = restaurant_and_clinic(&small).await;
    let vectors_of =
        |model: &str| format!("select count(*) from keel.embeddings where model = '{model}'");
    // A → B: B is embedded in the background and, a day later, A's vectors go.
    let large = deployment_with_model(&small, &url, "text-embedding-3-large", 32).await;
    both_answer(&large, &restaurant, &clinic).await;
    let report = large.run_embedding_cron().await;
    assert_eq!(report["embedded"], 6, "{report}");
    a_day_passes(&large).await;
    let pruned = large.run_cron("/api/cron/maintenance").await;
    assert_eq!(pruned["replaced_vectors_pruned"], 6, "{pruned}");
    both_answer(&large, &restaurant, &clinic).await;

    // B → A, more than a day after A was first prepared: B's vectors serve
    // until A is back everywhere, whatever runs first.
    let small = deployment_with_model(&small, &url, "text-embedding-3-small", 64).await;
    both_answer(&small, &restaurant, &clinic).await;
    let kept = small.run_cron("/api/cron/maintenance").await;
    assert_eq!(kept["replaced_vectors_pruned"], 0, "{kept}");
    assert_eq!(small.count(&vectors_of("text-embedding-3-large")).await, 6);
    both_answer(&small, &restaurant, &clinic).await;
    let report = small.run_embedding_cron().await;
    assert_eq!(report["embedded"], 6, "A is embedded again: {report}");
    both_answer(&small, &restaurant, &clinic).await;
    // The rollback gets its own day before B's vectors go.
    let kept = small.run_cron("/api/cron/maintenance").await;
    assert_eq!(kept["replaced_vectors_pruned"], 0, "{kept}");
    both_answer(&small, &restaurant, &clinic).await;
    a_day_passes(&small).await;
    let pruned = small.run_cron("/api/cron/maintenance").await;
    assert_eq!(pruned["replaced_vectors_pruned"], 6, "{pruned}");
    assert_eq!(small.count(&vectors_of("text-embedding-3-small")).await, 6);
    both_answer(&small, &restaurant, &clinic).await;
}

#[tokio::test]
async fn a_new_model_is_prepared_by_the_cron_in_bounded_steps_never_by_a_request() {
    let (_, url) = FakeOpenAi::start().await;
    let small = spawn_app_with(|_, vars| openai_vars(vars, &url)).await;
    let (restaurant, clinic) = restaurant_and_clinic(&small).await;
    let large = deployment_with_model(&small, &url, "text-embedding-3-large", 32).await;
    let large_jobs =
        "select count(*) from keel.embedding_jobs where model = 'text-embedding-3-large'";
    let indexes = "select count(*) from pg_indexes where indexname like 'embeddings_hnsw_%'";
    let indexes_before = small.count(indexes).await;

    // The first request to see the new model only queues its own chunk.
    let response = large
        .put_documents(
            &restaurant,
            json!([{"id": "faq-pets", "title": "FAQ: pets", "content": "Dogs are welcome on the terrace."}]),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["chunks_pending"], 1, "{body}");
    assert_eq!(large.count(large_jobs).await, 1, "no backfill in a request");
    assert_eq!(
        large.count(indexes).await,
        indexes_before,
        "no index built in a request"
    );

    // The backfill advances a bounded number of chunks per call.
    let db = large.db.connect().await;
    let mut steps = 0;
    loop {
        let step: Value = db
            .query_one(
                "select public.keel_prepare_embedding_model($1)",
                &[&json!({"model": "text-embedding-3-large", "dimensions": 32, "limit": 2})],
            )
            .await
            .unwrap()
            .get(0);
        steps += 1;
        assert!(step["queued"].as_i64().unwrap() <= 2, "{step}");
        if step["done"] == true {
            break;
        }
        assert!(steps < 10, "the backfill ends");
    }
    assert_eq!(steps, 4, "7 chunks, 2 per step, then one short step");
    assert_eq!(large.count(large_jobs).await, 7);
    assert_eq!(large.count(indexes).await, indexes_before + 1);

    let report = large.run_embedding_cron().await;
    assert_eq!(report["embedded"], 7, "{report}");
    assert_eq!(report["backfill_queued"], 0, "{report}");
    both_answer(&large, &restaurant, &clinic).await;
}

#[tokio::test]
async fn a_model_preparation_that_times_out_does_not_stop_the_embedding_cron() {
    let (_, url) = FakeOpenAi::start().await;
    let small = spawn_app_with(|_, vars| {
        openai_vars(vars, &url);
        vars.insert("DB_TIMEOUT_MS".into(), "500".into());
    })
    .await;
    let restaurant = small.create_tenant("joes-diner").await;
    small
        .put_documents(
            &restaurant,
            json!([{"id": "faq-pets", "title": "FAQ: pets", "content": "Dogs are welcome on the terrace."}]),
        )
        .await;
    // A long transaction writing to the vectors' table keeps CREATE INDEX
    // waiting past the database timeout, as a huge table would.
    let blocker = small.db.connect().await;
    blocker
        .batch_execute("begin; lock table keel.embeddings in row exclusive mode;")
        .await
        .unwrap();

    let report = small.run_embedding_cron().await;

    assert_eq!(report["embedded"], 1, "{report}");
    blocker.batch_execute("rollback").await.unwrap();
    let indexes = "select count(*) from pg_indexes where indexname like 'embeddings_hnsw_%'";
    assert_eq!(small.count(indexes).await, 0);
    let report = small.run_embedding_cron().await;
    assert_eq!(report["remaining"], 0, "{report}");
    assert_eq!(small.count(indexes).await, 1, "the next run builds it");
}

/// Rows of the keyword index that disagree with the tenants' chunks: each
/// chunk's postings, and each word's chunk count (folded statistics plus
/// pending deltas), recounted from the chunks themselves.
async fn keyword_index_disagreements(app: &TestApp) -> i64 {
    app.count(
        "with expected as (
           select c.tenant_id, t.lexeme, c.id as chunk_id, cardinality(t.positions) as tf,
                  length(c.search_vector) as length
           from keel.chunks c cross join unnest(c.search_vector) t),
         postings as (
           (select tenant_id, lexeme, chunk_id, tf::int, length from keel.postings
            except all select * from expected)
           union all
           (select * from expected
            except all select tenant_id, lexeme, chunk_id, tf::int, length from keel.postings)),
         counted as (
           select tenant_id, lexeme, sum(chunks) as chunks
           from (select tenant_id, lexeme, chunks from keel.keyword_stats
                 union all select tenant_id, lexeme, chunks from keel.keyword_stat_deltas) s
           group by 1, 2 having sum(chunks) <> 0),
         words as (
           (select * from counted
            except select tenant_id, lexeme, count(*) from expected group by 1, 2)
           union all
           (select tenant_id, lexeme, count(*) from expected group by 1, 2
            except select * from counted)),
         totals as (
           (select tenant_id, sum(chunks), sum(lexemes)
            from (select tenant_id, chunks, lexemes from keel.keyword_totals
                  union all select tenant_id, chunks, lexemes from keel.keyword_total_deltas) s
            group by 1 having sum(chunks) <> 0
            except select tenant_id, count(*), sum(length(search_vector)) from keel.chunks group by 1)
           union all
           (select tenant_id, count(*), sum(length(search_vector)) from keel.chunks group by 1
            except select tenant_id, sum(chunks), sum(lexemes)
            from (select tenant_id, chunks, lexemes from keel.keyword_totals
                  union all select tenant_id, chunks, lexemes from keel.keyword_total_deltas) s
            group by 1))
         select (select count(*) from postings) + (select count(*) from words)
              + (select count(*) from totals)",
    )
    .await
}

#[tokio::test]
async fn keyword_search_follows_replaced_and_deleted_documents() {
    let (_, url) = FakeOpenAi::start().await;
    let app = spawn_app_with(|_, vars| openai_vars(vars, &url)).await;
    let (restaurant, _) = restaurant_and_clinic(&app).await;
    let keyword = |query: &str| json!({"query": query, "mode": "keyword", "top_k": 20});

    let body = results(&app, &restaurant, keyword("chickpea curry")).await;
    assert_eq!(document_ids(&body), ["faq-diet"]);

    let replaced = json!([{"id": "faq-diet", "title": "FAQ: dietary needs",
        "content": "Gluten-free pasta is available on request."}]);
    assert_eq!(app.put_documents(&restaurant, replaced).await.status(), 200);
    let body = results(&app, &restaurant, keyword("chickpea curry")).await;
    assert_eq!(
        document_ids(&body),
        Vec::<String>::new(),
        "the old words are gone"
    );
    let body = results(&app, &restaurant, keyword("gluten pasta")).await;
    assert_eq!(document_ids(&body), ["faq-diet"]);
    assert_eq!(keyword_index_disagreements(&app).await, 0);

    let response = app
        .client
        .delete(app.url("/api/documents/faq-diet"))
        .bearer_auth(&restaurant)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = results(&app, &restaurant, keyword("gluten pasta")).await;
    assert_eq!(document_ids(&body), Vec::<String>::new());
    assert_eq!(keyword_index_disagreements(&app).await, 0);
    assert_eq!(
        app.count("select count(*) from keel.postings p where not exists (select 1 from keel.chunks c where c.id = p.chunk_id)")
            .await,
        0,
        "no posting outlives its chunk"
    );
}

/// A garage's forum threads, which say "gearbox" and "transmission fluid"
/// together, and its manuals, of which only one says "gearbox".
async fn garage(app: &TestApp) {
    let key = app.create_tenant("garage").await;
    let documents = json!([
        {"id": "forum-1", "title": "Forum", "metadata": {"kind": "forum"},
         "content": "My gearbox whines in third gear; the transmission fluid was low."},
        {"id": "forum-2", "title": "Forum", "metadata": {"kind": "forum"},
         "content": "A grinding gearbox is often old transmission fluid."},
        {"id": "forum-3", "title": "Forum", "metadata": {"kind": "forum"},
         "content": "Gearbox noise went away after fresh transmission fluid."},
        {"id": "forum-4", "title": "Forum", "metadata": {"kind": "forum"},
         "content": "Check the transmission fluid before blaming the gearbox."},
        {"id": "manual-gearbox", "title": "Removal", "metadata": {"kind": "manual"},
         "content": "Gearbox removal: undo the clutch housing bolts first."},
        {"id": "manual-fluid", "title": "Service", "metadata": {"kind": "manual"},
         "content": "Change the transmission fluid every 60,000 km."},
        {"id": "manual-clutch", "title": "Repairs", "metadata": {"kind": "manual"},
         "content": "A slipping clutch needs a new friction plate; inspect the housing."},
        {"id": "manual-hours", "title": "Hours", "metadata": {"kind": "manual"},
         "content": "The workshop is open from 8am to 6pm on weekdays."}
    ]);
    assert_eq!(app.put_documents(&key, documents).await.status(), 200);
}

/// The garage's keyword ranking of "gearbox" (document ids, best first),
/// with keyword feedback from its best `feedback_chunks` chunks as hybrid
/// search uses it (10 words at half weight, 2,000 postings to find them), or none.
async fn gearbox_ranking(app: &TestApp, filter: &str, feedback_chunks: i32) -> Vec<String> {
    let ranking: Value = app
        .db
        .connect()
        .await
        .query_one(
            "select coalesce(jsonb_agg(d.external_id order by r.i), '[]')
             from jsonb_array_elements(keel.rank_keyword_feedback(
                    (select id from keel.tenants where slug = 'garage'), '{\"gearbox\": 1}', null,
                    $1::text::jsonb, 20, 1.2, 0.6, 1, 5000, $2, 10, 0.5, 2000)) with ordinality r (x, i)
             join keel.chunks c on c.id = (r.x->>'chunk_id')::bigint
             join keel.documents d on d.id = c.document_id",
            &[&filter, &feedback_chunks],
        )
        .await
        .unwrap()
        .get(0);
    serde_json::from_value(ranking).unwrap()
}

#[tokio::test]
async fn keyword_feedback_finds_the_chunks_that_say_it_in_the_best_matches_words() {
    let (_, url) = FakeOpenAi::start().await;
    let app = spawn_app_with(|_, vars| openai_vars(vars, &url)).await;
    garage(&app).await;
    let says_gearbox = ["forum-1", "forum-2", "forum-3", "forum-4", "manual-gearbox"];

    let plain = gearbox_ranking(&app, "{}", 0).await;
    assert_eq!(plain.len(), 5, "{plain:?}");
    assert!(
        says_gearbox
            .iter()
            .all(|id| plain.contains(&id.to_string())),
        "{plain:?}"
    );

    let expanded = gearbox_ranking(&app, "{}", 4).await;
    assert_eq!(
        expanded[..5]
            .iter()
            .filter(|id| says_gearbox.contains(&id.as_str()))
            .count(),
        5,
        "the query's own matches stay first: {expanded:?}"
    );
    assert_eq!(
        expanded[5..],
        ["manual-fluid"],
        "found through the words the forum threads share with it, \
         not through a word only one best chunk holds (clutch)"
    );

    let manuals = r#"{"kind": "manual"}"#;
    assert_eq!(gearbox_ranking(&app, manuals, 0).await, ["manual-gearbox"]);
    assert_eq!(
        gearbox_ranking(&app, manuals, 4).await,
        ["manual-gearbox", "manual-clutch"],
        "feedback comes only from chunks the filter admits: the manual's clutch, \
         not the filtered-out forum's transmission fluid"
    );
}

/// The garage's hybrid search for "gearbox" as the handler calls
/// `keel_search` once it holds the query vector, plus `knobs`: each
/// document's fused score.
async fn gearbox_hybrid_scores(app: &TestApp, knobs: Value) -> HashMap<String, f64> {
    let mut args = json!({
        "mode": "hybrid", "query": "gearbox", "top_k": 8, "filter": {},
        "model": "text-embedding-3-small", "dimensions": 64, "model_chosen": true,
        "query_hash": "gearbox", "cache_hit": true, "cache_ttl_seconds": 60,
        "embedding": bag_of_words("gearbox", 64),
    });
    args.as_object_mut()
        .unwrap()
        .extend(knobs.as_object().unwrap().clone());
    let body: Value = app
        .db
        .connect()
        .await
        .query_one(
            "select public.keel_search($1::text::jsonb
                      || jsonb_build_object('tenant_id', (select id from keel.tenants where slug = 'garage')))",
            &[&args.to_string()],
        )
        .await
        .unwrap()
        .get(0);
    body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["document_id"].as_str().unwrap().to_owned(),
                r["score"].as_f64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn hybrid_search_uses_keyword_feedback_by_default() {
    let (_, url) = FakeOpenAi::start().await;
    let app = spawn_app_with(|_, vars| openai_vars(vars, &url)).await;
    garage(&app).await;
    assert_eq!(app.run_embedding_cron().await["remaining"], 0);

    let with_feedback = gearbox_hybrid_scores(&app, json!({})).await;
    let without = gearbox_hybrid_scores(&app, json!({"feedback_term_weight": 0})).await;
    assert!(
        with_feedback["manual-fluid"] > without["manual-fluid"],
        "the keyword ranking found it through the forum's words: {with_feedback:?} / {without:?}"
    );
}

#[tokio::test]
async fn concurrent_writers_of_one_tenant_leave_exact_keyword_statistics() {
    let (_, url) = FakeOpenAi::start().await;
    let app = spawn_app_with(|_, vars| openai_vars(vars, &url)).await;
    let key = app.create_tenant("busy-shop").await;
    let other = app.create_tenant("quiet-shop").await;
    let batch = |writer: usize, round: usize| {
        json!((0..20)
            .map(|i| json!({"id": format!("doc-{writer}-{i}"), "title": format!("Note {i}"),
                            "content": format!("Writer {writer} wrote round {round} about item {i}; shared words: delivery, returns, warranty.")}))
            .collect::<Vec<_>>())
    };
    // Four writers of one tenant, twice each (the second round replaces
    // every document), beside another tenant's writer.
    for round in 0..2 {
        let writes = (0..4).map(|writer| app.put_documents(&key, batch(writer, round)));
        let quiet = app.put_documents(&other, batch(9, round));
        let (statuses, quiet) = tokio::join!(futures::future::join_all(writes), quiet);
        assert!(statuses.iter().all(|r| r.status() == 200));
        assert_eq!(quiet.status(), 200);
    }
    assert_eq!(keyword_index_disagreements(&app).await, 0);

    let body = results(
        &app,
        &key,
        json!({"query": "writer 3 round 1 item 7", "mode": "keyword", "top_k": 3}),
    )
    .await;
    assert_eq!(document_ids(&body)[0], "doc-3-7", "{body}");
    let body = results(
        &app,
        &other,
        json!({"query": "warranty", "mode": "keyword", "top_k": 20}),
    )
    .await;
    assert!(
        document_ids(&body)
            .iter()
            .all(|id| id.starts_with("doc-9-")),
        "{body}"
    );

    // Tenants are deleted by an operator, in the database.
    app.db
        .connect()
        .await
        .execute("delete from keel.tenants where slug = 'busy-shop'", &[])
        .await
        .unwrap();
    assert_eq!(
        app.count("select count(*) from keel.postings").await,
        app.count("select coalesce(sum(length(search_vector)), 0) from keel.chunks")
            .await,
        "a deleted tenant leaves only the other tenant's postings"
    );
    assert_eq!(keyword_index_disagreements(&app).await, 0);
}
