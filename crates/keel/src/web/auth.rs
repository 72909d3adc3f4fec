//! Who may call what, read off a request: operators by shared secret (admin
//! key, cron secret, metrics token; compared in constant time) and tenants by
//! their API key, whose [`TenantRef`] carries the request's quota so a
//! handler cannot forget it.

use secrecy::SecretString;

use super::error::ApiError;
use super::request::ApiRequest;
use crate::app::App;
use crate::platform::crypto::secret_matches;
use crate::tenants::{TenantRef, keys};

/// The tenant a request acts for, by its key. A missing or malformed key is
/// refused here without touching the database; whether a well-formed key is
/// valid is decided by the database function the handler calls.
pub fn tenant(request: &ApiRequest) -> Result<TenantRef, ApiError> {
    let hash =
        keys::presented_key_hash(request.bearer_token()).ok_or_else(ApiError::unauthorized)?;
    Ok(TenantRef::Key {
        hash,
        gate: request.rate_gate.clone(),
    })
}

/// The audit actor of a tenant request: the key's public prefix.
pub fn tenant_actor(request: &ApiRequest) -> String {
    keys::actor(request.bearer_token())
}

/// Admin routes: `Authorization: Bearer $ADMIN_API_KEY`. Without a
/// configured key, admin routes are closed.
pub fn require_admin(app: &App, request: &ApiRequest) -> Result<(), ApiError> {
    require_secret(app.config.admin_api_key.as_ref(), request)
}

/// Cron routes: `Authorization: Bearer $CRON_SECRET`, as Vercel Cron sends it.
pub fn require_cron(app: &App, request: &ApiRequest) -> Result<(), ApiError> {
    require_secret(app.config.cron_secret.as_ref(), request)
}

/// `Authorization: Bearer <expected>`; unset `expected` closes the route.
pub fn require_secret(
    expected: Option<&SecretString>,
    request: &ApiRequest,
) -> Result<(), ApiError> {
    match (expected, request.bearer_token()) {
        (Some(expected), Some(presented)) if secret_matches(presented, expected) => Ok(()),
        _ => Err(ApiError::unauthorized()),
    }
}
