//! `keel bench load`: webhook intake under concurrency (zero loss checked),
//! then every judged collection copied into one tenant (real, distinct
//! chunks and their vectors) to measure search per mode through the HTTP API:
//! latency one search at a time (warm, query vectors cached; the client's
//! clock and the server's `took_ms`) and capacity with `CLIENTS` concurrent
//! clients. With `--scale`, one tenant is also grown to 10k, 100k (and 1M)
//! chunks (the first collection's chunks repeated, their vectors nudged by
//! small noise) to measure latency and the recall@10 of the HNSW index
//! against exact search.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt as _;
use rand::Rng as _;
use serde_json::{Value, json};

use super::collection::Collection;
use super::quality::Loaded;
use super::{Harness, INGEST_BATCH, percentile};

const SCALES: [usize; 3] = [10_000, 100_000, 1_000_000];
const INTAKE_DELIVERIES: usize = 2_000;
const INTAKE_CONCURRENCY: usize = 64;
const MODES: [&str; 3] = ["keyword", "vector", "hybrid"];
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

    eprintln!("sending {INTAKE_DELIVERIES} signed webhook deliveries…");
    intake(harness, &mut table).await?;

    let queries: Vec<String> = sets.iter().flat_map(|s| s.texts.clone()).collect();
    let judged_key = harness
        .create_tenant(&format!("judged-{}", rand::rng().random::<u32>()))
        .await?;
    let judged_chunks = copy_collections(harness, sets, &judged_key).await?;
    let names: Vec<&str> = sets.iter().map(|s| s.collection.name.as_str()).collect();
    let at = format!(
        "{} in one tenant ({judged_chunks} chunks, {} queries)",
        names.join(" + "),
        queries.len()
    );
    eprintln!("measuring over {at}…");
    for mode in MODES {
        let (mut http, mut took) = latencies(harness, &judged_key, &queries, mode).await?;
        table.push(format!(
            "| search {mode}, {at}: p50 / p95 (HTTP, warm; server took_ms) | {:.1} / {:.1} ms ({:.0} / {:.0} ms) |",
            percentile(&mut http, 0.5),
            percentile(&mut http, 0.95),
            percentile(&mut took, 0.5),
            percentile(&mut took, 0.95),
        ));
    }
    for row in super::answers::rows(harness, &judged_key, &queries, judged_chunks as usize).await? {
        table.push(row);
    }
    for mode in MODES {
        let (searches, mut samples) = capacity(harness, &judged_key, &queries, mode).await?;
        table.push(format!(
            "| capacity {mode}, {CLIENTS} concurrent clients, {at} | {:.0} searches/s, p95 {:.1} ms |",
            searches as f64 / CAPACITY_RUN.as_secs_f64(),
            percentile(&mut samples, 0.95),
        ));
    }

    for row in super::peer::rows(harness, &judged_key, sets, &at).await? {
        table.push(row);
    }

    if let Some(largest) = scale {
        scaled(harness, sets, &queries, largest, &mut table).await?;
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

/// One tenant grown to each scale up to `largest`: latency per mode and
/// HNSW recall at each.
async fn scaled(
    harness: &Harness,
    sets: &[Loaded],
    queries: &[String],
    largest: usize,
    table: &mut Table,
) -> anyhow::Result<()> {
    let query_vectors: Vec<Vec<f32>> = sets.iter().flat_map(|s| s.vectors.clone()).collect();
    let scale_key = harness
        .create_tenant(&format!("scale-{}", rand::rng().random::<u32>()))
        .await?;
    let base_rows = harness
        .db
        .query(
            "select c.content, e.embedding::text from keel.embeddings e join keel.chunks c on c.id = e.chunk_id
             where c.tenant_id = $1::text::uuid and e.model = $2 and e.dimensions = $3",
            &[
                &sets[0].ingested.tenant_id,
                &harness.model.name,
                &(harness.model.dimensions as i32),
            ],
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
    for scale in SCALES.into_iter().filter(|s| *s <= largest) {
        eprintln!("growing a tenant to {scale} chunks…");
        insert_synthetic(harness, &scale_key, &base, inserted, scale).await?;
        inserted = scale;
        eprintln!("measuring at {scale} chunks…");
        for mode in MODES {
            let (mut http, _) = latencies(harness, &scale_key, queries, mode).await?;
            table.push(format!(
                "| search {mode} at {}k synthetic chunks: p50 / p95 (HTTP, warm) | {:.1} ms / {:.1} ms |",
                scale / 1000,
                percentile(&mut http, 0.5),
                percentile(&mut http, 0.95)
            ));
        }
        for row in super::answers::rows(harness, &scale_key, queries, scale).await? {
            table.push(row);
        }
        let at = format!("{}k synthetic chunks", scale / 1000);
        for row in super::peer::rows(harness, &scale_key, sets, &at).await? {
            table.push(row);
        }
        let recall = hnsw_recall(harness, &scale_key, &query_vectors).await?;
        table.push(format!(
            "| HNSW recall@10 vs exact at {}k chunks (m 16, ef_construction 64, ef_search 40, iterative scan) | {recall:.3} |",
            scale / 1000
        ));
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

/// Adds chunks `from..to` to the tenant: the collection's chunks with their vectors
/// nudged by small noise, so the index sees realistic clusters.
async fn insert_synthetic(
    harness: &Harness,
    tenant_key: &str,
    base: &[(String, Vec<f32>)],
    from: usize,
    to: usize,
) -> anyhow::Result<()> {
    let db = &harness.db;
    let (model, dimensions) = (&harness.model.name, harness.model.dimensions as i32);
    let tenant = harness.tenant_id(tenant_key).await?;
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
    let bar = crate::progress::bar(to - from, "chunks");
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
             select n.id, $5, $6, $1::text::uuid, v::extensions.vector
             from new_chunks n join unnest($4::text[]) with ordinality as u (v, i) on u.i - 1 = n.chunk_index",
            &[&tenant, &document, &contents, &vectors, model, &dimensions],
        )
        .await?;
        bar.inc((end - start) as u64);
    }
    bar.finish_and_clear();
    db.batch_execute("set maintenance_work_mem = '512MB'")
        .await?;
    db.execute(
        "select keel.prepare_embedding_model($1, $2)",
        &[model, &dimensions],
    )
    .await?;
    db.batch_execute("analyze keel.embeddings; analyze keel.chunks")
        .await?;
    Ok(())
}

/// Mean overlap of the top 10 chunks from the HNSW path (`keel_search`,
/// vector mode) with the exact top 10 (sequential scan).
async fn hnsw_recall(
    harness: &Harness,
    tenant_key: &str,
    query_vectors: &[Vec<f32>],
) -> anyhow::Result<f64> {
    let key_hash = keel::tenants::keys::hash_key(tenant_key);
    let (model, dimensions) = (&harness.model.name, harness.model.dimensions);
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
        let approximate = harness
            .search(tenant_key, "x", vector, "vector", 10, &json!({}))
            .await?;
        let approximate: HashSet<(String, i64)> = approximate
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
               where k.key_hash = '{key_hash}' and e.model = '{model}' and e.dimensions = {dimensions}
               order by e.embedding::extensions.vector({dimensions}) <=> '{literal}'::extensions.vector limit 10;"
        );
        harness.db.batch_execute(&transaction_sql).await?;
        let exact = harness
            .db
            .query("select external_id, chunk_index::bigint from exact", &[])
            .await?;
        harness.db.batch_execute("commit").await?;
        let hits = exact
            .iter()
            .filter(|row| approximate.contains(&(row.get::<_, String>(0), row.get::<_, i64>(1))))
            .count();
        total += hits as f64 / exact.len().max(1) as f64;
    }
    Ok(total / query_vectors.len() as f64)
}
