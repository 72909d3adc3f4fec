//! The OpenAPI 3.1 document of every route, generated from the handlers' own
//! `#[utoipa::path]` annotations and the `ToSchema` derives on the types they
//! (de)serialize, served at `GET /api/openapi.json` and committed as
//! `public/openapi.json` (a test fails when the two differ, another when the
//! document's operations are not exactly [`routes::all`]'s).
//!
//! Convention for a new route: put `#[utoipa::path(...)]` on its handler
//! (one per method: a handler serving two methods dispatches to one function
//! per method), with its path parameters, request body, 2xx responses and the
//! error codes only it answers with; derive `ToSchema` under the serde
//! derives of its wire types; list the handler in [`KeelApi`]'s `paths`. The
//! errors every route of its kind shares (credentials, body, quota,
//! maintenance, database) are added here from the route table itself.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::{Method, StatusCode};
use utoipa::OpenApi;
use utoipa::openapi::schema::OneOfBuilder;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, OpenApi as Document, Ref, ResponseBuilder};

use crate::answers::handlers as answers;
use crate::app::App;
use crate::knowledge::handlers as knowledge;
use crate::ops::handlers as ops;
use crate::routes;
use crate::sources::handlers as sources;
use crate::tasks::handlers as tasks;
use crate::tenants::handlers as tenants;
use crate::web::error::ErrorBody;
use crate::web::{ApiRequest, HandlerResult, Route, json_of};
use crate::webhooks::handlers as webhooks;
use crate::webhooks::presets::Verification;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Keel",
        description = "Production backend for AI assistants: tenants and their keys, \
            knowledge (documents, embeddings, search), answers (chat, conversations), \
            webhooks, tasks and operations. Every error is \
            `{\"error\":{\"code\",\"message\",\"request_id\"}}` (`ErrorBody`); each \
            response lists the codes it carries."
    ),
    paths(
        ops::live,
        ops::ready,
        ops::test_error,
        ops::metrics,
        ops::maintenance,
        serve,
        tenants::create,
        tenants::list,
        tenants::issue_key,
        tenants::list_publishable_keys,
        tenants::create_publishable_key,
        tenants::revoke_publishable_key,
        knowledge::list,
        knowledge::upsert,
        knowledge::delete,
        knowledge::search,
        knowledge::cron,
        knowledge::generate,
        knowledge::retry,
        tasks::list,
        tasks::cron,
        webhooks::create_endpoint,
        webhooks::rotate_secret,
        webhooks::list_deliveries,
        webhooks::receive,
        answers::list,
        answers::read,
        answers::delete,
        answers::get_assistant,
        answers::put_assistant,
        answers::chat::chat,
        answers::chat::completions,
        sources::create,
        sources::list,
        sources::read,
        sources::delete,
        sources::sync,
        sources::cron,
    ),
    components(schemas(ErrorBody)),
    modifiers(&SecuritySchemes),
)]
struct KeelApi;

/// The document, with the errors each route shares added from the route table.
pub fn document() -> Document {
    let mut document = KeelApi::openapi();
    for route in routes::all() {
        for method in route.methods {
            if let Some(operation) = operation_mut(&mut document, route.path, method) {
                operation.operation_id = Some(operation_id(route.path, method));
                for (status, codes) in shared_errors(&route, operation) {
                    add_error(operation, status, &codes);
                }
            }
        }
    }
    document
}

/// `GET /api/openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document of every route", content_type = "application/json"))
)]
pub async fn serve(_app: Arc<App>, _request: ApiRequest) -> HandlerResult {
    json_of(StatusCode::OK, &document())
}

/// Unique by construction: `put_documents`, `delete_documents_id`.
fn operation_id(path: &str, method: &Method) -> String {
    let words: Vec<String> = path
        .trim_start_matches("/api/")
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(str::to_owned)
        .collect();
    format!("{}_{}", method.as_str().to_lowercase(), words.join("_"))
}

