//! The answers SQL functions Keel calls (migrations/0015), one typed binding
//! each.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::{AssistantSettings, Citation, StoredMessage, Usage};
use crate::ops::audit::Audit;
use crate::platform::db::{Page, SqlFunction};

/// Who a chat call acts for, as the SQL functions read it: a tenant key's
/// hash, or a publishable key's with the request's origin and the
/// visitor's token hash.
#[derive(Serialize)]
#[serde(untagged)]
pub enum CallerArgs<'a> {
    Secret {
        key_hash: &'a str,
    },
    /// A tenant Keel itself read (a webhook endpoint's), never a client's word.
    Trusted {
        tenant_id: &'a str,
    },
    Publishable {
        publishable_key_hash: &'a str,
        origin: Option<&'a str>,
        visitor_token_hash: Option<String>,
    },
}

/// `keel_chat_begin`: authenticates the caller, opens (or creates) the
/// conversation, and returns its history and the tenant's settings.
#[derive(Serialize)]
pub struct ChatBegin<'a> {
    #[serde(flatten)]
    pub caller: CallerArgs<'a>,
    pub conversation_id: &'a str,
    pub load_history: bool,
    pub history_limit: u32,
    /// Publishable callers: the hash of a fresh visitor token, bound to the
    /// conversation when the caller presented none the key issued.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_visitor_token_hash: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ChatBegun {
    pub tenant_id: String,
    pub conversation_id: String,
    /// The fresh visitor token was bound (the presented one was not used).
    pub visitor_minted: bool,
    pub history: Vec<StoredMessage>,
    pub assistant: AssistantSettings,
    pub filter: Option<Value>,
    pub allowed_origin: Option<String>,
}

impl SqlFunction for ChatBegin<'_> {
    const NAME: &'static str = "keel_chat_begin";
    type Output = ChatBegun;
}

/// `keel_chat_record`: one turn, the user's message and the answer, in one
/// transaction.
#[derive(Serialize)]
pub struct ChatRecord<'a> {
    pub conversation_id: &'a str,
    pub user: &'a str,
    pub assistant: RecordedAnswer<'a>,
}

#[derive(Serialize)]
pub struct RecordedAnswer<'a> {
    pub content: &'a str,
    pub citations: &'a [Citation],
    pub usage: Usage,
    pub model: &'a str,
    pub incomplete: bool,
}

#[derive(Debug, Deserialize)]
pub struct Recorded {
    pub recorded: u32,
}

impl SqlFunction for ChatRecord<'_> {
    const NAME: &'static str = "keel_chat_record";
    type Output = Recorded;
}

/// A conversation as listed.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConversationSummary {
    pub id: String,
    /// The first user message, shortened.
    pub title: Option<String>,
    pub message_count: u32,
    /// Set when a publishable key's visitor started it.
    pub publishable_key_id: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// `keel_list_conversations`: the tenant's conversations, newest first.
#[derive(Serialize)]
pub struct ListConversations<'a> {
    pub limit: u32,
    pub cursor: Option<&'a str>,
}

impl SqlFunction for ListConversations<'_> {
    const NAME: &'static str = "keel_list_conversations";
    type Output = Page<ConversationSummary>;
}

/// `keel_get_conversation`: one conversation with its newest
/// `message_limit` messages, for a tenant key or the visitor who started it.
#[derive(Serialize)]
pub struct GetConversation<'a> {
    #[serde(flatten)]
    pub caller: CallerArgs<'a>,
    pub id: &'a str,
    pub message_limit: u32,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Conversation {
    #[serde(flatten)]
    pub summary: ConversationSummary,
    pub messages: Vec<StoredMessage>,
    /// What a voice call's report says beside its transcript (summary,
    /// recording URL, ended reason, cost); null for chats.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
}

impl SqlFunction for GetConversation<'_> {
    const NAME: &'static str = "keel_get_conversation";
    type Output = Conversation;
}

/// `keel_delete_conversation`: 404 unless the tenant has it.
#[derive(Serialize)]
pub struct DeleteConversation<'a> {
    pub id: &'a str,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = DeletedConversation)]
pub struct Deleted {
    pub deleted: bool,
}

impl SqlFunction for DeleteConversation<'_> {
    const NAME: &'static str = "keel_delete_conversation";
    type Output = Deleted;
}

/// `keel_get_assistant`: the tenant's settings, or the defaults.
#[derive(Serialize)]
pub struct GetAssistant {}

impl SqlFunction for GetAssistant {
    const NAME: &'static str = "keel_get_assistant";
    type Output = AssistantSettings;
}

/// `keel_put_assistant`: replaces the tenant's settings, audited.
#[derive(Serialize)]
pub struct PutAssistant<'a> {
    pub assistant: &'a AssistantSettings,
    pub audit: &'a Audit,
}

impl SqlFunction for PutAssistant<'_> {
    const NAME: &'static str = "keel_put_assistant";
    type Output = AssistantSettings;
}
