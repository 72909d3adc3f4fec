//! Keel's integration suite: real Postgres, real HTTP on loopback.
//! One binary with modules, so the suite links once.

mod answers;
mod api_contract;
mod binaries;
mod chat_clients;
mod chat_double;
mod conversations;
mod database;
mod dev_secrets;
mod documents;
mod embedding_worker;
mod faults;
mod health;
mod helpers;
mod http_conventions;
mod idempotency;
mod local_embeddings;
mod operations;
mod postgrest;
mod privileges;
mod publishable_keys;
mod rate_limits;
mod ready;
mod search;
mod sentry;
mod sms;
mod sms_doubles;
mod sources;
mod support;
mod tasks;
mod tenants;
mod webhook_presets;
mod webhooks;
