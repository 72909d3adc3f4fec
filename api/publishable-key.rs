//! `DELETE /api/publishable-keys/{id}`: revoke a publishable key. Wiring only: the handler lives in the keel crate.
fn main() -> std::process::ExitCode {
    keel::web::runtime::run(keel::routes::publishable_key())
}
