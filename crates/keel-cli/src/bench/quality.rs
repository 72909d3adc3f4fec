//! `keel bench quality`: every query of each collection through Keel's
//! search in each mode, scored against the judgments (metrics.rs), per
//! collection and as the mean over the collections, beside the reference
//! figures of each collection's README.
//!
//! Each query is searched twice per mode: once as a client would
//! (`top_k` 20, the API's maximum; nDCG@10, Recall@10 and the latency come
//! from it) and once deep enough for 100 distinct documents (MAP@100,
//! Recall@100). Chunks are ranked, so a document ranks where its best chunk
//! does. Query vectors are computed once up front, so the latency is that of
//! a warm instance with the vector cached, measured at the database call.
//! Sweeps score nDCG@10 only (the answer), several queries at a time.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use serde_json::{Map, Value, json};

use super::collection::Collection;
use super::metrics::{Grades, MeanScores, Scores, first_occurrences, ndcg};
use super::reference::{Bm25, Params, Unit};
use super::{Harness, Ingested, percentile};

pub const MODES: [&str; 3] = ["keyword", "vector", "hybrid"];
/// What a client can ask for at most (`POST /api/search`).
const ANSWER_TOP_K: usize = 20;
const DEEP_DOCUMENTS: usize = 100;
/// Queries in flight while sweeping (scores only; latency is not measured).
const SWEEP_CONCURRENCY: usize = 4;

/// What `keel bench quality` scores besides the defaults.
#[derive(Debug, Default)]
pub struct Plan {
    /// Knobs of `keel_search` applied to every search (`--set`).
    pub base: Map<String, Value>,
    /// The tuning experiments of docs/search-quality.md (`--sweep`).
    pub sweep: bool,
    /// Ad hoc experiments (`--try KNOB=V1,V2`).
    pub trials: Vec<(String, Vec<Value>)>,
    /// Modes the experiments score.
    pub modes: Vec<String>,
    /// Compare the keyword ranking with the reference BM25 (`--reference`).
    pub reference: bool,
}

/// One collection, ingested, with its query vectors.
pub struct Loaded {
    pub collection: Collection,
    pub ingested: Ingested,
    pub texts: Vec<String>,
    pub vectors: Vec<Vec<f32>>,
    grades: Vec<Grades>,
    query_embed_time: Duration,
}

impl Loaded {
    pub async fn new(
        harness: &Harness,
        collection: Collection,
        ingested: Ingested,
    ) -> anyhow::Result<Self> {
        let texts: Vec<String> = collection.queries.iter().map(|q| q.text.clone()).collect();
        eprintln!("{}: embedding {} queries…", collection.name, texts.len());
        let started = Instant::now();
        let vectors = harness.embed_queries(&texts).await?;
        let query_embed_time = started.elapsed();
        let grades = collection
            .queries
            .iter()
            .map(|q| collection.judgments.get(&q.id).cloned().unwrap_or_default())
            .collect();
        Ok(Self {
            collection,
            ingested,
            texts,
            vectors,
            grades,
            query_embed_time,
        })
    }
}

/// One mode's scores (per query, `None` without judgments) and latency.
struct ModeResult {
    per_query: Vec<Option<Scores>>,
    latencies: Vec<Duration>,
}

impl ModeResult {
    fn means(&self) -> MeanScores {
        self.per_query.iter().flatten().copied().collect()
    }
}

/// A set of settings tried against the defaults, on the modes they affect.
struct Experiment {
    title: String,
    modes: Vec<String>,
    settings: Vec<(String, Value)>,
}

fn settings(knob: &str, values: &[Value]) -> Vec<(String, Value)> {
    values
        .iter()
        .map(|v| (format!("{knob} {v}"), json!({ knob: v })))
        .collect()
}

