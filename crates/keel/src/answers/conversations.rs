//! What a chat remembers, and who may continue or read it. [`begin_chat`]
//! is every chat request's first database call: it takes the request from
//! its quotas, authenticates the caller (a tenant key, or a publishable key
//! from one of its origins), opens or creates the conversation and loads
//! its history and the tenant's assistant settings, all in one round trip.
//! [`record_turn`] stores the user's message and the answer together.
//!
//! A conversation a publishable key starts is bound to an anonymous visitor
//! token (`keel_vt_…`, stored as a hash): only a request presenting it may
//! continue or read that conversation. A request without one (or with one
//! this key never issued) gets a fresh token, to send back in
//! `x-keel-visitor-token`.

use std::sync::Arc;

use super::store::{
    CallerArgs, ChatBegin, ChatRecord, Conversation, GetConversation, RecordedAnswer,
};
use super::{AnswersError, AssistantSettings, Citation, StoredMessage, Usage};
use crate::ops::ratelimit::{GateError, RateGate};
use crate::platform::crypto::sha256_hex;
use crate::platform::db::{Db, SqlFunction};
use crate::tenants::TenantRef;
use crate::tenants::keys::{is_token_shaped, random_token};

/// The header a visitor token travels in, both ways.
pub const VISITOR_TOKEN_HEADER: &str = "x-keel-visitor-token";
const VISITOR_TOKEN_PREFIX: &str = "keel_vt_";
/// Stored turns a chat request loads: enough for any prompt budget.
pub const HISTORY_LIMIT: u32 = 50;
/// Messages `GET /api/conversations/{id}` returns (the newest).
pub const READ_LIMIT: u32 = 200;
/// The longest conversation id a client may choose (useChat's ids are 16-32).
const MAX_CONVERSATION_ID_CHARS: usize = 128;
/// The longest stored message (the user's or the answer), in characters.
pub const MAX_MESSAGE_CHARS: usize = 64_000;
/// The most citations stored with one answer.
pub const MAX_CITATIONS: usize = 20;
/// The longest cited passage stored, in characters.
pub const MAX_CITATION_CHARS: usize = 8_000;

/// Who is chatting, read off the request (`web::auth::chat_caller`).
#[derive(Debug, Clone)]
pub enum ChatCaller {
    /// A tenant key, from a server.
    Secret { key_hash: String },
    /// A publishable key, from a browser: the request's `Origin` and the
    /// visitor token it presented, if any.
    Publishable {
        key_hash: String,
        origin: Option<String>,
        visitor_token: Option<String>,
    },
}

impl ChatCaller {
    /// The caller as the SQL functions read it.
    fn args(&self) -> CallerArgs<'_> {
        match self {
            ChatCaller::Secret { key_hash } => CallerArgs::Secret { key_hash },
            ChatCaller::Publishable {
                key_hash,
                origin,
                visitor_token,
            } => CallerArgs::Publishable {
                publishable_key_hash: key_hash,
                origin: origin.as_deref(),
                visitor_token_hash: visitor_token
                    .as_deref()
                    .filter(|token| is_visitor_token(token))
                    .map(sha256_hex),
            },
        }
    }

    /// Runs `F` as this caller: a publishable key's first call also draws
    /// from its own and its visitor's quotas.
    async fn run<F: SqlFunction>(
        &self,
        db: &Db,
        gate: &RateGate,
        args: &F,
    ) -> Result<F::Output, GateError> {
        match self {
            ChatCaller::Secret { .. } => gate.run(db, args).await,
            ChatCaller::Publishable { .. } => gate.run_publishable(db, args).await,
        }
    }
}

/// Whether `token` has the shape of a visitor token Keel issues.
pub fn is_visitor_token(token: &str) -> bool {
    is_token_shaped(token, VISITOR_TOKEN_PREFIX)
}

/// Everything a chat turn needs, from [`begin_chat`].
#[derive(Debug, Clone)]
pub struct ChatSession {
    /// The caller's tenant, resolved in SQL (search runs as `TenantRef::Trusted`).
    pub tenant_id: String,
    /// The client's id (useChat's `id`), created if new.
    pub conversation_id: String,
    /// Publishable callers: the token minted now (send it back in
    /// `x-keel-visitor-token`) or the one presented.
    pub visitor_token: Option<String>,
    /// Stored turns, oldest first, at most the last [`HISTORY_LIMIT`]; empty
    /// unless asked for.
    pub history: Vec<StoredMessage>,
    /// The tenant's settings (the defaults if never set).
    pub assistant: AssistantSettings,
    /// A publishable key's server-side filter (`/api/search`'s shape,
    /// `{"metadata": {...}}`), to AND with the request's; `None` for tenant keys.
    pub filter: Option<serde_json::Value>,
    /// Publishable callers: the `Origin` accepted.
    pub allowed_origin: Option<String>,
}

