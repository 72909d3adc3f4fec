//! Inbound SMS answered from the tenant's knowledge. A text from a phone
//! (a Twilio form post or a Vonage inbound message) is a turn of that
//! phone's conversation (`sms-<endpoint>-<digits>`), answered whole through
//! the answers pipeline with the stored history and recorded there.
//!
//! Twilio waits for TwiML: the answer goes back in the response when it is
//! ready within `SMS_REPLY_DEADLINE_MS`; otherwise the response is empty and
//! the `sms.reply` task (enqueued before answering, due after the deadline)
//! answers and sends it through Twilio's Messages API. Vonage ignores the
//! response, so its replies always go through its Messages API from the
//! task. Either way a reply goes out at most once: the response and the task
//! claim it in the database, and a task retried after a send that may have
//! reached the provider does not send again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};

use super::presets::Verification;
use super::store::{
    DeliveryEndpoint, DeliveryEndpointRecord, ReplyChannel, SmsReplyClaim, SmsReplyEnqueue,
    SmsReplyFinish, SmsReplySave, SmsReplyState, WebhookDelivery,
};
use super::{WebhookError, endpoints};
use crate::answers::AnswersError;
use crate::answers::conversations::{ChatCaller, ChatSession, begin_chat};
use crate::answers::pipeline::{
    self, AnswerSink, Answers, Disconnected, Outcome, Prepared, Question,
};
use crate::knowledge::Knowledge;
use crate::ops::ratelimit::{self, GateError, RateGate, Scope};
use crate::platform::config::{Config, RateLimitSettings};
use crate::platform::crypto;
use crate::platform::db::Db;
use crate::tasks::{Task, TaskError};
use crate::tenants::TenantRef;

/// The task kind that answers and sends an SMS reply.
pub const TASK_KIND: &str = "sms.reply";
/// The longest question taken from a text (Twilio joins a long SMS into
/// one body of at most 1600 characters).
const MAX_QUESTION_CHARS: usize = 1600;
/// The longest reply sent: Twilio's limit for one message body.
const MAX_REPLY_CHARS: usize = 1600;
/// After the response's deadline, how long the task waits on top, so the
/// response and the task never answer the same text at once.
const TASK_MARGIN: Duration = Duration::from_secs(2);

/// A text a phone sent.
#[derive(Debug, PartialEq)]
pub struct InboundSms {
    /// The sender's number: who the reply goes to.
    pub from: String,
    /// The tenant's number the text was sent to: where the reply comes from.
    pub to: String,
    pub text: String,
    /// Twilio's account, whose Messages API sends the reply.
    pub account_sid: Option<String>,
}

/// The inbound text of a delivery, if it is one: a Twilio message
/// `received`, or a Vonage inbound message on the `sms` channel.
pub fn inbound(
    verification: Verification,
    event_type: &str,
    payload: &Value,
) -> Option<InboundSms> {
    let field = |name: &str| payload.get(name).and_then(Value::as_str);
    let (from, to, text, account_sid) = match verification {
        Verification::Twilio if event_type == "message.received" => (
            field("From")?,
            field("To")?,
            field("Body")?,
            field("AccountSid"),
        ),
        Verification::Vonage
            if event_type == "message.inbound" && field("channel") == Some("sms") =>
        {
            (field("from")?, field("to")?, field("text")?, None)
        }
        _ => return None,
    };
    let text: String = text.trim().chars().take(MAX_QUESTION_CHARS).collect();
    (!text.is_empty()).then(|| InboundSms {
        from: from.to_owned(),
        to: to.to_owned(),
        text,
        account_sid: account_sid.map(str::to_owned),
    })
}

/// The conversation of one phone with one endpoint: the sender's digits
/// (an alphanumeric sender by the hash of its name).
pub fn conversation_id(endpoint_id: &str, from: &str) -> String {
    let endpoint: String = endpoint_id.chars().filter(|c| *c != '-').collect();
    let digits: String = from.chars().filter(char::is_ascii_digit).take(20).collect();
    let sender = if digits.is_empty() {
        crypto::sha256_hex(from)[..16].to_owned()
    } else {
        digits
    };
    format!("sms-{endpoint}-{sender}")
}

/// What answering needs of the application.
pub struct Answering<'a> {
    pub db: &'a Db,
    pub knowledge: &'a Knowledge,
    pub answers: &'a Answers,
    /// Each answer takes one request from the tenant's chat quota.
    pub rate_limits: &'a RateLimitSettings,
}