fn operation_mut<'a>(
    document: &'a mut Document,
    path: &str,
    method: &Method,
) -> Option<&'a mut utoipa::openapi::path::Operation> {
    let item = document.paths.paths.get_mut(path)?;
    match *method {
        Method::GET => item.get.as_mut(),
        Method::POST => item.post.as_mut(),
        Method::PUT => item.put.as_mut(),
        Method::DELETE => item.delete.as_mut(),
        Method::PATCH => item.patch.as_mut(),
        _ => None,
    }
}

/// The errors a route answers with by what it is: its credentials (from the
/// operation's security), its body, its quota, maintenance and its database.
fn shared_errors(
    route: &Route,
    operation: &utoipa::openapi::path::Operation,
) -> BTreeMap<u16, Vec<&'static str>> {
    let mut errors: BTreeMap<u16, Vec<&'static str>> = BTreeMap::new();
    let schemes = scheme_names(operation);
    if !schemes.is_empty() {
        errors.entry(401).or_default().push("unauthorized");
    }
    if schemes.iter().any(|s| s == "tenant_key") && !schemes.iter().any(|s| s == "publishable_key")
    {
        // A publishable key is refused wherever it is not listed.
        errors.entry(403).or_default().push("forbidden");
    }
    if operation.request_body.is_some() {
        errors
            .entry(400)
            .or_default()
            .extend(["invalid_json", "invalid_request"]);
        errors.entry(413).or_default().push("payload_too_large");
        errors
            .entry(415)
            .or_default()
            .push("unsupported_media_type");
    }
    if route.rate_scope.is_some() {
        errors.entry(429).or_default().push("rate_limited");
    }
    if !route.exempt_from_maintenance {
        errors.entry(503).or_default().push("maintenance");
    }
    if route.rate_scope.is_some() || !schemes.is_empty() {
        // Quotas and credentials are checked in the database.
        errors.entry(503).or_default().push("database_unavailable");
    }
    errors
}

/// The scheme names the operation's security requirements mention.
fn scheme_names(operation: &utoipa::openapi::path::Operation) -> Vec<String> {
    let requirements = serde_json::to_value(&operation.security).unwrap_or_default();
    requirements
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|requirement| requirement.as_object())
        .flat_map(|requirement| requirement.keys().cloned())
        .collect()
}

/// Adds `codes` to the operation's `status` response (the error body), or
/// creates it.
fn add_error(operation: &mut utoipa::openapi::path::Operation, status: u16, codes: &[&str]) {
    let listed = codes
        .iter()
        .map(|code| format!("`{code}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let key = status.to_string();
    let responses = &mut operation.responses.responses;
    match responses.get_mut(&key) {
        Some(utoipa::openapi::RefOr::T(response)) => {
            response.description = format!("{}; {listed}", response.description);
            let content = response
                .content
                .entry("application/json".to_owned())
                .or_insert_with(error_content);
            if content.schema != error_content().schema {
                // A body of its own (`/api/ready`'s 503), or the error.
                let mut either = OneOfBuilder::new();
                if let Some(own) = content.schema.take() {
                    either = either.item(own);
                }
                content.schema = Some(either.item(Ref::from_schema_name("ErrorBody")).into());
            }
        }
        _ => {
            let response = ResponseBuilder::new()
                .description(listed)
                .content("application/json", error_content())
                .build();
            responses.insert(key, response.into());
        }
    }
}

fn error_content() -> Content {
    Content::new(Some(Ref::from_schema_name("ErrorBody")))
}

/// The security schemes by name: the keys and secrets Keel's callers present.
const SCHEMES: &[(&str, &str)] = &[
    (
        "tenant_key",
        "A tenant's secret API key (`keel_…`), as `Authorization: Bearer <key>`, from a server.",
    ),
    (
        "publishable_key",
        "A publishable key (`keel_pk_…`), as `Authorization: Bearer <key>`, from a browser whose \
         `Origin` the key allows: may only call `/api/chat` and read its visitor's conversation.",
    ),
    (
        "visitor_token",
        "With a publishable key: the visitor's token, returned in `x-keel-visitor-token` by the \
         first `/api/chat` call and sent back on the next ones.",
    ),
    (
        "admin_key",
        "`Authorization: Bearer $ADMIN_API_KEY`; admin routes are closed without it configured.",
    ),
    (
        "cron_secret",
        "`Authorization: Bearer $CRON_SECRET`, as Vercel Cron and the EventBridge schedules send it.",
    ),
    (
        "metrics_token",
        "`Authorization: Bearer $METRICS_TOKEN`; metrics are closed without it configured.",
    ),
];

struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, document: &mut Document) {
        let components = document.components.get_or_insert_with(Default::default);
        for (name, description) in SCHEMES {
            let scheme = if *name == "visitor_token" {
                SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                    crate::answers::conversations::VISITOR_TOKEN_HEADER,
                    *description,
                )))
            } else {
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some(*description))
                        .build(),
                )
            };
            components.add_security_scheme(*name, scheme);
        }
        for verification in Verification::ALL {
            let headers = verification.headers();
            let description = format!(
                "Deliveries to a `{}` endpoint are verified by the headers {} (the endpoint's \
                 secret signs or is the credential)",
                verification.name(),
                headers
                    .iter()
                    .map(|h| format!("`{h}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            components.add_security_scheme(
                webhook_scheme(verification),
                SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                    headers[0],
                    &description,
                ))),
            );
        }
    }
}

