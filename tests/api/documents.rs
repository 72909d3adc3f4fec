use serde_json::{Value, json};

use crate::helpers::{TestApp, error_body, openai_vars, spawn_app, spawn_app_with};
use crate::support::FakeOpenAi;

fn menu() -> Value {
    json!({
        "id": "menu-2024",
        "title": "Dinner menu",
        "content": "Starters: hummus with warm pita.\n\nMains: grilled salmon, vegan lentil curry.",
        "metadata": {"kind": "menu"},
        "source_url": "https://joes.example.com/menu"
    })
}

async fn app_with_openai() -> (TestApp, FakeOpenAi) {
    let (openai, url) = FakeOpenAi::start().await;
    let app = spawn_app_with(|_, vars| openai_vars(vars, &url)).await;
    (app, openai)
}

#[tokio::test]
async fn ingesting_new_documents_creates_them_with_pending_chunks() {
    let app = spawn_app().await;
    let key = app.create_tenant("joes").await;

    let response = app
        .put_documents(
            &key,
            json!([menu(), {"id": "faq", "content": "We open at noon."}]),
        )
        .await;

    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({"created": 2, "updated": 0, "unchanged": 0, "chunks_pending": 2})
    );
    assert_eq!(app.count("select count(*) from keel.chunks").await, 2);
    assert_eq!(
        app.count("select count(*) from keel.embedding_jobs").await,
        2
    );

    let listed: Value = app.get_json("/api/documents", &key).await;
    let documents = listed["documents"].as_array().unwrap();
    assert_eq!(documents.len(), 2);
    assert_eq!(documents[1]["id"], "menu-2024");
    assert_eq!(documents[1]["title"], "Dinner menu");
    assert_eq!(documents[1]["metadata"], json!({"kind": "menu"}));
    assert_eq!(documents[1]["source_url"], "https://joes.example.com/menu");
    assert_eq!(documents[1]["embedding_state"], "pending");
    assert_eq!(documents[1]["chunks"], 1);
    assert!(documents[1]["updated_at"].is_string());
    assert_eq!(listed["next_cursor"], Value::Null);
}

#[tokio::test]
async fn reingesting_unchanged_documents_embeds_nothing_again() {
    let (app, openai) = app_with_openai().await;
    let key = app.create_tenant("joes").await;
    app.put_documents(&key, json!([menu()])).await;
    app.run_embedding_cron().await;
    let calls_after_first_ingest = openai.requests().len();
    assert_eq!(calls_after_first_ingest, 1);

    let body: Value = app
        .put_documents(&key, json!([menu()]))
        .await
        .json()
        .await
        .unwrap();
    let cron = app.run_embedding_cron().await;

    assert_eq!(
        body,
        json!({"created": 0, "updated": 0, "unchanged": 1, "chunks_pending": 0})
    );
    assert_eq!(cron["embedded"], 0);
    assert_eq!(
        openai.requests().len(),
        calls_after_first_ingest,
        "zero embedding calls"
    );
}

#[tokio::test]
async fn a_metadata_only_change_updates_without_reembedding() {
    let (app, openai) = app_with_openai().await;
    let key = app.create_tenant("joes").await;
    app.put_documents(&key, json!([menu()])).await;
    app.run_embedding_cron().await;
    let chunk_ids = app.count("select sum(id)::bigint from keel.chunks").await;

    let mut retagged = menu();
    retagged["metadata"] = json!({"kind": "menu", "season": "winter"});
    let body: Value = app
        .put_documents(&key, json!([retagged]))
        .await
        .json()
        .await
        .unwrap();

    assert_eq!(
        body,
        json!({"created": 0, "updated": 1, "unchanged": 0, "chunks_pending": 0})
    );
    assert_eq!(
        app.count("select sum(id)::bigint from keel.chunks").await,
        chunk_ids,
        "chunks untouched"
    );
    assert_eq!(app.count("select count(*) from keel.embeddings").await, 1);
    assert_eq!(
        app.count("select count(*) from keel.documents where metadata->>'season' = 'winter'")
            .await,
        1
    );
    app.run_embedding_cron().await;
    assert_eq!(openai.requests().len(), 1);
}

