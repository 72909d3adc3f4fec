//! `GET /api/cron/maintenance: expire caches, prune, release leases, schedule reconciliation (Vercel Cron)`. Wiring only: the handler lives in the keel crate.
fn main() -> std::process::ExitCode {
    keel::web::runtime::run(keel::routes::cron_maintenance())
}
