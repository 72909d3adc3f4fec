//! Request quotas: per tenant on tenant-key routes (per client address for a
//! key that authenticates no tenant), per client address on unauthenticated
//! ones, per endpoint and sender address on webhook intake, with limits from
//! config (`RATE_LIMIT_*`). A call made with a publishable key
//! ([`RateGate::run_publishable`]) also draws from that key's quota and its
//! visitor's, whose limits are the key's own.
//!
//! Serverless instances share no memory, so the count lives in Postgres
//! (migrations/0005, 0010). A route declares its [`Scope`]; each request gets
//! a [`RateGate`], and the first database call made on the request's behalf
//! goes through `keel_gated`, which authenticates, takes one request from the
//! quota and runs the call in the same round trip. The count is kept whatever
//! the call answers (a 401, 404 or 409 costs a request like a 200): the call
//! runs in its own subtransaction and its error comes back as data, raised
//! here as the [`DbError`] it is. A refused request runs nothing
//! and answers 429 with `Retry-After`; every charged response carries
//! `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` and
//! `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers).

use std::net::IpAddr;
use std::sync::OnceLock;

use http::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::platform::config::RateLimitSettings;
use crate::platform::db::{Db, DbError, SqlFunction};

/// Which quota a route draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `POST /api/search`, per tenant.
    Search,
    /// The chat routes, per tenant: each request may cost LLM tokens.
    Chat,
    /// Every other tenant-key route, per tenant.
    Tenant,
    /// Unauthenticated routes that reach the database, per client address.
    Anonymous,
    /// Webhook intake, per endpoint and sender address (per sender address
    /// for ids naming no endpoint).
    Webhook,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Search => "search",
            Scope::Chat => "chat",
            Scope::Tenant => "tenant",
            Scope::Anonymous => "anonymous",
            Scope::Webhook => "webhook",
        }
    }

    fn per_minute(self, settings: &RateLimitSettings) -> u32 {
        match self {
            Scope::Search => settings.search_per_minute,
            Scope::Chat => settings.chat_per_minute,
            Scope::Tenant => settings.tenant_per_minute,
            Scope::Anonymous => settings.anonymous_per_minute,
            Scope::Webhook => settings.webhook_per_minute,
        }
    }

    /// What `keel_gated` counts requests against: `tenant` (the key's
    /// tenant, else the client address), `address` or `endpoint` (the
    /// webhook endpoint and sender address, else the sender address).
    fn per(self) -> &'static str {
        match self {
            Scope::Search | Scope::Chat | Scope::Tenant => "tenant",
            Scope::Anonymous => "address",
            Scope::Webhook => "endpoint",
        }
    }

    /// Scopes that cannot count anything without the client address.
    fn needs_address(self) -> bool {
        matches!(self, Scope::Anonymous | Scope::Webhook)
    }
}

/// The state of one bucket after a request was counted (or refused).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Quota {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the oldest counted request leaves the window.
    pub reset: u64,
    /// Window length in seconds.
    pub window: u64,
}

impl Quota {
    pub fn insert_headers(&self, headers: &mut HeaderMap) {
        let mut set = |name: &'static str, value: String| {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(HeaderName::from_static(name), value);
            }
        };
        set("ratelimit-limit", self.limit.to_string());
        set("ratelimit-remaining", self.remaining.to_string());
        set("ratelimit-reset", self.reset.to_string());
        set(
            "ratelimit-policy",
            format!("{};w={}", self.limit, self.window),
        );
    }
}

#[derive(Debug)]
struct Plan {
    scope: Scope,
    per_minute: u32,
    client_ip: Option<IpAddr>,
}

/// One request's quota: charged by the first database call made for it.
#[derive(Debug, Default)]
pub struct RateGate {
    plan: Option<Plan>,
    charged: OnceLock<Quota>,
}

/// Why a gated call did not return a result.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("rate limit exceeded on {} routes", .0.as_str())]
    Refused(Scope, Quota),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// `keel_gated`: authenticates, takes one request from the quota named in
/// `limit` and, if allowed, runs `function(args)`, in one round trip.
#[derive(Serialize)]
struct KeelGated<'a, F> {
    function: &'static str,
    args: &'a F,
    limit: Limit,
    /// `return`: the function's error comes back as `error`, so the count
    /// it took is committed.
    errors: &'static str,
}

