//! `DELETE /api/documents/{id}: delete a document and its chunks`. Wiring only: the handler lives in the keel crate.
fn main() -> std::process::ExitCode {
    keel::web::runtime::run(keel::routes::document())
}
