//! The conversation and assistant routes: `GET /api/conversations`, `GET`
//! and `DELETE /api/conversations/{id}` (a publishable key's visitor may
//! read its own conversation), and `GET`/`PUT /api/assistant`. The routes
//! that answer are in [`chat`].

pub mod chat;

use std::sync::Arc;

use http::{Method, StatusCode};

use super::AssistantSettings;
use super::conversations::{self, valid_conversation_id};
use super::store::{
    Conversation, ConversationSummary, DeleteConversation, Deleted, GetAssistant,
    ListConversations, PutAssistant,
};
use crate::app::App;
use crate::web::auth;
use crate::web::error::ErrorBody;
use crate::web::{ApiError, ApiRequest, HandlerResult, json_of, list_page};

list_page!(ConversationList, conversations, ConversationSummary);

/// `GET /api/conversations?limit=&cursor=`: the tenant's conversations,
/// newest first.
#[utoipa::path(
    get,
    path = "/api/conversations",
    tag = "answers",
    security(("tenant_key" = [])),
    params(
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "Default 20"),
        ("cursor" = Option<String>, Query, description = "The `next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "The tenant's conversations, newest first", body = ConversationList),
        (status = 400, description = "`invalid_field`: `limit` or `cursor`", body = ErrorBody),
    )
)]
pub async fn list(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    let tenant = auth::tenant(&request)?;
    let page = request.id_page(20, 100)?;
    let conversations = tenant
        .run(
            &app.db,
            &ListConversations {
                limit: page.limit,
                cursor: page.cursor.as_deref(),
            },
        )
        .await?;
    json_of(StatusCode::OK, &ConversationList::from(conversations))
}

/// `GET` and `DELETE` share `/api/conversations/{id}`.
pub async fn conversation(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    if request.method == Method::DELETE {
        delete(app, request).await
    } else {
        read(app, request).await
    }
}

/// `GET /api/conversations/{id}`: the conversation with its messages, their
/// citations and usage. A publishable key reads only the conversation its
/// visitor token started; anything else is a 404.
#[utoipa::path(
    get,
    path = "/api/conversations/{id}",
    tag = "answers",
    security(("tenant_key" = []), ("publishable_key" = [], "visitor_token" = [])),
    params(("id" = String, Path, pattern = "^[A-Za-z0-9_-]{1,128}$", description = "The conversation's id")),
    responses(
        (status = 200, description = "The conversation with its messages", body = Conversation),
        (status = 400, description = "`invalid_field`: `id`", body = ErrorBody),
        (status = 403, description = "`forbidden`: the publishable key does not allow the request's `Origin`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such conversation for this caller", body = ErrorBody),
    )
)]
pub async fn read(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    let caller = auth::chat_caller(&request)?;
    let conversation =
        conversations::read_conversation(&app.db, &request.rate_gate, &caller, request.param("id"))
            .await?;
    json_of(StatusCode::OK, &conversation)
}

/// `DELETE /api/conversations/{id}` (tenant key): the conversation and its
/// messages.
#[utoipa::path(
    delete,
    path = "/api/conversations/{id}",
    tag = "answers",
    security(("tenant_key" = [])),
    params(("id" = String, Path, pattern = "^[A-Za-z0-9_-]{1,128}$", description = "The conversation's id")),
    responses(
        (status = 200, description = "Deleted", body = Deleted),
        (status = 400, description = "`invalid_field`: `id`", body = ErrorBody),
        (status = 404, description = "`not_found`: the tenant has no such conversation", body = ErrorBody),
    )
)]
pub async fn delete(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    let tenant = auth::tenant(&request)?;
    let id = valid_conversation_id(request.param("id")).map_err(ApiError::from)?;
    let deleted = tenant.run(&app.db, &DeleteConversation { id }).await?;
    json_of(StatusCode::OK, &deleted)
}

/// `GET` and `PUT` share `/api/assistant`.
pub async fn assistant(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    if request.method == Method::PUT {
        put_assistant(app, request).await
    } else {
        get_assistant(app, request).await
    }
}

/// `GET /api/assistant`: the tenant's settings, or the defaults.
#[utoipa::path(
    get,
    path = "/api/assistant",
    tag = "answers",
    security(("tenant_key" = [])),
    responses((status = 200, description = "How the tenant's assistant answers", body = AssistantSettings))
)]
pub async fn get_assistant(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    let tenant = auth::tenant(&request)?;
    let settings = tenant.run(&app.db, &GetAssistant {}).await?;
    json_of(StatusCode::OK, &settings)
}

/// `PUT /api/assistant`: replaces the settings, audited.
#[utoipa::path(
    put,
    path = "/api/assistant",
    tag = "answers",
    security(("tenant_key" = [])),
    request_body = AssistantSettings,
    responses(
        (status = 200, description = "The settings as stored", body = AssistantSettings),
        (status = 400, description = "`invalid_field`: `instructions`, `model`, `temperature` or `max_answer_tokens`", body = ErrorBody),
    )
)]
pub async fn put_assistant(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    let tenant = auth::tenant(&request)?;
    let settings: AssistantSettings = request.json()?;
    settings.validate().map_err(ApiError::from)?;
    let settings = tenant
        .run(
            &app.db,
            &PutAssistant {
                assistant: &settings,
                audit: &request.audit(&auth::tenant_actor(&request)),
            },
        )
        .await?;
    json_of(StatusCode::OK, &settings)
}
