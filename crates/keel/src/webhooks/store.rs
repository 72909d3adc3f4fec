//! The webhook SQL functions Keel calls (migrations/0003, 0005, 0012, 0014,
//! 0017, 0019), one typed binding each.

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::presets::Verification;
use crate::ops::audit::Audit;
use crate::ops::idempotency::{Claim, Idempotent};
use crate::ops::quotas::QuotaExceeded;
use crate::platform::db::{Page, SqlFunction};

/// `keel_create_webhook_endpoint`: a tenant's endpoint with its sealed secret.
#[derive(Serialize)]
pub struct CreateWebhookEndpoint<'a> {
    pub source: &'a str,
    pub verification: Verification,
    pub pull_url: Option<&'a str>,
    pub secret_ciphertext: &'a str,
    pub key_id: &'a str,
    /// With a `pull_url`: refused once the tenant has this many.
    pub max_pull_endpoints: u32,
    pub audit: &'a Audit,
    /// With `Idempotency-Key`: the claim, holding the sealed secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency: Option<Claim>,
}

/// The endpoint, or the quota that refused it.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum EndpointCreation {
    Refused { refused: QuotaExceeded },
    Created(CreatedEndpoint),
}

#[derive(Debug, Deserialize)]
pub struct CreatedEndpoint {
    pub id: String,
    pub source: String,
    pub verification: Verification,
    pub pull_url: Option<String>,
    pub created_at: String,
}

impl SqlFunction for CreateWebhookEndpoint<'_> {
    const NAME: &'static str = "keel_create_webhook_endpoint";
    type Output = Idempotent<EndpointCreation>;
}

/// `keel_rotate_webhook_secret`: a new secret; the old one verifies for
/// `grace_seconds` more.
#[derive(Serialize)]
pub struct RotateWebhookSecret<'a> {
    pub id: &'a str,
    pub secret_ciphertext: &'a str,
    pub key_id: &'a str,
    pub grace_seconds: u32,
    pub audit: &'a Audit,
    /// With `Idempotency-Key`: the claim, holding the sealed secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency: Option<Claim>,
}

#[derive(Debug, Deserialize)]
pub struct RotatedSecret {
    pub id: String,
    pub rotated_at: String,
    pub previous_secret_expires_at: Option<String>,
}

impl SqlFunction for RotateWebhookSecret<'_> {
    const NAME: &'static str = "keel_rotate_webhook_secret";
    type Output = Idempotent<RotatedSecret>;
}

/// `keel_webhook_endpoint`: what intake needs to verify a delivery. Not
/// tenant-scoped: the endpoint id in the URL is all a sender has.
#[derive(Serialize)]
pub struct WebhookEndpoint<'a> {
    pub id: &'a str,
}

#[derive(Deserialize)]
pub struct EndpointRecord {
    pub id: String,
    pub tenant_id: String,
    pub verification: Verification,
    pub secret_ciphertext: String,
    pub key_id: String,
    /// Set while a rotated-out secret is within its grace period.
    pub previous_secret_ciphertext: Option<String>,
    pub previous_key_id: Option<String>,
    pub pull_url: Option<String>,
}

impl SqlFunction for WebhookEndpoint<'_> {
    const NAME: &'static str = "keel_webhook_endpoint";
    type Output = EndpointRecord;
}

/// `keel_webhook_endpoint_verification`: how the tenant's endpoint `id`
/// verifies deliveries (so a rotation knows who issues its secret).
#[derive(Serialize)]
pub struct WebhookEndpointVerification<'a> {
    pub id: &'a str,
}

#[derive(Deserialize)]
pub struct EndpointVerification {
    pub verification: Verification,
}

impl SqlFunction for WebhookEndpointVerification<'_> {
    const NAME: &'static str = "keel_webhook_endpoint_verification";
    type Output = EndpointVerification;
}

