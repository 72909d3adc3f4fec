//! Conversations: what a chat remembers. `begin_chat` and `record_turn` (the
//! chat routes' first and last database calls) run through their Rust
//! functions against the real database; the conversation and assistant
//! routes over HTTP.

use std::sync::Arc;

use keel::answers::conversations::{
    ChatCaller, ChatSession, RecordedTurn, begin_chat, record_turn,
};
use keel::answers::{AnswersError, AssistantSettings, Citation, Usage};
use keel::ops::ratelimit::{GateError, RateGate, Scope};
use keel::tenants::keys::hash_key;
use serde_json::{Value, json};

use crate::helpers::{TestApp, error_body, spawn_app, spawn_app_with};

/// The gate a chat request from `ip` gets on a `chat` route.
pub fn chat_gate(app: &TestApp, ip: &str) -> Arc<RateGate> {
    Arc::new(RateGate::new(
        Some(Scope::Chat),
        &app.app.config.rate_limits,
        Some(ip.parse().unwrap()),
    ))
}

pub fn secret(key: &str) -> ChatCaller {
    ChatCaller::Secret {
        key_hash: hash_key(key),
    }
}

/// `begin_chat` as a chat request from 127.0.0.1 makes it.
pub async fn begin(
    app: &TestApp,
    caller: &ChatCaller,
    id: Option<&str>,
) -> Result<ChatSession, AnswersError> {
    begin_chat(&app.app.db, chat_gate(app, "127.0.0.1"), caller, id, true).await
}

/// The HTTP status the chat routes answer an error with.
pub fn status(error: AnswersError) -> u16 {
    keel::ApiError::from(error).status().as_u16()
}

fn menu_citation() -> Citation {
    Citation {
        document_id: "menu".into(),
        title: Some("Menu".into()),
        chunk_index: 2,
        source_url: Some("https://joes.example.com/menu".into()),
        text: "Vegan options: the garden pizza and the lentil soup.".into(),
    }
}

pub fn turn(user: &str, answer: &str) -> RecordedTurn {
    RecordedTurn {
        user: user.into(),
        answer: answer.into(),
        citations: vec![menu_citation()],
        usage: Usage {
            prompt_tokens: 812,
            completion_tokens: 41,
            total_tokens: 853,
        },
        model: "gpt-4o-mini".into(),
        incomplete: false,
    }
}

async fn delete(app: &TestApp, path: &str, key: &str) -> reqwest::Response {
    app.client
        .delete(app.url(path))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
}