/// An answer composed, not yet recorded.
pub struct Composed {
    session: ChatSession,
    prepared: Prepared,
    outcome: Outcome,
    question: String,
    started: Instant,
}

impl Composed {
    /// The text to send: the answer, cut to one message.
    pub fn reply(&self) -> String {
        sms_text(&self.outcome.text)
    }

    /// Records the turn in the conversation (and the answer's metrics).
    pub async fn record(self, db: &Db) {
        pipeline::conclude(
            db,
            &self.session,
            &self.prepared,
            &self.question,
            &self.outcome,
            self.started,
        )
        .await;
    }
}

/// The whole answer to `text` in the conversation of the endpoint's tenant,
/// with the history stored there. It costs what a chat request costs, so it
/// takes one from the tenant's chat quota first: a flood of texts cannot buy
/// more answers than the tenant's own chat clients could (refused, the
/// webhook leaves the text to its task, which retries after a backoff).
pub async fn compose(
    answering: &Answering<'_>,
    tenant_id: &str,
    conversation: &str,
    text: &str,
) -> Result<Composed, AnswersError> {
    let started = Instant::now();
    ratelimit::charge_tenant(answering.db, answering.rate_limits, Scope::Chat, tenant_id).await?;
    let caller = ChatCaller::Trusted {
        tenant_id: tenant_id.to_owned(),
    };
    let session = begin_chat(
        answering.db,
        Arc::new(RateGate::default()),
        &caller,
        Some(conversation),
        true,
    )
    .await?;
    let history = session
        .history
        .iter()
        .map(|m| json!({"role": m.role, "content": m.content}))
        .collect();
    let question = Question {
        history,
        text: text.to_owned(),
        ..Question::default()
    };
    let tenant = TenantRef::Trusted(session.tenant_id.clone());
    let prepared = pipeline::prepare(
        answering.answers,
        answering.db,
        answering.knowledge,
        &tenant,
        &session.assistant,
        question,
    )
    .await?;
    let generation = pipeline::start(answering.answers, &prepared, text).await?;
    let outcome = pipeline::generate(generation, &mut Whole).await;
    if let Some(error) = outcome.error {
        return Err(error.into());
    }
    Ok(Composed {
        session,
        prepared,
        outcome,
        question: text.to_owned(),
        started,
    })
}

/// An SMS reply is sent whole: nothing streams to the phone.
struct Whole;

impl AnswerSink for Whole {
    async fn text(&mut self, _delta: &str) -> Result<(), Disconnected> {
        Ok(())
    }

    async fn tool_calls(&mut self, _calls: &Value) -> Result<(), Disconnected> {
        Ok(())
    }

    async fn closed(&self) {
        std::future::pending::<()>().await;
    }
}

fn sms_text(answer: &str) -> String {
    let answer = answer.trim();
    if answer.chars().count() <= MAX_REPLY_CHARS {
        return answer.to_owned();
    }
    let mut cut: String = answer.chars().take(MAX_REPLY_CHARS - 1).collect();
    cut.push('…');
    cut
}

/// Twilio's webhook: answers within the deadline as TwiML, or returns
/// `None` (an empty response) leaving the reply to the task, which is
/// enqueued first so a function that dies mid-answer still gets a reply out.
pub async fn answer_twilio(
    answering: &Answering<'_>,
    config: &Config,
    tenant_id: &str,
    endpoint_id: &str,
    delivery_id: i64,
    sms: &InboundSms,
) -> Result<Option<String>, WebhookError> {
    let deadline = config.sms.reply_deadline;
    let tenant = TenantRef::Trusted(tenant_id.to_owned());
    enqueue_reply(
        answering.db,
        &tenant,
        delivery_id,
        reply_delay(config, Verification::Twilio),
    )
    .await?;
    let conversation = conversation_id(endpoint_id, &sms.from);
    let composed = match tokio::time::timeout(
        deadline,
        compose(answering, tenant_id, &conversation, &sms.text),
    )
    .await
    {
        Ok(Ok(composed)) => composed,
        Ok(Err(error)) => {
            tracing::warn!(%error, "an SMS could not be answered in time; the task retries");
            return Ok(None);
        }
        Err(_) => {
            tracing::info!(
                deadline_ms = deadline.as_millis() as u64,
                "an SMS answer was not ready in time; the task sends it"
            );
            return Ok(None);
        }
    };
    let reply = composed.reply();
    let claimed = tenant
        .run(
            answering.db,
            &SmsReplyClaim {
                delivery_id,
                channel: ReplyChannel::Twiml,
                answer: Some(&reply),
            },
        )
        .await?;
    if !claimed.claimed {
        return Ok(None);
    }
    composed.record(answering.db).await;
    Ok(Some(twiml_message(&reply)))
}

