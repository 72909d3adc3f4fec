//! `GET /api/webhooks/deliveries: the tenant's received deliveries`. Wiring only: the handler lives in the keel crate.
fn main() -> std::process::ExitCode {
    keel::web::runtime::run(keel::routes::webhook_deliveries())
}