/// `keel_accept_webhook`: stores a verified delivery and enqueues its
/// processing in one transaction; a known webhook id is a duplicate; a new
/// one over the tenant's quotas is refused, storing nothing.
#[derive(Serialize)]
pub struct AcceptWebhook<'a> {
    pub endpoint_id: &'a str,
    pub webhook_id: &'a str,
    pub event_type: &'a str,
    pub payload: &'a Value,
    /// The event's ordering key (RFC 3339), if it has one.
    pub event_at: Option<&'a str>,
    pub max_webhook_bytes_per_day: u64,
    pub max_queued_tasks: u32,
}

#[derive(Debug, Deserialize)]
pub struct Accepted {
    #[serde(default)]
    pub duplicate: bool,
    /// The stored delivery; absent for a duplicate or a refusal.
    #[serde(default)]
    pub delivery_id: Option<i64>,
    #[serde(default)]
    pub refused: Option<QuotaExceeded>,
}

impl SqlFunction for AcceptWebhook<'_> {
    const NAME: &'static str = "keel_accept_webhook";
    type Output = Accepted;
}

/// `keel_count_webhook_rejection`: counts a refused delivery for metrics.
#[derive(Serialize)]
pub struct CountWebhookRejection {}

impl SqlFunction for CountWebhookRejection {
    const NAME: &'static str = "keel_count_webhook_rejection";
    type Output = IgnoredAny;
}

/// `keel_webhook_delivery`: one stored delivery of the tenant, or nothing
/// once retention pruned it.
#[derive(Serialize)]
pub struct WebhookDelivery {
    pub id: i64,
}

#[derive(Deserialize)]
pub struct Delivery {
    pub id: i64,
    pub event_type: String,
    pub payload: Value,
    /// How its endpoint verifies deliveries: what its event types mean.
    pub verification: Verification,
}

impl SqlFunction for WebhookDelivery {
    const NAME: &'static str = "keel_webhook_delivery";
    type Output = Option<Delivery>;
}

/// `keel_finish_webhook_delivery`: `processed`, `stored` or `failed`.
#[derive(Serialize)]
pub struct FinishWebhookDelivery<'a> {
    pub id: i64,
    pub status: &'a str,
}

impl SqlFunction for FinishWebhookDelivery<'_> {
    const NAME: &'static str = "keel_finish_webhook_delivery";
    type Output = IgnoredAny;
}

/// `keel_list_webhook_deliveries`: the tenant's deliveries, oldest first,
/// at most `limit` rows and `max_bytes` of payload.
#[derive(Serialize)]
pub struct ListWebhookDeliveries<'a> {
    pub limit: u32,
    pub cursor: Option<&'a str>,
    pub max_bytes: u64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeliverySummary {
    pub webhook_id: String,
    pub endpoint_id: String,
    pub event_type: String,
    pub received_at: String,
    pub status: String,
    /// Null when this one payload alone is over the page's byte bound.
    #[schema(value_type = Option<Object>)]
    pub payload: Value,
    pub payload_bytes: u64,
}

impl SqlFunction for ListWebhookDeliveries<'_> {
    const NAME: &'static str = "keel_list_webhook_deliveries";
    type Output = Page<DeliverySummary>;
}

/// `keel_order_document_events`: which of a delivery's documents it may
/// apply (no newer event was applied to them), which are stale, and which
/// another delivery is applying right now (then nothing is decided).
#[derive(Serialize)]
pub struct OrderDocumentEvents<'a> {
    pub delivery_id: i64,
    pub ids: &'a [&'a str],
    pub deleted: bool,
    /// How long this delivery holds the documents while it applies.
    pub lease_seconds: u64,
}

#[derive(Debug, Deserialize)]
pub struct EventOrder {
    pub apply: Vec<String>,
    pub stale: Vec<String>,
    pub busy: Vec<String>,
}

impl SqlFunction for OrderDocumentEvents<'_> {
    const NAME: &'static str = "keel_order_document_events";
    type Output = EventOrder;
}

// SMS replies and call reports (0019) -------------------------------------------

/// `keel_sms_reply_enqueue`: the inbound SMS's reply row and its
/// `sms.reply` task, due after `delay_ms`; idempotent per delivery.
#[derive(Serialize)]
pub struct SmsReplyEnqueue {
    pub delivery_id: i64,
    pub delay_ms: u64,
}

