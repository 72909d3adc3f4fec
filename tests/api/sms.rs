//! Texts and calls answered from a tenant's knowledge, on the real stack: a
//! restaurant's Twilio number answers "when are you open?" in TwiML quoting
//! its FAQ (signed by the twilio library exactly as Twilio signs); a slow
//! model leaves the reply to the `sms.reply` task, which sends it once
//! through Twilio's Messages API (a double) even when Twilio first answers
//! 429; a Vonage text is answered through Vonage's Messages API; a Vapi
//! end-of-call report becomes a conversation with its turns.

use std::process::Command;
use std::time::{Duration, Instant};

use hyper::StatusCode;
use serde_json::{Value, json};

use crate::chat_double::{CHAT_KEY, FakeChat, Reply};
use crate::helpers::{TestApp, openai_vars, repo_root, spawn_app_with};
use crate::sms_doubles::{FakeMessaging, Provider};
use crate::support::FakeOpenAi;

const PUBLIC_BASE_URL: &str = "https://keel.example.com";
const AUTH_TOKEN: &str = "0123456789abcdef0123456789abcdef";
const ACCOUNT_SID: &str = "AC0123456789abcdef0123456789abcdef";
const VONAGE_SIGNATURE_SECRET: &str = "qwertyuiopasdfghjklzxcvbnm123456";
const VONAGE_API_KEY: &str = "a1b2c3d4";
const VONAGE_API_SECRET: &str = "Vonage-API-Secret-1";
const CALLER: &str = "+14155550100";
const RESTAURANT_NUMBER: &str = "+14155550199";

/// Signs each `(preset, secret, url, body)` as the provider does: Twilio
/// with its own library's RequestValidator, Vonage with an HS256 JWT
/// carrying the body's hash (PyJWT, as vonage-jwt verifies it).
const SIGNER: &str = r#"
import hashlib, json, sys, time, uuid
from urllib.parse import parse_qsl
out = []
for preset, secret, url, body in json.loads(sys.argv[1]):
    if preset == "twilio":
        from twilio.request_validator import RequestValidator
        out.append(RequestValidator(secret).compute_signature(url, dict(parse_qsl(body))))
    else:
        import jwt
        claims = {"iat": int(time.time()), "jti": str(uuid.uuid4()), "application_id": "app-1",
                  "payload_hash": hashlib.sha256(body.encode()).hexdigest()}
        out.append("Bearer " + jwt.encode(claims, secret, algorithm="HS256"))
print(json.dumps(out))
"#;

