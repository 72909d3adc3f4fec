//! The `webhook.process` task kind: applies a stored delivery. Document
//! events keep a tenant's knowledge in sync (`document.upserted`,
//! `document.deleted`); other events are stored for the tenant to consume.

use std::sync::Arc;

use serde_json::Value;

use super::store::{FinishWebhookDelivery, WebhookDelivery};
use crate::knowledge::{Knowledge, KnowledgeError, documents};
use crate::platform::db::Db;
use crate::tasks::{Task, TaskError};
use crate::tenants::TenantRef;

/// Invalid documents fail the delivery for good; anything else (the database
/// or the chunker) is worth another attempt.
fn sync_error(error: KnowledgeError) -> TaskError {
    match error {
        KnowledgeError::Invalid { .. } => TaskError::Permanent(error.to_string()),
        KnowledgeError::Call(error) => error.into(),
        KnowledgeError::Internal(cause) => TaskError::internal(
            true,
            "the documents could not be stored",
            &format!("{cause:#}"),
        ),
        other => TaskError::Retry(other.to_string()),
    }
}

pub async fn process_delivery(
    db: &Db,
    knowledge: &Arc<Knowledge>,
    task: Task,
) -> Result<(), TaskError> {
    let tenant = task.tenant()?;
    let delivery_id = task.payload["delivery_id"]
        .as_i64()
        .ok_or_else(|| TaskError::permanent("payload", "missing delivery_id"))?;
    // Pruned by retention in the meantime: nothing left to do.
    let Some(delivery) = tenant.run(db, &WebhookDelivery { id: delivery_id }).await? else {
        return Ok(());
    };
    let data = &delivery.payload["data"];
    let outcome = match delivery.event_type.as_str() {
        "document.upserted" => sync_upsert(db, knowledge, &tenant, data)
            .await
            .map(|()| "processed"),
        "document.deleted" => sync_delete(db, &tenant, data).await.map(|()| "processed"),
        _ => Ok("stored"),
    };
    let status = match &outcome {
        Ok(status) => *status,
        Err(TaskError::Permanent(_)) => "failed",
        Err(TaskError::Retry(_)) => return outcome.map(|_| ()),
    };
    tenant
        .run(
            db,
            &FinishWebhookDelivery {
                id: delivery.id,
                status,
            },
        )
        .await?;
    outcome.map(|_| ())
}

/// `data` is the documents API's body (`{"documents":[…]}`) or one document.
async fn sync_upsert(
    db: &Db,
    knowledge: &Arc<Knowledge>,
    tenant: &TenantRef,
    data: &Value,
) -> Result<(), TaskError> {
    let parsed = documents::parse_documents(data)
        .map_err(|e| TaskError::permanent("document.upserted data", e))?;
    documents::validate(&parsed, &knowledge.limits).map_err(sync_error)?;
    documents::upsert(db, knowledge, tenant, parsed)
        .await
        .map_err(sync_error)?;
    Ok(())
}

/// `data` is `{"id"}` or `{"ids":[…]}`; deleting what is already gone is fine.
async fn sync_delete(db: &Db, tenant: &TenantRef, data: &Value) -> Result<(), TaskError> {
    let ids: Vec<&str> = match (data.get("id"), data.get("ids")) {
        (Some(Value::String(id)), _) => vec![id.as_str()],
        (_, Some(Value::Array(ids))) => ids.iter().filter_map(Value::as_str).collect(),
        _ => {
            return Err(TaskError::permanent(
                "document.deleted data",
                "needs `id` or `ids`",
            ));
        }
    };
    for id in ids {
        match documents::delete(db, tenant, id).await {
            Ok(_) => {}
            Err(error) if error.is_not_found() => {}
            Err(error) => return Err(sync_error(error)),
        }
    }
    Ok(())
}
