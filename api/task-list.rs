//! `GET /api/tasks: the caller's tasks, by status and kind`. Wiring only: the handler lives in the keel crate.
fn main() -> std::process::ExitCode {
    keel::web::runtime::run(keel::routes::tasks())
}
