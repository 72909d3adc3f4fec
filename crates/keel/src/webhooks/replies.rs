//! Replies to the Vapi server messages a call waits on, answered from the
//! tenant's knowledge while the caller listens: `tool-calls` for the
//! built-in `search_knowledge` tool (`{"results": [{"toolCallId", "name",
//! "result"}]}`, or `"error"` per call) and `knowledge-base-request` for a
//! custom knowledge base (`{"documents": [{"content", "similarity",
//! "uuid"}]}`). The message itself is stored like any other delivery. Each
//! search takes one request from the tenant's search quota, as
//! `POST /api/search` does: a stream of tool calls cannot search more than
//! the tenant's key could.

use serde_json::{Value, json};

use crate::knowledge::search::{self, SearchRequest};
use crate::knowledge::{Knowledge, KnowledgeError};
use crate::ops::ratelimit::{self, GateError, Scope};
use crate::platform::config::RateLimitSettings;
use crate::platform::db::Db;
use crate::tenants::TenantRef;

/// The tool Keel answers; its definition is in the README.
pub const SEARCH_TOOL: &str = "search_knowledge";
/// Passages joined into one tool result: enough to answer, short enough to speak.
const TOOL_PASSAGES: i64 = 3;
/// Documents handed to Vapi's model for a knowledge-base request.
const KNOWLEDGE_BASE_DOCUMENTS: i64 = 5;
/// Tool calls answered per message; Vapi sends one or a few.
const MAX_TOOL_CALLS: usize = 8;

/// One call of `toolCallList`, in either shape Vapi sends: flat (`{"id",
/// "name", "arguments"}`) or OpenAI's (`{"id", "function": {"name",
/// "arguments"}}`), with `arguments` an object or a JSON string.
#[derive(Debug, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: Value,
}

pub fn tool_calls(message: &Value) -> Vec<ToolCall> {
    let Some(list) = message["toolCallList"].as_array() else {
        return Vec::new();
    };
    list.iter()
        .take(MAX_TOOL_CALLS)
        .filter_map(|call| {
            let id = call["id"].as_str()?;
            let function = call.get("function").unwrap_or(call);
            let name = function["name"].as_str()?;
            let arguments = match &function["arguments"] {
                Value::String(text) => serde_json::from_str(text).unwrap_or(Value::Null),
                other => other.clone(),
            };
            Some(ToolCall {
                id: id.to_owned(),
                name: name.to_owned(),
                arguments,
            })
        })
        .collect()
}

/// What a reply searches with: the tenant's knowledge and search quota.
pub struct Searching<'a> {
    pub db: &'a Db,
    pub knowledge: &'a Knowledge,
    pub rate_limits: &'a RateLimitSettings,
    pub tenant_id: &'a str,
}

