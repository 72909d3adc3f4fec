//! `keel bench load`: webhook intake under concurrency (zero loss checked),
//! then every judged collection copied into one tenant (real, distinct
//! chunks and their vectors) to measure search per mode through the HTTP API:
//! latency one search at a time (warm, query vectors cached; the client's
//! clock and the server's `took_ms`) and capacity with `CLIENTS` concurrent
//! clients; the cold paths of the release `documents` and `search` binaries
//! (bench_artifacts.rs). With `--scale`, one tenant is also grown to 10k and
//! 100k chunks of the real-prose corpus (bench/corpus.rs), and with `1m`
//! joined by 999 small tenants, to measure latency beside the peer and the
//! recall@10 of the HNSW index against exact search (capacity again at
//! 10k). Every tenant is measured after autovacuum has visited its bulk
//! load, as it would before a production tenant's next search (see
//! [`await_autovacuum`]).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt as _;
use rand::Rng as _;
use serde_json::{Value, json};

use super::chart::{self, LatencyChart};
use super::collection::Collection;
use super::quality::Loaded;
use super::{Harness, INGEST_BATCH, percentile};

/// The sizes one tenant is grown to with the corpus.
const SCALES: [usize; 2] = [10_000, 100_000];
/// The chunks of each small tenant at the 1m scale.
const SMALL_TENANT_CHUNKS: usize = 900;
const INTAKE_DELIVERIES: usize = 2_000;
const INTAKE_CONCURRENCY: usize = 64;
const MODES: [&str; 3] = ["keyword", "vector", "hybrid"];
/// The corpus tenant's size at which capacity is measured too (issue 17's
/// goal is stated there), besides the judged collections' tenant.
const CAPACITY_SCALE: usize = 10_000;
/// Concurrent clients of the capacity test, and how long each mode runs.
const CLIENTS: usize = 8;
const CAPACITY_RUN: Duration = Duration::from_secs(15);
/// Concurrent writers of one tenant in the ingest test.
const WRITERS: usize = 4;

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

pub async fn run(harness: &Harness, sets: &[Loaded], scale: Option<usize>) -> anyhow::Result<()> {
    let mut table = Table::default();
    let (first, ingested) = (&sets[0].collection, &sets[0].ingested);
    let chunks = ingested.chunks.max(1) as f64;
    table.push(format!(
        "| ingest ({}): documents → chunks | {} → {} |",
        first.name,
        first.documents.len(),
        ingested.chunks
    ));
    table.push(format!(
        "| ingest: chunking and storing (PUT /api/documents) | {:.0} chunks/s |",
        chunks / ingested.store_time.as_secs_f64()
    ));
    if ingested.embedded > 0 {
        table.push(format!(
            "| ingest: embedding (cron, {}) | {:.0} chunks/s |",
            harness.model.name,
            ingested.embedded as f64 / ingested.embed_time.as_secs_f64()
        ));
        table.push(format!(
            "| ingest: embedding calls per 1000 chunks | {:.1} |",
            ingested.provider_requests as f64 * 1000.0 / ingested.embedded as f64
        ));
    }

    for writers in [1, WRITERS] {
        let (documents, stored, elapsed) = concurrent_ingest(harness, first, writers).await?;
        table.push(format!(
            "| ingest: {writers} concurrent writer(s) of one tenant, {documents} documents (PUT /api/documents, batches of {INGEST_BATCH}) | {:.0} chunks/s ({stored} chunks in {:.1} s) |",
            stored as f64 / elapsed.as_secs_f64(),
            elapsed.as_secs_f64()
        ));
    }

    eprintln!("starting cold documents and search functions…");
    let database_url = std::env::var("DATABASE_URL")?;
    for row in tokio::task::block_in_place(|| {
        crate::bench_artifacts::cold_path_rows(&database_url, &harness.model)
    })? {
        table.push(row);
    }

    eprintln!("sending {INTAKE_DELIVERIES} signed webhook deliveries…");
    intake(harness, &mut table).await?;

    let queries: Vec<String> = sets.iter().flat_map(|s| s.texts.clone()).collect();
    let judged_key = harness
        .create_tenant(&format!("judged-{}", rand::rng().random::<u32>()))
        .await?;
    let judged_chunks = copy_collections(harness, sets, &judged_key).await?;
    await_autovacuum(harness, &mut table).await?;
    let names: Vec<&str> = sets.iter().map(|s| s.collection.name.as_str()).collect();
    let at = format!(
        "{} in one tenant ({judged_chunks} chunks, {} queries)",
        names.join(" + "),
        queries.len()
    );
    let query_vectors: Vec<Vec<f32>> = sets.iter().flat_map(|s| s.vectors.clone()).collect();
    let mut chart = LatencyChart::default();
    let scene = Scene {
        sets,
        queries: &queries,
        query_vectors: &query_vectors,
    };
    measure_at(harness, &judged_key, &scene, &at, &mut table, &mut chart).await?;
    capacity_rows(harness, &judged_key, &queries, &at, &mut table).await?;

    if let Some(largest) = scale {
        scaled(harness, &scene, largest, &mut table, &mut chart).await?;
        chart.draw(
            std::path::Path::new(chart::PATH),
            &format!(
                "Search p95 against tenant size ({}, 2 cores)",
                harness.model.name
            ),
        )?;
        eprintln!("drew {}", chart::PATH);
    }

    println!(
        "\n| Keel bench load ({}) | value |\n|---|---|",
        harness.model.name
    );
    for row in table.rows {
        println!("{row}");
    }
    Ok(())
}