impl SqlFunction for SmsReplyEnqueue {
    const NAME: &'static str = "keel_sms_reply_enqueue";
    type Output = IgnoredAny;
}

/// `keel_sms_reply_state`: the stored answer, and whether the reply was
/// claimed for sending and sent.
#[derive(Serialize)]
pub struct SmsReplyState {
    pub delivery_id: i64,
}

#[derive(Debug, Deserialize)]
pub struct SmsReply {
    pub answer: Option<String>,
    pub claimed: bool,
    pub sent: bool,
}

impl SqlFunction for SmsReplyState {
    const NAME: &'static str = "keel_sms_reply_state";
    type Output = SmsReply;
}

/// `keel_sms_reply_save`: keeps the first answer generated; returns it.
#[derive(Serialize)]
pub struct SmsReplySave<'a> {
    pub delivery_id: i64,
    pub answer: &'a str,
}

#[derive(Debug, Deserialize)]
pub struct SavedAnswer {
    pub answer: String,
}

impl SqlFunction for SmsReplySave<'_> {
    const NAME: &'static str = "keel_sms_reply_save";
    type Output = SavedAnswer;
}

/// How an SMS reply goes out.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplyChannel {
    /// In the webhook's own TwiML response.
    Twiml,
    /// Through the provider's Messages API, from the task.
    Api,
}

/// `keel_sms_reply_claim`: the first claim to send a reply wins.
#[derive(Serialize)]
pub struct SmsReplyClaim<'a> {
    pub delivery_id: i64,
    pub channel: ReplyChannel,
    pub answer: Option<&'a str>,
}

#[derive(Debug, Deserialize)]
pub struct Claimed {
    pub claimed: bool,
}

impl SqlFunction for SmsReplyClaim<'_> {
    const NAME: &'static str = "keel_sms_reply_claim";
    type Output = Claimed;
}

/// `keel_sms_reply_finish`: a claimed send ended, sent (with the
/// provider's message id) or released because nothing was sent.
#[derive(Serialize)]
pub struct SmsReplyFinish<'a> {
    pub delivery_id: i64,
    pub sent: bool,
    pub provider_message_id: Option<&'a str>,
}

impl SqlFunction for SmsReplyFinish<'_> {
    const NAME: &'static str = "keel_sms_reply_finish";
    type Output = Option<IgnoredAny>;
}

/// `keel_put_endpoint_credentials`: an endpoint's sealed provider API
/// credentials.
#[derive(Serialize)]
pub struct PutEndpointCredentials<'a> {
    pub endpoint_id: &'a str,
    pub key_id: &'a str,
    pub ciphertext: &'a str,
}

impl SqlFunction for PutEndpointCredentials<'_> {
    const NAME: &'static str = "keel_put_endpoint_credentials";
    type Output = IgnoredAny;
}

/// `keel_delivery_endpoint`: the endpoint a delivery arrived at, with its
/// sealed secret and API credentials.
#[derive(Serialize)]
pub struct DeliveryEndpoint {
    pub delivery_id: i64,
}

#[derive(Deserialize)]
pub struct DeliveryEndpointRecord {
    #[serde(flatten)]
    pub endpoint: EndpointRecord,
    pub credentials_key_id: Option<String>,
    pub credentials_ciphertext: Option<String>,
}

impl SqlFunction for DeliveryEndpoint {
    const NAME: &'static str = "keel_delivery_endpoint";
    type Output = Option<DeliveryEndpointRecord>;
}

/// `keel_store_call_report`: a voice call's transcript and report as a
/// conversation of the tenant.
#[derive(Serialize)]
pub struct StoreCallReport<'a> {
    pub conversation_id: &'a str,
    pub turns: &'a [Value],
    pub metadata: &'a Value,
}

impl SqlFunction for StoreCallReport<'_> {
    const NAME: &'static str = "keel_store_call_report";
    type Output = IgnoredAny;
}
