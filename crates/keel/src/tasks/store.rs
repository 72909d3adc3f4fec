//! The task-queue SQL functions Keel calls (migrations/0003), one typed
//! binding each.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Task;
use crate::platform::db::{Page, SqlFunction};

/// `keel_claim_tasks`: due tasks under a new lease, `FOR UPDATE SKIP LOCKED`.
#[derive(Serialize)]
pub struct ClaimTasks {
    pub limit: u32,
    pub lease_seconds: u64,
}

#[derive(Deserialize)]
pub struct TaskClaim {
    pub lease_token: String,
    pub tasks: Vec<Task>,
}

impl SqlFunction for ClaimTasks {
    const NAME: &'static str = "keel_claim_tasks";
    type Output = TaskClaim;
}

/// `keel_complete_task`: records an outcome, if the lease is still ours.
#[derive(Serialize)]
pub struct CompleteTask<'a> {
    pub id: i64,
    pub lease_token: &'a str,
    /// `succeeded`, `failed` (retry after a backoff), `deferred` (the same
    /// without using an attempt) or `dead`.
    pub outcome: &'a str,
    pub error: Option<&'a str>,
    pub retry_base_seconds: f64,
}

#[derive(Deserialize)]
pub struct Recorded {
    pub recorded: bool,
    pub status: Option<String>,
}

impl SqlFunction for CompleteTask<'_> {
    const NAME: &'static str = "keel_complete_task";
    type Output = Recorded;
}

/// `keel_task_backlog`: how many tasks are due.
#[derive(Serialize)]
pub struct TaskBacklog {}

#[derive(Deserialize)]
pub struct Backlog {
    pub due: u64,
}

impl SqlFunction for TaskBacklog {
    const NAME: &'static str = "keel_task_backlog";
    type Output = Backlog;
}

/// `keel_list_tasks`: a tenant's tasks, newest first.
#[derive(Serialize)]
pub struct ListTasks<'a> {
    pub status: Option<&'a str>,
    pub kind: Option<&'a str>,
    pub limit: u32,
    pub cursor: Option<&'a str>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TaskSummary {
    pub id: i64,
    pub kind: String,
    pub status: String,
    pub attempts: u32,
    pub max_attempts: u32,
    pub run_at: String,
    pub last_error: Option<String>,
    pub idempotency_key: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub finished_at: Option<String>,
}

impl SqlFunction for ListTasks<'_> {
    const NAME: &'static str = "keel_list_tasks";
    type Output = Page<TaskSummary>;
}
