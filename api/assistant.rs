//! `GET`/`PUT /api/assistant`: the tenant's assistant settings. Wiring only: the handler lives in the keel crate.
fn main() -> std::process::ExitCode {
    keel::web::runtime::run(keel::routes::assistant())
}