/// Copies every collection's documents, chunks and vectors into the tenant
/// of `key` (ids prefixed by the collection), returning its chunk count.
async fn copy_collections(harness: &Harness, sets: &[Loaded], key: &str) -> anyhow::Result<i64> {
    let tenant = harness.tenant_id(key).await?;
    let sources: Vec<String> = sets.iter().map(|s| s.ingested.tenant_id.clone()).collect();
    harness
        .db
        .batch_execute("create temp table if not exists copied (old_id uuid, new_id uuid)")
        .await?;
    harness
        .db
        .execute(
            "with source as (
               select d.*, gen_random_uuid() as new_id from keel.documents d
               where d.tenant_id = any($2::text[]::uuid[])),
             remembered as (insert into copied select id, new_id from source)
             insert into keel.documents (id, tenant_id, external_id, title, content_hash, metadata, source_url)
             select new_id, $1::text::uuid, tenant_id || ':' || external_id, title, content_hash, metadata, source_url
             from source",
            &[&tenant, &sources],
        )
        .await?;
    harness
        .db
        .execute(
            "insert into keel.chunks (tenant_id, document_id, chunk_index, content, content_hash, token_count, search_vector)
             select $1::text::uuid, m.new_id, c.chunk_index, c.content, c.content_hash, c.token_count, c.search_vector
             from keel.chunks c join copied m on m.old_id = c.document_id",
            &[&tenant],
        )
        .await?;
    harness
        .db
        .execute(
            "insert into keel.embeddings (chunk_id, model, dimensions, tenant_id, embedding)
             select n.id, e.model, e.dimensions, $1::text::uuid, e.embedding
             from copied m
             join keel.chunks o on o.document_id = m.old_id
             join keel.chunks n on n.document_id = m.new_id and n.chunk_index = o.chunk_index
             join keel.embeddings e on e.chunk_id = o.id",
            &[&tenant],
        )
        .await?;
    harness
        .db
        .batch_execute("drop table copied; analyze")
        .await?;
    Ok(harness
        .db
        .query_one(
            "select count(*) from keel.chunks where tenant_id = $1::text::uuid",
            &[&tenant],
        )
        .await?
        .get(0))
}

/// The collection stored into a fresh tenant by `writers` clients at once,
/// each sending its share in batches: documents, chunks stored, time taken
/// (storing only, not embedding).
async fn concurrent_ingest(
    harness: &Harness,
    collection: &Collection,
    writers: usize,
) -> anyhow::Result<(usize, i64, Duration)> {
    let key = harness
        .create_tenant(&format!("writers-{}", rand::rng().random::<u32>()))
        .await?;
    let batches: Vec<Vec<Value>> = collection
        .documents
        .chunks(INGEST_BATCH)
        .map(|batch| {
            batch
                .iter()
                .map(|d| json!({"id": d.id, "title": d.title, "content": d.content}))
                .collect()
        })
        .collect();
    let started = Instant::now();
    let clients = (0..writers).map(|writer| {
        let (key, batches) = (&key, &batches);
        async move {
            for documents in batches.iter().skip(writer).step_by(writers) {
                let (status, body) = harness
                    .request(
                        reqwest::Method::PUT,
                        "/api/documents",
                        key,
                        Some(&json!({ "documents": documents })),
                    )
                    .await?;
                anyhow::ensure!(
                    status.is_success(),
                    "PUT /api/documents answered {status}: {body}"
                );
            }
            anyhow::Ok(())
        }
    });
    for outcome in futures::future::join_all(clients).await {
        outcome?;
    }
    let elapsed = started.elapsed();
    let tenant = harness.tenant_id(&key).await?;
    let stored: i64 = harness
        .db
        .query_one(
            "select count(*) from keel.chunks where tenant_id = $1::text::uuid",
            &[&tenant],
        )
        .await?
        .get(0);
    // Gone again, so its queued embedding jobs never cost a later run.
    harness
        .db
        .execute(
            "delete from keel.tenants where id = $1::text::uuid",
            &[&tenant],
        )
        .await?;
    Ok((collection.documents.len(), stored, elapsed))
}

