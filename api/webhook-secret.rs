//! `POST /api/webhooks/endpoints/{id}/secret`: rotate an endpoint's signing secret. Wiring only: the handler lives in the keel crate.
fn main() -> std::process::ExitCode {
    keel::web::runtime::run(keel::routes::webhook_secret())
}
