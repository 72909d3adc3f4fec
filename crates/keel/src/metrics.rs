//! `GET /api/metrics` (`Authorization: Bearer $METRICS_TOKEN`): Prometheus
//! text exposition (format 0.0.4), computed from the database in one call so
//! every instance reports the same numbers.

use std::fmt::Write as _;
use std::sync::Arc;

use http::{HeaderValue, StatusCode, header};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::app::App;
use crate::config::secret_matches;
use crate::error::ApiError;
use crate::http::{ApiRequest, HandlerResult};
use crate::ratelimit::Scope;

#[derive(Deserialize)]
struct Snapshot {
    tenants: u64,
    documents: u64,
    chunks: u64,
    embeddings: Vec<Value>,
    embedding_jobs: Vec<Value>,
    tasks: Vec<Value>,
    webhook_deliveries: Vec<Value>,
    counters: Map<String, Value>,
}

/// One metric family: its samples share a name, help and type.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    samples: Vec<(Vec<(&'static str, String)>, f64)>,
}

impl Family {
    fn new(name: &'static str, kind: &'static str, help: &'static str) -> Self {
        Self {
            name,
            help,
            kind,
            samples: Vec::new(),
        }
    }

    fn sample(mut self, labels: Vec<(&'static str, String)>, value: f64) -> Self {
        self.samples.push((labels, value));
        self
    }
}

/// Label values escape `\`, `"` and newlines, as the format requires.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn render(families: &[Family]) -> String {
    let mut out = String::new();
    for family in families {
        let _ = writeln!(out, "# HELP {} {}", family.name, family.help);
        let _ = writeln!(out, "# TYPE {} {}", family.name, family.kind);
        for (labels, value) in &family.samples {
            let labels: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let labels = if labels.is_empty() {
                String::new()
            } else {
                format!("{{{}}}", labels.join(","))
            };
            let _ = writeln!(out, "{}{labels} {value}", family.name);
        }
    }
    out
}

fn text(value: &Value, key: &str) -> String {
    value[key]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| value[key].to_string())
}

fn count(value: &Value) -> f64 {
    value["count"].as_f64().unwrap_or(0.0)
}

fn families(app: &App, snapshot: &Snapshot) -> Vec<Family> {
    let counter = |name: &str| {
        snapshot
            .counters
            .get(name)
            .and_then(Value::as_f64)
            .unwrap_or(0.0)
    };
    let per_model = |rows: &[Value], family: Family, with_state: bool| {
        rows.iter().fold(family, |family, row| {
            let mut labels = vec![
                ("model", text(row, "model")),
                ("dimensions", text(row, "dimensions")),
            ];
            if with_state {
                labels.push(("state", text(row, "state")));
            }
            family.sample(labels, count(row))
        })
    };
    vec![
        Family::new(
            "keel_info",
            "gauge",
            "Build and environment of the reporting instance.",
        )
        .sample(
            vec![
                ("version", app.config.version.to_owned()),
                ("commit", app.config.commit.clone()),
                ("environment", app.config.environment.as_str().to_owned()),
            ],
            1.0,
        ),
        Family::new("keel_tenants", "gauge", "Tenants.").sample(vec![], snapshot.tenants as f64),
        Family::new("keel_documents", "gauge", "Documents across tenants.")
            .sample(vec![], snapshot.documents as f64),
        Family::new("keel_chunks", "gauge", "Chunks across tenants.")
            .sample(vec![], snapshot.chunks as f64),
        per_model(
            &snapshot.embeddings,
            Family::new("keel_embeddings", "gauge", "Stored vectors per model."),
            false,
        ),
        per_model(
            &snapshot.embedding_jobs,
            Family::new(
                "keel_embedding_jobs",
                "gauge",
                "Embedding backlog per model: pending or failed jobs.",
            ),
            true,
        ),
        snapshot.tasks.iter().fold(
            Family::new("keel_tasks", "gauge", "Tasks by kind and status."),
            |family, row| {
                family.sample(
                    vec![("kind", text(row, "kind")), ("status", text(row, "status"))],
                    count(row),
                )
            },
        ),
        snapshot.webhook_deliveries.iter().fold(
            Family::new(
                "keel_webhook_deliveries",
                "gauge",
                "Stored webhook deliveries by status.",
            ),
            |family, row| family.sample(vec![("status", text(row, "status"))], count(row)),
        ),
        Family::new(
            "keel_webhooks_received_total",
            "counter",
            "Webhook deliveries received, by outcome.",
        )
        .sample(
            vec![("outcome", "accepted".into())],
            counter("webhooks_accepted"),
        )
        .sample(
            vec![("outcome", "duplicate".into())],
            counter("webhooks_duplicate"),
        )
        .sample(
            vec![("outcome", "rejected".into())],
            counter("webhooks_rejected"),
        ),
        Family::new(
            "keel_query_cache_total",
            "counter",
            "Query-embedding cache lookups, by result.",
        )
        .sample(vec![("result", "hit".into())], counter("query_cache_hits"))
        .sample(
            vec![("result", "miss".into())],
            counter("query_cache_misses"),
        ),
        Family::new(
            "keel_embeddings_stored_total",
            "counter",
            "Vectors stored by the embedding worker.",
        )
        .sample(vec![], counter("embeddings_stored")),
        Family::new(
            "keel_embedding_failures_total",
            "counter",
            "Embedding job attempts that failed.",
        )
        .sample(vec![], counter("embedding_failures")),
        Family::new(
            "keel_tasks_finished_total",
            "counter",
            "Task attempts finished, by outcome.",
        )
        .sample(
            vec![("outcome", "succeeded".into())],
            counter("tasks_succeeded"),
        )
        .sample(vec![("outcome", "failed".into())], counter("tasks_failed"))
        .sample(vec![("outcome", "dead".into())], counter("tasks_dead")),
        [
            Scope::Search,
            Scope::Tenant,
            Scope::Anonymous,
            Scope::Webhook,
        ]
        .into_iter()
        .fold(
            Family::new(
                "keel_rate_limited_total",
                "counter",
                "Requests refused with 429, by quota scope.",
            ),
            |family, scope| {
                family.sample(
                    vec![("scope", scope.as_str().into())],
                    counter(&format!("rate_limited_{}", scope.as_str())),
                )
            },
        ),
    ]
}

pub async fn metrics(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    let authorised = match (&app.config.metrics_token, request.bearer_token()) {
        (Some(token), Some(presented)) => secret_matches(presented, token),
        _ => false,
    };
    if !authorised {
        return Err(ApiError::unauthorized());
    }
    let snapshot: Snapshot = app.db.call("keel_metrics", &json!({})).await?;
    let mut response = http::Response::new(bytes::Bytes::from(render(&families(&app, &snapshot))));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_render_with_escaped_labels_under_their_help_and_type() {
        let family = Family::new("keel_tasks", "gauge", "Tasks.")
            .sample(
                vec![("kind", "a\"b\\c\nd".into()), ("status", "queued".into())],
                3.0,
            )
            .sample(vec![], 0.5);
        assert_eq!(
            render(&[family]),
            "# HELP keel_tasks Tasks.\n# TYPE keel_tasks gauge\nkeel_tasks{kind=\"a\\\"b\\\\c\\nd\",status=\"queued\"} 3\nkeel_tasks 0.5\n"
        );
    }
}
