//! `GET /api/cron/sources: crawl due website and sitemap sources, resuming unfinished ones (Vercel Cron)`. Wiring only: the handler lives in the keel crate.
fn main() -> std::process::ExitCode {
    keel::web::runtime::run(keel::routes::cron_sources())
}