/// Why a reply's search found nothing to give.
#[derive(Debug, thiserror::Error)]
enum PassagesError {
    #[error("the tenant's search quota is used up for {0} s")]
    OverQuota(u64),
    #[error(transparent)]
    Database(#[from] crate::platform::db::DbError),
    #[error(transparent)]
    Search(#[from] KnowledgeError),
}

/// The reply Vapi waits for on this message, if it waits for one.
pub async fn reply(searching: &Searching<'_>, message: &Value) -> Option<Value> {
    match message["type"].as_str()? {
        "tool-calls" => {
            let mut results = Vec::new();
            for call in tool_calls(message) {
                results.push(answer_tool_call(searching, &call).await);
            }
            Some(json!({"results": results}))
        }
        "knowledge-base-request" => {
            let documents = match last_user_words(message) {
                Some(query) => search_passages(searching, query, KNOWLEDGE_BASE_DOCUMENTS)
                    .await
                    .unwrap_or_else(|error| {
                        tracing::warn!(%error, "a knowledge-base request found nothing");
                        Vec::new()
                    }),
                None => Vec::new(),
            };
            let documents: Vec<Value> = documents
                .into_iter()
                .map(
                    |p| json!({"content": p.content, "similarity": p.score, "uuid": p.document_id}),
                )
                .collect();
            Some(json!({"documents": documents}))
        }
        _ => None,
    }
}

async fn answer_tool_call(searching: &Searching<'_>, call: &ToolCall) -> Value {
    if call.name != SEARCH_TOOL {
        return json!({"toolCallId": call.id, "name": call.name,
                      "error": format!("Keel answers only the {SEARCH_TOOL} tool")});
    }
    let Some(query) = call.arguments["query"].as_str() else {
        return json!({"toolCallId": call.id, "name": call.name,
                      "error": "search_knowledge needs a string `query` argument"});
    };
    match search_passages(searching, query, TOOL_PASSAGES).await {
        Ok(passages) if passages.is_empty() => json!({"toolCallId": call.id, "name": call.name,
            "result": "Nothing in the knowledge base matches this question."}),
        Ok(passages) => {
            let joined: Vec<String> = passages.into_iter().map(|p| p.content).collect();
            json!({"toolCallId": call.id, "name": call.name, "result": joined.join("\n\n")})
        }
        Err(PassagesError::Search(KnowledgeError::Invalid { field, problem })) => {
            json!({"toolCallId": call.id, "name": call.name,
                   "error": format!("`{field}` {problem}")})
        }
        Err(PassagesError::OverQuota(retry_after)) => json!({"toolCallId": call.id,
            "name": call.name,
            "error": format!("the knowledge base's search quota is used up; try again in {retry_after} seconds")}),
        Err(error) => {
            tracing::warn!(%error, "a search_knowledge tool call failed");
            json!({"toolCallId": call.id, "name": call.name,
                   "error": "the knowledge base is unavailable right now"})
        }
    }
}

/// What the caller said last: the query of a knowledge-base request.
fn last_user_words(message: &Value) -> Option<&str> {
    message["messages"]
        .as_array()?
        .iter()
        .rev()
        .find(|m| m["role"] == "user")?["content"]
        .as_str()
}

/// The tenant's best `top_k` passages for `query`, after one request is
/// taken from its search quota.
async fn search_passages(
    searching: &Searching<'_>,
    query: &str,
    top_k: i64,
) -> Result<Vec<crate::knowledge::store::SearchHit>, PassagesError> {
    let Searching {
        db,
        knowledge,
        rate_limits,
        tenant_id,
    } = *searching;
    match ratelimit::charge_tenant(db, rate_limits, Scope::Search, tenant_id).await {
        Ok(_) => {}
        Err(GateError::Refused(_, quota)) => return Err(PassagesError::OverQuota(quota.reset)),
        Err(GateError::Db(error)) => return Err(error.into()),
    }
    let tenant = TenantRef::Trusted(tenant_id.to_owned());
    let request = SearchRequest {
        query: query.to_owned(),
        top_k,
        mode: Default::default(),
        min_score: None,
        filter: None,
    };
    Ok(search::search(db, knowledge, &tenant, request)
        .await?
        .results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_calls_are_read_in_every_shape_vapi_sends() {
        let message = json!({"type": "tool-calls", "toolCallList": [
            {"id": "a", "name": "search_knowledge", "arguments": {"query": "vegan"}},
            {"id": "b", "type": "function",
             "function": {"name": "search_knowledge", "arguments": "{\"query\":\"gluten\"}"}},
            {"id": "c", "function": {"name": "search_knowledge", "arguments": {"query": "nuts"}}},
            {"name": "no id: skipped"},
        ]});
        let calls = tool_calls(&message);
        let queries: Vec<(&str, &str)> = calls
            .iter()
            .map(|c| (c.id.as_str(), c.arguments["query"].as_str().unwrap()))
            .collect();
        assert_eq!(queries, [("a", "vegan"), ("b", "gluten"), ("c", "nuts")]);
    }

    #[test]
    fn a_knowledge_base_request_asks_what_the_caller_said_last() {
        let message = json!({"messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Do you have vegan dishes?"},
            {"role": "system", "content": "Be brief."},
        ]});
        assert_eq!(last_user_words(&message), Some("Do you have vegan dishes?"));
        assert_eq!(last_user_words(&json!({"messages": []})), None);
    }
}
