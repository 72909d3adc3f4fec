//! Routes and routing: a path pattern such as `/api/tenants/{slug}/keys`,
//! the methods it answers and its handler, and the [`Router`] that finds the
//! route for a request (every route on the dev server, one in a deployed
//! function).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::{Method, Response};

use super::body::Body;
use super::error::ApiError;
use super::request::{ApiRequest, decode_path_segment, rewritten_path_param};
use crate::app::App;
use crate::ops::ratelimit::Scope;
use crate::platform::config::Config;

pub type HandlerResult = Result<Response<Body>, ApiError>;
pub type HandlerFuture = Pin<Box<dyn Future<Output = HandlerResult> + Send>>;
pub type Handler = fn(Arc<App>, ApiRequest) -> HandlerFuture;

/// One route: a path pattern such as `/api/tenants/{slug}/keys`, the methods
/// it answers, and its handler.
#[derive(Clone)]
pub struct Route {
    pub path: &'static str,
    pub methods: &'static [Method],
    pub handler: Handler,
    /// Liveness must answer even in maintenance mode.
    pub exempt_from_maintenance: bool,
    /// The quota requests to this route draw from (none: not limited).
    pub rate_scope: Option<Scope>,
    /// The largest request body the route reads.
    pub body_limit: BodyLimit,
    /// Answers with a streamed body (server-sent events): on Lambda the
    /// function runs in response-streaming mode.
    pub streams: bool,
    /// Callable from any browser origin with a publishable key (its own
    /// origin list is checked by the database): preflights succeed for any
    /// origin, and responses allow the request's origin.
    pub publishable: bool,
    /// Work a cold instance starts on its own thread before its first
    /// request, so the request does not wait for all of it (the cl100k
    /// tables of the routes that chunk documents).
    pub warm_up: Option<fn()>,
}

/// Which configured body limit a route applies (413 above it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLimit {
    /// `MAX_BODY_BYTES`.
    General,
    /// `WEBHOOK_MAX_BODY_BYTES`: intake reads bodies from anyone who knows
    /// an endpoint's URL, before any signature is checked.
    WebhookIntake,
}

impl BodyLimit {
    pub fn bytes(self, config: &Config) -> usize {
        match self {
            BodyLimit::General => config.max_body_bytes,
            BodyLimit::WebhookIntake => config.webhook_max_body_bytes,
        }
    }
}

impl Route {
    pub const fn new(path: &'static str, methods: &'static [Method], handler: Handler) -> Self {
        Self {
            path,
            methods,
            handler,
            exempt_from_maintenance: false,
            rate_scope: None,
            body_limit: BodyLimit::General,
            streams: false,
            publishable: false,
            warm_up: None,
        }
    }

    pub const fn warmed_up_by(mut self, warm_up: fn()) -> Self {
        self.warm_up = Some(warm_up);
        self
    }

    pub const fn streaming(mut self) -> Self {
        self.streams = true;
        self
    }

    /// Marks a route publishable keys may call (see [`Route::publishable`]).
    /// Such routes are rate limited, so each publishable call is counted
    /// against its key's and visitor's quotas.
    pub const fn publishable(mut self) -> Self {
        self.publishable = true;
        self
    }

    pub const fn body_limit(mut self, limit: BodyLimit) -> Self {
        self.body_limit = limit;
        self
    }

    pub const fn rate_limited(mut self, scope: Scope) -> Self {
        self.rate_scope = Some(scope);
        self
    }

    pub const fn exempt_from_maintenance(mut self) -> Self {
        self.exempt_from_maintenance = true;
        self
    }

    pub(super) fn allows(&self, method: &Method) -> bool {
        self.methods.contains(method)
            || (method == Method::HEAD && self.methods.contains(&Method::GET))
    }

    pub(super) fn allow_header(&self) -> String {
        let mut methods: Vec<&str> = self.methods.iter().map(Method::as_str).collect();
        methods.push("OPTIONS");
        methods.join(", ")
    }

    /// Matches `path` segment by segment; `{name}` captures one segment.
    fn match_path(&self, path: &str) -> Option<Vec<(String, String)>> {
        let mut params = Vec::new();
        let mut pattern = self.path.trim_end_matches('/').split('/');
        let mut actual = path.trim_end_matches('/').split('/');
        loop {
            match (pattern.next(), actual.next()) {
                (None, None) => return Some(params),
                (Some(p), Some(a)) if p.starts_with('{') && p.ends_with('}') && !a.is_empty() => {
                    params.push((p[1..p.len() - 1].to_owned(), decode_path_segment(a)));
                }
                (Some(p), Some(a)) if p == a => {}
                _ => return None,
            }
        }
    }
}