/// The tuning experiments of docs/search-quality.md: one knob of
/// `keel_search` (migrations/0009) at a time, the others at their defaults.
fn experiments() -> Vec<Experiment> {
    let numbers = |knob: &str, values: &[f64]| -> Vec<(String, Value)> {
        settings(knob, &values.iter().map(|v| json!(v)).collect::<Vec<_>>())
    };
    let modes = |modes: &[&str]| modes.iter().map(|m| (*m).to_owned()).collect();
    vec![
        Experiment {
            title: "BM25 term-frequency saturation k1".into(),
            modes: modes(&["keyword", "hybrid"]),
            settings: numbers("bm25_k1", &[0.9, 1.2, 1.5, 2.0]),
        },
        Experiment {
            title: "BM25 length normalisation b".into(),
            modes: modes(&["keyword", "hybrid"]),
            settings: numbers("bm25_b", &[0.3, 0.4, 0.6, 0.75, 0.9]),
        },
        Experiment {
            title: "BM25 query-term saturation k3 (0: a repeated query word counts once)".into(),
            modes: modes(&["keyword", "hybrid"]),
            settings: numbers("bm25_k3", &[0.0, 1.0, 3.0, 10.0]),
        },
        Experiment {
            title: "weight of title words (BM25 term frequency)".into(),
            modes: modes(&["keyword", "hybrid"]),
            settings: numbers("title_weight", &[1.0, 2.0]),
        },
        Experiment {
            title: "reciprocal rank fusion constant k".into(),
            modes: modes(&["hybrid"]),
            settings: numbers("rrf_k", &[5.0, 10.0, 20.0, 40.0, 60.0]),
        },
        Experiment {
            title: "weight of the keyword ranking in the fusion (vector 1)".into(),
            modes: modes(&["hybrid"]),
            settings: numbers("keyword_weight", &[0.5, 0.75, 1.0, 1.5]),
        },
        Experiment {
            title: "candidates per ranking (at least top_k)".into(),
            modes: modes(&["hybrid"]),
            settings: numbers("candidates", &[20.0, 40.0, 80.0, 160.0]),
        },
        Experiment {
            title: "dense feedback chunks (pseudo-relevance feedback, migrations/0021)".into(),
            modes: modes(&["keyword", "vector", "hybrid"]),
            settings: numbers("feedback_chunks", &[0.0, 3.0, 5.0, 10.0]),
        },
        Experiment {
            title: "weight of the feedback chunks' mean vector in the query vector".into(),
            modes: modes(&["vector", "hybrid"]),
            settings: numbers("feedback_vector_weight", &[0.0, 0.25, 0.5, 0.75]),
        },
        Experiment {
            title: "keyword weight when choosing the feedback chunks (migrations/0022)".into(),
            modes: modes(&["hybrid"]),
            settings: numbers("feedback_keyword_weight", &[0.5, 0.75, 1.0, 1.25, 1.5]),
        },
        Experiment {
            title: "feedback words added to the keyword query (migrations/0031)".into(),
            modes: modes(&["keyword", "hybrid"]),
            settings: numbers("feedback_terms", &[0.0, 5.0, 10.0, 20.0]),
        },
        Experiment {
            title: "keyword ranking's best chunks the feedback words come from".into(),
            modes: modes(&["hybrid"]),
            settings: numbers("keyword_feedback_chunks", &[0.0, 2.0, 3.0, 4.0, 6.0]),
        },
        Experiment {
            title: "postings read to find those chunks".into(),
            modes: modes(&["hybrid"]),
            settings: numbers(
                "keyword_feedback_postings",
                &[500.0, 1000.0, 2000.0, 5000.0],
            ),
        },
        Experiment {
            title: "weight of a feedback word (relative to a query word)".into(),
            modes: modes(&["hybrid"]),
            settings: numbers("feedback_term_weight", &[0.0, 0.25, 0.5, 1.0]),
        },
    ]
}

