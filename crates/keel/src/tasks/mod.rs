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

/// Why a task did not succeed. The message is kept as the task's
/// `last_error`, which its tenant reads through `GET /api/tasks`: it says
/// what went wrong in the tenant's terms, never our internals (database
/// text, function names, panics); those go to the logs ([`TaskError::internal`]).
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// Worth another attempt after a backoff (a dependency was down).
    #[error("{0}")]
    Retry(String),
    /// Waited on another task (a document another delivery is applying):
    /// retried after a backoff without using an attempt.
    #[error("{0}")]
    Busy(String),
    /// Retrying cannot help (bad payload, unknown kind): dead-letter now.
    #[error("{0}")]
    Permanent(String),
}

impl TaskError {
    /// `what` failed for good: `"<what>: <error>"`.
    pub fn permanent(what: &str, error: impl std::fmt::Display) -> Self {
        TaskError::Permanent(format!("{what}: {error}"))
    }

    /// Our side failed: the full `cause` goes to the logs (in the task's
    /// span, so with its id), the tenant sees only `summary`.
    pub fn internal(retry: bool, summary: &str, cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(cause = %cause, summary, "task failed on our side");
        if retry {
            TaskError::Retry(summary.to_owned())
        } else {
            TaskError::Permanent(summary.to_owned())
        }
    }
}

/// A database failure is retried when the database was unreachable or
/// failed on its side, and final when it refused the call itself. The
/// tenant sees the client-safe message: what Keel's SQL functions wrote for
/// people (invalid input, conflicts) or a generic summary.
impl From<DbError> for TaskError {
    fn from(error: DbError) -> Self {
        let summary = error.client_message();
        match error.class() {
            DbErrorClass::Unavailable | DbErrorClass::Internal => {
                TaskError::internal(true, &summary, &error)
            }
            DbErrorClass::Unauthorized => TaskError::internal(false, &summary, &error),
            _ => {
                tracing::warn!(cause = %error, "the database refused a task's call");
                TaskError::Permanent(summary)
            }
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
