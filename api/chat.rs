//! `POST /api/chat`: answers for chat widgets, streamed in the AI SDK UI message stream protocol. Wiring only: the handler lives in the keel crate.
fn main() -> std::process::ExitCode {
    keel::web::runtime::run(keel::routes::chat())
}