/// How long a text's reply task waits before answering: Twilio's until the
/// response's own deadline has passed (with a margin), Vonage's not at all.
pub fn reply_delay(config: &Config, verification: Verification) -> Duration {
    match verification {
        Verification::Twilio => config.sms.reply_deadline + TASK_MARGIN,
        _ => Duration::ZERO,
    }
}

/// Makes sure the text's reply row and `sms.reply` task exist, due after
/// `delay`. Idempotent per delivery: the webhook enqueues it at once, and
/// the delivery's processing again, in case the function died between
/// storing the delivery and this call.
pub async fn enqueue_reply(
    db: &Db,
    tenant: &TenantRef,
    delivery_id: i64,
    delay: Duration,
) -> Result<(), GateError> {
    tenant
        .run(
            db,
            &SmsReplyEnqueue {
                delivery_id,
                delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            },
        )
        .await?;
    Ok(())
}

/// An empty TwiML document: Twilio sends nothing back.
pub const EMPTY_TWIML: &str = r#"<?xml version="1.0" encoding="UTF-8"?><Response/>"#;

/// TwiML replying `text` to the sender.
pub fn twiml_message(text: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><Response><Message>{}</Message></Response>"#,
        xml_escaped(text)
    )
}

fn xml_escaped(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&apos;"),
            // Not allowed in XML 1.0 at all.
            c if c.is_control() && !matches!(c, '\n' | '\r' | '\t') => {}
            c => escaped.push(c),
        }
    }
    escaped
}

// The task ------------------------------------------------------------------

/// What the `sms.reply` task needs of the application.
pub struct Sending<'a> {
    pub answering: Answering<'a>,
    pub config: &'a Config,
    pub http: &'a reqwest::Client,
}

/// The `sms.reply` task: answers the text (once: a retry sends the answer
/// already kept) and sends it through the provider's Messages API, unless
/// the webhook's response already did.
pub async fn reply(sending: &Sending<'_>, task: Task) -> Result<(), TaskError> {
    let db = sending.answering.db;
    let tenant = task.tenant()?;
    let delivery_id = task.payload["delivery_id"]
        .as_i64()
        .ok_or_else(|| TaskError::permanent("payload", "missing delivery_id"))?;
    let state = tenant.run(db, &SmsReplyState { delivery_id }).await?;
    if state.sent {
        return Ok(());
    }
    if state.claimed {
        return Err(TaskError::Permanent(
            "an earlier attempt may have sent this reply; it is not sent again".to_owned(),
        ));
    }
    // Pruned by retention in the meantime: nothing left to answer.
    let Some(delivery) = tenant.run(db, &WebhookDelivery { id: delivery_id }).await? else {
        return Ok(());
    };
    let Some(endpoint) = tenant.run(db, &DeliveryEndpoint { delivery_id }).await? else {
        return Ok(());
    };
    let Some(sms) = inbound(
        delivery.verification,
        &delivery.event_type,
        &delivery.payload,
    ) else {
        return Err(TaskError::permanent(
            "delivery",
            "is not an inbound text message",
        ));
    };
    let tenant_id = endpoint.endpoint.tenant_id.clone();
    let answer = match state.answer {
        Some(answer) => answer,
        None => {
            let conversation = conversation_id(&endpoint.endpoint.id, &sms.from);
            let composed = compose(&sending.answering, &tenant_id, &conversation, &sms.text)
                .await
                .map_err(answer_error)?;
            let ours = composed.reply();
            let kept = tenant
                .run(
                    db,
                    &SmsReplySave {
                        delivery_id,
                        answer: &ours,
                    },
                )
                .await?
                .answer;
            if kept == ours {
                composed.record(db).await;
            }
            kept
        }
    };
    let credentials = provider_credentials(sending.config, &endpoint, &sms)
        .map_err(|e| TaskError::internal(false, "the endpoint's credentials cannot be read", &e))?;
    let claimed = tenant
        .run(
            db,
            &SmsReplyClaim {
                delivery_id,
                channel: ReplyChannel::Api,
                answer: None,
            },
        )
        .await?;
    if !claimed.claimed {
        return Ok(());
    }
    let sent = send(sending, &credentials, &sms, &answer).await;
    let (finished, outcome) = match sent {
        Ok(message_id) => (Some(message_id), Ok(())),
        Err(SendError::NotSent(why)) => (None, Err(TaskError::Retry(why))),
        Err(SendError::Refused(why)) => {
            // The claim stays: a refusal (bad number, bad credentials) is not
            // fixed by trying again.
            return Err(TaskError::Permanent(why));
        }
        Err(SendError::Unknown(why)) => {
            return Err(TaskError::Permanent(format!(
                "{why}; the reply may have been sent, so it is not sent again"
            )));
        }
    };
    tenant
        .run(
            db,
            &SmsReplyFinish {
                delivery_id,
                sent: finished.is_some(),
                provider_message_id: finished.as_deref(),
            },
        )
        .await?;
    outcome
}

