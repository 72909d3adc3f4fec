//! Hourly maintenance: expires the query-vector cache, prunes old tasks,
//! deliveries, rate-limit hits, expired idempotency keys and idle
//! conversations, releases stale leases, schedules webhook
//! reconciliation, and retires a replaced embedding model's vectors a day
//! after the change.
//!
//! Every step works in bounded batches, each one SQL call and so one short
//! transaction that skips rows others hold locked: a large backlog is worked
//! off over calls (and runs) instead of timing out and rolling back, and
//! lease release and reconciliation never wait behind it.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::platform::config::TaskSettings;
use crate::platform::db::{Db, DbError, SqlFunction};

/// How long a replaced embedding model's vectors outlive the change, so it can
/// be rolled back without re-embedding.
const REPLACED_MODEL_ROLLBACK_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// Rows of each kind one maintenance run may delete: bounded work per run.
const PRUNE_BATCH: u32 = 50_000;
/// Rows of each kind one call deletes or releases: one short transaction,
/// well inside `DB_TIMEOUT_MS`, even on a busy database.
const BATCH: u32 = 5_000;

/// `keel_maintenance`: one bounded pass over retention, leases and
/// reconciliation scheduling.
#[derive(Serialize)]
struct KeelMaintenance {
    task_retention_days: u32,
    delivery_retention_days: u32,
    /// The current hour: reconciliation runs once per endpoint per window.
    window: String,
    batch: u32,
}

#[derive(Debug, Deserialize)]
struct MaintenancePass {
    #[serde(flatten)]
    done: Housekeeping,
    /// A batch was full: there is more to do.
    more: bool,
}

#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct Housekeeping {
    pub query_cache_expired: u64,
    pub tasks_pruned: u64,
    pub deliveries_pruned: u64,
    pub task_leases_released: u64,
    pub embedding_leases_released: u64,
    pub reconciliations_enqueued: u64,
}

impl Housekeeping {
    fn add(&mut self, pass: &Housekeeping) {
        self.query_cache_expired += pass.query_cache_expired;
        self.tasks_pruned += pass.tasks_pruned;
        self.deliveries_pruned += pass.deliveries_pruned;
        self.task_leases_released += pass.task_leases_released;
        self.embedding_leases_released += pass.embedding_leases_released;
        self.reconciliations_enqueued += pass.reconciliations_enqueued;
    }
}

impl SqlFunction for KeelMaintenance {
    const NAME: &'static str = "keel_maintenance";
    type Output = MaintenancePass;
}

/// `keel_prune_rate_limits`: at most `batch` hits that left every window.
#[derive(Serialize)]
struct PruneRateLimits {
    batch: u32,
}

/// One call of a bounded pruning function: rows deleted, and whether its
/// batch was full (so there may be more).
#[derive(Debug, Deserialize)]
struct PrunePass {
    #[serde(
        alias = "rate_limit_hits_pruned",
        alias = "idempotency_keys_pruned",
        alias = "conversations_pruned"
    )]
    pruned: u64,
    more: bool,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RateLimitsPruned {
    pub rate_limit_hits_pruned: u64,
}

impl SqlFunction for PruneRateLimits {
    const NAME: &'static str = "keel_prune_rate_limits";
    type Output = PrunePass;
}

/// `keel_prune_idempotency_keys`: at most `batch` idempotency keys older
/// than their 24 hours.
#[derive(Serialize)]
struct PruneIdempotencyKeys {
    batch: u32,
}

impl SqlFunction for PruneIdempotencyKeys {
    const NAME: &'static str = "keel_prune_idempotency_keys";
    type Output = PrunePass;
}

/// `keel_prune_conversations`: at most `batch` conversations idle for
/// `retention_days`, with their messages.
#[derive(Serialize)]
struct PruneConversations {
    retention_days: u32,
    batch: u32,
}

impl SqlFunction for PruneConversations {
    const NAME: &'static str = "keel_prune_conversations";
    type Output = PrunePass;
}

/// Conversations per call: each takes its messages along, so fewer than
/// other rows.
const CONVERSATION_BATCH: u32 = 500;

/// `keel_prune_replaced_vectors`: other models' vectors and jobs, for
/// tenants the configured model has covered for `after_seconds`.
#[derive(Serialize)]
struct PruneReplacedVectors<'a> {
    model: &'a str,
    dimensions: u32,
    after_seconds: u64,
    limit: u32,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReplacedVectorsPruned {
    pub replaced_vectors_pruned: u64,
    pub replaced_jobs_pruned: u64,
}

impl SqlFunction for PruneReplacedVectors<'_> {
    const NAME: &'static str = "keel_prune_replaced_vectors";
    type Output = ReplacedVectorsPruned;
}

/// What one maintenance run did.
#[derive(Debug, Serialize, ToSchema)]
pub struct MaintenanceReport {
    #[serde(flatten)]
    pub housekeeping: Housekeeping,
    #[serde(flatten)]
    pub rate_limits: RateLimitsPruned,
    pub idempotency_keys_pruned: u64,
    pub conversations_pruned: u64,
    #[serde(flatten)]
    pub replaced_vectors: ReplacedVectorsPruned,
    /// False when the time budget ended the run with work left for the next.
    pub caught_up: bool,
}

/// Runs every maintenance step, batch after batch, until caught up or
/// `budget` is spent; `model`/`dimensions` is the configured embedding
/// model, whose vectors are never pruned.
pub async fn run(
    db: &Db,
    settings: &TaskSettings,
    model: &str,
    dimensions: u32,
    budget: Duration,
) -> Result<MaintenanceReport, DbError> {
    let deadline = Instant::now() + budget;
    let window = time::OffsetDateTime::now_utc().unix_timestamp() / 3600;
    let mut housekeeping = Housekeeping::default();
    let mut caught_up = false;
    while Instant::now() < deadline {
        let pass = db
            .run(&KeelMaintenance {
                task_retention_days: settings.task_retention_days,
                delivery_retention_days: settings.delivery_retention_days,
                window: window.to_string(),
                batch: BATCH,
            })
            .await?;
        housekeeping.add(&pass.done);
        if !pass.more {
            caught_up = true;
            break;
        }
    }
    let (rate_limit_hits_pruned, hits_caught_up) =
        prune_until_done(db, &PruneRateLimits { batch: BATCH }, deadline).await?;
    let rate_limits = RateLimitsPruned {
        rate_limit_hits_pruned,
    };
    let (idempotency_keys_pruned, keys_caught_up) =
        prune_until_done(db, &PruneIdempotencyKeys { batch: BATCH }, deadline).await?;
    let (conversations_pruned, conversations_caught_up) = prune_until_done(
        db,
        &PruneConversations {
            retention_days: settings.conversation_retention_days,
            batch: CONVERSATION_BATCH,
        },
        deadline,
    )
    .await?;
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
        idempotency_keys_pruned,
        conversations_pruned,
        replaced_vectors,
        caught_up: caught_up && hits_caught_up && keys_caught_up && conversations_caught_up,
    })
}

/// Calls the bounded pruning function `F` until a batch comes back short or
/// `deadline` passes: the rows deleted, and whether it caught up.
async fn prune_until_done<F: SqlFunction<Output = PrunePass>>(
    db: &Db,
    args: &F,
    deadline: Instant,
) -> Result<(u64, bool), DbError> {
    let mut pruned = 0;
    while Instant::now() < deadline {
        let pass = db.run(args).await?;
        pruned += pass.pruned;
        if !pass.more {
            return Ok((pruned, true));
        }
    }
    Ok((pruned, false))
}
