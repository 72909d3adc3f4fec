//! The chat routes as real clients read them: the official `openai` Python
//! SDK on `/api/v1/chat/completions` (streamed and whole) and the Vercel AI
//! SDK's own UI-message-stream reader (`DefaultChatTransport` +
//! `readUIMessageStream` from the `ai` npm package) on `/api/chat`, against
//! the server `keel serve` runs, on its local stack: the local embedding
//! model and no chat model (extractive answers). scripts/test installs both
//! SDKs (`.keel/py`, `.keel/node`).

use std::process::Command;

use serde_json::{Value, json};

use crate::helpers::{TestApp, repo_root, spawn_app_with_local_model};

async fn local_restaurant() -> (TestApp, String) {
    let app = spawn_app_with_local_model(|_| {}).await;
    let key = app.create_tenant("luigis").await;
    let documents = json!([
        {"id": "menu", "title": "Menu", "source_url": "https://luigis.example/menu",
         "content": "Vegan options: falafel bowl, lentil soup and the grilled vegetable platter."},
        {"id": "hours", "title": "Opening hours", "content": "We are open from noon to 11pm, Tuesday to Sunday."}
    ]);
    assert_eq!(app.put_documents(&key, documents).await.status(), 200);
    app.run_embedding_cron().await;
    (app, key)
}

/// Runs `program` with `args` off the async runtime; its stdout as JSON.
async fn run_client(
    program: &'static str,
    args: Vec<String>,
    env: (&'static str, String),
) -> Value {
    let output = tokio::task::spawn_blocking(move || {
        Command::new(program)
            .args(&args)
            .env(env.0, env.1)
            .output()
            .unwrap_or_else(|e| panic!("{program} runs: {e}"))
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "the client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stdout)))
}

#[tokio::test]
async fn the_official_openai_sdk_reads_completions_streamed_and_whole() {
    let library = repo_root().join(".keel/py");
    assert!(
        library.join("openai").exists(),
        "the openai SDK is missing: run scripts/test (it installs it in .keel/py)"
    );
    let (app, key) = local_restaurant().await;
    let script = r#"
import json, sys
from openai import OpenAI
client = OpenAI(base_url=sys.argv[1], api_key=sys.argv[2], max_retries=0)
question = [{"role": "user", "content": "Do you have vegan options?"}]
text, usage, models, extras = "", None, set(), None
for chunk in client.chat.completions.create(model="gpt-4o", messages=question, stream=True,
                                            stream_options={"include_usage": True}):
    models.add(chunk.model)
    if extras is None:
        extras = (chunk.model_extra or {}).get("citations")
    if chunk.choices and chunk.choices[0].delta.content:
        text += chunk.choices[0].delta.content
    if chunk.usage is not None:
        usage = chunk.usage.total_tokens
whole = client.chat.completions.create(model="gpt-4o", messages=question)
print(json.dumps({
    "streamed": text, "models": sorted(models), "usage": usage, "citations": extras,
    "whole": whole.choices[0].message.content, "whole_model": whole.model,
    "finish_reason": whole.choices[0].finish_reason,
}))
"#;
    let sdk = run_client(
        "python3",
        vec!["-c".into(), script.into(), app.url("/api/v1"), key],
        ("PYTHONPATH", library.display().to_string()),
    )
    .await;

    let streamed = sdk["streamed"].as_str().unwrap();
    assert!(streamed.contains("Vegan options: falafel bowl"), "{sdk}");
    assert_eq!(sdk["whole"], sdk["streamed"], "the same answer both ways");
    assert_eq!(sdk["models"], json!(["keel-extractive"]));
    assert_eq!(sdk["whole_model"], "keel-extractive");
    assert_eq!(sdk["finish_reason"], "stop");
    assert_eq!(sdk["usage"], 0, "no model ran, so no tokens were spent");
    assert_eq!(sdk["citations"][0]["document_id"], "menu");
}

#[tokio::test]
async fn the_ai_sdks_own_reader_builds_the_whole_message_with_its_sources() {
    let modules = repo_root().join(".keel/node/node_modules");
    assert!(
        modules.join("ai").exists(),
        "the ai package is missing: run scripts/test (it installs it in .keel/node)"
    );
    let (app, key) = local_restaurant().await;
    let script = r#"
const { DefaultChatTransport, readUIMessageStream } = require('ai');
(async () => {
  const [api, key] = process.argv.slice(1);
  const transport = new DefaultChatTransport({ api, headers: { Authorization: `Bearer ${key}` } });
  const stream = await transport.sendMessages({
    chatId: 'sdk-chat', trigger: 'submit-message', messageId: undefined, abortSignal: undefined,
    messages: [{ id: 'm1', role: 'user', parts: [{ type: 'text', text: 'Do you have vegan options?' }] }],
  });
  let message;
  for await (const snapshot of readUIMessageStream({ stream, onError: (e) => { throw e; } })) message = snapshot;
  console.log(JSON.stringify(message));
})().catch((error) => { console.error(error); process.exit(1); });
"#;
    let message = run_client(
        "node",
        vec!["-e".into(), script.into(), app.url("/api/chat"), key],
        ("NODE_PATH", modules.display().to_string()),
    )
    .await;

    assert_eq!(message["role"], "assistant");
    assert_eq!(message["metadata"]["model"], "keel-extractive", "{message}");
    assert_eq!(message["metadata"]["conversationId"], "sdk-chat");
    let parts = message["parts"].as_array().unwrap();
    let text: String = parts
        .iter()
        .filter(|p| p["type"] == "text")
        .filter_map(|p| p["text"].as_str())
        .collect();
    assert!(text.contains("Vegan options: falafel bowl"), "{message}");
    let menu = parts
        .iter()
        .find(|p| p["type"] == "source-url")
        .expect("the menu, which has a URL, is a source-url part");
    assert_eq!(menu["url"], "https://luigis.example/menu");
    assert_eq!(menu["title"], "Menu");
    assert!(
        parts.iter().any(|p| p["type"] == "data-usage"),
        "the usage part reaches the message: {message}"
    );
}