fn answer_error(error: AnswersError) -> TaskError {
    match error {
        AnswersError::Invalid { field, problem } => {
            TaskError::Permanent(format!("`{field}` {problem}"))
        }
        AnswersError::Call(error) => error.into(),
        other => TaskError::Retry(format!("the answer could not be composed: {other}")),
    }
}

/// How a reply is sent.
enum Credentials {
    /// Twilio: the account and its auth token (the endpoint's secret).
    Twilio {
        account_sid: String,
        auth_token: SecretString,
    },
    /// Vonage: the API key and secret given at endpoint creation.
    Vonage {
        api_key: String,
        api_secret: SecretString,
    },
}

/// Vonage's API credentials, sealed at endpoint creation.
#[derive(serde::Serialize, Deserialize)]
pub struct VonageCredentials {
    pub api_key: String,
    pub api_secret: String,
}

fn provider_credentials(
    config: &Config,
    record: &DeliveryEndpointRecord,
    sms: &InboundSms,
) -> Result<Credentials, String> {
    match record.endpoint.verification {
        Verification::Twilio => {
            let account_sid = sms
                .account_sid
                .clone()
                .filter(|sid| is_account_sid(sid))
                .ok_or("the message names no Twilio AccountSid (AC + 32 hex digits)")?;
            let auth_token = endpoints::secrets(config, &record.endpoint)
                .map_err(|e| e.to_string())?
                .into_iter()
                .next()
                .ok_or("the endpoint has no secret")?;
            Ok(Credentials::Twilio {
                account_sid,
                auth_token: SecretString::from(auth_token),
            })
        }
        Verification::Vonage => {
            let (Some(key_id), Some(ciphertext)) = (
                record.credentials_key_id.as_deref(),
                record.credentials_ciphertext.as_deref(),
            ) else {
                return Err(
                    "the endpoint has no Vonage API credentials (api_key and api_secret at creation)"
                        .to_owned(),
                );
            };
            let opened = crypto::open(config.decryption_keys(), key_id, ciphertext)
                .map_err(|e| e.to_string())?;
            let credentials: VonageCredentials = serde_json::from_slice(&opened)
                .map_err(|_| "the stored credentials are corrupt")?;
            Ok(Credentials::Vonage {
                api_key: credentials.api_key,
                api_secret: SecretString::from(credentials.api_secret),
            })
        }
        other => Err(format!("`{}` endpoints do not send SMS", other.name())),
    }
}