/// One search at a time, every query once to warm the caches, then once
/// timed: the client's latencies and the server's `took_ms`.
async fn latencies(
    harness: &Harness,
    key: &str,
    queries: &[String],
    mode: &str,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    for query in queries {
        search_over_http(harness, key, query, mode).await?;
    }
    let (mut http, mut took) = (Vec::new(), Vec::new());
    for query in queries {
        let started = Instant::now();
        let body = search_over_http(harness, key, query, mode).await?;
        http.push(started.elapsed());
        took.push(Duration::from_millis(body["took_ms"].as_u64().unwrap_or(0)));
    }
    Ok((http, took))
}

/// The capacity of each mode on the tenant of `key`, one row each.
async fn capacity_rows(
    harness: &Harness,
    key: &str,
    queries: &[String],
    at: &str,
    table: &mut Table,
) -> anyhow::Result<()> {
    for mode in MODES {
        let (searches, mut samples) = capacity(harness, key, queries, mode).await?;
        table.push(format!(
            "| capacity {mode}, {CLIENTS} concurrent clients, {at} | {:.0} searches/s, p95 {:.1} ms |",
            searches as f64 / CAPACITY_RUN.as_secs_f64(),
            percentile(&mut samples, 0.95),
        ));
    }
    Ok(())
}

/// `CLIENTS` clients searching back to back for `CAPACITY_RUN`, each
/// starting at a different query (warm): searches done and their latencies.
async fn capacity(
    harness: &Harness,
    key: &str,
    queries: &[String],
    mode: &str,
) -> anyhow::Result<(usize, Vec<Duration>)> {
    let deadline = Instant::now() + CAPACITY_RUN;
    let clients = (0..CLIENTS).map(|client| async move {
        let mut samples = Vec::new();
        let mut next = client * queries.len() / CLIENTS;
        while Instant::now() < deadline {
            let started = Instant::now();
            search_over_http(harness, key, &queries[next % queries.len()], mode).await?;
            samples.push(started.elapsed());
            next += 1;
        }
        anyhow::Ok(samples)
    });
    let mut all = Vec::new();
    for samples in futures::future::join_all(clients).await {
        all.extend(samples?);
    }
    Ok((all.len(), all))
}

