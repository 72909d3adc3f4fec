//! Keel's hybrid search beside Supabase's documented one
//! (`supabase_hybrid_search.sql`) on the same tenant, chunks and query
//! vectors: database time per query (the bench's own connection, one query
//! at a time, warm), as issue 17 asks to compare them.

use std::time::{Duration, Instant};

use serde_json::json;

use super::quality::Loaded;
use super::{Harness, percentile};

const PEER_SQL: &str = include_str!("supabase_hybrid_search.sql");
/// Results asked of both, as `POST /api/search` asks with `top_k` 20.
const MATCH_COUNT: i32 = 20;

/// Database time per query of each, measured alternately.
pub struct Comparison {
    keel: Vec<Duration>,
    peer: Vec<Duration>,
}

/// Both searches over every judged query in the tenant of `key`.
pub async fn compare(harness: &Harness, key: &str, sets: &[Loaded]) -> anyhow::Result<Comparison> {
    harness.db.batch_execute(PEER_SQL).await?;
    let tenant: String = harness
        .db
        .query_one(
            "select tenant_id::text from keel.api_keys where key_hash = $1",
            &[&keel::tenants::keys::hash_key(key)],
        )
        .await?
        .get(0);
    let queries: Vec<(&str, &[f32])> = sets
        .iter()
        .flat_map(|set| {
            set.texts
                .iter()
                .map(String::as_str)
                .zip(set.vectors.iter().map(Vec::as_slice))
        })
        .collect();
    let keel_sql = "select public.keel_search($1::text::jsonb)";
    let peer_sql = "select count(*) from bench.supabase_hybrid_search($1, $2::text::extensions.vector, $3, $4::text::uuid)";
    let mut keel = Vec::with_capacity(queries.len());
    let mut peer = Vec::with_capacity(queries.len());
    // A warm-up pass, then the measured one; the two alternate per query so
    // both see the same machine.
    for measured in [false, true] {
        for (text, vector) in &queries {
            let args = harness
                .search_args(
                    key,
                    text,
                    vector,
                    "hybrid",
                    MATCH_COUNT as usize,
                    &json!({}),
                )
                .to_string();
            let started = Instant::now();
            harness.db.query_one(keel_sql, &[&args]).await?;
            let keel_took = started.elapsed();
            let literal = json!(vector).to_string();
            let started = Instant::now();
            harness
                .db
                .query_one(peer_sql, &[text, &literal, &MATCH_COUNT, &tenant])
                .await?;
            let peer_took = started.elapsed();
            if measured {
                keel.push(keel_took);
                peer.push(peer_took);
            }
        }
    }
    Ok(Comparison { keel, peer })
}

impl Comparison {
    /// p95 of Keel and of the peer, in ms.
    pub fn p95s(&mut self) -> (f64, f64) {
        (
            percentile(&mut self.keel, 0.95),
            percentile(&mut self.peer, 0.95),
        )
    }

    /// The two rows (p50 / p95 of each) and the ratio at p95.
    pub fn rows(&mut self, at: &str) -> Vec<String> {
        let row = |who: &str, samples: &mut Vec<Duration>| {
            format!(
                "| hybrid search in the database, {who}, {at}: p50 / p95 | {:.1} / {:.1} ms |",
                percentile(samples, 0.5),
                percentile(samples, 0.95)
            )
        };
        let (keel_p95, peer_p95) = self.p95s();
        vec![
            row("Keel (keel_search)", &mut self.keel),
            row(
                "Supabase's documented hybrid_search (the peer)",
                &mut self.peer,
            ),
            format!(
                "| peer p95 / Keel p95, {at} | {:.1}× |",
                peer_p95 / keel_p95
            ),
        ]
    }
}
