//! `POST /api/v1/chat/completions`: OpenAI-compatible answers with retrieval built in. Wiring only: the handler lives in the keel crate.
fn main() -> std::process::ExitCode {
    keel::web::runtime::run(keel::routes::chat_completions())
}