/// The real-prose corpus (bench/corpus.rs) searched at scale: one tenant
/// grown to 10k and 100k of its passages (their own vectors), latency per
/// mode, the peer and HNSW recall at each; at 1m, 999 more tenants of
/// [`SMALL_TENANT_CHUNKS`] chunks each, whose vectors are derived from the
/// corpus' (see [`derived`]), and the same measured for one small tenant.
async fn scaled(
    harness: &Harness,
    scene: &Scene<'_>,
    largest: usize,
    table: &mut Table,
    chart: &mut LatencyChart,
) -> anyhow::Result<()> {
    let collections: Vec<&Collection> = scene.sets.iter().map(|s| &s.collection).collect();
    let corpus = tokio::task::block_in_place(|| {
        super::corpus::load_or_build(std::path::Path::new(super::corpus::CACHE_DIR), &collections)
    })?;
    table.push(format!(
        "| corpus: {} distinct passages of real prose, embedded by {} | {} |",
        corpus.passages.len(),
        harness.model.name,
        corpus.describe()
    ));
    let scale_key = harness
        .create_tenant(&format!("scale-{}", rand::rng().random::<u32>()))
        .await?;
    let mut inserted = 0;
    for scale in SCALES
        .into_iter()
        .filter(|s| *s <= largest.min(corpus.passages.len()))
    {
        eprintln!("growing a tenant to {scale} chunks of the corpus…");
        let chunks =
            (inserted..scale).map(|i| (corpus.passages[i].as_str(), corpus.vector(i).to_vec()));
        let grown = TenantChunks {
            key: scale_key.clone(),
            chunks: chunks.collect(),
        };
        drop_vector_indexes(harness).await?;
        insert_chunks(harness, &[grown]).await?;
        build_vector_indexes(harness, table).await?;
        await_autovacuum(harness, table).await?;
        inserted = scale;
        let at = format!("one tenant of {}k corpus chunks", scale / 1000);
        measure_at(harness, &scale_key, scene, &at, table, chart).await?;
        if scale == CAPACITY_SCALE {
            capacity_rows(harness, &scale_key, scene.queries, &at, table).await?;
        }
    }
    if largest > corpus.passages.len() {
        let tenants = (largest - corpus.passages.len()) / SMALL_TENANT_CHUNKS;
        eprintln!("adding {tenants} tenants of {SMALL_TENANT_CHUNKS} chunks each…");
        let mut small_keys = Vec::with_capacity(tenants);
        let bar = crate::progress::bar(tenants, "tenants");
        drop_vector_indexes(harness).await?;
        for group in (0..tenants).collect::<Vec<_>>().chunks(100) {
            let mut batch = Vec::new();
            for &t in group {
                let key = harness
                    .create_tenant(&format!("small-{t}-{}", rand::rng().random::<u32>()))
                    .await?;
                let first = t * SMALL_TENANT_CHUNKS;
                let chunks = (first..first + SMALL_TENANT_CHUNKS).map(|i| {
                    let i = i % corpus.passages.len();
                    (corpus.passages[i].as_str(), derived(corpus.vector(i)))
                });
                batch.push(TenantChunks {
                    key,
                    chunks: chunks.collect(),
                });
            }
            insert_chunks(harness, &batch).await?;
            bar.inc(group.len() as u64);
            small_keys.extend(batch.into_iter().map(|t| t.key));
        }
        bar.finish_and_clear();
        build_vector_indexes(harness, table).await?;
        await_autovacuum(harness, table).await?;
        let total: i64 = harness
            .db
            .query_one("select count(*) from keel.chunks", &[])
            .await?
            .get(0);
        let at = format!(
            "a {SMALL_TENANT_CHUNKS}-chunk tenant among {} tenants, {total} chunks in all",
            tenants + 1
        );
        // Not charted: the chart follows the searched tenant's size.
        let mut uncharted = LatencyChart::default();
        measure_at(harness, &small_keys[0], scene, &at, table, &mut uncharted).await?;
    }
    Ok(())
}

/// What every measured tenant is searched with: the judged collections'
/// queries and their vectors.
struct Scene<'a> {
    sets: &'a [Loaded],
    queries: &'a [String],
    query_vectors: &'a [Vec<f32>],
}

/// Latency per mode over HTTP, the answers' overhead, the peer in the
/// database and vector recall, for one tenant; the p95s also on the chart.
async fn measure_at(
    harness: &Harness,
    key: &str,
    scene: &Scene<'_>,
    at: &str,
    table: &mut Table,
    chart: &mut LatencyChart,
) -> anyhow::Result<()> {
    eprintln!("measuring at {at}…");
    let chunks: i64 = harness
        .db
        .query_one(
            "select count(*) from keel.chunks where tenant_id = $1::text::uuid",
            &[&harness.tenant_id(key).await?],
        )
        .await?
        .get(0);
    for mode in MODES {
        let (mut http, mut took) = latencies(harness, key, scene.queries, mode).await?;
        let p95 = percentile(&mut http, 0.95);
        table.push(format!(
            "| search {mode}, {at}: p50 / p95 (HTTP, warm; server took_ms) | {:.1} / {p95:.1} ms ({:.0} / {:.0} ms) |",
            percentile(&mut http, 0.5),
            percentile(&mut took, 0.5),
            percentile(&mut took, 0.95),
        ));
        chart.add(&format!("Keel {mode}, HTTP"), chunks, p95);
    }
    for row in super::answers::rows(harness, key, scene.queries, chunks as usize).await? {
        table.push(row);
    }
    let mut comparison = super::peer::compare(harness, key, scene.sets).await?;
    let (keel_p95, peer_p95) = comparison.p95s();
    chart.add("Keel hybrid, database", chunks, keel_p95);
    chart.add("Supabase hybrid_search (peer), database", chunks, peer_p95);
    for row in comparison.rows(at) {
        table.push(row);
    }
    for row in recall_rows(harness, key, scene.query_vectors, at).await? {
        table.push(row);
    }
    Ok(())
}

