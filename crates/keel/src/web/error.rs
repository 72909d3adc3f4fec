//! The error policy, and the one place errors become HTTP responses.
//!
//! Every handler returns `Result<_, ApiError>`. An `ApiError` carries a status,
//! a stable machine-readable `code`, a message that is safe to show a client,
//! and, for server faults, the cause chain. [`ApiError::into_response`] renders
//! `{"error":{"code","message","request_id"}}`; for 5xx it also logs the cause
//! chain and reports it to Sentry, while the client only ever sees the safe
//! message. Nothing else in Keel builds an error response.

use std::borrow::Cow;

use http::{HeaderValue, Response, StatusCode, header};
use serde::Serialize;
use utoipa::ToSchema;

use super::body::Body;
use super::response::json_response;
use crate::answers::AnswersError;
use crate::answers::provider::ProviderError;
use crate::knowledge::KnowledgeError;
use crate::ops::idempotency::IdempotencyError;
use crate::ops::quotas::QuotaExceeded;
use crate::ops::ratelimit::{GateError, Quota, Scope};
use crate::platform::db::{DbError, DbErrorClass};
use crate::platform::telemetry;
use crate::sources::SourceError;
use crate::webhooks::WebhookError;
use crate::webhooks::signatures::Rejection;

/// Seconds a client should wait before retrying a dependency outage.
pub const UNAVAILABLE_RETRY_AFTER_SECS: u64 = 5;
/// Seconds a client should wait while the deployment is in maintenance.
pub const MAINTENANCE_RETRY_AFTER_SECS: u64 = 300;

/// Every error response's body: `{"error":{"code","message","request_id"}}`.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody<'a> {
    pub error: ErrorDetail<'a>,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail<'a> {
    /// Stable and machine-readable (`invalid_field`, `unauthorized`, ...):
    /// each operation lists the codes it answers with.
    pub code: &'a str,
    /// Safe to show a client; names the offending field for `invalid_field`.
    pub message: &'a str,
    /// The request's id (the caller's `x-request-id`, or one Keel made).
    pub request_id: &'a str,
}

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: Cow<'static, str>,
    retry_after: Option<u64>,
    allow: Option<String>,
    /// Boxed: rare, and `Result<_, ApiError>` should stay small.
    quota: Option<Box<Quota>>,
    cause: Option<anyhow::Error>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )?;
        if let Some(cause) = &self.cause {
            write!(f, " (cause: {cause:#})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
            allow: None,
            quota: None,
            cause: None,
        }
    }

    /// A request the client must fix; `message` names the field and the problem.
    pub fn bad_request(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// A field failed validation: the message names it, e.g. "`top_k` must be between 1 and 20".
    pub fn invalid_field(field: &str, problem: &str) -> Self {
        Self::bad_request("invalid_field", format!("`{field}` {problem}"))
    }

    /// Missing or wrong credentials. Deliberately says nothing about which.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or invalid credentials",
        )
    }

    /// A refused credential with a specific reason the caller may act on
    /// (`invalid_signature`, `stale_timestamp`), where revealing it is safe.
    pub fn unauthorized_because(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }

    /// A valid credential used where it may not be; the message says why.
    pub fn forbidden(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn method_not_allowed(allow: String) -> Self {
        let mut error = Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("this route accepts {allow}"),
        );
        error.allow = Some(allow);
        error
    }

    pub fn payload_too_large(limit_bytes: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body exceeds the limit of {limit_bytes} bytes"),
        )
    }

    pub fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "request body must be JSON (Content-Type: application/json)",
        )
    }

    pub fn conflict(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// A dependency is down or slow; the client may retry after a pause.
    pub fn unavailable(message: impl Into<Cow<'static, str>>, cause: anyhow::Error) -> Self {
        let mut error = Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message);
        error.retry_after = Some(UNAVAILABLE_RETRY_AFTER_SECS);
        error.cause = Some(cause);
        error
    }

    /// Over the quota of `scope`: retry once the oldest counted request
    /// leaves the window.
    pub fn rate_limited(scope: Scope, quota: Quota) -> Self {
        let mut error = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "rate limit exceeded: {} requests per minute on {} routes; retry in {} s",
                quota.limit,
                scope.as_str(),
                quota.reset
            ),
        );
        error.retry_after = Some(quota.reset);
        error.quota = Some(Box::new(quota));
        error
    }

    /// Over a per-tenant quota: 429 with `Retry-After` when waiting helps
    /// (a daily volume, a full queue), else 409 (a count: free one first).
    pub fn over_quota(refused: QuotaExceeded) -> Self {
        let status = match refused.retry_after {
            Some(_) => StatusCode::TOO_MANY_REQUESTS,
            None => StatusCode::CONFLICT,
        };
        let mut error = Self::new(status, refused.quota.code(), refused.to_string());
        error.retry_after = refused.retry_after;
        error
    }

    pub fn maintenance() -> Self {
        let mut error = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "maintenance",
            "Keel is down for maintenance; please retry later",
        );
        error.retry_after = Some(MAINTENANCE_RETRY_AFTER_SECS);
        error
    }

    /// A fault on our side. The client sees an opaque message; the cause goes
    /// to logs and Sentry.
    pub fn internal(cause: anyhow::Error) -> Self {
        let mut error = Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "an internal error occurred; it has been logged with this request id",
        );
        error.cause = Some(cause);
        error
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn code(&self) -> &'static str {
        self.code
    }

    /// Renders the error for the client and, for server faults, reports the
    /// cause chain to logs and Sentry.
    pub fn into_response(self, request_id: &str) -> Response<Body> {
        if self.status.is_server_error() {
            self.report(request_id);
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: &self.message,
                request_id,
            },
        };
        // Three strings: serializing cannot fail.
        let body = serde_json::to_value(&body).unwrap_or_default();
        let mut response = json_response(self.status, &body);
        let headers = response.headers_mut();
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Some(allow) = self.allow.and_then(|a| HeaderValue::from_str(&a).ok()) {
            headers.insert(header::ALLOW, allow);
        }
        if let Some(quota) = &self.quota {
            quota.insert_headers(headers);
        }
        response
    }

    fn report(&self, request_id: &str) {
        match &self.cause {
            Some(cause) => {
                tracing::error!(
                    code = self.code,
                    error = format!("{cause:#}"),
                    "request failed"
                );
                telemetry::capture_error(cause.as_ref(), request_id);
            }
            None => tracing::warn!(code = self.code, "request refused: {}", self.message),
        }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(cause: anyhow::Error) -> Self {
        // A database error wrapped in context keeps its status (a 409 stays a 409).
        match cause.downcast_ref::<DbError>() {
            Some(db) if db.class() != DbErrorClass::Internal => {
                let mut error = ApiError::from_db_class(db);
                error.cause = Some(cause);
                error
            }
            _ => ApiError::internal(cause),
        }
    }
}

