//! `GET /api/test-error: raises a test error for Sentry`. Wiring only: the handler lives in the keel crate.
fn main() -> std::process::ExitCode {
    keel::web::runtime::run(keel::routes::test_error())
}
