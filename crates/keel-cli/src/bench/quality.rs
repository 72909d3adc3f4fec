//! `keel bench quality`: every query of the collection through Keel's search
//! in each mode, scored against the judgments (metrics.rs).
//!
//! Each query is searched twice per mode: once as a client would
//! (`top_k` 20, the API's maximum; nDCG@10, Recall@10 and the latency come
//! from it) and once deep enough for 100 distinct documents (MAP@100,
//! Recall@100). Chunks are ranked, so a document ranks where its best chunk
//! does. Query vectors are computed once up front, so the latency is that of
//! a warm instance with the vector cached, measured at the database call.

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use serde_json::{Value, json};

use super::collection::Collection;
use super::metrics::{Grades, MeanScores, Scores, first_occurrences};
use super::{Harness, Ingested, percentile};

const MODES: [&str; 3] = ["keyword", "vector", "hybrid"];
/// What a client can ask for at most (`POST /api/search`).
const ANSWER_TOP_K: usize = 20;
const DEEP_DOCUMENTS: usize = 100;
/// Queries in flight while sweeping (scores only; latency is not measured).
const SWEEP_CONCURRENCY: usize = 4;

/// One mode's scores and latency over the collection.
struct ModeResult {
    scores: MeanScores,
    latencies: Vec<Duration>,
}

/// A set of settings tried against the defaults, on the modes they affect.
struct Experiment {
    title: &'static str,
    modes: &'static [&'static str],
    settings: Vec<(String, Value)>,
}

/// The tuning experiments of docs/search-quality.md: one knob of
/// `keel_search` (migrations/0006) at a time, the others at their defaults.
fn experiments() -> Vec<Experiment> {
    let values = |knob: &str, values: &[f64]| -> Vec<(String, Value)> {
        values
            .iter()
            .map(|v| (format!("{knob} {v}"), json!({ knob: v })))
            .collect()
    };
    vec![
        Experiment {
            title: "BM25 term-frequency saturation k1",
            modes: &["keyword", "hybrid"],
            settings: values("bm25_k1", &[0.9, 1.2, 1.5, 2.0]),
        },
        Experiment {
            title: "BM25 length normalisation b",
            modes: &["keyword", "hybrid"],
            settings: values("bm25_b", &[0.4, 0.6, 0.75, 0.9]),
        },
        Experiment {
            title: "weight of title words (BM25 term frequency)",
            modes: &["keyword", "hybrid"],
            settings: values("title_weight", &[1.0, 2.0, 3.0]),
        },
        Experiment {
            title: "reciprocal rank fusion constant k",
            modes: &["hybrid"],
            settings: values("rrf_k", &[5.0, 10.0, 20.0, 40.0, 60.0]),
        },
        Experiment {
            title: "weight of the keyword ranking in the fusion (vector 1)",
            modes: &["hybrid"],
            settings: values("keyword_weight", &[0.5, 0.75, 1.0, 1.5]),
        },
        Experiment {
            title: "candidates per ranking (at least top_k)",
            modes: &["hybrid"],
            settings: values("candidates", &[20.0, 40.0, 80.0, 160.0]),
        },
    ]
}

