//! The conversation and assistant routes: `GET /api/conversations`, `GET`
//! and `DELETE /api/conversations/{id}` (a publishable key's visitor may
//! read its own conversation), and `GET`/`PUT /api/assistant`. The routes
//! that answer are in [`chat`].

pub mod chat;

use std::sync::Arc;

use http::{Method, StatusCode};

use super::AssistantSettings;
use super::conversations::{self, valid_conversation_id};
use super::store::{DeleteConversation, GetAssistant, ListConversations, PutAssistant};
use crate::app::App;
use crate::web::auth;
use crate::web::{ApiError, ApiRequest, HandlerResult, json_of, page_response};

/// `GET /api/conversations?limit=&cursor=`: the tenant's conversations,
/// newest first.
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
    page_response("conversations", conversations)
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
async fn read(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    let caller = auth::chat_caller(&request)?;
    let conversation =
        conversations::read_conversation(&app.db, &request.rate_gate, &caller, request.param("id"))
            .await?;
    json_of(StatusCode::OK, &conversation)
}

/// `DELETE /api/conversations/{id}` (tenant key): the conversation and its
/// messages.
async fn delete(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    let tenant = auth::tenant(&request)?;
    let id = valid_conversation_id(request.param("id")).map_err(ApiError::from)?;
    let deleted = tenant.run(&app.db, &DeleteConversation { id }).await?;
    json_of(StatusCode::OK, &deleted)
}

/// `GET` and `PUT` share `/api/assistant`.
pub async fn assistant(app: Arc<App>, request: ApiRequest) -> HandlerResult {
    let tenant = auth::tenant(&request)?;
    let settings = if request.method == Method::PUT {
        let settings: AssistantSettings = request.json()?;
        settings.validate().map_err(ApiError::from)?;
        tenant
            .run(
                &app.db,
                &PutAssistant {
                    assistant: &settings,
                    audit: &request.audit(&auth::tenant_actor(&request)),
                },
            )
            .await?
    } else {
        tenant.run(&app.db, &GetAssistant {}).await?
    };
    json_of(StatusCode::OK, &settings)
}
