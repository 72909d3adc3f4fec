//! `POST /api/sources/{id}/sync`: crawl one source now. Wiring only: the handler lives in the keel crate.
fn main() -> std::process::ExitCode {
    keel::web::runtime::run(keel::routes::source_sync())
}
