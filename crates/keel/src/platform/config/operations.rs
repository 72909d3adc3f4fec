//! Operations settings: rate limits, the task queue and the retention of
//! tasks, deliveries and conversations, and Sentry.

use std::time::Duration;

use secrecy::SecretString;

use super::vars::Vars;

/// Requests per minute per bucket (see `ratelimit`).
#[derive(Debug, Clone)]
pub struct RateLimitSettings {
    /// Per tenant, on `POST /api/search`.
    pub search_per_minute: u32,
    /// Per tenant, on every other tenant-key route.
    pub tenant_per_minute: u32,
    /// Per client address, on unauthenticated routes (`/api/ready`).
    pub anonymous_per_minute: u32,
    /// Per client address, on webhook intake: providers send in bursts.
    pub webhook_per_minute: u32,
    /// Per tenant, on the chat routes: every request may cost LLM tokens.
    pub chat_per_minute: u32,
}

#[derive(Debug, Clone)]
pub struct SentryConfig {
    pub dsn: SecretString,
    pub traces_sample_rate: f32,
}
#[derive(Debug, Clone)]
pub struct TaskSettings {
    pub retry_base: Duration,
    pub task_retention_days: u32,
    pub delivery_retention_days: u32,
    /// Days a conversation is kept after its last turn.
    pub conversation_retention_days: u32,
    /// Development only: lets reconciliation pull from loopback/private hosts.
    pub allow_private_pull_urls: bool,
    /// Per-tenant bounds, so one tenant cannot fill the database or the queue.
    pub quotas: TenantQuotas,
}

/// Per-tenant quotas (README, "Per-tenant quotas").
#[derive(Debug, Clone)]
pub struct TenantQuotas {
    /// Webhook payload bytes stored per tenant and UTC day.
    pub webhook_bytes_per_day: u64,
    /// Unfinished (queued, retrying or running) tasks per tenant.
    pub queued_tasks: u32,
    /// Endpoints with a `pull_url` per tenant (each is pulled hourly).
    pub pull_endpoints: u32,
}

impl Vars<'_> {
    pub(super) fn rate_limits(&mut self) -> RateLimitSettings {
        RateLimitSettings {
            search_per_minute: self.per_minute("RATE_LIMIT_SEARCH_PER_MINUTE", 60),
            tenant_per_minute: self.per_minute("RATE_LIMIT_TENANT_PER_MINUTE", 300),
            anonymous_per_minute: self.per_minute("RATE_LIMIT_ANONYMOUS_PER_MINUTE", 30),
            webhook_per_minute: self.per_minute("RATE_LIMIT_WEBHOOK_PER_MINUTE", 600),
            chat_per_minute: self.per_minute("RATE_LIMIT_CHAT_PER_MINUTE", 60),
        }
    }

    pub(super) fn task_settings(&mut self, production: bool) -> TaskSettings {
        let tasks = TaskSettings {
            retry_base: Duration::from_secs(self.parsed("TASK_RETRY_BASE_SECONDS", 30u64)),
            task_retention_days: self.parsed("TASK_RETENTION_DAYS", 7u32).max(1),
            delivery_retention_days: self.parsed("WEBHOOK_DELIVERY_RETENTION_DAYS", 30u32).max(1),
            conversation_retention_days: self.parsed("CONVERSATION_RETENTION_DAYS", 90u32).max(1),
            allow_private_pull_urls: self.flag("ALLOW_PRIVATE_PULL_URLS"),
            quotas: TenantQuotas {
                webhook_bytes_per_day: self
                    .parsed("TENANT_WEBHOOK_BYTES_PER_DAY", 256 * 1024 * 1024u64)
                    .max(1),
                queued_tasks: self.parsed("TENANT_MAX_QUEUED_TASKS", 10_000u32).max(1),
                pull_endpoints: self.parsed("TENANT_MAX_PULL_ENDPOINTS", 5u32),
            },
        };
        if tasks.allow_private_pull_urls && production {
            self.problem(
                "ALLOW_PRIVATE_PULL_URLS",
                "must not be set in production (it would let pull URLs reach internal hosts)",
            );
        }
        tasks
    }

    pub(super) fn sentry(&mut self) -> Option<SentryConfig> {
        let dsn = self.optional("SENTRY_DSN").map(str::to_owned);
        let rate = self.parsed("SENTRY_TRACES_SAMPLE_RATE", 0.0f32);
        if !(0.0..=1.0).contains(&rate) {
            self.problem("SENTRY_TRACES_SAMPLE_RATE", "must be between 0.0 and 1.0");
        }
        let dsn = dsn?;
        if dsn.parse::<sentry::types::Dsn>().is_err() {
            self.problem(
                "SENTRY_DSN",
                "is not a valid Sentry DSN (https://key@host/project)",
            );
            return None;
        }
        Some(SentryConfig {
            dsn: SecretString::from(dsn),
            traces_sample_rate: rate.clamp(0.0, 1.0),
        })
    }
}