async fn sign(requests: Vec<(&'static str, String, String, String)>) -> Vec<String> {
    let specs = serde_json::to_string(&requests).unwrap();
    let printed = tokio::task::spawn_blocking(move || {
        let output = Command::new("python3")
            .arg("-c")
            .arg(SIGNER)
            .arg(specs)
            .env("PYTHONPATH", repo_root().join(".keel/py"))
            .output()
            .expect("python3 runs");
        assert!(
            output.status.success(),
            "the signer failed (run scripts/test, which installs twilio and PyJWT): {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    })
    .await
    .unwrap();
    serde_json::from_str(&printed).unwrap()
}

struct SmsStack {
    app: TestApp,
    chat: FakeChat,
    twilio: FakeMessaging,
    vonage: FakeMessaging,
    key: String,
}

/// A restaurant with its FAQ and menu, behind an app whose SMS providers
/// are doubles; answers come from the chat double unless `extractive`.
async fn sms_stack(extractive: bool, extra: &[(&str, &str)]) -> SmsStack {
    let (_, embeddings) = FakeOpenAi::start().await;
    let (chat, chat_url) = FakeChat::start().await;
    let (twilio, twilio_url) =
        FakeMessaging::start(Provider::Twilio, ACCOUNT_SID, AUTH_TOKEN).await;
    let (vonage, vonage_url) =
        FakeMessaging::start(Provider::Vonage, VONAGE_API_KEY, VONAGE_API_SECRET).await;
    let extra: Vec<(String, String)> = extra
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let app = spawn_app_with(move |_, vars| {
        openai_vars(vars, &embeddings);
        if !extractive {
            vars.insert("CHAT_BASE_URL".into(), chat_url);
            vars.insert("CHAT_API_KEY".into(), CHAT_KEY.into());
        }
        vars.insert("PUBLIC_BASE_URL".into(), PUBLIC_BASE_URL.into());
        vars.insert("TWILIO_API_BASE_URL".into(), twilio_url);
        vars.insert("VONAGE_API_BASE_URL".into(), vonage_url);
        // A task that failed is due again at once.
        vars.insert("TASK_RETRY_BASE_SECONDS".into(), "0".into());
        vars.extend(extra);
    })
    .await;
    let key = app.create_tenant("luigis").await;
    let documents = json!([
        {"id": "faq-hours", "title": "FAQ: opening hours",
         "content": "We are open from noon to 11pm, Tuesday to Sunday. Closed on Mondays."},
        {"id": "menu", "title": "Menu",
         "content": "Vegan options: falafel bowl, lentil soup and the grilled vegetable platter."}
    ]);
    assert_eq!(app.put_documents(&key, documents).await.status(), 200);
    assert_eq!(app.run_embedding_cron().await["remaining"], 0);
    SmsStack {
        app,
        chat,
        twilio,
        vonage,
        key,
    }
}

impl SmsStack {
    async fn endpoint(&self, body: Value) -> String {
        let response = self
            .app
            .post_json("/api/webhooks/endpoints", &self.key, &body)
            .await;
        assert_eq!(response.status(), 201, "creating an endpoint");
        let created: Value = response.json().await.unwrap();
        created["id"].as_str().unwrap().to_owned()
    }

    async fn twilio_endpoint(&self) -> String {
        self.endpoint(json!({"source": "sms", "verification": "twilio", "secret": AUTH_TOKEN}))
            .await
    }

    /// Twilio's inbound SMS webhooks for these texts, signed as Twilio signs.
    async fn twilio_posts(&self, endpoint: &str, texts: &[&str]) -> Vec<(String, String)> {
        let url = format!("{PUBLIC_BASE_URL}/api/webhooks/{endpoint}");
        let bodies: Vec<String> = texts
            .iter()
            .map(|text| {
                url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("ToCountry", "US")
                    .append_pair("SmsMessageSid", &sid())
                    .append_pair("MessageSid", &sid())
                    .append_pair("AccountSid", ACCOUNT_SID)
                    .append_pair("From", CALLER)
                    .append_pair("To", RESTAURANT_NUMBER)
                    .append_pair("Body", text)
                    .append_pair("NumMedia", "0")
                    .append_pair("SmsStatus", "received")
                    .append_pair("ApiVersion", "2010-04-01")
                    .finish()
            })
            .collect();
        let specs = bodies
            .iter()
            .map(|body| ("twilio", AUTH_TOKEN.to_owned(), url.clone(), body.clone()))
            .collect();
        let signatures = sign(specs).await;
        bodies.into_iter().zip(signatures).collect()
    }

    async fn post_twilio(
        &self,
        endpoint: &str,
        (body, signature): &(String, String),
    ) -> (u16, String, String) {
        let response = self
            .app
            .client
            .post(self.app.url(&format!("/api/webhooks/{endpoint}")))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-twilio-signature", signature)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (status, content_type, response.text().await.unwrap())
    }

    async fn vonage_endpoint(&self) -> String {
        self.endpoint(
            json!({"source": "sms", "verification": "vonage", "secret": VONAGE_SIGNATURE_SECRET,
                   "api_key": VONAGE_API_KEY, "api_secret": VONAGE_API_SECRET}),
        )
        .await
    }

    /// Vonage's inbound message webhook for `text`, signed as Vonage signs.
    async fn post_vonage_text(&self, endpoint: &str, text: &str) -> u16 {
        let body = json!({"channel": "sms", "message_uuid": uuid::Uuid::new_v4().to_string(),
                          "to": "447700900001", "from": "447700900000", "text": text,
                          "timestamp": "2026-12-02T10:00:00Z", "message_type": "text"})
        .to_string();
        let url = format!("{PUBLIC_BASE_URL}/api/webhooks/{endpoint}");
        let authorization = sign(vec![(
            "vonage",
            VONAGE_SIGNATURE_SECRET.to_owned(),
            url,
            body.clone(),
        )])
        .await
        .remove(0);
        self.app
            .client
            .post(self.app.url(&format!("/api/webhooks/{endpoint}")))
            .header("content-type", "application/json")
            .header("authorization", authorization)
            .body(body)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    async fn conversation(&self, id: &str) -> Value {
        self.app
            .get_json(&format!("/api/conversations/{id}"), &self.key)
            .await
    }

    /// Runs the task cron until it runs nothing.
    async fn drain_tasks(&self) {
        for _ in 0..20 {
            if self.app.run_cron("/api/cron/tasks").await["ran"] == 0 {
                return;
            }
        }
        panic!("the tasks never drained");
    }
}

fn sid() -> String {
    format!("SM{}", uuid::Uuid::new_v4().simple())
}

fn conversation_id(endpoint: &str) -> String {
    format!("sms-{}-14155550100", endpoint.replace('-', ""))
}

#[tokio::test]
async fn a_text_about_opening_hours_is_answered_in_twiml_quoting_the_faq() {
    let stack = sms_stack(true, &[]).await;
    let endpoint = stack.twilio_endpoint().await;
    let posts = stack
        .twilio_posts(&endpoint, &["When are you open?", "And on Mondays?"])
        .await;

    let (status, content_type, twiml) = stack.post_twilio(&endpoint, &posts[0]).await;
    assert_eq!(status, 200);
    assert_eq!(content_type, "text/xml");
    assert!(
        twiml.starts_with(r#"<?xml version="1.0" encoding="UTF-8"?><Response><Message>"#)
            && twiml.ends_with("</Message></Response>"),
        "{twiml}"
    );
    assert!(twiml.contains("noon to 11pm"), "the FAQ is quoted: {twiml}");

    // The follow-up continues the same phone's conversation.
    let (_, _, second) = stack.post_twilio(&endpoint, &posts[1]).await;
    assert!(second.contains("Closed on Mondays"), "{second}");
    let conversation = stack.conversation(&conversation_id(&endpoint)).await;
    let messages = conversation["messages"].as_array().unwrap();
    let said: Vec<(&str, &str)> = messages
        .iter()
        .map(|m| (m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect();
    assert_eq!(said.len(), 4, "{conversation}");
    assert_eq!(said[0], ("user", "When are you open?"));
    assert_eq!(said[2], ("user", "And on Mondays?"));
    assert_eq!(messages[1]["model"], "keel-extractive");
    assert_eq!(messages[1]["citations"][0]["document_id"], "faq-hours");

    // Answered in the response: the task finds it sent and sends nothing.
    stack.drain_tasks().await;
    assert!(stack.twilio.received().is_empty());
    // Twilio's retry of the same message is a duplicate: no second answer.
    let (_, _, retried) = stack.post_twilio(&endpoint, &posts[0]).await;
    assert!(retried.ends_with("<Response/>"), "{retried}");
    assert_eq!(
        stack.conversation(&conversation_id(&endpoint)).await["message_count"],
        4
    );
}

#[tokio::test]
async fn a_slow_model_leaves_the_reply_to_the_task_which_sends_it_once() {
    let stack = sms_stack(false, &[("SMS_REPLY_DEADLINE_MS", "300")]).await;
    // The webhook's attempt is too slow; the task's (no deadline) is not.
    stack.chat.script([
        Reply::Slow(
            vec!["We open at noon ".into(), "[1].".into()],
            Duration::from_millis(400),
        ),
        Reply::Text(vec!["We open at noon ".into(), "[1].".into()]),
    ]);
    let endpoint = stack.twilio_endpoint().await;
    let posts = stack.twilio_posts(&endpoint, &["When are you open?"]).await;

    let started = Instant::now();
    let (status, content_type, twiml) = stack.post_twilio(&endpoint, &posts[0]).await;
    assert_eq!((status, content_type.as_str()), (200, "text/xml"));
    assert_eq!(
        twiml,
        r#"<?xml version="1.0" encoding="UTF-8"?><Response/>"#
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // Twilio is busy at first: the task is retried, and sends exactly once.
    stack.twilio.fail_with([
        StatusCode::TOO_MANY_REQUESTS,
        StatusCode::INTERNAL_SERVER_ERROR,
    ]);
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    stack.drain_tasks().await;
    let received = stack.twilio.received();
    let statuses: Vec<u16> = received.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [429, 500, 201], "{received:?}");
    assert_eq!(
        received[2].path,
        format!("/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json")
    );
    let sent = stack.twilio.sent();
    assert_eq!(sent[0]["To"], CALLER);
    assert_eq!(sent[0]["From"], RESTAURANT_NUMBER);
    assert_eq!(sent[0]["Body"], "We open at noon [1].");

    // One answer, generated once: the retries sent the stored one.
    assert_eq!(
        stack.chat.streamed_requests().len(),
        2,
        "the cut-off attempt and the task's"
    );
    let conversation = stack.conversation(&conversation_id(&endpoint)).await;
    assert_eq!(conversation["message_count"], 2, "{conversation}");
    assert_eq!(
        conversation["messages"][1]["content"],
        "We open at noon [1]."
    );
    let stored = stack
        .app
        .count(
            "select count(*) from keel.sms_replies where channel = 'api' and sent_at is not null",
        )
        .await;
    assert_eq!(stored, 1);
}

#[tokio::test]
async fn a_vonage_text_is_answered_through_the_messages_api() {
    let stack = sms_stack(true, &[]).await;
    let endpoint = stack.vonage_endpoint().await;
    let status = stack
        .post_vonage_text(&endpoint, "Do you have vegan dishes?")
        .await;
    assert_eq!(status, 200);

    stack.drain_tasks().await;
    let sent = stack.vonage.sent();
    assert_eq!(sent.len(), 1, "{:?}", stack.vonage.received());
    assert_eq!(sent[0]["to"], "447700900000");
    assert_eq!(sent[0]["from"], "447700900001");
    assert_eq!(sent[0]["channel"], "sms");
    assert!(
        sent[0]["text"].as_str().unwrap().contains("falafel bowl"),
        "{}",
        sent[0]
    );
    let conversation = stack
        .conversation(&format!("sms-{}-447700900000", endpoint.replace('-', "")))
        .await;
    assert_eq!(conversation["message_count"], 2, "{conversation}");
    // The credentials are stored sealed, never as given.
    let plain = stack
        .app
        .count(&format!(
            "select count(*) from keel.webhook_endpoint_credentials where ciphertext like '%{VONAGE_API_SECRET}%'"
        ))
        .await;
    assert_eq!(plain, 0);
}

#[tokio::test]
async fn a_text_is_still_answered_when_its_function_died_right_after_storing_it() {
    let stack = sms_stack(true, &[]).await;
    let endpoint = stack.vonage_endpoint().await;
    let status = stack
        .post_vonage_text(&endpoint, "Do you have vegan dishes?")
        .await;
    assert_eq!(status, 200);
    // What the database holds when the function dies after the delivery's
    // transaction and before it enqueues the reply.
    let client = stack.app.db.connect().await;
    client
        .batch_execute(
            "delete from keel.tasks where kind = 'sms.reply';
             delete from keel.sms_replies;",
        )
        .await
        .unwrap();

    stack.drain_tasks().await;
    let sent = stack.vonage.sent();
    assert_eq!(sent.len(), 1, "{:?}", stack.vonage.received());
    assert!(
        sent[0]["text"].as_str().unwrap().contains("falafel bowl"),
        "{}",
        sent[0]
    );
    let replies = stack
        .app
        .count("select count(*) from keel.sms_replies where sent_at is not null")
        .await;
    assert_eq!(replies, 1);
}

#[tokio::test]
async fn vonage_credentials_are_both_or_neither_and_only_for_vonage() {
    let stack = sms_stack(true, &[]).await;
    // (body, field named, reason)
    let cases = [
        (
            json!({"source": "sms", "verification": "vonage", "secret": VONAGE_SIGNATURE_SECRET,
                "api_key": VONAGE_API_KEY}),
            "api_secret",
            "a key without its secret",
        ),
        (
            json!({"source": "sms", "verification": "twilio", "secret": AUTH_TOKEN,
                "api_key": "k", "api_secret": "s"}),
            "api_key",
            "Twilio sends with its auth token",
        ),
        (
            json!({"source": "sms", "verification": "vonage", "secret": VONAGE_SIGNATURE_SECRET,
                "api_key": "has space", "api_secret": "s"}),
            "api_secret",
            "not a credential's shape",
        ),
    ];
    for (body, field, reason) in cases {
        let response = stack
            .app
            .post_json("/api/webhooks/endpoints", &stack.key, &body)
            .await;
        assert_eq!(response.status(), 400, "{reason}");
        let error: Value = response.json().await.unwrap();
        assert!(
            error["error"]["message"].as_str().unwrap().contains(field),
            "{reason}: {error}"
        );
    }
    assert_eq!(
        stack
            .app
            .count("select count(*) from keel.webhook_endpoints")
            .await,
        0
    );
}

#[tokio::test]
async fn a_vapi_end_of_call_report_becomes_a_readable_conversation() {
    let stack = sms_stack(true, &[]).await;
    let response = stack
        .app
        .post_json(
            "/api/webhooks/endpoints",
            &stack.key,
            &json!({"source": "voice", "verification": "vapi"}),
        )
        .await;
    let created: Value = response.json().await.unwrap();
    let (endpoint, secret) = (
        created["id"].as_str().unwrap(),
        created["secret"].as_str().unwrap(),
    );
    let call_id = uuid::Uuid::new_v4().to_string();
    let report = json!({"message": {
        "type": "end-of-call-report",
        "timestamp": 1_764_669_600_000_i64,
        "endedReason": "customer-ended-call",
        "cost": 0.0842,
        "call": {"id": call_id},
        "analysis": {"summary": "The caller asked about vegan dishes and opening hours."},
        "artifact": {
            "recordingUrl": "https://storage.vapi.ai/recording.wav",
            "transcript": "AI: Luigi's, how can I help?\nUser: Any vegan dishes?",
            "messages": [
                {"role": "system", "message": "You are Luigi's assistant.", "time": 1, "secondsFromStart": 0},
                {"role": "bot", "message": "Luigi's, how can I help?", "time": 2, "secondsFromStart": 0.5},
                {"role": "user", "message": "Any vegan dishes?", "time": 3, "secondsFromStart": 2.1},
                {"role": "bot", "message": "Yes: the falafel bowl and the lentil soup.", "time": 4, "secondsFromStart": 4.0}
            ]
        }
    }});
    let response = stack
        .app
        .client
        .post(stack.app.url(&format!("/api/webhooks/{endpoint}")))
        .header("content-type", "application/json")
        .header("x-vapi-secret", secret)
        .body(report.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    stack.drain_tasks().await;

    let conversation = stack.conversation(&call_id).await;
    let said: Vec<(&str, &str)> = conversation["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect();
    assert_eq!(
        said,
        [
            ("assistant", "Luigi's, how can I help?"),
            ("user", "Any vegan dishes?"),
            ("assistant", "Yes: the falafel bowl and the lentil soup."),
        ],
        "{conversation}"
    );
    assert_eq!(conversation["title"], "Any vegan dishes?");
    let metadata = &conversation["metadata"];
    assert_eq!(
        metadata["summary"],
        "The caller asked about vegan dishes and opening hours."
    );
    assert_eq!(
        metadata["recording_url"],
        "https://storage.vapi.ai/recording.wav"
    );
    assert_eq!(metadata["ended_reason"], "customer-ended-call");
    assert_eq!(metadata["cost"], 0.0842);
    let delivery = stack
        .app
        .count("select count(*) from keel.webhook_deliveries where status = 'processed'")
        .await;
    assert_eq!(delivery, 1);
}

/// The TwiML path's answer time, as Twilio sees it (the whole webhook
/// request), extractive and with the chat double answering at once: every
/// text is answered in the response, far within the deadline.
#[tokio::test]
async fn texts_are_answered_in_twiml_well_within_the_deadline() {
    for extractive in [true, false] {
        let stack = sms_stack(extractive, &[]).await;
        let endpoint = stack.twilio_endpoint().await;
        let texts = ["When are you open?"; 20];
        let posts = stack.twilio_posts(&endpoint, &texts).await;
        let mut times = Vec::new();
        for post in &posts {
            let started = Instant::now();
            let (status, _, twiml) = stack.post_twilio(&endpoint, post).await;
            times.push(started.elapsed());
            assert_eq!(status, 200);
            assert!(twiml.contains("<Message>"), "{twiml}");
        }
        times.sort();
        eprintln!(
            "TwiML answer time ({}): p50 {:?}, p95 {:?}, max {:?} over {} texts",
            if extractive {
                "extractive"
            } else {
                "chat double, instant"
            },
            times[times.len() / 2],
            times[times.len() * 95 / 100],
            times[times.len() - 1],
            times.len()
        );
    }
}

#[tokio::test]
async fn texts_beyond_the_tenants_chat_quota_wait_for_it_instead_of_being_answered() {
    // One answer a minute; a refused reply task waits a minute to retry.
    let stack = sms_stack(
        true,
        &[
            ("RATE_LIMIT_CHAT_PER_MINUTE", "1"),
            ("SMS_REPLY_DEADLINE_MS", "300"),
            ("TASK_RETRY_BASE_SECONDS", "60"),
        ],
    )
    .await;
    let endpoint = stack.twilio_endpoint().await;
    let posts = stack
        .twilio_posts(&endpoint, &["When are you open?", "Anything vegan?"])
        .await;

    let (_, _, first) = stack.post_twilio(&endpoint, &posts[0]).await;
    assert!(first.contains("noon to 11pm"), "within the quota: {first}");
    // The second text is stored but the quota is spent: no answer now.
    let (status, content_type, second) = stack.post_twilio(&endpoint, &posts[1]).await;
    assert_eq!((status, content_type.as_str()), (200, "text/xml"));
    assert_eq!(
        second,
        r#"<?xml version="1.0" encoding="UTF-8"?><Response/>"#
    );

    // Its reply task, once due, is refused by the same quota and waits to
    // retry: nothing is sent, nothing is answered.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    stack.app.run_cron("/api/cron/tasks").await;
    let tasks: Value = stack
        .app
        .get_json("/api/tasks?kind=sms.reply&status=failed", &stack.key)
        .await;
    let waiting = tasks["tasks"].as_array().unwrap();
    assert_eq!(waiting.len(), 1, "{tasks}");
    assert!(
        waiting[0]["last_error"]
            .as_str()
            .unwrap()
            .contains("rate limit exceeded on chat"),
        "{tasks}"
    );
    assert!(stack.twilio.received().is_empty());
    let conversation = stack.conversation(&conversation_id(&endpoint)).await;
    assert_eq!(conversation["message_count"], 2, "{conversation}");

    // Texts and the tenant's own chat clients draw from one quota.
    let chat = stack
        .app
        .post_json(
            "/api/v1/chat/completions",
            &stack.key,
            &json!({"messages": [{"role": "user", "content": "Anything vegan?"}]}),
        )
        .await;
    assert_eq!(chat.status(), 429);
}
