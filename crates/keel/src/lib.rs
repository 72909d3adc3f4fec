//! Keel's core: everything a route binary needs, so that `api/<route>.rs` is
//! only wiring. See `docs/architecture.md` for how a request flows through
//! these modules.
//!
//! - [`config`]: typed settings parsed once per cold start.
//! - [`http`]: request/response conventions shared by every route.
//! - [`error`]: the one place errors become HTTP responses.
//! - [`db`]: the two database transports (PostgREST, direct Postgres) and migrations.
//! - [`health`]: liveness, readiness and the Sentry test route.
//! - [`telemetry`]: structured logs and Sentry.
//! - [`runtime`]: adapters for Vercel, AWS Lambda and a local HTTP server.
//! - [`routes`]: the table of every route, shared by the binaries and the dev server.
//! - [`app`]: the state built once per cold start.
//! - [`auth`]: admin key, cron secret and tenant API keys.
//! - [`tenants`]: the admin API for tenants and their keys.
//! - [`ingest`]: documents in, chunks out.
//! - [`embeddings`]: the OpenAI-compatible client and the background embedding worker.
//! - [`search`]: hybrid search and the query embedding cache.
//! - [`tasks`]: the durable task queue and its cron functions.
//! - [`webhooks`]: signed webhook intake, processing and reconciliation.
//! - [`metrics`]: Prometheus metrics computed from the database.

pub mod app;
pub mod auth;
pub mod config;
pub mod db;
pub mod embeddings;
pub mod error;
pub mod health;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod ratelimit;
pub mod routes;
pub mod runtime;
pub mod search;
pub mod tasks;
pub mod telemetry;
pub mod tenants;
pub mod webhooks;

pub use app::App;
pub use error::ApiError;
