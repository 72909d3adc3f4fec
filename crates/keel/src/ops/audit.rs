//! Who did an audited action, from which request and address: stored in
//! `keel.audit_log` in the same transaction as the action (never a key or a
//! secret).

use std::net::IpAddr;

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Audit {
    /// `admin`, or a tenant key's public prefix.
    pub actor: String,
    pub request_id: String,
    pub ip: Option<IpAddr>,
}
