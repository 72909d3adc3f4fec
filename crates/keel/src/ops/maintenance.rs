//! Hourly maintenance: expires the query-vector cache, prunes old tasks,
//! deliveries and rate-limit hits, releases stale leases, schedules webhook
//! reconciliation, and retires a replaced embedding model's vectors a day
//! after the change.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::platform::config::TaskSettings;
use crate::platform::db::{Db, DbError, SqlFunction};

/// How long a replaced embedding model's vectors outlive the change, so it can
/// be rolled back without re-embedding.
const REPLACED_MODEL_ROLLBACK_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// Rows of each kind one maintenance run may delete: bounded work per run.
const PRUNE_BATCH: u32 = 50_000;

/// `keel_maintenance`: retention, leases and reconciliation scheduling.
#[derive(Serialize)]
struct KeelMaintenance {
    task_retention_days: u32,
    delivery_retention_days: u32,
    /// The current hour: reconciliation runs once per endpoint per window.
    window: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Housekeeping {
    pub query_cache_expired: u64,
    pub tasks_pruned: u64,
    pub deliveries_pruned: u64,
    pub task_leases_released: u64,
    pub embedding_leases_released: u64,
    pub reconciliations_enqueued: u64,
}

impl SqlFunction for KeelMaintenance {
    const NAME: &'static str = "keel_maintenance";
    type Output = Housekeeping;
}

/// `keel_prune_rate_limits`: hits that left every window.
#[derive(Serialize)]
struct PruneRateLimits {}

#[derive(Debug, Serialize, Deserialize)]
pub struct RateLimitsPruned {
    pub rate_limit_hits_pruned: u64,
}

impl SqlFunction for PruneRateLimits {
    const NAME: &'static str = "keel_prune_rate_limits";
    type Output = RateLimitsPruned;
}

/// `keel_prune_replaced_vectors`: other models' vectors and jobs, for
/// tenants the configured model has covered for `after_seconds`.
#[derive(Serialize)]
struct PruneReplacedVectors<'a> {
    model: &'a str,
    dimensions: u32,
    after_seconds: u64,
    limit: u32,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ReplacedVectorsPruned {
    pub replaced_vectors_pruned: u64,
    pub replaced_jobs_pruned: u64,
}

impl SqlFunction for PruneReplacedVectors<'_> {
    const NAME: &'static str = "keel_prune_replaced_vectors";
    type Output = ReplacedVectorsPruned;
}

/// What one maintenance run did.
#[derive(Debug, Serialize)]
pub struct MaintenanceReport {
    #[serde(flatten)]
    pub housekeeping: Housekeeping,
    #[serde(flatten)]
    pub rate_limits: RateLimitsPruned,
    #[serde(flatten)]
    pub replaced_vectors: ReplacedVectorsPruned,
}

/// Runs every maintenance step; `model`/`dimensions` is the configured
/// embedding model, whose vectors are never pruned.
pub async fn run(
    db: &Db,
    settings: &TaskSettings,
    model: &str,
    dimensions: u32,
) -> Result<MaintenanceReport, DbError> {
    let window = time::OffsetDateTime::now_utc().unix_timestamp() / 3600;
    let housekeeping = db
        .run(&KeelMaintenance {
            task_retention_days: settings.task_retention_days,
            delivery_retention_days: settings.delivery_retention_days,
            window: window.to_string(),
        })
        .await?;
    let rate_limits = db.run(&PruneRateLimits {}).await?;
    let replaced_vectors = db
        .run(&PruneReplacedVectors {
            model,
            dimensions,
            after_seconds: REPLACED_MODEL_ROLLBACK_WINDOW.as_secs(),
            limit: PRUNE_BATCH,
        })
        .await?;
    Ok(MaintenanceReport {
        housekeeping,
        rate_limits,
        replaced_vectors,
    })
}
