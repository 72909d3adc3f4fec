//! `GET`/`POST /api/publishable-keys`: list and create a tenant's publishable (`keel_pk_`) keys. Wiring only: the handler lives in the keel crate.
fn main() -> std::process::ExitCode {
    keel::web::runtime::run(keel::routes::publishable_keys())
}
