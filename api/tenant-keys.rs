//! `POST /api/tenants/{slug}/keys: issue (and rotate) a tenant's API key (admin)`. Wiring only: the handler lives in the keel crate.
fn main() -> std::process::ExitCode {
    keel::web::runtime::run(keel::routes::tenant_keys())
}