impl From<DbError> for ApiError {
    fn from(error: DbError) -> Self {
        let mut api = ApiError::from_db_class(&error);
        api.cause = Some(error.into());
        api
    }
}

impl From<GateError> for ApiError {
    fn from(error: GateError) -> Self {
        match error {
            GateError::Refused(scope, quota) => ApiError::rate_limited(scope, quota),
            GateError::Db(error) => error.into(),
        }
    }
}

impl From<IdempotencyError> for ApiError {
    fn from(error: IdempotencyError) -> Self {
        match error {
            IdempotencyError::InvalidKey => {
                ApiError::bad_request("invalid_request", error.to_string())
            }
            IdempotencyError::Reused => Self::new(
                StatusCode::CONFLICT,
                "idempotency_key_reused",
                error.to_string(),
            ),
            IdempotencyError::NoEncryptionKey => ApiError::unavailable(
                error.to_string(),
                anyhow::anyhow!("ENCRYPTION_KEY is unset"),
            ),
            IdempotencyError::Unreadable(_) | IdempotencyError::Malformed(_) => {
                ApiError::internal(error.into())
            }
        }
    }
}

impl From<KnowledgeError> for ApiError {
    fn from(error: KnowledgeError) -> Self {
        match error {
            KnowledgeError::Invalid { field, problem } => ApiError::invalid_field(&field, &problem),
            KnowledgeError::Contended => ApiError::conflict(error.to_string()),
            KnowledgeError::NoProvider => ApiError::unavailable(
                "no embeddings provider is configured",
                anyhow::anyhow!("OPENAI_API_KEY and OPENAI_BASE_URL are both unset"),
            ),
            KnowledgeError::Call(error) => error.into(),
            KnowledgeError::Internal(cause) => cause.into(),
        }
    }
}

impl From<SourceError> for ApiError {
    fn from(error: SourceError) -> Self {
        match error {
            SourceError::Invalid { field, problem } => ApiError::invalid_field(&field, &problem),
            SourceError::Busy(_) => ApiError::conflict(error.to_string()),
            SourceError::Knowledge(error) => error.into(),
            SourceError::Call(error) => error.into(),
        }
    }
}

impl From<AnswersError> for ApiError {
    fn from(error: AnswersError) -> Self {
        match error {
            AnswersError::Invalid { field, problem } => ApiError::invalid_field(&field, &problem),
            AnswersError::Call(error) => error.into(),
            AnswersError::Knowledge(error) => error.into(),
            AnswersError::Provider(error) => error.into(),
            AnswersError::Internal(cause) => cause.into(),
        }
    }
}

