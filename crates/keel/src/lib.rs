//! Keel's core: everything a route binary needs, so that `api/<route>.rs` is
//! only wiring. See `docs/architecture.md` for the folders, the rule that
//! keeps dependencies pointing one way, and how a request flows.
//!
//! - [`platform`]: configuration, database transports, TLS, crypto, the
//!   SSRF-guarded fetcher, telemetry. Knows no area.
//! - Areas, each with its core and its `handlers.rs`: [`ops`] (rate limits,
//!   audit, health, metrics, maintenance), [`tenants`], [`knowledge`]
//!   (documents, embeddings, search), [`tasks`] (the queue engine),
//!   [`webhooks`], [`answers`] (chat: conversations, assistant settings).
//! - [`app`]: the state built once per cold start.
//! - [`web`]: the request pipeline, `ApiRequest`, `ApiError`, responses and
//!   the runtime adapters.
//! - [`routes`] and [`jobs`]: the route table and the task-kind table;
//!   [`openapi`]: the OpenAPI document of the route table.

pub mod answers;
pub mod app;
pub mod jobs;
pub mod knowledge;
pub mod openapi;
pub mod ops;
pub mod platform;
pub mod routes;
pub mod sources;
pub mod tasks;
pub mod tenants;
pub mod web;
pub mod webhooks;

pub use app::App;
pub use web::ApiError;
