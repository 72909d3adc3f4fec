//! Knowledge that keeps itself current: a tenant's websites and sitemaps,
//! crawled on a schedule by the sources cron within its time budget, each
//! page an ordinary document of the tenant (see README, "Sources").

pub mod crawl;
pub mod definitions;
pub mod handlers;
pub mod pages;
pub mod robots;
pub mod sitemaps;
pub mod store;

use crate::knowledge::KnowledgeError;
use crate::ops::ratelimit::GateError;

/// Sources one tenant may have.
pub const MAX_SOURCES_PER_TENANT: u32 = 50;

/// Why a sources operation did not complete.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A field of the caller's input fails validation; the message names it.
    #[error("`{field}` {problem}")]
    Invalid { field: String, problem: String },
    /// The source is being crawled by another run right now.
    #[error(
        "the source is being crawled by another run; follow its progress with GET /api/sources/{0}"
    )]
    Busy(String),
    #[error(transparent)]
    Knowledge(#[from] KnowledgeError),
    #[error(transparent)]
    Call(#[from] GateError),
}

impl SourceError {
    pub fn invalid(field: &str, problem: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.to_owned(),
            problem: problem.into(),
        }
    }
}

impl From<crate::platform::db::DbError> for SourceError {
    fn from(error: crate::platform::db::DbError) -> Self {
        Self::Call(error.into())
    }
}
