//! Tenants (a restaurant, a shop, a clinic), their API keys and publishable
//! keys, and [`TenantRef`]: whose data a database call acts on.

pub mod handlers;
pub mod keys;
pub mod publishable;
pub mod store;

use std::sync::Arc;

use serde::Serialize;

use crate::ops::ratelimit::{GateError, RateGate};
use crate::platform::db::{Db, SqlFunction};

/// Whose data a database call acts on. HTTP handlers only ever build `Key`
/// from the caller's credential; `Trusted` carries a tenant id read from the
/// database itself (a task's owner), never one a client supplied.
#[derive(Debug, Clone)]
pub enum TenantRef {
    /// A caller's key hash, and the request's quota its first call charges.
    Key {
        hash: String,
        gate: Arc<RateGate>,
    },
    Trusted(String),
}

/// How a tenant function learns its tenant: `key_hash` (resolved and checked
/// by the function itself) or `tenant_id`.
#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
enum TenantArg<'a> {
    KeyHash(&'a str),
    TenantId(&'a str),
}

/// `F`'s arguments with the tenant reference beside them.
#[derive(Serialize)]
struct ForTenant<'a, F> {
    #[serde(flatten)]
    tenant: TenantArg<'a>,
    #[serde(flatten)]
    args: &'a F,
}

impl<F: SqlFunction> SqlFunction for ForTenant<'_, F> {
    const NAME: &'static str = F::NAME;
    type Output = F::Output;
}

impl TenantRef {
    /// Runs the tenant function `F` for this tenant. A key's first call takes
    /// the request from the tenant's quota in the same round trip.
    pub async fn run<F: SqlFunction>(&self, db: &Db, args: &F) -> Result<F::Output, GateError> {
        match self {
            TenantRef::Key { hash, gate } => {
                let args = ForTenant {
                    tenant: TenantArg::KeyHash(hash),
                    args,
                };
                gate.run(db, &args).await
            }
            TenantRef::Trusted(id) => {
                let args = ForTenant {
                    tenant: TenantArg::TenantId(id),
                    args,
                };
                Ok(db.run(&args).await?)
            }
        }
    }
}
