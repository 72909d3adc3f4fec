//! `GET /api/sources/{id}` and `DELETE /api/sources/{id}`: one source's progress, or its removal with its documents. Wiring only: the handler lives in the keel crate.
fn main() -> std::process::ExitCode {
    keel::web::runtime::run(keel::routes::source())
}