#[tokio::test]
async fn changed_content_replaces_chunks_and_keeps_vectors_of_unchanged_text() {
    let (app, openai) = app_with_openai().await;
    let key = app.create_tenant("joes").await;
    let paragraphs: Vec<String> = (0..6)
        .map(|i| {
            format!(
                "Section {i}. {}",
                "The kitchen prepares every dish fresh each morning. ".repeat(40)
            )
        })
        .collect();
    let long = json!({"id": "handbook", "title": "Handbook", "content": paragraphs.join("\n\n")});
    app.put_documents(&key, json!([long])).await;
    app.run_embedding_cron().await;
    let before = app.count("select count(*) from keel.chunks").await;
    assert!(before >= 4, "{before} chunks");
    let inputs_before = openai.inputs_received();

    let mut edited = paragraphs.clone();
    edited[5] = "Section 5. Closing time is now ten in the evening.".to_owned();
    let body: Value = app
        .put_documents(
            &key,
            json!([{"id": "handbook", "title": "Handbook", "content": edited.join("\n\n")}]),
        )
        .await
        .json()
        .await
        .unwrap();
    let cron = app.run_embedding_cron().await;

    assert_eq!(body["updated"], 1);
    let pending = body["chunks_pending"].as_i64().unwrap();
    assert!(
        pending >= 1 && pending < before,
        "only changed chunks re-embed: {pending} of {before}"
    );
    assert_eq!(cron["embedded"].as_i64().unwrap(), pending);
    assert_eq!(openai.inputs_received() - inputs_before, pending as usize);
    assert_eq!(
        app.count("select count(*) from keel.chunks where content like '%ten in the evening%'")
            .await,
        1
    );
    assert_eq!(
        app.count("select count(*) from keel.chunks c where not exists (select 1 from keel.embeddings e where e.chunk_id = c.id)").await,
        0,
        "every chunk has its vector"
    );
}