/// Scores one mode on one collection; `deep` adds the deep ranking
/// (MAP@100, Recall@100), else those read as 0.
async fn evaluate(
    harness: &Harness,
    loaded: &Loaded,
    mode: &str,
    tuning: &Value,
    concurrency: usize,
    deep: bool,
) -> anyhow::Result<ModeResult> {
    let key = &loaded.ingested.key;
    let score_query = async |i: usize| {
        let (query, vector) = (&loaded.texts[i], &loaded.vectors[i]);
        let started = Instant::now();
        let answer = harness
            .search(key, query, vector, mode, ANSWER_TOP_K, tuning)
            .await?;
        let latency = started.elapsed();
        let answer = document_ranking(&answer);
        let mut deep_ranking = Vec::new();
        let mut top_k = ANSWER_TOP_K * 10;
        if deep {
            loop {
                let results = harness
                    .search(key, query, vector, mode, top_k, tuning)
                    .await?;
                deep_ranking = document_ranking(&results);
                if deep_ranking.len() >= DEEP_DOCUMENTS || results.len() < top_k {
                    break;
                }
                top_k *= 2;
            }
        }
        anyhow::Ok((
            Scores::of(&answer, &deep_ranking, &loaded.grades[i]),
            latency,
        ))
    };
    let outcomes: Vec<anyhow::Result<(Option<Scores>, Duration)>> =
        futures::stream::iter(0..loaded.texts.len())
            .map(score_query)
            .buffered(concurrency)
            .collect()
            .await;
    let mut per_query = Vec::new();
    let mut latencies = Vec::new();
    for outcome in outcomes {
        let (score, latency) = outcome?;
        per_query.push(score);
        latencies.push(latency);
    }
    Ok(ModeResult {
        per_query,
        latencies,
    })
}

/// `tuning` with the base knobs under it.
fn with_base(base: &Map<String, Value>, tuning: &Value) -> Value {
    let mut merged = base.clone();
    if let Some(tuning) = tuning.as_object() {
        merged.extend(tuning.clone());
    }
    Value::Object(merged)
}

fn reference_cell(value: Option<f64>) -> String {
    value.map_or_else(|| "–".to_owned(), |v| format!("{v:.3}"))
}

pub async fn run(harness: &Harness, sets: &[Loaded], plan: &Plan) -> anyhow::Result<()> {
    let defaults = with_base(&plan.base, &json!({}));
    // (collection, mode) → result at the defaults.
    let mut results: Vec<Vec<ModeResult>> = Vec::new();
    for loaded in sets {
        eprintln!(
            "{}: scoring {} queries in each mode…",
            loaded.collection.name,
            loaded.texts.len()
        );
        let mut modes = Vec::new();
        for mode in MODES {
            modes.push(evaluate(harness, loaded, mode, &defaults, 1, true).await?);
        }
        print_collection(loaded, &mut modes);
        results.push(modes);
    }
    if !plan.base.is_empty() {
        println!("\nAll searches with {}.", Value::Object(plan.base.clone()));
    }
    print_summary(sets, &results);

    if plan.reference {
        for (loaded, modes) in sets.iter().zip(&results) {
            compare_with_reference(harness, loaded, &modes[0]).await?;
        }
    }

    let mut experiments = if plan.sweep {
        experiments()
    } else {
        Vec::new()
    };
    for (knob, values) in &plan.trials {
        experiments.push(Experiment {
            title: knob.clone(),
            modes: Vec::new(),
            settings: settings(knob, values),
        });
    }
    for mut experiment in experiments {
        if !plan.modes.is_empty() {
            experiment.modes = plan.modes.clone();
        } else if experiment.modes.is_empty() {
            experiment.modes = vec!["keyword".into(), "hybrid".into()];
        }
        eprintln!("experiment: {}…", experiment.title);
        let names: Vec<&str> = sets.iter().map(|s| s.collection.name.as_str()).collect();
        println!(
            "\n### {} (nDCG@10)\n\n| setting | mode | {} | mean |\n|---|---|{}---|",
            experiment.title,
            names.join(" | "),
            "---|".repeat(names.len())
        );
        for (label, tuning) in &experiment.settings {
            let tuning = with_base(&plan.base, tuning);
            for mode in &experiment.modes {
                let mut cells = Vec::new();
                for loaded in sets {
                    let result =
                        evaluate(harness, loaded, mode, &tuning, SWEEP_CONCURRENCY, false).await?;
                    cells.push(result.means().means.ndcg_at_10);
                }
                let mean = cells.iter().sum::<f64>() / cells.len().max(1) as f64;
                let cells: Vec<String> = cells.iter().map(|c| format!("{c:.3}")).collect();
                println!("| {label} | {mode} | {} | {mean:.3} |", cells.join(" | "));
            }
        }
    }
    Ok(())
}

