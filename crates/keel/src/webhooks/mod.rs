//! Signed webhook intake, processing and reconciliation.
//!
//! - [`endpoints`]: a tenant registers an endpoint with a verification
//!   preset and gets its generated secret once (or gives the provider's
//!   own), stored sealed with `ENCRYPTION_KEY`, and rotates it with a grace
//!   period for the previous one.
//! - [`intake`]: a delivery is verified ([`presets`]: Standard Webhooks'
//!   [`signatures`] or a provider's own scheme), then stored with
//!   its processing enqueued in one transaction before the 200; a
//!   redelivery is a duplicate; a forged, stale or malformed one stores
//!   nothing.
//! - [`replies`]: a Vapi call waiting on a tool call or a knowledge-base
//!   request is answered from the tenant's knowledge in the response.
//! - [`sms`]: an inbound text (Twilio, Vonage) is answered through the
//!   answers pipeline, in Twilio's TwiML response when ready in time, else
//!   through the provider's Messages API from the `sms.reply` task.
//! - [`processing`] (task `webhook.process`) keeps a tenant's documents in
//!   sync and keeps Vapi's call reports as conversations ([`call_reports`]);
//!   [`reconcile`] (task `webhook.reconcile`) pulls an endpoint's
//!   `pull_url` for events it missed.

pub mod call_reports;
pub mod catalogue;
pub mod endpoints;
pub mod handlers;
pub mod intake;
pub mod presets;
pub mod processing;
pub mod reconcile;
pub mod replies;
pub mod signatures;
pub mod sms;
pub mod store;

use crate::ops::idempotency::IdempotencyError;
use crate::ops::quotas::QuotaExceeded;
use crate::ops::ratelimit::GateError;
use crate::platform::crypto::OpenError;
use signatures::Rejection;

/// Why a webhook operation did not complete.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The delivery is malformed, stale or forged; nothing was stored.
    #[error("delivery refused: {0:?}")]
    Rejected(Rejection),
    #[error("no webhook endpoint with this id")]
    UnknownEndpoint,
    #[error("webhook endpoints need ENCRYPTION_KEY to be configured")]
    NoEncryptionKey,
    /// A stored secret cannot be opened with the configured keys.
    #[error("endpoint {endpoint}: {source}")]
    Secret {
        endpoint: String,
        #[source]
        source: OpenError,
    },
    /// Over one of the tenant's quotas; nothing was stored.
    #[error(transparent)]
    OverQuota(QuotaExceeded),
    /// A malformed or reused `Idempotency-Key`, or one that cannot be kept.
    #[error(transparent)]
    Idempotency(#[from] IdempotencyError),
    #[error(transparent)]
    Call(#[from] GateError),
}

impl From<Rejection> for WebhookError {
    fn from(rejection: Rejection) -> Self {
        WebhookError::Rejected(rejection)
    }
}