/// `POST /api/search` with `top_k` 20, as a client sends it.
async fn search_over_http(
    harness: &Harness,
    key: &str,
    query: &str,
    mode: &str,
) -> anyhow::Result<Value> {
    harness
        .post(
            "/api/search",
            key,
            &json!({"query": query, "mode": mode, "top_k": 20}),
        )
        .await
}

/// Signed deliveries through `POST /api/webhooks/{id}`, `INTAKE_CONCURRENCY`
/// at a time; every one must be stored once, with its processing task.
async fn intake(harness: &Harness, table: &mut Table) -> anyhow::Result<()> {
    let key = harness
        .create_tenant(&format!("intake-{}", rand::rng().random::<u32>()))
        .await?;
    let endpoint = harness
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
                let response = harness
                    .client
                    .post(format!("{}/api/webhooks/{id}", harness.base))
                    .header("webhook-id", &webhook_id)
                    .header("webhook-timestamp", now.to_string())
                    .header(
                        "webhook-signature",
                        keel::webhooks::signatures::sign(secret, &webhook_id, now, body.as_bytes()),
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
    let stored: i64 = harness
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

/// A vector derived from a corpus vector for the 1m scale's small tenants:
/// uniform noise of ±0.02 on each dimension, then unit length again (a
/// cosine of about 0.97 to the original), so the copies are near their
/// passage's meaning without being duplicates.
fn derived(vector: &[f32]) -> Vec<f32> {
    let mut rng = rand::rng();
    let noisy: Vec<f32> = vector
        .iter()
        .map(|x| x + rng.random_range(-0.02..0.02))
        .collect();
    let norm = noisy.iter().map(|x| x * x).sum::<f32>().sqrt();
    noisy.iter().map(|x| x / norm).collect()
}

/// Chunks to store in one tenant: text and vector.
struct TenantChunks<'a> {
    key: String,
    chunks: Vec<(&'a str, Vec<f32>)>,
}

/// Drops the vector indexes before a bulk load: building HNSW over loaded
/// rows is much faster than inserting into it row by row.
async fn drop_vector_indexes(harness: &Harness) -> anyhow::Result<()> {
    harness
        .db
        .batch_execute(
            "do $$ declare i text; begin
               for i in select indexname from pg_indexes where schemaname = 'keel' and indexname like 'embeddings_hnsw_%' loop
                 execute format('drop index keel.%I', i);
               end loop; end $$;",
        )
        .await?;
    Ok(())
}

/// Builds the model's HNSW index again after a bulk load through the step
/// the embeddings cron runs (`keel_prepare_embedding_model`, which creates
/// a missing index), refreshes the planner's statistics, and says how long
/// the build took.
async fn build_vector_indexes(harness: &Harness, table: &mut Table) -> anyhow::Result<()> {
    let args = json!({
        "model": harness.model.name,
        "dimensions": harness.model.dimensions,
        "limit": 0,
    });
    let vectors: i64 = harness
        .db
        .query_one("select count(*) from keel.embeddings", &[])
        .await?
        .get(0);
    eprintln!("building the HNSW index over {vectors} vectors…");
    let started = Instant::now();
    harness
        .db
        .batch_execute("set maintenance_work_mem = '4GB'")
        .await?;
    let outcome: Value = harness
        .db
        .query_one(
            "select public.keel_prepare_embedding_model($1::text::jsonb)",
            &[&args.to_string()],
        )
        .await?
        .get(0);
    anyhow::ensure!(
        outcome["index_created"] == true,
        "the HNSW index was not rebuilt: {outcome}"
    );
    table.push(format!(
        "| HNSW index build over {vectors} vectors (m 16, ef_construction 200, 2 cores) | {:.1} s |",
        started.elapsed().as_secs_f64()
    ));
    harness
        .db
        .batch_execute("analyze keel.embeddings; analyze keel.chunks")
        .await?;
    Ok(())
}

/// Longest wait for autovacuum after a bulk load before vacuuming ourselves.
const AUTOVACUUM_WAIT: Duration = Duration::from_secs(600);

/// Waits until autovacuum has visited every table of a bulk load. Keyword
/// ranking reads `keel.postings` by index-only scans, which fetch heap pages
/// until vacuum marks the new ones all-visible: right after a 100k-chunk
/// load it ranked about 2× slower (docs/search-quality.md); and a vacuum
/// running beside the searches (of `keel.chunks` and its GIN index, of
/// `keel.embeddings`) takes one of the two cores. Production tenants search
/// after autovacuum has come (0025 makes it come after 1 % new postings),
/// so the bench waits for it too, and says how long; past
/// [`AUTOVACUUM_WAIT`] it vacuums the schema itself and says so.
async fn await_autovacuum(harness: &Harness, table: &mut Table) -> anyhow::Result<()> {
    eprintln!("waiting for autovacuum to visit the keel tables…");
    let started = Instant::now();
    let mut settled_polls = 0;
    while settled_polls < 2 {
        if started.elapsed() > AUTOVACUUM_WAIT {
            harness
                .db
                .batch_execute("vacuum keel.postings, keel.chunks, keel.embeddings")
                .await?;
            table.push(format!(
                "| after the bulk load: autovacuum of the keel tables | not done in {} s: vacuumed by the bench |",
                AUTOVACUUM_WAIT.as_secs()
            ));
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Settled: no vacuum running in the database, and no keel table
        // with more rows inserted since its last vacuum than its insert
        // threshold (its own scale factor, 0025's 1 % for postings, or the
        // server's), so autovacuum has nothing left to do. Twice in a row,
        // as the statistics are flushed about once a second.
        let settled: bool = harness
            .db
            .query_one(
                "select not exists (select from pg_stat_progress_vacuum where datname = current_database())
                    and not exists (
                      select from pg_stat_user_tables s join pg_class c on c.oid = s.relid
                      where s.schemaname = 'keel'
                        and s.n_ins_since_vacuum >
                            current_setting('autovacuum_vacuum_insert_threshold')::float8
                            + coalesce((select split_part(o, '=', 2)::float8 from unnest(c.reloptions) o
                                        where o like 'autovacuum_vacuum_insert_scale_factor=%'),
                                       current_setting('autovacuum_vacuum_insert_scale_factor')::float8)
                              * greatest(c.reltuples, 0))",
                &[],
            )
            .await?
            .get(0);
        settled_polls = if settled { settled_polls + 1 } else { 0 };
    }
    table.push(format!(
        "| after the bulk load: waited for autovacuum of the keel tables | {:.0} s |",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Stores each tenant's chunks (text and vector) directly, 1000 to a
/// document, as ingest and the embeddings cron would have.
async fn insert_chunks(harness: &Harness, tenants: &[TenantChunks<'_>]) -> anyhow::Result<()> {
    let db = &harness.db;
    let (model, dimensions) = (&harness.model.name, harness.model.dimensions as i32);
    let total = tenants.iter().map(|t| t.chunks.len()).sum();
    let bar = crate::progress::bar(total, "chunks");
    for TenantChunks { key, chunks } in tenants {
        let tenant = harness.tenant_id(key).await?;
        for batch in chunks.chunks(1000) {
            let document: String = db
                .query_one(
                    "insert into keel.documents (tenant_id, external_id, title, content_hash)
                     values ($1::text::uuid, gen_random_uuid()::text, 'corpus', 'corpus') returning id::text",
                    &[&tenant],
                )
                .await?
                .get(0);
            let contents: Vec<&str> = batch.iter().map(|(text, _)| *text).collect();
            let vectors: Vec<String> = batch
                .iter()
                .map(|(_, vector)| json!(vector).to_string())
                .collect();
            db.execute(
                "with new_chunks as (
                   insert into keel.chunks (tenant_id, document_id, chunk_index, content, content_hash, token_count, search_vector)
                   select $1::text::uuid, $2::text::uuid, i - 1, c, 'corpus', 0, to_tsvector('english', c)
                   from unnest($3::text[]) with ordinality as t (c, i)
                   returning id, chunk_index)
                 insert into keel.embeddings (chunk_id, model, dimensions, tenant_id, embedding)
                 select n.id, $5, $6, $1::text::uuid, v::extensions.vector
                 from new_chunks n join unnest($4::text[]) with ordinality as u (v, i) on u.i - 1 = n.chunk_index",
                &[&tenant, &document, &contents, &vectors, model, &dimensions],
            )
            .await?;
            bar.inc(batch.len() as u64);
        }
    }
    bar.finish_and_clear();
    Ok(())
}

/// Vector candidates a search takes (keel_search's default), of which the
/// recall curve compares the best 10 with the exact 10.
const CANDIDATES: u32 = 40;
/// `ef_search` values of the HNSW recall curve.
const EF_SEARCH_CURVE: [u32; 5] = [10, 20, 40, 100, 200];

/// Recall@10 against the exact top 10 (a forced sequential scan), per
/// query averaged: of `keel_search`'s vector mode as it runs (the planner
/// may choose an exact scan of a small tenant itself), then of the HNSW
/// index forced at each [`EF_SEARCH_CURVE`] value: the best 10 of the
/// [`CANDIDATES`] it returns, as a search takes them (pgvector's relaxed
/// iterative scan returns them nearly, not exactly, in order).
async fn recall_rows(
    harness: &Harness,
    tenant_key: &str,
    query_vectors: &[Vec<f32>],
    at: &str,
) -> anyhow::Result<Vec<String>> {
    let tenant = harness.tenant_id(tenant_key).await?;
    let (model, dimensions) = (&harness.model.name, harness.model.dimensions);
    let nearest = |settings: &str, literal: &str| {
        format!(
            "begin; {settings}
             set local search_path = keel, extensions, public;
             create temp table nearest on commit drop as
               select chunk_id from (
                 select e.chunk_id, e.embedding::extensions.vector({dimensions}) <=> '{literal}'::extensions.vector as distance
                 from keel.embeddings e
                 where e.tenant_id = '{tenant}' and e.model = '{model}' and e.dimensions = {dimensions}
                 order by e.embedding::extensions.vector({dimensions}) <=> '{literal}'::extensions.vector
                 limit {CANDIDATES}) candidates
               order by distance limit 10;"
        )
    };
    let mut keel_total = 0.0;
    let mut curve_totals = [0.0; EF_SEARCH_CURVE.len()];
    for vector in query_vectors {
        let literal = json!(vector).to_string();
        let exact = chunk_ids(
            harness,
            &nearest(
                "set local enable_indexscan = off; set local enable_bitmapscan = off;",
                &literal,
            ),
        )
        .await?;
        let overlap = |found: &HashSet<(String, i64)>| {
            exact.iter().filter(|id| found.contains(*id)).count() as f64 / exact.len().max(1) as f64
        };
        let keel: HashSet<(String, i64)> = harness
            .search(tenant_key, "x", vector, "vector", 10, &json!({}))
            .await?
            .iter()
            .map(|r| {
                (
                    r["document_id"].as_str().unwrap_or_default().to_owned(),
                    r["chunk_index"].as_i64().unwrap_or(-1),
                )
            })
            .collect();
        keel_total += overlap(&keel);
        for (ef, total) in EF_SEARCH_CURVE.iter().zip(curve_totals.iter_mut()) {
            let settings = format!(
                "set local enable_seqscan = off; set local enable_bitmapscan = off; set local enable_sort = off;
                 set local hnsw.iterative_scan = relaxed_order; set local hnsw.ef_search = {ef};"
            );
            *total += overlap(&chunk_ids(harness, &nearest(&settings, &literal)).await?);
        }
    }
    let n = query_vectors.len().max(1) as f64;
    let mut rows = vec![format!(
        "| vector search (keel_search) recall@10 vs exact, {at} | {:.3} |",
        keel_total / n
    )];
    for (ef, total) in EF_SEARCH_CURVE.iter().zip(curve_totals) {
        rows.push(format!(
            "| HNSW index recall@10 vs exact at ef_search {ef} (best 10 of {CANDIDATES}), {at} (m 16, ef_construction 200, iterative scan) | {:.3} |",
            total / n
        ));
    }
    Ok(rows)
}

/// The chunks a transaction from [`recall_rows`] left in `nearest`, as
/// search results name them: document and chunk index.
async fn chunk_ids(harness: &Harness, transaction: &str) -> anyhow::Result<HashSet<(String, i64)>> {
    harness.db.batch_execute(transaction).await?;
    let rows = harness
        .db
        .query(
            "select d.external_id, c.chunk_index::bigint
             from keel.chunks c join keel.documents d on d.id = c.document_id
             where c.id = any(array(select chunk_id from nearest))",
            &[],
        )
        .await?;
    harness.db.batch_execute("commit").await?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}
