//! `GET /api/cron/tasks: run due tasks within the time budget (Vercel Cron)`. Wiring only: the handler lives in the keel crate.
fn main() -> std::process::ExitCode {
    keel::web::runtime::run(keel::routes::cron_tasks())
}
