use std::time::Duration;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A failed database call, whichever transport made it.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The database (or PostgREST) answered with an error code: a SQLSTATE such
    /// as `23505`, or a PostgREST code such as `PGRST202`.
    #[error("{function} failed with {code}: {message}")]
    Rejected {
        function: &'static str,
        code: String,
        message: String,
        details: Option<String>,
        hint: Option<String>,
    },
    #[error("database unreachable while calling {function}")]
    Unavailable {
        function: &'static str,
        #[source]
        source: BoxError,
    },
    #[error("{function} timed out after {}ms", after.as_millis())]
    Timeout {
        function: &'static str,
        after: Duration,
    },
    #[error("unexpected response to {function}: {reason}")]
    Protocol {
        function: &'static str,
        reason: String,
    },
}

/// What a database error means for the client, and so its HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbErrorClass {
    /// Keel's functions raise PT401 for a missing, unknown or revoked key.
    Unauthorized,
    /// PT403: a valid credential used where it may not be (a publishable
    /// key from an origin not on its list).
    Forbidden,
    Conflict,
    NotFound,
    InvalidInput,
    Unavailable,
    Internal,
}

impl DbError {
    pub fn class(&self) -> DbErrorClass {
        match self {
            DbError::Rejected { code, .. } => classify_code(code),
            DbError::Unavailable { .. } | DbError::Timeout { .. } => DbErrorClass::Unavailable,
            DbError::Protocol { .. } => DbErrorClass::Internal,
        }
    }

    /// The SQLSTATE or PostgREST code, when the database answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            DbError::Rejected { code, .. } => Some(code),
            _ => None,
        }
    }

    /// A message safe for a client. Keel's SQL functions write their client
    /// errors (classes 22, 23, P0) for people to read; anything else is generic.
    pub fn client_message(&self) -> String {
        match (self, self.class()) {
            (
                DbError::Rejected { message, .. },
                DbErrorClass::Forbidden
                | DbErrorClass::Conflict
                | DbErrorClass::NotFound
                | DbErrorClass::InvalidInput,
            ) => message.clone(),
            (_, DbErrorClass::Unavailable) => "the database is unavailable".to_owned(),
            _ => "the database could not complete the request".to_owned(),
        }
    }

    /// A short description for readiness checks: no host names, no messages.
    pub fn summary(&self) -> String {
        match self {
            DbError::Rejected { code, .. } => format!("rejected the call ({code})"),
            DbError::Unavailable { .. } => "unreachable".to_owned(),
            DbError::Timeout { after, .. } => format!("timed out after {}ms", after.as_millis()),
            DbError::Protocol { .. } => "unexpected response".to_owned(),
        }
    }
}

/// Maps SQLSTATEs (https://www.postgresql.org/docs/current/errcodes-appendix.html)
/// and PostgREST codes (https://postgrest.org/en/stable/references/errors.html).
fn classify_code(code: &str) -> DbErrorClass {
    match code {
        "PT401" => DbErrorClass::Unauthorized,
        "PT403" => DbErrorClass::Forbidden,
        "23505" | "23503" | "23P01" => DbErrorClass::Conflict,
        "P0002" | "PGRST116" => DbErrorClass::NotFound,
        "P0001" | "PT400" | "23502" | "23514" => DbErrorClass::InvalidInput,
        // Retryable: connection, resources, shutdown, cancel/statement timeout,
        // serialization and deadlock; PostgREST's own connection/pool errors.
        "57014" | "57P01" | "57P02" | "57P03" | "40001" | "40P01" | "PGRST000" | "PGRST001"
        | "PGRST002" | "PGRST003" => DbErrorClass::Unavailable,
        _ if code.starts_with("22") => DbErrorClass::InvalidInput,
        _ if code.starts_with("08") || code.starts_with("53") => DbErrorClass::Unavailable,
        _ => DbErrorClass::Internal,
    }
}
