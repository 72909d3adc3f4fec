//! The platform every area builds on, and which knows no area: configuration,
//! the database transports, TLS, cryptography, the SSRF-guarded outbound
//! client, token counting, and telemetry.

pub mod budget;
pub mod config;
pub mod crypto;
pub mod db;
pub mod fetch;
pub mod telemetry;
pub mod tls;
pub mod tokens;