async fn get(app: &TestApp, path: &str, key: &str) -> reqwest::Response {
    app.client
        .get(app.url(path))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_chat_turn_is_remembered_with_its_citations_and_usage() {
    let app = spawn_app().await;
    let key = app.create_tenant("joes-diner").await;

    let session = begin(&app, &secret(&key), Some("V1StGXR8_Z5jdHi6B-myT"))
        .await
        .unwrap();
    assert_eq!(session.conversation_id, "V1StGXR8_Z5jdHi6B-myT");
    assert!(session.history.is_empty(), "a new conversation");
    assert_eq!(session.assistant, AssistantSettings::default());
    assert_eq!(session.visitor_token, None, "tenant keys have no visitor");
    assert_eq!(session.filter, None);
    assert_eq!(session.allowed_origin, None);
    record_turn(
        &app.app.db,
        &session,
        &turn(
            "Do you have   vegan options?",
            "Yes: the garden pizza and the lentil soup [1].",
        ),
    )
    .await
    .unwrap();
    let mut broken = turn("And are they gluten-free?", "The garden pizza");
    broken.incomplete = true;
    broken.citations.clear();
    record_turn(&app.app.db, &session, &broken).await.unwrap();

    let next = begin(&app, &secret(&key), Some("V1StGXR8_Z5jdHi6B-myT"))
        .await
        .unwrap();
    let history: Vec<(&str, &str, bool)> = next
        .history
        .iter()
        .map(|m| (m.role.as_str(), m.content.as_str(), m.incomplete))
        .collect();
    assert_eq!(
        history,
        vec![
            ("user", "Do you have   vegan options?", false),
            (
                "assistant",
                "Yes: the garden pizza and the lentil soup [1].",
                false
            ),
            ("user", "And are they gluten-free?", false),
            ("assistant", "The garden pizza", true),
        ],
        "oldest first, the broken answer kept and marked"
    );
    assert_eq!(next.history[1].citations, vec![menu_citation()]);
    assert_eq!(next.history[1].usage.unwrap().total_tokens, 853);
    assert_eq!(next.history[1].model.as_deref(), Some("gpt-4o-mini"));
    assert_eq!(
        next.history[0].usage, None,
        "the user's message cost nothing"
    );

    let read = get(&app, "/api/conversations/V1StGXR8_Z5jdHi6B-myT", &key).await;
    assert_eq!(read.status(), 200);
    let read: Value = read.json().await.unwrap();
    assert_eq!(read["id"], "V1StGXR8_Z5jdHi6B-myT");
    assert_eq!(read["title"], "Do you have vegan options?");
    assert_eq!(read["message_count"], 4);
    assert_eq!(read["messages"].as_array().unwrap().len(), 4);
    assert_eq!(
        read["messages"][1]["citations"][0]["source_url"],
        "https://joes.example.com/menu"
    );
    assert_eq!(read["messages"][1]["usage"]["prompt_tokens"], 812);
    assert_eq!(read["messages"][3]["incomplete"], true);

    let listed = app.get_json("/api/conversations", &key).await;
    assert_eq!(listed["conversations"][0]["id"], "V1StGXR8_Z5jdHi6B-myT");
    assert_eq!(listed["conversations"][0]["message_count"], 4);
    assert_eq!(listed["next_cursor"], Value::Null);

    let deleted = delete(&app, "/api/conversations/V1StGXR8_Z5jdHi6B-myT", &key).await;
    assert_eq!(deleted.status(), 200);
    assert_eq!(
        get(&app, "/api/conversations/V1StGXR8_Z5jdHi6B-myT", &key)
            .await
            .status(),
        404
    );
    assert_eq!(
        app.count("select count(*) from keel.conversation_messages")
            .await,
        0,
        "the messages went with it"
    );
    assert_eq!(
        delete(&app, "/api/conversations/V1StGXR8_Z5jdHi6B-myT", &key)
            .await
            .status(),
        404,
        "deleting twice"
    );
}

#[tokio::test]
async fn a_chat_without_an_id_gets_a_new_conversation_each_time() {
    let app = spawn_app().await;
    let key = app.create_tenant("joes-diner").await;

    let first = begin(&app, &secret(&key), None).await.unwrap();
    let second = begin(&app, &secret(&key), None).await.unwrap();

    assert_ne!(first.conversation_id, second.conversation_id);
    assert_eq!(
        app.count("select count(*) from keel.conversations").await,
        2
    );
}

#[tokio::test]
async fn tenants_never_see_each_others_conversations() {
    let app = spawn_app().await;
    let joes = app.create_tenant("joes-diner").await;
    let clinic = app.create_tenant("clinic").await;
    let session = begin(&app, &secret(&joes), Some("chat-1")).await.unwrap();
    record_turn(&app.app.db, &session, &turn("Vegan?", "Yes."))
        .await
        .unwrap();

    assert_eq!(
        get(&app, "/api/conversations/chat-1", &clinic)
            .await
            .status(),
        404
    );
    assert_eq!(
        delete(&app, "/api/conversations/chat-1", &clinic)
            .await
            .status(),
        404
    );
    let listed = app.get_json("/api/conversations", &clinic).await;
    assert_eq!(listed["conversations"], json!([]));
    // The same client id is another conversation for another tenant.
    let theirs = begin(&app, &secret(&clinic), Some("chat-1")).await.unwrap();
    assert!(theirs.history.is_empty());
    assert_ne!(theirs.tenant_id, session.tenant_id);
    assert_eq!(
        app.count("select count(*) from keel.conversation_messages")
            .await,
        2,
        "joe's turn untouched"
    );
}

#[tokio::test]
async fn conversations_are_listed_newest_first_a_page_at_a_time() {
    let app = spawn_app().await;
    let key = app.create_tenant("joes-diner").await;
    for id in ["first", "second", "third"] {
        begin(&app, &secret(&key), Some(id)).await.unwrap();
    }

    let page = app.get_json("/api/conversations?limit=2", &key).await;
    let ids: Vec<&str> = page["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["third", "second"]);
    let cursor = page["next_cursor"].as_str().unwrap();
    let rest = app
        .get_json(&format!("/api/conversations?limit=2&cursor={cursor}"), &key)
        .await;
    assert_eq!(rest["conversations"][0]["id"], "first");
    assert_eq!(rest["next_cursor"], Value::Null);

    for (query, field, reason) in [
        ("limit=0", "limit", "below 1"),
        ("limit=101", "limit", "above 100"),
        ("cursor=not-ours", "cursor", "not a cursor we gave"),
    ] {
        let response = get(&app, &format!("/api/conversations?{query}"), &key).await;
        assert_eq!(response.status(), 400, "{reason}");
        let error = error_body(response).await;
        assert!(
            error["message"].as_str().unwrap().contains(field),
            "{reason}: {error}"
        );
    }
}

#[tokio::test]
async fn bad_chat_inputs_are_refused_naming_the_field_before_any_work() {
    let app = spawn_app().await;
    let key = app.create_tenant("joes-diner").await;
    for (id, reason) in [
        ("", "empty"),
        ("has space", "a space"),
        ("../../etc", "path characters"),
        (&"x".repeat(129) as &str, "longer than 128"),
    ] {
        let refused = begin(&app, &secret(&key), Some(id)).await.unwrap_err();
        assert!(
            matches!(&refused, AnswersError::Invalid { field, .. } if field == "id"),
            "{reason}: {refused}"
        );
        assert_eq!(status(refused), 400, "{reason}");
    }
    let unknown = begin(&app, &secret(&keel::tenants::keys::issue_key().key), None)
        .await
        .unwrap_err();
    assert_eq!(status(unknown), 401, "a key of no tenant");

    let session = begin(&app, &secret(&key), Some("chat-1")).await.unwrap();
    let long = "x".repeat(64_001);
    let mut too_many = turn("Vegan?", "Yes.");
    too_many.citations = vec![menu_citation(); 21];
    for (turn, field, reason) in [
        (
            turn(&long, "Yes."),
            "user",
            "a user message over 64000 characters",
        ),
        (
            turn("Vegan?", &long),
            "answer",
            "an answer over 64000 characters",
        ),
        (too_many, "citations", "more than 20 citations"),
    ] {
        let refused = record_turn(&app.app.db, &session, &turn).await.unwrap_err();
        assert!(
            matches!(&refused, AnswersError::Invalid { field: f, .. } if f == field),
            "{reason}: {refused}"
        );
    }
    assert_eq!(
        app.count("select count(*) from keel.conversation_messages")
            .await,
        0
    );
    for (path, reason) in [
        ("/api/conversations/has%20space", "a space"),
        ("/api/conversations/%C3%A9", "non-ASCII"),
    ] {
        let response = get(&app, path, &key).await;
        assert_eq!(response.status(), 400, "{reason}");
        assert!(
            error_body(response).await["message"]
                .as_str()
                .unwrap()
                .contains("`id`")
        );
    }
}

#[tokio::test]
async fn a_turn_recorded_after_its_conversation_was_deleted_is_not_found() {
    let app = spawn_app().await;
    let key = app.create_tenant("joes-diner").await;
    let session = begin(&app, &secret(&key), Some("chat-1")).await.unwrap();
    assert_eq!(
        delete(&app, "/api/conversations/chat-1", &key)
            .await
            .status(),
        200
    );

    let refused = record_turn(&app.app.db, &session, &turn("Vegan?", "Yes."))
        .await
        .unwrap_err();

    assert!(refused.is_not_found(), "{refused}");
    assert_eq!(
        app.count("select count(*) from keel.conversations").await,
        0,
        "not resurrected"
    );
}

#[tokio::test]
async fn idle_conversations_are_pruned_by_maintenance_after_the_retention() {
    let app = spawn_app_with(|_, vars| {
        vars.insert("CONVERSATION_RETENTION_DAYS".into(), "30".into());
    })
    .await;
    let key = app.create_tenant("joes-diner").await;
    for id in ["stale", "recent"] {
        let session = begin(&app, &secret(&key), Some(id)).await.unwrap();
        record_turn(&app.app.db, &session, &turn("Vegan?", "Yes."))
            .await
            .unwrap();
    }
    app.db
        .connect()
        .await
        .execute(
            "update keel.conversations set updated_at = now() - interval '31 days' where client_id = 'stale'",
            &[],
        )
        .await
        .unwrap();

    let report = app.run_cron("/api/cron/maintenance").await;

    assert_eq!(report["conversations_pruned"], 1, "{report}");
    assert_eq!(report["caught_up"], true);
    let listed = app.get_json("/api/conversations", &key).await;
    assert_eq!(listed["conversations"].as_array().unwrap().len(), 1);
    assert_eq!(listed["conversations"][0]["id"], "recent");
    assert_eq!(
        app.count("select count(*) from keel.conversation_messages")
            .await,
        2,
        "only the stale conversation's messages went"
    );
    let again = app.run_cron("/api/cron/maintenance").await;
    assert_eq!(again["conversations_pruned"], 0);
}

#[tokio::test]
async fn the_chat_scope_has_its_own_quota() {
    let app = spawn_app_with(|_, vars| {
        vars.insert("RATE_LIMIT_CHAT_PER_MINUTE".into(), "2".into());
    })
    .await;
    let key = app.create_tenant("joes-diner").await;
    begin(&app, &secret(&key), None).await.unwrap();
    begin(&app, &secret(&key), None).await.unwrap();

    let refused = begin(&app, &secret(&key), None).await.unwrap_err();

    match &refused {
        AnswersError::Call(GateError::Refused(scope, quota)) => {
            assert_eq!(*scope, Scope::Chat);
            assert_eq!(quota.limit, 2);
        }
        other => panic!("expected a refusal, got {other}"),
    }
    assert_eq!(status(refused), 429);
    assert_eq!(
        app.count("select count(*) from keel.conversations").await,
        2,
        "the refused request created nothing"
    );
    assert_eq!(
        app.get_json("/api/conversations", &key).await["conversations"]
            .as_array()
            .unwrap()
            .len(),
        2,
        "other tenant-key routes keep their own quota"
    );
}

#[tokio::test]
async fn assistant_settings_are_kept_and_bad_ones_refused_naming_the_field() {
    let app = spawn_app().await;
    let key = app.create_tenant("joes-diner").await;

    let defaults = app.get_json("/api/assistant", &key).await;
    assert_eq!(
        defaults,
        json!({"instructions": "", "model": null, "temperature": 0.3, "max_answer_tokens": 600})
    );
    let settings = json!({
        "instructions": "You are Joe's Diner's host. Be brief. Never discuss other restaurants.",
        "model": "gpt-4o",
        "temperature": 0.5,
        "max_answer_tokens": 300,
    });
    let put = app
        .client
        .put(app.url("/api/assistant"))
        .bearer_auth(&key)
        .json(&settings)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    assert_eq!(put.json::<Value>().await.unwrap(), settings);
    assert_eq!(app.get_json("/api/assistant", &key).await, settings);
    let session = begin(&app, &secret(&key), None).await.unwrap();
    assert_eq!(session.assistant.model.as_deref(), Some("gpt-4o"));
    assert_eq!(session.assistant.max_answer_tokens, 300);
    assert_eq!(
        app.count("select count(*) from keel.audit_log where action = 'assistant.update'")
            .await,
        1
    );

    let cases = [
        (
            json!({"instructions": "x".repeat(8001)}),
            "instructions",
            "over 8000 characters",
        ),
        (json!({"model": ""}), "model", "an empty model"),
        (json!({"temperature": 2.1}), "temperature", "above 2"),
        (json!({"temperature": -0.1}), "temperature", "below 0"),
        (
            json!({"max_answer_tokens": 0}),
            "max_answer_tokens",
            "no tokens",
        ),
        (
            json!({"max_answer_tokens": 4097}),
            "max_answer_tokens",
            "above 4096",
        ),
        (
            json!({"max_answer_tokens": "600"}),
            "max_answer_tokens",
            "a string",
        ),
        (json!({"persona": "pirate"}), "persona", "an unknown field"),
    ];
    for (body, field, reason) in cases {
        let response = app
            .client
            .put(app.url("/api/assistant"))
            .bearer_auth(&key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{reason}");
        let error = error_body(response).await;
        assert!(
            error["message"].as_str().unwrap().contains(field),
            "{reason}: {error}"
        );
    }
    assert_eq!(
        app.get_json("/api/assistant", &key).await,
        settings,
        "unchanged"
    );
}
