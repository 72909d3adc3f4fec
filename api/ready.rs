//! `GET /api/ready: readiness of every dependency`. Wiring only: the handler lives in the keel crate.
fn main() -> std::process::ExitCode {
    keel::web::runtime::run(keel::routes::ready())
}
