//! `POST /api/embeddings/retry: queue the caller's failed chunks again`. Wiring only: the handler lives in the keel crate.
fn main() -> std::process::ExitCode {
    keel::web::runtime::run(keel::routes::retry_embeddings())
}
