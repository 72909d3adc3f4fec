//! `GET /api/sources` and `POST /api/sources`: a tenant's website and sitemap sources. Wiring only: the handler lives in the keel crate.
fn main() -> std::process::ExitCode {
    keel::web::runtime::run(keel::routes::sources())
}
