//! Per-tenant quotas: bounds on what one tenant may keep or queue (stored
//! webhook bytes per day, unfinished tasks, pull endpoints), checked by the
//! SQL function that would exceed them, which then stores nothing and answers
//! `{"refused": {quota, limit, retry_after}}`.

use serde::{Deserialize, Serialize};

/// Which quota refused an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantQuota {
    /// `TENANT_WEBHOOK_BYTES_PER_DAY`: webhook payload bytes stored per UTC day.
    WebhookBytesPerDay,
    /// `TENANT_MAX_QUEUED_TASKS`: unfinished tasks.
    QueuedTasks,
    /// `TENANT_MAX_PULL_ENDPOINTS`: endpoints with a `pull_url`.
    PullEndpoints,
}

impl TenantQuota {
    /// The stable error code clients see.
    pub fn code(self) -> &'static str {
        match self {
            TenantQuota::WebhookBytesPerDay => "webhook_quota_exceeded",
            TenantQuota::QueuedTasks => "task_queue_full",
            TenantQuota::PullEndpoints => "pull_endpoint_limit",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            TenantQuota::WebhookBytesPerDay => "webhook payload bytes stored per day (UTC)",
            TenantQuota::QueuedTasks => "unfinished tasks",
            TenantQuota::PullEndpoints => "webhook endpoints with a pull_url",
        }
    }
}

/// A refusal by a per-tenant quota: nothing was stored.
#[derive(Debug, Clone, Deserialize, thiserror::Error)]
#[error("over the tenant's quota of {limit} {}", quota.describe())]
pub struct QuotaExceeded {
    pub quota: TenantQuota,
    pub limit: u64,
    /// Seconds until the quota can admit more; none for a count (free one first).
    pub retry_after: Option<u64>,
}