#[derive(Serialize)]
struct Limit {
    scope: &'static str,
    per_minute: u32,
    per: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_ip: Option<String>,
}

#[derive(Deserialize)]
struct Gated {
    /// None only when there was nothing to count by (no client address for
    /// a key that authenticates no tenant).
    quota: Option<Quota>,
    /// The wrapped function's result, decoded once the quota allowed it.
    #[serde(default)]
    result: Value,
    /// The error the wrapped function raised.
    error: Option<GatedError>,
}

#[derive(Deserialize)]
struct GatedError {
    code: String,
    message: String,
    details: Option<String>,
    hint: Option<String>,
}

impl<F: SqlFunction> SqlFunction for KeelGated<'_, F> {
    const NAME: &'static str = "keel_gated";
    type Output = Gated;
}

impl RateGate {
    /// The gate for a request to a route of `scope` (none: not limited). A
    /// per-address scope without a known address is not limited: every
    /// platform Keel runs on reports the address, and one shared bucket for
    /// "unknown" would let one client lock out all others.
    pub fn new(
        scope: Option<Scope>,
        settings: &RateLimitSettings,
        client_ip: Option<IpAddr>,
    ) -> Self {
        let plan = scope
            .filter(|scope| !scope.needs_address() || client_ip.is_some())
            .map(|scope| Plan {
                scope,
                per_minute: scope.per_minute(settings),
                client_ip,
            });
        Self {
            plan,
            charged: OnceLock::new(),
        }
    }

    /// The quota this request was charged, once a call went through the gate.
    pub fn quota(&self) -> Option<&Quota> {
        self.charged.get()
    }

    /// Runs `F`; the request's first call also takes one request from its
    /// quota, or fails with 429 without running.
    pub async fn run<F: SqlFunction>(&self, db: &Db, args: &F) -> Result<F::Output, GateError> {
        self.run_per(db, args, None).await
    }

    /// [`RateGate::run`] for a call presenting a publishable key
    /// (`publishable_key_hash` among `F`'s arguments, with the visitor's
    /// `visitor_token_hash` if it has one): the first call takes one request
    /// from the visitor's quota (per client address until it has a token),
    /// the key's and the tenant's quota of the route's scope. Routes that
    /// take publishable keys are rate limited, so every such call is counted.
    pub async fn run_publishable<F: SqlFunction>(
        &self,
        db: &Db,
        args: &F,
    ) -> Result<F::Output, GateError> {
        self.run_per(db, args, Some("publishable")).await
    }

    /// `per` overrides what the scope counts against.
    async fn run_per<F: SqlFunction>(
        &self,
        db: &Db,
        args: &F,
        per: Option<&'static str>,
    ) -> Result<F::Output, GateError> {
        let plan = match &self.plan {
            Some(plan) if self.charged.get().is_none() => plan,
            _ => return Ok(db.run(args).await?),
        };
        let gated = db
            .run(&KeelGated {
                function: F::NAME,
                args,
                limit: Limit {
                    scope: plan.scope.as_str(),
                    per_minute: plan.per_minute,
                    per: per.unwrap_or(plan.scope.per()),
                    client_ip: plan.client_ip.map(bucket_subject),
                },
                errors: "return",
            })
            .await?;
        if let Some(quota) = gated.quota {
            let quota = self.charged.get_or_init(|| quota);
            if !quota.allowed {
                return Err(GateError::Refused(plan.scope, quota.clone()));
            }
        }
        if let Some(error) = gated.error {
            return Err(GateError::Db(DbError::Rejected {
                function: F::NAME,
                code: error.code,
                message: error.message,
                details: error.details,
                hint: error.hint,
            }));
        }
        serde_json::from_value(gated.result).map_err(|e| {
            GateError::Db(DbError::Protocol {
                function: F::NAME,
                reason: format!("result does not match the expected shape: {e}"),
            })
        })
    }
}

/// `keel_take_tenant_quota`: one request from a tenant's quota of `scope`,
/// for work done on the tenant's behalf that no request of the tenant paid
/// for (an inbound text answered after a provider's webhook).
#[derive(Serialize)]
struct TakeTenantQuota<'a> {
    tenant_id: &'a str,
    scope: &'static str,
    per_minute: u32,
}