/// The chat request's first database call, through its rate gate (the
/// route's `chat` scope). `conversation_id`: the client's (a string of at
/// most 128 `[A-Za-z0-9_-]`), or `None` for a new random one.
pub async fn begin_chat(
    db: &Db,
    gate: Arc<RateGate>,
    caller: &ChatCaller,
    conversation_id: Option<&str>,
    load_history: bool,
) -> Result<ChatSession, AnswersError> {
    let conversation_id = match conversation_id {
        Some(id) => valid_conversation_id(id)?.to_owned(),
        None => uuid::Uuid::now_v7().simple().to_string(),
    };
    let fresh_token = matches!(caller, ChatCaller::Publishable { .. })
        .then(|| random_token(VISITOR_TOKEN_PREFIX));
    let begun = caller
        .run(
            db,
            &gate,
            &ChatBegin {
                caller: caller.args(),
                conversation_id: &conversation_id,
                load_history,
                history_limit: HISTORY_LIMIT,
                new_visitor_token_hash: fresh_token.as_deref().map(sha256_hex),
            },
        )
        .await?;
    let visitor_token = match caller {
        ChatCaller::Secret { .. } => None,
        ChatCaller::Publishable { visitor_token, .. } if !begun.visitor_minted => {
            visitor_token.clone()
        }
        ChatCaller::Publishable { .. } => fresh_token,
    };
    Ok(ChatSession {
        tenant_id: begun.tenant_id,
        conversation_id: begun.conversation_id,
        visitor_token,
        history: begun.history,
        assistant: begun.assistant,
        filter: begun.filter,
        allowed_origin: begun.allowed_origin,
    })
}

/// A conversation id as a client may choose it.
pub fn valid_conversation_id(id: &str) -> Result<&str, AnswersError> {
    let valid = (1..=MAX_CONVERSATION_ID_CHARS).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        Ok(id)
    } else {
        Err(AnswersError::invalid(
            "id",
            &format!("must be 1 to {MAX_CONVERSATION_ID_CHARS} letters, digits, - or _"),
        ))
    }
}

/// One turn to store: the user's message and the answer to it.
#[derive(Debug, Clone)]
pub struct RecordedTurn {
    pub user: String,
    pub answer: String,
    pub citations: Vec<Citation>,
    pub usage: Usage,
    pub model: String,
    /// The stream broke: `answer` is what was sent before it did.
    pub incomplete: bool,
}

impl RecordedTurn {
    /// Refuses a turn the database would not store, naming the field.
    fn validate(&self) -> Result<(), AnswersError> {
        let too_long = |text: &str| text.chars().count() > MAX_MESSAGE_CHARS;
        if too_long(&self.user) {
            return Err(AnswersError::invalid(
                "user",
                &format!("must be at most {MAX_MESSAGE_CHARS} characters"),
            ));
        }
        if too_long(&self.answer) {
            return Err(AnswersError::invalid(
                "answer",
                &format!("must be at most {MAX_MESSAGE_CHARS} characters"),
            ));
        }
        if self.citations.len() > MAX_CITATIONS {
            return Err(AnswersError::invalid(
                "citations",
                &format!("must be at most {MAX_CITATIONS}"),
            ));
        }
        if self
            .citations
            .iter()
            .any(|c| c.text.chars().count() > MAX_CITATION_CHARS)
        {
            return Err(AnswersError::invalid(
                "citations[].text",
                &format!("must be at most {MAX_CITATION_CHARS} characters"),
            ));
        }
        Ok(())
    }
}

/// Stores the user's message and the answer in one transaction. The tenant
/// is the session's, resolved by [`begin_chat`]; the request's quota was
/// taken there.
pub async fn record_turn(
    db: &Db,
    session: &ChatSession,
    turn: &RecordedTurn,
) -> Result<(), AnswersError> {
    turn.validate()?;
    TenantRef::Trusted(session.tenant_id.clone())
        .run(
            db,
            &ChatRecord {
                conversation_id: &session.conversation_id,
                user: &turn.user,
                assistant: RecordedAnswer {
                    content: &turn.answer,
                    citations: &turn.citations,
                    usage: turn.usage,
                    model: &turn.model,
                    incomplete: turn.incomplete,
                },
            },
        )
        .await?;
    Ok(())
}

/// One conversation with its newest [`READ_LIMIT`] messages: any of the
/// tenant's for a tenant key, only its own for a publishable key's visitor.
/// Everything else is not found.
pub async fn read_conversation(
    db: &Db,
    gate: &RateGate,
    caller: &ChatCaller,
    id: &str,
) -> Result<Conversation, AnswersError> {
    let id = valid_conversation_id(id)?;
    Ok(caller
        .run(
            db,
            gate,
            &GetConversation {
                caller: caller.args(),
                id,
                message_limit: READ_LIMIT,
            },
        )
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversation_ids_are_what_use_chat_sends_and_nothing_else() {
        let cases = [
            ("V1StGXR8_Z5jdHi6B-myT", true, "a nanoid"),
            ("0190b5c2e8f47c3a9d1e2f3a4b5c6d7e", true, "a uuid, simple"),
            ("", false, "empty"),
            ("a b", false, "a space"),
            ("../x", false, "path characters"),
            ("é", false, "non-ASCII"),
        ];
        for (id, valid, reason) in cases {
            assert_eq!(valid_conversation_id(id).is_ok(), valid, "{reason}");
        }
        assert!(valid_conversation_id(&"a".repeat(128)).is_ok());
        assert!(valid_conversation_id(&"a".repeat(129)).is_err());
    }

    #[test]
    fn only_well_formed_visitor_tokens_are_passed_on_hashed() {
        let token = random_token(VISITOR_TOKEN_PREFIX);
        let caller = |visitor_token: &str| ChatCaller::Publishable {
            key_hash: "h".into(),
            origin: None,
            visitor_token: Some(visitor_token.into()),
        };
        let hash_of = |caller: &ChatCaller| match caller.args() {
            CallerArgs::Publishable {
                visitor_token_hash, ..
            } => visitor_token_hash,
            CallerArgs::Secret { .. } => unreachable!(),
        };
        assert_eq!(hash_of(&caller(&token)), Some(sha256_hex(&token)));
        assert_eq!(hash_of(&caller("made-up")), None);
    }
}
