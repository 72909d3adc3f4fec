//! The durable task queue in Postgres. A task has a kind, an optional
//! tenant, a JSON payload, a status (`queued|running|succeeded|failed|dead`),
//! attempts out of a maximum, a due time and a lease. The engine
//! ([`engine::run`]) knows no kind: kinds are registered in one table
//! (`crate::jobs`), and each kind decides which of its failures are worth
//! another attempt.

pub mod engine;
pub mod handlers;
pub mod store;

use std::future::Future;
use std::pin::Pin;

use serde::Deserialize;
use serde_json::Value;

use crate::ops::ratelimit::GateError;
use crate::platform::db::{DbError, DbErrorClass};
use crate::tenants::TenantRef;

/// A claimed task, as its kind's handler sees it.
#[derive(Debug, Clone, Deserialize)]
pub struct Task {
    pub id: i64,
    pub tenant_id: Option<String>,
    pub kind: String,
    pub payload: Value,
    pub attempts: u32,
    pub max_attempts: u32,
}

impl Task {
    /// The task's tenant, as read from the queue (trusted: never client input).
    pub fn tenant(&self) -> Result<TenantRef, TaskError> {
        self.tenant_id
            .clone()
            .map(TenantRef::Trusted)
            .ok_or_else(|| TaskError::Permanent("this task kind needs a tenant".to_owned()))
    }
}

/// Why a task did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// Worth another attempt after a backoff (a dependency was down).
    #[error("{0}")]
    Retry(String),
    /// Retrying cannot help (bad payload, unknown kind): dead-letter now.
    #[error("{0}")]
    Permanent(String),
}

impl TaskError {
    /// `what` failed for good: `"<what>: <error>"`.
    pub fn permanent(what: &str, error: impl std::fmt::Display) -> Self {
        TaskError::Permanent(format!("{what}: {error}"))
    }
}

/// A database failure is retried when the database was unreachable or
/// failed on its side, and final when it refused the call itself.
impl From<DbError> for TaskError {
    fn from(error: DbError) -> Self {
        match error.class() {
            DbErrorClass::Unavailable | DbErrorClass::Internal => {
                TaskError::Retry(error.to_string())
            }
            _ => TaskError::Permanent(error.to_string()),
        }
    }
}

impl From<GateError> for TaskError {
    fn from(error: GateError) -> Self {
        match error {
            // Tasks act for trusted tenants, whose calls take no quota.
            GateError::Refused(..) => TaskError::Retry(error.to_string()),
            GateError::Db(error) => error.into(),
        }
    }
}

pub type TaskFuture = Pin<Box<dyn Future<Output = Result<(), TaskError>> + Send>>;

/// One task kind: its name and how to run it with the context `C` (the
/// application, for the kinds Keel registers).
pub struct TaskKind<C> {
    pub name: &'static str,
    pub run: fn(C, Task) -> TaskFuture,
}
