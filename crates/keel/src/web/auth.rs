//! Who may call what, read off a request: operators by shared secret (admin
//! key, cron secret, metrics token; compared in constant time) and tenants by
//! their API key, whose [`TenantRef`] carries the request's quota so a
//! handler cannot forget it, and chat callers ([`ChatCaller`]) by a tenant
//! key or a publishable key.

use secrecy::SecretString;

use super::error::ApiError;
use super::request::ApiRequest;
use crate::answers::conversations::{ChatCaller, VISITOR_TOKEN_HEADER};
use crate::app::App;
use crate::platform::crypto::secret_matches;
use crate::tenants::{TenantRef, keys, publishable};

/// The tenant a request acts for, by its key. A missing or malformed key is
/// refused here without touching the database; whether a well-formed key is
/// valid is decided by the database function the handler calls. A
/// publishable key is refused (403): it may only chat.
pub fn tenant(request: &ApiRequest) -> Result<TenantRef, ApiError> {
    if request
        .bearer_token()
        .is_some_and(publishable::is_publishable)
    {
        return Err(publishable_refused());
    }
    let hash =
        keys::presented_key_hash(request.bearer_token()).ok_or_else(ApiError::unauthorized)?;
    Ok(TenantRef::Key {
        hash,
        gate: request.rate_gate.clone(),
    })
}

fn publishable_refused() -> ApiError {
    ApiError::forbidden(
        "a publishable key (keel_pk_) may only call /api/chat and read its visitor's \
         conversation; use a tenant key from a server",
    )
}

/// Who is chatting: a publishable key (`keel_pk_…`) with the request's
/// `Origin` and `x-keel-visitor-token`, or a tenant key. Anything else is
/// refused here without touching the database.
pub fn chat_caller(request: &ApiRequest) -> Result<ChatCaller, ApiError> {
    let token = request.bearer_token().ok_or_else(ApiError::unauthorized)?;
    if publishable::is_publishable(token) {
        let header = |name| {
            request
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        };
        // The origin as browsers write it; one that is not an origin at
        // all matches no key's list.
        let origin = header(http::header::ORIGIN.as_str()).and_then(publishable::normalise_origin);
        return Ok(ChatCaller::Publishable {
            key_hash: keys::hash_key(token),
            origin,
            visitor_token: header(VISITOR_TOKEN_HEADER).map(str::to_owned),
        });
    }
    let key_hash = keys::presented_key_hash(Some(token)).ok_or_else(ApiError::unauthorized)?;
    Ok(ChatCaller::Secret { key_hash })
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