pub async fn run(
    harness: &Harness,
    collection: &Collection,
    ingested: &Ingested,
    sweep: bool,
) -> anyhow::Result<()> {
    let texts: Vec<String> = collection.queries.iter().map(|q| q.text.clone()).collect();
    eprintln!("embedding {} queries…", texts.len());
    let started = Instant::now();
    let vectors = harness.embed_queries(&texts).await?;
    let query_embed_time = started.elapsed();
    let no_grades = Grades::new();
    let grades: Vec<&Grades> = collection
        .queries
        .iter()
        .map(|q| collection.judgments.get(&q.id).unwrap_or(&no_grades))
        .collect();
    // One query: the answer (timed) and the deep ranking, then its scores.
    let score_query = async |i: usize, mode: &str, tuning: &Value| {
        let (query, vector) = (&texts[i], &vectors[i]);
        let started = Instant::now();
        let answer = harness
            .search(&ingested.key, query, vector, mode, ANSWER_TOP_K, tuning)
            .await?;
        let latency = started.elapsed();
        let mut top_k = ANSWER_TOP_K * 10;
        let deep = loop {
            let results = harness
                .search(&ingested.key, query, vector, mode, top_k, tuning)
                .await?;
            let documents = document_ranking(&results);
            if documents.len() >= DEEP_DOCUMENTS || results.len() < top_k {
                break documents;
            }
            top_k *= 2;
        };
        anyhow::Ok((
            Scores::of(&document_ranking(&answer), &deep, grades[i]),
            latency,
        ))
    };
    // Timed runs send one query at a time; sweeps, several.
    let evaluate = async |mode: &str, tuning: &Value, concurrency: usize| {
        let outcomes: Vec<anyhow::Result<(Option<Scores>, Duration)>> =
            futures::stream::iter(0..texts.len())
                .map(|i| score_query(i, mode, tuning))
                .buffered(concurrency)
                .collect()
                .await;
        let mut scores = Vec::new();
        let mut latencies = Vec::new();
        for outcome in outcomes {
            let (score, latency) = outcome?;
            scores.extend(score);
            latencies.push(latency);
        }
        anyhow::Ok(ModeResult {
            scores: scores.into_iter().collect(),
            latencies,
        })
    };

    eprintln!("scoring {} queries in each mode…", texts.len());
    let mut defaults = Vec::new();
    for mode in MODES {
        defaults.push((mode, evaluate(mode, &json!({}), 1).await?));
    }
    let scored = defaults[0].1.scores.queries;
    let chunks = ingested.chunks.max(1) as f64;
    println!(
        "\n## {}: {} documents → {} chunks, {} queries ({} with relevant judgments, scored)\n",
        collection.name,
        collection.documents.len(),
        ingested.chunks,
        texts.len(),
        scored
    );
    println!("| mode | nDCG@10 | MAP@100 | Recall@10 | Recall@100 | search p50 | search p95 |");
    println!("|---|---|---|---|---|---|---|");
    for (mode, result) in &mut defaults {
        let s = result.scores.means;
        println!(
            "| {mode} | {:.3} | {:.3} | {:.3} | {:.3} | {:.1} ms | {:.1} ms |",
            s.ndcg_at_10,
            s.map_at_100,
            s.recall_at_10,
            s.recall_at_100,
            percentile(&mut result.latencies, 0.5),
            percentile(&mut result.latencies, 0.95),
        );
    }
    println!(
        "\n| ingest | time | rate |\n|---|---|---|\n| chunking and storing (PUT /api/documents) | {:.1} s | {:.0} chunks/s |\n| embedding ({} chunks, {} provider requests) | {:.1} s | {:.1} chunks/s |\n| query embedding ({} queries) | {:.1} s | {:.1} queries/s |",
        ingested.store_time.as_secs_f64(),
        chunks / ingested.store_time.as_secs_f64(),
        ingested.embedded,
        ingested.provider_requests,
        ingested.embed_time.as_secs_f64(),
        ingested.embedded as f64 / ingested.embed_time.as_secs_f64().max(1e-9),
        texts.len(),
        query_embed_time.as_secs_f64(),
        texts.len() as f64 / query_embed_time.as_secs_f64(),
    );

    if sweep {
        for experiment in experiments() {
            eprintln!("experiment: {}…", experiment.title);
            println!(
                "\n### {}\n\n| setting | mode | nDCG@10 | MAP@100 | Recall@10 | Recall@100 |\n|---|---|---|---|---|---|",
                experiment.title
            );
            for (label, tuning) in &experiment.settings {
                for mode in experiment.modes {
                    let s = evaluate(mode, tuning, SWEEP_CONCURRENCY)
                        .await?
                        .scores
                        .means;
                    println!(
                        "| {label} | {mode} | {:.3} | {:.3} | {:.3} | {:.3} |",
                        s.ndcg_at_10, s.map_at_100, s.recall_at_10, s.recall_at_100
                    );
                }
            }
        }
    }
    Ok(())
}

/// Document ids of search results, each once, best first.
fn document_ranking(results: &[Value]) -> Vec<String> {
    first_occurrences(results.iter().filter_map(|r| r["document_id"].as_str()))
}
