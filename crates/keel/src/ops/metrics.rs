//! Prometheus text exposition (format 0.0.4) of Keel's state, computed from
//! the database in one call (`keel_metrics`) so every instance reports the
//! same numbers.

use std::collections::HashMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::ratelimit::Scope;
use crate::platform::config::Config;
use crate::platform::db::SqlFunction;

/// `keel_metrics`: counts and counters across tenants.
#[derive(Serialize)]
pub struct KeelMetrics {}

#[derive(Deserialize)]
pub struct Snapshot {
    tenants: u64,
    documents: u64,
    chunks: u64,
    embeddings: Vec<Row>,
    embedding_jobs: Vec<Row>,
    tasks: Vec<Row>,
    webhook_deliveries: Vec<Row>,
    counters: HashMap<String, f64>,
}

impl SqlFunction for KeelMetrics {
    const NAME: &'static str = "keel_metrics";
    type Output = Snapshot;
}

/// One grouped count; which labels it carries depends on its group.
#[derive(Deserialize)]
struct Row {
    #[serde(default)]
    model: String,
    #[serde(default)]
    dimensions: u32,
    #[serde(default)]
    state: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    status: String,
    count: f64,
}

/// One metric family: its samples share a name, help and type.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    samples: Vec<Sample>,
}

/// One sample: its name suffix (a histogram's `_bucket`, `_sum`,
/// `_count`), labels and value.
type Sample = (&'static str, Vec<(&'static str, String)>, f64);

impl Family {
    fn new(name: &'static str, kind: &'static str, help: &'static str) -> Self {
        Self {
            name,
            help,
            kind,
            samples: Vec::new(),
        }
    }

    fn sample(self, labels: Vec<(&'static str, String)>, value: f64) -> Self {
        self.sample_of("", labels, value)
    }

    fn sample_of(
        mut self,
        suffix: &'static str,
        labels: Vec<(&'static str, String)>,
        value: f64,
    ) -> Self {
        self.samples.push((suffix, labels, value));
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
        for (suffix, labels, value) in &family.samples {
            let labels: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let labels = if labels.is_empty() {
                String::new()
            } else {
                format!("{{{}}}", labels.join(","))
            };
            let _ = writeln!(out, "{}{suffix}{labels} {value}", family.name);
        }
    }
    out
}

/// The exposition text of `snapshot`, with this instance's build in `keel_info`.
pub fn exposition(config: &Config, snapshot: &Snapshot) -> String {
    render(&families(config, snapshot))
}

fn families(config: &Config, snapshot: &Snapshot) -> Vec<Family> {
    let counter = |name: &str| snapshot.counters.get(name).copied().unwrap_or(0.0);
    let per_model = |rows: &[Row], family: Family, with_state: bool| {
        rows.iter().fold(family, |family, row| {
            let mut labels = vec![
                ("model", row.model.clone()),
                ("dimensions", row.dimensions.to_string()),
            ];
            if with_state {
                labels.push(("state", row.state.clone()));
            }
            family.sample(labels, row.count)
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
                ("version", config.version.to_owned()),
                ("commit", config.commit.clone()),
                ("environment", config.environment.as_str().to_owned()),
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
                    vec![("kind", row.kind.clone()), ("status", row.status.clone())],
                    row.count,
                )
            },
        ),
        snapshot.webhook_deliveries.iter().fold(
            Family::new(
                "keel_webhook_deliveries",
                "gauge",
                "Stored webhook deliveries by status.",
            ),
            |family, row| family.sample(vec![("status", row.status.clone())], row.count),
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
        .sample(
            vec![("outcome", "deferred".into())],
            counter("tasks_deferred"),
        )
        .sample(vec![("outcome", "dead".into())], counter("tasks_dead")),
        Family::new(
            "keel_chat_tokens_total",
            "counter",
            "Chat model tokens spent answering, by kind.",
        )
        .sample(
            vec![("kind", "prompt".into())],
            counter("chat_tokens_prompt"),
        )
        .sample(
            vec![("kind", "completion".into())],
            counter("chat_tokens_completion"),
        ),
        Family::new(
            "keel_chat_answers_total",
            "counter",
            "Answers given, complete or not.",
        )
        .sample(vec![], counter("chat_answers")),
        time_to_first_token(&counter),
        [
            Scope::Search,
            Scope::Chat,
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

/// Buckets of the time-to-first-token histogram, in seconds, as
/// `keel_chat_observe` (migrations/0016) names its counters.
const TTFT_BUCKETS: [&str; 7] = ["0.1", "0.25", "0.5", "1", "2.5", "5", "10"];

/// From a chat request's arrival to the first token of its answer.
fn time_to_first_token(counter: &dyn Fn(&str) -> f64) -> Family {
    let count = counter("chat_ttft_count");
    let family = Family::new(
        "keel_chat_time_to_first_token_seconds",
        "histogram",
        "Seconds from a chat request to the first token of its answer.",
    );
    TTFT_BUCKETS
        .iter()
        .fold(family, |family, bucket| {
            family.sample_of(
                "_bucket",
                vec![("le", (*bucket).to_owned())],
                counter(&format!("chat_ttft_le_{bucket}")),
            )
        })
        .sample_of("_bucket", vec![("le", "+Inf".to_owned())], count)
        .sample_of("_sum", vec![], counter("chat_ttft_sum_ms") / 1000.0)
        .sample_of("_count", vec![], count)
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
