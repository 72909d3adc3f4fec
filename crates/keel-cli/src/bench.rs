//! `keel bench`: measures Keel end to end on this machine and prints a table.
//!
//! Runs an in-process server (every route plus the local model's
//! `/v1/embeddings`, as `keel serve` does) against `DATABASE_URL`, then:
//! 1. ingests the Cranfield collection (1,400 abstracts) through
//!    `PUT /api/documents` and embeds it through `/api/cron/embeddings`;
//! 2. scores the 225 Cranfield queries in each search mode (nDCG@10,
//!    Recall@10) beside the dataset's reference figures;
//! 3. grows one tenant to 10k and 100k chunks (Cranfield vectors plus small
//!    noise) and measures search latency (p50/p95 over HTTP) and the recall@10
//!    of the HNSW index against exact search.
//!
//! The database should be a fresh, migrated one (`scripts/bench` makes it).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use rand::Rng as _;
use serde_json::{Value, json};
use tokio_postgres::Client;

const ADMIN_KEY: &str = "bench-admin-key-0123456789abcdef0123456789";
const CRON_SECRET: &str = "bench-cron-secret-0123456789abcdef01234567";
const SCALES: [usize; 2] = [10_000, 100_000];
const INTAKE_DELIVERIES: usize = 2_000;
const INTAKE_CONCURRENCY: usize = 64;

struct Document {
    id: String,
    title: String,
    content: String,
}

