//! `POST /api/webhooks/endpoints: register a signed webhook endpoint`. Wiring only: the handler lives in the keel crate.
fn main() -> std::process::ExitCode {
    keel::web::runtime::run(keel::routes::webhook_endpoints())
}