fn print_collection(loaded: &Loaded, modes: &mut [ModeResult]) {
    let (collection, ingested) = (&loaded.collection, &loaded.ingested);
    let scored = modes[0].means().queries;
    let chunks = ingested.chunks.max(1) as f64;
    println!(
        "\n## {}: {} documents → {} chunks, {} queries ({} with relevant judgments, scored)\n",
        collection.name,
        collection.documents.len(),
        ingested.chunks,
        loaded.texts.len(),
        scored
    );
    println!(
        "| mode | nDCG@10 | reference | MAP@100 | Recall@10 | Recall@100 | search p50 | search p95 |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let references = [
        collection.references.bm25,
        collection.references.dense,
        collection.references.rrf,
    ];
    for ((mode, result), reference) in MODES.iter().zip(modes.iter_mut()).zip(references) {
        let s = result.means().means;
        println!(
            "| {mode} | {:.3} | {} | {:.3} | {:.3} | {:.3} | {:.1} ms | {:.1} ms |",
            s.ndcg_at_10,
            reference_cell(reference),
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
        loaded.texts.len(),
        loaded.query_embed_time.as_secs_f64(),
        loaded.texts.len() as f64 / loaded.query_embed_time.as_secs_f64(),
    );
}

/// nDCG@10 per collection and mode beside the references, and the mean.
fn print_summary(sets: &[Loaded], results: &[Vec<ModeResult>]) {
    println!(
        "\n## nDCG@10 per collection (reference in brackets)\n\n| collection | keyword (BM25) | vector (dense) | hybrid (RRF k 60) |\n|---|---|---|---|"
    );
    let mut sums = [0.0; 3];
    let mut reference_sums = [Some(0.0); 3];
    for (loaded, modes) in sets.iter().zip(results) {
        let r = &loaded.collection.references;
        let references = [r.bm25, r.dense, r.rrf];
        let mut cells = Vec::new();
        for i in 0..3 {
            let value = modes[i].means().means.ndcg_at_10;
            sums[i] += value;
            reference_sums[i] = reference_sums[i].zip(references[i]).map(|(a, b)| a + b);
            cells.push(format!("{value:.3} ({})", reference_cell(references[i])));
        }
        println!("| {} | {} |", loaded.collection.name, cells.join(" | "));
    }
    let n = sets.len().max(1) as f64;
    let cells: Vec<String> = (0..3)
        .map(|i| {
            format!(
                "**{:.3}** ({})",
                sums[i] / n,
                reference_cell(reference_sums[i].map(|s| s / n))
            )
        })
        .collect();
    println!("| mean | {} |", cells.join(" | "));
}

/// Keel's keyword ranking beside a plain BM25 (reference.rs) over the same
/// chunks and over whole documents, query by query.
async fn compare_with_reference(
    harness: &Harness,
    loaded: &Loaded,
    keel: &ModeResult,
) -> anyhow::Result<()> {
    let db = &harness.db;
    // Keel's chunks as Postgres analysed them: occurrences per lexeme, and
    // how many of them are the title's (weight A).
    let rows = db
        .query(
            "select c.id, d.external_id, l.lexeme,
                    coalesce(cardinality(l.positions), 1)::int4,
                    (select count(*) from unnest(l.weights) w where w = 'A')::int4
             from keel.chunks c
             join keel.documents d on d.id = c.document_id
             cross join unnest(c.search_vector) l
             where c.tenant_id = $1::text::uuid
             order by c.id",
            &[&loaded.ingested.tenant_id],
        )
        .await?;
    // (document, [(lexeme, occurrences, of which in the title)]) per chunk.
    type Terms = Vec<(String, u32, u32)>;
    let mut chunks: Vec<(String, Terms)> = Vec::new();
    let mut last = None;
    for row in rows {
        let id: i64 = row.get(0);
        if last != Some(id) {
            chunks.push((row.get(1), Vec::new()));
            last = Some(id);
        }
        let (count, title): (i32, i32) = (row.get(3), row.get(4));
        chunks
            .last_mut()
            .expect("pushed")
            .1
            .push((row.get(2), count as u32, title as u32));
    }
    let chunk_units = |with_title: bool, distinct_length: bool| -> Vec<Unit> {
        chunks
            .iter()
            .map(|(document, terms)| {
                let mut unit = Unit::new(
                    document,
                    terms.iter().filter_map(|(t, n, title)| {
                        let n = if with_title { *n } else { n - title };
                        (n > 0).then(|| (t.clone(), n))
                    }),
                );
                if distinct_length {
                    unit.length = unit.terms.len() as u32;
                }
                unit
            })
            .collect()
    };
    // Whole documents: title and text, as the README's BM25 indexes them.
    let collection = &loaded.collection;
    let bodies: Vec<String> = collection
        .documents
        .iter()
        .map(|d| {
            if d.title.is_empty() || d.content == d.title {
                d.content.clone()
            } else {
                format!("{} {}", d.title, d.content)
            }
        })
        .collect();
    let analysed = analyse(harness, &bodies).await?;
    let document_units: Vec<Unit> = collection
        .documents
        .iter()
        .zip(analysed)
        .map(|(d, terms)| Unit::new(&d.id, terms))
        .collect();
    let queries: Vec<Vec<String>> = analyse(harness, &loaded.texts)
        .await?
        .into_iter()
        .map(|terms| {
            terms
                .into_iter()
                .flat_map(|(t, n)| std::iter::repeat_n(t, n as usize))
                .collect()
        })
        .collect();

    let keel_params = Params {
        k1: 1.2,
        b: 0.75,
        query_counts: false,
    };
    let readme_params = Params {
        k1: 0.9,
        b: 0.4,
        query_counts: false,
    };
    let counted = |params: Params| Params {
        query_counts: true,
        ..params
    };
    let variants: Vec<(&str, Bm25, Params)> = vec![
        (
            "chunks as Keel stores them (title in each), length = distinct lexemes, k1 1.2 b 0.75 (Keel's formula)",
            Bm25::new(chunk_units(true, true)),
            keel_params,
        ),
        (
            "chunks as Keel stores them, length = term count, k1 1.2 b 0.75",
            Bm25::new(chunk_units(true, false)),
            keel_params,
        ),
        (
            "chunk text without the title, k1 1.2 b 0.75",
            Bm25::new(chunk_units(false, false)),
            keel_params,
        ),
        (
            "chunks as Keel stores them, length = term count, k1 0.9 b 0.4",
            Bm25::new(chunk_units(true, false)),
            readme_params,
        ),
        (
            "whole documents (title + text), k1 1.2 b 0.75",
            Bm25::new(document_units.clone()),
            keel_params,
        ),
        (
            "whole documents (title + text), k1 0.9 b 0.4 (the README's BM25)",
            Bm25::new(document_units.clone()),
            readme_params,
        ),
        (
            "whole documents, k1 0.9 b 0.4, repeated query words count again",
            Bm25::new(document_units),
            counted(readme_params),
        ),
        (
            "chunks as Keel stores them, length = term count, k1 1.2 b 0.75, repeated query words count again",
            Bm25::new(chunk_units(true, false)),
            counted(keel_params),
        ),
    ];
    let keel_ndcg: Vec<Option<f64>> = keel
        .per_query
        .iter()
        .map(|s| s.map(|s| s.ndcg_at_10))
        .collect();
    let mean = |values: &[Option<f64>]| {
        let scored: Vec<f64> = values.iter().flatten().copied().collect();
        scored.iter().sum::<f64>() / scored.len().max(1) as f64
    };
    println!(
        "\n### {}: keyword ranking beside a reference BM25 (nDCG@10)\n\n| ranking | nDCG@10 | queries better than Keel | worse |\n|---|---|---|---|\n| Keel keyword | {:.3} | | |",
        collection.name,
        mean(&keel_ndcg)
    );
    let mut first_variant = Vec::new();
    for (i, (label, index, params)) in variants.iter().enumerate() {
        let per_query: Vec<Option<f64>> = queries
            .iter()
            .zip(&loaded.grades)
            .map(|(query, grades)| {
                (!grades.is_empty())
                    .then(|| ndcg(&index.rank_documents(query, *params), grades, 10))
            })
            .collect();
        let (better, worse) =
            keel_ndcg
                .iter()
                .zip(&per_query)
                .fold((0, 0), |(better, worse), (keel, reference)| {
                    match (keel, reference) {
                        (Some(k), Some(r)) if r - k > 1e-6 => (better + 1, worse),
                        (Some(k), Some(r)) if k - r > 1e-6 => (better, worse + 1),
                        _ => (better, worse),
                    }
                });
        println!("| {label} | {:.3} | {better} | {worse} |", mean(&per_query));
        if i == 0 {
            first_variant = per_query;
        }
    }
    // Where Keel and its own formula disagree most, for reading by hand.
    let mut gaps: Vec<(f64, usize)> = keel_ndcg
        .iter()
        .zip(&first_variant)
        .enumerate()
        .filter_map(|(i, (k, r))| Some(((r.as_ref()? - k.as_ref()?).abs(), i)))
        .filter(|(gap, _)| *gap > 1e-6)
        .collect();
    gaps.sort_by(|a, b| b.0.total_cmp(&a.0));
    for (gap, i) in gaps.iter().take(5) {
        eprintln!(
            "{} query {} (|Δ nDCG@10| {gap:.3} vs Keel's formula): {}",
            collection.name, collection.queries[*i].id, loaded.texts[*i]
        );
    }
    Ok(())
}

/// Each text's lexemes and their occurrences, as `to_tsvector('english', …)`
/// finds them (Keel's analysis).
async fn analyse(harness: &Harness, texts: &[String]) -> anyhow::Result<Vec<Vec<(String, u32)>>> {
    let rows = harness
        .db
        .query(
            "select t.i::int4, l.lexeme, coalesce(cardinality(l.positions), 1)::int4
             from unnest($1::text[]) with ordinality t (body, i)
             cross join unnest(to_tsvector('english', t.body)) l",
            &[&texts],
        )
        .await?;
    let mut terms: HashMap<usize, Vec<(String, u32)>> = HashMap::new();
    for row in rows {
        let (i, count): (i32, i32) = (row.get(0), row.get(2));
        terms
            .entry(i as usize - 1)
            .or_default()
            .push((row.get(1), count as u32));
    }
    Ok((0..texts.len())
        .map(|i| terms.remove(&i).unwrap_or_default())
        .collect())
}

/// Document ids of search results, each once, best first.
fn document_ranking(results: &[Value]) -> Vec<String> {
    first_occurrences(results.iter().filter_map(|r| r["document_id"].as_str()))
}