/// Cranfield's `.I/.T/.A/.B/.W` records.
fn parse_documents(text: &str) -> Vec<Document> {
    text.split("\n.I ")
        .filter_map(|record| {
            let record = record.trim_start_matches(".I ");
            let (id, rest) = record.split_once('\n')?;
            let field = |tag: &str| -> String {
                rest.split(&format!(".{tag}\n"))
                    .nth(1)
                    .map(|s| s.split("\n.").next().unwrap_or_default())
                    .unwrap_or_default()
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            let title = field("T");
            let content = field("W");
            Some(Document {
                id: id.trim().to_owned(),
                content: if content.is_empty() {
                    title.clone()
                } else {
                    content
                },
                title,
            })
        })
        .collect()
}

/// Queries in file order: the judgments number them 1..=225 by position.
fn parse_queries(text: &str) -> Vec<String> {
    text.split(".W\n")
        .skip(1)
        .map(|q| {
            q.split("\n.I ")
                .next()
                .unwrap_or_default()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// query number → (document id → grade 1..4).
fn parse_judgments(text: &str) -> HashMap<usize, HashMap<String, u32>> {
    let mut judgments: HashMap<usize, HashMap<String, u32>> = HashMap::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let [query, _, document, grade] = fields[..]
            && let (Ok(query), Ok(grade)) = (query.parse(), grade.parse::<u32>())
            && grade > 0
        {
            judgments
                .entry(query)
                .or_default()
                .insert(document.to_owned(), grade);
        }
    }
    judgments
}

fn ndcg_at_10(ranked: &[String], grades: &HashMap<String, u32>) -> f64 {
    let gain = |grade: u32| 2f64.powi(grade as i32) - 1.0;
    let dcg: f64 = ranked
        .iter()
        .take(10)
        .enumerate()
        .map(|(i, doc)| gains_or_zero(grades, doc, gain) / (i as f64 + 2.0).log2())
        .sum();
    let mut ideal: Vec<u32> = grades.values().copied().collect();
    ideal.sort_unstable_by(|a, b| b.cmp(a));
    let idcg: f64 = ideal
        .iter()
        .take(10)
        .enumerate()
        .map(|(i, g)| gain(*g) / (i as f64 + 2.0).log2())
        .sum();
    if idcg == 0.0 { 0.0 } else { dcg / idcg }
}

fn gains_or_zero(grades: &HashMap<String, u32>, doc: &str, gain: impl Fn(u32) -> f64) -> f64 {
    grades.get(doc).map_or(0.0, |g| gain(*g))
}

fn recall_at_10(ranked: &[String], grades: &HashMap<String, u32>) -> f64 {
    if grades.is_empty() {
        return 0.0;
    }
    let found = ranked
        .iter()
        .take(10)
        .filter(|d| grades.contains_key(*d))
        .count();
    found as f64 / grades.len() as f64
}

fn percentile(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort();
    let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[index].as_secs_f64() * 1000.0
}

/// The result rows, also echoed to stderr as they are measured.
#[derive(Default)]
struct Table {
    rows: Vec<String>,
}

impl Table {
    fn push(&mut self, row: String) {
        eprintln!("{row}");
        self.rows.push(row);
    }
}

struct Bench {
    client: reqwest::Client,
    base: String,
    db: Client,
    model: Arc<keel_local::LocalModel>,
}

impl Bench {
    async fn post(&self, path: &str, key: &str, body: &Value) -> anyhow::Result<Value> {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(key)
            .json(body)
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await?;
        if !status.is_success() {
            bail!("{path} answered {status}: {body}");
        }
        Ok(body)
    }

    async fn create_tenant(&self, slug: &str) -> anyhow::Result<String> {
        let body = self
            .post(
                "/api/tenants",
                ADMIN_KEY,
                &json!({"name": slug, "slug": slug}),
            )
            .await?;
        Ok(body["api_key"].as_str().context("api_key")?.to_owned())
    }

    async fn run_cron(&self) -> anyhow::Result<Value> {
        let response = self
            .client
            .get(format!("{}/api/cron/embeddings", self.base))
            .bearer_auth(CRON_SECRET)
            .send()
            .await?;
        Ok(response.json().await?)
    }

    /// Document ids of a search, deduplicated by document, best first.
    async fn search_documents(
        &self,
        key: &str,
        query: &str,
        mode: &str,
    ) -> anyhow::Result<Vec<String>> {
        let body = self
            .post(
                "/api/search",
                key,
                &json!({"query": query, "mode": mode, "top_k": 20}),
            )
            .await?;
        let mut seen = HashSet::new();
        Ok(body["results"]
            .as_array()
            .context("results")?
            .iter()
            .filter_map(|r| r["document_id"].as_str().map(str::to_owned))
            .filter(|id| seen.insert(id.clone()))
            .collect())
    }
}

pub async fn run(dataset_dir: &Path, model_dir: &Path) -> anyhow::Result<()> {
    let database_url = std::env::var("DATABASE_URL").context("DATABASE_URL: the bench database")?;
    let read = |name: &str| -> anyhow::Result<String> {
        std::fs::read_to_string(dataset_dir.join(name)).with_context(|| format!("reading {name}"))
    };
    // The query file has CRLF line ends; the others LF.
    let documents = parse_documents(&read("cran.all.1400")?.replace("\r\n", "\n"));
    let queries = parse_queries(&read("cran.qry")?.replace("\r\n", "\n"));
    let judgments = parse_judgments(&read("QRelsCorrectedforTRECeval")?);
    if documents.len() != 1400 || queries.len() != 225 {
        bail!(
            "expected 1400 documents and 225 queries, found {} and {}",
            documents.len(),
            queries.len()
        );
    }

    eprintln!("loading the local model and starting an in-process server…");
    let model = Arc::new(keel_local::LocalModel::load(model_dir)?);
    keel_local::install(keel_local::LocalModel::load(model_dir)?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let vars: HashMap<String, String> = [
        ("DATABASE_URL", database_url.as_str()),
        ("ADMIN_API_KEY", ADMIN_KEY),
        ("CRON_SECRET", CRON_SECRET),
        ("ENCRYPTION_KEY", &"ab".repeat(32)),
        ("OPENAI_BASE_URL", &format!("{base}/v1")),
        ("EMBEDDING_MODEL", keel_local::MODEL_NAME),
        ("EMBEDDING_DIMENSIONS", "384"),
        ("LOG_LEVEL", "error"),
        ("DB_POOL_SIZE", "8"),
        ("CRON_TIME_BUDGET_MS", "600000"),
        // all-MiniLM-L6-v2 reads at most 256 word pieces: keep chunks within
        // them, and batches small enough for a CPU forward pass per request.
        ("CHUNK_TOKENS", "200"),
        ("CHUNK_OVERLAP_TOKENS", "30"),
        ("EMBEDDING_BATCH_SIZE", "64"),
        ("EMBEDDING_TIMEOUT_MS", "300000"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let app = keel::App::new(keel::config::Config::from_vars(&vars).map_err(|e| anyhow!("{e}"))?)?;
    let mut routes = keel::routes::all();
    routes.extend(keel_local::routes());
    tokio::spawn(keel::runtime::serve_local(
        listener,
        app,
        Arc::new(keel::http::Router::all(routes)),
        std::future::pending(),
    ));
    let db = keel::db::migrate::connect(&database_url, keel::app::tls_config()).await?;
    let bench = Bench {
        client: reqwest::Client::new(),
        base,
        db,
        model,
    };

    let mut table = Table::default();
    let cranfield = bench
        .create_tenant(&format!("cranfield-{}", rand::rng().random::<u32>()))
        .await?;

    // 1. Ingest and embed.
    eprintln!("ingesting {} documents…", documents.len());
    let started = Instant::now();
    for batch in documents.chunks(100) {
        let payload: Vec<Value> = batch
            .iter()
            .map(|d| json!({"id": d.id, "title": d.title, "content": d.content}))
            .collect();
        let response = bench
            .client
            .put(format!("{}/api/documents", bench.base))
            .bearer_auth(&cranfield)
            .json(&json!({"documents": payload}))
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("ingest failed: {}", response.text().await?);
        }
    }
    let ingest_time = started.elapsed();
    eprintln!("embedding…");
    let started = Instant::now();
    let (mut embedded, mut requests) = (0u64, 0u64);
    loop {
        let report = bench.run_cron().await?;
        embedded += report["embedded"].as_u64().unwrap_or(0);
        requests += report["provider_requests"].as_u64().unwrap_or(0);
        if report["remaining"].as_u64() == Some(0) {
            break;
        }
    }
    let embed_time = started.elapsed();
    let chunks = embedded.max(1);
    table.push(format!(
        "| ingest: documents → chunks | {} → {chunks} |",
        documents.len()
    ));
    table.push(format!(
        "| ingest: chunking and storing (PUT /api/documents) | {:.0} chunks/s |",
        chunks as f64 / ingest_time.as_secs_f64()
    ));
    table.push(format!(
        "| ingest: embedding (cron, local all-MiniLM-L6-v2, 2 cores) | {:.0} chunks/s |",
        chunks as f64 / embed_time.as_secs_f64()
    ));
    table.push(format!(
        "| ingest: embedding calls per 1000 chunks | {:.1} |",
        requests as f64 * 1000.0 / chunks as f64
    ));

    // 2. Retrieval quality on Cranfield.
    eprintln!("scoring 225 queries in 3 modes…");
    let reference = [
        ("keyword", "BM25 0.350"),
        ("vector", "MiniLM dense 0.368"),
        ("hybrid", "RRF 0.402"),
    ];
    for (mode, reference) in reference {
        let (mut ndcg, mut recall) = (0.0, 0.0);
        for (i, query) in queries.iter().enumerate() {
            let ranked = bench.search_documents(&cranfield, query, mode).await?;
            let grades = judgments.get(&(i + 1)).cloned().unwrap_or_default();
            ndcg += ndcg_at_10(&ranked, &grades);
            recall += recall_at_10(&ranked, &grades);
        }
        let n = queries.len() as f64;
        table.push(format!(
            "| Cranfield {mode}: nDCG@10 / Recall@10 (reference nDCG@10: {reference}) | {:.3} / {:.3} |",
            ndcg / n,
            recall / n
        ));
    }

    // 3. Webhook intake under concurrency, with zero loss checked.
    eprintln!("sending {INTAKE_DELIVERIES} signed webhook deliveries…");
    intake(&bench, &mut table).await?;

    // 4. Latency and HNSW recall at scale.
    let scale_tenant = bench
        .create_tenant(&format!("scale-{}", rand::rng().random::<u32>()))
        .await?;
    let query_vectors = bench.model.embed(&queries)?.0;
    let base_rows = bench
        .db
        .query(
            "select c.content, e.embedding::text from keel.embeddings e join keel.chunks c on c.id = e.chunk_id
             join keel.tenants t on t.id = c.tenant_id where t.slug like 'cranfield-%'",
            &[],
        )
        .await?;
    let base: Vec<(String, Vec<f32>)> = base_rows
        .iter()
        .map(|row| {
            let text: String = row.get(1);
            let vector = text
                .trim_matches(['[', ']'])
                .split(',')
                .filter_map(|x| x.parse().ok())
                .collect();
            (row.get(0), vector)
        })
        .collect();
    let mut inserted = 0;
    for scale in SCALES {
        eprintln!("growing a tenant to {scale} chunks…");
        insert_synthetic(&bench.db, &scale_tenant, &base, inserted, scale).await?;
        inserted = scale;
        eprintln!("measuring at {scale} chunks…");
        for mode in ["vector", "hybrid"] {
            // Warm the query-vector cache, then time the searches themselves.
            for query in &queries {
                bench.search_documents(&scale_tenant, query, mode).await?;
            }
            let mut samples = Vec::new();
            for query in &queries {
                let started = Instant::now();
                bench.search_documents(&scale_tenant, query, mode).await?;
                samples.push(started.elapsed());
            }
            table.push(format!(
                "| search {mode} at {}k chunks: p50 / p95 (HTTP, warm) | {:.1} ms / {:.1} ms |",
                scale / 1000,
                percentile(&mut samples, 0.5),
                percentile(&mut samples, 0.95)
            ));
        }
        let recall = hnsw_recall(&bench, &scale_tenant, &query_vectors).await?;
        table.push(format!(
            "| HNSW recall@10 vs exact at {}k chunks (m 16, ef_construction 64, ef_search 40, iterative scan) | {recall:.3} |",
            scale / 1000
        ));
    }

    println!(
        "\n| Keel bench ({}) | value |\n|---|---|",
        keel_local::MODEL_NAME
    );
    for row in table.rows {
        println!("{row}");
    }
    Ok(())
}

/// Signed deliveries through `POST /api/webhooks/{id}`, `INTAKE_CONCURRENCY`
/// at a time; every one must be stored once, with its processing task.
async fn intake(bench: &Bench, table: &mut Table) -> anyhow::Result<()> {
    use futures::StreamExt as _;
    let key = bench
        .create_tenant(&format!("intake-{}", rand::rng().random::<u32>()))
        .await?;
    let endpoint = bench
        .post("/api/webhooks/endpoints", &key, &json!({"source": "bench"}))
        .await?;
    let (id, secret) = (
        endpoint["id"].as_str().context("id")?.to_owned(),
        endpoint["secret"].as_str().context("secret")?.to_owned(),
    );
    let started = Instant::now();
    let results: Vec<anyhow::Result<Duration>> = futures::stream::iter(0..INTAKE_DELIVERIES)
        .map(|i| {
            let (id, secret) = (&id, &secret);
            async move {
                let body = json!({"type": "order.paid", "data": {"order": i}}).to_string();
                let webhook_id = format!("evt_{i}");
                let now = time::OffsetDateTime::now_utc().unix_timestamp();
                let sent = Instant::now();
                let response = bench
                    .client
                    .post(format!("{}/api/webhooks/{id}", bench.base))
                    .header("webhook-id", &webhook_id)
                    .header("webhook-timestamp", now.to_string())
                    .header(
                        "webhook-signature",
                        keel::webhooks::sign(secret, &webhook_id, now, body.as_bytes()),
                    )
                    .body(body)
                    .send()
                    .await?;
                anyhow::ensure!(
                    response.status().is_success(),
                    "delivery {i}: {}",
                    response.status()
                );
                Ok(sent.elapsed())
            }
        })
        .buffer_unordered(INTAKE_CONCURRENCY)
        .collect()
        .await;
    let elapsed = started.elapsed();
    let mut latencies = results.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    let stored: i64 = bench
        .db
        .query_one(
            "select count(distinct d.webhook_id) from keel.webhook_deliveries d
             join keel.tasks t on t.idempotency_key = 'delivery:' || d.id
             where d.endpoint_id = $1::text::uuid",
            &[&id],
        )
        .await?
        .get(0);
    table.push(format!(
        "| webhook intake: {INTAKE_DELIVERIES} signed deliveries, {INTAKE_CONCURRENCY} concurrent | {:.0} deliveries/s, p50 {:.1} ms, p99 {:.1} ms, stored with their task: {stored}/{INTAKE_DELIVERIES} |",
        INTAKE_DELIVERIES as f64 / elapsed.as_secs_f64(),
        percentile(&mut latencies, 0.5),
        percentile(&mut latencies, 0.99),
    ));
    anyhow::ensure!(
        stored as usize == INTAKE_DELIVERIES,
        "lost deliveries: {stored} of {INTAKE_DELIVERIES} stored"
    );
    Ok(())
}

/// Adds chunks `from..to` to the tenant: Cranfield chunks with their vectors
/// nudged by small noise, so the index sees realistic clusters.
async fn insert_synthetic(
    db: &Client,
    tenant_key: &str,
    base: &[(String, Vec<f32>)],
    from: usize,
    to: usize,
) -> anyhow::Result<()> {
    let key_hash = keel::auth::hash_key(tenant_key);
    let tenant: String = db
        .query_one(
            "select tenant_id::text from keel.api_keys where key_hash = $1",
            &[&key_hash],
        )
        .await?
        .get(0);
    // Bulk loads build HNSW faster than row-by-row inserts: drop, load, rebuild.
    db.batch_execute(
        "delete from keel.embedding_models;
         do $$ declare i text; begin
           for i in select indexname from pg_indexes where schemaname = 'keel' and indexname like 'embeddings_hnsw_%' loop
             execute format('drop index keel.%I', i);
           end loop; end $$;",
    )
    .await?;
    let mut rng = rand::rng();
    for start in (from..to).step_by(1000) {
        let end = (start + 1000).min(to);
        let document: String = db
            .query_one(
                "insert into keel.documents (tenant_id, external_id, title, content_hash)
                 values ($1::text::uuid, $2, 'synthetic', 'synthetic') returning id::text",
                &[&tenant, &format!("synthetic-{start}")],
            )
            .await?
            .get(0);
        let mut contents = Vec::new();
        let mut vectors = Vec::new();
        for i in start..end {
            let (content, vector) = &base[i % base.len()];
            let noisy: Vec<f32> = vector
                .iter()
                .map(|x| x + rng.random_range(-0.02..0.02))
                .collect();
            let norm = noisy.iter().map(|x| x * x).sum::<f32>().sqrt();
            contents.push(content.clone());
            vectors.push(format!(
                "[{}]",
                noisy
                    .iter()
                    .map(|x| (x / norm).to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ));
        }
        db.execute(
            "with new_chunks as (
               insert into keel.chunks (tenant_id, document_id, chunk_index, content, content_hash, token_count, search_vector)
               select $1::text::uuid, $2::text::uuid, i - 1, c, 'synthetic', 0, to_tsvector('english', c)
               from unnest($3::text[]) with ordinality as t (c, i)
               returning id, chunk_index)
             insert into keel.embeddings (chunk_id, model, dimensions, tenant_id, embedding)
             select n.id, 'all-MiniLM-L6-v2', 384, $1::text::uuid, v::extensions.vector
             from new_chunks n join unnest($4::text[]) with ordinality as u (v, i) on u.i - 1 = n.chunk_index",
            &[&tenant, &document, &contents, &vectors],
        )
        .await?;
    }
    db.batch_execute(
        "set maintenance_work_mem = '512MB';
         select keel.prepare_embedding_model('all-MiniLM-L6-v2', 384);
         analyze keel.embeddings; analyze keel.chunks;",
    )
    .await?;
    Ok(())
}

/// Mean overlap of the top 10 chunks from the HNSW path (`keel_search`,
/// vector mode) with the exact top 10 (sequential scan).
async fn hnsw_recall(
    bench: &Bench,
    tenant_key: &str,
    query_vectors: &[Vec<f32>],
) -> anyhow::Result<f64> {
    let key_hash = keel::auth::hash_key(tenant_key);
    let mut total = 0.0;
    for vector in query_vectors {
        let literal = format!(
            "[{}]",
            vector
                .iter()
                .map(f32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        );
        let approximate: Value = bench
            .db
            .query_one(
                "select public.keel_search($1)",
                &[
                    &json!({"key_hash": key_hash, "mode": "vector", "query": "x", "top_k": 10,
                          "model": "all-MiniLM-L6-v2", "dimensions": 384, "model_chosen": true,
                          "query_hash": "bench", "embedding": vector, "cache_hit": true,
                          "cache_ttl_seconds": 60}),
                ],
            )
            .await?
            .get(0);
        let approximate: HashSet<(String, i64)> = approximate["results"]
            .as_array()
            .context("results")?
            .iter()
            .map(|r| {
                (
                    r["document_id"].as_str().unwrap_or_default().to_owned(),
                    r["chunk_index"].as_i64().unwrap_or(-1),
                )
            })
            .collect();
        let transaction_sql = format!(
            "begin; set local enable_indexscan = off; set local enable_bitmapscan = off;
             set local search_path = keel, extensions, public;
             create temp table exact on commit drop as
               select d.external_id, c.chunk_index
               from keel.embeddings e join keel.chunks c on c.id = e.chunk_id join keel.documents d on d.id = c.document_id
               join keel.api_keys k on k.tenant_id = e.tenant_id
               where k.key_hash = '{key_hash}' and e.model = 'all-MiniLM-L6-v2' and e.dimensions = 384
               order by e.embedding::extensions.vector(384) <=> '{literal}'::extensions.vector limit 10;"
        );
        bench.db.batch_execute(&transaction_sql).await?;
        let exact = bench
            .db
            .query("select external_id, chunk_index::bigint from exact", &[])
            .await?;
        bench.db.batch_execute("commit").await?;
        let hits = exact
            .iter()
            .filter(|row| approximate.contains(&(row.get::<_, String>(0), row.get::<_, i64>(1))))
            .count();
        total += hits as f64 / exact.len().max(1) as f64;
    }
    Ok(total / query_vectors.len() as f64)
}

/// Locates the Cranfield dataset beside the repository (`../shared/datasets`).
pub fn default_dataset_dir() -> PathBuf {
    PathBuf::from("../shared/datasets/cranfield")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ndcg_rewards_graded_hits_at_the_top() {
        let grades: HashMap<String, u32> = [("a".to_owned(), 4), ("b".to_owned(), 1)].into();
        let perfect = ndcg_at_10(&["a".into(), "b".into()], &grades);
        let swapped = ndcg_at_10(&["b".into(), "a".into()], &grades);
        let missed = ndcg_at_10(&["x".into()], &grades);
        assert!((perfect - 1.0).abs() < 1e-9);
        assert!(swapped < perfect && swapped > 0.0);
        assert_eq!(missed, 0.0);
        assert_eq!(recall_at_10(&["a".into(), "x".into()], &grades), 0.5);
    }

    #[test]
    fn cranfield_records_parse() {
        let docs = parse_documents(
            ".I 1\n.T\nwing flow .\n.A\nx\n.B\ny\n.W\nwing flow .\nmore text .\n.I 2\n.T\nt2\n.W\nbody 2\n",
        );
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].id, "1");
        assert_eq!(docs[0].title, "wing flow .");
        assert_eq!(docs[0].content, "wing flow . more text .");
        let queries = parse_queries(".I 001\n.W\nwhat is lift .\n.I 002\n.W\nwhy .\n");
        assert_eq!(queries, ["what is lift .", "why ."]);
    }
}
