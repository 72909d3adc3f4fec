//! The web layer: the request pipeline, what handlers see of a request
//! ([`ApiRequest`]), routes, responses, [`ApiError`] (the one place errors
//! become HTTP) and the runtime adapters for Vercel, Lambda and a local
//! server. With the areas' `handlers.rs`, the only code that names
//! `ApiRequest` or `ApiError`.

pub mod auth;
pub mod body;
pub mod error;
pub mod pipeline;
pub mod request;
pub mod response;
pub mod routing;
pub mod runtime;

pub use body::{Body, BodyWriter, ClientGone};
pub use error::ApiError;
pub use request::ApiRequest;
pub(crate) use response::list_page;
pub use response::{idempotent_response, json_of, json_response};
pub use routing::{BodyLimit, HandlerResult, Route, Router};
