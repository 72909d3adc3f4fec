//! `POST /api/embeddings/generate: embed the caller's pending chunks now`. Wiring only: the handler lives in the keel crate.
fn main() -> std::process::ExitCode {
    keel::web::runtime::run(keel::routes::generate_embeddings())
}
