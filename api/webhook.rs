//! `POST /api/webhooks/{id}: verify, store and enqueue a signed delivery`. Wiring only: the handler lives in the keel crate.
fn main() -> std::process::ExitCode {
    keel::web::runtime::run(keel::routes::webhook_intake())
}
