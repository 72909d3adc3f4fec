//! The local model's `POST /v1/embeddings` as OpenAI clients call it: every
//! input form OpenAI accepts, both encodings, errors as 400s naming the
//! field, and the official `openai` Python SDK with its defaults (it asks
//! for base64 and decodes client-side), which scripts/test installs in
//! `.keel/py`.

use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::helpers::{TestApp, error_body, repo_root, spawn_app_with_local_model};

const MODEL: &str = keel_local::MODEL_NAME;

async fn embeddings(app: &TestApp, body: Value) -> reqwest::Response {
    app.client
        .post(app.url("/v1/embeddings"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// The vectors of a 200 response, decoding base64 when it was asked for.
async fn vectors(app: &TestApp, body: Value) -> Vec<Vec<f32>> {
    let response = embeddings(app, body.clone()).await;
    assert_eq!(response.status(), 200, "{body}");
    let list: Value = response.json().await.unwrap();
    assert_eq!(list["object"], "list");
    assert_eq!(list["model"], MODEL);
    let tokens = list["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(tokens > 0);
    assert_eq!(list["usage"]["total_tokens"], tokens);
    let data = list["data"].as_array().unwrap();
    data.iter()
        .enumerate()
        .map(|(index, item)| {
            assert_eq!(item["object"], "embedding");
            assert_eq!(item["index"], index);
            let vector: Vec<f32> = match &item["embedding"] {
                Value::String(encoded) => base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .unwrap()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect(),
                embedding => serde_json::from_value(embedding.clone()).unwrap(),
            };
            assert_eq!(vector.len(), keel_local::DIMENSIONS);
            let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
            vector
        })
        .collect()
}

fn cl100k(text: &str) -> Vec<u32> {
    bpe_openai::cl100k_base().encode(text)
}

fn assert_close(a: &[Vec<f32>], b: &[Vec<f32>]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        let diff = x
            .iter()
            .zip(y)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f32::max);
        assert!(diff < 1e-5, "vectors differ by {diff}");
    }
}

#[tokio::test]
async fn every_input_form_and_both_encodings_give_the_same_vectors() {
    let app = spawn_app_with_local_model(|_| {}).await;
    let texts = ["Do you have vegan options?", "Free parking after 6pm."];

    let floats = vectors(&app, json!({"model": MODEL, "input": texts})).await;
    assert_eq!(floats.len(), 2);
    for one in [json!(texts[0]), json!(cl100k(texts[0]))] {
        let body = json!({"model": MODEL, "input": one});
        assert_close(&vectors(&app, body).await, &floats[..1]);
    }
    for format in ["float", "base64"] {
        for input in [json!(texts), json!([cl100k(texts[0]), cl100k(texts[1])])] {
            let body = json!({"model": MODEL, "input": input, "encoding_format": format,
                              "dimensions": keel_local::DIMENSIONS});
            assert_close(&vectors(&app, body).await, &floats);
        }
    }
    let response = embeddings(
        &app,
        json!({"model": MODEL, "input": texts, "encoding_format": "base64"}),
    )
    .await;
    let list: Value = response.json().await.unwrap();
    assert!(list["data"][0]["embedding"].is_string(), "{list}");
}

#[tokio::test]
async fn refused_requests_are_400s_naming_the_field() {
    let app = spawn_app_with_local_model(|_| {}).await;
    for (reason, body, field) in [
        (
            "a size the model lacks",
            json!({"model": MODEL, "input": "x", "dimensions": 256}),
            "`dimensions`",
        ),
        (
            "no such encoding",
            json!({"model": MODEL, "input": "x", "encoding_format": "int8"}),
            "`encoding_format`",
        ),
        (
            "an id cl100k lacks",
            json!({"model": MODEL, "input": [[15339, 100_300]]}),
            "`input[0]`",
        ),
        (
            "forms mixed",
            json!({"model": MODEL, "input": ["a", [15339]]}),
            "`input`",
        ),
        (
            "an empty string",
            json!({"model": MODEL, "input": ["a", ""]}),
            "`input[1]`",
        ),
    ] {
        let response = embeddings(&app, body).await;
        assert_eq!(response.status(), 400, "{reason}");
        let error = error_body(response).await;
        assert_eq!(error["code"], "invalid_field", "{reason}");
        let message = error["message"].as_str().unwrap();
        assert!(message.starts_with(field), "{reason}: {message}");
    }
}

/// What a new user writes: `OpenAI(base_url=..., api_key=...)` and
/// `client.embeddings.create(model=..., input=...)` with nothing else, so the
/// SDK's default `encoding_format` (base64) is what the server sees.
#[tokio::test]
async fn the_official_openai_python_sdk_with_its_defaults() {
    let library = repo_root().join(".keel/py");
    assert!(
        library.join("openai").exists(),
        "the openai SDK is missing: run scripts/test (it installs it in .keel/py)"
    );
    let app = spawn_app_with_local_model(|_| {}).await;
    let texts = ["Do you have vegan options?", "We are closed on Mondays."];
    let script = r#"
import json, sys
from openai import OpenAI
client = OpenAI(base_url=sys.argv[1], api_key="unused-by-the-local-model", max_retries=0)
many = client.embeddings.create(model=sys.argv[2], input=json.loads(sys.argv[3]))
one = client.embeddings.create(model=sys.argv[2], input="We are closed on Mondays.")
print(json.dumps({
    "many": [d.embedding for d in many.data],
    "one": [d.embedding for d in one.data],
    "model": many.model,
    "prompt_tokens": many.usage.prompt_tokens,
}))
"#;
    let base_url = app.url("/v1");
    let inputs = serde_json::to_string(&texts).unwrap();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args(["-c", script, &base_url, MODEL, &inputs])
            .env("PYTHONPATH", library)
            .output()
            .expect("python3 runs")
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "the SDK call failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let sdk: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(sdk["model"], MODEL);
    assert!(sdk["prompt_tokens"].as_u64().unwrap() > 0);
    let many: Vec<Vec<f32>> = serde_json::from_value(sdk["many"].clone()).unwrap();
    let one: Vec<Vec<f32>> = serde_json::from_value(sdk["one"].clone()).unwrap();

    // What Keel's own client (the embedder the worker uses) gets for the same texts.
    let embedder = keel::knowledge::embedder::Embedder::from_config(&app.app.config, &app.app.http)
        .expect("the local model is the configured provider");
    let model = keel::knowledge::EmbeddingModel::configured(&app.app.config);
    let texts: Vec<String> = texts.iter().map(|t| t.to_string()).collect();
    let keel = embedder
        .embed(&model, &texts, Instant::now() + Duration::from_secs(60))
        .await
        .expect("Keel's client embeds");

    for vector in many.iter().chain(&one) {
        assert_eq!(vector.len(), keel_local::DIMENSIONS);
        let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
    }
    assert_close(&many, &keel);
    assert_close(&one, &keel[1..]);
}
