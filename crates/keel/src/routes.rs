//! Every route Keel serves, in one table. Each `api/<name>.rs` binary serves
//! one entry; the dev server (`keel serve`) mounts them all on one port at the
//! same paths and methods as on Vercel.
//!
//! Quotas (see `ops::ratelimit`): tenant-key routes draw per tenant, the
//! unauthenticated routes that reach the database per client address, and
//! webhook intake per endpoint and sender address (with its own, smaller
//! body limit).
//! Conversation reads also take publishable keys (`.publishable()`), whose
//! calls draw from the key's and its visitor's quotas as well.
//! `/api/health` is not limited: it touches nothing and must answer anyone
//! (liveness probes); admin, cron and metrics routes are secret-authenticated
//! operators.

use http::Method;

use crate::answers::handlers as answers;
use crate::jobs;
use crate::knowledge::handlers as knowledge;
use crate::openapi;
use crate::ops::handlers as ops;
use crate::ops::ratelimit::Scope;
use crate::platform::tokens;
use crate::sources::handlers as sources;
use crate::tasks::handlers as tasks;
use crate::tenants::handlers as tenants;
use crate::web::{BodyLimit, Route};
use crate::webhooks::handlers as webhooks;

pub fn health() -> Route {
    Route::new("/api/health", &[Method::GET], |app, req| {
        Box::pin(ops::live(app, req))
    })
    .exempt_from_maintenance()
}

pub fn ready() -> Route {
    Route::new("/api/ready", &[Method::GET], |app, req| {
        Box::pin(ops::ready(app, req))
    })
    .rate_limited(Scope::Anonymous)
}

pub fn test_error() -> Route {
    Route::new("/api/test-error", &[Method::GET], |app, req| {
        Box::pin(ops::test_error(app, req))
    })
}

/// The OpenAPI document of every route (see `openapi`).
pub fn openapi() -> Route {
    Route::new("/api/openapi.json", &[Method::GET], |app, req| {
        Box::pin(openapi::serve(app, req))
    })
}

pub fn tenants() -> Route {
    Route::new("/api/tenants", &[Method::GET, Method::POST], |app, req| {
        Box::pin(tenants::tenants(app, req))
    })
}

pub fn tenant_keys() -> Route {
    Route::new("/api/tenants/{slug}/keys", &[Method::POST], |app, req| {
        Box::pin(tenants::issue_key(app, req))
    })
}

pub fn documents() -> Route {
    Route::new("/api/documents", &[Method::GET, Method::PUT], |app, req| {
        Box::pin(knowledge::documents(app, req))
    })
    .rate_limited(Scope::Tenant)
    .warmed_up_by(tokens::preload)
}

pub fn document() -> Route {
    Route::new("/api/documents/{id}", &[Method::DELETE], |app, req| {
        Box::pin(knowledge::delete(app, req))
    })
    .rate_limited(Scope::Tenant)
}

pub fn search() -> Route {
    Route::new("/api/search", &[Method::POST], |app, req| {
        Box::pin(knowledge::search(app, req))
    })
    .rate_limited(Scope::Search)
}

pub fn cron_embeddings() -> Route {
    Route::new("/api/cron/embeddings", &[Method::GET], |app, req| {
        Box::pin(knowledge::cron(app, req))
    })
}

pub fn generate_embeddings() -> Route {
    Route::new("/api/embeddings/generate", &[Method::POST], |app, req| {
        Box::pin(knowledge::generate(app, req))
    })
    .rate_limited(Scope::Tenant)
}

pub fn retry_embeddings() -> Route {
    Route::new("/api/embeddings/retry", &[Method::POST], |app, req| {
        Box::pin(knowledge::retry(app, req))
    })
    .rate_limited(Scope::Tenant)
}

pub fn tasks() -> Route {
    Route::new("/api/tasks", &[Method::GET], |app, req| {
        Box::pin(tasks::list(app, req))
    })
    .rate_limited(Scope::Tenant)
}

pub fn cron_tasks() -> Route {
    Route::new("/api/cron/tasks", &[Method::GET], |app, req| {
        Box::pin(tasks::cron(app, req, jobs::KINDS))
    })
}

pub fn cron_maintenance() -> Route {
    Route::new("/api/cron/maintenance", &[Method::GET], |app, req| {
        Box::pin(ops::maintenance(app, req))
    })
}

pub fn webhook_endpoints() -> Route {
    Route::new("/api/webhooks/endpoints", &[Method::POST], |app, req| {
        Box::pin(webhooks::create_endpoint(app, req))
    })
    .rate_limited(Scope::Tenant)
}