/// The chat model failed before anything reached the client: a 503 the
/// client may retry (after the provider's own `retry-after` when it rate
/// limits), or a 502 when the provider refused the request as configured
/// (an unknown model, say), which retrying does not fix.
impl From<ProviderError> for ApiError {
    fn from(error: ProviderError) -> Self {
        match &error {
            ProviderError::Refused { status, message } => {
                let mut refused = Self::new(
                    StatusCode::BAD_GATEWAY,
                    "chat_provider_refused",
                    format!("the chat model refused the request ({status}): {message}"),
                );
                refused.cause = Some(error.into());
                refused
            }
            ProviderError::RateLimited { retry_after } => {
                let wait = retry_after.map_or(UNAVAILABLE_RETRY_AFTER_SECS, |w| w.as_secs().max(1));
                let mut limited = ApiError::unavailable(
                    "the chat model is rate limiting; retry shortly",
                    error.into(),
                );
                limited.code = "chat_provider_unavailable";
                limited.retry_after = Some(wait);
                limited
            }
            _ => {
                let mut down = ApiError::unavailable(
                    "the chat model is unavailable; retry shortly",
                    error.into(),
                );
                down.code = "chat_provider_unavailable";
                down
            }
        }
    }
}

impl From<WebhookError> for ApiError {
    fn from(error: WebhookError) -> Self {
        match error {
            WebhookError::Rejected(Rejection::Malformed(code, message)) => {
                ApiError::bad_request(code, message)
            }
            WebhookError::Rejected(Rejection::Stale(signed_time)) => {
                ApiError::unauthorized_because(
                    "stale_timestamp",
                    format!("{signed_time} is more than 5 minutes away from now"),
                )
            }
            WebhookError::Rejected(Rejection::Forged(signature)) => ApiError::unauthorized_because(
                "invalid_signature",
                format!("no {signature} matches this endpoint's secret"),
            ),
            WebhookError::UnknownEndpoint => ApiError::not_found(error.to_string()),
            WebhookError::OverQuota(refused) => ApiError::over_quota(refused),
            WebhookError::NoEncryptionKey => ApiError::unavailable(
                error.to_string(),
                anyhow::anyhow!("ENCRYPTION_KEY is unset"),
            ),
            WebhookError::Secret { .. } => ApiError::internal(error.into()),
            WebhookError::Idempotency(error) => error.into(),
            WebhookError::Call(error) => error.into(),
        }
    }
}

impl ApiError {
    fn from_db_class(error: &DbError) -> Self {
        let message = error.client_message();
        match error.class() {
            DbErrorClass::Unauthorized => Self::unauthorized(),
            DbErrorClass::Forbidden => Self::forbidden(message),
            DbErrorClass::Conflict => Self::conflict(message),
            DbErrorClass::NotFound => Self::not_found(message),
            DbErrorClass::InvalidInput => Self::bad_request("invalid_request", message),
            DbErrorClass::Unavailable => {
                let mut api = Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "database_unavailable",
                    "the database is unavailable; please retry shortly",
                );
                api.retry_after = Some(UNAVAILABLE_RETRY_AFTER_SECS);
                api
            }
            DbErrorClass::Internal => Self::internal(anyhow::anyhow!("{error}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(response: Response<Body>) -> serde_json::Value {
        serde_json::from_slice(response.body().as_full().unwrap()).unwrap()
    }

    #[test]
    fn internal_errors_never_show_their_cause_to_the_client() {
        let error = ApiError::internal(anyhow::anyhow!("password=hunter2 leaked in cause"));
        let response = error.into_response("req-1");
        assert_eq!(response.status(), 500);
        let text = String::from_utf8(response.body().as_full().unwrap().to_vec()).unwrap();
        assert!(!text.contains("hunter2"), "{text}");
        assert_eq!(body(response)["error"]["request_id"], "req-1");
    }

    #[test]
    fn database_errors_map_to_their_http_status() {
        let cases = [
            ("PT401", 401, "an unknown or revoked key"),
            (
                "PT403",
                403,
                "a publishable key from an origin not on its list",
            ),
            ("23505", 409, "unique violation is a conflict"),
            ("P0002", 404, "no data found is not found"),
            ("22023", 400, "invalid parameter is a client error"),
            ("P0001", 400, "a raised exception is a client error"),
            ("08006", 503, "connection failure is unavailable"),
            ("57014", 503, "statement timeout is unavailable"),
            ("PGRST003", 503, "PostgREST pool timeout is unavailable"),
            (
                "PGRST202",
                500,
                "a missing function is our deployment fault",
            ),
            ("42501", 500, "a permission error is our misconfiguration"),
        ];
        for (code, status, reason) in cases {
            let error = DbError::Rejected {
                function: "keel_test",
                code: code.to_owned(),
                message: "boom".to_owned(),
                details: None,
                hint: None,
            };
            let response = ApiError::from(error).into_response("r");
            assert_eq!(response.status().as_u16(), status, "{code}: {reason}");
            if status == 503 {
                assert_eq!(response.headers()[header::RETRY_AFTER], "5", "{reason}");
            }
        }
    }

    #[test]
    fn a_database_error_keeps_its_status_through_added_context() {
        let error = DbError::Rejected {
            function: "keel_test",
            code: "23505".to_owned(),
            message: "slug already taken".to_owned(),
            details: None,
            hint: None,
        };
        let wrapped = anyhow::Error::from(error).context("creating tenant");
        let response = ApiError::from(wrapped).into_response("r");
        assert_eq!(response.status(), 409);
        assert_eq!(body(response)["error"]["message"], "slug already taken");
    }
}