fn is_account_sid(sid: &str) -> bool {
    sid.len() == 34 && sid.starts_with("AC") && sid[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// Why a send failed.
enum SendError {
    /// The provider said nothing was sent (429, 5xx) or was never reached.
    NotSent(String),
    /// The provider refused the message for good (4xx).
    Refused(String),
    /// The request may have reached the provider (it timed out).
    Unknown(String),
}

/// How long one send may take.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends `text` from the tenant's number to the sender; returns the
/// provider's message id.
async fn send(
    sending: &Sending<'_>,
    credentials: &Credentials,
    sms: &InboundSms,
    text: &str,
) -> Result<String, SendError> {
    let sms_config = &sending.config.sms;
    let request = match credentials {
        Credentials::Twilio {
            account_sid,
            auth_token,
        } => {
            let url = format!(
                "{}/2010-04-01/Accounts/{account_sid}/Messages.json",
                sms_config
                    .twilio_api_base_url
                    .as_str()
                    .trim_end_matches('/')
            );
            let form = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("To", &sms.from)
                .append_pair("From", &sms.to)
                .append_pair("Body", text)
                .finish();
            sending
                .http
                .post(url)
                .basic_auth(account_sid, Some(auth_token.expose_secret()))
                .header(
                    http::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .body(form)
        }
        Credentials::Vonage {
            api_key,
            api_secret,
        } => {
            let url = format!(
                "{}/v1/messages",
                sms_config
                    .vonage_api_base_url
                    .as_str()
                    .trim_end_matches('/')
            );
            sending
                .http
                .post(url)
                .basic_auth(api_key, Some(api_secret.expose_secret()))
                .json(&json!({
                    "message_type": "text",
                    "channel": "sms",
                    "to": sms.from,
                    "from": sms.to,
                    "text": text,
                }))
        }
    };
    let response = match request.timeout(SEND_TIMEOUT).send().await {
        Ok(response) => response,
        Err(error) if error.is_connect() => {
            return Err(SendError::NotSent(format!(
                "the SMS provider could not be reached: {error}"
            )));
        }
        Err(error) => {
            return Err(SendError::Unknown(format!(
                "the SMS provider did not answer: {error}"
            )));
        }
    };
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if status.is_success() {
        // Twilio names the message `sid`, Vonage `message_uuid`.
        let id = body["sid"]
            .as_str()
            .or(body["message_uuid"].as_str())
            .unwrap_or_default();
        return Ok(id.chars().take(200).collect());
    }
    // Twilio: {"code", "message"}; Vonage: RFC 7807 {"title", "detail"}.
    let said = body["message"]
        .as_str()
        .or(body["detail"].as_str())
        .or(body["title"].as_str())
        .unwrap_or_default();
    let said: String = said.chars().take(300).collect();
    let why = format!("the SMS provider answered {status}: {said}");
    if status.as_u16() == 429 || status.is_server_error() {
        Err(SendError::NotSent(why))
    } else {
        Err(SendError::Refused(why))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phone_has_one_conversation_per_endpoint() {
        let endpoint = "0190b5c2-e8f4-7c3a-9d1e-2f3a4b5c6d7e";
        let id = conversation_id(endpoint, "+1 (415) 555-0100");
        assert_eq!(id, "sms-0190b5c2e8f47c3a9d1e2f3a4b5c6d7e-14155550100");
        assert!(crate::answers::conversations::valid_conversation_id(&id).is_ok());
        let named = conversation_id(endpoint, "LUIGIS");
        assert!(named.starts_with("sms-0190b5c2e8f47c3a9d1e2f3a4b5c6d7e-") && named.len() == 53);
    }

    #[test]
    fn only_texts_received_are_questions() {
        let twilio = json!({"MessageSid": "SM1", "From": "+14155550100", "To": "+14155550199",
                            "Body": "  When are you open?  ", "AccountSid": "AC1"});
        let sms = inbound(Verification::Twilio, "message.received", &twilio).unwrap();
        assert_eq!(sms.text, "When are you open?");
        assert_eq!(sms.account_sid.as_deref(), Some("AC1"));
        // (verification, event type, payload, reason)
        let cases = [
            (
                Verification::Twilio,
                "message.delivered",
                twilio.clone(),
                "a status callback",
            ),
            (
                Verification::Twilio,
                "message.received",
                json!({"From": "+1", "To": "+2", "Body": "   "}),
                "an empty text (a picture)",
            ),
            (
                Verification::Vonage,
                "message.inbound",
                json!({"from": "1", "to": "2", "text": "hi", "channel": "whatsapp"}),
                "not SMS",
            ),
            (
                Verification::Vapi,
                "message.received",
                twilio.clone(),
                "not an SMS endpoint",
            ),
        ];
        for (verification, event_type, payload, reason) in cases {
            assert_eq!(
                inbound(verification, event_type, &payload),
                None,
                "{reason}"
            );
        }
        let vonage = json!({"message_uuid": "u", "from": "447700900000", "to": "447700900001",
                            "text": "hours?", "channel": "sms"});
        assert_eq!(
            inbound(Verification::Vonage, "message.inbound", &vonage)
                .unwrap()
                .from,
            "447700900000"
        );
    }

    #[test]
    fn twiml_escapes_what_xml_would_misread() {
        assert_eq!(
            twiml_message("Fish & chips <today> \"only\"\u{0}"),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Message>Fish &amp; chips \
             &lt;today&gt; &quot;only&quot;</Message></Response>"
        );
    }

    #[test]
    fn a_long_answer_is_cut_to_one_message() {
        let long = "a".repeat(2000);
        let cut = sms_text(&long);
        assert_eq!(cut.chars().count(), MAX_REPLY_CHARS);
        assert!(cut.ends_with('…'));
        assert_eq!(sms_text(" short "), "short");
    }
}
