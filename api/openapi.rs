//! `GET /api/openapi.json: the OpenAPI document of every route`. Wiring only: the handler lives in the keel crate.
fn main() -> std::process::ExitCode {
    keel::web::runtime::run(keel::routes::openapi())
}
