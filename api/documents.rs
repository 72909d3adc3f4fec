//! `GET|PUT /api/documents: list and upsert the tenant's documents`. Wiring only: the handler lives in the keel crate.
fn main() -> std::process::ExitCode {
    keel::web::runtime::run(keel::routes::documents())
}
