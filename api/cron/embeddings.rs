//! `GET /api/cron/embeddings: embed pending chunks of every tenant (Vercel Cron)`. Wiring only: the handler lives in the keel crate.
fn main() -> std::process::ExitCode {
    keel::web::runtime::run(keel::routes::cron_embeddings())
}