/// The routes one process serves: every route (dev server) or one route (a
/// deployed function).
pub struct Router {
    routes: Vec<Route>,
    /// A deployed function answers for its one route whatever path the
    /// platform forwards (rewrites may pass path parameters as query string).
    single_function: bool,
}

impl Router {
    pub fn all(routes: Vec<Route>) -> Self {
        Self {
            routes,
            single_function: false,
        }
    }

    pub fn function(route: Route) -> Self {
        Self {
            routes: vec![route],
            single_function: true,
        }
    }

    pub(super) fn find(
        &self,
        path: &str,
        query: Option<&str>,
    ) -> Option<(&Route, Vec<(String, String)>)> {
        if let Some(found) = self
            .routes
            .iter()
            .find_map(|route| route.match_path(path).map(|params| (route, params)))
        {
            return Some(found);
        }
        if self.single_function {
            let route = &self.routes[0];
            let params = pattern_params(route.path)
                .filter_map(|name| {
                    rewritten_path_param(query, name).map(|value| (name.to_owned(), value))
                })
                .collect();
            return Some((route, params));
        }
        None
    }
}

impl Router {
    /// Starts each route's warm-up on a thread of its own, not waited for.
    pub(super) fn start_warm_ups(&self) {
        for warm_up in self.routes.iter().filter_map(|route| route.warm_up) {
            std::thread::spawn(warm_up);
        }
    }

    /// Whether this function answers with streamed bodies (a deployed
    /// function serves one route; the dev server streams whenever asked).
    pub(super) fn streams(&self) -> bool {
        self.single_function && self.routes[0].streams
    }

    /// The body limit of the route `path` reaches, before the body is read
    /// (no route: the general limit, the 404 needs no body).
    pub(super) fn body_limit(&self, path: &str, query: Option<&str>, config: &Config) -> usize {
        self.find(path, query)
            .map_or(BodyLimit::General, |(route, _)| route.body_limit)
            .bytes(config)
    }
}

fn pattern_params(pattern: &str) -> impl Iterator<Item = &str> {
    pattern
        .split('/')
        .filter(|s| s.starts_with('{') && s.ends_with('}'))
        .map(|s| &s[1..s.len() - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noop(_: Arc<App>, _: ApiRequest) -> HandlerFuture {
        Box::pin(async { Ok(Response::new(Body::empty())) })
    }

    #[test]
    fn path_patterns_capture_segments_and_decode_them() {
        let route = Route::new("/api/tenants/{slug}/keys", &[Method::POST], noop);
        assert_eq!(
            route.match_path("/api/tenants/joe%27s-diner/keys"),
            Some(vec![("slug".to_owned(), "joe's-diner".to_owned())])
        );
        assert_eq!(route.match_path("/api/tenants//keys"), None);
        assert_eq!(route.match_path("/api/tenants/a/keys/extra"), None);
        assert!(route.match_path("/api/tenants/a/keys/").is_some());
    }

    #[test]
    fn a_function_takes_path_parameters_from_the_query_when_rewritten() {
        let router = Router::function(Route::new(
            "/api/tenants/{slug}/keys",
            &[Method::POST],
            noop,
        ));
        let (_, params) = router
            .find("/api/tenant-keys", Some("slug=acme&x=1"))
            .unwrap();
        assert_eq!(params, vec![("slug".to_owned(), "acme".to_owned())]);
        for (query, slug, reason) in [
            ("slug=a+b", "a+b", "it was a path segment: + is a plus"),
            ("slug=a%2Bb", "a+b", "encoded plus"),
            ("slug=a%20b", "a b", "encoded space"),
        ] {
            let (_, params) = router.find("/api/tenant-keys", Some(query)).unwrap();
            assert_eq!(
                params,
                vec![("slug".to_owned(), slug.to_owned())],
                "{reason}"
            );
        }
        let all = Router::all(vec![Route::new("/api/health", &[Method::GET], noop)]);
        assert!(all.find("/api/nope", None).is_none());
    }
}
