//! `POST /api/search: hybrid, vector or keyword search`. Wiring only: the handler lives in the keel crate.
fn main() -> std::process::ExitCode {
    keel::web::runtime::run(keel::routes::search())
}