#[tokio::test]
async fn documents_are_listed_in_pages_and_deleted_with_their_chunks() {
    let app = spawn_app().await;
    let key = app.create_tenant("shop").await;
    let documents: Vec<Value> = (0..5)
        .map(|i| json!({"id": format!("doc-{i}"), "content": format!("Item {i}")}))
        .collect();
    app.put_documents(&key, Value::Array(documents)).await;

    let mut ids = Vec::new();
    let mut url = app.url("/api/documents?limit=2");
    loop {
        let page: Value = app
            .client
            .get(&url)
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.extend(
            page["documents"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(cursor) => url = app.url(&format!("/api/documents?limit=2&cursor={cursor}")),
            None => break,
        }
    }
    assert_eq!(ids, ["doc-0", "doc-1", "doc-2", "doc-3", "doc-4"]);

    let response = app
        .client
        .delete(app.url("/api/documents/doc-3"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({"deleted": "doc-3", "chunks_deleted": 1}));
    assert_eq!(app.count("select count(*) from keel.chunks").await, 4);
    assert_eq!(
        app.count("select count(*) from keel.embedding_jobs").await,
        4
    );

    let again = app
        .client
        .delete(app.url("/api/documents/doc-3"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 404);
    assert_eq!(
        error_body(again).await["message"],
        "no document with id \"doc-3\""
    );
}

#[tokio::test]
async fn bad_batches_are_refused_whole_and_store_nothing() {
    let app = spawn_app_with(|_, vars| {
        vars.insert("MAX_DOCUMENT_BYTES".into(), "100".into());
    })
    .await;
    let key = app.create_tenant("shop").await;
    let cases = [
        (
            json!({"documents": []}),
            "`documents` must hold 1 to 100 documents (got 0)",
            "empty batch",
        ),
        (
            json!({"documents": [{"id": "ok", "content": "fine"}, {"id": "big", "content": "x".repeat(101)}]}),
            "`documents[1].content` must be at most 100 bytes (got 101)",
            "one bad document",
        ),
        (
            json!({"documents": [{"id": "a", "content": "x"}, {"id": "a", "content": "y"}]}),
            "`documents[1].id` repeats documents[0].id",
            "duplicate ids",
        ),
        (
            json!({"documents": [{"id": "a"}]}),
            "`documents[0]`: missing field `content`",
            "missing content",
        ),
        (
            json!({"documents": [{"id": "a", "content": "x", "metadata": "menu"}]}),
            "`documents[0].metadata` must be a JSON object",
            "metadata string",
        ),
        (
            json!({"docs": []}),
            "unknown field `docs`",
            "misspelt field",
        ),
    ];
    for (body, message, reason) in cases {
        let response = app
            .client
            .put(app.url("/api/documents"))
            .bearer_auth(&key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{reason}");
        let error = error_body(response).await;
        assert!(
            error["message"].as_str().unwrap().contains(message),
            "{reason}: {error}"
        );
    }
    let too_many: Vec<Value> = (0..101)
        .map(|i| json!({"id": i.to_string(), "content": "x"}))
        .collect();
    let response = app.put_documents(&key, Value::Array(too_many)).await;
    assert_eq!(response.status(), 400);

    let not_json = app
        .client
        .put(app.url("/api/documents"))
        .bearer_auth(&key)
        .body("id=1")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), 415);
    assert_eq!(app.count("select count(*) from keel.documents").await, 0);
}

#[tokio::test]
async fn a_tenant_can_neither_see_nor_change_nor_delete_another_tenants_documents() {
    let app = spawn_app().await;
    let joes = app.create_tenant("joes").await;
    let clinic = app.create_tenant("clinic").await;
    app.put_documents(&joes, json!([menu()])).await;

    // Same document id from another tenant is a different document.
    let body: Value = app
        .put_documents(
            &clinic,
            json!([{"id": "menu-2024", "content": "Clinic cafeteria menu."}]),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["created"], 1, "ids are per tenant");

    let listed: Value = app.get_json("/api/documents", &clinic).await;
    assert_eq!(listed["documents"].as_array().unwrap().len(), 1);
    assert_eq!(listed["documents"][0]["title"], "");

    let response = app
        .client
        .delete(app.url("/api/documents/menu-2024"))
        .bearer_auth(&clinic)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        app.count("select count(*) from keel.documents d join keel.tenants t on t.id = d.tenant_id where t.slug = 'joes'").await,
        1,
        "joes' menu survives the clinic deleting its own"
    );
}

#[tokio::test]
async fn a_plus_in_a_document_id_in_the_path_is_a_plus_not_a_space() {
    let app = spawn_app().await;
    let key = app.create_tenant("shop").await;
    let put = app
        .put_documents(
            &key,
            json!([
                {"id": "size+color", "title": "Sizes", "content": "S, M, L in red and blue."},
                {"id": "size color", "title": "Other", "content": "A different document."}
            ]),
        )
        .await;
    assert_eq!(put.status(), 200);

    let cases = [
        ("size+color", "a literal + in a path segment"),
        ("size%2Bcolor", "an encoded +"),
    ];
    for (segment, reason) in cases {
        app.put_documents(
            &key,
            json!([{"id": "size+color", "title": "Sizes", "content": "S, M, L in red and blue."}]),
        )
        .await;
        let response = app
            .client
            .delete(app.url(&format!("/api/documents/{segment}")))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{reason}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["deleted"], "size+color", "{reason}");
    }
    assert_eq!(
        app.count("select count(*) from keel.documents where external_id = 'size color'")
            .await,
        1,
        "the space-named document is untouched"
    );
}