/// The security scheme of a webhook verification preset: `webhook_<preset>`.
pub fn webhook_scheme(verification: Verification) -> String {
    format!("webhook_{}", verification.name())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    const COMMITTED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../public/openapi.json");

    /// The committed `public/openapi.json` is the generated document; run
    /// with `KEEL_WRITE_OPENAPI=1` to write it after changing a route.
    #[test]
    fn the_committed_document_is_the_generated_one() {
        let generated = format!(
            "{}\n",
            serde_json::to_string_pretty(&document()).expect("the document serializes")
        );
        if std::env::var_os("KEEL_WRITE_OPENAPI").is_some() {
            std::fs::write(COMMITTED, &generated).expect("public/openapi.json is writable");
        }
        let committed = std::fs::read_to_string(COMMITTED).unwrap_or_default();
        assert!(
            committed == generated,
            "public/openapi.json differs from the generated document; regenerate it with \
             `KEEL_WRITE_OPENAPI=1 cargo test -p keel --lib openapi` and commit it"
        );
    }

    #[test]
    fn the_documents_operations_are_exactly_the_route_tables() {
        let routed: BTreeSet<(String, String)> = routes::all()
            .iter()
            .flat_map(|route| {
                route
                    .methods
                    .iter()
                    .map(|m| (route.path.to_owned(), m.as_str().to_owned()))
            })
            .collect();
        let document = serde_json::to_value(document()).unwrap();
        let documented: BTreeSet<(String, String)> = document["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, item)| {
                item.as_object()
                    .unwrap()
                    .keys()
                    .filter(|key| {
                        ["get", "put", "post", "delete", "patch", "head", "options"]
                            .contains(&key.as_str())
                    })
                    .map(|method| (path.clone(), method.to_uppercase()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let ids: Vec<&str> = document["paths"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|item| item.as_object().unwrap().values())
            .filter_map(|operation| operation["operationId"].as_str())
            .collect();
        let unique: BTreeSet<&str> = ids.iter().copied().collect();
        assert_eq!(ids.len(), unique.len(), "operation ids repeat: {ids:?}");
        let undocumented: Vec<_> = routed.difference(&documented).collect();
        let unrouted: Vec<_> = documented.difference(&routed).collect();
        assert!(
            undocumented.is_empty() && unrouted.is_empty(),
            "routes without an operation: {undocumented:?}; operations without a route: {unrouted:?}"
        );
    }

    #[test]
    fn every_error_response_is_the_error_body_and_names_its_codes() {
        let document = serde_json::to_value(document()).unwrap();
        for (path, item) in document["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                for (status, response) in operation["responses"].as_object().unwrap() {
                    if !status.starts_with('4') && !status.starts_with('5') {
                        continue;
                    }
                    let schema = response["content"]["application/json"]["schema"].to_string();
                    assert!(
                        schema.contains("\"#/components/schemas/ErrorBody\""),
                        "{method} {path} {status}: {schema}"
                    );
                    assert!(
                        response["description"].as_str().unwrap().contains('`'),
                        "{method} {path} {status} names no code"
                    );
                }
            }
        }
    }
}
