//! Every route Keel serves, in one table. Each `api/<name>.rs` binary serves
//! one entry; the dev server (`keel serve`) mounts them all on one port at the
//! same paths and methods as on Vercel.

use http::Method;

use crate::health;
use crate::http::Route;

pub fn health() -> Route {
    Route::new("/api/health", &[Method::GET], |app, req| {
        Box::pin(health::live(app, req))
    })
    .exempt_from_maintenance()
}

pub fn ready() -> Route {
    Route::new("/api/ready", &[Method::GET], |app, req| {
        Box::pin(health::ready(app, req))
    })
}

pub fn test_error() -> Route {
    Route::new("/api/test-error", &[Method::GET], |app, req| {
        Box::pin(health::test_error(app, req))
    })
}

pub fn all() -> Vec<Route> {
    vec![health(), ready(), test_error()]
}