impl SqlFunction for TakeTenantQuota<'_> {
    const NAME: &'static str = "keel_take_tenant_quota";
    type Output = Quota;
}

/// Takes one request from `tenant_id`'s quota of `scope` (the bucket its
/// own requests of that scope draw from), or refuses with the quota.
pub async fn charge_tenant(
    db: &Db,
    settings: &RateLimitSettings,
    scope: Scope,
    tenant_id: &str,
) -> Result<Quota, GateError> {
    let quota = db
        .run(&TakeTenantQuota {
            tenant_id,
            scope: scope.as_str(),
            per_minute: scope.per_minute(settings),
        })
        .await?;
    if quota.allowed {
        Ok(quota)
    } else {
        Err(GateError::Refused(scope, quota))
    }
}

/// The bucket a per-address quota counts `ip` in: the IPv4 address, or the
/// IPv6 /64 around it, since a single IPv6 host is handed a whole /64 and
/// could otherwise take a fresh quota for each of its 2^64 addresses.
fn bucket_subject(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let network = u128::from(v6) & !u128::from(u64::MAX);
                format!("{}/64", std::net::Ipv6Addr::from(network))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> RateLimitSettings {
        RateLimitSettings {
            search_per_minute: 60,
            tenant_per_minute: 300,
            anonymous_per_minute: 30,
            webhook_per_minute: 600,
            chat_per_minute: 20,
        }
    }

    #[test]
    fn quota_headers_follow_the_ratelimit_fields_draft() {
        let quota = Quota {
            allowed: true,
            limit: 60,
            remaining: 59,
            reset: 42,
            window: 60,
        };
        let mut headers = HeaderMap::new();
        quota.insert_headers(&mut headers);
        assert_eq!(headers["ratelimit-limit"], "60");
        assert_eq!(headers["ratelimit-remaining"], "59");
        assert_eq!(headers["ratelimit-reset"], "42");
        assert_eq!(headers["ratelimit-policy"], "60;w=60");
    }

    #[test]
    fn ipv6_clients_are_counted_per_slash_64_and_ipv4_per_address() {
        let cases = [
            ("203.0.113.7", "203.0.113.7", "IPv4: the address"),
            (
                "::ffff:203.0.113.7",
                "203.0.113.7",
                "IPv4-mapped: the IPv4 address",
            ),
            ("2001:db8:1:2::1", "2001:db8:1:2::/64", "IPv6: its /64"),
            (
                "2001:db8:1:2:ffff:ffff:ffff:ffff",
                "2001:db8:1:2::/64",
                "anywhere in the /64",
            ),
            (
                "2001:db8:1:3::1",
                "2001:db8:1:3::/64",
                "the next /64 is another client",
            ),
        ];
        for (ip, bucket, reason) in cases {
            assert_eq!(bucket_subject(ip.parse().unwrap()), bucket, "{reason}");
        }
    }

    #[test]
    fn gates_pick_the_scope_limit_and_what_it_counts_per() {
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        let cases = [
            (
                Some(Scope::Search),
                Some(ip),
                Some((60, "tenant", Some(ip))),
                "per tenant; the address counts keys that authenticate no tenant",
            ),
            (
                Some(Scope::Tenant),
                None,
                Some((300, "tenant", None)),
                "tenant scope needs no address",
            ),
            (
                Some(Scope::Chat),
                Some(ip),
                Some((20, "tenant", Some(ip))),
                "chat: per tenant, with its own limit",
            ),
            (
                Some(Scope::Anonymous),
                Some(ip),
                Some((30, "address", Some(ip))),
                "per address",
            ),
            (
                Some(Scope::Webhook),
                Some(ip),
                Some((600, "endpoint", Some(ip))),
                "per endpoint and sender address",
            ),
            (
                Some(Scope::Anonymous),
                None,
                None,
                "no address, no shared bucket",
            ),
            (
                Some(Scope::Webhook),
                None,
                None,
                "no sender address, no shared bucket",
            ),
            (None, Some(ip), None, "route without a scope"),
        ];
        for (scope, client_ip, expected, reason) in cases {
            let gate = RateGate::new(scope, &settings(), client_ip);
            let plan = gate
                .plan
                .map(|p| (p.per_minute, p.scope.per(), p.client_ip));
            assert_eq!(plan, expected, "{reason}");
        }
    }
}
