//! The `webhook.process` task kind: applies a stored delivery. Document
//! events keep a tenant's knowledge in sync (`document.upserted`,
//! `document.deleted`, and a shop's product events, see [`catalogue`]); a
//! Vapi call's `end-of-call-report` becomes a conversation
//! ([`call_reports`]); an inbound text gets its reply task (see [`sms`]);
//! other events are stored for the tenant to consume.
//!
//! [`catalogue`]: super::catalogue
//! [`call_reports`]: super::call_reports
//! [`sms`]: super::sms
//!
//! Tasks run concurrently and reconciliation replays missed events late, so
//! document events are applied in event order, not arrival order: each
//! document remembers the newest event applied to it (by the delivery's
//! `event_at`: the event's `timestamp`, else its `webhook-timestamp`; a
//! delete is kept as a tombstone for the delivery retention), and an older
//! event is skipped for that document. While one delivery applies to a
//! document, another for the same document waits (retries).

use std::sync::Arc;

use serde_json::Value;

use super::catalogue::{self, CatalogueChange};
use super::presets::Verification;
use super::store::{FinishWebhookDelivery, OrderDocumentEvents, WebhookDelivery};
use super::{call_reports, sms};
use crate::knowledge::documents::DocumentInput;
use crate::knowledge::{Knowledge, KnowledgeError, documents};
use crate::platform::config::Config;
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
    config: &Config,
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
    let catalogue = catalogue::change(
        delivery.verification,
        &delivery.event_type,
        &delivery.payload,
    );
    let outcome = match (catalogue, delivery.event_type.as_str()) {
        (Some(Ok(CatalogueChange::Upsert(product))), _) => {
            sync_upsert(db, knowledge, &tenant, delivery.id, vec![product])
                .await
                .map(|()| "processed")
        }
        (Some(Ok(CatalogueChange::Delete(id))), _) => {
            sync_delete(db, &tenant, delivery.id, &[id.as_str()])
                .await
                .map(|()| "processed")
        }
        (Some(Err(problem)), event_type) => Err(TaskError::permanent(event_type, &problem)),
        (None, "document.upserted") => match documents::parse_documents(data) {
            Ok(parsed) => sync_upsert(db, knowledge, &tenant, delivery.id, parsed)
                .await
                .map(|()| "processed"),
            Err(e) => Err(TaskError::permanent("document.upserted data", e)),
        },
        (None, "document.deleted") => match deleted_ids(data) {
            Some(ids) => sync_delete(db, &tenant, delivery.id, &ids)
                .await
                .map(|()| "processed"),
            None => Err(TaskError::permanent(
                "document.deleted data",
                "needs `id` or `ids`",
            )),
        },
        (None, "end-of-call-report") if delivery.verification == Verification::Vapi => {
            call_reports::store(db, &tenant, &delivery.payload["message"])
                .await
                .map(|()| "processed")
        }
        // The webhook enqueued the reply already, unless its function died
        // right after storing the text: this makes sure.
        (None, _)
            if sms::inbound(
                delivery.verification,
                &delivery.event_type,
                &delivery.payload,
            )
            .is_some() =>
        {
            let delay = sms::reply_delay(config, delivery.verification);
            sms::enqueue_reply(db, &tenant, delivery.id, delay)
                .await
                .map(|()| "processed")
                .map_err(TaskError::from)
        }
        (None, _) => Ok("stored"),
    };
    let status = match &outcome {
        Ok(status) => *status,
        Err(TaskError::Permanent(_)) => "failed",
        Err(TaskError::Retry(_) | TaskError::Busy(_)) => return outcome.map(|_| ()),
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

/// How long a delivery holds its documents while applying; a worker that
/// dies holding them blocks other events for these documents this long.
const APPLY_LEASE_SECONDS: u64 = 300;

/// The ids of `ids` this delivery may apply: those no newer event touched.
async fn newer_than_seen(
    db: &Db,
    tenant: &TenantRef,
    delivery_id: i64,
    ids: &[&str],
    deleted: bool,
) -> Result<Vec<String>, TaskError> {
    let order = tenant
        .run(
            db,
            &OrderDocumentEvents {
                delivery_id,
                ids,
                deleted,
                lease_seconds: APPLY_LEASE_SECONDS,
            },
        )
        .await?;
    if !order.busy.is_empty() {
        return Err(TaskError::Busy(format!(
            "another delivery is applying document(s) {}",
            order.busy.join(", ")
        )));
    }
    if !order.stale.is_empty() {
        tracing::info!(
            delivery = delivery_id,
            documents = order.stale.join(", "),
            "skipped: these documents already saw a newer event"
        );
    }
    Ok(order.apply)
}

/// Upserts the documents no newer event touched.
async fn sync_upsert(
    db: &Db,
    knowledge: &Arc<Knowledge>,
    tenant: &TenantRef,
    delivery_id: i64,
    parsed: Vec<DocumentInput>,
) -> Result<(), TaskError> {
    documents::validate(&parsed, &knowledge.limits).map_err(sync_error)?;
    let ids: Vec<&str> = parsed.iter().map(|d| d.id.as_str()).collect();
    let apply = newer_than_seen(db, tenant, delivery_id, &ids, false).await?;
    let parsed: Vec<_> = parsed
        .into_iter()
        .filter(|d| apply.contains(&d.id))
        .collect();
    if parsed.is_empty() {
        return Ok(());
    }
    documents::upsert(db, knowledge, tenant, parsed)
        .await
        .map_err(sync_error)?;
    Ok(())
}

/// A `document.deleted` event's ids: `data` is `{"id"}` or `{"ids":[…]}`.
fn deleted_ids(data: &Value) -> Option<Vec<&str>> {
    match (data.get("id"), data.get("ids")) {
        (Some(Value::String(id)), _) => Some(vec![id.as_str()]),
        (_, Some(Value::Array(ids))) => Some(ids.iter().filter_map(Value::as_str).collect()),
        _ => None,
    }
}

/// Deletes the documents no newer event touched; deleting what is already
/// gone is fine.
async fn sync_delete(
    db: &Db,
    tenant: &TenantRef,
    delivery_id: i64,
    ids: &[&str],
) -> Result<(), TaskError> {
    let apply = newer_than_seen(db, tenant, delivery_id, ids, true).await?;
    for id in &apply {
        match documents::delete(db, tenant, id).await {
            Ok(_) => {}
            Err(error) if error.is_not_found() => {}
            Err(error) => return Err(sync_error(error)),
        }
    }
    Ok(())
}
