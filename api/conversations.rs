//! `GET /api/conversations`: a tenant's conversations, newest first. Wiring only: the handler lives in the keel crate.
fn main() -> std::process::ExitCode {
    keel::web::runtime::run(keel::routes::conversations())
}
