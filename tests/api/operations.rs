use std::io::Write as _;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::helpers::{
    ADMIN_KEY, METRICS_TOKEN, client_from, maybe_json, repo_root, spawn_app_with,
};

/// Parses Prometheus text with the official Python client's parser and
/// returns `{"name{label=value,...}": value}` for every sample.
fn parse_with_prometheus_client(text: &str) -> Value {
    let library = repo_root().join(".keel/py");
    assert!(
        library.join("prometheus_client").exists(),
        "prometheus-client missing: run scripts/test"
    );
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
samples = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        samples[f"{s.name}{{{labels}}}"] = s.value
print(json.dumps(samples))
"#;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .env("PYTHONPATH", library)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the parser refused the exposition: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test]
async fn metrics_parse_with_the_reference_parser_and_count_what_happened() {
    let app = spawn_app_with(|_, vars| {
        vars.insert("METRICS_TOKEN".into(), METRICS_TOKEN.into());
        vars.insert("RATE_LIMIT_SEARCH_PER_MINUTE".into(), "1".into());
    })
    .await;
    let key = app.create_tenant("shop").await;
    app.put_documents(
        &key,
        json!([{"id": "a", "content": "One."}, {"id": "b", "content": "Two."}]),
    )
    .await;
    let (endpoint, secret) = app
        .create_webhook_endpoint(&key, json!({"source": "cms"}))
        .await;
    let event = json!({"type": "order.paid", "data": {}});
    app.deliver(&endpoint, &secret, "evt_1", &event).await;
    app.deliver(&endpoint, &secret, "evt_1", &event).await;
    app.deliver(
        &endpoint,
        "whsec_Zm9yZ2VkLXNlY3JldC1mb3JnZWQtc2VjcmV0",
        "evt_2",
        &event,
    )
    .await;
    for _ in 0..2 {
        app.search(&key, json!({"query": "one", "mode": "keyword"}))
            .await;
    }

    let response = app.get_authorized("/api/metrics", METRICS_TOKEN).await;

    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let samples = parse_with_prometheus_client(&response.text().await.unwrap());
    assert_eq!(samples["keel_tenants{}"], 1.0);
    assert_eq!(samples["keel_documents{}"], 2.0);
    assert_eq!(samples["keel_chunks{}"], 2.0);
    assert_eq!(
        samples["keel_embedding_jobs{dimensions=1536,model=text-embedding-3-small,state=pending}"],
        2.0
    );
    assert_eq!(
        samples["keel_tasks{kind=webhook.process,status=queued}"],
        1.0
    );
    assert_eq!(
        samples["keel_webhooks_received_total{outcome=accepted}"],
        1.0
    );
    assert_eq!(
        samples["keel_webhooks_received_total{outcome=duplicate}"],
        1.0
    );
    assert_eq!(
        samples["keel_webhooks_received_total{outcome=rejected}"],
        1.0
    );
    assert_eq!(samples["keel_query_cache_total{result=miss}"], 0.0);
    assert_eq!(samples["keel_rate_limited_total{scope=search}"], 1.0);
    assert_eq!(samples["keel_rate_limited_total{scope=webhook}"], 0.0);
    assert!(
        samples
            .as_object()
            .unwrap()
            .keys()
            .any(|k| k.starts_with("keel_info{") && k.contains("environment=development")),
        "{samples}"
    );
}

#[tokio::test]
async fn metrics_need_the_metrics_token() {
    let app = spawn_app_with(|_, vars| {
        vars.insert("METRICS_TOKEN".into(), METRICS_TOKEN.into());
    })
    .await;

    for token in [None, Some("wrong"), Some(ADMIN_KEY)] {
        let mut request = app.client.get(app.url("/api/metrics"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        assert_eq!(request.send().await.unwrap().status(), 401, "{token:?}");
    }
}

/// `POST url` as `credential`, tagged with `request_id`; the JSON answer.
async fn post_tagged(
    client: &reqwest::Client,
    url: String,
    credential: &str,
    request_id: &str,
    body: Option<Value>,
) -> Value {
    let request = client
        .post(url)
        .bearer_auth(credential)
        .header("x-request-id", request_id)
        // Ignored: the address is the connection's, not a header a client can forge.
        .header("x-forwarded-for", "203.0.113.7");
    maybe_json(request, body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn audited_actions_record_actor_target_request_and_address_but_never_a_secret() {
    let app = spawn_app_with(|_, _| {}).await;
    let client = client_from("127.0.0.7");
    let created = post_tagged(
        &client,
        app.url("/api/tenants"),
        ADMIN_KEY,
        "audit-1",
        Some(json!({"name": "Shop", "slug": "shop"})),
    )
    .await;
    let first_key = created["api_key"].as_str().unwrap().to_owned();
    let rotated = post_tagged(
        &client,
        app.url("/api/tenants/shop/keys"),
        ADMIN_KEY,
        "audit-2",
        Some(json!({"revoke_existing": true})),
    )
    .await;
    let new_key = rotated["api_key"].as_str().unwrap().to_owned();
    let endpoint = post_tagged(
        &client,
        app.url("/api/webhooks/endpoints"),
        &new_key,
        "audit-3",
        Some(json!({"source": "vapi"})),
    )
    .await;
    let endpoint_id = endpoint["id"].as_str().unwrap();
    let new_secret = post_tagged(
        &client,
        app.url(&format!("/api/webhooks/endpoints/{endpoint_id}/secret")),
        &new_key,
        "audit-4",
        None,
    )
    .await;

    let rows = app
        .db
        .connect()
        .await
        .query(
            "select actor, action, target, request_id, ip, details::text, row_to_json(a)::text
             from keel.audit_log a order by id",
            &[],
        )
        .await
        .unwrap();
    let actions: Vec<(String, String, Option<String>)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(3)))
        .collect();
    assert_eq!(
        actions,
        vec![
            (
                "admin".to_owned(),
                "tenant.created".to_owned(),
                Some("audit-1".to_owned())
            ),
            (
                "admin".to_owned(),
                "key.issued".to_owned(),
                Some("audit-1".to_owned())
            ),
            (
                "admin".to_owned(),
                "key.revoked".to_owned(),
                Some("audit-2".to_owned())
            ),
            (
                "admin".to_owned(),
                "key.issued".to_owned(),
                Some("audit-2".to_owned())
            ),
            (
                format!("tenant-key:{}", &new_key[..11]),
                "webhook_endpoint.created".to_owned(),
                Some("audit-3".to_owned())
            ),
            (
                format!("tenant-key:{}", &new_key[..11]),
                "webhook_endpoint.secret_rotated".to_owned(),
                Some("audit-4".to_owned())
            ),
        ]
    );
    assert_eq!(rows[0].get::<_, String>(2), "tenant:shop");
    assert_eq!(
        rows[0].get::<_, Option<String>>(4).as_deref(),
        Some("127.0.0.7")
    );
    assert_eq!(
        rows[4].get::<_, String>(2),
        format!("webhook_endpoint:{}", endpoint["id"].as_str().unwrap())
    );
    assert_eq!(
        rows[5].get::<_, String>(2),
        format!("webhook_endpoint:{endpoint_id}")
    );
    let secret = endpoint["secret"].as_str().unwrap();
    let rotated_secret = new_secret["secret"].as_str().unwrap();
    for row in &rows {
        let whole: String = row.get(6);
        for leaked in [
            &first_key[5..],
            &new_key[5..],
            &secret[6..],
            &rotated_secret[6..],
        ] {
            assert!(
                !whole.contains(leaked),
                "a secret reached the audit log: {whole}"
            );
        }
    }
}