pub fn webhook_deliveries() -> Route {
    Route::new("/api/webhooks/deliveries", &[Method::GET], |app, req| {
        Box::pin(webhooks::list_deliveries(app, req))
    })
    .rate_limited(Scope::Tenant)
}

pub fn webhook_secret() -> Route {
    Route::new(
        "/api/webhooks/endpoints/{id}/secret",
        &[Method::POST],
        |app, req| Box::pin(webhooks::rotate_secret(app, req)),
    )
    .rate_limited(Scope::Tenant)
}

/// Matched after the fixed `/api/webhooks/*` paths above.
pub fn webhook_intake() -> Route {
    Route::new("/api/webhooks/{id}", &[Method::POST], |app, req| {
        Box::pin(webhooks::receive(app, req))
    })
    .rate_limited(Scope::Webhook)
    .body_limit(BodyLimit::WebhookIntake)
}

pub fn conversations() -> Route {
    Route::new("/api/conversations", &[Method::GET], |app, req| {
        Box::pin(answers::list(app, req))
    })
    .rate_limited(Scope::Tenant)
}

/// Read by a tenant key, or by the publishable key's visitor who started it.
pub fn conversation() -> Route {
    Route::new(
        "/api/conversations/{id}",
        &[Method::GET, Method::DELETE],
        |app, req| Box::pin(answers::conversation(app, req)),
    )
    .rate_limited(Scope::Tenant)
    .publishable()
}

pub fn assistant() -> Route {
    Route::new("/api/assistant", &[Method::GET, Method::PUT], |app, req| {
        Box::pin(answers::assistant(app, req))
    })
    .rate_limited(Scope::Tenant)
}

pub fn publishable_keys() -> Route {
    Route::new(
        "/api/publishable-keys",
        &[Method::GET, Method::POST],
        |app, req| Box::pin(tenants::publishable_keys(app, req)),
    )
    .rate_limited(Scope::Tenant)
}

pub fn publishable_key() -> Route {
    Route::new(
        "/api/publishable-keys/{id}",
        &[Method::DELETE],
        |app, req| Box::pin(tenants::revoke_publishable_key(app, req)),
    )
    .rate_limited(Scope::Tenant)
}

pub fn metrics() -> Route {
    Route::new("/api/metrics", &[Method::GET], |app, req| {
        Box::pin(ops::metrics(app, req))
    })
}

/// Streams its answer; publishable keys may call it from a browser.
pub fn chat() -> Route {
    Route::new("/api/chat", &[Method::POST], |app, req| {
        Box::pin(answers::chat::chat(app, req))
    })
    .rate_limited(Scope::Chat)
    .publishable()
    .streaming()
}

pub fn chat_completions() -> Route {
    Route::new("/api/v1/chat/completions", &[Method::POST], |app, req| {
        Box::pin(answers::chat::completions(app, req))
    })
    .rate_limited(Scope::Chat)
    .streaming()
}

pub fn sources() -> Route {
    Route::new("/api/sources", &[Method::GET, Method::POST], |app, req| {
        Box::pin(sources::sources(app, req))
    })
    .rate_limited(Scope::Tenant)
}

pub fn source() -> Route {
    Route::new(
        "/api/sources/{id}",
        &[Method::GET, Method::DELETE],
        |app, req| Box::pin(sources::source(app, req)),
    )
    .rate_limited(Scope::Tenant)
}

pub fn source_sync() -> Route {
    Route::new("/api/sources/{id}/sync", &[Method::POST], |app, req| {
        Box::pin(sources::sync(app, req))
    })
    .rate_limited(Scope::Tenant)
}

pub fn cron_sources() -> Route {
    Route::new("/api/cron/sources", &[Method::GET], |app, req| {
        Box::pin(sources::cron(app, req))
    })
}

pub fn all() -> Vec<Route> {
    vec![
        health(),
        ready(),
        test_error(),
        openapi(),
        tenants(),
        tenant_keys(),
        documents(),
        document(),
        search(),
        cron_embeddings(),
        generate_embeddings(),
        retry_embeddings(),
        tasks(),
        cron_tasks(),
        cron_maintenance(),
        webhook_endpoints(),
        webhook_deliveries(),
        webhook_secret(),
        webhook_intake(),
        conversations(),
        conversation(),
        assistant(),
        publishable_keys(),
        publishable_key(),
        metrics(),
        chat(),
        chat_completions(),
        sources(),
        source(),
        source_sync(),
        cron_sources(),
    ]
}
