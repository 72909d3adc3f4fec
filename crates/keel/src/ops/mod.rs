//! Operations: rate limits, per-tenant quotas, the audit record, idempotency keys, health
//! checks, metrics and maintenance. The lowest area: every other area may use it.

pub mod audit;
pub mod handlers;
pub mod health;
pub mod idempotency;
pub mod maintenance;
pub mod metrics;
pub mod quotas;
pub mod ratelimit;
