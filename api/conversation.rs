//! `GET`/`DELETE /api/conversations/{id}`: one conversation with its messages (a publishable key's visitor reads its own). Wiring only: the handler lives in the keel crate.
fn main() -> std::process::ExitCode {
    keel::web::runtime::run(keel::routes::conversation())
}
