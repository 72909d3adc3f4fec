//! Operations: rate limits, per-tenant quotas, the audit record, health checks, metrics and
//! maintenance. The lowest area: every other area may use it.

pub mod audit;
pub mod handlers;
pub mod health;
pub mod maintenance;
pub mod metrics;
pub mod quotas;
pub mod ratelimit;
